-- Numbers the gateway hands out (dossier numbers, one counter per module prefix).
-- A number is taken inside the transaction that uses it: a rolled-back write never
-- published it, a committed one never gives it again.
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
