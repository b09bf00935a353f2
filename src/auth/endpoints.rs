//! The HTTP endpoints of `psc` mode: `POST /auth/token` (token exchange, client
//! credentials), `GET /auth/jwks` (the public key of gateway tokens), the browser sign-in
//! (`/auth/login`, `/auth/callback`, `/auth/session`, `/auth/logout`), the terms of use
//! (`/auth/terms`) and the SMART configuration (`/.well-known/smart-configuration`, also under
//! `/fhir`). Sign-ins, their failures, logouts and token issues or refusals are audited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::browser::{SESSION_COOKIE, Session, SignInError};
use super::events::{self, Flow, Who};
use super::gateway::{Gateway, Issued, TOKEN_EXCHANGE, TokenError};
use super::terms;
use crate::audit::Auditor;
use crate::fhir::interaction::Fhir;

#[derive(Clone)]
struct Endpoints {
    gateway: Arc<Gateway>,
    fhir: Arc<Fhir>,
    audit: Auditor,
    /// The gateway's public origin (`scheme://host[:port]`): same-origin check of the forms.
    origin: String,
}

/// The routes, to merge into the application's router.
/// The token endpoint and its discovery (both modes), and with PSC (`psc` mode) the browser
/// sign-in and the terms of use.
pub fn router(gateway: Arc<Gateway>, fhir: Arc<Fhir>, audit: Auditor) -> Router {
    let origin = reqwest::Url::parse(&gateway.base)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| gateway.base.clone());
    let mut router = Router::new()
        .route("/auth/token", post(token))
        .route("/auth/jwks", get(jwks))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        );
    if gateway.psc.is_some() {
        router = router
            .route("/auth/login", get(login))
            .route("/auth/callback", get(callback))
            .route("/auth/session", get(session))
            .route("/auth/logout", get(logout).post(logout))
            .route("/auth/logged-out", get(|| async { "signed out" }))
            .route("/auth/terms", get(terms_page).post(accept_terms));
    }
    router.with_state(Endpoints {
        gateway,
        fhir,
        audit,
        origin,
    })
}

impl Endpoints {
    async fn audit(
        &self,
        flow: Flow,
        who: &Who,
        ext: &Extensions,
        status: u16,
        reason: Option<&str>,
    ) {
        let now = self.fhir.store.clock().now();
        let address = ext
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        let event = events::authentication(flow, who, address.as_deref(), status, reason, now);
        self.audit.record(event).await;
    }
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn refusal(e: &TokenError) -> Response {
    tracing::info!(error = e.error, status = e.status, "token request refused");
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (
        status,
        axum::Json(json!({"error": e.error, "error_description": e.description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"passerelle\""),
        );
    }
    no_store(r)
}

/// The form parameters; a repeated parameter is an error (RFC 6749 §3.2).
fn form(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, TokenError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(TokenError::new(
            400,
            "invalid_request",
            "the request must be application/x-www-form-urlencoded",
        ));
    }
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(TokenError::new(
                400,
                "invalid_request",
                format!("parameter `{k}` is repeated"),
            ));
        }
    }
    Ok(out)
}

async fn token(
    State(s): State<Endpoints>,
    ext: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut who = Who::default();
    let mut flow = None;
    let result: Result<Issued, TokenError> = async {
        let form = form(&headers, &body)?;
        match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {
                flow = Some(Flow::ClientCredentials);
                let store = &s.fhir.store;
                s.gateway.client_credentials(&form, store, &mut who).await
            }
            Some(TOKEN_EXCHANGE) => {
                flow = Some(Flow::TokenExchange);
                s.gateway.exchange(&form, &s.fhir, &mut who).await
            }
            Some(other) => Err(TokenError::new(
                400,
                "unsupported_grant_type",
                format!(
                    "grant_type `{other}` is not supported (client_credentials, {TOKEN_EXCHANGE})"
                ),
            )),
            None => Err(TokenError::new(
                400,
                "invalid_request",
                "grant_type is missing",
            )),
        }
    }
    .await;
    if let Some(flow) = flow {
        let (status, reason) = match &result {
            Ok(_) => (200, None),
            Err(e) => (e.status, Some(format!("{}: {}", e.error, e.description))),
        };
        s.audit(flow, &who, &ext, status, reason.as_deref()).await;
    }
    match result {
        Ok(issued) => no_store(axum::Json(issued).into_response()),
        Err(e) => refusal(&e),
    }
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    no_store(r)
}

fn page(status: StatusCode, text: String) -> Response {
    no_store((status, text).into_response())
}

fn sign_in_status(e: &SignInError) -> StatusCode {
    match e {
        SignInError::BadRequest(_) => StatusCode::BAD_REQUEST,
        SignInError::Refused(_) => StatusCode::UNAUTHORIZED,
        SignInError::Unavailable(_) => StatusCode::BAD_GATEWAY,
        SignInError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn sign_in_error(e: &SignInError) -> Response {
    let status = sign_in_status(e);
    tracing::info!(status = status.as_u16(), reason = %e, "sign-in refused");
    page(status, format!("sign-in failed: {e}"))
}

/// The session id of the request's cookie.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The live session of the request, if any.
async fn current_session(
    s: &Endpoints,
    headers: &HeaderMap,
) -> Result<Option<Session>, SignInError> {
    match session_cookie(headers) {
        Some(id) => s.gateway.browser.session(&s.fhir.store, &id).await,
        None => Ok(None),
    }
}

/// PSC, which the sign-in routes (mounted in `psc` mode only) need.
fn psc(s: &Endpoints) -> Result<&super::psc::Psc, SignInError> {
    s.gateway
        .psc
        .as_ref()
        .ok_or_else(|| SignInError::BadRequest("no Pro Santé Connect in dev mode".into()))
}

async fn login(State(s): State<Endpoints>) -> Response {
    let started = match psc(&s) {
        Ok(psc) => s.gateway.browser.start(psc, &s.fhir.store).await,
        Err(e) => Err(e),
    };
    match started {
        Ok(url) => redirect(&url),
        Err(e) => sign_in_error(&e),
    }
}

async fn callback(
    State(s): State<Endpoints>,
    ext: Extensions,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let outcome = async {
        if let Some(error) = q.get("error") {
            // PSC's own refusal (the user cancelled, a level not reached…)
            let state_known = match q.get("state") {
                Some(st) => s.gateway.browser.forget(&s.fhir.store, st).await?,
                None => false,
            };
            let message = format!("Pro Santé Connect answered `{error}`");
            return Err(if state_known {
                SignInError::Refused(message)
            } else {
                SignInError::BadRequest(message)
            });
        }
        let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
            return Err(SignInError::BadRequest(
                "state and code are required".into(),
            ));
        };
        s.gateway
            .browser
            .finish(psc(&s)?, &s.fhir, state, code)
            .await
    }
    .await;
    match outcome {
        Ok(opened) => {
            tracing::info!(created = opened.account.created, "browser sign-in");
            let who = Who {
                subject_name_id: Some(opened.identity.subject_name_id.clone()),
                practitioner: Some(opened.account.reference()),
                ..Who::default()
            };
            s.audit(Flow::BrowserSignIn, &who, &ext, 303, None).await;
            let mut r = redirect("/auth/session");
            if let Ok(v) =
                HeaderValue::from_str(&s.gateway.browser.cookie(Some(&opened.session_id)))
            {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            let status = sign_in_status(&e).as_u16();
            let reason = e.to_string();
            s.audit(
                Flow::BrowserSignIn,
                &Who::default(),
                &ext,
                status,
                Some(&reason),
            )
            .await;
            sign_in_error(&e)
        }
    }
}

/// Whether `practitioner` accepted the current terms, and when.
async fn terms_status(s: &Endpoints, practitioner: &str) -> Value {
    let id = practitioner.trim_start_matches("Practitioner/");
    let body = s
        .fhir
        .store
        .current("Practitioner", id)
        .await
        .ok()
        .flatten()
        .and_then(|st| st.body)
        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .unwrap_or(Value::Null);
    let terms = &s.gateway.terms;
    let last = terms::acceptance(&body);
    let accepted = terms.accepted_by(&body);
    json!({
        "version": terms.version,
        "accepted": accepted,
        "status": if accepted { "accepted" } else { "pending" },
        "acceptedVersion": last.as_ref().map(|a| a.version.clone()),
        "acceptedAt": last.map(|a| a.date),
    })
}

/// Who is signed in, and whether they still have to accept the terms of use (the gateway's
/// own pages read this; the FHIR API never does).
async fn session(State(s): State<Endpoints>, headers: HeaderMap) -> Response {
    match current_session(&s, &headers).await {
        Ok(Some(session)) => {
            let terms = terms_status(&s, &session.practitioner).await;
            no_store(
                axum::Json(json!({
                    "SubjectNameID": session.subject_name_id,
                    "practitioner": session.practitioner,
                    "given_name": session.given_name,
                    "family_name": session.family_name,
                    "acr": session.acr,
                    "terms": terms,
                }))
                .into_response(),
            )
        }
        Ok(None) => page(
            StatusCode::UNAUTHORIZED,
            "not signed in: /auth/login".into(),
        ),
        Err(e) => sign_in_error(&e),
    }
}

/// Ends the session (for every instance) and sends the browser to PSC's logout.
async fn logout(State(s): State<Endpoints>, ext: Extensions, headers: HeaderMap) -> Response {
    let browser = &s.gateway.browser;
    let ended = match session_cookie(&headers) {
        Some(id) => match browser.end(&s.fhir.store, &id).await {
            Ok(ended) => ended,
            Err(e) => return sign_in_error(&e),
        },
        None => None,
    };
    let mut location = browser.logged_out_url.clone();
    if let Some(session) = &ended {
        let who = Who {
            subject_name_id: Some(session.subject_name_id.clone()),
            practitioner: Some(session.practitioner.clone()),
            ..Who::default()
        };
        s.audit(Flow::Logout, &who, &ext, 303, None).await;
        if let Some(p) = &s.gateway.psc
            && let Some(url) = p
                .logout_url(&session.id_token, &browser.logged_out_url)
                .await
        {
            location = url;
        }
    }
    let mut r = redirect(&location);
    if let Ok(v) = HeaderValue::from_str(&browser.cookie(None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The terms of use, and whether the signed-in user (if any) accepted them.
async fn terms_page(State(s): State<Endpoints>, headers: HeaderMap) -> Response {
    let terms = &s.gateway.terms;
    let mut out = json!({"version": terms.version, "text": terms.text, "signedIn": false});
    match current_session(&s, &headers).await {
        Ok(Some(session)) => {
            out["signedIn"] = json!(true);
            let status = terms_status(&s, &session.practitioner).await;
            for k in ["accepted", "status", "acceptedVersion", "acceptedAt"] {
                out[k] = status[k].clone();
            }
        }
        Ok(None) => {}
        Err(e) => return sign_in_error(&e),
    }
    no_store(axum::Json(out).into_response())
}

/// Whether a state-changing browser request comes from the gateway's own pages: its
/// `Origin` is the gateway's (or, without one, `Sec-Fetch-Site: same-origin`).
pub fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let header = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok());
    match header(header::ORIGIN) {
        Some(o) => o.trim_end_matches('/') == origin,
        None => header(header::HeaderName::from_static("sec-fetch-site")) == Some("same-origin"),
    }
}

/// Records the signed-in user's acceptance of the current terms (`version=<current>`).
async fn accept_terms(State(s): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers, &s.origin) {
        return page(
            StatusCode::FORBIDDEN,
            "the terms are accepted from the gateway's own page (Origin must be the gateway's)"
                .into(),
        );
    }
    let session = match current_session(&s, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return page(
                StatusCode::UNAUTHORIZED,
                "not signed in: /auth/login".into(),
            );
        }
        Err(e) => return sign_in_error(&e),
    };
    let version = match form(&headers, &body) {
        Ok(f) => f.get("version").cloned(),
        Err(e) => return page(StatusCode::BAD_REQUEST, e.description),
    };
    let current = &s.gateway.terms.version;
    if version.as_deref() != Some(current.as_str()) {
        return page(
            StatusCode::CONFLICT,
            format!(
                "the terms of use in force are version {current}: read them again (GET /auth/terms) and accept that version"
            ),
        );
    }
    match terms::accept(&s.fhir, &session.subject_name_id, current).await {
        Ok(a) => no_store(
            axum::Json(json!({"accepted": true, "version": a.version, "acceptedAt": a.date}))
                .into_response(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "terms of use: the acceptance could not be recorded");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the acceptance could not be recorded".into(),
            )
        }
    }
}

async fn jwks(State(s): State<Endpoints>) -> Response {
    axum::Json(s.gateway.key.jwks()).into_response()
}

async fn smart_configuration(State(s): State<Endpoints>) -> Response {
    let g = &s.gateway;
    axum::Json(json!({
        "issuer": g.base,
        "jwks_uri": format!("{}/auth/jwks", g.base),
        "token_endpoint": g.token_endpoint(),
        "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported":
            ["RS256", "RS384", "PS256", "PS384", "ES256", "ES384", "EdDSA"],
        "scopes_supported": ["system/*.cruds", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
        "code_challenge_methods_supported": ["S256"]
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_come_from_the_gateways_own_origin() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let o = "https://gw.example.fr";
        assert!(same_origin(&h(&[("origin", "https://gw.example.fr")]), o));
        assert!(!same_origin(&h(&[("origin", "https://evil.example")]), o));
        assert!(!same_origin(&h(&[("origin", "null")]), o));
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")]), o));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")]), o));
        assert!(!same_origin(&h(&[]), o), "neither header: refused");
        // Origin wins over a same-origin claim
        assert!(!same_origin(
            &h(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin")
            ]),
            o
        ));
    }
}
