//! The Pro Santé Connect side: discovery (PSC's non-standard path), token introspection and
//! userinfo (JSON or signed JWT). The PSC access token is only ever sent back to PSC.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::secret::Secret;
use crate::config::PscConfig;

/// The OID of the national health professional identifier (`SubjectNameID`, idNat_PS).
pub const IDNAT_PS_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";

#[derive(Debug, thiserror::Error)]
pub enum PscError {
    /// PSC could not be reached or answered something unreadable: not the caller's fault.
    #[error("Pro Santé Connect is unavailable: {0}")]
    Unavailable(String),
    /// PSC (or its answer) says the token is not acceptable.
    #[error("{0}")]
    Rejected(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// What the gateway reads from the discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub end_session_endpoint: Option<String>,
}

pub struct Psc {
    pub issuer: String,
    discovery_url: String,
    pub client_id: String,
    client_secret: Option<Secret>,
    introspection_client_id: String,
    introspection_client_secret: Option<Secret>,
    pub accepted_acr: Vec<String>,
    /// Clients whose tokens may be exchanged.
    exchange_clients: Vec<String>,
    http: reqwest::Client,
    discovery: OnceCell<Discovery>,
}

impl std::fmt::Debug for Psc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psc")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The claims of a clinician the gateway keeps from PSC.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `SubjectNameID`: the national identifier, the key of the user (never `sub`).
    pub subject_name_id: String,
    pub userinfo: Value,
}

impl Psc {
    pub fn new(config: &PscConfig) -> Result<Psc, PscError> {
        let read = |value: &Option<Secret>, file: &Option<std::path::PathBuf>, key: &str| match (
            value, file,
        ) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(path)) => Secret::from_file(path)
                .map(Some)
                .map_err(|e| PscError::Config(format!("psc.{key}_file {}: {e}", path.display()))),
            (None, None) => Ok(None),
        };
        let client_secret = read(
            &config.client_secret,
            &config.client_secret_file,
            "client_secret",
        )?;
        let introspection_client_secret = read(
            &config.introspection_client_secret,
            &config.introspection_client_secret_file,
            "introspection_client_secret",
        )?
        .or_else(|| client_secret.clone());
        let issuer = config.issuer.trim_end_matches('/').to_owned();
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            // never follow a redirect with a token or a secret in it (SSRF, leaks)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(u64::from(
                config.http_timeout_seconds.max(1),
            )))
            .build()
            .map_err(|e| PscError::Config(e.to_string()))?;
        Ok(Psc {
            discovery_url: config
                .discovery_url
                .clone()
                .unwrap_or_else(|| format!("{issuer}/.well-known/wallet-openid-configuration")),
            issuer,
            client_id: config.client_id.clone(),
            client_secret,
            introspection_client_id: config
                .introspection_client_id
                .clone()
                .unwrap_or_else(|| config.client_id.clone()),
            introspection_client_secret,
            accepted_acr: config
                .accepted_acr
                .clone()
                .unwrap_or_else(|| config.acr_values.clone()),
            exchange_clients: if config.exchange_clients.is_empty() {
                vec![config.client_id.clone()]
            } else {
                config.exchange_clients.clone()
            },
            http,
            discovery: OnceCell::new(),
        })
    }

    /// The discovery document, fetched once (lazily: the gateway starts while PSC is down).
    pub async fn discovery(&self) -> Result<&Discovery, PscError> {
        self.discovery
            .get_or_try_init(|| async {
                let resp = self
                    .http
                    .get(&self.discovery_url)
                    .send()
                    .await
                    .map_err(|e| {
                        PscError::Unavailable(format!("discovery: {}", e.without_url()))
                    })?;
                if !resp.status().is_success() {
                    return Err(PscError::Unavailable(format!(
                        "discovery answered {}",
                        resp.status()
                    )));
                }
                let doc: Discovery = resp.json().await.map_err(|e| {
                    PscError::Unavailable(format!("discovery: {}", e.without_url()))
                })?;
                if doc.issuer.trim_end_matches('/') != self.issuer {
                    return Err(PscError::Unavailable(format!(
                        "the discovery document names issuer `{}`, not the configured `{}`",
                        doc.issuer, self.issuer
                    )));
                }
                Ok(doc)
            })
            .await
    }

    /// Introspects a PSC access token (RFC 7662, Basic auth): active, from this issuer, with
    /// an accepted `acr`. Returns the introspection answer.
    pub async fn introspect(&self, token: &str) -> Result<Value, PscError> {
        let endpoint = self
            .discovery()
            .await?
            .introspection_endpoint
            .clone()
            .ok_or_else(|| PscError::Unavailable("no introspection_endpoint".into()))?;
        let resp = self
            .http
            .post(&endpoint)
            .basic_auth(
                &self.introspection_client_id,
                self.introspection_client_secret
                    .as_ref()
                    .map(Secret::expose),
            )
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| PscError::Unavailable(format!("introspection: {}", e.without_url())))?;
        if !resp.status().is_success() {
            return Err(PscError::Unavailable(format!(
                "introspection answered {}",
                resp.status()
            )));
        }
        let answer: Value = resp
            .json()
            .await
            .map_err(|e| PscError::Unavailable(format!("introspection: {}", e.without_url())))?;
        // Keycloak has been seen answering "true" as a string
        let active = answer["active"] == Value::Bool(true) || answer["active"] == "true";
        if !active {
            return Err(PscError::Rejected("the subject token is not active".into()));
        }
        if let Some(iss) = answer["iss"].as_str()
            && iss.trim_end_matches('/') != self.issuer
        {
            return Err(PscError::Rejected(format!(
                "the subject token was issued by `{iss}`, not by the configured issuer"
            )));
        }
        let client = answer["azp"]
            .as_str()
            .or_else(|| answer["client_id"].as_str())
            .unwrap_or("");
        if !self.exchange_clients.iter().any(|c| c == client) {
            return Err(PscError::Rejected(format!(
                "the subject token was issued to PSC client `{client}`, which may not exchange tokens here"
            )));
        }
        let acr = answer["acr"].as_str().unwrap_or("");
        if !self.accepted_acr.iter().any(|a| a == acr) {
            return Err(PscError::Rejected(format!(
                "the subject token's authentication level `{acr}` is not accepted ({})",
                self.accepted_acr.join(", ")
            )));
        }
        Ok(answer)
    }

    /// Reads userinfo with the PSC access token: JSON, or a JWT signed with the client
    /// secret (HS256) or a key of the provider's JWKS.
    pub async fn userinfo(&self, token: &str) -> Result<Identity, PscError> {
        let discovery = self.discovery().await?;
        let endpoint = discovery
            .userinfo_endpoint
            .clone()
            .ok_or_else(|| PscError::Unavailable("no userinfo_endpoint".into()))?;
        let resp = self
            .http
            .get(&endpoint)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| PscError::Unavailable(format!("userinfo: {}", e.without_url())))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(PscError::Rejected(
                "userinfo refused the subject token".into(),
            ));
        }
        if !resp.status().is_success() {
            return Err(PscError::Unavailable(format!(
                "userinfo answered {}",
                resp.status()
            )));
        }
        let is_jwt = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/jwt"));
        let text = resp
            .text()
            .await
            .map_err(|e| PscError::Unavailable(format!("userinfo: {}", e.without_url())))?;
        let claims: Value = if is_jwt {
            self.verify_jwt(text.trim()).await?
        } else {
            serde_json::from_str(&text)
                .map_err(|_| PscError::Unavailable("userinfo is not JSON".into()))?
        };
        let subject_name_id = claims["SubjectNameID"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| PscError::Rejected("userinfo has no SubjectNameID".into()))?
            .to_owned();
        Ok(Identity {
            subject_name_id,
            userinfo: claims,
        })
    }

    /// Redeems an authorization code at the token endpoint (`client_secret_basic`, PKCE).
    pub async fn redeem_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Value, PscError> {
        let endpoint = self
            .discovery()
            .await?
            .token_endpoint
            .clone()
            .ok_or_else(|| PscError::Unavailable("no token_endpoint".into()))?;
        let resp = self
            .http
            .post(&endpoint)
            .basic_auth(
                &self.client_id,
                self.client_secret.as_ref().map(Secret::expose),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| PscError::Unavailable(format!("token endpoint: {}", e.without_url())))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_client_error() {
            let error = body["error"].as_str().unwrap_or("refused");
            return Err(PscError::Rejected(format!(
                "PSC refused the authorization code ({error})"
            )));
        }
        if !status.is_success() {
            return Err(PscError::Unavailable(format!(
                "token endpoint answered {status}"
            )));
        }
        Ok(body)
    }

    /// Checks a JWT from PSC (signed userinfo, ID token): HS256 with the client secret, or an
    /// asymmetric key of the provider's JWKS found by `kid`; issuer must match. Returns its
    /// claims (expiry and audience are checked by the caller when they apply).
    pub async fn verify_jwt(&self, jwt: &str) -> Result<Value, PscError> {
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|_| PscError::Rejected("not a signed JWT".into()))?;
        let key = match header.alg {
            Algorithm::HS256 => {
                let secret = self.client_secret.as_ref().ok_or_else(|| {
                    PscError::Rejected("HS256 JWT without a client secret".into())
                })?;
                DecodingKey::from_secret(secret.expose().as_bytes())
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384 => {
                let jwks = self.provider_jwks().await?;
                let jwk = match &header.kid {
                    Some(kid) => jwks.find(kid),
                    None if jwks.keys.len() == 1 => jwks.keys.first(),
                    None => None,
                }
                .ok_or_else(|| PscError::Rejected("JWT signed by an unknown key".into()))?;
                DecodingKey::from_jwk(jwk)
                    .map_err(|_| PscError::Rejected("unusable provider key".into()))?
            }
            other => {
                return Err(PscError::Rejected(format!(
                    "JWT algorithm {other:?} refused"
                )));
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
            .map_err(|e| PscError::Rejected(format!("JWT refused: {e}")))?;
        if let Some(iss) = data.claims["iss"].as_str()
            && iss.trim_end_matches('/') != self.issuer
        {
            return Err(PscError::Rejected("JWT from another issuer".into()));
        }
        Ok(data.claims)
    }

    async fn provider_jwks(&self) -> Result<JwkSet, PscError> {
        let uri = self
            .discovery()
            .await?
            .jwks_uri
            .clone()
            .ok_or_else(|| PscError::Unavailable("no jwks_uri".into()))?;
        self.http
            .get(&uri)
            .send()
            .await
            .map_err(|e| PscError::Unavailable(format!("jwks: {}", e.without_url())))?
            .json::<JwkSet>()
            .await
            .map_err(|e| PscError::Unavailable(format!("jwks: {}", e.without_url())))
    }
}
