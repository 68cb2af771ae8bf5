-- no-transaction
-- The claim's earlier index (run_at, id): the two above replace it.
DROP INDEX CONCURRENTLY IF EXISTS jobs_claim_idx;
