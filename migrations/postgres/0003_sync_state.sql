-- State of the external synchronisations (the ROR directory): the high-water mark of the
-- last completed run and a lease so that one instance at a time syncs.
CREATE TABLE sync_state (
    name         TEXT   PRIMARY KEY,
    high_water   BIGINT,          -- microseconds: a delta asks for changes since then
    last_full    BIGINT,          -- microseconds: start of the last completed full sync
    lease_owner  TEXT,
    lease_until  BIGINT           -- microseconds; a lease past this is free
);
