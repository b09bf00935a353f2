//! PSC sign-in for browsers: `/auth/login` → PSC (authorization code, PKCE S256, `state`,
//! `nonce`, `acr_values`) → `/auth/callback` (code exchanged with `client_secret_basic`, ID
//! token and userinfo checked) → a server-side session behind an `HttpOnly; SameSite=Lax`
//! cookie (`Secure` on https), with PSC's own limits (idle and absolute); `/auth/logout`
//! ends it and sends the browser to PSC's `end_session_endpoint`. The FHIR API never reads
//! this cookie.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::random_id;
use super::psc::{Psc, PscError};
use crate::time::Micros;

pub const SESSION_COOKIE: &str = "passerelle_session";
/// How long a started sign-in may take at PSC.
const PENDING_MICROS: Micros = 10 * 60 * 1_000_000;

/// A sign-in under way, keyed by its `state`.
struct Pending {
    nonce: String,
    verifier: String,
    started: Micros,
}

/// A signed-in clinician.
#[derive(Debug, Clone)]
pub struct Session {
    pub subject_name_id: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub acr: String,
    id_token: String,
    created: Micros,
    last_seen: Micros,
}

/// The sessions and sign-ins of this process (one instance: a shared store is future work).
pub struct Browser {
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
    idle: Micros,
    absolute: Micros,
    pub secure_cookie: bool,
    pub redirect_url: String,
    pub logged_out_url: String,
    scopes: String,
    acr_values: String,
}

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Unknown or used `state` (replayed or forged callback): 400.
    #[error("{0}")]
    BadRequest(String),
    /// PSC or its tokens refused the sign-in: 401.
    #[error("{0}")]
    Refused(String),
    /// PSC unreachable: 502.
    #[error("{0}")]
    Unavailable(String),
}

impl From<PscError> for SignInError {
    fn from(e: PscError) -> SignInError {
        match e {
            PscError::Rejected(m) => SignInError::Refused(m),
            other => SignInError::Unavailable(other.to_string()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // a panic while holding these maps leaves them consistent: keep serving
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Browser {
    pub fn new(
        base: &str,
        redirect_url: Option<&str>,
        scopes: &[String],
        acr_values: &[String],
        idle_minutes: u32,
        max_hours: u32,
    ) -> Browser {
        let minute: Micros = 60 * 1_000_000;
        Browser {
            pending: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            idle: Micros::from(idle_minutes) * minute,
            absolute: Micros::from(max_hours) * 60 * minute,
            secure_cookie: base.starts_with("https://"),
            redirect_url: redirect_url
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{base}/auth/callback")),
            logged_out_url: format!("{base}/auth/logged-out"),
            scopes: scopes.join(" "),
            acr_values: acr_values.join(" "),
        }
    }

    /// The PSC authorization URL of a new sign-in.
    pub async fn start(&self, psc: &Psc, now: Micros) -> Result<String, SignInError> {
        let endpoint = psc
            .discovery()
            .await?
            .authorization_endpoint
            .clone()
            .ok_or_else(|| SignInError::Unavailable("no authorization_endpoint".into()))?;
        let state = random_id();
        let nonce = random_id();
        let verifier = random_id();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let mut url = reqwest::Url::parse(&endpoint)
            .map_err(|_| SignInError::Unavailable("bad authorization_endpoint".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &psc.client_id)
            .append_pair("redirect_uri", &self.redirect_url)
            .append_pair("scope", &self.scopes)
            .append_pair("acr_values", &self.acr_values)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| now - p.started < PENDING_MICROS);
        pending.insert(
            state,
            Pending {
                nonce,
                verifier,
                started: now,
            },
        );
        Ok(url.to_string())
    }

    /// Drops a sign-in under way (PSC answered an error); whether it was known.
    pub fn forget(&self, state: &str) -> bool {
        lock(&self.pending).remove(state).is_some()
    }

    /// Completes a sign-in from the callback's `state` and `code`; returns the new session id.
    pub async fn finish(
        &self,
        psc: &Psc,
        state: &str,
        code: &str,
        now: Micros,
    ) -> Result<String, SignInError> {
        let pending = lock(&self.pending)
            .remove(state)
            .filter(|p| now - p.started < PENDING_MICROS)
            .ok_or_else(|| {
                SignInError::BadRequest("unknown, expired or already used sign-in state".into())
            })?;
        let tokens = psc
            .redeem_code(code, &self.redirect_url, &pending.verifier)
            .await?;
        let id_token = tokens["id_token"]
            .as_str()
            .ok_or_else(|| SignInError::Refused("PSC returned no ID token".into()))?;
        let access_token = tokens["access_token"]
            .as_str()
            .ok_or_else(|| SignInError::Refused("PSC returned no access token".into()))?;
        let claims = psc.verify_jwt(id_token).await?;
        // token lifetimes are PSC's wall-clock time, not the gateway's (injectable) clock
        let now_s = jsonwebtoken::get_current_timestamp();
        check_id_token(
            &claims,
            &psc.issuer,
            &psc.client_id,
            &pending.nonce,
            &psc.accepted_acr,
            now_s,
        )
        .map_err(SignInError::Refused)?;
        let identity = psc.userinfo(access_token).await?;
        if identity.userinfo["sub"] != claims["sub"] {
            return Err(SignInError::Refused(
                "userinfo and the ID token name different subjects".into(),
            ));
        }
        let text = |k: &str| identity.userinfo[k].as_str().map(str::to_owned);
        let session = Session {
            given_name: text("given_name"),
            family_name: text("family_name"),
            subject_name_id: identity.subject_name_id,
            acr: claims["acr"].as_str().unwrap_or("").to_owned(),
            id_token: id_token.to_owned(),
            created: now,
            last_seen: now,
        };
        let id = random_id();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| self.alive(s, now));
        sessions.insert(id.clone(), session);
        Ok(id)
    }

    fn alive(&self, s: &Session, now: Micros) -> bool {
        now - s.last_seen < self.idle && now - s.created < self.absolute
    }

    /// The session of a cookie value, if alive (and then touched).
    pub fn session(&self, id: &str, now: Micros) -> Option<Session> {
        let mut sessions = lock(&self.sessions);
        let alive = sessions.get(id).is_some_and(|s| self.alive(s, now));
        if !alive {
            sessions.remove(id);
            return None;
        }
        let s = sessions.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Ends a session; returns its ID token (the `id_token_hint` of PSC's logout).
    pub fn end(&self, id: &str) -> Option<String> {
        lock(&self.sessions).remove(id).map(|s| s.id_token)
    }

    /// The `Set-Cookie` value of a session (or of its removal, with `None`).
    pub fn cookie(&self, id: Option<&str>) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        match id {
            Some(id) => format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax{secure}"),
            None => format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax{secure}; Max-Age=0"),
        }
    }
}

/// The checks of an ID token's claims (its signature and issuer are checked before): the
/// issuer, this client among the audiences (and as `azp` when there are several), not
/// expired, the sign-in's nonce, an accepted `acr`.
pub fn check_id_token(
    claims: &Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    accepted_acr: &[String],
    now: u64,
) -> Result<(), String> {
    if claims["iss"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer) {
        return Err("ID token from another issuer".into());
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client_id) {
        return Err("ID token for another client (aud)".into());
    }
    if audiences.len() > 1 && claims["azp"].as_str() != Some(client_id) {
        return Err("ID token for another client (azp)".into());
    }
    match claims["exp"].as_u64() {
        Some(exp) if exp + 30 > now => {}
        _ => return Err("ID token expired".into()),
    }
    if claims["nonce"].as_str() != Some(nonce) {
        return Err("ID token nonce does not match the sign-in".into());
    }
    let acr = claims["acr"].as_str().unwrap_or("");
    if !accepted_acr.iter().any(|a| a == acr) {
        return Err(format!(
            "authentication level `{acr}` is not accepted ({})",
            accepted_acr.join(", ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok() -> Value {
        json!({"iss": "https://psc", "aud": "gw", "exp": 1000, "nonce": "n", "acr": "eidas1", "sub": "s"})
    }

    fn check(c: &Value) -> Result<(), String> {
        check_id_token(c, "https://psc", "gw", "n", &["eidas1".to_owned()], 900)
    }

    #[test]
    fn id_token_refusals() {
        assert_eq!(check(&ok()), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = ok();
            c[k] = v;
            c
        };
        assert!(
            check(&with("iss", json!("https://other")))
                .unwrap_err()
                .contains("issuer")
        );
        assert!(
            check(&with("aud", json!("other")))
                .unwrap_err()
                .contains("aud")
        );
        assert!(
            check(&with("aud", json!(["gw", "other"])))
                .unwrap_err()
                .contains("azp")
        );
        let mut multi = with("aud", json!(["gw", "other"]));
        multi["azp"] = json!("gw");
        assert_eq!(check(&multi), Ok(()));
        assert!(
            check(&with("exp", json!(800)))
                .unwrap_err()
                .contains("expired")
        );
        assert!(
            check(&with("nonce", json!("m")))
                .unwrap_err()
                .contains("nonce")
        );
        assert!(
            check(&with("acr", json!("eidas3")))
                .unwrap_err()
                .contains("eidas3")
        );
        assert!(check(&with("acr", Value::Null)).is_err());
    }

    #[test]
    fn cookie_flags() {
        let b = Browser::new("https://gw.example.fr", None, &[], &[], 30, 4);
        let c = b.cookie(Some("abc"));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("; Secure"));
        assert_eq!(b.redirect_url, "https://gw.example.fr/auth/callback");
        let b = Browser::new("http://127.0.0.1:1", None, &[], &[], 30, 4);
        assert!(!b.cookie(Some("abc")).contains("Secure"));
        assert!(b.cookie(None).contains("Max-Age=0"));
    }
}
