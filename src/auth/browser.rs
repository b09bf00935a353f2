//! PSC sign-in for browsers: `/auth/login` → PSC (authorization code, PKCE S256, `state`,
//! `nonce`, `acr_values`) → `/auth/callback` (code exchanged, ID token and userinfo checked by
//! `psc`, the account made or brought up to date by `accounts`) → a server-side session
//! behind an `HttpOnly; SameSite=Lax` cookie (`Secure` on https), with PSC's own limits (idle
//! and absolute); `/auth/logout` ends it and sends the browser to PSC's
//! `end_session_endpoint`. Sign-ins under way and sessions live in the database
//! (`store::auth_state`), so every instance on one PostgreSQL shares them; the `state` and
//! the session id are stored only as hashes. The FHIR API never reads this cookie.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::accounts::{self, Account};
use super::keys::random_id;
use super::psc::{Identity, Psc, PscError};
use crate::fhir::interaction::Fhir;
use crate::store::{PendingSignIn, SessionRow, Store, StoreError};
use crate::time::Micros;

pub const SESSION_COOKIE: &str = "passerelle_session";
/// How long a started sign-in may take at PSC.
const PENDING_MICROS: Micros = 10 * 60 * 1_000_000;

/// A signed-in clinician.
pub type Session = SessionRow;

/// Sessions and sign-ins (their rows are in the database).
pub struct Browser {
    idle: Micros,
    absolute: Micros,
    pub secure_cookie: bool,
    pub logged_out_url: String,
    scopes: Vec<String>,
    acr_values: Vec<String>,
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
    /// The database or the account write failed: 500.
    #[error("{0}")]
    Internal(String),
}

impl From<PscError> for SignInError {
    fn from(e: PscError) -> SignInError {
        match e {
            PscError::Rejected(m) => SignInError::Refused(m),
            other => SignInError::Unavailable(other.to_string()),
        }
    }
}

impl From<StoreError> for SignInError {
    fn from(e: StoreError) -> SignInError {
        tracing::error!(error = %e, "sign-in state: storage error");
        SignInError::Internal("storage error".into())
    }
}

/// A completed sign-in: the new session's id (the cookie value), who, and their account.
#[derive(Debug)]
pub struct Opened {
    pub session_id: String,
    pub identity: Identity,
    pub account: Account,
}

/// The stored key of a `state` or a session id: its SHA-256, so a copy of the table gives
/// no usable cookie.
pub fn hash_key(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

impl Browser {
    pub fn new(
        base: &str,
        scopes: &[String],
        acr_values: &[String],
        idle_minutes: u32,
        max_hours: u32,
    ) -> Browser {
        let minute: Micros = 60 * 1_000_000;
        Browser {
            idle: Micros::from(idle_minutes) * minute,
            absolute: Micros::from(max_hours) * 60 * minute,
            secure_cookie: base.starts_with("https://"),
            logged_out_url: format!("{base}/auth/logged-out"),
            scopes: scopes.to_vec(),
            acr_values: acr_values.to_vec(),
        }
    }

    /// The PSC authorization URL of a new sign-in.
    pub async fn start(&self, psc: &Psc, store: &Store) -> Result<String, SignInError> {
        let state = random_id();
        let nonce = random_id();
        let (url, verifier) = psc
            .authorization_url(&self.scopes, &self.acr_values, state.clone(), nonce.clone())
            .await?;
        let now = store.clock().now();
        let pending = PendingSignIn {
            nonce,
            verifier,
            created: now,
        };
        let key = hash_key(&state);
        store
            .write(move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .put_pending_sign_in(&key, &pending, now - PENDING_MICROS)
                        .await
                })
            })
            .await?;
        Ok(url)
    }

    /// Drops a sign-in under way (PSC answered an error); whether it was known.
    pub async fn forget(&self, store: &Store, state: &str) -> Result<bool, SignInError> {
        Ok(take_pending(store, state).await?.is_some())
    }

    /// Completes a sign-in from the callback's `state` and `code`: the account is made (first
    /// sign-in) or brought up to date, and a session opened.
    pub async fn finish(
        &self,
        psc: &Psc,
        fhir: &Arc<Fhir>,
        state: &str,
        code: &str,
    ) -> Result<Opened, SignInError> {
        let store = &fhir.store;
        let now = store.clock().now();
        let pending = take_pending(store, state)
            .await?
            .filter(|p| now - p.created < PENDING_MICROS)
            .ok_or_else(|| {
                SignInError::BadRequest("unknown, expired or already used sign-in state".into())
            })?;
        let signed_in = psc.sign_in(code, &pending.verifier, &pending.nonce).await?;
        let account = accounts::ensure_practitioner(fhir, &signed_in.identity)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "sign-in: the account could not be written");
                SignInError::Internal("the account could not be written".into())
            })?;
        let identity = signed_in.identity;
        let row = SessionRow {
            subject_name_id: identity.subject_name_id.clone(),
            practitioner: account.reference(),
            given_name: identity.given_name.clone(),
            family_name: identity.family_name.clone(),
            acr: signed_in.acr,
            id_token: signed_in.id_token,
            created: now,
            last_seen: now,
        };
        let session_id = random_id();
        let key = hash_key(&session_id);
        let (idle_before, absolute_before) = (now - self.idle, now - self.absolute);
        store
            .write(move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .put_session(&key, &row, idle_before, absolute_before)
                        .await
                })
            })
            .await?;
        Ok(Opened {
            session_id,
            identity,
            account,
        })
    }

    /// The session of a cookie value, if alive (and then touched).
    pub async fn session(&self, store: &Store, id: &str) -> Result<Option<Session>, SignInError> {
        let now = store.clock().now();
        let key = hash_key(id);
        let (idle_before, absolute_before) = (now - self.idle, now - self.absolute);
        Ok(store
            .write(move |tx| {
                Box::pin(async move {
                    tx.conn()
                        .touch_session(&key, now, idle_before, absolute_before)
                        .await
                })
            })
            .await?)
    }

    /// Ends a session (for every instance); returns it (its ID token is the
    /// `id_token_hint` of PSC's logout).
    pub async fn end(&self, store: &Store, id: &str) -> Result<Option<Session>, SignInError> {
        let key = hash_key(id);
        Ok(store
            .write(move |tx| Box::pin(async move { tx.conn().end_session(&key).await }))
            .await?)
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

async fn take_pending(store: &Store, state: &str) -> Result<Option<PendingSignIn>, SignInError> {
    let key = hash_key(state);
    Ok(store
        .write(move |tx| Box::pin(async move { tx.conn().take_pending_sign_in(&key).await }))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_flags() {
        let b = Browser::new("https://gw.example.fr", &[], &[], 30, 4);
        let c = b.cookie(Some("abc"));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("; Secure"));
        assert_eq!(b.logged_out_url, "https://gw.example.fr/auth/logged-out");
        let b = Browser::new("http://127.0.0.1:1", &[], &[], 30, 4);
        assert!(!b.cookie(Some("abc")).contains("Secure"));
        assert!(b.cookie(None).contains("Max-Age=0"));
    }

    #[test]
    fn stored_keys_are_hashes() {
        let id = random_id();
        let k = hash_key(&id);
        assert_ne!(k, id);
        assert_eq!(k.len(), 43);
        assert_eq!(k, hash_key(&id));
    }
}
