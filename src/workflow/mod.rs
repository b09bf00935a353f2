//! The admission workflow (contract §3): dossiers (`ServiceRequest`, profile
//! AdmissionRequest), one request per unit (`Task`, profile AdmissionTask), and every move
//! between their states, with its side effects, in the same transaction as the move.
//!
//! - [`rules`]: the rules as data (code systems, value sets, operations, the move table).
//! - [`profile`]: checking the two profiles.
//! - [`moves`]: pure functions: apply a move, read a move off a `PUT`, who may move.
//! - this file: the two seams the FHIR server calls — [`Workflow::before_write`] on every
//!   create/update/patch (profiles, dossier numbers, `PUT`-as-move) and
//!   [`Workflow::operation`] for the named operations — and the side effects (siblings,
//!   dossier status, Communications, Provenance).

pub mod accounts;
pub mod dashboard;
pub mod moves;
pub mod observatory;
pub mod parts;
pub mod profile;
pub mod rules;
pub mod timers;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::fhir::error::{Error, Issue, Result};
use crate::fhir::interaction::{Fhir, Req, Resp, Route, put_resource};
use crate::store::{Stored, Tx};
use crate::time::{Micros, format_instant};
use moves::{Input, Standing, apply, authorize, business_status, detect, rule};
use profile::{ADMISSION_REQUEST, ADMISSION_TASK, declares};
use rules::{DOSSIER_SYSTEM, Move, Rules, RulesError, Target, code_system};

/// The workflow's delays (contract §3 timers; configuration `[workflow]`).
#[derive(Debug, Clone)]
pub struct Delays {
    /// A manual reminder is allowed once the other side has been silent this long (72 h).
    pub remind_after: Micros,
    /// A dossier with an unconfirmed proposal and no action for this long gets the automatic
    /// reminder (2 months).
    pub auto_reminder_after: Micros,
    /// Without action this long after the automatic reminder, its open requests are
    /// cancelled (30 days).
    pub auto_cancel_after: Micros,
    /// A cancelled request is archived this long after its cancellation (15 days).
    pub archive_after: Micros,
}

const HOUR: Micros = 3_600 * 1_000_000;
const DAY: Micros = 24 * HOUR;

impl Default for Delays {
    fn default() -> Self {
        Delays {
            remind_after: 72 * HOUR,
            auto_reminder_after: 60 * DAY,
            auto_cancel_after: 30 * DAY,
            archive_after: 15 * DAY,
        }
    }
}

pub struct Workflow {
    pub rules: Rules,
    pub delays: Delays,
}

/// Gives a new dossier the next number of its module's prefix (`s0000042`).
async fn assign_number(tx: &mut Tx<'_>, prefix: &str, body: &mut Value) -> Result<()> {
    let n = tx.next_number(&format!("dossier/{prefix}")).await?;
    let number = json!({"system": DOSSIER_SYSTEM, "value": format!("{prefix}{n:07}")});
    match body["identifier"].as_array_mut() {
        Some(list) => list.insert(0, number),
        None => body["identifier"] = json!([number]),
    }
    Ok(())
}

/// The system of the gateway's visibility labels (`meta.security` of a unit note).
pub const VISIBILITY_SYSTEM: &str = "https://passerelle.dev/fhir/CodeSystem/visibility";

/// Adds visibility labels (`HealthcareService/u1`, `Organization/o`, `PractitionerRole/r`)
/// to a resource, keeping those it has.
fn add_labels(body: &mut Value, labels: &[String], display: &str) {
    let mut sec: Vec<Value> = body["meta"]["security"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for l in labels {
        let there = sec
            .iter()
            .any(|s| s["system"] == VISIBILITY_SYSTEM && s["code"] == l.as_str());
        if !there {
            sec.push(json!({"system": VISIBILITY_SYSTEM, "code": l, "display": display}));
        }
    }
    if !sec.is_empty() {
        body["meta"]["security"] = json!(sec);
    }
}

/// The places of a user: the habilitation, and its units or its structure.
fn caller_places(caller: &Caller) -> Vec<String> {
    match caller {
        Caller::Person(h) => {
            let mut v = vec![h.role.clone()];
            if h.services.is_empty() {
                v.extend(h.organization.iter().cloned());
            } else {
                v.extend(h.services.iter().cloned());
            }
            v
        }
        Caller::Client(c) => vec![c.organization.clone()],
        _ => Vec::new(),
    }
}

/// What a user creates is seen by their places; on an update the labels stay the gateway's.
fn keep_or_set_labels(caller: &Caller, old: Option<&Value>, body: &mut Value, display: &str) {
    match old {
        Some(old) => set_labels(body, &visibility_labels(old), display),
        None => set_labels(body, &caller_places(caller), display),
    }
}

/// Sets a resource's visibility labels to `labels` exactly (what a client sent is dropped).
fn set_labels(body: &mut Value, labels: &[String], display: &str) {
    if let Some(sec) = body
        .pointer_mut("/meta/security")
        .and_then(Value::as_array_mut)
    {
        sec.retain(|s| s["system"] != VISIBILITY_SYSTEM);
        if sec.is_empty()
            && let Some(m) = body["meta"].as_object_mut()
        {
            m.remove("security");
        }
    }
    add_labels(body, labels, display);
}

fn visibility_labels(body: &Value) -> Vec<String> {
    body["meta"]["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["system"] == VISIBILITY_SYSTEM)
        .filter_map(|s| s["code"].as_str().map(str::to_owned))
        .collect()
}

/// A stored resource with its parsed body.
struct Live {
    stored: Stored,
    body: Value,
}

fn reference_id(v: &Value, rtype: &str) -> Option<String> {
    let r = v["reference"].as_str()?;
    let p = crate::fhir::reference::parse(r)?;
    (p.rtype == rtype).then(|| p.id.to_owned())
}

async fn live(tx: &mut Tx<'_>, rtype: &str, id: &str, lock: bool) -> Result<Option<Live>> {
    let stored = if lock {
        tx.current(rtype, id).await?
    } else {
        tx.conn().current(rtype, id, false).await?
    };
    Ok(stored.filter(|s| !s.deleted).and_then(|s| {
        let body = serde_json::from_str(s.body.as_deref()?).ok()?;
        Some(Live { stored: s, body })
    }))
}

/// The lock every write on a dossier or its requests takes first, so that moves on sibling
/// requests (which change each other) queue instead of deadlocking.
fn dossier_key(sr_id: &str) -> String {
    format!("dossier/{sr_id}")
}

impl Workflow {
    pub fn load(delays: Delays) -> std::result::Result<Workflow, RulesError> {
        Ok(Workflow {
            rules: Rules::load()?,
            delays,
        })
    }

    /// Whether the workflow computes the search parameters marked `what`.
    pub fn computes(&self, what: &str) -> bool {
        matches!(what, "dashboard-tab" | "visibility" | "dossier-part")
    }

    /// The tokens of a search parameter the workflow computes (`computed-search-parameter`
    /// extension): `dashboard-tab` gives the tab an AdmissionTask is listed in.
    pub fn computed(&self, what: &str, body: &Value) -> Vec<(String, String)> {
        match what {
            "dashboard-tab" if declares(body, ADMISSION_TASK) => {
                let tab = if moves::is_archived(body) {
                    Some(self.rules.archived_tab.clone())
                } else {
                    business_status(body).and_then(|s| self.rules.tabs.get(s).cloned())
                };
                tab.map(|t| (self.rules.tab_system.clone(), t))
                    .into_iter()
                    .collect()
            }
            "dossier-part" => {
                let part = self.part_of(body).map_or("none", |(_, p)| p);
                vec![(code_system("dossier-part"), part.to_owned())]
            }
            "visibility" => {
                let codes = visibility_labels(body);
                if codes.is_empty() {
                    vec![(VISIBILITY_SYSTEM.to_owned(), "all".to_owned())]
                } else {
                    codes
                        .into_iter()
                        .map(|c| (VISIBILITY_SYSTEM.to_owned(), c))
                        .collect()
                }
            }
            _ => Vec::new(),
        }
    }

    /// What a caller may see among labelled resources (requests, dossiers, unit notes): the `visible-to`
    /// values its searches are limited to; `None` for the system, which sees everything.
    pub fn visible_to(&self, caller: &Caller) -> Option<Vec<String>> {
        match caller {
            Caller::System(_) => None,
            Caller::Anonymous => Some(vec!["all".into()]),
            Caller::Person(_) | Caller::Client(_) => {
                // as for moves: a habilitation on units covers those units; one on a
                // structure (or a client bound to one), the structure's; and what names the
                // habilitation itself
                let mut v = vec!["all".to_owned()];
                v.extend(caller_places(caller));
                Some(v)
            }
        }
    }

    /// Whether `caller` may see a stored resource: one with visibility labels only by the
    /// places they name (a request by its unit and prescribing structure, a unit note by its
    /// unit).
    pub fn visible(&self, caller: &Caller, rtype: &str, body: &str) -> bool {
        // the anonymous caller of dev mode sees no patient data (an `_include` either)
        if matches!(caller, Caller::Anonymous) && crate::audit::PATIENT_DATA.contains(&rtype) {
            return false;
        }
        let part = rtype == "QuestionnaireResponse" && body.contains("/fhir/Questionnaire/");
        if !body.contains(VISIBILITY_SYSTEM) && !part {
            return true;
        }
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            return false;
        };
        // a part only for the profiles that may read it (the medical part is not for an
        // administrative manager)
        if part
            && let Some(allowed) = self.readable_parts(caller)
            && let Some((_, prefix)) = self.part_of(&v)
            && !allowed.iter().any(|p| p == prefix)
        {
            return false;
        }
        let labels = visibility_labels(&v);
        match self.visible_to(caller) {
            None => true,
            Some(allowed) => labels.is_empty() || labels.iter().any(|l| allowed.contains(l)),
        }
    }

    /// The parts a caller may read (right `<part>-read`, `-write` or `-validate`); `None` for
    /// the system and the anonymous (who are kept from patient data elsewhere).
    pub fn readable_parts(&self, caller: &Caller) -> Option<Vec<String>> {
        let Caller::Person(h) = caller else {
            return None;
        };
        Some(
            self.rules
                .parts
                .values()
                .filter(|prefix| {
                    ["read", "write", "validate"]
                        .iter()
                        .any(|r| self.rules.has_right(&h.profile, &format!("{prefix}-{r}")))
                })
                .cloned()
                .collect(),
        )
    }

    /// AuditEvents (and the référent report) are read by the habilitations that manage
    /// accounts (référents) and by the platform-wide system.
    pub fn may_read_audit(&self, caller: &Caller) -> Result<()> {
        match caller {
            Caller::System(_) => Ok(()),
            Caller::Client(c) => Err(Error::forbidden(format!(
                "the audit trail is read by référents and platform-wide system clients, not by {}, bound to {}",
                c.client_id, c.organization
            ))),
            Caller::Anonymous => Err(Error::Unauthorized(
                "the audit trail needs an identified référent".into(),
            )),
            Caller::Person(h) => {
                let ok = self.rules.has_right(&h.profile, "manage-accounts");
                if ok {
                    Ok(())
                } else {
                    Err(Error::forbidden(format!(
                        "the audit trail is read by référents (right manage-accounts), not by the profile `{}`",
                        h.profile
                    )))
                }
            }
        }
    }

    /// Whether `$name` is one of the workflow's operations.
    pub fn handles(&self, name: &str) -> bool {
        self.rules.operations.contains_key(name)
    }

    /// The write rules of admission resources, run inside the write's transaction before a
    /// new version of `rtype/id` is kept (`old`: the current version, if any). May change
    /// `body` (dossier number, the result of a move) or refuse the write.
    #[allow(clippy::too_many_arguments)]
    pub async fn before_write(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        rtype: &str,
        id: &str,
        old: Option<&Value>,
        body: &mut Value,
    ) -> Result<()> {
        match rtype {
            "Task" => {
                let admission = declares(body, ADMISSION_TASK)
                    || old.is_some_and(|o| declares(o, ADMISSION_TASK));
                if !admission {
                    return Ok(());
                }
                let Some(old) = old else {
                    return Err(rule(
                        "tasks-by-send",
                        "an AdmissionTask is created by ServiceRequest/[id]/$send, not by create",
                    ));
                };
                if !declares(body, ADMISSION_TASK) {
                    return Err(rule("profile-kept", "an AdmissionTask keeps its profile"));
                }
                if moves::is_archived(old) != moves::is_archived(body) {
                    return Err(rule(
                        "archive-by-timer",
                        "the `archived` tag is set by the gateway's timer only",
                    ));
                }
                if let Some(sr) = reference_id(&old["focus"], "ServiceRequest") {
                    tx.lock_key(&dossier_key(&sr)).await?;
                }
                match detect(&self.rules, old, body)? {
                    None => {}
                    Some((mv, input)) => {
                        let cur = live(tx, "Task", id, true)
                            .await?
                            .ok_or_else(|| Error::NotFound(format!("Task/{id} not found")))?;
                        *body = self.make_move(fhir, tx, caller, &cur, &mv, &input).await?;
                    }
                }
                self.check_profile(ADMISSION_TASK, body)
            }
            "ServiceRequest" => {
                let admission = declares(body, ADMISSION_REQUEST)
                    || old.is_some_and(|o| declares(o, ADMISSION_REQUEST));
                if !admission {
                    return Ok(());
                }
                self.dossier_write(fhir, tx, caller, id, old, body).await?;
                self.check_profile(ADMISSION_REQUEST, body)
            }
            "Communication" => self.communication_write(tx, caller, body).await,
            "QuestionnaireResponse" => {
                self.part_write(caller, body)?;
                if self.part_of(body).is_some() {
                    keep_or_set_labels(caller, old, body, "Volet");
                }
                Ok(())
            }
            "Patient" => {
                keep_or_set_labels(caller, old, body, "Patient");
                Ok(())
            }
            "PractitionerRole" => {
                self.habilitation_write(tx, caller, old, body).await?;
                self.habilitation_written(fhir, tx, caller, id, old, Some(body))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// The Questionnaire and right prefix of a part, when `qr` answers one of the shipped
    /// Questionnaires.
    fn part_of(&self, qr: &Value) -> Option<(&Value, &str)> {
        let url = qr["questionnaire"].as_str()?;
        let url = url.split('|').next().unwrap_or(url);
        let prefix = self.rules.parts.get(url)?;
        let q = self.rules.resource("Questionnaire", url)?;
        Some((q, prefix.as_str()))
    }

    /// Writing a part needs its write (or validate) right; completing it, its validate right
    /// and every required item answered.
    fn part_write(&self, caller: &Caller, body: &Value) -> Result<()> {
        let Some((q, prefix)) = self.part_of(body) else {
            return Ok(());
        };
        let completed = matches!(body["status"].as_str(), Some("completed" | "amended"));
        if let Caller::Anonymous = caller {
            return Err(Error::Unauthorized(
                "a dossier's part is written by an identified user (X-Passerelle-Role in dev mode)"
                    .into(),
            ));
        }
        if let Caller::Person(h) = caller {
            let has = |r: &str| self.rules.has_right(&h.profile, &format!("{prefix}-{r}"));
            if !has("write") && !has("validate") {
                return Err(Error::forbidden(format!(
                    "the profile `{}` may not write the {prefix} part (right {prefix}-write)",
                    h.profile
                )));
            }
            if completed && !has("validate") {
                return Err(Error::forbidden(format!(
                    "the profile `{}` may not validate (complete) the {prefix} part (right {prefix}-validate)",
                    h.profile
                )));
            }
        }
        if completed {
            let issues = parts::missing(q, body);
            if !issues.is_empty() {
                return Err(Error::Unprocessable(issues));
            }
        }
        Ok(())
    }

    /// A unit note (category `unit-note`, `visible-to` `owner-unit` in the code system) is
    /// written by its unit about one of its requests, and labelled so only that unit (and its
    /// establishment) sees it. The label is recomputed on every write: it cannot be dropped.
    async fn communication_write(
        &self,
        tx: &mut Tx<'_>,
        caller: &Caller,
        body: &mut Value,
    ) -> Result<()> {
        let cat_system = code_system("communication-category");
        let restricted = body["category"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["coding"].as_array().into_iter().flatten())
            .filter(|c| c["system"] == cat_system.as_str())
            .filter_map(|c| c["code"].as_str())
            .any(|code| {
                self.rules
                    .categories
                    .get(code)
                    .is_some_and(|v| v == "owner-unit")
            });
        // pointer_mut, not indexing: indexing a missing key would insert a null
        if let Some(sec) = body
            .pointer_mut("/meta/security")
            .and_then(Value::as_array_mut)
        {
            sec.retain(|s| s["system"] != VISIBILITY_SYSTEM);
        }
        if !restricted {
            // a message about a request is seen where the request is
            if let Some(task_id) = body["partOf"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|r| reference_id(r, "Task"))
                && let Some(task) = live(tx, "Task", &task_id, false).await?
            {
                add_labels(body, &visibility_labels(&task.body), "Message");
            }
            return Ok(());
        }
        let task_id = body["partOf"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|r| reference_id(r, "Task"))
            .ok_or_else(|| {
                Error::Unprocessable(vec![
                    Issue::error(
                        "required",
                        "a unit note is about a request: partOf Task/[id]",
                    )
                    .at("Communication.partOf"),
                ])
            })?;
        let task = live(tx, "Task", &task_id, false)
            .await?
            .ok_or_else(|| rule("unit-note", format!("Task/{task_id} not found")))?;
        if !matches!(caller, Caller::System(_))
            && !self.is_receiving(tx, caller, &task.body["owner"]).await?
        {
            return Err(Error::forbidden(
                "a unit note is written by the users of the request's unit only",
            ));
        }
        let unit = reference_id(&task.body["owner"], "HealthcareService").unwrap_or_default();
        let mut labels = vec![format!("HealthcareService/{unit}")];
        if let Some(org) = live(tx, "HealthcareService", &unit, false)
            .await?
            .and_then(|u| reference_id(&u.body["providedBy"], "Organization"))
        {
            labels.push(format!("Organization/{org}"));
        }
        let mut sec: Vec<Value> = body["meta"]["security"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for l in labels {
            sec.push(json!({"system": VISIBILITY_SYSTEM, "code": l, "display": "Note d'unité"}));
        }
        body["meta"]["security"] = json!(sec);
        Ok(())
    }

    /// Granting, changing or ending a habilitation (a PractitionerRole): by a référent
    /// (right `manage-accounts`) of the structure where it sits, never for themselves. In dev
    /// mode an anonymous caller may still set up accounts (contract §4); the system may too.
    async fn habilitation_write(
        &self,
        tx: &mut Tx<'_>,
        caller: &Caller,
        old: Option<&Value>,
        body: &Value,
    ) -> Result<()> {
        let delegation = |r: Option<&Value>| {
            r.and_then(|r| r["extension"].as_array())
                .into_iter()
                .flatten()
                .find(|e| e["url"] == crate::auth::DELEGATED_BY)
                .cloned()
        };
        if delegation(old) != delegation(Some(body)) {
            return Err(rule(
                "delegated-by",
                "a delegation is made by PractitionerRole/[id]/$delegate, not written",
            ));
        }
        if let Caller::Client(c) = caller {
            // a client bound to a structure sets up accounts in that structure only
            for role in old.into_iter().chain(std::iter::once(body)) {
                let places = self.habilitation_places(tx, role).await?;
                if places.is_empty() || places.iter().any(|p| *p != c.organization) {
                    return Err(Error::forbidden(format!(
                        "the client {} grants habilitations in {} only",
                        c.client_id, c.organization
                    )));
                }
            }
            return Ok(());
        }
        let Caller::Person(h) = caller else {
            return Ok(());
        };
        let manages = self.rules.has_right(&h.profile, "manage-accounts");
        if !manages {
            return Err(Error::forbidden(format!(
                "habilitations are granted by référents (right manage-accounts), not by the profile `{}`",
                h.profile
            )));
        }
        let Some(mine) = &h.organization else {
            return Err(Error::forbidden(format!(
                "{} names no structure: it cannot grant habilitations",
                h.role
            )));
        };
        // the structure(s) the habilitation sits in, before and after the change
        for role in old.into_iter().chain(std::iter::once(body)) {
            let places = self.habilitation_places(tx, role).await?;
            if places.is_empty() || places.iter().any(|p| p != mine) {
                return Err(Error::forbidden(format!(
                    "a référent of {mine} grants habilitations in that structure only"
                )));
            }
            if h.practitioner.is_some()
                && role["practitioner"]["reference"].as_str() == h.practitioner.as_deref()
            {
                return Err(Error::forbidden("nobody grants themselves a habilitation"));
            }
        }
        Ok(())
    }

    /// Who may delete a resource: as who may write it. A request (AdmissionTask) or a sent
    /// dossier is never deleted (they are cancelled); a draft dossier, a part, a message, a
    /// patient only by who may write them and see them; a habilitation as it is granted,
    /// with the accounts it touches settled.
    pub async fn before_delete(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        rtype: &str,
        id: &str,
        old: &Value,
    ) -> Result<()> {
        let text = old.to_string();
        if !self.visible(caller, rtype, &text) {
            return Err(Error::NotFound(format!("{rtype}/{id} not found")));
        }
        match rtype {
            "Task" if declares(old, ADMISSION_TASK) => Err(rule(
                "tasks-not-deleted",
                "a request is never deleted: cancel it ($cancel), the unit withdraws or refuses it",
            )),
            "ServiceRequest" if declares(old, ADMISSION_REQUEST) => {
                if old["status"] != "draft" {
                    return Err(rule(
                        "dossier-not-deleted",
                        "a sent dossier is never deleted: cancel it (ServiceRequest/[id]/$cancel)",
                    ));
                }
                self.dossier_write(fhir, tx, caller, id, Some(old), &mut old.clone())
                    .await
            }
            "QuestionnaireResponse" => self.part_write(caller, old),
            "Communication" => self.communication_write(tx, caller, &mut old.clone()).await,
            "PractitionerRole" => {
                self.habilitation_write(tx, caller, Some(old), old).await?;
                self.habilitation_written(fhir, tx, caller, id, Some(old), None)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// The structures a habilitation sits in: its `organization`, and its units'
    /// establishments.
    async fn habilitation_places(&self, tx: &mut Tx<'_>, role: &Value) -> Result<Vec<String>> {
        let mut places: Vec<String> = role["organization"]["reference"]
            .as_str()
            .map(str::to_owned)
            .into_iter()
            .collect();
        for u in role["healthcareService"].as_array().into_iter().flatten() {
            if let Some(unit) = reference_id(u, "HealthcareService")
                && let Some(org) = live(tx, "HealthcareService", &unit, false)
                    .await?
                    .and_then(|x| reference_id(&x.body["providedBy"], "Organization"))
            {
                places.push(format!("Organization/{org}"));
            }
        }
        Ok(places)
    }

    /// The structures with fewer than two valid référents (domain.md: there must be two,
    /// since nobody grants themselves anything), as a `Parameters` resource.
    pub async fn referent_report(
        &self,
        fhir: &Fhir,
        conn: &mut crate::store::Conn<'_>,
    ) -> Result<Value> {
        let now = fhir.store.clock().now();
        let mut q = crate::store::Query::new("Organization");
        q.limit = usize::MAX >> 1;
        let orgs = conn.search(&q).await?;
        let mut q = crate::store::Query::new("PractitionerRole");
        q.limit = usize::MAX >> 1;
        let roles = conn.search(&q).await?;
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for r in &roles {
            let Some(body) = r
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
            else {
                continue;
            };
            if let Some(hab) = crate::auth::habilitation(&r.id, &body, now)
                && self.rules.has_right(&hab.profile, "manage-accounts")
                && let Some(org) = hab.organization
            {
                *count.entry(org).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for o in &orgs {
            let key = format!("Organization/{}", o.id);
            let n = count.get(&key).copied().unwrap_or(0);
            if n < 2 {
                let name = o
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
                    .and_then(|b| b["name"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                out.push(json!({"name": "structure", "part": [
                    {"name": "organization", "valueReference": {"reference": key, "display": name}},
                    {"name": "referents", "valueInteger": n}
                ]}));
            }
        }
        Ok(json!({"resourceType": "Parameters", "parameter": out}))
    }

    /// The profile issues of a resource that declares one of the gateway's profiles
    /// (`$validate`).
    pub fn profile_issues(&self, resource: &Value) -> Vec<Issue> {
        if resource["resourceType"] == "QuestionnaireResponse"
            && let Some((q, _)) = self.part_of(resource)
        {
            return parts::missing(q, resource);
        }
        [ADMISSION_TASK, ADMISSION_REQUEST]
            .into_iter()
            .filter(|url| declares(resource, url))
            .flat_map(|url| match self.check_profile(url, resource) {
                Err(Error::Unprocessable(issues)) => issues,
                _ => Vec::new(),
            })
            .collect()
    }

    fn check_profile(&self, url: &str, body: &Value) -> Result<()> {
        let Some(sd) = profile::structure_definition(&self.rules, url) else {
            return Ok(());
        };
        let mut issues = profile::check(&self.rules, sd, body);
        if url == ADMISSION_TASK {
            issues.extend(profile::task_invariants(&self.rules, body));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Error::Unprocessable(issues))
        }
    }

    /// Creating or changing a dossier: the prescriber side only; the gateway assigns the
    /// number; the status moves only through the operations.
    async fn dossier_write(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        id: &str,
        old: Option<&Value>,
        body: &mut Value,
    ) -> Result<()> {
        match caller {
            Caller::System(_) => return Ok(()),
            Caller::Anonymous => {
                return Err(Error::Unauthorized(
                    "a dossier is written by an identified prescriber (X-Passerelle-Role in dev mode)"
                        .into(),
                ));
            }
            Caller::Person(h) if !self.rules.has_right(&h.profile, "request-create") => {
                return Err(Error::forbidden(format!(
                    "the profile `{}` may not write a dossier (right request-create)",
                    h.profile
                )));
            }
            Caller::Person(_) | Caller::Client(_) => {}
        }
        let requester = body["requester"].clone();
        if !self.is_sending(tx, caller, &requester).await? {
            return Err(Error::forbidden(format!(
                "{} is not of the structure of the dossier's requester",
                caller.display()
            )));
        }
        let ours = |v: &Value| -> Vec<Value> {
            v["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["system"] == DOSSIER_SYSTEM)
                .cloned()
                .collect()
        };
        match old {
            None => {
                if !ours(body).is_empty() {
                    return Err(Error::Unprocessable(vec![
                        Issue::error(
                            "business-rule",
                            "dossier-number: the gateway assigns the dossier number; leave it out",
                        )
                        .at("ServiceRequest.identifier"),
                    ]));
                }
                if body["status"] != "draft" {
                    return Err(Error::Unprocessable(vec![
                        Issue::error(
                            "business-rule",
                            "dossier-status: a dossier is created `draft`, then sent with $send",
                        )
                        .at("ServiceRequest.status"),
                    ]));
                }
                let module = body["category"][0]["coding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["system"] == code_system("orientation-module").as_str())
                    .and_then(|c| c["code"].as_str())
                    .and_then(|m| self.rules.modules.get(m).map(|p| (m, p)));
                let Some((_, prefix)) = module else {
                    return Err(Error::Unprocessable(vec![
                        Issue::error(
                            "required",
                            "dossier-module: category must carry a code of the orientation-module code system",
                        )
                        .at("ServiceRequest.category"),
                    ]));
                };
                let prefix = prefix.clone();
                assign_number(tx, &prefix, body).await?;
                let labels = self.requester_labels(tx, &body["requester"]).await?;
                set_labels(body, &labels, "Dossier");
                self.share(fhir, tx, body, &labels).await?;
            }
            Some(old) => {
                if ours(old) != ours(body) {
                    return Err(Error::Unprocessable(vec![
                        Issue::error(
                            "business-rule",
                            "dossier-number: the dossier number never changes",
                        )
                        .at("ServiceRequest.identifier"),
                    ]));
                }
                if old["status"] != body["status"] {
                    return Err(Error::Unprocessable(vec![
                        Issue::error(
                            "business-rule",
                            "dossier-status: a dossier's status changes through $send, $cancel and the requests' moves",
                        )
                        .at("ServiceRequest.status"),
                    ]));
                }
                let _ = id;
                // the labels are the gateway's: kept as they were
                set_labels(body, &visibility_labels(old), "Dossier");
            }
        }
        Ok(())
    }

    /// Lets `places` see a dossier's patient and parts (new versions only where a label is
    /// missing).
    async fn share(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        dossier: &Value,
        places: &[String],
    ) -> Result<()> {
        let mut targets: Vec<(String, String)> = Vec::new();
        if let Some(p) = reference_id(&dossier["subject"], "Patient") {
            targets.push(("Patient".into(), p));
        }
        for r in dossier["supportingInfo"].as_array().into_iter().flatten() {
            if let Some(q) = reference_id(r, "QuestionnaireResponse") {
                targets.push(("QuestionnaireResponse".into(), q));
            }
        }
        for (rtype, id) in targets {
            let Some(cur) = live(tx, &rtype, &id, true).await? else {
                continue;
            };
            let mut body = cur.body.clone();
            add_labels(
                &mut body,
                places,
                if rtype == "Patient" {
                    "Patient"
                } else {
                    "Volet"
                },
            );
            if body != cur.body {
                put_resource(fhir, tx, &rtype, Some(&id), body, "PUT").await?;
            }
        }
        Ok(())
    }

    /// The places that see what a requester (a PractitionerRole) asked for: the role and its
    /// structure.
    async fn requester_labels(&self, tx: &mut Tx<'_>, requester: &Value) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if let Some(rid) = reference_id(requester, "PractitionerRole") {
            out.push(format!("PractitionerRole/{rid}"));
            if let Some(org) = live(tx, "PractitionerRole", &rid, false)
                .await?
                .and_then(|r| reference_id(&r.body["organization"], "Organization"))
            {
                out.push(format!("Organization/{org}"));
            }
        }
        Ok(out)
    }

    /// The places that see what is sent to a unit: the unit and its establishment.
    async fn unit_labels(&self, tx: &mut Tx<'_>, unit: &str) -> Result<Vec<String>> {
        let mut out = vec![format!("HealthcareService/{unit}")];
        if let Some(org) = live(tx, "HealthcareService", unit, false)
            .await?
            .and_then(|u| reference_id(&u.body["providedBy"], "Organization"))
        {
            out.push(format!("Organization/{org}"));
        }
        Ok(out)
    }

    /// Whether the caller acts for the structure that a `requester` reference belongs to.
    async fn is_sending(
        &self,
        tx: &mut Tx<'_>,
        caller: &Caller,
        requester: &Value,
    ) -> Result<bool> {
        let Some(rid) = reference_id(requester, "PractitionerRole") else {
            return Ok(false);
        };
        if let Caller::Person(h) = caller
            && h.role == format!("PractitionerRole/{rid}")
        {
            return Ok(true);
        }
        let Some(org) = caller.organization() else {
            return Ok(false);
        };
        Ok(live(tx, "PractitionerRole", &rid, false)
            .await?
            .and_then(|r| reference_id(&r.body["organization"], "Organization"))
            .is_some_and(|o| format!("Organization/{o}") == *org))
    }

    /// Whether the caller's habilitation covers a request's unit (`owner`).
    async fn is_receiving(&self, tx: &mut Tx<'_>, caller: &Caller, owner: &Value) -> Result<bool> {
        let Some(unit) = reference_id(owner, "HealthcareService") else {
            return Ok(false);
        };
        let unit_ref = format!("HealthcareService/{unit}");
        // a habilitation on units covers those units; one on a structure (or a client bound
        // to it), all its units
        if let Caller::Person(h) = caller
            && !h.services.is_empty()
        {
            return Ok(h.services.contains(&unit_ref));
        }
        let Some(org) = caller.organization() else {
            return Ok(false);
        };
        Ok(live(tx, "HealthcareService", &unit, false)
            .await?
            .and_then(|u| reference_id(&u.body["providedBy"], "Organization"))
            .is_some_and(|o| format!("Organization/{o}") == *org))
    }

    async fn standing(&self, tx: &mut Tx<'_>, caller: &Caller, task: &Value) -> Result<Standing> {
        Ok(Standing {
            receiving: self.is_receiving(tx, caller, &task["owner"]).await?,
            sending: self.is_sending(tx, caller, &task["requester"]).await?,
        })
    }

    /// The version of a Task before it was last cancelled: what `$reactivate` restores.
    async fn before_cancel(&self, tx: &mut Tx<'_>, task: &Live) -> Result<Option<Value>> {
        let mut v = task.stored.version - 1;
        while v >= 1 {
            if let Some(s) = tx.conn().version("Task", &task.stored.id, v).await?
                && let Some(b) = s.body.as_deref()
                && let Ok(body) = serde_json::from_str::<Value>(b)
                && business_status(&body)
                    .and_then(|c| self.rules.status(c))
                    .is_some_and(|s| s.open)
            {
                return Ok(Some(body));
            }
            v -= 1;
        }
        Ok(None)
    }

    /// Makes a move on a locked Task: checks who asks and what, writes the side effects, and
    /// returns the Task's next version (which the caller keeps).
    async fn make_move(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        task: &Live,
        mv: &Move,
        input: &Input,
    ) -> Result<Value> {
        let standing = self.standing(tx, caller, &task.body).await?;
        authorize(&self.rules, mv, caller, &standing)?;
        let before = match mv.to {
            Target::Previous => self.before_cancel(tx, task).await?,
            Target::Status(_) => None,
        };
        let now = format_instant(tx.now());
        let mut next = apply(&self.rules, mv, &task.body, input, before.as_ref(), &now)?;
        next["lastModified"] = json!(now);
        self.check_profile(ADMISSION_TASK, &next)?;
        let target = format!(
            "Task/{}/_history/{}",
            task.stored.id,
            task.stored.version + 1
        );
        self.provenance(fhir, tx, caller, &target, &mv.name, None)
            .await?;
        if mv.name == "request-info"
            && let Some(message) = &input.message
        {
            self.communication(
                fhir,
                tx,
                caller,
                &next,
                "message",
                message,
                Recipient::Sender,
            )
            .await?;
        }
        let Some(sr_id) = reference_id(&task.body["focus"], "ServiceRequest") else {
            return Ok(next);
        };
        if let Some(reason) = &mv.siblings {
            self.cancel_siblings(fhir, tx, caller, &sr_id, &task.stored.id, reason)
                .await?;
        }
        let closes = business_status(&next)
            .and_then(|c| self.rules.status(c))
            .is_some_and(|s| !s.open);
        let mut dossier_status = mv.dossier.clone();
        if closes && mv.last_open.as_deref() == Some("revoke") {
            let others = self.dossier_tasks(fhir, tx, &sr_id).await?;
            let any_open_or_admitted =
                others
                    .iter()
                    .filter(|t| t.stored.id != task.stored.id)
                    .any(|t| {
                        business_status(&t.body).is_some_and(|c| {
                            c == "admitted" || self.rules.status(c).is_some_and(|s| s.open)
                        })
                    });
            if !any_open_or_admitted {
                dossier_status = Some("revoked".into());
            }
        }
        if let Some(status) = dossier_status
            && let Some(sr) = live(tx, "ServiceRequest", &sr_id, true).await?
            && sr.body["status"] != status.as_str()
        {
            let mut body = sr.body.clone();
            body["status"] = json!(status);
            put_resource(fhir, tx, "ServiceRequest", Some(&sr_id), body, "PUT").await?;
        }
        Ok(next)
    }

    /// The requests of a dossier.
    async fn dossier_tasks(&self, fhir: &Fhir, tx: &mut Tx<'_>, sr_id: &str) -> Result<Vec<Live>> {
        let params = vec![
            ("focus".to_owned(), format!("ServiceRequest/{sr_id}")),
            ("_count".to_owned(), fhir.paging.max_count.to_string()),
        ];
        let s = fhir.parse_search("Task", &params, true)?;
        let found = tx.conn().search(&s.query).await?;
        Ok(found
            .into_iter()
            .filter_map(|s| {
                let body = serde_json::from_str(s.body.as_deref()?).ok()?;
                declares(&body, ADMISSION_TASK).then_some(Live { stored: s, body })
            })
            .collect())
    }

    /// Cancels the dossier's other open requests (`not-selected`, `admitted-elsewhere`) and
    /// tells their units.
    async fn cancel_siblings(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        sr_id: &str,
        except: &str,
        reason: &str,
    ) -> Result<()> {
        let cancel = self
            .rules
            .moves
            .get("cancel")
            .ok_or_else(|| rule("cancel", "no cancel move in mappings/task-moves.json"))?;
        let input = Input {
            reason: Some(json!({"system": code_system("cancellation-reason"), "code": reason})),
            ..Input::default()
        };
        let now = format_instant(tx.now());
        for t in self.dossier_tasks(fhir, tx, sr_id).await? {
            if t.stored.id == except
                || !business_status(&t.body)
                    .and_then(|c| self.rules.status(c))
                    .is_some_and(|s| s.open)
            {
                continue;
            }
            let Some(t) = live(tx, "Task", &t.stored.id, true).await? else {
                continue;
            };
            let mut next = apply(&self.rules, cancel, &t.body, &input, None, &now)?;
            next["lastModified"] = json!(now);
            let stored =
                put_resource(fhir, tx, "Task", Some(&t.stored.id), next.clone(), "PUT").await?;
            let target = format!("Task/{}/_history/{}", stored.id, stored.version);
            self.provenance(
                fhir,
                tx,
                &Caller::System("workflow".into()),
                &target,
                "cancel",
                caller.reference(),
            )
            .await?;
            let display = self
                .rules
                .cancellation
                .get(reason)
                .map_or(reason, |r| r.display.as_str());
            let text = format!("Demande annulée : {display}.");
            self.communication(
                fhir,
                tx,
                &Caller::System("workflow".into()),
                &next,
                "update-notice",
                &text,
                Recipient::Owner,
            )
            .await?;
        }
        Ok(())
    }

    /// A Provenance for one move.
    async fn provenance(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        target: &str,
        move_name: &str,
        on_behalf_of: Option<String>,
    ) -> Result<()> {
        let agent = author(caller, on_behalf_of);
        let mut p = json!({
            "resourceType": "Provenance",
            "target": [{"reference": target}],
            "recorded": format_instant(tx.now()),
            "activity": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}],
                "text": format!("${move_name}")
            },
            "agent": [agent],
        });
        if let Some(op) = self.rules.operations.get(move_name) {
            p["policy"] = json!([op.url]);
        }
        put_resource(fhir, tx, "Provenance", None, p, "POST").await?;
        Ok(())
    }

    /// A Communication about a request, to its unit (`Owner`) or its prescriber (`Sender`).
    #[allow(clippy::too_many_arguments)]
    async fn communication(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        task: &Value,
        category: &str,
        text: &str,
        to: Recipient,
    ) -> Result<Stored> {
        let recipient = match to {
            Recipient::Owner => task["owner"].clone(),
            Recipient::Sender => task["requester"].clone(),
        };
        let mut c = json!({
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"coding": [{"system": code_system("communication-category"), "code": category}]}],
            "partOf": [{"reference": format!("Task/{}", task["id"].as_str().unwrap_or_default())}],
            "basedOn": [task["focus"].clone()],
            "subject": task["for"].clone(),
            "sent": format_instant(tx.now()),
            "recipient": [recipient],
            "payload": [{"contentString": text}],
        });
        if let Some(r) = caller.reference() {
            c["sender"] = json!({"reference": r});
        }
        add_labels(&mut c, &visibility_labels(task), "Message");
        put_resource(fhir, tx, "Communication", None, c, "POST").await
    }

    /// Runs `$name` (a workflow operation) inside the request's transaction.
    pub async fn operation(&self, fhir: &Fhir, tx: &mut Tx<'_>, req: &Req) -> Result<Resp> {
        let Route::Operation { rtype, id, name } = &req.route else {
            return Err(Error::NotFound("no operation".into()));
        };
        let op = self
            .rules
            .operations
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("operation ${name}")))?;
        let (Some(rtype), Some(id)) = (rtype, id) else {
            return Err(Error::NotFound(format!(
                "${name} runs on an instance: {}/[id]/${name}",
                op.resources.join(" or ")
            )));
        };
        if !op.resources.contains(rtype) {
            return Err(Error::NotFound(format!("${name} does not run on {rtype}")));
        }
        let params = parameters(name, op, req.body.as_ref())?;
        let input = Input {
            window: params.one("window").cloned().or_else(|| {
                params
                    .one("approximate-date")
                    .map(|d| json!({"start": d, "end": d}))
            }),
            date: params
                .one("date")
                .and_then(Value::as_str)
                .map(str::to_owned),
            reason: params.one("reason").cloned(),
            comment: params
                .one("comment")
                .and_then(Value::as_str)
                .map(str::to_owned),
            message: params
                .one("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        match (rtype.as_str(), name.as_str()) {
            ("ServiceRequest", "send") => self.send(fhir, tx, req, id, &params).await,
            ("ServiceRequest", "cancel") => self.cancel_dossier(fhir, tx, req, id, &input).await,
            ("ServiceRequest", "update") => self.update_dossier(fhir, tx, req, id, &params).await,
            ("ServiceRequest", "copy") => self.copy_dossier(fhir, tx, req, id, &params).await,
            ("Task", "remind") => self.remind(fhir, tx, req, id, &input).await,
            ("PractitionerRole", "delegate") => self.delegate(fhir, tx, req, id, &params).await,
            ("Task", _) => {
                let mv = self
                    .rules
                    .moves
                    .get(name)
                    .ok_or_else(|| Error::NotFound(format!("operation ${name}")))?
                    .clone();
                let task = self.lock_task(tx, id, req.if_match).await?;
                let next = self
                    .make_move(fhir, tx, &req.caller, &task, &mv, &input)
                    .await?;
                let stored = put_resource(fhir, tx, "Task", Some(id), next, "PUT").await?;
                Ok(Resp::stored(fhir, StatusCode::OK, &stored))
            }
            _ => Err(Error::NotFound(format!("${name} on {rtype}"))),
        }
    }

    /// Takes the dossier's lock, then the Task's row, and checks `If-Match`.
    async fn lock_task(&self, tx: &mut Tx<'_>, id: &str, if_match: Option<i64>) -> Result<Live> {
        let peek = live(tx, "Task", id, false)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Task/{id} not found")))?;
        if !declares(&peek.body, ADMISSION_TASK) {
            return Err(rule(
                "admission-task",
                format!("Task/{id} is not an AdmissionTask"),
            ));
        }
        if let Some(sr) = reference_id(&peek.body["focus"], "ServiceRequest") {
            tx.lock_key(&dossier_key(&sr)).await?;
        }
        let task = live(tx, "Task", id, true)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Task/{id} not found")))?;
        if let Some(expected) = if_match
            && expected != task.stored.version
        {
            return Err(Error::PreconditionFailed(format!(
                "If-Match W/\"{expected}\" but Task/{id} is at W/\"{}\"",
                task.stored.version
            )));
        }
        Ok(task)
    }

    async fn lock_dossier(&self, tx: &mut Tx<'_>, id: &str, if_match: Option<i64>) -> Result<Live> {
        tx.lock_key(&dossier_key(id)).await?;
        let sr = live(tx, "ServiceRequest", id, true)
            .await?
            .ok_or_else(|| Error::NotFound(format!("ServiceRequest/{id} not found")))?;
        if !declares(&sr.body, ADMISSION_REQUEST) {
            return Err(rule(
                "admission-request",
                format!("ServiceRequest/{id} is not an AdmissionRequest"),
            ));
        }
        if let Some(expected) = if_match
            && expected != sr.stored.version
        {
            return Err(Error::PreconditionFailed(format!(
                "If-Match W/\"{expected}\" but ServiceRequest/{id} is at W/\"{}\"",
                sr.stored.version
            )));
        }
        Ok(sr)
    }

    /// Checks the caller may act for the dossier's prescriber side with `right`.
    async fn prescriber(
        &self,
        tx: &mut Tx<'_>,
        caller: &Caller,
        sr: &Value,
        op: &str,
    ) -> Result<()> {
        match caller {
            Caller::System(_) => return Ok(()),
            Caller::Anonymous => {
                return Err(Error::Unauthorized(format!(
                    "${op} needs an identified caller (X-Passerelle-Role in dev mode)"
                )));
            }
            Caller::Person(h) if !self.rules.has_right(&h.profile, "request-send") => {
                return Err(Error::forbidden(format!(
                    "${op} needs the right `request-send`, which the profile `{}` does not have",
                    h.profile
                )));
            }
            Caller::Person(_) | Caller::Client(_) => {}
        }
        if !self.is_sending(tx, caller, &sr["requester"]).await? {
            return Err(Error::forbidden(format!(
                "${op} is made by the dossier's prescribing structure; {} is not of it",
                caller.display()
            )));
        }
        Ok(())
    }

    /// `$send`: one AdmissionTask per unit.
    async fn send(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        req: &Req,
        id: &str,
        params: &Params,
    ) -> Result<Resp> {
        let sr = self.lock_dossier(tx, id, req.if_match).await?;
        self.prescriber(tx, &req.caller, &sr.body, "send").await?;
        let status = sr.body["status"].as_str().unwrap_or_default();
        if status != "draft" && status != "active" {
            return Err(rule(
                "dossier-status ($send)",
                format!("a `{status}` dossier cannot be sent"),
            ));
        }
        self.check_parts(tx, &sr.body).await?;
        let existing = self.dossier_tasks(fhir, tx, id).await?;
        let authored = existing
            .iter()
            .filter_map(|t| t.body["authoredOn"].as_str())
            .min()
            .map(str::to_owned)
            .unwrap_or_else(|| format_instant(tx.now()));
        let number = sr.body["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == DOSSIER_SYSTEM)
            .cloned()
            .ok_or_else(|| rule("dossier-number", "the dossier has no number"))?;
        let mut entries = Vec::new();
        let mut unit_places = Vec::new();
        for (i, unit) in params.all("unit").iter().enumerate() {
            let at = format!("Parameters.parameter[unit][{i}]");
            let unit_id = reference_id(unit, "HealthcareService").ok_or_else(|| {
                Error::Unprocessable(vec![
                    Issue::error("value", "a unit is a Reference to a HealthcareService").at(&at),
                ])
            })?;
            let hs = live(tx, "HealthcareService", &unit_id, false)
                .await?
                .filter(|u| u.body["active"] != false)
                .ok_or_else(|| {
                    Error::Unprocessable(vec![
                        Issue::error(
                            "business-rule",
                            format!("send-unit: HealthcareService/{unit_id} is not an active unit of the directory"),
                        )
                        .at(&at),
                    ])
                })?;
            let owner = json!({"reference": format!("HealthcareService/{unit_id}")});
            let already = existing.iter().any(|t| {
                t.body["owner"] == owner
                    && business_status(&t.body)
                        .and_then(|c| self.rules.status(c))
                        .is_some_and(|s| s.open)
            });
            if already {
                return Err(Error::Conflict(format!(
                    "$send: the dossier already has an open request to HealthcareService/{unit_id}"
                )));
            }
            let now = format_instant(tx.now());
            let sent = self
                .rules
                .status("sent")
                .ok_or_else(|| rule("send", "no business status `sent`"))?;
            let task = json!({
                "resourceType": "Task",
                "meta": {"profile": [ADMISSION_TASK]},
                "groupIdentifier": number,
                "status": sent.task_status,
                "businessStatus": {"coding": [{"system": code_system("business-status"), "code": "sent", "display": sent.display}]},
                "intent": "order",
                "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
                "description": hs.body["name"].as_str().map(|n| format!("Demande d'admission : {n}")),
                "focus": {"reference": format!("ServiceRequest/{id}")},
                "for": sr.body["subject"],
                "authoredOn": authored,
                "lastModified": now,
                "requester": sr.body["requester"],
                "owner": owner,
            });
            let mut task = task;
            if task["description"].is_null()
                && let Some(o) = task.as_object_mut()
            {
                o.remove("description");
            }
            let mut labels = self.unit_labels(tx, &unit_id).await?;
            labels.extend(self.requester_labels(tx, &sr.body["requester"]).await?);
            set_labels(&mut task, &labels, "Demande d'admission");
            unit_places.extend(self.unit_labels(tx, &unit_id).await?);
            self.check_profile(ADMISSION_TASK, &task)?;
            let stored = put_resource(fhir, tx, "Task", None, task, "POST").await?;
            let target = format!("Task/{}/_history/{}", stored.id, stored.version);
            self.provenance(fhir, tx, &req.caller, &target, "send", None)
                .await?;
            entries.push(stored);
        }
        // the dossier becomes active, and visible (with its patient and parts) to the units
        self.share(fhir, tx, &sr.body, &unit_places).await?;
        let mut body = sr.body.clone();
        body["status"] = json!("active");
        add_labels(&mut body, &unit_places, "Dossier");
        if body != sr.body {
            put_resource(fhir, tx, "ServiceRequest", Some(id), body, "PUT").await?;
        }
        Ok(bundle_of(fhir, &entries))
    }

    /// A dossier is sent only with its three parts completed.
    async fn check_parts(&self, tx: &mut Tx<'_>, sr: &Value) -> Result<()> {
        let mut completed = Vec::new();
        for r in sr["supportingInfo"].as_array().into_iter().flatten() {
            if let Some(qr) = reference_id(r, "QuestionnaireResponse")
                && let Some(qr) = live(tx, "QuestionnaireResponse", &qr, false).await?
                && qr.body["status"] == "completed"
                && let Some(q) = qr.body["questionnaire"].as_str()
            {
                completed.push(q.split('|').next().unwrap_or(q).to_owned());
            }
        }
        let missing: Vec<String> = self
            .rules
            .files
            .values()
            .filter(|f| f["resourceType"] == "Questionnaire")
            .filter_map(|q| q["url"].as_str())
            .filter(|url| !completed.iter().any(|c| c == url))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::Unprocessable(vec![
                Issue::error(
                    "business-rule",
                    format!(
                        "parts-completed: the dossier's parts must be completed before it is sent; missing: {}",
                        missing.join(", ")
                    ),
                )
                .at("ServiceRequest.supportingInfo"),
            ]))
        }
    }

    /// `$cancel` on a dossier: every open request is cancelled (then the dossier is revoked).
    async fn cancel_dossier(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        req: &Req,
        id: &str,
        input: &Input,
    ) -> Result<Resp> {
        let sr = self.lock_dossier(tx, id, req.if_match).await?;
        self.prescriber(tx, &req.caller, &sr.body, "cancel").await?;
        let cancel = self
            .rules
            .moves
            .get("cancel")
            .ok_or_else(|| rule("cancel", "no cancel move"))?
            .clone();
        let mut out = Vec::new();
        let tasks = self.dossier_tasks(fhir, tx, id).await?;
        let open: Vec<&Live> = tasks
            .iter()
            .filter(|t| {
                business_status(&t.body)
                    .and_then(|c| self.rules.status(c))
                    .is_some_and(|s| s.open)
            })
            .collect();
        if open.is_empty() && sr.body["status"] != "draft" {
            return Err(Error::Conflict(format!(
                "$cancel: ServiceRequest/{id} has no open request left"
            )));
        }
        for t in open {
            let Some(t) = live(tx, "Task", &t.stored.id, true).await? else {
                continue;
            };
            let next = self
                .make_move(fhir, tx, &req.caller, &t, &cancel, input)
                .await?;
            out.push(put_resource(fhir, tx, "Task", Some(&t.stored.id), next, "PUT").await?);
        }
        if let Some(sr) = live(tx, "ServiceRequest", id, true).await?
            && sr.body["status"] == "draft"
        {
            let mut body = sr.body.clone();
            body["status"] = json!("revoked");
            put_resource(fhir, tx, "ServiceRequest", Some(id), body, "PUT").await?;
        }
        Ok(bundle_of(fhir, &out))
    }

    /// `$remind`: allowed once the other side has been silent for the configured delay.
    async fn remind(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        req: &Req,
        id: &str,
        input: &Input,
    ) -> Result<Resp> {
        let task = self.lock_task(tx, id, req.if_match).await?;
        let standing = self.standing(tx, &req.caller, &task.body).await?;
        let mv = Move {
            name: "remind".into(),
            by: vec![rules::Side::Sending, rules::Side::Receiving],
            right: if standing.receiving {
                "request-answer"
            } else {
                "request-send"
            }
            .into(),
            from: vec![],
            to: Target::Previous,
            siblings: None,
            dossier: None,
            last_open: None,
        };
        authorize(&self.rules, &mv, &req.caller, &standing)?;
        let state = business_status(&task.body).unwrap_or_default();
        let (wanted, to) = if standing.sending {
            ("agreed-in-principle", Recipient::Owner)
        } else {
            ("admission-proposed", Recipient::Sender)
        };
        if state != wanted {
            return Err(rule(
                "remind-state",
                format!("a reminder from this side is for a request `{wanted}`, not `{state}`"),
            ));
        }
        let silent = tx.now() - task.stored.last_updated;
        if silent < self.delays.remind_after {
            return Err(rule(
                "remind-72h",
                format!(
                    "a reminder is allowed {} h after the last change; it has been {} h",
                    self.delays.remind_after / HOUR,
                    silent / HOUR
                ),
            ));
        }
        let text = input
            .message
            .clone()
            .unwrap_or_else(|| "Relance : merci de donner suite à cette demande.".into());
        let c = self
            .communication(fhir, tx, &req.caller, &task.body, "reminder", &text, to)
            .await?;
        let target = format!("Task/{id}/_history/{}", task.stored.version);
        self.provenance(fhir, tx, &req.caller, &target, "remind", None)
            .await?;
        Ok(Resp::stored(fhir, StatusCode::CREATED, &c))
    }

    /// `$copy`: a new draft dossier for the same patient, replacing the earlier one, with its
    /// administrative part copied back to `in-progress`.
    async fn copy_dossier(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        req: &Req,
        id: &str,
        params: &Params,
    ) -> Result<Resp> {
        let old = self.lock_dossier(tx, id, req.if_match).await?;
        self.prescriber(tx, &req.caller, &old.body, "copy").await?;
        let creates = match &req.caller {
            Caller::Person(h) => self.rules.has_right(&h.profile, "request-create"),
            _ => true,
        };
        if !creates {
            return Err(Error::forbidden("$copy needs the right `request-create`"));
        }
        let module_system = code_system("orientation-module");
        let module = match params.one("module") {
            Some(c) => c.clone(),
            None => old.body["category"][0]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["system"] == module_system.as_str())
                .cloned()
                .unwrap_or(Value::Null),
        };
        let prefix = module["code"]
            .as_str()
            .filter(|_| module["system"] == module_system.as_str())
            .and_then(|m| self.rules.modules.get(m))
            .cloned()
            .ok_or_else(|| {
                Error::Unprocessable(vec![
                    Issue::error(
                        "code-invalid",
                        format!("`module` {module} is not a code of {module_system}"),
                    )
                    .at("Parameters.parameter[module]"),
                ])
            })?;
        // the administrative part, copied back to in-progress
        let mut parts = Vec::new();
        for r in old.body["supportingInfo"].as_array().into_iter().flatten() {
            let Some(qr_id) = reference_id(r, "QuestionnaireResponse") else {
                continue;
            };
            let Some(qr) = live(tx, "QuestionnaireResponse", &qr_id, false).await? else {
                continue;
            };
            if self.part_of(&qr.body).map(|(_, p)| p) != Some("admin") {
                continue;
            }
            let mut copy = qr.body.clone();
            if let Some(o) = copy.as_object_mut() {
                o.remove("id");
                o.remove("meta");
                o.remove("authored");
            }
            copy["status"] = json!("in-progress");
            for item in copy["item"].as_array_mut().into_iter().flatten() {
                if item["linkId"] == "module" {
                    item["answer"] = json!([{"valueCoding": module}]);
                }
            }
            self.part_write(&req.caller, &copy)?;
            set_labels(&mut copy, &caller_places(&req.caller), "Volet");
            let stored =
                put_resource(fhir, tx, "QuestionnaireResponse", None, copy, "POST").await?;
            parts.push(json!({"reference": format!("QuestionnaireResponse/{}", stored.id)}));
        }
        let requester = match &req.caller {
            Caller::Person(h) => json!({"reference": h.role}),
            _ => old.body["requester"].clone(),
        };
        let mut body = json!({
            "resourceType": "ServiceRequest",
            "meta": {"profile": [ADMISSION_REQUEST]},
            "replaces": [{"reference": format!("ServiceRequest/{id}")}],
            "status": "draft",
            "intent": "order",
            "category": [{"coding": [module]}],
            "subject": old.body["subject"],
            "requester": requester,
        });
        if !parts.is_empty() {
            body["supportingInfo"] = json!(parts);
        }
        assign_number(tx, &prefix, &mut body).await?;
        let labels = self.requester_labels(tx, &body["requester"]).await?;
        set_labels(&mut body, &labels, "Dossier");
        self.share(fhir, tx, &body, &labels).await?;
        self.check_profile(ADMISSION_REQUEST, &body)?;
        let stored = put_resource(fhir, tx, "ServiceRequest", None, body, "POST").await?;
        let target = format!("ServiceRequest/{}/_history/1", stored.id);
        self.provenance(fhir, tx, &req.caller, &target, "copy", None)
            .await?;
        Ok(Resp::stored(fhir, StatusCode::CREATED, &stored))
    }

    /// `$update`: new versions of the parts; every open request's unit is told; the
    /// requests keep their initial send date.
    async fn update_dossier(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        req: &Req,
        id: &str,
        params: &Params,
    ) -> Result<Resp> {
        let sr = self.lock_dossier(tx, id, req.if_match).await?;
        self.prescriber(tx, &req.caller, &sr.body, "update").await?;
        if sr.body["status"] != "active" {
            return Err(rule(
                "dossier-status ($update)",
                format!(
                    "only a sent (active) dossier is updated this way, not a `{}` one",
                    sr.body["status"].as_str().unwrap_or_default()
                ),
            ));
        }
        let mut body = sr.body.clone();
        for (i, part) in params.all("part").iter().enumerate() {
            let qr = reference_id(part, "QuestionnaireResponse").ok_or_else(|| {
                Error::Unprocessable(vec![
                    Issue::error("value", "a part is a Reference to a QuestionnaireResponse")
                        .at(format!("Parameters.parameter[part][{i}]")),
                ])
            })?;
            if live(tx, "QuestionnaireResponse", &qr, false)
                .await?
                .is_none()
            {
                return Err(Error::Unprocessable(vec![
                    Issue::error("not-found", format!("QuestionnaireResponse/{qr} not found"))
                        .at(format!("Parameters.parameter[part][{i}]")),
                ]));
            }
            let r = json!({"reference": format!("QuestionnaireResponse/{qr}")});
            let list = body["supportingInfo"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !list.contains(&r) {
                let mut list = list;
                list.push(r);
                body["supportingInfo"] = json!(list);
            }
        }
        self.check_parts(tx, &body).await?;
        if body != sr.body {
            self.share(fhir, tx, &body, &visibility_labels(&body))
                .await?;
            put_resource(fhir, tx, "ServiceRequest", Some(id), body, "PUT").await?;
        }
        let text = params
            .one("message")
            .and_then(Value::as_str)
            .unwrap_or("Le dossier a été mis à jour.")
            .to_owned();
        let mut out = Vec::new();
        for t in self.dossier_tasks(fhir, tx, id).await? {
            if business_status(&t.body)
                .and_then(|c| self.rules.status(c))
                .is_some_and(|s| s.open)
            {
                out.push(
                    self.communication(
                        fhir,
                        tx,
                        &req.caller,
                        &t.body,
                        "update-notice",
                        &text,
                        Recipient::Owner,
                    )
                    .await?,
                );
            }
        }
        let target = format!("ServiceRequest/{id}/_history/{}", sr.stored.version);
        self.provenance(fhir, tx, &req.caller, &target, "update", None)
            .await?;
        Ok(bundle_of(fhir, &out))
    }
}

#[derive(Clone, Copy)]
enum Recipient {
    Owner,
    Sender,
}

/// An operation's input parameters, by name (their `value[x]`).
/// The author agent of a Provenance: the caller, on behalf of `on_behalf_of` or, for a
/// delegate, of the habilitation it was delegated from.
fn author(caller: &Caller, on_behalf_of: Option<String>) -> Value {
    let who = match caller {
        Caller::Person(h) => json!({"reference": h.role}),
        Caller::System(s) => json!({"display": format!("Passerelle ({s})")}),
        Caller::Client(c) => json!({"display": format!("Passerelle ({})", c.client_id)}),
        Caller::Anonymous => json!({"display": "anonymous"}),
    };
    let on_behalf_of =
        on_behalf_of.or_else(|| caller.habilitation().and_then(|h| h.delegated_by.clone()));
    agent(who, on_behalf_of)
}

/// A Provenance author agent: `who`, on behalf of another (a `Type/id` reference).
fn agent(who: Value, on_behalf_of: Option<String>) -> Value {
    let mut agent = json!({
        "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "code": "author"
        }]},
        "who": who,
    });
    if let Some(b) = on_behalf_of {
        agent["onBehalfOf"] = json!({"reference": b});
    }
    agent
}

struct Params(BTreeMap<String, Vec<Value>>);

impl Params {
    fn one(&self, name: &str) -> Option<&Value> {
        self.0.get(name).and_then(|v| v.first())
    }
    fn all(&self, name: &str) -> &[Value] {
        self.0.get(name).map_or(&[], Vec::as_slice)
    }
}

/// Reads a `Parameters` body against the operation's definition: unknown names are 400,
/// missing required ones and wrong types 422.
fn parameters(name: &str, op: &rules::Operation, body: Option<&Value>) -> Result<Params> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    if let Some(b) = body {
        if b["resourceType"] != "Parameters" {
            return Err(Error::invalid_at(
                "invalid",
                format!("${name} takes a Parameters resource"),
                "resourceType",
            ));
        }
        for (i, p) in b["parameter"].as_array().into_iter().flatten().enumerate() {
            let at = format!("Parameters.parameter[{i}]");
            let pname = p["name"].as_str().unwrap_or_default();
            let def = op.params.get(pname).ok_or_else(|| {
                Error::invalid_at(
                    "not-supported",
                    format!(
                        "${name} has no parameter `{pname}`; it takes {}",
                        op.params.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    at.clone(),
                )
            })?;
            let key = format!(
                "value{}{}",
                def.ptype[..1].to_ascii_uppercase(),
                &def.ptype[1..]
            );
            let v = p.get(&key).ok_or_else(|| {
                Error::Unprocessable(vec![
                    Issue::error(
                        "value",
                        format!("${name}: `{pname}` is a {} ({key})", def.ptype),
                    )
                    .at(format!("{at}.{key}")),
                ])
            })?;
            out.entry(pname.to_owned()).or_default().push(v.clone());
        }
    }
    for (pname, def) in &op.params {
        let n = out.get(pname).map_or(0, Vec::len) as u32;
        if n < def.min {
            return Err(Error::Unprocessable(vec![
                Issue::error("required", format!("${name} needs the parameter `{pname}`"))
                    .at(format!("Parameters.parameter[{pname}]")),
            ]));
        }
        if def.max.is_some_and(|m| n > m) {
            return Err(Error::Unprocessable(vec![
                Issue::error("structure", format!("${name}: `{pname}` given {n} times"))
                    .at(format!("Parameters.parameter[{pname}]")),
            ]));
        }
    }
    Ok(Params(out))
}

/// A `collection` Bundle of stored resources (what `$send` and the dossier-wide `$cancel`
/// return).
fn bundle_of(fhir: &Fhir, stored: &[Stored]) -> Resp {
    let entries: Vec<Value> = stored
        .iter()
        .filter_map(|s| {
            let r: Value = serde_json::from_str(s.body.as_deref()?).ok()?;
            Some(json!({"fullUrl": format!("{}/{}/{}", fhir.base, s.rtype, s.id), "resource": r}))
        })
        .collect();
    Resp::json(
        StatusCode::OK,
        json!({"resourceType": "Bundle", "type": "collection", "entry": entries}),
    )
}
