-- The audit trail: one row per AuditEvent, append-only (nothing updates or deletes a row).
-- Events are not versioned resources: one is written for every access to patient data, so
-- they skip the resource and index tables; a row holds the event (its JSON without id and
-- meta, which the id and the time give) and the columns its searches use.
CREATE TABLE audit_events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- the event's id
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
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_agent ON audit_events (agent_id, recorded);
CREATE INDEX audit_events_patient ON audit_events (patient_id, recorded);
CREATE INDEX audit_events_entity ON audit_events (entity_id, recorded);
