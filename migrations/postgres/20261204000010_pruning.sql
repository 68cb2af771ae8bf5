-- The lease that lets one replica at a time delete old finished rows. A new one-row table:
-- instant, whatever jobs holds.
CREATE TABLE jobsd_leases (
    name   TEXT PRIMARY KEY,
    holder TEXT,
    until  TIMESTAMPTZ
);
INSERT INTO jobsd_leases (name) VALUES ('pruner');
