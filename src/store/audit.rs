//! The audit trail's table (`audit_events`, migration 0005): append-only rows, one per
//! event, each with its body and the few columns searches use.
//!
//! Events are not versioned resources: one is written for every access to patient data, so
//! they skip `resources`, `versions` and the index tables (about fifteen index rows an event,
//! which made auditing cost a read five times the read itself). Nothing here updates or
//! deletes a row.
//!
//! Searches arrive as the same [`Query`] IR as resource searches, with a map from the
//! caller's parameter keys to this table's columns ([`LogColumn`]); what the map does not
//! name is never present on an event.

use std::fmt::Write;

use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, AssertSqlSafe, Row};

use super::query::{Arg, Check, Filter, Query, SortKey, Sql, Table};
use super::{Conn, Script, StoreError};
use crate::time::Micros;

/// One event as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub recorded: Micros,
    pub agent: Option<(String, String)>,
    pub patient: Option<(String, String)>,
    pub entity: Option<(String, String)>,
    pub kind: (String, String),
    pub subtype: (String, String),
    pub action: String,
    pub outcome: String,
    /// The event's JSON without `id` and `meta`, or what a REST access's event is written
    /// from when served (`audit::served_body`).
    pub body: String,
}

/// An event read back: its sequence number (the id), when, and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub seq: i64,
    pub recorded: Micros,
    pub body: String,
}

/// Which columns a search parameter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogColumn {
    /// The instant the event was recorded (`lo` and `hi` of date checks).
    Recorded,
    /// Reference columns (`agent`, `patient`, `entity`); a parameter naming several matches
    /// an event when any of them does.
    Reference(&'static [&'static str]),
    /// A coded column pair (`type`, `subtype`) or a code alone (`action`, `outcome`).
    Token(&'static str),
}

/// Which columns a search parameter (its registry key) reads; `None`: never on an event.
pub type Columns = fn(&str) -> Option<LogColumn>;

const COLUMNS: usize = 14;
/// What an INSERT names.
const TARGET: &str = "audit_events (recorded, agent_type, agent_id, patient_type, \
    patient_id, entity_type, entity_id, type_system, type_code, subtype_system, subtype_code, \
    action, outcome, body)";

/// Writes rows now, as multi-row INSERTs.
pub(super) async fn insert(conn: &mut Conn<'_>, rows: &[AuditRow]) -> Result<(), StoreError> {
    match conn {
        Conn::Sqlite(c, _) => {
            let mut s = Script::new(false);
            script(&mut s, rows)?;
            s.run(c).await
        }
        Conn::Pg(c) => {
            let head = format!("INSERT INTO {TARGET} VALUES ");
            for chunk in super::chunks(rows) {
                let sql = super::values_sql(&head, COLUMNS, chunk.len(), false);
                let mut args = PgArguments::default();
                for r in chunk {
                    add_row(&mut args, r)
                        .map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))?;
                }
                sqlx::query_with(AssertSqlSafe(sql), args)
                    .execute(&mut **c)
                    .await?;
            }
            Ok(())
        }
    }
}

/// Adds the INSERTs of `rows` to a SQLite script.
pub(super) fn script(script: &mut Script, rows: &[AuditRow]) -> Result<(), StoreError> {
    script.insert(TARGET, COLUMNS, rows, add_row)
}

/// The `COLUMNS` values of one row, in `TARGET`'s order.
fn add_row<A>(a: &mut A, r: &AuditRow) -> Result<(), BoxDynError>
where
    A: Arguments,
    for<'t> i64: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
    for<'t> Option<String>: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
    for<'t> String: sqlx::Encode<'t, A::Database> + sqlx::Type<A::Database>,
{
    let pair = |p: &Option<(String, String)>| {
        p.as_ref()
            .map_or((None, None), |(t, i)| (Some(t.clone()), Some(i.clone())))
    };
    let (agent_type, agent_id) = pair(&r.agent);
    let (patient_type, patient_id) = pair(&r.patient);
    let (entity_type, entity_id) = pair(&r.entity);
    a.add(r.recorded)?;
    a.add(agent_type)?;
    a.add(agent_id)?;
    a.add(patient_type)?;
    a.add(patient_id)?;
    a.add(entity_type)?;
    a.add(entity_id)?;
    a.add(r.kind.0.clone())?;
    a.add(r.kind.1.clone())?;
    a.add(r.subtype.0.clone())?;
    a.add(r.subtype.1.clone())?;
    a.add(r.action.clone())?;
    a.add(r.outcome.clone())?;
    a.add(r.body.clone())
}

impl Conn<'_> {
    /// One event by its sequence number.
    pub async fn audit_event(&mut self, seq: i64) -> Result<Option<LoggedEvent>, StoreError> {
        self.sync().await?;
        let sql = "SELECT seq, recorded, body FROM audit_events WHERE seq = $1";
        Ok(on_conn!(self, |c| {
            sqlx::query(sql)
                .bind(seq)
                .fetch_optional(&mut **c)
                .await?
                .map(|r| logged(&r))
                .transpose()?
        }))
    }

    /// A page of events matching `q` (its type is ignored), in `seq` order unless sorted.
    pub async fn audit_search(
        &mut self,
        q: &Query,
        columns: Columns,
    ) -> Result<Vec<LoggedEvent>, LogQueryError> {
        self.sync().await?;
        let mut sql = Sql::default();
        sql.push("SELECT seq, recorded, body FROM audit_events WHERE ");
        where_all(&mut sql, &q.filters, columns)?;
        sql.push(" ORDER BY ");
        for s in &q.sort {
            let column = match &s.key {
                SortKey::Id => "seq",
                SortKey::LastUpdated => "recorded",
                SortKey::Index { param, .. } if columns(param) == Some(LogColumn::Recorded) => {
                    "recorded"
                }
                SortKey::Index { param, .. } => {
                    return Err(LogQueryError::Unsupported(format!(
                        "the audit trail is not sorted by `{param}`"
                    )));
                }
            };
            let _ = write!(
                sql.text,
                "{column}{}, ",
                if s.descending { " DESC" } else { "" }
            );
        }
        sql.push("seq");
        if q.limit != usize::MAX {
            sql.limit(q.limit, q.offset);
        }
        Ok(on_conn!(self, |c| {
            bind_args!(sqlx::query(AssertSqlSafe(sql.text)), &sql.args)
                .fetch_all(&mut **c)
                .await
                .map_err(StoreError::from)?
                .iter()
                .map(logged)
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)?
        }))
    }

    /// How many events match `q`.
    pub async fn audit_count(&mut self, q: &Query, columns: Columns) -> Result<i64, LogQueryError> {
        self.sync().await?;
        let mut sql = Sql::default();
        sql.push("SELECT COUNT(*) FROM audit_events WHERE ");
        where_all(&mut sql, &q.filters, columns)?;
        Ok(on_conn!(self, |c| {
            bind_args!(
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.text)),
                &sql.args
            )
            .fetch_one(&mut **c)
            .await
            .map_err(StoreError::from)?
        }))
    }
}

fn logged<R: Row>(r: &R) -> Result<LoggedEvent, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(LoggedEvent {
        seq: r.try_get(0)?,
        recorded: r.try_get(1)?,
        body: r.try_get(2)?,
    })
}

/// A search the audit table cannot answer, or a database error.
#[derive(Debug, thiserror::Error)]
pub enum LogQueryError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn where_all(sql: &mut Sql, filters: &[Filter], columns: Columns) -> Result<(), LogQueryError> {
    sql.push("1 = 1");
    for f in filters {
        sql.push(" AND ");
        filter(sql, f, columns)?;
    }
    Ok(())
}

fn filter(sql: &mut Sql, f: &Filter, columns: Columns) -> Result<(), LogQueryError> {
    match f {
        Filter::Nothing => sql.push("1 = 0"),
        Filter::Id(ids) => {
            // ids are sequence numbers: any other id names no event
            let seqs: Vec<i64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
            if seqs.is_empty() {
                sql.push("1 = 0");
            } else {
                sql.push("seq IN ");
                sql.bind_list(seqs.into_iter().map(Arg::Int));
            }
        }
        Filter::LastUpdated(bounds) => sql.bounds("recorded", bounds),
        Filter::Has {
            table,
            param,
            checks,
        } => has(sql, *table, param, checks, columns)?,
        Filter::HasNot {
            table,
            param,
            checks,
        } => {
            // NULL columns (no value) are "not that value" too
            sql.push("(");
            has(sql, *table, param, checks, columns)?;
            sql.push(") IS NOT TRUE");
        }
        Filter::Missing { param, missing, .. } => match columns(param) {
            Some(c) => {
                let cols = value_columns(c);
                sql.push("(");
                for (i, col) in cols.iter().enumerate() {
                    if i > 0 {
                        sql.push(if *missing { " AND " } else { " OR " });
                    }
                    let _ = write!(
                        sql.text,
                        "{col} IS {}NULL",
                        if *missing { "" } else { "NOT " }
                    );
                }
                sql.push(")");
            }
            // a parameter the table does not keep is missing on every event
            None => sql.push(if *missing { "1 = 1" } else { "1 = 0" }),
        },
        Filter::Or(fs) | Filter::And(fs) => {
            let or = matches!(f, Filter::Or(_));
            if fs.is_empty() {
                sql.push(if or { "1 = 0" } else { "1 = 1" });
                return Ok(());
            }
            sql.push("(");
            for (i, sub) in fs.iter().enumerate() {
                if i > 0 {
                    sql.push(if or { " OR " } else { " AND " });
                }
                filter(sql, sub, columns)?;
            }
            sql.push(")");
        }
        Filter::Chain { param, .. } | Filter::ReverseChain { param, .. } => {
            return Err(LogQueryError::Unsupported(format!(
                "chained searches (`{param}`) are not supported on the audit trail"
            )));
        }
        Filter::Near { param, .. } => {
            return Err(LogQueryError::Unsupported(format!(
                "`{param}` is not supported on the audit trail"
            )));
        }
    }
    Ok(())
}

/// The columns that hold a parameter's value (for `:missing`).
fn value_columns(c: LogColumn) -> Vec<String> {
    match c {
        LogColumn::Recorded => vec!["recorded".into()],
        LogColumn::Reference(names) => names.iter().map(|n| format!("{n}_id")).collect(),
        LogColumn::Token(name) => vec![token_columns(name).1],
    }
}

/// `type` → (`type_system`, `type_code`); a code alone (`action`) has no system column.
fn token_columns(name: &str) -> (Option<String>, String) {
    match name {
        "type" | "subtype" => (Some(format!("{name}_system")), format!("{name}_code")),
        _ => (None, name.to_owned()),
    }
}

fn has(
    sql: &mut Sql,
    table: Table,
    param: &str,
    checks: &[Check],
    columns: Columns,
) -> Result<(), LogQueryError> {
    let Some(c) = columns(param) else {
        // nothing of this parameter is kept: no event has a value for it
        sql.push("1 = 0");
        return Ok(());
    };
    let unsupported = || {
        LogQueryError::Unsupported(format!(
            "`{param}` cannot be searched that way on the audit trail"
        ))
    };
    match (c, table) {
        (LogColumn::Recorded, Table::Date) => {
            sql.push("(1 = 1");
            for ch in checks {
                // an event's time is one instant: its range is [recorded, recorded]
                let _ = write!(sql.text, " AND recorded {} ", ch.cmp.sql());
                sql.bind(ch.value.clone());
            }
            sql.push(")");
        }
        (LogColumn::Reference(names), Table::Reference) => {
            sql.push("(");
            for (i, n) in names.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push("(1 = 1");
                for ch in checks {
                    let col = match ch.column {
                        "target_type" => format!("{n}_type"),
                        "target_id" => format!("{n}_id"),
                        _ => return Err(unsupported()),
                    };
                    let _ = write!(sql.text, " AND {col} {} ", ch.cmp.sql());
                    sql.bind(ch.value.clone());
                }
                sql.push(")");
            }
            sql.push(")");
        }
        (LogColumn::Token(name), Table::Token) => {
            let (system, code) = token_columns(name);
            sql.push("(1 = 1");
            for ch in checks {
                let col = match (ch.column, &system) {
                    ("code", _) => code.clone(),
                    ("system", Some(s)) => s.clone(),
                    // codes without a system: only `|code` (no system) matches
                    ("system", None) if ch.value == Arg::Text(String::new()) => continue,
                    ("system", None) => {
                        sql.push(" AND 1 = 0");
                        continue;
                    }
                    _ => return Err(unsupported()),
                };
                let _ = write!(sql.text, " AND {col} {} ", ch.cmp.sql());
                sql.bind(ch.value.clone());
            }
            sql.push(")");
        }
        _ => return Err(unsupported()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::query::Cmp;
    use super::*;

    fn columns(p: &str) -> Option<LogColumn> {
        match p {
            "AuditEvent.date" => Some(LogColumn::Recorded),
            "AuditEvent.entity" => Some(LogColumn::Reference(&["entity", "patient"])),
            "AuditEvent.type" => Some(LogColumn::Token("type")),
            "AuditEvent.action" => Some(LogColumn::Token("action")),
            _ => None,
        }
    }

    fn sql_of(filters: Vec<Filter>) -> Sql {
        let mut sql = Sql::default();
        where_all(&mut sql, &filters, columns).unwrap();
        sql
    }

    #[test]
    fn references_match_any_of_their_columns() {
        let sql = sql_of(vec![Filter::Has {
            table: Table::Reference,
            param: "AuditEvent.entity".into(),
            checks: vec![
                Check::text("target_type", Cmp::Eq, "Patient"),
                Check::text("target_id", Cmp::Eq, "p1"),
            ],
        }]);
        assert_eq!(
            sql.text,
            "1 = 1 AND ((1 = 1 AND entity_type = $1 AND entity_id = $2) OR (1 = 1 AND patient_type = $3 AND patient_id = $4))"
        );
        assert_eq!(sql.args.len(), 4);
    }

    #[test]
    fn unknown_parameters_match_nothing_and_chains_are_refused() {
        let sql = sql_of(vec![Filter::Has {
            table: Table::Token,
            param: "_tag".into(),
            checks: vec![Check::text("code", Cmp::Eq, "x")],
        }]);
        assert_eq!(sql.text, "1 = 1 AND 1 = 0");
        let mut sql = Sql::default();
        let chain = Filter::Chain {
            param: "AuditEvent.agent".into(),
            query: Box::new(Query::new("Practitioner")),
        };
        assert!(matches!(
            where_all(&mut sql, &[chain], columns),
            Err(LogQueryError::Unsupported(_))
        ));
    }

    #[test]
    fn codes_without_a_system_match_only_without_one() {
        let sql = sql_of(vec![Filter::Has {
            table: Table::Token,
            param: "AuditEvent.action".into(),
            checks: vec![
                Check::text("system", Cmp::Eq, "http://x"),
                Check::text("code", Cmp::Eq, "R"),
            ],
        }]);
        assert_eq!(sql.text, "1 = 1 AND (1 = 1 AND 1 = 0 AND action = $1)");
    }
}
