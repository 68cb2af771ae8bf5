-- The times replicas read from `queues` and `schedules` must be times they can hold, as
-- PostgreSQL's CHECKs (1970 to 9999) and MySQL's TIMESTAMP columns already require: UTC text
-- in jobsd's spelling, from 1970 on. Triggers, since SQLite adds no CHECK to an existing table
-- without copying it; rows already there are left as they are (a replica reads a time it cannot
-- hold as unknown).

CREATE TRIGGER queues_next_start_at_insert BEFORE INSERT ON queues
WHEN NEW.next_start_at IS NOT NULL AND (NEW.next_start_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.next_start_at) IS NULL OR NEW.next_start_at < '1970-01-01')
BEGIN SELECT RAISE(ABORT, 'queues.next_start_at must be UTC text from 1970-01-01 to 9999-12-31, or NULL'); END;

CREATE TRIGGER queues_next_start_at_update BEFORE UPDATE OF next_start_at ON queues
WHEN NEW.next_start_at IS NOT NULL AND (NEW.next_start_at NOT GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*' OR julianday(NEW.next_start_at) IS NULL OR NEW.next_start_at < '1970-01-01')
BEGIN SELECT RAISE(ABORT, 'queues.next_start_at must be UTC text from 1970-01-01 to 9999-12-31, or NULL'); END;

-- The table's CHECKs hold the spelling (four-digit years, so at most 9999); this the lower end.
CREATE TRIGGER schedules_times_insert BEFORE INSERT ON schedules
WHEN NEW.created_at < '1970-01-01' OR NEW.next_run_at < '1970-01-01' OR NEW.last_run_at < '1970-01-01'
BEGIN SELECT RAISE(ABORT, 'schedules times must be from 1970-01-01 to 9999-12-31'); END;

CREATE TRIGGER schedules_times_update BEFORE UPDATE OF created_at, next_run_at, last_run_at ON schedules
WHEN NEW.created_at < '1970-01-01' OR NEW.next_run_at < '1970-01-01' OR NEW.last_run_at < '1970-01-01'
BEGIN SELECT RAISE(ABORT, 'schedules times must be from 1970-01-01 to 9999-12-31'); END;
