//! The sync engine: pulls ROR pages (or `$export` files) one at a time, maps each resource
//! (`mapping.rs`), checks it like any FHIR write, and upserts batches through the FHIR
//! layer (`interaction::update` in one store job per batch, deterministic ids): an unchanged
//! resource makes no version. Memory is bounded by a page or a line plus one batch, and the
//! set of ids seen in the run (a few tens of bytes per resource).
//!
//! A run that fails leaves what it wrote (each upsert is whole and idempotent) and does not
//! move the high-water mark: the next run fetches the same changes again and completes. A
//! full run closes (never deletes) the directory resources it did not see — units,
//! organisations, places — and only once its whole listing went through; with a region,
//! only what belongs to that region.

use std::collections::{BTreeSet, HashSet};
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
const CLOSED_TYPES: [&str; 3] = ["HealthcareService", "Organization", "Location"];
/// The includes the ROR documents with its offers (`consommation-api.md`): the organisations
/// up the `partOf` chain and the places. Its PractitionerRole ones are left out: the
/// directory keeps no professionals.
const INCLUDES: [(&str, &str); 3] = [
    ("_include", "HealthcareService:organization"),
    ("_include:iterate", "Organization:partof"),
    ("_include", "HealthcareService:location"),
];
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

/// Fetches the listing (full: `$export` or paging; delta: the ROR's `_filter` on
/// `_lastUpdated`) into `run`.
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
    let exported = full && opts.use_export;
    if exported {
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
    }
    let since = match (full, high_water) {
        (false, Some(h)) => Some(format_instant(h - OVERLAP_MICROS)),
        _ => None,
    };
    for (rtype, q) in searches(
        full,
        exported,
        since.as_deref(),
        tag.as_deref(),
        opts.page_size,
    ) {
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
    Ok(())
}

/// The searches of a run, in order, as `(type, query)`:
/// - full: the offers with what they reach (unless `$export` brought them), then every
///   organisation on its own — an organisation no offer reaches any more is still in the
///   ROR, and the listing must hold everything the ROR has for the run to close what is gone;
/// - delta (`since`): the offers changed, or whose organisation or one above it changed
///   (the `_filter` of the ROR's `consommation-api.md`), with their includes; then the
///   places changed on their own (capacities: the ROR's capacity delta) and the
///   organisations changed on their own (those no offer reaches).
///
/// With a region (`tag`), each search is restricted to it (`_tag`).
fn searches(
    full: bool,
    exported: bool,
    since: Option<&str>,
    tag: Option<&str>,
    page_size: usize,
) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let base = |rtype: &'static str| -> (&'static str, Vec<(&'static str, String)>) {
        let mut q = vec![("_count", page_size.to_string())];
        if let Some(t) = tag {
            q.push(("_tag", t.to_owned()));
        }
        (rtype, q)
    };
    let with_includes = |(rtype, mut q): (&'static str, Vec<(&'static str, String)>)| {
        q.extend(INCLUDES.iter().map(|(k, v)| (*k, (*v).to_owned())));
        (rtype, q)
    };
    let mut out = Vec::new();
    match since {
        Some(s) if !full => {
            let (rtype, mut q) = base("HealthcareService");
            q.push((
                "_filter",
                format!("(_lastUpdated ge {s} or organization._lastUpdated:above ge {s})"),
            ));
            out.push(with_includes((rtype, q)));
            for rtype in ["Location", "Organization"] {
                let (rtype, mut q) = base(rtype);
                q.push(("_lastUpdated", format!("ge{s}")));
                out.push((rtype, q));
            }
        }
        _ => {
            if !exported {
                out.push(with_includes(base("HealthcareService")));
            }
            out.push(base("Organization"));
        }
    }
    out
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
        if let Err(e) = self.fhir.check_body(&mapped.rtype, mapped.body.clone()) {
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

    /// Marks inactive the units, organisations and places from this ROR that the full
    /// listing did not contain (HealthcareService and Organization `active=false`, Location
    /// `status=inactive`). Never deletes. With a region, only what belongs to it: units and
    /// organisations carrying its tag, places as [`place_in_region`] says.
    async fn close_unseen(&mut self, region: Option<&str>) -> Result<(), SyncError> {
        if self.report.fetched == 0 {
            tracing::warn!("ror: the full listing was empty: nothing is closed");
            return Ok(());
        }
        let tag = region.map(|r| format!("{}|{r}", self.mapping.region_tag_system));
        for rtype in CLOSED_TYPES {
            let to_close = match (rtype, region) {
                ("Location", Some(code)) => self.region_places_to_close(code).await?,
                _ => {
                    let mut params = vec![("_source".to_owned(), self.source.clone())];
                    if let Some(t) = &tag {
                        params.push(("_tag".to_owned(), t.clone()));
                    }
                    let mut out = Vec::new();
                    let seen = &self.seen;
                    self.each_stored(rtype, params, |id, mut body| {
                        if !seen.contains(&format!("{rtype}/{id}")) && close(&mut body) {
                            out.push((rtype.to_owned(), id.to_owned(), body));
                        }
                    })
                    .await?;
                    out
                }
            };
            let mut closed = 0u64;
            for chunk in to_close.chunks(BATCH) {
                let outcomes = upsert(&self.fhir, chunk.to_vec()).await?;
                closed += outcomes.iter().filter(|o| **o == Outcome::Updated).count() as u64;
            }
            if closed > 0 {
                tracing::info!(
                    rtype,
                    closed,
                    region = ?region,
                    "ror: closed what the ROR no longer lists"
                );
            }
            self.report.closed += closed;
        }
        Ok(())
    }

    /// The places of region `code` the listing did not contain, closed. The ROR tags units
    /// and organisations with their region, not places: a place is looked for among those
    /// the region's units point at (and those tagged with the region), then kept to be
    /// closed only when [`place_in_region`] says it is the region's alone.
    async fn region_places_to_close(
        &self,
        code: &str,
    ) -> Result<Vec<(String, String, Value)>, SyncError> {
        let system = &self.mapping.region_tag_system;
        let scope = vec![
            ("_source".to_owned(), self.source.clone()),
            ("_tag".to_owned(), format!("{system}|{code}")),
        ];
        let mut candidates = BTreeSet::new();
        self.each_stored("HealthcareService", scope.clone(), |_, unit| {
            for place in references(&unit, "location", "Location") {
                candidates.insert(place);
            }
        })
        .await?;
        self.each_stored("Location", scope, |id, _| {
            candidates.insert(id.to_owned());
        })
        .await?;
        let mut out = Vec::new();
        for id in candidates {
            if self.seen.contains(&format!("Location/{id}")) {
                continue;
            }
            let Some(stored) = self.fhir.store.current("Location", &id).await? else {
                continue;
            };
            let Some(mut body) = stored
                .body
                .as_deref()
                .filter(|_| !stored.deleted)
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
            else {
                continue;
            };
            if body["meta"]["source"].as_str() != Some(self.source.as_str()) {
                continue;
            }
            let own = regions(&body, system);
            let mut units = Vec::new();
            if own.is_empty() {
                let by = vec![("location".to_owned(), format!("Location/{id}"))];
                self.each_stored("HealthcareService", by, |_, unit| {
                    units.push(regions(&unit, system));
                })
                .await?;
            }
            if !place_in_region(&own, &units, code) {
                tracing::debug!(place = %id, "ror: a place gone from the region's listing is not the region's alone: left open");
                continue;
            }
            if close(&mut body) {
                out.push(("Location".to_owned(), id, body));
            }
        }
        Ok(out)
    }

    /// Runs `f` on each current resource of `rtype` the search `params` finds in the store.
    async fn each_stored(
        &self,
        rtype: &str,
        params: Vec<(String, String)>,
        mut f: impl FnMut(&str, Value),
    ) -> Result<(), SyncError> {
        const PAGE: usize = 1000;
        let search = self
            .fhir
            .parse_search(rtype, &params, true)
            .map_err(|e| SyncError::Write(e.to_string()))?;
        let mut offset = 0;
        loop {
            let mut q = search.query.clone();
            q.limit = PAGE;
            q.offset = offset;
            let page = self
                .fhir
                .store
                .read(move |c| Box::pin(async move { c.search(&q).await }))
                .await?;
            let n = page.len();
            for s in page {
                if let Some(body) = s
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
                {
                    f(&s.id, body);
                }
            }
            if n < PAGE {
                return Ok(());
            }
            offset += n;
        }
    }
}

/// The region codes (`system`) in a resource's `meta.tag`.
fn regions(body: &Value, system: &str) -> BTreeSet<String> {
    body["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["system"].as_str() == Some(system))
        .filter_map(|t| t["code"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a place is region `code`'s alone: by its own region tag when it has one;
/// otherwise by the regions of the units pointing at it — at least one, every one tagged
/// with `code` and only it. A place a unit of another region (or of no known region)
/// points at is not, so a regional sync never closes it.
fn place_in_region(own: &BTreeSet<String>, units: &[BTreeSet<String>], code: &str) -> bool {
    let only = |r: &BTreeSet<String>| r.len() == 1 && r.contains(code);
    if own.is_empty() {
        !units.is_empty() && units.iter().all(only)
    } else {
        only(own)
    }
}

/// The ids of the `rtype` resources an element of a resource points at (`Location/ror-1`).
fn references(body: &Value, element: &str, rtype: &str) -> Vec<String> {
    let prefix = format!("{rtype}/");
    let refs: Vec<&Value> = match &body[element] {
        Value::Array(a) => a.iter().collect(),
        v @ Value::Object(_) => vec![v],
        _ => Vec::new(),
    };
    refs.into_iter()
        .filter_map(|r| r["reference"].as_str()?.strip_prefix(prefix.as_str()))
        .map(str::to_owned)
        .collect()
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
                    let body = f.check_body(&rtype, body)?;
                    let resp = interaction::update(
                        &f,
                        tx,
                        &crate::auth::Caller::System("ror".into()),
                        &rtype,
                        &id,
                        body,
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
    fn full_listings_hold_every_organisation_and_deltas_use_the_ror_filter() {
        let q = |q: &Vec<(&str, String)>| query_string(q);
        let full = searches(true, false, None, None, 200);
        assert_eq!(
            full.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            ["HealthcareService", "Organization"]
        );
        assert_eq!(
            q(&full[0].1),
            "_count=200&_include=HealthcareService%3Aorganization&_include%3Aiterate=Organization%3Apartof&_include=HealthcareService%3Alocation"
        );
        assert_eq!(q(&full[1].1), "_count=200");
        // after $export, only the organisations' own listing
        let exported = searches(true, true, None, Some("sys|06"), 50);
        assert_eq!(exported.len(), 1);
        assert_eq!(exported[0].0, "Organization");
        assert_eq!(q(&exported[0].1), "_count=50&_tag=sys%7C06");
        let s = "2026-11-23T03:00:00.000Z";
        let delta = searches(false, false, Some(s), Some("sys|11"), 200);
        assert_eq!(
            delta.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            ["HealthcareService", "Location", "Organization"]
        );
        let hs = &delta[0].1;
        assert!(hs.contains(&(
            "_filter",
            format!("(_lastUpdated ge {s} or organization._lastUpdated:above ge {s})")
        )));
        assert!(hs.contains(&("_tag", "sys|11".to_owned())));
        assert!(!hs.iter().any(|(k, _)| *k == "_lastUpdated"));
        assert_eq!(
            hs.iter().filter(|(k, _)| k.starts_with("_include")).count(),
            3
        );
        for (_, other) in &delta[1..] {
            assert!(other.contains(&("_lastUpdated", format!("ge{s}"))));
            assert!(
                !other
                    .iter()
                    .any(|(k, _)| k.starts_with("_include") || *k == "_filter")
            );
        }
    }

    #[test]
    fn a_place_is_a_regions_only_when_nothing_else_claims_it() {
        let set = |codes: &[&str]| codes.iter().map(|c| c.to_string()).collect::<BTreeSet<_>>();
        // its own tag decides
        assert!(place_in_region(&set(&["06"]), &[], "06"));
        assert!(!place_in_region(&set(&["11"]), &[set(&["06"])], "06"));
        // untagged: the units pointing at it
        assert!(place_in_region(
            &set(&[]),
            &[set(&["06"]), set(&["06"])],
            "06"
        ));
        assert!(!place_in_region(
            &set(&[]),
            &[set(&["06"]), set(&["11"])],
            "06"
        ));
        assert!(!place_in_region(&set(&[]), &[set(&["06"]), set(&[])], "06"));
        assert!(
            !place_in_region(&set(&[]), &[], "06"),
            "no unit: region unknown"
        );
        let unit = json!({"meta": {"tag": [{"system": "r", "code": "06"}, {"system": "x", "code": "y"}]},
            "location": [{"reference": "Location/ror-1"}, {"reference": "Organization/ror-2"}]});
        assert_eq!(regions(&unit, "r"), set(&["06"]));
        assert_eq!(references(&unit, "location", "Location"), ["ror-1"]);
        let org = json!({"partOf": {"reference": "Organization/ror-3"}});
        assert_eq!(references(&org, "partOf", "Organization"), ["ror-3"]);
    }

    #[test]
    fn reads_the_next_link() {
        let b =
            json!({"link": [{"relation": "self", "url": "a"}, {"relation": "next", "url": "b"}]});
        assert_eq!(next_link(&b).as_deref(), Some("b"));
        assert_eq!(next_link(&json!({})), None);
    }
}
