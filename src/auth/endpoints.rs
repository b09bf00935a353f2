//! The HTTP endpoints of `psc` mode: `POST /auth/token` (token exchange, client
//! credentials), `GET /auth/jwks` (the public key of gateway tokens) and the SMART
//! configuration (`/.well-known/smart-configuration`, also under `/fhir`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::browser::{SESSION_COOKIE, SignInError};
use super::gateway::{Gateway, Issued, TOKEN_EXCHANGE, TokenError};
use crate::store::Store;

#[derive(Clone)]
struct Endpoints {
    gateway: Arc<Gateway>,
    store: Store,
}

/// The routes, to merge into the application's router.
pub fn router(gateway: Arc<Gateway>, store: Store) -> Router {
    Router::new()
        .route("/auth/token", post(token))
        .route("/auth/jwks", get(jwks))
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/session", get(session))
        .route("/auth/logout", get(logout).post(logout))
        .route("/auth/logged-out", get(|| async { "signed out" }))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .with_state(Endpoints { gateway, store })
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
            "the token request must be application/x-www-form-urlencoded",
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

async fn token(State(s): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    let result: Result<Issued, TokenError> = async {
        let form = form(&headers, &body)?;
        match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => s.gateway.client_credentials(&form).await,
            Some(TOKEN_EXCHANGE) => s.gateway.exchange(&form, &s.store).await,
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

fn sign_in_error(e: &SignInError) -> Response {
    let status = match e {
        SignInError::BadRequest(_) => StatusCode::BAD_REQUEST,
        SignInError::Refused(_) => StatusCode::UNAUTHORIZED,
        SignInError::Unavailable(_) => StatusCode::BAD_GATEWAY,
    };
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

async fn login(State(s): State<Endpoints>) -> Response {
    let now = s.store.clock().now();
    match s.gateway.browser.start(&s.gateway.psc, now).await {
        Ok(url) => redirect(&url),
        Err(e) => sign_in_error(&e),
    }
}

async fn callback(
    State(s): State<Endpoints>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(error) = q.get("error") {
        // PSC's own refusal (the user cancelled, a level not reached…)
        let state_known = q
            .get("state")
            .is_some_and(|st| s.gateway.browser.forget(st));
        let status = if state_known {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        return page(
            status,
            format!("sign-in failed: Pro Santé Connect answered `{error}`"),
        );
    }
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
        return page(
            StatusCode::BAD_REQUEST,
            "sign-in failed: state and code are required".into(),
        );
    };
    let now = s.store.clock().now();
    match s
        .gateway
        .browser
        .finish(&s.gateway.psc, state, code, now)
        .await
    {
        Ok(id) => {
            tracing::info!("browser sign-in");
            let mut r = redirect("/auth/session");
            if let Ok(v) = HeaderValue::from_str(&s.gateway.browser.cookie(Some(&id))) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => sign_in_error(&e),
    }
}

/// Who is signed in (the gateway's own pages read this; the FHIR API never does).
async fn session(State(s): State<Endpoints>, headers: HeaderMap) -> Response {
    let now = s.store.clock().now();
    match session_cookie(&headers).and_then(|id| s.gateway.browser.session(&id, now)) {
        Some(session) => no_store(
            axum::Json(json!({
                "SubjectNameID": session.subject_name_id,
                "given_name": session.given_name,
                "family_name": session.family_name,
                "acr": session.acr,
            }))
            .into_response(),
        ),
        None => page(
            StatusCode::UNAUTHORIZED,
            "not signed in: /auth/login".into(),
        ),
    }
}

/// Ends the session and sends the browser to PSC's logout (`end_session_endpoint`).
async fn logout(State(s): State<Endpoints>, headers: HeaderMap) -> Response {
    let browser = &s.gateway.browser;
    let id_token = session_cookie(&headers).and_then(|id| browser.end(&id));
    let end_session = match s.gateway.psc.discovery().await {
        Ok(d) => d.end_session_endpoint.clone(),
        Err(_) => None,
    };
    let location = match (end_session, id_token) {
        (Some(endpoint), Some(hint)) => reqwest::Url::parse(&endpoint)
            .map(|mut u| {
                u.query_pairs_mut()
                    .append_pair("id_token_hint", &hint)
                    .append_pair("post_logout_redirect_uri", &browser.logged_out_url)
                    .append_pair("client_id", &s.gateway.psc.client_id);
                u.to_string()
            })
            .unwrap_or_else(|_| browser.logged_out_url.clone()),
        _ => browser.logged_out_url.clone(),
    };
    let mut r = redirect(&location);
    if let Ok(v) = HeaderValue::from_str(&browser.cookie(None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
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
