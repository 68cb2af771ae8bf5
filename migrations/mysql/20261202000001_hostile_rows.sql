-- The limit on a job's kind, payload and progress, the same table on every database: the daemon
-- keeps it equal to its max_payload_bytes setting when it starts (where it may write it), so a
-- user can read with SQL what the replicas apply. Here a claim fails a row over the limit
-- without fetching the value; SQLite, whose rows live in the daemon's own memory, refuses such a
-- row at INSERT with a trigger reading this table. The column types already refuse what
-- SQLite's type triggers do ('1s' in sleep, 3000000000 in max_attempts), so nothing else is
-- needed here. A new one-row table: instant, whatever jobs holds.
CREATE TABLE jobsd_limits (
    max_payload_bytes BIGINT NOT NULL,
    CONSTRAINT jobsd_limits_positive CHECK (max_payload_bytes > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
INSERT INTO jobsd_limits (max_payload_bytes) VALUES (1048576);
