-- Recurring jobs. Nullable columns at the end are added in place (ALGORITHM=INSTANT, MySQL
-- 8.0.12+ and MariaDB 10.3+): no row is rewritten, whatever the table holds. The statement fails
-- rather than copy the table if the server cannot.
ALTER TABLE jobs
    ADD COLUMN schedule      VARCHAR(128) NULL DEFAULT NULL,
    ADD COLUMN scheduled_for TIMESTAMP(6) NULL DEFAULT NULL,
    ALGORITHM = INSTANT;

-- One job per schedule and slot, whatever happens: the backstop of the conditional UPDATE that
-- picks the replica inserting a slot's job. NULLs never collide, so other jobs are unaffected.
-- Built online: writes go on meanwhile.
ALTER TABLE jobs
    ADD UNIQUE INDEX jobs_schedule_slot_idx (schedule, scheduled_for),
    ALGORITHM = INPLACE, LOCK = NONE;

-- Schedules; users change them with plain SQL (or `jobsd schedule`) at run time.
CREATE TABLE schedules (
    name          VARCHAR(128) NOT NULL PRIMARY KEY,
    -- 5 fields, or 6 with seconds first; read in `timezone` (an IANA name).
    cron          VARCHAR(255) NOT NULL,
    timezone      VARCHAR(64)  NOT NULL DEFAULT 'UTC',
    -- Copied into every job the schedule inserts.
    kind          VARCHAR(64)  NOT NULL DEFAULT 'sleep',
    object_id     BIGINT       NULL,
    sleep         BIGINT       NULL,
    payload       LONGTEXT     NULL,
    queue         VARCHAR(128) NOT NULL DEFAULT 'default',
    priority      SMALLINT     NOT NULL DEFAULT 0,
    max_attempts  INT          NOT NULL DEFAULT 1,
    -- What becomes of slots that came due while no replica ran.
    catch_up      VARCHAR(16)  NOT NULL DEFAULT 'latest',
    -- Set: no slots are inserted until it is NULL again.
    paused_at     TIMESTAMP(6) NULL DEFAULT NULL,
    -- Kept by jobsd: the next slot, and the slot of the last job inserted.
    next_run_at   TIMESTAMP(6) NULL DEFAULT NULL,
    last_run_at   TIMESTAMP(6) NULL DEFAULT NULL,
    -- A new schedule's first slot is the first one after this.
    created_at    TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    -- Kept by jobsd: why the schedule inserts nothing (a bad cron or timezone), in words.
    error         TEXT         NULL,
    CONSTRAINT schedules_max_attempts_check CHECK (max_attempts >= 1),
    CONSTRAINT schedules_catch_up_check CHECK (catch_up COLLATE utf8mb4_bin IN ('latest', 'none', 'all'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
