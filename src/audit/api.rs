//! The audit trail as FHIR: `AuditEvent/[id]` and `AuditEvent?…`, read from the store's
//! audit table. An event's id is its sequence number; it has one version, made when it was
//! recorded. Searches take the parameters the CapabilityStatement lists for AuditEvent,
//! parsed as every search is (`fhir::search`), then run on the table's columns.

use crate::fhir::bundle::{self, Page};
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{Fhir, Resp};
use crate::fhir::search::Search;
use crate::store::{Conn, LogColumn, LogQueryError, LoggedEvent, Store, Stored};
use crate::time::format_instant;

/// The resource type kept in the audit table.
pub const TYPE: &str = "AuditEvent";

/// Which columns of the audit table each search parameter reads (keys as the registry
/// names them). A parameter not named here is on no event (`_tag`, `_profile`…).
pub fn columns(param: &str) -> Option<LogColumn> {
    Some(match param {
        "AuditEvent.date" => LogColumn::Recorded,
        "AuditEvent.agent" => LogColumn::Reference(&["agent"]),
        "AuditEvent.patient" => LogColumn::Reference(&["patient"]),
        // the entities of an event: the resource it was about, and its patient
        "AuditEvent.entity" => LogColumn::Reference(&["entity", "patient"]),
        "AuditEvent.type" => LogColumn::Token("type"),
        "AuditEvent.subtype" => LogColumn::Token("subtype"),
        "AuditEvent.action" => LogColumn::Token("action"),
        "AuditEvent.outcome" => LogColumn::Token("outcome"),
        _ => return None,
    })
}

/// An event as a stored resource: its JSON with the id and meta it is served with.
fn stored(e: LoggedEvent) -> Stored {
    let id = e.seq.to_string();
    let event = super::served_body(&e.body, e.recorded);
    let rest = event.strip_prefix('{').unwrap_or("}");
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    let body = format!(
        r#"{{"resourceType":"{TYPE}","id":"{id}","meta":{{"versionId":"1","lastUpdated":"{}"}}{sep}{rest}"#,
        format_instant(e.recorded)
    );
    Stored {
        rid: e.seq,
        rtype: TYPE.to_owned(),
        id,
        version: 1,
        last_updated: e.recorded,
        deleted: false,
        body: Some(body),
    }
}

/// `AuditEvent/[id]`: the event, if `id` is one.
pub async fn read(store: &Store, id: &str) -> Result<Option<Stored>> {
    let Ok(seq) = id.parse::<i64>() else {
        return Ok(None);
    };
    let found = store
        .read(move |c| Box::pin(async move { c.audit_event(seq).await }))
        .await?;
    Ok(found.map(stored))
}

fn search_error(e: LogQueryError) -> Error {
    match e {
        LogQueryError::Unsupported(m) => Error::invalid("not-supported", m),
        LogQueryError::Store(e) => e.into(),
    }
}

/// `AuditEvent?…`: a searchset page of events.
pub async fn search(fhir: &Fhir, conn: &mut Conn<'_>, s: Search) -> Result<Resp> {
    let count_only = s.summary == Some(crate::fhir::search::Summary::Count);
    let mut page_query = s.query.clone();
    page_query.limit = s.count + 1;
    let mut rows: Vec<Stored> = if count_only || s.count == 0 {
        Vec::new()
    } else {
        conn.audit_search(&page_query, columns)
            .await
            .map_err(search_error)?
            .into_iter()
            .map(stored)
            .collect()
    };
    let has_next = rows.len() > s.count;
    rows.truncate(s.count);
    let total = if s.total || count_only || s.count == 0 {
        Some(
            conn.audit_count(&s.query, columns)
                .await
                .map_err(search_error)?,
        )
    } else if !has_next && (s.offset == 0 || !rows.is_empty()) {
        Some((s.offset + rows.len()) as i64)
    } else {
        None
    };
    let warnings = s.warnings.clone();
    Ok(bundle::searchset(
        fhir,
        TYPE,
        &s,
        Page {
            rows: &rows,
            included: &[],
            has_next,
            total,
            warnings: &warnings,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_served_with_its_id_and_meta() {
        let s = stored(LoggedEvent {
            seq: 42,
            recorded: 0,
            body: r#"{"action":"R"}"#.into(),
        });
        let v: serde_json::Value = serde_json::from_str(s.body.as_deref().unwrap()).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["id"], "42");
        assert_eq!(v["meta"]["versionId"], "1");
        assert_eq!(v["action"], "R");
        let s = stored(LoggedEvent {
            seq: 1,
            recorded: 0,
            body: "{}".into(),
        });
        let v: serde_json::Value = serde_json::from_str(s.body.as_deref().unwrap()).unwrap();
        assert_eq!(v["id"], "1");
    }
}
