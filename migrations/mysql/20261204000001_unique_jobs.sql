-- Unique jobs. MySQL has no partial indexes, so a second column holds the key only while the
-- job is unfinished (NEW, QUEUED, RUNNING, PAUSED) and NULL otherwise, and a unique index on it
-- refuses a second live job with the same key; NULLs never collide. Triggers keep it so on every
-- INSERT and UPDATE, whoever writes the row.
--
-- A plain column kept by triggers rather than a generated column: MariaDB adds no column
-- instantly to a table with an indexed virtual column, and every later migration would have to
-- copy the table. Both columns are nullable at the end: added in place, instantly.
-- `unique_live` holds the key's bytes: the table's collation would take 'K', 'k' and 'k ' for
-- one key, where PostgreSQL and SQLite compare exactly.
ALTER TABLE jobs
    ADD COLUMN unique_key  VARCHAR(255)    NULL,
    ADD COLUMN unique_live VARBINARY(1020) NULL,
    ALGORITHM = INSTANT;

-- Built online: writes go on meanwhile. Every existing row has no key, so every entry is NULL.
ALTER TABLE jobs ADD UNIQUE INDEX jobs_unique_live_idx (unique_live), ALGORITHM = INPLACE, LOCK = NONE;

CREATE TRIGGER jobs_unique_live_insert BEFORE INSERT ON jobs FOR EACH ROW
    SET NEW.unique_live = CASE WHEN NEW.status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED') THEN CAST(NEW.unique_key AS BINARY) END;

CREATE TRIGGER jobs_unique_live_update BEFORE UPDATE ON jobs FOR EACH ROW
    SET NEW.unique_live = CASE WHEN NEW.status IN ('NEW', 'QUEUED', 'RUNNING', 'PAUSED') THEN CAST(NEW.unique_key AS BINARY) END;
