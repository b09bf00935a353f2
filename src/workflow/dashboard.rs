//! Dashboards as files: the same Task search a dashboard tab runs, written as one row per
//! request with the columns of `mappings/dashboard-tabs.json` (`_format=csv|xlsx`).

use std::collections::HashMap;

use serde_json::Value;

use super::moves::business_status;
use super::{Workflow, reference_id};
use crate::export::Table;
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{Fhir, Req};
use crate::store::Conn;

/// The columns the code knows how to fill.
pub const COLUMNS: &[&str] = &[
    "dossier",
    "patient",
    "birth-date",
    "postal-code",
    "city",
    "unit",
    "status",
    "pending-action",
    "sent",
    "last-change",
];

/// The most rows one export holds; a larger one asks the user to narrow the search.
const MAX_ROWS: usize = 50_000;

fn body(s: &crate::store::Stored) -> Option<Value> {
    serde_json::from_str(s.body.as_deref()?).ok()
}

fn patient_name(p: &Value) -> String {
    let n = &p["name"][0];
    let given: Vec<&str> = n["given"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match (n["family"].as_str(), given.is_empty()) {
        (Some(f), false) => format!("{} {}", f.to_uppercase(), given.join(" ")),
        (Some(f), true) => f.to_uppercase(),
        (None, _) => n["text"].as_str().unwrap_or_default().to_owned(),
    }
}

/// `2026-12-03T10:00:00+01:00` → `2026-12-03 10:00` (what a spreadsheet user reads).
fn short_date(s: &str) -> String {
    match s.split_once('T') {
        Some((d, t)) => format!("{d} {}", t.get(..5).unwrap_or(t)),
        None => s.to_owned(),
    }
}

impl Workflow {
    /// The rows of a Task search (every page), as a table.
    pub async fn export(
        &self,
        fhir: &Fhir,
        conn: &mut Conn<'_>,
        rtype: &str,
        req: &Req,
    ) -> Result<Table> {
        if rtype != "Task" {
            return Err(Error::NotAcceptable(format!(
                "CSV and XLSX are the dashboards' exports: a Task search, not {rtype}"
            )));
        }
        let params: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "_format"
                        | "_count"
                        | "_offset"
                        | "_include"
                        | "_revinclude"
                        | "_summary"
                        | "_elements"
                        | "_total"
                        | "_pretty"
                )
            })
            .cloned()
            .collect();
        let s = fhir.parse_search("Task", &params, req.strict)?;
        let mut query = s.query;
        query.limit = fhir.paging.max_count;
        query.offset = 0;
        let mut tasks = Vec::new();
        loop {
            let page = conn.search(&query).await?;
            let n = page.len();
            tasks.extend(page.iter().filter_map(body));
            if n < query.limit {
                break;
            }
            if tasks.len() >= MAX_ROWS {
                return Err(Error::unprocessable(
                    "too-costly",
                    format!("an export holds at most {MAX_ROWS} rows: narrow the search"),
                ));
            }
            query.offset += n;
        }
        let mut keys = Vec::new();
        for t in &tasks {
            if let Some(p) = reference_id(&t["for"], "Patient") {
                keys.push(("Patient".to_owned(), p));
            }
            if let Some(u) = reference_id(&t["owner"], "HealthcareService") {
                keys.push(("HealthcareService".to_owned(), u));
            }
        }
        keys.sort();
        keys.dedup();
        let related: HashMap<(String, String), Value> = conn
            .many(&keys)
            .await?
            .iter()
            .filter_map(|s| Some(((s.rtype.clone(), s.id.clone()), body(s)?)))
            .collect();
        let none = Value::Null;
        let get = |rtype: &str, r: &Value| {
            reference_id(r, rtype)
                .and_then(|id| related.get(&(rtype.to_owned(), id)))
                .unwrap_or(&none)
        };
        let rows = tasks
            .iter()
            .map(|t| {
                let patient = get("Patient", &t["for"]);
                let unit = get("HealthcareService", &t["owner"]);
                let status = business_status(t).unwrap_or_default();
                self.rules
                    .columns
                    .iter()
                    .map(|(key, _)| match key.as_str() {
                        "dossier" => t["groupIdentifier"]["value"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        "patient" => patient_name(patient),
                        "birth-date" => {
                            patient["birthDate"].as_str().unwrap_or_default().to_owned()
                        }
                        "postal-code" => patient["address"][0]["postalCode"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        "city" => patient["address"][0]["city"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        "unit" => unit["name"]
                            .as_str()
                            .or(t["owner"]["display"].as_str())
                            .unwrap_or_default()
                            .to_owned(),
                        "status" => {
                            let label = self
                                .rules
                                .status(status)
                                .map_or(status, |s| s.display.as_str());
                            if super::moves::is_archived(t) {
                                format!("{label} (archivée)")
                            } else {
                                label.to_owned()
                            }
                        }
                        "pending-action" => self
                            .rules
                            .pending_action
                            .get(status)
                            .cloned()
                            .unwrap_or_default(),
                        "sent" => short_date(t["authoredOn"].as_str().unwrap_or_default()),
                        "last-change" => short_date(
                            t["lastModified"]
                                .as_str()
                                .or(t["meta"]["lastUpdated"].as_str())
                                .unwrap_or_default(),
                        ),
                        _ => String::new(),
                    })
                    .collect()
            })
            .collect();
        Ok(Table {
            sheet: "Demandes".into(),
            header: self.rules.columns.iter().map(|(_, t)| t.clone()).collect(),
            rows,
        })
    }
}
