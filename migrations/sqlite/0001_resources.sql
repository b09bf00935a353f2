-- Resources: one row per logical resource (its current version), every version kept.
CREATE TABLE resources (
    rid          INTEGER PRIMARY KEY,
    rtype        TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL, -- microseconds since the epoch
    deleted      BOOLEAN NOT NULL,
    UNIQUE (rtype, id)
);
CREATE INDEX resources_type_updated ON resources (rtype, last_updated);
-- the default search order (rid) within a type, without a sort
CREATE INDEX resources_type_rid ON resources (rtype, rid);

CREATE TABLE versions (
    rid          INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method       TEXT    NOT NULL, -- POST, PUT, PATCH or DELETE: the history Bundle's request
    body         TEXT,             -- the resource as served; NULL for a deletion
    PRIMARY KEY (rid, version)
) WITHOUT ROWID;
CREATE INDEX versions_updated ON versions (last_updated);

-- Search index of the current version. `param` is `Type.code`.
CREATE TABLE idx_string (rid INTEGER NOT NULL, param TEXT NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL);
CREATE INDEX idx_string_lookup ON idx_string (param, norm);
CREATE INDEX idx_string_rid ON idx_string (rid, param);

CREATE TABLE idx_token (rid INTEGER NOT NULL, param TEXT NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL);
CREATE INDEX idx_token_lookup ON idx_token (param, code, system);
CREATE INDEX idx_token_rid ON idx_token (rid, param);

CREATE TABLE idx_reference (rid INTEGER NOT NULL, param TEXT NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL);
CREATE INDEX idx_reference_lookup ON idx_reference (param, target_id, target_type);
CREATE INDEX idx_reference_rid ON idx_reference (rid, param);

CREATE TABLE idx_date (rid INTEGER NOT NULL, param TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL);
CREATE INDEX idx_date_lookup ON idx_date (param, lo);
CREATE INDEX idx_date_rid ON idx_date (rid, param);

CREATE TABLE idx_number (rid INTEGER NOT NULL, param TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL);
CREATE INDEX idx_number_lookup ON idx_number (param, lo);
CREATE INDEX idx_number_rid ON idx_number (rid, param);

CREATE TABLE idx_uri (rid INTEGER NOT NULL, param TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX idx_uri_lookup ON idx_uri (param, value);
CREATE INDEX idx_uri_rid ON idx_uri (rid, param);
