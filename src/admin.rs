//! `passerelle admin`: what the operator does from the command line (contract §4).
//!
//! - `token`: a gateway access token for a registered system client, signed with the key
//!   the gateway signs with (`[auth] signing_key_file`, shared with the running gateway), as
//!   `client_credentials` would issue it. For operators' scripts, load tests and the test
//!   suite's process tests; the client and its scopes must be registered (`[[auth.clients]]`).
//! - `grant`: the first habilitation of a structure (its first référent) in `psc` mode, where
//!   no anonymous caller exists to set up accounts: written by the system through the same
//!   rules and Provenance as any habilitation.

use std::sync::Arc;

use serde_json::json;

use crate::auth::{Caller, PROFILE_SYSTEM, gateway::Gateway};
use crate::config::Config;
use crate::fhir::interaction::{self, Body, Req, Route};
use crate::server::App;
use crate::time::SystemClock;

fn base(config: &Config) -> String {
    config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen))
}

/// A token for `client` with the scopes asked (those registered for it, by default).
pub fn token(config: &Config, client: &str, scope: Option<&str>) -> Result<String, String> {
    if config.auth.signing_key_file.is_none() {
        return Err(
            "admin token needs [auth] signing_key_file: the key the running gateway signs with"
                .into(),
        );
    }
    let registered = config
        .auth
        .clients
        .iter()
        .find(|c| c.client_id == client)
        .ok_or_else(|| format!("no [[auth.clients]] with client_id `{client}`"))?;
    let scope = scope.map_or_else(|| registered.scopes.join(" "), str::to_owned);
    let gateway = Gateway::new(config, &base(config))?;
    gateway
        .issue_for_client(client, &scope)
        .map(|issued| issued.access_token)
        .map_err(|e| format!("{}: {}", e.error, e.description))
}

/// What `admin grant` writes.
#[derive(Debug, Clone)]
pub struct Grant {
    /// `Practitioner/<id>` (the account exists: made at first sign-in, or written before).
    pub practitioner: String,
    /// `Organization/<id>`: the structure.
    pub organization: String,
    /// A habilitation-profile code (`referent`…).
    pub profile: String,
    /// Last day of validity (`YYYY-MM-DD`), if any.
    pub end: Option<String>,
}

/// Writes the habilitation; returns its reference.
pub async fn grant(config: &Config, g: &Grant) -> Result<String, String> {
    let app = App::open(config, base(config), Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let fhir = &app.fhir;
    for (what, rtype) in [
        (&g.practitioner, "Practitioner"),
        (&g.organization, "Organization"),
    ] {
        let id = what
            .strip_prefix(&format!("{rtype}/"))
            .ok_or_else(|| format!("`{what}` is not {rtype}/<id>"))?;
        let found = fhir
            .store
            .current(rtype, id)
            .await
            .map_err(|e| e.to_string())?;
        if found.is_none_or(|s| s.deleted) {
            return Err(format!("{what} does not exist"));
        }
    }
    if !fhir.workflow.rules.profiles.contains_key(&g.profile) {
        return Err(format!(
            "`{}` is not a habilitation profile ({PROFILE_SYSTEM})",
            g.profile
        ));
    }
    let now = crate::time::format_instant(fhir.store.clock().now());
    let mut period = json!({"start": &now[..10]});
    if let Some(end) = &g.end {
        period["end"] = json!(end);
    }
    let mut req = Req::new(
        axum::http::Method::POST,
        Route::Type("PractitionerRole".into()),
    );
    req.caller = Caller::System("admin".into());
    req.body = Some(json!({
        "resourceType": "PractitionerRole",
        "active": true,
        "period": period,
        "practitioner": {"reference": g.practitioner},
        "organization": {"reference": g.organization},
        "code": [{"coding": [{"system": PROFILE_SYSTEM, "code": g.profile}]}]
    }));
    let resp = interaction::run(fhir, req)
        .await
        .map_err(|e| e.to_string())?;
    app.audit.flush().await;
    let id = match &resp.body {
        Body::Raw(t) => serde_json::from_str::<serde_json::Value>(t)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned)),
        Body::Json(v) => v["id"].as_str().map(str::to_owned),
        _ => None,
    }
    .ok_or("the habilitation was written but its id was not returned")?;
    Ok(format!("PractitionerRole/{id}"))
}
