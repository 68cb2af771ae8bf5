-- Named queues and priorities. Both columns have a constant default, which PostgreSQL 11 and
-- later store in the catalog: adding them rewrites no row and holds the table's lock for an
-- instant, whatever the table holds. VARCHAR(128) keeps a queue name a name, with no CHECK that
-- would scan the table.
ALTER TABLE jobs
    ADD COLUMN queue    VARCHAR(128) NOT NULL DEFAULT 'default',
    ADD COLUMN priority SMALLINT     NOT NULL DEFAULT 0;

-- The few queues that need a limit or a pause; users change it with plain SQL at run time.
CREATE TABLE queues (
    name            VARCHAR(128) PRIMARY KEY,
    -- Set: no job of the queue starts, on any replica, until it is NULL again.
    paused_at       TIMESTAMPTZ,
    -- At most this many jobs of the queue QUEUED or RUNNING at once, across all replicas.
    concurrency     INTEGER CONSTRAINT queues_concurrency_check CHECK (concurrency >= 0),
    -- At most this many starts a second, across all replicas. The upper bound also refuses NaN.
    rate_per_second DOUBLE PRECISION
                    CONSTRAINT queues_rate_check CHECK (rate_per_second > 0 AND rate_per_second <= 1000000),
    -- Kept by jobsd: the next start the rate allows (the replicas reserve starts from it in turn).
    -- A time the replicas can hold: not 'infinity', nor a year past 9999.
    next_start_at   TIMESTAMPTZ
                    CONSTRAINT queues_next_start_check CHECK (next_start_at BETWEEN '1970-01-01' AND '9999-12-31')
);

-- A change of a queue makes the new-jobs publishers read the table again at once.
CREATE FUNCTION queues_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobsd_queues', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER queues_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON queues
    FOR EACH STATEMENT
    EXECUTE FUNCTION queues_notify();
