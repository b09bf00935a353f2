//! Search queries as the store takes them: which resources of one type, filtered by conditions
//! on the index tables, sorted and paged. The FHIR layer decides what a search parameter
//! means (prefix semantics, modifiers, chains); this module only turns that into SQL that
//! both engines run unchanged (`$n` placeholders work on SQLite and PostgreSQL).

use std::fmt::Write;

/// One of the index tables of `migrations/*/0001_resources.sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    String,
    Token,
    Reference,
    Date,
    Number,
    Uri,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::String => "idx_string",
            Table::Token => "idx_token",
            Table::Reference => "idx_reference",
            Table::Date => "idx_date",
            Table::Number => "idx_number",
            Table::Uri => "idx_uri",
        }
    }

    fn has_column(self, column: &str) -> bool {
        let columns: &[&str] = match self {
            Table::String => &["norm", "exact"],
            Table::Token => &["system", "code"],
            Table::Reference => &["target_type", "target_id"],
            Table::Date => &["lo", "hi"],
            Table::Number => &["lo", "hi", "system", "code"],
            Table::Uri => &["value"],
        };
        columns.contains(&column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    Real(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// SQL `LIKE` with `\` as the escape character.
    Like,
}

impl Cmp {
    pub(super) fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::Ne => "<>",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Like => "LIKE",
        }
    }
}

/// A comparison of one column of an index row with a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub column: &'static str,
    pub cmp: Cmp,
    pub value: Arg,
}

impl Check {
    pub fn new(column: &'static str, cmp: Cmp, value: Arg) -> Self {
        Check { column, cmp, value }
    }
    pub fn text(column: &'static str, cmp: Cmp, value: impl Into<String>) -> Self {
        Check::new(column, cmp, Arg::Text(value.into()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Matches nothing (a value that can never be indexed, e.g. a malformed date).
    Nothing,
    Id(Vec<String>),
    /// Conditions on the resource's `last_updated`, all of which must hold.
    LastUpdated(Vec<(Cmp, i64)>),
    /// The resource has an index row of `param` meeting every check (a row, not rows).
    Has {
        table: Table,
        param: String,
        checks: Vec<Check>,
    },
    /// The resource has no index row of `param` meeting every check.
    HasNot {
        table: Table,
        param: String,
        checks: Vec<Check>,
    },
    /// The resource has (`missing == false`) or has not any value for `param`.
    Missing {
        table: Table,
        param: String,
        missing: bool,
    },
    /// The reference `param` points at a resource of `target_type` matching `query`.
    Chain {
        param: String,
        query: Box<Query>,
    },
    /// A resource of `source_type` matching `query` points at this one through `param` (`_has`).
    ReverseChain {
        param: String,
        query: Box<Query>,
    },
    Or(Vec<Filter>),
    And(Vec<Filter>),
    /// Within `km` of a point: the number rows `lat` and `long` of `param`, filtered on a
    /// bounding box (the `(param, lo)` index) then on the distance on an equirectangular
    /// projection at the point's latitude (arithmetic only, the same SQL on both engines;
    /// under 0.5 % off the great-circle distance below a few hundred km in France).
    Near {
        param: String,
        lat: f64,
        long: f64,
        km: f64,
    },
}

/// Kilometres per degree of latitude (mean Earth radius 6371 km).
pub const KM_PER_DEGREE: f64 = 111.195;

#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Id,
    LastUpdated,
    Index {
        table: Table,
        param: String,
        column: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub rtype: String,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
    pub limit: usize,
    pub offset: usize,
}

impl Query {
    pub fn new(rtype: impl Into<String>) -> Self {
        Query {
            rtype: rtype.into(),
            filters: Vec::new(),
            sort: Vec::new(),
            limit: usize::MAX,
            offset: 0,
        }
    }
}

/// SQL text with its arguments in placeholder order.
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    pub fn bind(&mut self, arg: Arg) {
        self.args.push(arg);
        let _ = write!(self.text, "${}", self.args.len());
    }
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    /// A value SQLite must not plan with: `CAST($n AS type)` (a no-op on PostgreSQL, where the
    /// type is the argument's own). The bundled SQLite keeps STAT4 statistics, and a statement
    /// comparing an indexed column with a bare `$n` is planned again at every execution with
    /// new values (the bind expires it): a fifth of a dashboard search's CPU, for the same
    /// plan, since the SQL here already fixes which index drives the query. Used for the
    /// index tables' parameter names and equality checks; ranges and the resource type stay
    /// bare, where values do change plans (BENCHMARKS.md, "Plans that ignore bound values").
    pub fn bind_fixed(&mut self, arg: Arg) {
        let ty = match arg {
            Arg::Text(_) => "TEXT",
            Arg::Int(_) => "BIGINT",
            Arg::Real(_) => "DOUBLE PRECISION",
        };
        self.args.push(arg);
        let _ = write!(self.text, "CAST(${} AS {ty})", self.args.len());
    }
    /// `(a, b, …)`: one placeholder per argument.
    pub fn bind_list(&mut self, args: impl IntoIterator<Item = Arg>) {
        self.push("(");
        for (i, a) in args.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(a);
        }
        self.push(")");
    }
    /// `(1 = 1 AND column < $n …)`: the `_lastUpdated`-style bounds on an instant column.
    pub fn bounds(&mut self, column: &str, bounds: &[(Cmp, i64)]) {
        self.push("(1 = 1");
        for (cmp, t) in bounds {
            let _ = write!(self.text, " AND {column} {} ", cmp.sql());
            self.bind(Arg::Int(*t));
        }
        self.push(")");
    }
    /// ` LIMIT n OFFSET m`, written as numbers rather than bound: SQLite plans with the value
    /// of a bound LIMIT, and then prepares the statement again at each execution (every bind
    /// expires it) — 13 % of a dashboard search's time.
    pub fn limit(&mut self, limit: usize, offset: usize) {
        let _ = write!(self.text, " LIMIT {limit} OFFSET {offset}");
    }
}

/// `SELECT <columns> FROM resources r JOIN versions v … WHERE <filters> ORDER BY … LIMIT …`
pub fn select_page(q: &Query) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT r.rid, r.rtype, r.id, r.version, r.last_updated, r.deleted, v.body \
         FROM resources r JOIN versions v ON v.rid = r.rid AND v.version = r.version WHERE ",
    );
    where_clause(&mut sql, q, "r");
    sql.push(" ORDER BY ");
    for s in &q.sort {
        sort_expr(&mut sql, s);
        sql.push(", ");
    }
    sql.push("r.rid");
    if q.limit != usize::MAX {
        sql.limit(q.limit, q.offset);
    }
    sql
}

pub fn select_count(q: &Query) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) FROM resources r WHERE ");
    where_clause(&mut sql, q, "r");
    sql
}

fn sort_expr(sql: &mut Sql, s: &Sort) {
    let dir = if s.descending { " DESC" } else { "" };
    match &s.key {
        SortKey::Id => {
            sql.push("r.id");
            sql.push(dir);
        }
        SortKey::LastUpdated => {
            sql.push("r.last_updated");
            sql.push(dir);
        }
        SortKey::Index {
            table,
            param,
            column,
        } => {
            debug_assert!(table.has_column(column));
            // Ascending sorts on the smallest value of a repeating element, descending on the
            // largest; resources without a value come last either way.
            let agg = if s.descending { "MAX" } else { "MIN" };
            let sub = |sql: &mut Sql| {
                let _ = write!(
                    sql.text,
                    "(SELECT {agg}(s.{column}) FROM {} s WHERE s.rid = r.rid AND s.param = ",
                    table.name()
                );
                sql.bind_fixed(Arg::Text(param.clone()));
                sql.push(")");
            };
            sub(sql);
            sql.push(" IS NULL, ");
            sub(sql);
            sql.push(dir);
        }
    }
}

/// Whether a filter only matches current resources of the query's type: index rows carry
/// `Type.param` keys and deleted resources have none.
fn implies_type(f: &Filter) -> bool {
    matches!(
        f,
        Filter::Has { .. }
            | Filter::Chain { .. }
            | Filter::Missing { missing: false, .. }
            | Filter::Near { .. }
    )
}

/// How likely a filter is to select few resources, lowest first: references and
/// identifiers before names, before codes like `status` that half the resources share.
fn selectivity_rank(f: &Filter) -> u8 {
    match f {
        Filter::Has {
            table: Table::Reference,
            ..
        } => 0,
        Filter::Has {
            table: Table::Token,
            param,
            ..
        } if param.ends_with("identifier") => 0,
        Filter::Has {
            table: Table::String,
            ..
        } => 1,
        Filter::Has {
            table: Table::Uri | Table::Number,
            ..
        } => 2,
        Filter::Chain { .. } | Filter::Near { .. } => 3,
        Filter::Has {
            table: Table::Date, ..
        } => 4,
        Filter::Has { .. } => 5,
        _ => 6,
    }
}

fn where_clause(sql: &mut Sql, q: &Query, alias: &str) {
    // One filter drives the query (`rid IN (index lookup)`); the others are probes of the
    // (rid, param) indexes for each candidate. Without a driver, the type's rows are scanned.
    let driver = q
        .filters
        .iter()
        .enumerate()
        .filter(|(_, f)| implies_type(f))
        .min_by_key(|(_, f)| selectivity_rank(f))
        .map(|(i, _)| i);
    match driver {
        // the driver's index rows imply the type and a live resource
        Some(_) => sql.push("1 = 1"),
        None => {
            let _ = write!(sql.text, "{alias}.rtype = ");
            sql.bind(Arg::Text(q.rtype.clone()));
            let _ = write!(sql.text, " AND {alias}.deleted = FALSE");
        }
    }
    for (i, f) in q.filters.iter().enumerate() {
        sql.push(" AND ");
        if Some(i) == driver {
            filter(sql, f, alias, &q.rtype);
        } else {
            probe(sql, f, alias, &q.rtype);
        }
    }
}

/// A filter as a correlated check of one resource (`EXISTS` on the `(rid, param)` index).
fn probe(sql: &mut Sql, f: &Filter, alias: &str, rtype: &str) {
    match f {
        Filter::Has {
            table,
            param,
            checks,
        } => {
            let _ = write!(
                sql.text,
                "EXISTS (SELECT 1 FROM {} x WHERE x.rid = {alias}.rid AND x.param = ",
                table.name()
            );
            sql.bind_fixed(Arg::Text(param.clone()));
            checks_sql(sql, checks, *table, "x");
            sql.push(")");
        }
        _ => filter(sql, f, alias, rtype),
    }
}

fn checks_sql(sql: &mut Sql, checks: &[Check], table: Table, row: &str) {
    for c in checks {
        debug_assert!(table.has_column(c.column), "{:?} {}", table, c.column);
        let _ = write!(sql.text, " AND {row}.{} {} ", c.column, c.cmp.sql());
        if c.cmp == Cmp::Eq {
            sql.bind_fixed(c.value.clone());
        } else {
            sql.bind(c.value.clone());
        }
        if c.cmp == Cmp::Like {
            sql.push(" ESCAPE '\\'");
        }
    }
}

fn filter(sql: &mut Sql, f: &Filter, alias: &str, rtype: &str) {
    match f {
        Filter::Nothing => sql.push("1 = 0"),
        Filter::Id(ids) => {
            let _ = write!(sql.text, "{alias}.id IN ");
            sql.bind_list(ids.iter().map(|id| Arg::Text(id.clone())));
        }
        Filter::LastUpdated(bounds) => sql.bounds(&format!("{alias}.last_updated"), bounds),
        // `rid IN (SELECT …)` rather than a correlated EXISTS: the index lookup drives the
        // query instead of a scan of every resource of the type checking each one.
        Filter::Has {
            table,
            param,
            checks,
        }
        | Filter::HasNot {
            table,
            param,
            checks,
        } => {
            let not = if matches!(f, Filter::HasNot { .. }) {
                "NOT "
            } else {
                ""
            };
            let _ = write!(
                sql.text,
                "{alias}.rid {not}IN (SELECT x.rid FROM {} x WHERE x.param = ",
                table.name()
            );
            sql.bind_fixed(Arg::Text(param.clone()));
            checks_sql(sql, checks, *table, "x");
            sql.push(")");
        }
        Filter::Missing {
            table,
            param,
            missing,
        } => {
            let not = if *missing { "NOT " } else { "" };
            let _ = write!(
                sql.text,
                "{alias}.rid {not}IN (SELECT x.rid FROM {} x WHERE x.param = ",
                table.name()
            );
            sql.bind_fixed(Arg::Text(param.clone()));
            sql.push(")");
        }
        Filter::Chain { param, query } => {
            let inner = format!("{alias}c");
            let _ = write!(
                sql.text,
                "{alias}.rid IN (SELECT x.rid FROM idx_reference x JOIN resources {inner} \
                 ON {inner}.id = x.target_id AND {inner}.rtype = x.target_type \
                 WHERE x.param = "
            );
            sql.bind_fixed(Arg::Text(param.clone()));
            sql.push(" AND ");
            where_clause(sql, query, &inner);
            sql.push(")");
        }
        Filter::ReverseChain { param, query } => {
            let inner = format!("{alias}h");
            let _ = write!(
                sql.text,
                "{alias}.id IN (SELECT x.target_id FROM idx_reference x JOIN resources {inner} \
                 ON {inner}.rid = x.rid WHERE x.target_type = "
            );
            sql.bind_fixed(Arg::Text(rtype.to_owned()));
            sql.push(" AND x.param = ");
            sql.bind_fixed(Arg::Text(param.clone()));
            sql.push(" AND ");
            where_clause(sql, query, &inner);
            sql.push(")");
        }
        Filter::Near {
            param,
            lat,
            long,
            km,
        } => {
            let km_lat = KM_PER_DEGREE;
            // near the poles a degree of longitude shrinks to nothing: keep the box finite
            let km_long = KM_PER_DEGREE * lat.to_radians().cos().max(0.01);
            let (dlat, dlong) = (km / km_lat, km / km_long);
            let _ = write!(
                sql.text,
                "{alias}.rid IN (SELECT a.rid FROM idx_number a JOIN idx_number b \
                 ON b.rid = a.rid AND b.param = a.param AND b.code = 'long' \
                 WHERE a.param = "
            );
            sql.bind_fixed(Arg::Text(param.clone()));
            sql.push(" AND a.code = 'lat' AND a.lo >= ");
            sql.bind(Arg::Real(lat - dlat));
            sql.push(" AND a.lo <= ");
            sql.bind(Arg::Real(lat + dlat));
            sql.push(" AND b.lo >= ");
            sql.bind(Arg::Real(long - dlong));
            sql.push(" AND b.lo <= ");
            sql.bind(Arg::Real(long + dlong));
            // (Δlat·km_lat)² + (Δlong·km_long)² <= km²
            for (col, centre, scale) in [("a", lat, km_lat), ("b", long, km_long)] {
                sql.push(if col == "a" { " AND (" } else { " + " });
                for i in 0..2 {
                    if i == 1 {
                        sql.push(" * ");
                    }
                    let _ = write!(sql.text, "(({col}.lo - ");
                    sql.bind(Arg::Real(*centre));
                    sql.push(") * ");
                    sql.bind(Arg::Real(scale));
                    sql.push(")");
                }
            }
            sql.push(") <= ");
            sql.bind(Arg::Real(km * km));
            sql.push(")");
        }
        Filter::Or(fs) | Filter::And(fs) => {
            if fs.is_empty() {
                sql.push(if matches!(f, Filter::Or(_)) {
                    "1 = 0"
                } else {
                    "1 = 1"
                });
                return;
            }
            let op = if matches!(f, Filter::Or(_)) {
                " OR "
            } else {
                " AND "
            };
            sql.push("(");
            for (i, sub) in fs.iter().enumerate() {
                if i > 0 {
                    sql.push(op);
                }
                filter(sql, sub, alias, rtype);
            }
            sql.push(")");
        }
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_arguments() {
        let mut q = Query::new("Task");
        q.filters.push(Filter::Has {
            table: Table::Token,
            param: "Task.status".into(),
            checks: vec![Check::text("code", Cmp::Eq, "requested")],
        });
        q.sort.push(Sort {
            key: SortKey::Index {
                table: Table::Date,
                param: "Task.authored-on".into(),
                column: "lo",
            },
            descending: true,
        });
        q.limit = 20;
        q.offset = 40;
        let sql = select_page(&q);
        assert_eq!(sql.args.len(), 4);
        for i in 1..=4 {
            assert!(sql.text.contains(&format!("${i}")), "{}", sql.text);
        }
        assert!(!sql.text.contains("$5"));
        // the page's bounds are numbers in the text, not parameters
        assert!(sql.text.ends_with(" LIMIT 20 OFFSET 40"), "{}", sql.text);
    }

    #[test]
    fn index_lookups_bind_values_the_planner_does_not_read() {
        let mut q = Query::new("Task");
        q.filters.push(Filter::Has {
            table: Table::Reference,
            param: "Task.owner".into(),
            checks: vec![
                Check::text("target_type", Cmp::Eq, "HealthcareService"),
                Check::text("target_id", Cmp::Eq, "hs-1"),
            ],
        });
        q.filters.push(Filter::Has {
            table: Table::Date,
            param: "Task.authored-on".into(),
            checks: vec![Check::new("lo", Cmp::Ge, Arg::Int(1_000))],
        });
        q.filters.push(Filter::LastUpdated(vec![(Cmp::Gt, 5)]));
        let sql = select_page(&q).text;
        // the driver and the probe: names and equalities cast, planned once
        for n in 1..=3 {
            assert!(sql.contains(&format!("= CAST(${n} AS TEXT)")), "{sql}");
        }
        assert!(sql.contains("x.param = CAST($4 AS TEXT)"), "{sql}");
        // a range and `_lastUpdated` stay bare: their values do change plans
        assert!(sql.contains("x.lo >= $5"), "{sql}");
        assert!(sql.contains("r.last_updated > $6"), "{sql}");

        // a scan of the type keeps its type bare (a skewed column)
        let mut scan = Query::new("Patient");
        scan.filters.push(Filter::LastUpdated(vec![(Cmp::Lt, 9)]));
        let sql = select_page(&scan).text;
        assert!(sql.contains("r.rtype = $1 AND"), "{sql}");
    }

    #[test]
    fn like_is_escaped() {
        assert_eq!(like_escape("a%b_c\\"), "a\\%b\\_c\\\\");
    }
}
