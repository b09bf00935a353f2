-- SQLite's `versions` becomes a rowid table (see migrations/sqlite/0006_versions_rowid.sql);
-- a PostgreSQL table keeps its rows apart from its primary key's index already: nothing to do.
SELECT 1;
