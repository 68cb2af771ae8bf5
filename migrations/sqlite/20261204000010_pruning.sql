-- The lease that lets one replica at a time delete old finished rows.
CREATE TABLE jobsd_leases (
    name   TEXT PRIMARY KEY,
    holder TEXT,
    until  TEXT
) STRICT;
INSERT INTO jobsd_leases (name) VALUES ('pruner');

-- Old finished rows, found in the order they finished, without reading live ones. Built while
-- the file's write lock is held: on millions of rows, writers wait for seconds once.
CREATE INDEX jobs_finished_idx ON jobs (status, finished_at) WHERE status IN ('DONE', 'FAILED', 'CANCELLED');
