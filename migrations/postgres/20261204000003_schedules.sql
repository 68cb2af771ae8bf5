-- Recurring jobs. The two columns are nullable without a default: PostgreSQL adds them to the
-- catalog only, rewriting no row and holding the table's lock for an instant, whatever it holds.
-- The unique index on them is built without blocking writes, in the migration after this one.
ALTER TABLE jobs
    ADD COLUMN schedule      VARCHAR(128),
    ADD COLUMN scheduled_for TIMESTAMPTZ;

-- Schedules; users change them with plain SQL (or `jobsd schedule`) at run time.
CREATE TABLE schedules (
    name          VARCHAR(128) PRIMARY KEY,
    -- 5 fields, or 6 with seconds first; read in `timezone` (an IANA name).
    cron          TEXT         NOT NULL,
    timezone      TEXT         NOT NULL DEFAULT 'UTC',
    -- Copied into every job the schedule inserts.
    kind          TEXT         NOT NULL DEFAULT 'sleep',
    object_id     BIGINT,
    sleep         BIGINT,
    payload       TEXT,
    queue         VARCHAR(128) NOT NULL DEFAULT 'default',
    priority      SMALLINT     NOT NULL DEFAULT 0,
    max_attempts  INTEGER      NOT NULL DEFAULT 1
                  CONSTRAINT schedules_max_attempts_check CHECK (max_attempts >= 1),
    -- What becomes of slots that came due while no replica ran.
    catch_up      TEXT         NOT NULL DEFAULT 'latest'
                  CONSTRAINT schedules_catch_up_check CHECK (catch_up IN ('latest', 'none', 'all')),
    -- Set: no slots are inserted until it is NULL again.
    paused_at     TIMESTAMPTZ,
    -- Kept by jobsd: the next slot, and the slot of the last job inserted.
    next_run_at   TIMESTAMPTZ,
    last_run_at   TIMESTAMPTZ,
    -- A new schedule's first slot is the first one after this.
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    -- Kept by jobsd: why the schedule inserts nothing (a bad cron or timezone), in words.
    error         TEXT,
    -- The times the replicas read must be times they can hold: PostgreSQL also takes
    -- 'infinity' and years up to 294276, which no replica's clock type reaches.
    CONSTRAINT schedules_times_check CHECK (
        created_at BETWEEN '1970-01-01' AND '9999-12-31'
        AND (next_run_at IS NULL OR next_run_at BETWEEN '1970-01-01' AND '9999-12-31')
        AND (last_run_at IS NULL OR last_run_at BETWEEN '1970-01-01' AND '9999-12-31'))
);
