-- Sign-in state shared by every gateway instance on one database (psc auth mode):
-- sign-ins under way, browser sessions, and the client assertion ids already used.
-- Secrets a row would let someone replay are kept as SHA-256 hashes (state, session id).

-- A browser sign-in started at /auth/login, until its callback (single use).
CREATE TABLE auth_pending (
    state_hash  TEXT   PRIMARY KEY,   -- SHA-256 (base64url) of the `state` sent to PSC
    nonce       TEXT   NOT NULL,
    verifier    TEXT   NOT NULL,      -- the PKCE code verifier
    created     BIGINT NOT NULL       -- microseconds (the gateway's clock)
);
CREATE INDEX auth_pending_created ON auth_pending (created);

-- A signed-in clinician's server-side session (the cookie holds the id, never stored).
CREATE TABLE auth_sessions (
    id_hash         TEXT   PRIMARY KEY,   -- SHA-256 (base64url) of the cookie's session id
    subject_name_id TEXT   NOT NULL,
    practitioner    TEXT   NOT NULL,      -- Practitioner/<id>
    given_name      TEXT,
    family_name     TEXT,
    acr             TEXT   NOT NULL,
    id_token        TEXT   NOT NULL,      -- the logout's id_token_hint
    created         BIGINT NOT NULL,      -- microseconds: the absolute limit runs from here
    last_seen       BIGINT NOT NULL       -- microseconds: the idle limit runs from here
);
CREATE INDEX auth_sessions_last_seen ON auth_sessions (last_seen);
CREATE INDEX auth_sessions_created ON auth_sessions (created);

-- `client_id␟jti` of accepted client assertions until they expire (replay check).
CREATE TABLE auth_jti (
    key      TEXT   PRIMARY KEY,
    expires  BIGINT NOT NULL          -- seconds since the epoch (the assertion's exp)
);
CREATE INDEX auth_jti_expires ON auth_jti (expires);
