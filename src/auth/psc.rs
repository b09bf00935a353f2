//! The Pro Santé Connect side, a relying party built on the `openidconnect` crate: discovery
//! at PSC's non-standard path (fetched here, read into the crate's provider metadata, issuer
//! checked), the authorization URL (PKCE S256, `state`, `nonce`, `acr_values`), the code
//! exchange (`client_secret_basic`, or mutual TLS `tls_client_auth` at the
//! `mtls_endpoint_aliases`), ID token checks (HS256 with the client secret or the provider's
//! JWKS), userinfo (JSON or signed JWT) with PSC's claims, token introspection (hand-written:
//! PSC's Keycloak answers `"active": "true"` as a string at times) and the
//! `end_session_endpoint`. The PSC access token is only ever sent back to PSC.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AdditionalClaims, AdditionalProviderMetadata, AuthType,
    AuthenticationContextClass, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError,
    Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdToken, IdTokenClaims, IdTokenFields,
    IdTokenVerifier, JsonWebKeySet, LogoutProviderMetadata, LogoutRequest, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadata, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse, SubjectIdentifier, TokenUrl, UserInfoClaims, UserInfoError, UserInfoUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::RwLock;

use super::secret::Secret;
use crate::config::PscConfig;
use crate::http_client::{TlsFiles, describe};

/// The OID of the national health professional identifier (`SubjectNameID`, idNat_PS).
pub const IDNAT_PS_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";

#[derive(Debug, thiserror::Error)]
pub enum PscError {
    /// PSC could not be reached or answered something unreadable: not the caller's fault.
    #[error("Pro Santé Connect is unavailable: {0}")]
    Unavailable(String),
    /// PSC (or its answer) says the token or the sign-in is not acceptable.
    #[error("{0}")]
    Rejected(String),
    #[error("configuration: {0}")]
    Config(String),
}

// ---------------------------------------------------------------------------------------
// PSC's claims and metadata, as the crate's extension points

/// PSC's own claims (scope `scope_all`) beside the standard ones, in the ID token and in
/// userinfo. Everything is optional: PSC leaves many of them out or empty.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PscClaims {
    /// The national identifier (idNat_PS), the key of the user — never `sub`.
    #[serde(
        rename = "SubjectNameID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub subject_name_id: Option<String>,
    #[serde(
        rename = "SubjectRefPro",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ref_pro: Option<RefPro>,
    /// Other identifiers of the person (`origine`: RPPS, ADELI, EDIT…).
    #[serde(rename = "otherIds", default, skip_serializing_if = "Option::is_none")]
    pub other_ids: Option<Vec<OtherId>>,
    #[serde(
        rename = "codeCivilite",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub civility: Option<String>,
}
impl AdditionalClaims for PscClaims {}

/// `SubjectRefPro`: the professional's exercises (one per profession and category).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RefPro {
    #[serde(
        rename = "codeCivilite",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub civility: Option<String>,
    #[serde(default)]
    pub exercices: Vec<Exercice>,
}

/// One exercise: a profession (TRE_G15), a professional category (TRE_R09) and a know-how
/// (`S`: a spécialité ordinale, TRE_R38), with its activities (workplaces).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Exercice {
    pub code_profession: Option<String>,
    pub code_categorie_professionnelle: Option<String>,
    pub nom_dexercice: Option<String>,
    pub prenom_dexercice: Option<String>,
    pub code_type_savoir_faire: Option<String>,
    pub code_savoir_faire: Option<String>,
    #[serde(default)]
    pub activities: Vec<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct OtherId {
    pub identifiant: Option<String>,
    pub origine: Option<String>,
}

/// `mtls_endpoint_aliases` (RFC 8705 §5): where a client authenticating with its TLS
/// certificate sends its back-channel requests.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct MtlsAliases {
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
}

/// The discovery fields the crate does not type.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PscMetadata {
    pub introspection_endpoint: Option<String>,
    pub mtls_endpoint_aliases: Option<MtlsAliases>,
}
impl AdditionalProviderMetadata for PscMetadata {}

pub type PscProviderMetadata = ProviderMetadata<
    LogoutProviderMetadata<PscMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
type PscIdTokenFields = IdTokenFields<
    PscClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type PscTokenResponse = StandardTokenResponse<PscIdTokenFields, CoreTokenType>;
pub type PscIdToken =
    IdToken<PscClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type PscClient = Client<
    PscClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    PscTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

// ---------------------------------------------------------------------------------------
// The HTTP client handed to the crate

/// Our reqwest client (rustls, no redirects) as the crate's `AsyncHttpClient`.
#[derive(Clone)]
pub struct PscHttp(reqwest::Client);

/// A failed call, described without its URL (a query may carry a token).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl<'c> openidconnect::AsyncHttpClient<'c> for PscHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let resp = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(describe(e)))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(|e| HttpError(describe(e)))?;
            let mut out = HttpResponse::new(bytes.to_vec());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

// ---------------------------------------------------------------------------------------
// The relying party

/// How the gateway authenticates at PSC's token and introspection endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`.
    SecretBasic,
    /// `tls_client_auth` (RFC 8705): the TLS client certificate, `client_id` in the body.
    TlsClientAuth,
}

/// What discovery gave, ready to use.
struct Discovered {
    client: PscClient,
    metadata: PscProviderMetadata,
    /// Introspection, with the mTLS alias applied.
    introspection_endpoint: Option<String>,
}

pub struct Psc {
    pub issuer: String,
    discovery_url: String,
    pub client_id: String,
    client_secret: Option<Secret>,
    pub auth: ClientAuth,
    /// The TLS client certificate is configured: the `mtls_endpoint_aliases` apply.
    mtls: bool,
    redirect_url: String,
    introspection_client_id: String,
    introspection_client_secret: Option<Secret>,
    pub accepted_acr: Vec<String>,
    /// Clients whose tokens may be exchanged.
    exchange_clients: Vec<String>,
    http: PscHttp,
    /// Fetched lazily (the gateway starts while PSC is down), again for new provider keys.
    discovered: RwLock<Option<Arc<Discovered>>>,
}

impl std::fmt::Debug for Psc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Psc")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A clinician as PSC describes them.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `SubjectNameID`: the national identifier, the key of the user (never `sub`).
    pub subject_name_id: String,
    /// PSC's `sub` (a Keycloak federated id), only to match the ID token and userinfo.
    pub sub: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub claims: PscClaims,
}

/// A completed browser sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub identity: Identity,
    pub acr: String,
    /// Kept for the logout's `id_token_hint`.
    pub id_token: String,
}

/// Why a JWT or claim check failed, with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Psc {
    /// `redirect_url` is the gateway's callback, registered at PSC.
    pub fn new(config: &PscConfig, redirect_url: String) -> Result<Psc, PscError> {
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
        let tls = TlsFiles::read(
            "psc",
            config.tls_client_cert.as_deref(),
            config.tls_client_key.as_deref(),
            config.tls_ca_file.as_deref(),
        )
        .map_err(|e| PscError::Config(e.to_string()))?;
        let mtls = tls.identity_pem.is_some();
        let auth = match (&client_secret, mtls) {
            (Some(_), _) => ClientAuth::SecretBasic,
            (None, true) => ClientAuth::TlsClientAuth,
            (None, false) => {
                return Err(PscError::Config(
                    "psc: set client_secret (client_secret_basic) or tls_client_cert and tls_client_key (tls_client_auth)".into(),
                ));
            }
        };
        let http = tls
            .builder("psc")
            .map_err(|e| PscError::Config(e.to_string()))?
            // never follow a redirect with a token or a secret in it (SSRF, leaks)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(u64::from(
                config.http_timeout_seconds.max(1),
            )))
            .build()
            .map_err(|e| PscError::Config(describe(e)))?;
        let issuer = config.issuer.trim_end_matches('/').to_owned();
        Ok(Psc {
            discovery_url: config
                .discovery_url
                .clone()
                .unwrap_or_else(|| format!("{issuer}/.well-known/wallet-openid-configuration")),
            issuer,
            client_id: config.client_id.clone(),
            client_secret,
            auth,
            mtls,
            redirect_url,
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
            http: PscHttp(http),
            discovered: RwLock::new(None),
        })
    }

    pub fn redirect_url(&self) -> &str {
        &self.redirect_url
    }

    async fn discovered(&self) -> Result<Arc<Discovered>, PscError> {
        if let Some(d) = self.discovered.read().await.as_ref() {
            return Ok(d.clone());
        }
        let mut slot = self.discovered.write().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let d = Arc::new(self.discover().await?);
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Fetches the discovery document and the provider's keys, and builds the crate's client.
    async fn discover(&self) -> Result<Discovered, PscError> {
        let resp = self
            .http
            .0
            .get(&self.discovery_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| PscError::Unavailable(format!("discovery: {}", describe(e))))?;
        if !resp.status().is_success() {
            return Err(PscError::Unavailable(format!(
                "discovery answered {}",
                resp.status()
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PscError::Unavailable(format!("discovery: {}", describe(e))))?;
        let metadata = read_discovery(&bytes, &self.issuer)?;
        let jwks = JsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| PscError::Unavailable(format!("provider keys: {}", chain(&e))))?;
        self.build(metadata.set_jwks(jwks))
    }

    fn build(&self, mut metadata: PscProviderMetadata) -> Result<Discovered, PscError> {
        let extra = metadata.additional_metadata().additional_metadata.clone();
        let aliases = extra
            .mtls_endpoint_aliases
            .clone()
            .filter(|_| self.mtls)
            .unwrap_or_default();
        let bad = |what: &str| PscError::Unavailable(format!("discovery: bad {what} URL"));
        if let Some(t) = &aliases.token_endpoint {
            metadata = metadata
                .set_token_endpoint(Some(TokenUrl::new(t.clone()).map_err(|_| bad("token"))?));
        }
        if let Some(u) = &aliases.userinfo_endpoint {
            metadata = metadata.set_userinfo_endpoint(Some(
                UserInfoUrl::new(u.clone()).map_err(|_| bad("userinfo"))?,
            ));
        }
        let introspection_endpoint = aliases
            .introspection_endpoint
            .or(extra.introspection_endpoint);
        let client = PscClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.client_id.clone()),
            self.client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_owned())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.redirect_url.clone())
                .map_err(|_| PscError::Config("psc.redirect_url is not a URL".into()))?,
        )
        .set_auth_type(match self.auth {
            ClientAuth::SecretBasic => AuthType::BasicAuth,
            // no secret: only `client_id` goes in the body, the certificate authenticates
            ClientAuth::TlsClientAuth => AuthType::RequestBody,
        });
        Ok(Discovered {
            client,
            metadata,
            introspection_endpoint,
        })
    }

    /// Fetches the provider's keys again (a key rotation: an unknown `kid`).
    async fn refresh_keys(&self) -> Result<Arc<Discovered>, PscError> {
        let current = self.discovered().await?;
        let jwks = JsonWebKeySet::fetch_async(current.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| PscError::Unavailable(format!("provider keys: {}", chain(&e))))?;
        let d = Arc::new(self.build(current.metadata.clone().set_jwks(jwks))?);
        *self.discovered.write().await = Some(d.clone());
        Ok(d)
    }

    /// The authorization URL of a new sign-in with this `state` and `nonce`, and the PKCE
    /// verifier to keep until the callback.
    pub async fn authorization_url(
        &self,
        scopes: &[String],
        acr_values: &[String],
        state: String,
        nonce: String,
    ) -> Result<(String, String), PscError> {
        let d = self.discovered().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = d.client.authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        );
        // `openid` is the crate's own first scope
        for s in scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(s.clone()));
        }
        for a in acr_values {
            request = request.add_auth_context_value(AuthenticationContextClass::new(a.clone()));
        }
        let (url, _, _) = request.set_pkce_challenge(challenge).url();
        Ok((url.to_string(), verifier.secret().clone()))
    }

    /// Completes a browser sign-in: redeems the code (PKCE), checks the ID token (issuer,
    /// audience and `azp`, expiry, nonce, accepted `acr`, signature), reads userinfo for the
    /// same subject with PSC's claims.
    pub async fn sign_in(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<SignedIn, PscError> {
        let d = self.discovered().await?;
        let request = d
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|_| PscError::Unavailable("no token_endpoint".into()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
        let tokens = request.request_async(&self.http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                let code = r.error().as_ref().to_owned();
                if code == "invalid_client" {
                    PscError::Rejected(format!(
                        "PSC refused the gateway's client authentication ({code}): check psc.client_secret, or the TLS client certificate for tls_client_auth"
                    ))
                } else {
                    PscError::Rejected(format!("PSC refused the authorization code ({code})"))
                }
            }
            RequestTokenError::Request(e) => PscError::Unavailable(format!("token endpoint: {e}")),
            // the path only: serde's message may quote a token
            RequestTokenError::Parse(e, _) => PscError::Rejected(format!(
                "PSC's token response cannot be read (at `{}`)",
                e.path()
            )),
            RequestTokenError::Other(m) => PscError::Unavailable(format!("token endpoint: {m}")),
        })?;
        let id_token = openidconnect::TokenResponse::id_token(&tokens)
            .ok_or_else(|| PscError::Rejected("PSC returned no ID token".into()))?;
        let claims = match self.check_id_token(&d, id_token, nonce) {
            Err(PscError::Rejected(m)) if m.contains(NO_KEY) => {
                let d = self.refresh_keys().await?;
                self.check_id_token(&d, id_token, nonce)?
            }
            other => other?,
        };
        let acr = claims
            .auth_context_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let sub = claims.subject().clone();
        let access_token = openidconnect::OAuth2TokenResponse::access_token(&tokens).clone();
        let identity = self.read_userinfo(&d, access_token, Some(sub)).await?;
        Ok(SignedIn {
            identity,
            acr,
            id_token: id_token.to_string(),
        })
    }

    fn check_id_token(
        &self,
        d: &Discovered,
        id_token: &PscIdToken,
        nonce: &str,
    ) -> Result<IdTokenClaims<PscClaims, CoreGenderClaim>, PscError> {
        check_id_token(
            d.client.id_token_verifier(),
            id_token,
            &self.client_id,
            nonce,
            &self.accepted_acr,
        )
    }

    /// Userinfo of a PSC access token (the token exchange): JSON or a signed JWT.
    pub async fn userinfo(&self, token: &str) -> Result<Identity, PscError> {
        // the crate puts the token in a header and panics on a value a header cannot hold
        if token.is_empty() || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(PscError::Rejected("the subject token is malformed".into()));
        }
        let d = self.discovered().await?;
        self.read_userinfo(&d, AccessToken::new(token.to_owned()), None)
            .await
    }

    async fn read_userinfo(
        &self,
        d: &Discovered,
        token: AccessToken,
        expected: Option<SubjectIdentifier>,
    ) -> Result<Identity, PscError> {
        let request = d
            .client
            .user_info(token, expected)
            .map_err(|_| PscError::Unavailable("no userinfo_endpoint".into()))?;
        let info: UserInfoClaims<PscClaims, CoreGenderClaim> = request
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                UserInfoError::Response(status, _, _) if status.as_u16() == 401 => {
                    PscError::Rejected("userinfo refused the access token".into())
                }
                UserInfoError::Response(status, _, m) => {
                    PscError::Unavailable(format!("userinfo answered {status}: {m}"))
                }
                UserInfoError::Request(e) => PscError::Unavailable(format!("userinfo: {e}")),
                UserInfoError::ClaimsVerification(ClaimsVerificationError::InvalidSubject(_)) => {
                    PscError::Rejected("userinfo and the ID token name different subjects".into())
                }
                // the path only: serde's message may quote a claim
                UserInfoError::Parse(e) => {
                    PscError::Rejected(format!("userinfo cannot be read (at `{}`)", e.path()))
                }
                other => PscError::Rejected(format!("userinfo refused: {}", chain(&other))),
            })?;
        identity_of(&info)
    }

    /// Introspects a PSC access token (RFC 7662): active, from this issuer, issued to an
    /// exchange client, with an accepted `acr`. Returns the introspection answer.
    pub async fn introspect(&self, token: &str) -> Result<Value, PscError> {
        let endpoint = self
            .discovered()
            .await?
            .introspection_endpoint
            .clone()
            .ok_or_else(|| PscError::Unavailable("no introspection_endpoint".into()))?;
        let mut request = self.http.0.post(&endpoint);
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        match (&self.introspection_client_secret, self.mtls) {
            (Some(secret), _) => {
                request = request.basic_auth(&self.introspection_client_id, Some(secret.expose()));
            }
            // tls_client_auth: the certificate authenticates, the body names the client
            (None, true) => form.push(("client_id", &self.introspection_client_id)),
            (None, false) => {
                request = request.basic_auth(&self.introspection_client_id, None::<&str>);
            }
        }
        let resp = request
            .form(&form)
            .send()
            .await
            .map_err(|e| PscError::Unavailable(format!("introspection: {}", describe(e))))?;
        if !resp.status().is_success() {
            return Err(PscError::Unavailable(format!(
                "introspection answered {}",
                resp.status()
            )));
        }
        let answer: Value = resp
            .json()
            .await
            .map_err(|e| PscError::Unavailable(format!("introspection: {}", describe(e))))?;
        check_introspection(
            &answer,
            &self.issuer,
            &self.exchange_clients,
            &self.accepted_acr,
        )?;
        Ok(answer)
    }

    /// The URL of PSC's logout for a session's ID token, back to `post_logout_redirect`;
    /// `None` when PSC publishes no `end_session_endpoint` (or is unreachable).
    pub async fn logout_url(&self, id_token: &str, post_logout_redirect: &str) -> Option<String> {
        let d = self.discovered().await.ok()?;
        let endpoint = d
            .metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        let mut request =
            LogoutRequest::from(endpoint).set_client_id(ClientId::new(self.client_id.clone()));
        if let Ok(hint) = id_token.parse::<PscIdToken>() {
            request = request.set_id_token_hint(&hint);
        }
        if let Ok(back) = PostLogoutRedirectUrl::new(post_logout_redirect.to_owned()) {
            request = request.set_post_logout_redirect_uri(back);
        }
        Some(request.http_get_url().to_string())
    }
}

/// The marker of a signature made by a key the provider's JWKS does not (yet) hold.
const NO_KEY: &str = "no matching key";

/// Reads the discovery document into the crate's provider metadata; its issuer must be the
/// configured one (compared without a trailing slash).
pub fn read_discovery(bytes: &[u8], issuer: &str) -> Result<PscProviderMetadata, PscError> {
    let metadata: PscProviderMetadata = serde_json::from_slice(bytes)
        .map_err(|e| PscError::Unavailable(format!("discovery document unreadable: {e}")))?;
    let named = metadata.issuer().as_str().trim_end_matches('/');
    if named != issuer {
        return Err(PscError::Unavailable(format!(
            "the discovery document names issuer `{named}`, not the configured `{issuer}`"
        )));
    }
    Ok(metadata)
}

/// The checks of an ID token: signature (HS256 with the client secret, or a key of the
/// provider's JWKS), issuer, this client among the audiences (no untrusted other audience)
/// and as `azp` when present, not expired, the sign-in's nonce, an accepted `acr`.
pub fn check_id_token(
    verifier: IdTokenVerifier<'_, CoreJsonWebKey>,
    id_token: &PscIdToken,
    client_id: &str,
    nonce: &str,
    accepted_acr: &[String],
) -> Result<IdTokenClaims<PscClaims, CoreGenderClaim>, PscError> {
    let accepted = accepted_acr.to_vec();
    let verifier = verifier.set_auth_context_verifier_fn(move |acr| {
        let acr = acr.map(|a| a.as_str()).unwrap_or("");
        if accepted.iter().any(|a| a == acr) {
            Ok(())
        } else {
            Err(format!(
                "authentication level `{acr}` is not accepted ({})",
                accepted.join(", ")
            ))
        }
    });
    let nonce = Nonce::new(nonce.to_owned());
    let claims = id_token.claims(&verifier, &nonce).map_err(|e| match e {
        ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        ) => PscError::Rejected(format!("ID token refused: {NO_KEY}")),
        ClaimsVerificationError::InvalidAuthContext(m) => PscError::Rejected(m),
        other => PscError::Rejected(format!("ID token refused: {}", chain(&other))),
    })?;
    // the crate leaves `azp` alone (OIDC Core §3.1.3.7 step 5)
    if let Some(azp) = claims.authorized_party()
        && azp.as_str() != client_id
    {
        return Err(PscError::Rejected(
            "ID token refused: issued to another client (azp)".into(),
        ));
    }
    Ok(claims.clone())
}

/// The checks of an introspection answer for a token to exchange.
pub fn check_introspection(
    answer: &Value,
    issuer: &str,
    exchange_clients: &[String],
    accepted_acr: &[String],
) -> Result<(), PscError> {
    // Keycloak has been seen answering "true" as a string
    let active = answer["active"] == Value::Bool(true) || answer["active"] == "true";
    if !active {
        return Err(PscError::Rejected("the subject token is not active".into()));
    }
    if let Some(iss) = answer["iss"].as_str()
        && iss.trim_end_matches('/') != issuer
    {
        return Err(PscError::Rejected(format!(
            "the subject token was issued by `{iss}`, not by the configured issuer"
        )));
    }
    let client = answer["azp"]
        .as_str()
        .or_else(|| answer["client_id"].as_str())
        .unwrap_or("");
    if !exchange_clients.iter().any(|c| c == client) {
        return Err(PscError::Rejected(format!(
            "the subject token was issued to PSC client `{client}`, which may not exchange tokens here"
        )));
    }
    let acr = answer["acr"].as_str().unwrap_or("");
    if !accepted_acr.iter().any(|a| a == acr) {
        return Err(PscError::Rejected(format!(
            "the subject token's authentication level `{acr}` is not accepted ({})",
            accepted_acr.join(", ")
        )));
    }
    Ok(())
}

/// The clinician of a userinfo answer: `SubjectNameID` is required.
fn identity_of(info: &UserInfoClaims<PscClaims, CoreGenderClaim>) -> Result<Identity, PscError> {
    let claims = info.additional_claims().clone();
    let subject_name_id = claims
        .subject_name_id
        .clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| PscError::Rejected("userinfo has no SubjectNameID".into()))?;
    Ok(Identity {
        subject_name_id,
        sub: info.subject().as_str().to_owned(),
        given_name: info
            .given_name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
        family_name: info
            .family_name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned()),
        claims,
    })
}

/// Reads userinfo claims given as JSON (tests, and the shapes of PSC's samples).
pub fn identity_from_json(json: &[u8]) -> Result<Identity, PscError> {
    let info = UserInfoClaims::<PscClaims, CoreGenderClaim>::from_json::<HttpError>(json, None)
        .map_err(|e| PscError::Rejected(format!("userinfo unreadable: {}", chain(&e))))?;
    identity_of(&info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openidconnect::IssuerUrl;
    use serde_json::json;

    const SECRET: &str = "psc-test-client-secret-0123456789abcdef";

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/psc")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn psc_discovery_reads_into_the_crate_metadata() {
        let issuer = "http://localhost:8443/auth/realms/esante-wallet";
        let doc = sample("psc-discovery-mock-esante-wallet.json");
        let m = read_discovery(&doc, issuer).unwrap();
        let extra = &m.additional_metadata().additional_metadata;
        assert!(extra.introspection_endpoint.is_some());
        assert!(
            extra
                .mtls_endpoint_aliases
                .as_ref()
                .and_then(|a| a.token_endpoint.as_ref())
                .is_some()
        );
        assert!(m.additional_metadata().end_session_endpoint.is_some());
        let e = read_discovery(&doc, "https://other").err().unwrap();
        assert!(e.to_string().contains("names issuer"), "{e}");
    }

    #[test]
    fn psc_userinfo_samples_give_their_subject_name_id() {
        let id = identity_from_json(&sample("userinfo-hospital-doctor-2-exercices.json")).unwrap();
        assert_eq!(id.subject_name_id, "899700366240");
        assert!(id.sub.ends_with(":899700366240"));
        assert_eq!(id.family_name.as_deref(), Some("DOC0036624"));
        let ex = &id.claims.ref_pro.as_ref().unwrap().exercices[0];
        assert_eq!(ex.code_profession.as_deref(), Some("10"));
        assert_eq!(ex.code_savoir_faire.as_deref(), Some("SM26"));
        identity_from_json(&sample("userinfo-edit-test-identity-podologue.json")).unwrap();
        // OIDC userinfo always has `sub`: ANS's minimal sample leaves it out
        let mut minimal: Value =
            serde_json::from_slice(&sample("userinfo-minimal-doctor.json")).unwrap();
        let e = identity_from_json(minimal.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("sub"), "{e}");
        minimal["sub"] = json!("f:x:810000000000");
        identity_from_json(minimal.to_string().as_bytes()).unwrap();
        let e = identity_from_json(br#"{"sub": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("SubjectNameID"), "{e}");
    }

    fn hs256(claims: Value) -> PscIdToken {
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        jwt.parse().unwrap()
    }

    fn check(claims: Value) -> Result<(), String> {
        let verifier = IdTokenVerifier::new_confidential_client(
            ClientId::new("gw".into()),
            ClientSecret::new(SECRET.into()),
            IssuerUrl::new("https://psc".into()).unwrap(),
            JsonWebKeySet::default(),
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::HmacSha256]);
        check_id_token(verifier, &hs256(claims), "gw", "n", &["eidas1".to_owned()])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn ok() -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({"iss": "https://psc", "aud": "gw", "exp": now + 60, "iat": now, "nonce": "n",
               "acr": "eidas1", "sub": "f:x:899700366240", "SubjectNameID": "899700366240"})
    }

    #[test]
    fn id_token_refusals() {
        assert_eq!(check(ok()), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = ok();
            c[k] = v;
            c
        };
        let refused = |c: Value, word: &str| {
            let e = check(c).unwrap_err();
            assert!(e.contains(word), "`{e}` should say `{word}`");
        };
        refused(with("iss", json!("https://other")), "issuer");
        refused(with("aud", json!("other")), "audience");
        // another audience the gateway does not trust
        refused(with("aud", json!(["gw", "other"])), "audience");
        refused(with("azp", json!("other")), "azp");
        assert_eq!(check(with("azp", json!("gw"))), Ok(()));
        refused(
            with("exp", json!(jsonwebtoken::get_current_timestamp() - 10)),
            "xpired",
        );
        refused(with("nonce", json!("m")), "nonce");
        refused(with("acr", json!("eidas3")), "eidas3");
        refused(with("acr", Value::Null), "not accepted");
        // a signature by another secret
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &ok(),
            &jsonwebtoken::EncodingKey::from_secret(b"another secret, long enough 0123"),
        )
        .unwrap();
        let verifier = IdTokenVerifier::new_confidential_client(
            ClientId::new("gw".into()),
            ClientSecret::new(SECRET.into()),
            IssuerUrl::new("https://psc".into()).unwrap(),
            JsonWebKeySet::default(),
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::HmacSha256]);
        let e = check_id_token(
            verifier,
            &forged.parse().unwrap(),
            "gw",
            "n",
            &["eidas1".to_owned()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("ignature"), "{e}");
        // an algorithm the verifier does not allow (RS256 expected, HS256 given)
        let rs_only = IdTokenVerifier::new_public_client(
            ClientId::new("gw".into()),
            IssuerUrl::new("https://psc".into()).unwrap(),
            JsonWebKeySet::default(),
        );
        assert!(check_id_token(rs_only, &hs256(ok()), "gw", "n", &["eidas1".to_owned()]).is_err());
    }

    #[test]
    fn introspection_refusals() {
        let ok = json!({"active": true, "iss": "https://psc/", "azp": "gw", "acr": "eidas1"});
        let check = |a: &Value| {
            check_introspection(a, "https://psc", &["gw".to_owned()], &["eidas1".to_owned()])
        };
        assert!(check(&ok).is_ok());
        let mut s = ok.clone();
        s["active"] = json!("true");
        assert!(check(&s).is_ok(), "Keycloak's string boolean");
        for (k, v, word) in [
            ("active", json!(false), "not active"),
            ("iss", json!("https://other"), "issued by"),
            ("azp", json!("other"), "PSC client `other`"),
            ("acr", json!("eidas3"), "eidas3"),
        ] {
            let mut a = ok.clone();
            a[k] = v;
            let e = check(&a).unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
    }
}
