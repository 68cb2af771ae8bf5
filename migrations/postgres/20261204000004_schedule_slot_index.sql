-- no-transaction
-- One job per schedule and slot, whatever happens: the backstop of the conditional UPDATE that
-- picks the replica inserting a slot's job. Only scheduled jobs are indexed, and it is built
-- without blocking writes to jobs (one statement per file: CONCURRENTLY cannot run inside a
-- transaction).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_schedule_slot_idx ON jobs (schedule, scheduled_for) WHERE schedule IS NOT NULL;
