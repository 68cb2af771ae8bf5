-- The jobs table: users INSERT rows and read status and timestamps back; jobsd moves them along.
-- SQLite has no time type: timestamps are UTC text 'YYYY-MM-DD HH:MM:SS[.ffffff]', which sorts in
-- time order; the CHECKs refuse any other shape, so a comparison can never silently go wrong.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL DEFAULT 'sleep',
    object_id     INTEGER,
    sleep         INTEGER,
    payload       TEXT,
    status        TEXT    NOT NULL DEFAULT 'NEW'
                  CHECK (status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED', 'DONE', 'FAILED', 'CANCELLED')),
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    run_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
                  CHECK (run_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*'),
    queued_at     TEXT,
    started_at    TEXT,
    finished_at   TEXT,
    cancelled_at  TEXT,
    heartbeat_at  TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts  INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    last_error    TEXT,
    control       TEXT    CHECK (control IN ('pause', 'resume', 'terminate')),
    progress      TEXT,
    worker        TEXT
);

-- Only live rows are indexed, so claims and sweeps stay fast when millions of finished rows pile up.
CREATE INDEX jobs_claim_idx ON jobs (run_at, id) WHERE status = 'NEW';
-- status leads so that the dead-job sweep's `ORDER BY id LIMIT` still picks this index over a
-- scan of the whole table in id order.
CREATE INDEX jobs_live_idx ON jobs (status, worker) WHERE status IN ('QUEUED', 'RUNNING');
CREATE INDEX jobs_control_idx ON jobs (id) WHERE control IS NOT NULL;
