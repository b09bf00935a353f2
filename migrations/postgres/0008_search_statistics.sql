-- Statistics on the search index tables' columns taken together. PostgreSQL estimated a
-- lookup as if its columns were independent: for `Task.owner` = `HealthcareService/hs-bench-07`
-- it expected 8 rows of 206, and so fetched the bodies of every match before sorting out the
-- first page, instead of walking the lookup index in `rid` order and stopping at the page's
-- end. A value names its parameter and its target type (`dependencies`), and the commonest
-- combinations are kept whole (`mcv`). ANALYZE, autovacuum's included, keeps them current.
-- Measured: BENCHMARKS.md, "Search statistics on PostgreSQL". SQLite: nothing to do.
CREATE STATISTICS idx_reference_values (dependencies, mcv)
    ON param, target_type, target_id FROM idx_reference;
CREATE STATISTICS idx_token_values (dependencies, mcv)
    ON param, system, code FROM idx_token;
ANALYZE idx_reference;
ANALYZE idx_token;
