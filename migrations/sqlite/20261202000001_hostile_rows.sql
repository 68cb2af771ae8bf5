-- Users write the table with plain SQL, and SQLite stores a value of any type in any column
-- unless told otherwise: '1s' in sleep, a blob in payload, 3000000000 in max_attempts. These
-- triggers refuse such a row at INSERT (or UPDATE), in words, the way the column types of
-- PostgreSQL and MySQL do. Column affinity applies first, so '42' in an integer column is still
-- taken as 42.
--
-- Triggers, not a STRICT table or CHECKs: SQLite adds neither to an existing table without
-- copying every row, while a trigger is created at once, whatever the table holds. Rows already
-- there are left as they are; one that cannot be read ends FAILED when it is claimed.

CREATE TRIGGER jobs_kind_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.kind) != 'text'
BEGIN SELECT RAISE(ABORT, 'jobs.kind must be text'); END;

CREATE TRIGGER jobs_object_id_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.object_id) NOT IN ('integer', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.object_id must be a whole number, or NULL'); END;

CREATE TRIGGER jobs_sleep_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.sleep) NOT IN ('integer', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.sleep must be a whole number of nanoseconds, or NULL'); END;

CREATE TRIGGER jobs_payload_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.payload) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.payload must be JSON text, or NULL'); END;

CREATE TRIGGER jobs_progress_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.progress) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.progress must be JSON text, or NULL'); END;

CREATE TRIGGER jobs_attempts_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.attempts) != 'integer' OR NEW.attempts NOT BETWEEN 0 AND 2147483647
BEGIN SELECT RAISE(ABORT, 'jobs.attempts must be a whole number from 0 to 2147483647'); END;

CREATE TRIGGER jobs_max_attempts_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.max_attempts) != 'integer' OR NEW.max_attempts NOT BETWEEN 1 AND 2147483647
BEGIN SELECT RAISE(ABORT, 'jobs.max_attempts must be a whole number from 1 to 2147483647'); END;

CREATE TRIGGER jobs_run_at_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.run_at) != 'text' OR NEW.run_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.run_at) IS NULL
BEGIN SELECT RAISE(ABORT, 'jobs.run_at must be UTC text like 2026-01-31 12:00:00'); END;

CREATE TRIGGER jobs_created_at_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.created_at) != 'text' OR NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.created_at) IS NULL
BEGIN SELECT RAISE(ABORT, 'jobs.created_at must be UTC text like 2026-01-31 12:00:00'); END;

CREATE TRIGGER jobs_worker_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.worker) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.worker must be text, or NULL'); END;

CREATE TRIGGER jobs_last_error_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.last_error) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.last_error must be text, or NULL'); END;

CREATE TRIGGER jobs_timestamps_type_insert BEFORE INSERT ON jobs
WHEN (NEW.queued_at IS NOT NULL AND (typeof(NEW.queued_at) != 'text' OR NEW.queued_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.queued_at) IS NULL)) OR (NEW.started_at IS NOT NULL AND (typeof(NEW.started_at) != 'text' OR NEW.started_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.started_at) IS NULL)) OR (NEW.finished_at IS NOT NULL AND (typeof(NEW.finished_at) != 'text' OR NEW.finished_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.finished_at) IS NULL)) OR (NEW.cancelled_at IS NOT NULL AND (typeof(NEW.cancelled_at) != 'text' OR NEW.cancelled_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.cancelled_at) IS NULL)) OR (NEW.heartbeat_at IS NOT NULL AND (typeof(NEW.heartbeat_at) != 'text' OR NEW.heartbeat_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.heartbeat_at) IS NULL))
BEGIN SELECT RAISE(ABORT, 'jobs timestamps must be UTC text like 2026-01-31 12:00:00, or NULL'); END;


-- On UPDATE, the columns users set, and worker. Not attempts: a claim writes it, and a row from
-- before these triggers whose count is text must not make the claim of a whole batch fail; such
-- a row ends FAILED in words when it is claimed. The timestamps jobsd writes on every job stay
-- free of trigger work.

CREATE TRIGGER jobs_kind_type_update BEFORE UPDATE OF kind ON jobs
WHEN typeof(NEW.kind) != 'text'
BEGIN SELECT RAISE(ABORT, 'jobs.kind must be text'); END;

CREATE TRIGGER jobs_object_id_type_update BEFORE UPDATE OF object_id ON jobs
WHEN typeof(NEW.object_id) NOT IN ('integer', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.object_id must be a whole number, or NULL'); END;

CREATE TRIGGER jobs_sleep_type_update BEFORE UPDATE OF sleep ON jobs
WHEN typeof(NEW.sleep) NOT IN ('integer', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.sleep must be a whole number of nanoseconds, or NULL'); END;

CREATE TRIGGER jobs_payload_type_update BEFORE UPDATE OF payload ON jobs
WHEN typeof(NEW.payload) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.payload must be JSON text, or NULL'); END;

CREATE TRIGGER jobs_progress_type_update BEFORE UPDATE OF progress ON jobs
WHEN typeof(NEW.progress) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.progress must be JSON text, or NULL'); END;

CREATE TRIGGER jobs_max_attempts_type_update BEFORE UPDATE OF max_attempts ON jobs
WHEN typeof(NEW.max_attempts) != 'integer' OR NEW.max_attempts NOT BETWEEN 1 AND 2147483647
BEGIN SELECT RAISE(ABORT, 'jobs.max_attempts must be a whole number from 1 to 2147483647'); END;

CREATE TRIGGER jobs_run_at_type_update BEFORE UPDATE OF run_at ON jobs
WHEN typeof(NEW.run_at) != 'text' OR NEW.run_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.run_at) IS NULL
BEGIN SELECT RAISE(ABORT, 'jobs.run_at must be UTC text like 2026-01-31 12:00:00'); END;

CREATE TRIGGER jobs_created_at_type_update BEFORE UPDATE OF created_at ON jobs
WHEN typeof(NEW.created_at) != 'text' OR NEW.created_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.created_at) IS NULL
BEGIN SELECT RAISE(ABORT, 'jobs.created_at must be UTC text like 2026-01-31 12:00:00'); END;
CREATE TRIGGER jobs_worker_type_update BEFORE UPDATE OF worker ON jobs
WHEN typeof(NEW.worker) NOT IN ('text', 'null')
BEGIN SELECT RAISE(ABORT, 'jobs.worker must be text, or NULL'); END;

-- SQLite runs inside the replica's own process, and any change of a row (a claim, a status)
-- rewrites the whole row, payload included: a 20 MB payload would cost the replica twice that
-- in memory just to be marked FAILED. So here the database itself refuses a kind, payload or
-- progress over max_payload_bytes at INSERT, and the daemon keeps this limit equal to its
-- setting when it starts. PostgreSQL and MySQL rewrite rows on their own servers: there the
-- daemon fails such a row without ever fetching the value. (length of the value as a blob
-- counts bytes; octet_length would too, but a sqlite3 shell before 3.43 does not know it.)
CREATE TABLE jobsd_limits (
    max_payload_bytes INTEGER NOT NULL CHECK (max_payload_bytes > 0)
);
INSERT INTO jobsd_limits (max_payload_bytes) VALUES (1048576);

CREATE TRIGGER jobs_payload_size_insert BEFORE INSERT ON jobs
WHEN length(CAST(NEW.payload AS BLOB)) > (SELECT max_payload_bytes FROM jobsd_limits)
  OR length(CAST(NEW.progress AS BLOB)) > (SELECT max_payload_bytes FROM jobsd_limits)
  OR length(CAST(NEW.kind AS BLOB)) > (SELECT max_payload_bytes FROM jobsd_limits)
BEGIN SELECT RAISE(ABORT, 'payload too large: jobs.kind, payload and progress hold at most max_payload_bytes (jobsd_limits)'); END;

CREATE TRIGGER jobs_payload_size_update BEFORE UPDATE OF kind, payload ON jobs
WHEN length(CAST(NEW.payload AS BLOB)) > (SELECT max_payload_bytes FROM jobsd_limits)
  OR length(CAST(NEW.kind AS BLOB)) > (SELECT max_payload_bytes FROM jobsd_limits)
BEGIN SELECT RAISE(ABORT, 'payload too large: jobs.kind and payload hold at most max_payload_bytes (jobsd_limits)'); END;
