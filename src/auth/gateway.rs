//! `psc` auth mode: the gateway's own access tokens (issued at `/auth/token`, checked on every
//! FHIR request), the registered system clients and their `private_key_jwt` assertions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::RwLock;

use super::accounts;
use super::events::Who;
use super::keys::{SigningKey, random_id};
use super::psc::Psc;
use super::scope::{self, Perm};
use super::terms::Terms;
use super::{Caller, habilitation};
use crate::config::{ClientConfig, Config};
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::Fhir;
use crate::fhir::reference;
use crate::store::Store;

/// The claims of a gateway access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// `SubjectNameID` of a clinician, or a system client's `client_id`.
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    pub scope: String,
    /// Person tokens: the habilitation chosen at the exchange (`PractitionerRole/<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner_role: Option<String>,
    /// Person tokens: `Practitioner/<id>`.
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// System tokens: the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A refusal at the token endpoint (RFC 6749 §5.2 / RFC 8693 §2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl TokenError {
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> TokenError {
        TokenError {
            status,
            error,
            description: description.into(),
        }
    }
    fn client(description: impl Into<String>) -> TokenError {
        TokenError::new(401, "invalid_client", description)
    }
    fn request(description: impl Into<String>) -> TokenError {
        TokenError::new(400, "invalid_request", description)
    }
}

/// An issued token, as the token endpoint answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

struct Client {
    config: ClientConfig,
    jwks: RwLock<Option<JwkSet>>,
}

/// The gateway's own tokens and the registered system clients (both auth modes), and in
/// `psc` mode Pro Santé Connect.
pub struct Gateway {
    /// Public base of the gateway (without `/fhir`): the tokens' `iss`.
    pub base: String,
    pub key: SigningKey,
    /// Pro Santé Connect (`psc` mode only): sign-in and token exchange.
    pub psc: Option<Psc>,
    token_lifetime: u64,
    assertion_max_lifetime: u64,
    clients: HashMap<String, Client>,
    http: reqwest::Client,
    /// Browser sign-in and sessions.
    pub browser: super::browser::Browser,
    /// The terms of use a clinician accepts before a token is issued to them.
    pub terms: Terms,
    /// Tokens whose signature was checked, until they expire.
    verified: Mutex<HashMap<String, Arc<Claims>>>,
}

/// Seconds of clock skew allowed on a gateway token's expiry.
const LEEWAY: u64 = 5;
/// Most checked tokens remembered.
const VERIFIED_CAPACITY: usize = 10_000;

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base)
            .field("key", &self.key)
            .field("psc", &self.psc)
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Algorithms accepted for client assertions (SMART Backend Services: RS384, ES384 at least).
const ASSERTION_ALGS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Gateway {
    /// With PSC when `[psc] issuer` is set (`psc` mode), without it otherwise (`dev` mode:
    /// system clients only).
    pub fn new(config: &Config, base: &str) -> std::result::Result<Gateway, String> {
        let default_psc = crate::config::PscConfig::default();
        let psc_config = config.psc.as_ref().filter(|p| !p.issuer.is_empty());
        let base = base.trim_end_matches('/');
        let psc = match psc_config {
            Some(p) => {
                let redirect_url = p
                    .redirect_url
                    .clone()
                    .unwrap_or_else(|| format!("{base}/auth/callback"));
                Some(Psc::new(p, redirect_url).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let psc_config = psc_config.unwrap_or(&default_psc);
        let terms = Terms::from_config(&config.auth)?;
        let key = match &config.auth.signing_key_file {
            Some(path) => SigningKey::load_or_create(path),
            None => {
                if psc.is_some() || !config.auth.clients.is_empty() {
                    tracing::warn!(
                        "auth.signing_key_file is not set: gateway tokens are signed with a key made at start (they die with this process; several instances need a shared key file)"
                    );
                }
                SigningKey::generate()
            }
        }
        .map_err(|e| e.to_string())?;
        let mut clients = HashMap::new();
        for c in &config.auth.clients {
            let jwks = match &c.jwks_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!(
                            "auth.clients {}: jwks_file {}: {e}",
                            c.client_id,
                            path.display()
                        )
                    })?;
                    Some(serde_json::from_str::<JwkSet>(&text).map_err(|e| {
                        format!("auth.clients {}: jwks_file is not a JWKS: {e}", c.client_id)
                    })?)
                }
                None => None,
            };
            clients.insert(
                c.client_id.clone(),
                Client {
                    config: c.clone(),
                    jwks: RwLock::new(jwks),
                },
            );
        }
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Gateway {
            base: base.to_owned(),
            key,
            psc,
            token_lifetime: u64::from(config.auth.token_lifetime_seconds.max(1)),
            assertion_max_lifetime: u64::from(config.auth.assertion_max_lifetime_seconds),
            clients,
            http,
            browser: super::browser::Browser::new(
                base,
                &psc_config.scopes,
                &psc_config.acr_values,
                psc_config.session_idle_minutes,
                psc_config.session_max_hours,
            ),
            terms,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The token endpoint's URL: the `aud` of client assertions.
    pub fn token_endpoint(&self) -> String {
        format!("{}/auth/token", self.base)
    }

    fn audience(&self) -> String {
        format!("{}/fhir", self.base)
    }

    fn sign(&self, claims: &Claims) -> std::result::Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, self.key.encoding()).map_err(|e| {
            tracing::error!(error = %e, "cannot sign a gateway token");
            TokenError::new(500, "server_error", "cannot sign the token")
        })
    }

    fn claims(&self, sub: String, scope: String) -> Claims {
        let iat = now();
        Claims {
            iss: self.base.clone(),
            aud: self.audience(),
            sub,
            exp: iat + self.token_lifetime,
            iat,
            jti: random_id(),
            scope,
            practitioner_role: None,
            fhir_user: None,
            client_id: None,
        }
    }

    /// `client_credentials` with `private_key_jwt` (SMART Backend Services). `who` names the
    /// client as soon as its assertion does (for the audit trail, refusals included).
    pub async fn client_credentials(
        &self,
        form: &HashMap<String, String>,
        store: &Store,
        who: &mut Who,
    ) -> std::result::Result<Issued, TokenError> {
        if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return Err(TokenError::client(format!(
                "client_credentials needs client_assertion_type={JWT_BEARER}"
            )));
        }
        let assertion = form
            .get("client_assertion")
            .ok_or_else(|| TokenError::client("client_assertion is missing"))?;
        let client = self.check_assertion(assertion, store, who).await?;
        let requested = form
            .get("scope")
            .map(String::as_str)
            .unwrap_or("")
            .to_owned();
        if requested.trim().is_empty() {
            return Err(TokenError::new(400, "invalid_scope", "scope is required"));
        }
        let issued = self.issue_for_client(&client.client_id, &requested)?;
        tracing::info!(client_id = %client.client_id, scope = %issued.scope, "gateway token issued to a system client");
        Ok(issued)
    }

    /// Checks a client assertion: a registered client (`iss` = `sub` = `client_id`), signed
    /// by one of its keys, for this token endpoint, short-lived, never seen before (by any
    /// instance: the ids used are in the database until they expire).
    async fn check_assertion(
        &self,
        jwt: &str,
        store: &Store,
        who: &mut Who,
    ) -> std::result::Result<ClientConfig, TokenError> {
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(jwt)
            .map_err(|_| TokenError::client("client_assertion is not a JWT"))?;
        let client_id = unverified["iss"]
            .as_str()
            .ok_or_else(|| TokenError::client("client_assertion has no iss"))?;
        who.client_id = Some(client_id.to_owned());
        let client = self
            .clients
            .get(client_id)
            .ok_or_else(|| TokenError::client("unknown client"))?;
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|_| TokenError::client("client_assertion is not a JWT"))?;
        if !ASSERTION_ALGS.contains(&header.alg) {
            return Err(TokenError::client(format!(
                "client_assertion algorithm {:?} is refused",
                header.alg
            )));
        }
        let key = self.client_key(client, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 30;
        validation.set_audience(&[self.token_endpoint()]);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_owned());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation).map_err(|e| {
            TokenError::client(format!("client_assertion refused: {}", describe(&e)))
        })?;
        let exp = data.claims["exp"].as_u64().unwrap_or(0);
        if exp > now() + self.assertion_max_lifetime + 30 {
            return Err(TokenError::client(format!(
                "client_assertion lives longer than {} s",
                self.assertion_max_lifetime
            )));
        }
        let jti = data.claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty())
            .ok_or_else(|| TokenError::client("client_assertion has no jti"))?;
        let key = format!("{client_id}\u{1f}{jti}");
        let expires = i64::try_from(exp).unwrap_or(i64::MAX);
        // ids stay a minute past their assertion's expiry (the leeway above is 30 s)
        let expired_before = i64::try_from(now()).unwrap_or(i64::MAX) - 60;
        let fresh = store
            .write(move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .use_assertion_id(&key, expires, expired_before)
                        .await
                })
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "client assertion replay check: storage error");
                TokenError::new(500, "server_error", "storage error")
            })?;
        if !fresh {
            return Err(TokenError::client(
                "client_assertion replayed (jti already used)",
            ));
        }
        Ok(client.config.clone())
    }

    async fn client_key(
        &self,
        client: &Client,
        kid: Option<&str>,
    ) -> std::result::Result<DecodingKey, TokenError> {
        let find = |jwks: &JwkSet| -> Option<DecodingKey> {
            let jwk = match kid {
                Some(k) => jwks.find(k),
                None if jwks.keys.len() == 1 => jwks.keys.first(),
                None => None,
            }?;
            DecodingKey::from_jwk(jwk).ok()
        };
        if let Some(key) = client.jwks.read().await.as_ref().and_then(find) {
            return Ok(key);
        }
        // a URL-registered key set is fetched (again, for a new kid)
        let Some(url) = &client.config.jwks_url else {
            return Err(TokenError::client(
                "client_assertion signed by an unknown key",
            ));
        };
        let fetched = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| e.without_url())
            .and_then(|r| r.error_for_status().map_err(|e| e.without_url()));
        let jwks = match fetched {
            Ok(r) => r.json::<JwkSet>().await.map_err(|e| e.without_url()),
            Err(e) => Err(e),
        }
        .map_err(|e| {
            tracing::warn!(client_id = %client.config.client_id, error = %e, "cannot fetch a client's JWKS");
            TokenError::client("the client's key set cannot be fetched")
        })?;
        let key = find(&jwks);
        *client.jwks.write().await = Some(jwks);
        key.ok_or_else(|| TokenError::client("client_assertion signed by an unknown key"))
    }

    /// RFC 8693 token exchange of a PSC access token for a gateway token acting through one
    /// of the clinician's habilitations (`practitioner_role`). The exchange is a sign-in: the
    /// clinician's account is made or brought up to date from userinfo first; a token needs
    /// the current terms of use accepted and a valid habilitation of that account. `who`
    /// names the clinician as soon as PSC does (for the audit trail, refusals included).
    pub async fn exchange(
        &self,
        form: &HashMap<String, String>,
        fhir: &Arc<Fhir>,
        who: &mut Who,
    ) -> std::result::Result<Issued, TokenError> {
        let token = form
            .get("subject_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TokenError::request("subject_token is missing"))?;
        if form.get("subject_token_type").map(String::as_str) != Some(ACCESS_TOKEN_TYPE) {
            return Err(TokenError::request(format!(
                "subject_token_type must be {ACCESS_TOKEN_TYPE}"
            )));
        }
        if let Some(t) = form.get("requested_token_type")
            && t != ACCESS_TOKEN_TYPE
        {
            return Err(TokenError::request(format!(
                "requested_token_type must be {ACCESS_TOKEN_TYPE}"
            )));
        }
        let role_param = form.get("practitioner_role").ok_or_else(|| {
            TokenError::request("practitioner_role (the habilitation to act through) is missing")
        })?;
        let role_id = role_param
            .strip_prefix("PractitionerRole/")
            .unwrap_or(role_param)
            .to_owned();
        if !reference::is_id(&role_id) {
            return Err(TokenError::request(
                "practitioner_role is not PractitionerRole/<id>",
            ));
        }
        who.role = Some(format!("PractitionerRole/{role_id}"));
        let psc_error = |e: super::psc::PscError| match e {
            super::psc::PscError::Rejected(m) => TokenError::request(m),
            other => {
                tracing::warn!(error = %other, "token exchange: Pro Santé Connect call failed");
                TokenError::new(
                    503,
                    "temporarily_unavailable",
                    "Pro Santé Connect is unavailable",
                )
            }
        };
        let psc = self.psc.as_ref().ok_or_else(|| {
            TokenError::new(
                400,
                "unsupported_grant_type",
                "token exchange needs Pro Santé Connect ([psc] issuer): dev mode issues tokens to system clients only",
            )
        })?;
        let introspected = psc.introspect(token).await.map_err(psc_error)?;
        let identity = psc.userinfo(token).await.map_err(psc_error)?;
        who.subject_name_id = Some(identity.subject_name_id.clone());
        if let Some(id) = introspected["SubjectNameID"].as_str()
            && id != identity.subject_name_id
        {
            return Err(TokenError::request(
                "introspection and userinfo name different clinicians",
            ));
        }
        let server = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "token exchange: {what}");
            TokenError::new(500, "server_error", what.to_owned())
        };
        let account = accounts::ensure_practitioner(fhir, &identity)
            .await
            .map_err(|e| server("the account could not be written", &e))?;
        let practitioner = account.reference();
        who.practitioner = Some(practitioner.clone());
        if !self.terms.accepted_by(&account.body) {
            return Err(TokenError::new(
                400,
                "invalid_grant",
                format!(
                    "the terms of use (version {}) have not been accepted yet: sign in at {}/auth/login and accept them at {}/auth/terms",
                    self.terms.version, self.base, self.base
                ),
            ));
        }
        if account.body["active"] == Value::Bool(false) {
            return Err(TokenError::new(
                400,
                "invalid_grant",
                format!("{practitioner} is not active"),
            ));
        }
        let target = |m: String| TokenError::new(400, "invalid_target", m);
        let role = fhir
            .store
            .current("PractitionerRole", &role_id)
            .await
            .map_err(|e| server("storage error", &e))?
            .filter(|s| !s.deleted)
            .and_then(|s| s.body)
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .ok_or_else(|| target(format!("no habilitation PractitionerRole/{role_id}")))?;
        let hab = habilitation(&role_id, &role, fhir.store.clock().now())
            .ok_or_else(|| target(format!("PractitionerRole/{role_id} is not valid now")))?;
        if hab.practitioner.as_deref() != Some(practitioner.as_str()) {
            return Err(target(format!(
                "PractitionerRole/{role_id} is not a habilitation of the signed-in clinician"
            )));
        }
        let scope = "user/*.cruds".to_owned();
        let mut claims = self.claims(identity.subject_name_id, scope.clone());
        claims.practitioner_role = Some(hab.role.clone());
        claims.fhir_user = Some(practitioner);
        let token = self.sign(&claims)?;
        tracing::info!(role = %hab.role, "gateway token issued by token exchange");
        Ok(Issued {
            access_token: token,
            token_type: "Bearer",
            expires_in: self.token_lifetime,
            scope,
            issued_token_type: Some(ACCESS_TOKEN_TYPE),
        })
    }

    /// The caller of a FHIR request from its `Authorization: Bearer` gateway token, checked
    /// against the permission the request needs (system clients) and the habilitation's
    /// validity now (persons).
    /// The claims of a gateway token whose signature, issuer, audience and expiry hold.
    /// Tokens already checked are remembered until they expire: verifying an Ed25519
    /// signature costs more than serving a cached read.
    fn verified(&self, token: &str) -> Result<Arc<Claims>> {
        let now = now();
        if let Some(c) = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(token).cloned())
            && c.exp + LEEWAY >= now
        {
            return Ok(c);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY;
        validation.set_audience(&[self.audience()]);
        validation.set_issuer(&[&self.base]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, self.key.decoding(), &validation)
            .map_err(|e| Error::Unauthorized(format!("invalid gateway token: {}", describe(&e))))?
            .claims;
        let claims = Arc::new(claims);
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= VERIFIED_CAPACITY {
                m.retain(|_, c| c.exp + LEEWAY >= now);
                if m.len() >= VERIFIED_CAPACITY {
                    m.clear();
                }
            }
            m.insert(token.to_owned(), claims.clone());
        }
        Ok(claims)
    }

    /// A token for a registered system client, as `client_credentials` would issue it, for
    /// the operator (`passerelle admin token`) and the tests.
    pub fn issue_for_client(
        &self,
        client_id: &str,
        scope: &str,
    ) -> std::result::Result<Issued, TokenError> {
        let client = self
            .clients
            .get(client_id)
            .ok_or_else(|| TokenError::client(format!("unknown client `{client_id}`")))?;
        let granted = scope::grant(scope, &client.config.scopes);
        if granted.is_empty() {
            return Err(TokenError::new(
                400,
                "invalid_scope",
                "none of the requested scopes is granted to this client",
            ));
        }
        let scope = granted.join(" ");
        let mut claims = self.claims(client_id.to_owned(), scope.clone());
        claims.client_id = Some(client_id.to_owned());
        Ok(Issued {
            access_token: self.sign(&claims)?,
            token_type: "Bearer",
            expires_in: self.token_lifetime,
            scope,
            issued_token_type: None,
        })
    }

    pub async fn caller(
        &self,
        authorization: Option<&str>,
        store: &Store,
        need: &Need,
    ) -> Result<Caller> {
        let Some(value) = authorization else {
            if need.public {
                return Ok(Caller::Anonymous);
            }
            return Err(Error::Unauthorized(
                "a gateway access token is required (Authorization: Bearer …, from /auth/token)"
                    .into(),
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
        let claims = self.verified(token)?;
        if let Some(role) = &claims.practitioner_role {
            let id = role
                .strip_prefix("PractitionerRole/")
                .ok_or_else(|| Error::Unauthorized("invalid gateway token".into()))?;
            let caller = super::dev_caller(store, Some(&format!("PractitionerRole/{id}"))).await?;
            if caller.habilitation().and_then(|h| h.practitioner.as_ref())
                != claims.fhir_user.as_ref()
            {
                return Err(Error::Unauthorized(
                    "the token's habilitation no longer belongs to its clinician".into(),
                ));
            }
            return Ok(caller);
        }
        let client_id = claims
            .client_id
            .as_deref()
            .filter(|c| *c == claims.sub && self.clients.contains_key(*c))
            .ok_or_else(|| {
                Error::Unauthorized("the token's client is no longer registered".into())
            })?;
        if need.public {
            return Ok(self.client_caller(client_id));
        }
        let rtype = need.rtype.as_deref();
        if let Some(missing) = need
            .perms
            .iter()
            .find(|p| !scope::permits(&claims.scope, rtype, **p))
        {
            return Err(Error::forbidden(format!(
                "the token's scopes do not allow {missing:?} on {}",
                rtype.unwrap_or("the whole server (system/*)")
            )));
        }
        Ok(self.client_caller(client_id))
    }

    /// A registered client as a caller: bound to its structure when it has one.
    fn client_caller(&self, client_id: &str) -> Caller {
        match self
            .clients
            .get(client_id)
            .and_then(|c| c.config.organization.clone())
        {
            Some(organization) => Caller::Client(super::Client {
                client_id: client_id.to_owned(),
                organization,
            }),
            None => Caller::System(client_id.to_owned()),
        }
    }
}

/// What a FHIR request needs from a system token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Served to anyone (`GET /metadata`).
    pub public: bool,
    /// The resource type, `None` for the system root.
    pub rtype: Option<String>,
    pub perms: Vec<Perm>,
}

/// Why a JWT was refused, in words that name no key material.
fn describe(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired",
        K::ImmatureSignature => "not valid yet",
        K::InvalidSignature => "bad signature",
        K::InvalidAudience => "wrong audience",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidSubject => "wrong subject",
        K::MissingRequiredClaim(_) => "a required claim is missing",
        K::InvalidAlgorithm => "wrong algorithm",
        _ => "malformed",
    }
}
