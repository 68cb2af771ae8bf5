-- Named queues and priorities. New columns at the end with constant defaults are added in place
-- (ALGORITHM=INSTANT, MySQL 8.0.12+ and MariaDB 10.3+): no row is rewritten, whatever the table
-- holds. The statement fails rather than copy the table if the server cannot.
ALTER TABLE jobs
    ADD COLUMN queue    VARCHAR(128) NOT NULL DEFAULT 'default',
    ADD COLUMN priority SMALLINT     NOT NULL DEFAULT 0,
    ALGORITHM = INSTANT;

-- The claim's order, and the claim of one limited queue. MySQL has no partial indexes: status
-- leads, so a claim reads only the NEW part. Built online: writes go on meanwhile.
ALTER TABLE jobs
    ADD INDEX jobs_claim_order_idx (status, priority, run_at, id),
    ADD INDEX jobs_queue_claim_idx (status, queue, priority, run_at, id),
    ALGORITHM = INPLACE, LOCK = NONE;

-- The earlier claim index (status, run_at, id): the two above serve everything it did.
ALTER TABLE jobs DROP INDEX jobs_claim_idx, ALGORITHM = INPLACE, LOCK = NONE;

-- The few queues that need a limit or a pause; users change it with plain SQL at run time.
CREATE TABLE queues (
    name            VARCHAR(128) NOT NULL PRIMARY KEY,
    -- Set: no job of the queue starts, on any replica, until it is NULL again.
    paused_at       TIMESTAMP(6) NULL DEFAULT NULL,
    -- At most this many jobs of the queue QUEUED or RUNNING at once, across all replicas.
    concurrency     INT          NULL,
    -- At most this many starts a second, across all replicas.
    rate_per_second DOUBLE       NULL,
    -- Kept by jobsd: the next start the rate allows (the replicas reserve starts from it in turn).
    next_start_at   TIMESTAMP(6) NULL DEFAULT NULL,
    CONSTRAINT queues_concurrency_check CHECK (concurrency >= 0),
    CONSTRAINT queues_rate_check CHECK (rate_per_second > 0 AND rate_per_second <= 1000000)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
