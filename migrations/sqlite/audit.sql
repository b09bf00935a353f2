-- The audit trail of a SQLite database lives in a file of its own next to it (`NAME-audit.EXT`),
-- attached to every connection as `audit`. Each commit to a SQLite file in WAL mode empties the
-- page cache of every reader of that file; with the trail in the main file, the audit commit
-- that follows every read left each search to start from an empty cache. The table is the one
-- of migration 5, which still creates it in the main file: `Store::open` moves its rows here
-- and drops it. Every statement here may run again on each start.
CREATE TABLE IF NOT EXISTS audit.audit_events (
    seq            INTEGER PRIMARY KEY,        -- the event's id
    recorded       BIGINT  NOT NULL,           -- microseconds since the epoch
    agent_type     TEXT,                       -- the requesting agent, as a reference
    agent_id       TEXT,
    patient_type   TEXT,                       -- the patient the access was about
    patient_id     TEXT,
    entity_type    TEXT,                       -- the resource read or written
    entity_id      TEXT,
    type_system    TEXT    NOT NULL,
    type_code      TEXT    NOT NULL,
    subtype_system TEXT    NOT NULL,
    subtype_code   TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    outcome        TEXT    NOT NULL,
    body           TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit.audit_events_recorded ON audit_events (recorded);
CREATE INDEX IF NOT EXISTS audit.audit_events_agent ON audit_events (agent_id, recorded);
CREATE INDEX IF NOT EXISTS audit.audit_events_patient ON audit_events (patient_id, recorded);
CREATE INDEX IF NOT EXISTS audit.audit_events_entity ON audit_events (entity_id, recorded);
