-- The jobs table: users INSERT rows and read status and timestamps back; jobsd moves them along.
-- TIMESTAMP(6) rather than DATETIME(6): it is stored in UTC whatever a client's session time zone is.
-- The CHECKs compare case-sensitively, so 'new' is refused as firmly as 'bogus'.
CREATE TABLE jobs (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind          VARCHAR(64)  NOT NULL DEFAULT 'sleep',
    object_id     BIGINT       NULL,
    sleep         BIGINT       NULL,
    -- Plain text rather than JSON, so a malformed payload is accepted and ends FAILED with a reason.
    payload       LONGTEXT     NULL,
    status        VARCHAR(16)  NOT NULL DEFAULT 'NEW',
    created_at    TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    run_at        TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    queued_at     TIMESTAMP(6) NULL DEFAULT NULL,
    started_at    TIMESTAMP(6) NULL DEFAULT NULL,
    finished_at   TIMESTAMP(6) NULL DEFAULT NULL,
    cancelled_at  TIMESTAMP(6) NULL DEFAULT NULL,
    heartbeat_at  TIMESTAMP(6) NULL DEFAULT NULL,
    attempts      INT          NOT NULL DEFAULT 0,
    max_attempts  INT          NOT NULL DEFAULT 1,
    last_error    TEXT         NULL,
    control       VARCHAR(16)  NULL,
    progress      LONGTEXT     NULL,
    worker        VARCHAR(255) NULL,
    CONSTRAINT jobs_status_check
        CHECK (status COLLATE utf8mb4_bin IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED', 'DONE', 'FAILED', 'CANCELLED')),
    CONSTRAINT jobs_control_check CHECK (control COLLATE utf8mb4_bin IN ('pause', 'resume', 'terminate')),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0),
    CONSTRAINT jobs_max_attempts_check CHECK (max_attempts >= 1),
    -- MySQL has no partial indexes: status leads, so claims and sweeps read only the live part.
    INDEX jobs_claim_idx (status, run_at, id),
    INDEX jobs_control_idx (control)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
