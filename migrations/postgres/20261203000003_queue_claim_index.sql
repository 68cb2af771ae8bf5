-- no-transaction
-- The claim of one limited queue, over NEW rows only: built without blocking writes to jobs.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_queue_claim_idx ON jobs (queue, priority, run_at, id) WHERE status = 'NEW';
