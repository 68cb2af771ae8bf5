-- Named queues and priorities. SQLite adds a column without touching a row, whatever the table
-- holds. The indexes are built while the file's write lock is held: on a table of millions of
-- rows, writers wait for seconds once.
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;

-- The claim's order, and the claim of one limited queue, over NEW rows only; they replace the
-- earlier (run_at, id).
CREATE INDEX jobs_claim_order_idx ON jobs (priority, run_at, id) WHERE status = 'NEW';
CREATE INDEX jobs_queue_claim_idx ON jobs (queue, priority, run_at, id) WHERE status = 'NEW';
DROP INDEX jobs_claim_idx;

-- What the other databases' column types refuse (see the hostile-rows migration).
CREATE TRIGGER jobs_queue_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.queue) != 'text' OR length(NEW.queue) > 128
BEGIN SELECT RAISE(ABORT, 'jobs.queue must be text of at most 128 characters'); END;

CREATE TRIGGER jobs_priority_type_insert BEFORE INSERT ON jobs
WHEN typeof(NEW.priority) != 'integer' OR NEW.priority NOT BETWEEN -32768 AND 32767
BEGIN SELECT RAISE(ABORT, 'jobs.priority must be a whole number from -32768 to 32767'); END;

CREATE TRIGGER jobs_queue_type_update BEFORE UPDATE OF queue ON jobs
WHEN typeof(NEW.queue) != 'text' OR length(NEW.queue) > 128
BEGIN SELECT RAISE(ABORT, 'jobs.queue must be text of at most 128 characters'); END;

CREATE TRIGGER jobs_priority_type_update BEFORE UPDATE OF priority ON jobs
WHEN typeof(NEW.priority) != 'integer' OR NEW.priority NOT BETWEEN -32768 AND 32767
BEGIN SELECT RAISE(ABORT, 'jobs.priority must be a whole number from -32768 to 32767'); END;

-- The few queues that need a limit or a pause; users change it with plain SQL at run time. A
-- new table can be STRICT, so its types need no triggers. Times are UTC text, as in jobs.
CREATE TABLE queues (
    name            TEXT PRIMARY KEY CHECK (length(name) <= 128),
    -- Set (to any time, e.g. datetime('now')): no job of the queue starts until it is NULL again.
    paused_at       TEXT,
    -- At most this many jobs of the queue QUEUED or RUNNING at once.
    concurrency     INTEGER CHECK (concurrency >= 0),
    -- At most this many starts a second.
    rate_per_second REAL CHECK (rate_per_second > 0 AND rate_per_second <= 1000000),
    -- Kept by jobsd: the next start the rate allows.
    next_start_at   TEXT
) STRICT;
