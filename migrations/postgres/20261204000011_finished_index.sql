-- no-transaction
-- Old finished rows, found in the order they finished without reading live ones: built without
-- blocking writes to jobs.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_finished_idx ON jobs (status, finished_at) WHERE status IN ('DONE', 'FAILED', 'CANCELLED');
