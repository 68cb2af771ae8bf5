-- Recurring jobs. SQLite adds a column without touching a row, whatever the table holds. The
-- unique index is built while the file's write lock is held: it reads every row once (only
-- scheduled jobs enter it), so on a table of millions of rows writers wait for seconds, once.
ALTER TABLE jobs ADD COLUMN schedule TEXT;
ALTER TABLE jobs ADD COLUMN scheduled_for TEXT;

-- One job per schedule and slot, whatever happens: the backstop of the conditional UPDATE that
-- picks the writer inserting a slot's job.
CREATE UNIQUE INDEX jobs_schedule_slot_idx ON jobs (schedule, scheduled_for) WHERE schedule IS NOT NULL;

-- What the other databases' column types refuse (see the hostile-rows migration).
CREATE TRIGGER jobs_schedule_type_insert BEFORE INSERT ON jobs
WHEN NEW.schedule IS NOT NULL AND (typeof(NEW.schedule) != 'text' OR length(NEW.schedule) > 128)
BEGIN SELECT RAISE(ABORT, 'jobs.schedule must be text of at most 128 characters, or NULL'); END;

CREATE TRIGGER jobs_scheduled_for_type_insert BEFORE INSERT ON jobs
WHEN NEW.scheduled_for IS NOT NULL AND (typeof(NEW.scheduled_for) != 'text' OR NEW.scheduled_for NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.scheduled_for) IS NULL)
BEGIN SELECT RAISE(ABORT, 'jobs.scheduled_for must be UTC text like 2026-01-31 12:00:00, or NULL'); END;

CREATE TRIGGER jobs_schedule_type_update BEFORE UPDATE OF schedule ON jobs
WHEN NEW.schedule IS NOT NULL AND (typeof(NEW.schedule) != 'text' OR length(NEW.schedule) > 128)
BEGIN SELECT RAISE(ABORT, 'jobs.schedule must be text of at most 128 characters, or NULL'); END;

CREATE TRIGGER jobs_scheduled_for_type_update BEFORE UPDATE OF scheduled_for ON jobs
WHEN NEW.scheduled_for IS NOT NULL AND (typeof(NEW.scheduled_for) != 'text' OR NEW.scheduled_for NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.scheduled_for) IS NULL)
BEGIN SELECT RAISE(ABORT, 'jobs.scheduled_for must be UTC text like 2026-01-31 12:00:00, or NULL'); END;

-- Schedules; users change them with plain SQL (or `jobsd schedule`) at run time. A new table
-- can be STRICT, so its types need no triggers. Times are UTC text, as in jobs.
CREATE TABLE schedules (
    name          TEXT    PRIMARY KEY CHECK (length(name) <= 128),
    -- 5 fields, or 6 with seconds first; read in `timezone` (an IANA name).
    cron          TEXT    NOT NULL,
    timezone      TEXT    NOT NULL DEFAULT 'UTC',
    -- Copied into every job the schedule inserts.
    kind          TEXT    NOT NULL DEFAULT 'sleep',
    object_id     INTEGER,
    sleep         INTEGER,
    payload       TEXT,
    queue         TEXT    NOT NULL DEFAULT 'default' CHECK (length(queue) <= 128),
    priority      INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -32768 AND 32767),
    max_attempts  INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts BETWEEN 1 AND 2147483647),
    -- What becomes of slots that came due while no replica ran.
    catch_up      TEXT    NOT NULL DEFAULT 'latest' CHECK (catch_up IN ('latest', 'none', 'all')),
    -- Set (to any time, e.g. datetime('now')): no slots are inserted until it is NULL again.
    paused_at     TEXT,
    -- Kept by jobsd: the next slot, and the slot of the last job inserted. Compared as text by
    -- the UPDATE that decides which writer inserts a slot, so only jobsd's own spelling is taken.
    next_run_at   TEXT    CHECK (next_run_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'),
    last_run_at   TEXT    CHECK (last_run_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'),
    -- A new schedule's first slot is the first one after this.
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
                  CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' AND julianday(created_at) IS NOT NULL),
    -- Kept by jobsd: why the schedule inserts nothing (a bad cron or timezone), in words.
    error         TEXT
) STRICT;
