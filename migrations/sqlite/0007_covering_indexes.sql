-- The search indexes cover the queries that use them. A lookup index (`param`, value) led a
-- search to the rows holding a value, then to each row itself for its `rid`; a `(rid, param)`
-- index let a search check a resource's value only after reading the row. With `rid` at the
-- end of each lookup index and the compared columns at the end of each `rid` index, both are
-- answered from the index alone (an index-only scan on PostgreSQL, once vacuumed). Measured
-- on a copy of the benchmark database: BENCHMARKS.md, "One hand-off per create, covering search
-- indexes".
DROP INDEX idx_string_lookup;
CREATE INDEX idx_string_lookup ON idx_string (param, norm, rid);
DROP INDEX idx_string_rid;
CREATE INDEX idx_string_rid ON idx_string (rid, param, norm);
DROP INDEX idx_token_lookup;
CREATE INDEX idx_token_lookup ON idx_token (param, code, system, rid);
DROP INDEX idx_token_rid;
CREATE INDEX idx_token_rid ON idx_token (rid, param, code, system);
DROP INDEX idx_reference_lookup;
CREATE INDEX idx_reference_lookup ON idx_reference (param, target_id, target_type, rid);
DROP INDEX idx_reference_rid;
CREATE INDEX idx_reference_rid ON idx_reference (rid, param, target_type, target_id);
DROP INDEX idx_date_lookup;
CREATE INDEX idx_date_lookup ON idx_date (param, lo, hi, rid);
DROP INDEX idx_date_rid;
CREATE INDEX idx_date_rid ON idx_date (rid, param, lo, hi);
DROP INDEX idx_number_lookup;
CREATE INDEX idx_number_lookup ON idx_number (param, lo, hi, rid);
DROP INDEX idx_number_rid;
CREATE INDEX idx_number_rid ON idx_number (rid, param, lo, hi);
DROP INDEX idx_uri_lookup;
CREATE INDEX idx_uri_lookup ON idx_uri (param, value, rid);
DROP INDEX idx_uri_rid;
CREATE INDEX idx_uri_rid ON idx_uri (rid, param, value);
