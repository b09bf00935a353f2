//! The sync engine: pulls ROR pages (or `$export` files) one at a time, maps each resource
//! (`mapping.rs`), checks it like any FHIR write, and upserts batches through the FHIR
//! layer (`interaction::update` in one store job per batch, deterministic ids): an unchanged
//! resource makes no version. Memory is bounded by a page or a line plus one batch, and the
//! set of ids seen in the run (a few tens of bytes per resource).
//!
//! A run that fails leaves what it wrote (each upsert is whole and idempotent) and does not
//! move the high-water mark: the next run fetches the same changes again and completes. A
//! full run closes (never deletes) the directory resources it did not see, and only once
//! its whole listing went through.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{ClientError, RorClient};
use super::mapping::{MapError, Mapped, Mapping};
use crate::fhir::interaction::{self, Fhir};
use crate::store::StoreError;
use crate::time::{Micros, format_instant};

/// Key of the ROR in the `sync_state` table.
pub const STATE_NAME: &str = "ror";
/// The types a complete full sync closes when the ROR no longer lists them.
const CLOSED_TYPES: [&str; 2] = ["HealthcareService", "Location"];
/// Resources written per store job.
pub const BATCH: usize = 200;
/// Deltas overlap the previous run by this much (clock differences; upserts are idempotent).
const OVERLAP_MICROS: i64 = 5 * 60 * 1_000_000;
/// A lease older than this is taken over (a crashed instance).
const LEASE_MICROS: i64 = 6 * 3600 * 1_000_000;
/// At most this many malformed resources or unknown codes are listed (all are counted).
const LISTED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Delta,
}

#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub mode: Mode,
    pub region: Option<String>,
    /// Who holds the lease (one id per process).
    pub owner: String,
    /// Show a progress line on stderr (when it is a terminal).
    pub progress: bool,
    /// Full syncs through `$export` rather than paging.
    pub use_export: bool,
    pub page_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("another sync holds the lease; try again later")]
    Busy,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the directory: {0}")]
    Write(String),
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub full: bool,
    pub fetched: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub closed: u64,
    /// Resources of types the directory does not keep (PractitionerRole…).
    pub ignored: u64,
    /// The same resource met again in the run (includes repeated on every page).
    pub repeated: u64,
    pub malformed_count: u64,
    /// `(ROR id, why)`, the first [`LISTED`].
    pub malformed: Vec<(String, String)>,
    pub unknown_code_count: u64,
    /// `(ROR id, "axis code")`, the first [`LISTED`].
    pub unknown_codes: Vec<(String, String)>,
    pub requests: u64,
    pub retries: u64,
    pub tokens: u64,
    /// What the next delta starts from.
    pub high_water: Micros,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "{} sync: fetched {}, created {}, updated {}, unchanged {}, closed {}, malformed {}, unknown codes {}, ignored {}; {} requests, {} retries, {} tokens",
            if self.full { "full" } else { "delta" },
            self.fetched,
            self.created,
            self.updated,
            self.unchanged,
            self.closed,
            self.malformed_count,
            self.unknown_code_count,
            self.ignored,
            self.requests,
            self.retries,
            self.tokens,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// Runs one sync under the lease.
pub async fn run(
    fhir: &Arc<Fhir>,
    client: &RorClient,
    mapping: &Mapping,
    opts: &SyncOptions,
) -> Result<Report, SyncError> {
    let now = fhir.store.clock().now();
    let owner = opts.owner.clone();
    let taken = fhir
        .store
        .write(move |tx| {
            Box::pin(async move {
                tx.conn()
                    .take_sync_lease(STATE_NAME, &owner, now, now + LEASE_MICROS)
                    .await
            })
        })
        .await?;
    if !taken {
        return Err(SyncError::Busy);
    }
    let result = run_leased(fhir, client, mapping, opts, now).await;
    let owner = opts.owner.clone();
    let released = fhir
        .store
        .write(move |tx| {
            Box::pin(async move { tx.conn().release_sync_lease(STATE_NAME, &owner).await })
        })
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "ror: cannot release the sync lease (it expires by itself)");
    }
    result
}

async fn run_leased(
    fhir: &Arc<Fhir>,
    client: &RorClient,
    mapping: &Mapping,
    opts: &SyncOptions,
    started: Micros,
) -> Result<Report, SyncError> {
    let state = fhir
        .store
        .read(|c| Box::pin(async move { c.sync_state(STATE_NAME).await }))
        .await?;
    let full = match (opts.mode, state.high_water) {
        (Mode::Full, _) => true,
        (Mode::Delta, Some(_)) => false,
        (Mode::Delta, None) => {
            tracing::info!("ror: no completed sync yet: running a full sync instead of a delta");
            true
        }
    };
    let mut run = Run {
        fhir: fhir.clone(),
        mapping,
        source: client.base().to_owned(),
        seen: HashSet::new(),
        batch: Vec::new(),
        report: Report {
            full,
            ..Report::default()
        },
        progress: opts.progress && std::io::stderr().is_terminal(),
        last_log: Instant::now(),
    };
    tracing::info!(full, region = ?opts.region, "ror: sync started");
    let fetched = fetch(client, mapping, opts, &mut run, full, state.high_water).await;
    // what came before a failure is kept (each resource whole): the next run has less to do
    let flushed = run.flush().await;
    fetched?;
    flushed?;
    if full {
        run.close_unseen(opts.region.as_deref()).await?;
    }
    let high_water = started;
    fhir.store
        .write(move |tx| {
            Box::pin(async move { tx.conn().record_sync(STATE_NAME, high_water, full).await })
        })
        .await?;
    let counters = &client.counters;
    use std::sync::atomic::Ordering::Relaxed;
    run.report.requests = counters.requests.load(Relaxed);
    run.report.retries = counters.retries.load(Relaxed);
    run.report.tokens = counters.tokens.load(Relaxed);
    run.report.high_water = high_water;
    run.show(true);
    tracing::info!(summary = %run.report.summary(), "ror: sync completed");
    Ok(run.report)
}

/// Fetches the listing (full: `$export` or paging; delta: `_lastUpdated`) into `run`.
async fn fetch(
    client: &RorClient,
    mapping: &Mapping,
    opts: &SyncOptions,
    run: &mut Run<'_>,
    full: bool,
    high_water: Option<Micros>,
) -> Result<(), SyncError> {
    let base = client.base().to_owned();
    let tag = opts
        .region
        .as_ref()
        .map(|r| format!("{}|{r}", mapping.region_tag_system));
    let includes = [
        ("_include", "HealthcareService:organization"),
        ("_include:iterate", "Organization:partof"),
        ("_include", "HealthcareService:location"),
    ];
    let count = opts.page_size.to_string();
    if full && opts.use_export {
        let mut q = vec![
            ("_type", "HealthcareService".to_owned()),
            ("includeAssociatedData", "_myCompleteExtract".to_owned()),
            ("_outputFormat", "application/fhir+json".to_owned()),
        ];
        if let Some(t) = &tag {
            q.push((
                // as the ROR documents it: the inner query is encoded once, with the rest
                "_typeFilter",
                format!("HealthcareService?_tag={t}"),
            ));
        }
        let url = format!("{base}/$export?{}", query_string(&q));
        let status_url = client.export_kick_off(&url).await?;
        tracing::info!("ror: $export started; polling");
        let manifest = client.export_wait(&status_url).await?;
        let files: Vec<String> = manifest
            .get("output")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("url").and_then(Value::as_str))
            .map(|u| client.absolute(u))
            .collect();
        tracing::info!(files = files.len(), "ror: $export ready; downloading");
        for file in files {
            let mut lines = client.open_lines(&file).await?;
            let mut n = 0u64;
            while let Some(line) = lines.next_line().await? {
                n += 1;
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => run.ingest(v).await?,
                    Err(e) => run.malformed(format!("{file} line {n}"), format!("not JSON: {e}")),
                }
            }
        }
    } else {
        let since = high_water.map(|h| format_instant(h - OVERLAP_MICROS));
        // Full: every offer with its organisations and places. Delta: what changed since
        // the last completed run, offers with their includes, then places (capacities) and
        // organisations changed on their own.
        let mut searches: Vec<(&str, bool)> = vec![("HealthcareService", true)];
        if !full {
            searches.push(("Location", false));
            searches.push(("Organization", false));
        }
        for (rtype, with_includes) in searches {
            let mut q: Vec<(&str, String)> = vec![("_count", count.clone())];
            if !full && let Some(s) = &since {
                q.push(("_lastUpdated", format!("ge{s}")));
            }
            if let Some(t) = &tag {
                q.push(("_tag", t.clone()));
            }
            if with_includes {
                q.extend(includes.iter().map(|(k, v)| (*k, (*v).to_owned())));
            }
            let mut url = Some(format!("{base}/{rtype}?{}", query_string(&q)));
            while let Some(u) = url.take() {
                let page = client.get_json(&u).await?;
                for entry in page
                    .get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(r) = entry.get("resource") {
                        run.ingest(r.clone()).await?;
                    }
                }
                url = next_link(&page).map(|n| client.absolute(&n));
            }
        }
    }
    Ok(())
}

struct Run<'m> {
    fhir: Arc<Fhir>,
    mapping: &'m Mapping,
    source: String,
    /// `Type/id` of every resource met in this run.
    seen: HashSet<String>,
    batch: Vec<Mapped>,
    report: Report,
    progress: bool,
    last_log: Instant,
}

impl Run<'_> {
    fn malformed(&mut self, id: String, why: String) {
        tracing::warn!(ror_id = %id, reason = %why, "ror: malformed resource skipped");
        self.report.malformed_count += 1;
        if self.report.malformed.len() < LISTED {
            self.report.malformed.push((id, why));
        }
    }

    async fn ingest(&mut self, resource: Value) -> Result<(), SyncError> {
        if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            // an export file written as Bundles rather than ndjson lines
            let entries: Vec<Value> = resource
                .get("entry")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("resource").cloned())
                .collect();
            for r in entries {
                Box::pin(self.ingest(r)).await?;
            }
            return Ok(());
        }
        self.report.fetched += 1;
        let label = format!(
            "{}/{}",
            resource
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            resource.get("id").and_then(Value::as_str).unwrap_or("?")
        );
        let mapped = match self.mapping.map(&resource, &self.source) {
            Ok(m) => m,
            Err(MapError::Ignored(_)) => {
                self.report.ignored += 1;
                return Ok(());
            }
            Err(MapError::Malformed(why)) => {
                self.malformed(label, why);
                return Ok(());
            }
        };
        let key = format!("{}/{}", mapped.rtype, mapped.id);
        if self.seen.contains(&key) {
            self.report.repeated += 1;
            return Ok(());
        }
        self.seen.insert(key);
        if let Err(e) = self.fhir.check_body(&mapped.rtype, &mapped.body) {
            let why = e
                .issues()
                .iter()
                .map(|i| match &i.expression {
                    Some(x) => format!("{} @ {x}", i.diagnostics),
                    None => i.diagnostics.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ");
            self.malformed(label, why);
            return Ok(());
        }
        for code in &mapped.unknown_codes {
            tracing::info!(ror_id = %label, code = %code, "ror: unknown code kept");
            self.report.unknown_code_count += 1;
            if self.report.unknown_codes.len() < LISTED {
                self.report
                    .unknown_codes
                    .push((label.clone(), code.clone()));
            }
        }
        self.batch.push(mapped);
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SyncError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let bodies: Vec<(String, String, Value)> = batch
            .iter()
            .map(|m| (m.rtype.clone(), m.id.clone(), m.body.clone()))
            .collect();
        match upsert(&self.fhir, bodies).await {
            Ok(outcomes) => outcomes.into_iter().for_each(|o| self.count(o)),
            Err(e) => {
                // one bad resource must not cost the batch: write them one by one
                tracing::debug!(error = %e, "ror: batch refused; writing one by one");
                for m in batch {
                    match upsert(&self.fhir, vec![(m.rtype.clone(), m.id.clone(), m.body)]).await {
                        Ok(o) => o.into_iter().for_each(|o| self.count(o)),
                        Err(SyncError::Write(why)) => {
                            self.malformed(format!("{}/{}", m.rtype, m.ror_id), why)
                        }
                        Err(other) => return Err(other),
                    }
                }
            }
        }
        self.show(false);
        Ok(())
    }

    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Created => self.report.created += 1,
            Outcome::Updated => self.report.updated += 1,
            Outcome::Unchanged => self.report.unchanged += 1,
        }
    }

    /// Progress: a line on the terminal, and a log line every few seconds.
    fn show(&mut self, last: bool) {
        let r = &self.report;
        if self.progress {
            eprint!(
                "\rror sync: fetched {} · created {} · updated {} · unchanged {} · closed {} · malformed {}{}",
                r.fetched,
                r.created,
                r.updated,
                r.unchanged,
                r.closed,
                r.malformed_count,
                if last { "\n" } else { "" }
            );
        }
        if !last && self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            tracing::info!(
                fetched = r.fetched,
                created = r.created,
                updated = r.updated,
                unchanged = r.unchanged,
                closed = r.closed,
                malformed = r.malformed_count,
                "ror: sync progress"
            );
        }
    }

    /// Marks inactive the units and places from this ROR that the full listing did not
    /// contain (HealthcareService `active=false`, Location `status=inactive`). Never
    /// deletes. With a region, only what carries its tag.
    async fn close_unseen(&mut self, region: Option<&str>) -> Result<(), SyncError> {
        if self.report.fetched == 0 {
            tracing::warn!("ror: the full listing was empty: nothing is closed");
            return Ok(());
        }
        // Units and places only: the listing reaches organisations through the units, so an
        // organisation absent from it may still exist; its own `active` comes from the ROR.
        for rtype in CLOSED_TYPES {
            let mut params = vec![("_source".to_owned(), self.source.clone())];
            if let Some(r) = region {
                params.push((
                    "_tag".to_owned(),
                    format!("{}|{r}", self.mapping.region_tag_system),
                ));
            }
            let search = self
                .fhir
                .parse_search(rtype, &params, true)
                .map_err(|e| SyncError::Write(e.to_string()))?;
            let mut to_close: Vec<(String, String, Value)> = Vec::new();
            let mut offset = 0;
            loop {
                let mut q = search.query.clone();
                q.limit = 1000;
                q.offset = offset;
                let page = self
                    .fhir
                    .store
                    .read(move |c| Box::pin(async move { c.search(&q).await }))
                    .await?;
                let n = page.len();
                for s in page {
                    if self.seen.contains(&format!("{rtype}/{}", s.id)) {
                        continue;
                    }
                    let Some(mut body) = s
                        .body
                        .as_deref()
                        .and_then(|b| serde_json::from_str::<Value>(b).ok())
                    else {
                        continue;
                    };
                    if close(&mut body) {
                        to_close.push((rtype.to_owned(), s.id.clone(), body));
                    }
                }
                if n < 1000 {
                    break;
                }
                offset += n;
            }
            for chunk in to_close.chunks(BATCH) {
                let outcomes = upsert(&self.fhir, chunk.to_vec()).await?;
                let closed = outcomes.iter().filter(|o| **o == Outcome::Updated).count() as u64;
                self.report.closed += closed;
            }
        }
        if self.report.closed > 0 {
            tracing::info!(
                closed = self.report.closed,
                "ror: closed what the ROR no longer lists"
            );
        }
        Ok(())
    }
}

/// Sets a directory resource inactive; false if it already is.
fn close(body: &mut Value) -> bool {
    let Some(obj) = body.as_object_mut() else {
        return false;
    };
    let (key, value) = match obj.get("resourceType").and_then(Value::as_str) {
        Some("Location") => ("status", Value::String("inactive".into())),
        _ => ("active", Value::Bool(false)),
    };
    if obj.get(key) == Some(&value) {
        return false;
    }
    obj.insert(key.to_owned(), value);
    true
}

/// Upserts resources in one store job through the FHIR update interaction.
async fn upsert(
    fhir: &Arc<Fhir>,
    items: Vec<(String, String, Value)>,
) -> Result<Vec<Outcome>, SyncError> {
    let f = fhir.clone();
    let done = fhir
        .store
        .write(move |tx| {
            Box::pin(async move {
                let mut out = Vec::with_capacity(items.len());
                for (rtype, id, body) in items {
                    let before = tx
                        .current(&rtype, &id)
                        .await?
                        .filter(|c| !c.deleted)
                        .map(|c| c.version);
                    let resp = interaction::update(
                        &f,
                        tx,
                        &crate::auth::Caller::System("ror".into()),
                        &rtype,
                        &id,
                        Some(body),
                        None,
                        "PUT",
                    )
                    .await?;
                    out.push(match (before, resp.version) {
                        (None, _) => Outcome::Created,
                        (Some(b), Some(v)) if v == b => Outcome::Unchanged,
                        _ => Outcome::Updated,
                    });
                }
                Ok::<_, crate::fhir::error::Error>(out)
            })
        })
        .await;
    done.map_err(|e| match e {
        crate::fhir::error::Error::Store(s) => SyncError::Store(s),
        other => SyncError::Write(other.to_string()),
    })
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle
        .get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")?
        .as_str()
        .map(str::to_owned)
}

fn query_string(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn closing_is_idempotent() {
        let mut hs = json!({"resourceType": "HealthcareService", "active": true});
        assert!(close(&mut hs));
        assert_eq!(hs["active"], false);
        assert!(!close(&mut hs));
        let mut loc = json!({"resourceType": "Location"});
        assert!(close(&mut loc));
        assert_eq!(loc["status"], "inactive");
    }

    #[test]
    fn reads_the_next_link() {
        let b =
            json!({"link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}]});
        assert_eq!(next_link(&b).as_deref(), Some("b"));
        assert_eq!(next_link(&json!({})), None);
    }
}
