//! The workflow's timers (domain.md "Reminders and automatic closing"): the automatic
//! reminder of a dossier idle for 2 months with an unconfirmed proposal, its automatic
//! cancellation 30 days later without action, and the archiving of cancelled requests 15 days
//! after their cancellation.
//!
//! [`tick`] runs every timer once at the store clock's `now`. Candidates are found by a
//! search; each is then handled in its own write job that takes the dossier's lock, reads
//! again and re-checks the condition before acting. So a timer is idempotent, and two gateway
//! instances ticking at once against one PostgreSQL do each thing once: the second finds the
//! condition already gone.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::moves::{ARCHIVED_TAG, TAG_SYSTEM, business_status, is_archived};
use super::profile::{ADMISSION_REQUEST, ADMISSION_TASK, declares};
use super::{Live, Recipient, dossier_key, live, reference_id};
use crate::auth::Caller;
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{Fhir, put_resource};
use crate::time::{Micros, fhir_date_range, format_instant};

/// The tag and extension that mark a dossier as automatically reminded, and when.
pub const REMINDED_TAG: &str = "auto-reminded";
pub const REMINDED_EXTENSION: &str =
    "https://passerelle.dev/fhir/StructureDefinition/auto-reminder";

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub reminded: usize,
    pub cancelled: usize,
    pub archived: usize,
    /// Accounts deactivated (or reactivated) as their habilitations ended.
    pub accounts: usize,
}

fn system() -> Caller {
    Caller::System("timer".into())
}

/// The ids of the resources a search finds.
async fn candidates(
    fhir: &Arc<Fhir>,
    rtype: &str,
    params: Vec<(String, String)>,
) -> Result<Vec<String>> {
    let mut params = params;
    params.push(("_count".into(), fhir.paging.max_count.to_string()));
    let s = fhir.parse_search(rtype, &params, true)?;
    let found = fhir
        .store
        .read(move |c| Box::pin(async move { c.search(&s.query).await }))
        .await?;
    Ok(found.into_iter().map(|s| s.id).collect())
}

/// Runs every timer once.
pub async fn tick(fhir: &Arc<Fhir>) -> Result<Report> {
    // archive first, then cancel what was reminded long ago, then remind
    let archived = archive(fhir).await?;
    let cancelled = auto_cancel(fhir).await?;
    let reminded = auto_remind(fhir).await?;
    let accounts = fhir.workflow.sweep_accounts(fhir).await?;
    let report = Report {
        reminded,
        cancelled,
        archived,
        accounts,
    };
    if report != Report::default() {
        tracing::info!(
            reminded = report.reminded,
            cancelled = report.cancelled,
            archived = report.archived,
            accounts = report.accounts,
            "workflow timers"
        );
    }
    Ok(report)
}

/// Runs the timers every `every` until the process stops.
pub fn spawn(fhir: Arc<Fhir>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(e) = tick(&fhir).await {
                tracing::warn!(error = %e, "workflow timers failed; next pass retries");
            }
        }
    });
}

fn instant(micros: Micros) -> String {
    format_instant(micros)
}

/// Archives the requests cancelled more than the archiving delay ago.
async fn archive(fhir: &Arc<Fhir>) -> Result<usize> {
    let now = fhir.store.clock().now();
    let cutoff = now - fhir.workflow.delays.archive_after;
    let ids = candidates(
        fhir,
        "Task",
        vec![
            ("status".into(), "cancelled".into()),
            ("_lastUpdated".into(), format!("le{}", instant(cutoff))),
            ("_profile".into(), ADMISSION_TASK.into()),
        ],
    )
    .await?;
    let mut done = 0;
    for id in ids {
        let f = fhir.clone();
        let archived = fhir
            .store
            .write(move |tx| {
                Box::pin(async move {
                    let wf = &f.workflow;
                    let Some(peek) = live(tx, "Task", &id, false).await? else {
                        return Ok::<_, Error>(false);
                    };
                    if let Some(sr) = reference_id(&peek.body["focus"], "ServiceRequest") {
                        tx.lock_key(&dossier_key(&sr)).await?;
                    }
                    let Some(t) = live(tx, "Task", &id, true).await? else {
                        return Ok(false);
                    };
                    let cutoff = tx.now() - wf.delays.archive_after;
                    if t.body["status"] != "cancelled"
                        || is_archived(&t.body)
                        || t.stored.last_updated > cutoff
                    {
                        return Ok(false);
                    }
                    let mut body = t.body.clone();
                    let tag =
                        json!({"system": TAG_SYSTEM, "code": ARCHIVED_TAG, "display": "Archivée"});
                    match body["meta"]["tag"].as_array_mut() {
                        Some(tags) => tags.push(tag),
                        None => body["meta"]["tag"] = json!([tag]),
                    }
                    let stored = put_resource(&f, tx, "Task", Some(&id), body, "PUT").await?;
                    let target = format!("Task/{id}/_history/{}", stored.version);
                    wf.provenance(&f, tx, &system(), &target, "archive", None)
                        .await?;
                    Ok(true)
                })
            })
            .await?;
        done += usize::from(archived);
    }
    Ok(done)
}

/// When the dossier was last acted on: its requests' last change.
fn last_action(tasks: &[Live]) -> Micros {
    tasks
        .iter()
        .map(|t| t.stored.last_updated)
        .max()
        .unwrap_or(0)
}

fn reminded_at(sr: &Value) -> Option<Micros> {
    sr["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == REMINDED_EXTENSION)
        .and_then(|e| e["valueDateTime"].as_str())
        .and_then(fhir_date_range)
        .map(|r| r.0)
}

fn without_marker(sr: &Value) -> Value {
    let mut body = sr.clone();
    // pointer_mut, not indexing: indexing a missing key would insert a null
    if let Some(ext) = body.pointer_mut("/extension").and_then(Value::as_array_mut) {
        ext.retain(|e| e["url"] != REMINDED_EXTENSION);
        if ext.is_empty()
            && let Some(o) = body.as_object_mut()
        {
            o.remove("extension");
        }
    }
    if let Some(tags) = body.pointer_mut("/meta/tag").and_then(Value::as_array_mut) {
        tags.retain(|t| !(t["system"] == TAG_SYSTEM && t["code"] == REMINDED_TAG));
        if tags.is_empty()
            && let Some(m) = body["meta"].as_object_mut()
        {
            m.remove("tag");
        }
    }
    body
}

/// Reminds the prescriber of every dossier idle for the reminder delay with at least one
/// unconfirmed admission proposal (once per idle period).
async fn auto_remind(fhir: &Arc<Fhir>) -> Result<usize> {
    let now = fhir.store.clock().now();
    let cutoff = now - fhir.workflow.delays.auto_reminder_after;
    let bs = super::rules::code_system("business-status");
    let tasks = candidates(
        fhir,
        "Task",
        vec![
            ("business-status".into(), format!("{bs}|admission-proposed")),
            ("_lastUpdated".into(), format!("le{}", instant(cutoff))),
        ],
    )
    .await?;
    let mut dossiers = BTreeSet::new();
    for id in tasks {
        let focus = fhir
            .store
            .read(move |c| {
                Box::pin(async move {
                    let s = c.current("Task", &id, false).await?;
                    Ok(s.and_then(|s| s.body)
                        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                        .and_then(|b| reference_id(&b["focus"], "ServiceRequest")))
                })
            })
            .await?;
        dossiers.extend(focus);
    }
    let mut done = 0;
    for sr_id in dossiers {
        let f = fhir.clone();
        let reminded = fhir
            .store
            .write(move |tx| {
                Box::pin(async move {
                    let wf = &f.workflow;
                    tx.lock_key(&dossier_key(&sr_id)).await?;
                    let Some(sr) = live(tx, "ServiceRequest", &sr_id, true).await? else {
                        return Ok::<_, Error>(false);
                    };
                    if !declares(&sr.body, ADMISSION_REQUEST) || sr.body["status"] != "active" {
                        return Ok(false);
                    }
                    let tasks = wf.dossier_tasks(&f, tx, &sr_id).await?;
                    let last = last_action(&tasks);
                    let proposed: Vec<&Live> = tasks
                        .iter()
                        .filter(|t| business_status(&t.body) == Some("admission-proposed"))
                        .collect();
                    let due = tx.now() - last >= wf.delays.auto_reminder_after;
                    let already = reminded_at(&sr.body).is_some_and(|r| r >= last);
                    let Some(first) = proposed.first() else {
                        return Ok(false);
                    };
                    if !due || already {
                        return Ok(false);
                    }
                    let text = format!(
                        "Relance automatique : ce dossier n'a pas bougé depuis {} jours et une proposition d'admission attend votre confirmation. Sans action sous {} jours, ses demandes seront annulées (Annulation automatique).",
                        (tx.now() - last) / (24 * 3_600 * 1_000_000),
                        wf.delays.auto_cancel_after / (24 * 3_600 * 1_000_000)
                    );
                    wf.communication(&f, tx, &system(), &first.body, "reminder", &text, Recipient::Sender)
                        .await?;
                    let mut body = without_marker(&sr.body);
                    let ext = json!({"url": REMINDED_EXTENSION, "valueDateTime": format_instant(tx.now())});
                    match body["extension"].as_array_mut() {
                        Some(list) => list.push(ext),
                        None => body["extension"] = json!([ext]),
                    }
                    let tag = json!({"system": TAG_SYSTEM, "code": REMINDED_TAG});
                    match body["meta"]["tag"].as_array_mut() {
                        Some(tags) => tags.push(tag),
                        None => body["meta"]["tag"] = json!([tag]),
                    }
                    let stored = put_resource(&f, tx, "ServiceRequest", Some(&sr_id), body, "PUT").await?;
                    let target = format!("ServiceRequest/{sr_id}/_history/{}", stored.version);
                    wf.provenance(&f, tx, &system(), &target, "auto-reminder", None).await?;
                    Ok(true)
                })
            })
            .await?;
        done += usize::from(reminded);
    }
    Ok(done)
}

/// Cancels the open requests of dossiers reminded more than the cancellation delay ago and
/// not acted on since (reason `auto-cancel`, "Annulation automatique"); clears the reminder of
/// those acted on.
async fn auto_cancel(fhir: &Arc<Fhir>) -> Result<usize> {
    let ids = candidates(
        fhir,
        "ServiceRequest",
        vec![("_tag".into(), format!("{TAG_SYSTEM}|{REMINDED_TAG}"))],
    )
    .await?;
    let mut done = 0;
    for sr_id in ids {
        let f = fhir.clone();
        let n = fhir
            .store
            .write(move |tx| {
                Box::pin(async move {
                    let wf = &f.workflow;
                    tx.lock_key(&dossier_key(&sr_id)).await?;
                    let Some(sr) = live(tx, "ServiceRequest", &sr_id, true).await? else {
                        return Ok::<_, Error>(0);
                    };
                    let Some(at) = reminded_at(&sr.body) else {
                        return Ok(0);
                    };
                    let tasks = wf.dossier_tasks(&f, tx, &sr_id).await?;
                    if last_action(&tasks) > at {
                        // acted on since the reminder: the reminder is over
                        put_resource(&f, tx, "ServiceRequest", Some(&sr_id), without_marker(&sr.body), "PUT")
                            .await?;
                        return Ok(0);
                    }
                    if tx.now() - at < wf.delays.auto_cancel_after {
                        return Ok(0);
                    }
                    let mv = wf
                        .rules
                        .moves
                        .get("auto-cancel")
                        .ok_or_else(|| super::moves::rule("auto-cancel", "no auto-cancel move"))?
                        .clone();
                    let input = super::moves::Input {
                        reason: Some(json!({"system": super::rules::code_system("cancellation-reason"), "code": "auto-cancel"})),
                        ..Default::default()
                    };
                    let mut n = 0;
                    for t in tasks {
                        let open = business_status(&t.body)
                            .and_then(|c| wf.rules.status(c))
                            .is_some_and(|s| s.open);
                        if !open {
                            continue;
                        }
                        let Some(t) = live(tx, "Task", &t.stored.id, true).await? else {
                            continue;
                        };
                        let next = wf.make_move(&f, tx, &system(), &t, &mv, &input).await?;
                        put_resource(&f, tx, "Task", Some(&t.stored.id), next, "PUT").await?;
                        n += 1;
                    }
                    if let Some(sr) = live(tx, "ServiceRequest", &sr_id, true).await? {
                        put_resource(&f, tx, "ServiceRequest", Some(&sr_id), without_marker(&sr.body), "PUT")
                            .await?;
                    }
                    Ok(n)
                })
            })
            .await?;
        done += n;
    }
    Ok(done)
}
