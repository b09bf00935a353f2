//! Who is calling: the seam between sign-in and the rules.
//!
//! Every request carries a [`Caller`]. The rules (`workflow`, and the read filters to come)
//! only look at the caller's habilitation: its profile code and its place (a structure or
//! units). How the caller was established is this module's business alone: the `dev` mode
//! reads the `X-Passerelle-Role: PractitionerRole/<id>` header (contract §4); in `psc` mode
//! (a Pro Santé Connect issuer is configured) the caller comes from a gateway access token
//! only (`gateway`, issued at `/auth/token` by `endpoints`). [`Authenticator::caller`] is the
//! one call the HTTP edge makes.

pub mod accounts;
pub mod browser;
pub mod endpoints;
pub mod events;
pub mod gateway;
pub mod keys;
pub mod psc;
pub mod scope;
pub mod secret;
pub mod terms;

use std::sync::Arc;

use axum::http::{HeaderMap, Method};
use serde_json::Value;

use crate::config::Config;
use crate::fhir::interaction::Route;
use gateway::{Gateway, Need};
use scope::Perm;

use crate::fhir::error::{Error, Result};
use crate::fhir::reference;
use crate::store::Store;
use crate::time::fhir_date_range;

/// The code system of habilitation profiles (`PractitionerRole.code`).
pub const PROFILE_SYSTEM: &str = "https://passerelle.dev/fhir/CodeSystem/habilitation-profile";

/// The header the `dev` mode takes the caller from.
pub const DEV_ROLE_HEADER: &str = "x-passerelle-role";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody in particular: may set up the directory and accounts in `dev` mode, never
    /// touches patient data.
    Anonymous,
    /// A person acting through one valid habilitation.
    Person(Habilitation),
    /// The gateway itself (timers, the ROR sync) or a registered system client with no
    /// structure (a platform-wide feed): sees and may do what its scopes allow everywhere.
    System(String),
    /// A registered system client acting for one structure (`[[auth.clients]]
    /// organization`, e.g. an establishment's information system): within its scopes, it sees
    /// and acts on that structure's data only, as a habilitation on that structure would.
    Client(Client),
}

/// A system client bound to a structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    /// `Organization/<id>`.
    pub organization: String,
}

/// One valid habilitation: a profile at a place (contract §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Habilitation {
    /// `PractitionerRole/<id>`.
    pub role: String,
    /// `Practitioner/<id>`, when the role names one.
    pub practitioner: Option<String>,
    /// A code of the habilitation-profile code system.
    pub profile: String,
    /// `Organization/<id>`: the structure, when the habilitation sits there.
    pub organization: Option<String>,
    /// `HealthcareService/<id>`: the units, when the habilitation sits on units.
    pub services: Vec<String>,
    /// `PractitionerRole/<id>`: the habilitation this one was delegated from (`$delegate`),
    /// on whose behalf its holder acts.
    pub delegated_by: Option<String>,
}

/// The extension of a delegated habilitation naming the one it was delegated from.
pub const DELEGATED_BY: &str = "https://passerelle.dev/fhir/StructureDefinition/delegated-by";

impl Caller {
    pub fn habilitation(&self) -> Option<&Habilitation> {
        match self {
            Caller::Person(h) => Some(h),
            _ => None,
        }
    }

    /// The structure a caller acts for, when it is bound to one: a client's, or a
    /// habilitation's.
    pub fn organization(&self) -> Option<&str> {
        match self {
            Caller::Person(h) => h.organization.as_deref(),
            Caller::Client(c) => Some(&c.organization),
            _ => None,
        }
    }

    /// How the caller is named where no reference fits (audit, Provenance): the system or
    /// client id.
    pub fn display(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".to_owned(),
            Caller::Person(h) => h.role.clone(),
            Caller::System(s) => format!("system: {s}"),
            Caller::Client(c) => format!("system: {} ({})", c.client_id, c.organization),
        }
    }

    /// The reference that stands for the caller in Provenance and Communication.
    pub fn reference(&self) -> Option<String> {
        match self {
            Caller::Person(h) => Some(h.role.clone()),
            _ => None,
        }
    }
}

/// Reads a habilitation out of a stored PractitionerRole; `None` when it is not valid at
/// `now` (inactive, outside its period, or without a profile code).
pub fn habilitation(role_id: &str, role: &Value, now: i64) -> Option<Habilitation> {
    if role["active"] == Value::Bool(false) {
        return None;
    }
    let period = &role["period"];
    if let Some(start) = period["start"].as_str()
        && fhir_date_range(start).is_none_or(|(lo, _)| lo > now)
    {
        return None;
    }
    if let Some(end) = period["end"].as_str()
        && fhir_date_range(end).is_none_or(|(_, hi)| hi < now)
    {
        return None;
    }
    let profile = role["code"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .find(|c| c["system"] == PROFILE_SYSTEM)
        .and_then(|c| c["code"].as_str())?
        .to_owned();
    let local = |v: &Value, rtype: &str| {
        v["reference"]
            .as_str()
            .and_then(reference::parse)
            .filter(|r| r.rtype == rtype)
            .map(|r| format!("{}/{}", r.rtype, r.id))
    };
    Some(Habilitation {
        role: format!("PractitionerRole/{role_id}"),
        practitioner: local(&role["practitioner"], "Practitioner"),
        profile,
        organization: local(&role["organization"], "Organization"),
        services: role["healthcareService"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| local(s, "HealthcareService"))
            .collect(),
        delegated_by: role["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == DELEGATED_BY)
            .and_then(|e| local(&e["valueReference"], "PractitionerRole")),
    })
}

/// How callers are established, chosen once from the configuration: `psc` mode when
/// `[psc] issuer` is set, `dev` mode otherwise. Both take gateway tokens (in `dev` mode, those
/// of the registered system clients: an integration is tried as it will run).
#[derive(Debug, Clone)]
pub struct Authenticator {
    dev: bool,
    /// The gateway's tokens, its system clients, and PSC in `psc` mode.
    pub gateway: Arc<Gateway>,
}

impl Authenticator {
    /// `base` is the gateway's public base URL (without `/fhir`).
    pub fn from_config(config: &Config, base: &str) -> std::result::Result<Authenticator, String> {
        let gateway = Arc::new(Gateway::new(config, base)?);
        Ok(Authenticator {
            dev: gateway.psc.is_none(),
            gateway,
        })
    }

    pub fn is_dev(&self) -> bool {
        self.dev
    }

    /// The caller of one FHIR request (`route` under `/fhir`, already parsed): from its
    /// `Authorization: Bearer` gateway token (401 when invalid; 403 when a system client's
    /// scopes do not cover the request). Without one: in `psc` mode 401 (except `GET
    /// /metadata`), the `X-Passerelle-Role` header being ignored; in `dev` mode that header's
    /// habilitation, or the anonymous caller. Both at once are refused in `dev` mode.
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        store: &Store,
        method: &Method,
        route: &Route,
    ) -> Result<Caller> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let (token, role) = (header("authorization"), header(DEV_ROLE_HEADER));
        if self.dev && token.is_none() {
            return dev_caller(store, role).await;
        }
        if self.dev && role.is_some() {
            return Err(Error::invalid(
                "invalid",
                "send a gateway token or X-Passerelle-Role, not both",
            ));
        }
        self.gateway
            .caller(token, store, &need(method, route))
            .await
    }
}

/// What a request needs from a system client's scopes.
fn need(method: &Method, route: &Route) -> Need {
    let read_or = |write: Perm| {
        if method == Method::GET || method == Method::HEAD {
            Perm::Read
        } else {
            write
        }
    };
    let (public, rtype, perms) = match route {
        Route::Metadata => (
            method == Method::GET || method == Method::HEAD,
            None,
            vec![Perm::Read],
        ),
        // a batch or transaction may do anything: it needs everything on everything
        Route::Root => (
            false,
            None,
            vec![
                Perm::Create,
                Perm::Read,
                Perm::Update,
                Perm::Delete,
                Perm::Search,
            ],
        ),
        Route::SystemHistory => (false, None, vec![Perm::Search]),
        Route::Type(t) => {
            let p = match *method {
                Method::POST => Perm::Create,
                Method::PUT | Method::PATCH => Perm::Update,
                Method::DELETE => Perm::Delete,
                _ => Perm::Search,
            };
            (false, Some(t.clone()), vec![p])
        }
        Route::TypeSearch(t) | Route::TypeHistory(t) => {
            (false, Some(t.clone()), vec![Perm::Search])
        }
        Route::Instance(t, _) => {
            let p = match *method {
                Method::PUT | Method::PATCH => Perm::Update,
                Method::DELETE => Perm::Delete,
                _ => Perm::Read,
            };
            (false, Some(t.clone()), vec![p])
        }
        Route::InstanceHistory(t, _) | Route::Version(t, _, _) => {
            (false, Some(t.clone()), vec![Perm::Read])
        }
        Route::Operation { rtype, .. } => (false, rtype.clone(), vec![read_or(Perm::Update)]),
    };
    Need {
        public,
        rtype,
        perms,
    }
}

/// The caller of a request in `dev` mode, from the `X-Passerelle-Role` header's value.
pub async fn dev_caller(store: &Store, header: Option<&str>) -> Result<Caller> {
    let Some(value) = header else {
        return Ok(Caller::Anonymous);
    };
    let id = value
        .trim()
        .strip_prefix("PractitionerRole/")
        .filter(|id| reference::is_id(id))
        .ok_or_else(|| {
            Error::Unauthorized(format!(
                "X-Passerelle-Role must be `PractitionerRole/<id>`, not `{value}`"
            ))
        })?;
    let now = store.clock().now();
    let hab = valid_habilitation(store, id, now).await?.ok_or_else(|| {
        Error::Unauthorized(format!(
            "PractitionerRole/{id} is not a valid habilitation now (missing, inactive, out of its period, without a {PROFILE_SYSTEM} code, or delegated from one that is not)"
        ))
    })?;
    Ok(Caller::Person(hab))
}

/// The stored habilitation `PractitionerRole/<id>` if it is valid at `now`; a delegated one
/// only while the habilitation it was delegated from is valid too.
pub async fn valid_habilitation(store: &Store, id: &str, now: i64) -> Result<Option<Habilitation>> {
    let load = |id: String| async move {
        Ok::<_, Error>(
            store
                .current("PractitionerRole", &id)
                .await?
                .filter(|s| !s.deleted)
                .and_then(|s| s.body)
                .and_then(|b| serde_json::from_str::<Value>(&b).ok()),
        )
    };
    let Some(hab) = load(id.to_owned())
        .await?
        .and_then(|body| habilitation(id, &body, now))
    else {
        return Ok(None);
    };
    if let Some(from) = &hab.delegated_by {
        let from_id = from.trim_start_matches("PractitionerRole/").to_owned();
        let delegator = load(from_id.clone()).await?;
        // a delegation lasts as long as what it was delegated from (one level: never a chain)
        if delegator
            .and_then(|b| habilitation(&from_id, &b, now))
            .is_none_or(|d| d.delegated_by.is_some())
        {
            return Ok(None);
        }
    }
    Ok(Some(hab))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(extra: Value) -> Value {
        let mut r = json!({
            "resourceType": "PractitionerRole",
            "practitioner": {"reference": "Practitioner/p1"},
            "organization": {"reference": "Organization/o1"},
            "healthcareService": [{"reference": "HealthcareService/u1"}],
            "code": [{"coding": [{"system": PROFILE_SYSTEM, "code": "responsable-admission"}]}]
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            r[k] = v.clone();
        }
        r
    }

    #[test]
    fn a_valid_role_is_a_habilitation() {
        let h = habilitation("r1", &role(json!({})), 0).unwrap();
        assert_eq!(h.role, "PractitionerRole/r1");
        assert_eq!(h.profile, "responsable-admission");
        assert_eq!(h.organization.as_deref(), Some("Organization/o1"));
        assert_eq!(h.services, vec!["HealthcareService/u1".to_owned()]);
        assert_eq!(h.practitioner.as_deref(), Some("Practitioner/p1"));
    }

    #[test]
    fn inactive_expired_or_codeless_roles_are_not() {
        let now = fhir_date_range("2026-06-01").unwrap().0;
        assert!(habilitation("r", &role(json!({"active": false})), now).is_none());
        let p = json!({"period": {"start": "2025-01-01", "end": "2026-05-31"}});
        assert!(habilitation("r", &role(p), now).is_none());
        let p = json!({"period": {"start": "2026-06-02"}});
        assert!(habilitation("r", &role(p), now).is_none());
        let p = json!({"period": {"start": "2026-01-01", "end": "2026-06-01"}});
        assert!(habilitation("r", &role(p), now).is_some());
        let c = json!({"code": [{"coding": [{"system": "x", "code": "referent"}]}]});
        assert!(habilitation("r", &role(c), now).is_none());
    }
}
