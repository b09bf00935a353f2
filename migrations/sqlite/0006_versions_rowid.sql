-- `versions` becomes a rowid table. In a WITHOUT ROWID table a row is its own key: each
-- comparison of a lookup's binary search loads the whole record of the row it passes, overflow
-- pages included, so finding one 2.3 KB Task read a dozen other bodies from disk. Here the key
-- (rid, version) is a small separate index and a body of up to ~4 KB lives in its row.
-- Measured on a copy of the benchmark database (18k Tasks, 2 cores): read by id 2.0x, the
-- dashboard search 1.6x (BENCHMARKS.md).
CREATE TABLE versions_by_rowid (
    rid          INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method       TEXT    NOT NULL, -- POST, PUT, PATCH or DELETE: the history Bundle's request
    body         TEXT,             -- the resource as served; NULL for a deletion
    PRIMARY KEY (rid, version)
);
INSERT INTO versions_by_rowid (rid, version, last_updated, method, body)
    SELECT rid, version, last_updated, method, body FROM versions ORDER BY rid, version;
DROP TABLE versions;
ALTER TABLE versions_by_rowid RENAME TO versions;
CREATE INDEX versions_updated ON versions (last_updated);
