-- Unique jobs (DESIGN §2): while a job with a unique_key is NEW, QUEUED, RUNNING or PAUSED, the
-- database refuses another INSERT with the same key. Nullable and without a default, the column
-- is added in the catalog alone: no row is rewritten or scanned, and the table's lock is held for
-- an instant, whatever the table holds. VARCHAR(255) keeps a key a key; the unique index that
-- enforces it is built in the next file, without blocking writes.
ALTER TABLE jobs ADD COLUMN unique_key VARCHAR(255);
