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
