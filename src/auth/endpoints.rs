//! The HTTP endpoints of `psc` mode: `POST /auth/token` (token exchange, client
//! credentials), `GET /auth/jwks` (the public key of gateway tokens) and the SMART
//! configuration (`/.well-known/smart-configuration`, also under `/fhir`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

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
