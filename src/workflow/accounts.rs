//! Accounts and habilitations (contract §4, domain.md "Accounts, profiles and rights").
//!
//! - The account's history is its Provenance trail: every habilitation granted, changed or
//!   ended, every delegation, and what the gateway forced (codes of the shipped
//!   `account-event` code system), targeting the PractitionerRole and its Practitioner.
//! - An account (Practitioner) left without a valid habilitation is deactivated by the
//!   gateway (`active` false, tagged `account-event#deactivated`), and reactivated when it
//!   holds one again ("réactivé par ajout d'une habilitation"). An account a référent blocked
//!   (inactive without that tag) stays as it is. Triggers: every habilitation write and
//!   deletion, and the timer pass for habilitations whose period ended ([`Workflow::sweep_accounts`]).
//! - `$delegate`: a user lends their own habilitation to another for a while; the delegate
//!   then acts on the delegator's behalf (Provenance `onBehalfOf`).

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::rules::code_system;
use super::{Params, Workflow, live, reference_id};
use crate::auth::{Caller, DELEGATED_BY, habilitation};
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{Fhir, Req, Resp, put_resource};
use crate::store::{Check, Cmp, Filter, Query, Table, Tx};
use crate::time::{Micros, fhir_date_range, format_instant};

/// The tag of an account the gateway deactivated.
const DEACTIVATED: &str = "deactivated";

/// The name of the timer's high-water mark (`sync_state`): habilitations that ended after it
/// are still to be looked at.
const SWEEP: &str = "accounts";

fn tagged_deactivated(practitioner: &Value) -> bool {
    let system = code_system("account-event");
    practitioner["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["system"] == system.as_str() && t["code"] == DEACTIVATED)
}

/// The resource without what the server stamps, to tell a real change from a no-op.
fn content(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("meta");
        o.remove("id");
    }
    v
}

impl Workflow {
    /// After the rules allowed a write of `PractitionerRole/<id>` (`new` `None`: its
    /// deletion): the account history's Provenance, and the accounts it touches settled.
    pub(super) async fn habilitation_written(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        id: &str,
        old: Option<&Value>,
        new: Option<&Value>,
    ) -> Result<()> {
        if let (Some(o), Some(n)) = (old, new)
            && content(o) == content(n)
        {
            return Ok(());
        }
        let now = tx.now();
        let valid = |v: Option<&Value>| v.and_then(|b| habilitation(id, b, now)).is_some();
        let code = match (old, new) {
            (None, _) => "habilitation-granted",
            (Some(_), None) => "habilitation-ended",
            _ if valid(old) && !valid(new) => "habilitation-ended",
            _ => "habilitation-changed",
        };
        let people: BTreeSet<String> = [old, new]
            .into_iter()
            .flatten()
            .filter_map(|r| reference_id(&r["practitioner"], "Practitioner"))
            .collect();
        let mut targets = vec![format!("PractitionerRole/{id}")];
        targets.extend(people.iter().map(|p| format!("Practitioner/{p}")));
        self.account_provenance(fhir, tx, caller, &targets, code, None)
            .await?;
        for p in &people {
            self.settle_account(fhir, tx, p, Some((id, new))).await?;
        }
        Ok(())
    }

    /// A Provenance of the account history: what happened (`code` of the account-event
    /// code system, with an optional reason), to what, by `who` (a reference or a display).
    pub fn history_entry(
        &self,
        targets: &[String],
        code: &str,
        reason: Option<&str>,
        who: Value,
        recorded: Micros,
    ) -> Value {
        let mut coding = json!({"system": code_system("account-event"), "code": code});
        if let Some(d) = self.rules.account_events.get(code) {
            coding["display"] = json!(d);
        }
        let mut p = json!({
            "resourceType": "Provenance",
            "target": targets.iter().map(|t| json!({"reference": t})).collect::<Vec<_>>(),
            "recorded": format_instant(recorded),
            "activity": {"coding": [coding]},
            "agent": [super::agent(who, None)],
        });
        if let Some(r) = reason {
            p["reason"] = json!([{"text": r}]);
        }
        p
    }

    /// A Provenance of the account history, by `caller`.
    async fn account_provenance(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        caller: &Caller,
        targets: &[String],
        code: &str,
        on_behalf_of: Option<String>,
    ) -> Result<()> {
        let mut p = self.history_entry(targets, code, None, Value::Null, tx.now());
        p["agent"] = json!([super::author(caller, on_behalf_of)]);
        put_resource(fhir, tx, "Provenance", None, p, "POST").await?;
        Ok(())
    }

    /// The habilitations of `Practitioner/<pid>` as stored.
    async fn roles_of(&self, tx: &mut Tx<'_>, pid: &str) -> Result<Vec<(String, Value)>> {
        let mut q = Query::new("PractitionerRole");
        q.filters.push(Filter::Has {
            table: Table::Reference,
            param: "PractitionerRole.practitioner".into(),
            checks: vec![
                Check::text("target_type", Cmp::Eq, "Practitioner"),
                Check::text("target_id", Cmp::Eq, pid),
            ],
        });
        let found = tx.conn().search(&q).await?;
        Ok(found
            .into_iter()
            .filter_map(|s| {
                let body = serde_json::from_str(s.body.as_deref()?).ok()?;
                Some((s.id, body))
            })
            .collect())
    }

    /// Deactivates `Practitioner/<pid>` if it holds no valid habilitation, reactivates it if
    /// the gateway had deactivated it and it holds one again. `pending`: a habilitation this
    /// job is writing (its new body, `None` when deleted), counted instead of the stored one.
    pub(super) async fn settle_account(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        pid: &str,
        pending: Option<(&str, Option<&Value>)>,
    ) -> Result<()> {
        let Some(account) = live(tx, "Practitioner", pid, true).await? else {
            return Ok(());
        };
        let now = tx.now();
        let mut roles = self.roles_of(tx, pid).await?;
        if let Some((rid, body)) = pending {
            roles.retain(|(id, _)| id != rid);
            if let Some(b) = body
                && reference_id(&b["practitioner"], "Practitioner").as_deref() == Some(pid)
            {
                roles.push((rid.to_owned(), b.clone()));
            }
        }
        let mut valid = false;
        for (id, body) in &roles {
            let Some(h) = habilitation(id, body, now) else {
                continue;
            };
            // a delegation counts while what it was delegated from is valid
            valid = match &h.delegated_by {
                None => true,
                Some(from) => {
                    let from = from.trim_start_matches("PractitionerRole/");
                    live(tx, "PractitionerRole", from, false)
                        .await?
                        .is_some_and(|d| habilitation(from, &d.body, now).is_some())
                }
            };
            if valid {
                break;
            }
        }
        let active = account.body["active"] != Value::Bool(false);
        let system = Caller::System("accounts".into());
        let mut body = account.body.clone();
        let code = if active && !valid {
            body["active"] = json!(false);
            let mut tags = body["meta"]["tag"].as_array().cloned().unwrap_or_default();
            tags.push(json!({
                "system": code_system("account-event"),
                "code": DEACTIVATED,
                "display": self.rules.account_events.get(DEACTIVATED),
            }));
            body["meta"]["tag"] = json!(tags);
            "deactivated"
        } else if !active && valid && tagged_deactivated(&account.body) {
            body["active"] = json!(true);
            let system_url = code_system("account-event");
            if let Some(tags) = body.pointer_mut("/meta/tag").and_then(Value::as_array_mut) {
                tags.retain(|t| !(t["system"] == system_url.as_str() && t["code"] == DEACTIVATED));
                if tags.is_empty()
                    && let Some(meta) = body["meta"].as_object_mut()
                {
                    meta.remove("tag");
                }
            }
            "reactivated"
        } else {
            return Ok(());
        };
        put_resource(fhir, tx, "Practitioner", Some(pid), body, "PUT").await?;
        let target = vec![format!("Practitioner/{pid}")];
        self.account_provenance(fhir, tx, &system, &target, code, None)
            .await
    }

    /// The timer's part: accounts whose habilitations ended (their period) since the last
    /// pass are settled. Returns how many accounts changed.
    pub async fn sweep_accounts(&self, fhir: &std::sync::Arc<Fhir>) -> Result<usize> {
        let now = fhir.store.clock().now();
        let since = fhir
            .store
            .read(|c| Box::pin(async move { c.sync_state(SWEEP).await }))
            .await?
            .high_water;
        let mut params = vec![
            ("date".to_owned(), format!("eb{}", format_instant(now))),
            ("_count".to_owned(), fhir.paging.max_count.to_string()),
        ];
        if let Some(t) = since {
            params.push(("date".to_owned(), format!("ge{}", format_instant(t))));
        }
        let s = fhir.parse_search("PractitionerRole", &params, true)?;
        let ended = fhir
            .store
            .read(move |c| Box::pin(async move { c.search(&s.query).await }))
            .await?;
        let people: BTreeSet<String> = ended
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(r.body.as_deref()?).ok())
            .filter_map(|b| reference_id(&b["practitioner"], "Practitioner"))
            .collect();
        let mut changed = 0;
        for pid in people {
            let f = fhir.clone();
            let did: bool = fhir
                .store
                .write(move |tx| {
                    Box::pin(async move {
                        let before = live(tx, "Practitioner", &pid, true)
                            .await?
                            .map(|p| p.stored.version);
                        f.workflow.settle_account(&f, tx, &pid, None).await?;
                        let after = live(tx, "Practitioner", &pid, false)
                            .await?
                            .map(|p| p.stored.version);
                        Ok::<_, Error>(before != after)
                    })
                })
                .await?;
            changed += usize::from(did);
        }
        fhir.store
            .write(move |tx| {
                Box::pin(async move { tx.conn().record_sync(SWEEP, now, false).await })
            })
            .await?;
        Ok(changed)
    }

    /// `PractitionerRole/[id]/$delegate`: the holder of a habilitation lends it to another
    /// user until `end`.
    pub(super) async fn delegate(
        &self,
        fhir: &Fhir,
        tx: &mut Tx<'_>,
        req: &Req,
        id: &str,
        params: &Params,
    ) -> Result<Resp> {
        let h = match &req.caller {
            Caller::Person(h) => h,
            Caller::Anonymous => {
                return Err(Error::Unauthorized(
                    "$delegate is made by the user who holds the habilitation".into(),
                ));
            }
            _ => {
                return Err(Error::forbidden(
                    "$delegate is made by the user who holds the habilitation, not by a system",
                ));
            }
        };
        if h.role != format!("PractitionerRole/{id}") {
            return Err(Error::forbidden(format!(
                "only the holder of PractitionerRole/{id} delegates it"
            )));
        }
        let own = live(tx, "PractitionerRole", id, true)
            .await?
            .ok_or_else(|| Error::NotFound(format!("PractitionerRole/{id} not found")))?;
        if h.delegated_by.is_some() {
            return Err(super::rule(
                "delegation-once",
                "a delegated habilitation is not delegated again",
            ));
        }
        if self.rules.has_right(&h.profile, "manage-accounts") {
            return Err(Error::forbidden(
                "a référent habilitation is granted by référents, not delegated",
            ));
        }
        let delegate = params
            .one("practitioner")
            .and_then(|r| reference_id(r, "Practitioner"))
            .ok_or_else(|| {
                super::rule(
                    "delegation-target",
                    "`practitioner` must be a Practitioner/[id]",
                )
            })?;
        if h.practitioner.as_deref() == Some(&format!("Practitioner/{delegate}")) {
            return Err(Error::forbidden("nobody delegates to themselves"));
        }
        if live(tx, "Practitioner", &delegate, false).await?.is_none() {
            return Err(super::rule(
                "delegation-target",
                format!("Practitioner/{delegate} does not exist"),
            ));
        }
        let now = tx.now();
        let when = |name: &str| -> Result<Option<(String, Micros, Micros)>> {
            let Some(v) = params.one(name).and_then(Value::as_str) else {
                return Ok(None);
            };
            let (lo, hi) = fhir_date_range(v).ok_or_else(|| {
                super::rule("delegation-period", format!("`{name}` is not a dateTime"))
            })?;
            Ok(Some((v.to_owned(), lo, hi)))
        };
        let (start_text, start) = match when("start")? {
            Some((t, lo, _)) => (t, lo),
            None => (format_instant(now), now),
        };
        let (end_text, _, end) =
            when("end")?.ok_or_else(|| super::rule("delegation-period", "`end` is required"))?;
        if end <= start || end < now {
            return Err(super::rule(
                "delegation-period",
                "the delegation must end after it starts, and in the future",
            ));
        }
        if let Some(own_end) = own.body["period"]["end"].as_str()
            && fhir_date_range(own_end).is_none_or(|(_, hi)| end > hi)
        {
            return Err(super::rule(
                "delegation-period",
                format!("the delegation must end no later than PractitionerRole/{id} ({own_end})"),
            ));
        }
        let mut role = json!({
            "resourceType": "PractitionerRole",
            "extension": [{"url": DELEGATED_BY, "valueReference": {"reference": format!("PractitionerRole/{id}")}}],
            "active": true,
            "period": {"start": start_text, "end": end_text},
            "practitioner": {"reference": format!("Practitioner/{delegate}")},
        });
        for k in ["organization", "code", "specialty", "healthcareService"] {
            if let Some(v) = own.body.get(k) {
                role[k] = v.clone();
            }
        }
        let stored = put_resource(fhir, tx, "PractitionerRole", None, role, "POST").await?;
        let targets = vec![
            format!("PractitionerRole/{}", stored.id),
            format!("Practitioner/{delegate}"),
        ];
        self.account_provenance(fhir, tx, &req.caller, &targets, "delegated", None)
            .await?;
        self.settle_account(fhir, tx, &delegate, None).await?;
        Ok(Resp::stored(fhir, StatusCode::CREATED, &stored))
    }
}
