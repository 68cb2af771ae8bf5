-- no-transaction
-- The claim's order, over NEW rows only: built without blocking writes to jobs. (One statement
-- per file: CONCURRENTLY cannot run inside a transaction, and a file of several statements is
-- one.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_claim_order_idx ON jobs (priority, run_at, id) WHERE status = 'NEW';
