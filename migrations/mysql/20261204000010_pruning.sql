-- The lease that lets one replica at a time delete old finished rows. A new one-row table:
-- instant, whatever jobs holds.
CREATE TABLE jobsd_leases (
    name   VARCHAR(64)  NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NULL,
    until  TIMESTAMP(6) NULL DEFAULT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
INSERT INTO jobsd_leases (name) VALUES ('pruner');

-- Old finished rows, found in the order they finished. Built online: writes go on meanwhile.
ALTER TABLE jobs ADD INDEX jobs_finished_idx (status, finished_at), ALGORITHM = INPLACE, LOCK = NONE;
