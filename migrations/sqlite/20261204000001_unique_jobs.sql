-- Unique jobs (DESIGN §2): while a job with a unique_key is NEW, QUEUED, RUNNING or PAUSED, the
-- database refuses another INSERT with the same key. SQLite adds the column without touching a
-- row, whatever the table holds.
ALTER TABLE jobs ADD COLUMN unique_key TEXT;

-- A partial unique index holds only the live rows that have a key, so a finished job frees its
-- key and costs the index nothing; retries, pauses, releases and requeues stay inside it, so a
-- job never conflicts with itself. Users skip a duplicate quietly with ON CONFLICT DO NOTHING or
-- INSERT OR IGNORE. Built while the file's write lock is held: the index starts empty (every key
-- is NULL), but the build reads every row once, and writers wait that long, once (0.15 s for
-- two million small rows; longer where rows carry large payloads).
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key)
WHERE unique_key IS NOT NULL AND status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED');

-- What the other databases' column types refuse (see the hostile-rows migration): a blob would
-- never equal the same key written as text, and a key over 255 characters. (A number is stored
-- as text, by the column's affinity.)
CREATE TRIGGER jobs_unique_key_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.unique_key) NOT IN ('text', 'null') OR length(NEW.unique_key) > 255
BEGIN SELECT RAISE(ABORT, 'jobs.unique_key must be text of at most 255 characters, or NULL'); END;

CREATE TRIGGER jobs_unique_key_type_update BEFORE UPDATE OF unique_key ON jobs
WHEN typeof(NEW.unique_key) NOT IN ('text', 'null') OR length(NEW.unique_key) > 255
BEGIN SELECT RAISE(ABORT, 'jobs.unique_key must be text of at most 255 characters, or NULL'); END;
