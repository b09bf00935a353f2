//! The ROR HTTP client: OAuth2 client credentials (secret or mutual TLS), the token renewed
//! before it expires and once more on a 401, the four `Ror-*` headers on every FHIR call,
//! retries with back-off on 429 (honouring `Retry-After`, capped), 5xx and network errors —
//! not on a TLS refusal (a certificate problem, which retrying does not fix) —, a timeout
//! per request. Tokens and secrets are never logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::RorConfig;

pub const PROFILE_SYSTEM: &str = "1.2.250.1.213.1.6.1.66";
pub const ROLE_SYSTEM: &str = "1.2.250.1.213.1.1.4.6";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ror configuration: {0}")]
    Config(String),
    #[error("ROR token endpoint {url}: {message}")]
    Token { url: String, message: String },
    #[error("ROR {url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("ROR {url}: {message}")]
    Network { url: String, message: String },
    #[error("ROR {url}: the answer is not what was expected: {message}")]
    Protocol { url: String, message: String },
}

/// What the client needs, taken from `[ror]`.
#[derive(Clone)]
pub struct Settings {
    pub base_url: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Mutual TLS identity and extra roots.
    pub tls: crate::http_client::TlsFiles,
    pub user_profile_code: String,
    pub business_role_code: String,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub export_poll: Duration,
}

impl Settings {
    pub fn from_config(c: &RorConfig) -> Result<Settings, ClientError> {
        let need = |v: &Option<String>, key: &str| {
            v.clone()
                .ok_or_else(|| ClientError::Config(format!("`ror.{key}` is not set")))
        };
        let read = |p: &std::path::Path, key: &str| {
            std::fs::read(p)
                .map_err(|e| ClientError::Config(format!("`ror.{key}` {}: {e}", p.display())))
        };
        let client_secret = match (&c.client_secret, &c.client_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(f)) => {
                let bytes = read(f, "client_secret_file")?;
                let text = String::from_utf8_lossy(&bytes);
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            (None, None) => None,
        };
        let tls = crate::http_client::TlsFiles::read(
            "ror",
            c.tls_client_cert.as_deref(),
            c.tls_client_key.as_deref(),
            c.tls_ca_file.as_deref(),
        )
        .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Settings {
            base_url: need(&c.base_url, "base_url")?
                .trim_end_matches('/')
                .to_owned(),
            token_url: need(&c.token_url, "token_url")?,
            client_id: need(&c.client_id, "client_id")?,
            client_secret,
            tls,
            user_profile_code: need(&c.user_profile_code, "user_profile_code")?,
            business_role_code: need(&c.business_role_code, "business_role_code")?,
            timeout: Duration::from_secs(c.timeout_seconds.max(1)),
            max_retries: c.max_retries,
            retry_base: Duration::from_millis(c.retry_base_ms),
            retry_max: Duration::from_millis(c.retry_max_ms),
            export_poll: Duration::from_millis(c.export_poll_ms),
        })
    }
}

struct Token {
    value: String,
    /// Renew after this instant (the expiry less a margin).
    renew_at: Instant,
}

/// Counters of what the client did, for the sync report.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub tokens: AtomicU64,
}

pub struct RorClient {
    http: reqwest::Client,
    pub settings: Settings,
    token: Mutex<Option<Token>>,
    pub counters: Counters,
}

impl RorClient {
    pub fn new(settings: Settings) -> Result<RorClient, ClientError> {
        // `timeout` bounds each request whole, except the downloads of export files, which
        // may take long: those are bounded per read (`read_timeout`) instead.
        let http = settings
            .tls
            .builder("ror")
            .map_err(|e| ClientError::Config(e.to_string()))?
            .read_timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(RorClient {
            http,
            settings,
            token: Mutex::new(None),
            counters: Counters::default(),
        })
    }

    /// The FHIR base of the ROR, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.settings.base_url
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .settings
            .retry_base
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
        retry_after.unwrap_or(exp).min(self.settings.retry_max)
    }

    /// A bearer token, fetched (or renewed) when needed.
    async fn token(&self, force: bool) -> Result<String, ClientError> {
        let mut slot = self.token.lock().await;
        if !force
            && let Some(t) = slot.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let s = &self.settings;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            form.append_pair("client_id", &s.client_id);
            if let Some(secret) = &s.client_secret {
                form.append_pair("client_secret", secret);
            }
            form.finish()
        };
        let err = |message: String| ClientError::Token {
            url: s.token_url.clone(),
            message,
        };
        let mut attempt = 0;
        let answer = loop {
            let sent = self
                .http
                .post(&s.token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(body.clone())
                .timeout(s.timeout)
                .send()
                .await;
            let retry_after = match &sent {
                Ok(r) if r.status().is_success() => break sent,
                Ok(r) if retryable(r.status()) => retry_after(r),
                Ok(_) => break sent,
                Err(e) if tls_refusal(e).is_some() => break sent,
                Err(_) => None,
            };
            if attempt >= s.max_retries {
                break sent;
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.backoff(attempt, retry_after)).await;
            attempt += 1;
        };
        let r = answer.map_err(|e| err(causes(&e)))?;
        let status = r.status();
        let text = r.text().await.map_err(|e| err(causes(&e)))?;
        if !status.is_success() {
            // the body of a refusal names the error, never the secret we sent
            return Err(err(format!("HTTP {}: {}", status.as_u16(), excerpt(&text))));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        let value = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| err("no access_token in the answer".into()))?
            .to_owned();
        let lifetime = v.get("expires_in").and_then(Value::as_u64).unwrap_or(300);
        // renew a little before it expires (a tenth of its life, at most 30 s)
        let margin = (lifetime / 10).min(30);
        self.counters.tokens.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(lifetime, "ror: new access token");
        *slot = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + Duration::from_secs(lifetime.saturating_sub(margin)),
        });
        Ok(value)
    }

    /// Sends an authenticated FHIR request (the four `Ror-*` headers, the bearer token),
    /// retrying on 429/5xx/network errors and renewing the token once on a 401. Answers
    /// the successful response (2xx).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        prefer_async: bool,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_with(method, url, prefer_async, true).await
    }

    /// `send`, with or without the whole-request timeout (a streamed download has only
    /// the per-read one).
    async fn send_with(
        &self,
        method: Method,
        url: &str,
        prefer_async: bool,
        whole_timeout: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let s = &self.settings;
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            let token = self.token(false).await?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(&token)
                .header("accept", "application/fhir+json")
                .header("Ror-Profil-Utilisateur-Code", &s.user_profile_code)
                .header("Ror-Profil-Utilisateur-System", PROFILE_SYSTEM)
                .header("Ror-Role-Metier-Code", &s.business_role_code)
                .header("Ror-Role-Metier-System", ROLE_SYSTEM);
            if prefer_async {
                req = req.header("prefer", "respond-async");
            }
            if whole_timeout {
                req = req.timeout(s.timeout);
            }
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let (retry_after, why) = match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !renewed => {
                    // expired or revoked during a long run: renew once, right away
                    tracing::info!("ror: token refused (401); renewing it");
                    renewed = true;
                    self.token(true).await?;
                    continue;
                }
                Ok(r) if retryable(r.status()) => {
                    (retry_after(&r), format!("HTTP {}", r.status().as_u16()))
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap_or_default();
                    return Err(ClientError::Status {
                        url: url.to_owned(),
                        status,
                        message: excerpt(&text),
                    });
                }
                Err(e) if tls_refusal(&e).is_some() => {
                    return Err(ClientError::Network {
                        url: url.to_owned(),
                        message: causes(&e),
                    });
                }
                Err(e) => (None, causes(&e)),
            };
            if attempt >= s.max_retries {
                return Err(ClientError::Network {
                    url: url.to_owned(),
                    message: format!("{why}, still after {} retries", s.max_retries),
                });
            }
            let delay = self.backoff(attempt, retry_after);
            tracing::warn!(url, reason = %why, attempt = attempt + 1, delay_ms = delay.as_millis() as u64, "ror: retrying");
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// GET of a JSON document (a search page, an export manifest).
    pub async fn get_json(&self, url: &str) -> Result<Value, ClientError> {
        let r = self.send(Method::GET, url, false).await?;
        let text = r.text().await.map_err(|e| ClientError::Network {
            url: url.to_owned(),
            message: causes(&e),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            message: format!("not JSON: {e}"),
        })
    }

    /// Kicks off a bulk `$export`; answers the status URL to poll (`Content-Location`).
    pub async fn export_kick_off(&self, url: &str) -> Result<String, ClientError> {
        let r = self.send(Method::GET, url, true).await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(ClientError::Protocol {
                url: url.to_owned(),
                message: format!("$export answered {} instead of 202", r.status().as_u16()),
            });
        }
        r.headers()
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .map(|s| self.absolute(s))
            .ok_or_else(|| ClientError::Protocol {
                url: url.to_owned(),
                message: "202 without Content-Location".into(),
            })
    }

    /// Polls an export job until it completes; answers its manifest.
    pub async fn export_wait(&self, status_url: &str) -> Result<Value, ClientError> {
        loop {
            let r = self.send(Method::GET, status_url, false).await?;
            if r.status() == StatusCode::ACCEPTED {
                let wait = retry_after(&r)
                    .unwrap_or(self.settings.export_poll)
                    .min(self.settings.retry_max.max(self.settings.export_poll));
                let progress = r
                    .headers()
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                tracing::info!(progress, "ror: $export in progress");
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = r.text().await.map_err(|e| ClientError::Network {
                url: status_url.to_owned(),
                message: causes(&e),
            })?;
            return serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
                url: status_url.to_owned(),
                message: format!("export manifest is not JSON: {e}"),
            });
        }
    }

    /// Opens an export output file to read line by line, without holding it in memory.
    pub async fn open_lines(&self, url: &str) -> Result<Lines, ClientError> {
        let r = self.send_with(Method::GET, url, false, false).await?;
        Ok(Lines {
            url: url.to_owned(),
            response: r,
            buf: Vec::new(),
            done: false,
        })
    }

    /// A link of the ROR (relative or absolute) as an absolute URL.
    pub fn absolute(&self, link: &str) -> String {
        if link.starts_with("http://") || link.starts_with("https://") {
            link.to_owned()
        } else {
            format!("{}/{}", self.base(), link.trim_start_matches('/'))
        }
    }
}

/// The lines of a streamed body (ndjson).
pub struct Lines {
    url: String,
    response: reqwest::Response,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    /// The next non-empty line, or `None` at the end.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line).trim().to_owned();
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(text));
            }
            if self.done {
                let rest = std::mem::take(&mut self.buf);
                let text = String::from_utf8_lossy(&rest).trim().to_owned();
                return Ok((!text.is_empty()).then_some(text));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => self.done = true,
                Err(e) => {
                    return Err(ClientError::Network {
                        url: self.url.clone(),
                        message: causes(&e),
                    });
                }
            }
        }
    }
}

fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// `Retry-After` in seconds (the HTTP-date form is read as "soon").
fn retry_after(r: &reqwest::Response) -> Option<Duration> {
    let v = r.headers().get("retry-after")?.to_str().ok()?;
    Some(Duration::from_secs(v.trim().parse().unwrap_or(1)))
}

/// The TLS error (rustls) behind a failed request, if there is one: a handshake refused
/// either way (an alert from the ROR, its certificate not trusted here). Found by type along
/// the causes; an `io::Error`'s `source` skips what it wraps, so it is looked into.
fn tls_refusal<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    None
}

/// An error with its causes (`error sending request … : … : invalid peer certificate:
/// UnknownIssuer`): reqwest's own message does not say that TLS, or which certificate, failed.
/// Never a secret: the causes name URLs, addresses and TLS alerts.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn excerpt(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    t.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn errors_say_their_causes_once() {
        let e = Layer(
            "error sending request for url (https://ror/token)",
            Some(Box::new(Layer(
                "client error (Connect)",
                Some(Box::new(Layer(
                    "invalid peer certificate: UnknownIssuer",
                    Some(Box::new(Layer("UnknownIssuer", None))),
                ))),
            ))),
        );
        assert_eq!(
            causes(&e),
            "error sending request for url (https://ror/token): client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(causes(&Layer("alone", None)), "alone");
    }

    #[test]
    fn tls_refusals_are_found_by_type() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert.clone());
        assert_eq!(tls_refusal(&io), Some(&alert));
        let nested = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            alert.clone(),
        ));
        assert_eq!(tls_refusal(&nested), Some(&alert));
        let behind = Layer("client error (Connect)", None);
        assert_eq!(tls_refusal(&behind), None);
        assert_eq!(tls_refusal(&alert), Some(&alert));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(tls_refusal(&plain), None);
        assert_eq!(tls_refusal(&Layer("not ready", None)), None);
    }
}
