-- PostgreSQL's planner gets statistics on the search index tables' columns taken together
-- (see migrations/postgres/0008_search_statistics.sql); SQLite's keeps its own (`PRAGMA
-- optimize`), and its searches follow the index the SQL puts first: nothing to do.
SELECT 1;
