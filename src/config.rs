//! Configuration: a TOML file (`--config FILE` or `PASSERELLE_CONFIG`) with environment
//! variables on top. Nested keys map to variables with a double underscore
//! (`[psc] issuer` ↔ `PASSERELLE_PSC__ISSUER`); the three contract variables
//! `PASSERELLE_LISTEN`, `DATABASE_URL` and `PASSERELLE_BASE_URL` are read as well.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket address the HTTP server binds to.
    pub listen: String,
    /// `sqlite://FILE` (created on first start) or `postgres://…`.
    pub database_url: String,
    /// Public base of the server, without `/fhir`; used in `Location`, `fullUrl` and links.
    pub base_url: Option<String>,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Default and largest `_count` of a search page.
    pub default_page_size: usize,
    pub max_page_size: usize,
    /// Connections kept to the database (readers, for SQLite).
    pub db_pool_size: u32,
    /// SQLite `synchronous=FULL` (true, every answered write is on disk) or `NORMAL`.
    pub sqlite_durable: bool,
    /// Megabytes of the SQLite file its readers map into memory (0: none). Faster searches;
    /// the price is that a disk read error ends the process (SIGBUS) instead of one request.
    pub sqlite_mmap_mb: u64,
    /// Log lines as JSON objects instead of text.
    pub log_json: bool,
    /// The admission workflow's delays and timer (`[workflow]`).
    pub workflow: WorkflowConfig,
    /// Pro Santé Connect (`[psc]`): when its `issuer` is set the gateway runs in `psc` auth
    /// mode (bearer gateway tokens only); otherwise in `dev` mode.
    pub psc: Option<PscConfig>,
    /// Gateway tokens and system clients (`[auth]`, `[[auth.clients]]`).
    pub auth: AuthConfig,
    /// The ROR directory synchronisation (`[ror]`); off while `base_url` is unset.
    pub ror: RorConfig,
}

/// `[ror]`: where and how the directory is pulled from the ROR (contract §5, §7).
/// Secrets (`client_secret`) are never logged: `Debug` hides them.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RorConfig {
    /// FHIR base of the ROR, e.g. `https://api-fhir.ror.esante.gouv.fr/ws-diffusion-fhir`.
    pub base_url: Option<String>,
    /// OAuth2 token endpoint (client credentials).
    pub token_url: Option<String>,
    #[serde(deserialize_with = "text_or_number")]
    pub client_id: Option<String>,
    #[serde(deserialize_with = "text_or_number")]
    pub client_secret: Option<String>,
    /// A file holding the client secret (first line), instead of `client_secret`.
    pub client_secret_file: Option<PathBuf>,
    /// Mutual TLS: PEM certificate and key (IGC-Santé ORG/AUTH_CLI).
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Extra trusted roots (PEM), e.g. the IGC-Santé chain.
    pub tls_ca_file: Option<PathBuf>,
    /// Value of `Ror-Profil-Utilisateur-Code` (e.g. `CU20`).
    #[serde(deserialize_with = "text_or_number")]
    pub user_profile_code: Option<String>,
    /// Value of `Ror-Role-Metier-Code` (e.g. `AUTOMATE`).
    #[serde(deserialize_with = "text_or_number")]
    pub business_role_code: Option<String>,
    /// Region code (TRE_R30) to restrict the sync to; all regions when unset.
    #[serde(deserialize_with = "text_or_number")]
    pub region: Option<String>,
    /// When the server runs a delta sync: `daily HH:MM` (UTC).
    pub delta_schedule: String,
    /// When the server runs a full sync: `weekly DAY HH:MM` or `daily HH:MM` (UTC).
    pub full_schedule: String,
    /// The mapping file (default: the `mappings/ror.json` compiled into the binary).
    pub mapping_file: Option<PathBuf>,
    /// Full syncs through the bulk `$export` route (true) or by paging searches (false).
    pub use_export: bool,
    /// `_count` asked of the ROR per page.
    pub page_size: usize,
    /// Timeout of one HTTP request, in seconds.
    pub timeout_seconds: u64,
    /// Attempts after the first on 429, 5xx and network errors.
    pub max_retries: u32,
    /// First back-off delay (doubled at each retry) and the cap of any delay, `Retry-After`
    /// included, in milliseconds.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Delay between two polls of a `$export` job, in milliseconds (or its `Retry-After`,
    /// capped by `retry_max_ms`).
    pub export_poll_ms: u64,
}

impl Default for RorConfig {
    fn default() -> Self {
        RorConfig {
            base_url: None,
            token_url: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            tls_ca_file: None,
            user_profile_code: None,
            business_role_code: None,
            region: None,
            delta_schedule: "daily 03:00".into(),
            full_schedule: "weekly sun 01:00".into(),
            mapping_file: None,
            use_export: true,
            page_size: 200,
            timeout_seconds: 60,
            max_retries: 5,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            export_poll_ms: 5000,
        }
    }
}

impl std::fmt::Debug for RorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RorConfig")
            .field("base_url", &self.base_url)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("region", &self.region)
            .field("delta_schedule", &self.delta_schedule)
            .field("full_schedule", &self.full_schedule)
            .finish_non_exhaustive()
    }
}

impl RorConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("ror.{key}"),
            message,
        };
        for (key, url) in [("base_url", &self.base_url), ("token_url", &self.token_url)] {
            if let Some(u) = url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(invalid(key, format!("`{u}` is not an http(s) URL")));
            }
        }
        if self.base_url.is_some() {
            for (key, v) in [
                ("token_url", self.token_url.is_some()),
                ("client_id", self.client_id.is_some()),
                ("user_profile_code", self.user_profile_code.is_some()),
                ("business_role_code", self.business_role_code.is_some()),
            ] {
                if !v {
                    return Err(invalid(key, "required when ror.base_url is set".into()));
                }
            }
            let mtls = self.tls_client_cert.is_some() && self.tls_client_key.is_some();
            if self.client_secret.is_none() && self.client_secret_file.is_none() && !mtls {
                return Err(invalid(
                    "client_secret",
                    "set client_secret, client_secret_file, or tls_client_cert and tls_client_key"
                        .into(),
                ));
            }
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            return Err(invalid(
                "tls_client_key",
                "tls_client_cert and tls_client_key go together".into(),
            ));
        }
        if self.page_size == 0 {
            return Err(invalid("page_size", "must be at least 1".into()));
        }
        for (key, text) in [
            ("delta_schedule", &self.delta_schedule),
            ("full_schedule", &self.full_schedule),
        ] {
            crate::directory::schedule::Schedule::parse(text)
                .map_err(|message| invalid(key, message))?;
        }
        Ok(())
    }
}

/// `[psc]`: the Pro Santé Connect client (contract §7, french-specs §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PscConfig {
    /// The issuer, compared strictly with the discovery document's and the tokens' `iss`.
    pub issuer: String,
    /// Default `{issuer}/.well-known/wallet-openid-configuration` (PSC's own path).
    pub discovery_url: Option<String>,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    /// Mutual TLS towards PSC (PEM files, IGC-Santé ORG AUTH_CLI): presented on every call
    /// to PSC; without `client_secret` the gateway authenticates by it (`tls_client_auth`)
    /// at the `mtls_endpoint_aliases` when PSC publishes them.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Extra trusted roots (PEM) for PSC's server certificate, beside the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// Default `{base_url}/auth/callback`.
    pub redirect_url: Option<String>,
    pub scopes: Vec<String>,
    /// Sent as `acr_values`.
    pub acr_values: Vec<String>,
    /// The `acr` a PSC token or ID token may carry (default: `acr_values`).
    pub accepted_acr: Option<Vec<String>>,
    /// The client that calls the introspection endpoint (default: `client_id` and its secret).
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<Secret>,
    pub introspection_client_secret_file: Option<PathBuf>,
    /// The PSC clients whose access tokens may be exchanged at `/auth/token` (the
    /// introspected `azp` or `client_id`); empty: the gateway's own `client_id` only.
    pub exchange_clients: Vec<String>,
    /// Time allowed for one call to PSC.
    pub http_timeout_seconds: u32,
    /// Browser sessions end after this inactivity (PSC's own: 30 min)…
    pub session_idle_minutes: u32,
    /// …and this long after sign-in in any case (PSC's own: 4 h).
    pub session_max_hours: u32,
}

impl Default for PscConfig {
    fn default() -> Self {
        PscConfig {
            issuer: String::new(),
            discovery_url: None,
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            tls_ca_file: None,
            redirect_url: None,
            scopes: vec!["openid".into(), "scope_all".into()],
            acr_values: vec!["eidas1".into()],
            accepted_acr: None,
            introspection_client_id: None,
            introspection_client_secret: None,
            introspection_client_secret_file: None,
            exchange_clients: Vec::new(),
            http_timeout_seconds: 10,
            session_idle_minutes: 30,
            session_max_hours: 4,
        }
    }
}

/// `[auth]`: the gateway's own tokens and the system clients allowed to ask for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Ed25519 private key (PKCS#8 PEM) that signs gateway tokens; created (mode 0600) when
    /// the file does not exist. Unset: a new key at each start (tokens die with the process;
    /// several instances need a shared file).
    pub signing_key_file: Option<PathBuf>,
    /// Lifetime of a gateway access token.
    pub token_lifetime_seconds: u32,
    /// Longest lifetime accepted for a client assertion (`exp - now`), SMART: 5 minutes.
    pub assertion_max_lifetime_seconds: u32,
    pub clients: Vec<ClientConfig>,
    /// The terms of use every user accepts once before first use (Markdown). Unset: the
    /// shipped `docs/terms-of-use.md`, compiled into the binary.
    pub terms_file: Option<PathBuf>,
    /// The version of those terms: a new version needs a new acceptance. Required with
    /// `terms_file`; default the shipped text's version.
    #[serde(deserialize_with = "text_or_number")]
    pub terms_version: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            signing_key_file: None,
            token_lifetime_seconds: 900,
            assertion_max_lifetime_seconds: 300,
            clients: Vec::new(),
            terms_file: None,
            terms_version: None,
        }
    }
}

/// `[[auth.clients]]`: a system (SMART Backend Services client, `private_key_jwt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub client_id: String,
    /// The client's public keys (a JWKS document), as a file…
    pub jwks_file: Option<PathBuf>,
    /// …or fetched from this URL (cached; fetched again for an unknown `kid`).
    pub jwks_url: Option<String>,
    /// The SMART v2 scopes it may be granted (`system/Task.rs`, `system/*.cruds`).
    pub scopes: Vec<String>,
    /// `Organization/<id>`: the structure it acts for.
    pub organization: Option<String>,
}

/// `[workflow]`: the delays of domain.md, in whole hours or days.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowConfig {
    /// A manual reminder is allowed after the other side has been silent this long.
    pub remind_after_hours: u32,
    /// The automatic reminder of a dossier with an unconfirmed proposal and no action.
    pub auto_reminder_after_days: u32,
    /// The automatic cancellation, this long after the automatic reminder without action.
    pub auto_cancel_after_days: u32,
    /// Archiving of a cancelled request, this long after its cancellation.
    pub archive_after_days: u32,
    /// How often the server runs the timers (0: never; tests and `passerelle timers` run them).
    pub timer_interval_seconds: u32,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig {
            remind_after_hours: 72,
            auto_reminder_after_days: 60,
            auto_cancel_after_days: 30,
            archive_after_days: 15,
            timer_interval_seconds: 60,
        }
    }
}

impl WorkflowConfig {
    pub fn delays(&self) -> crate::workflow::Delays {
        let hour: i64 = 3_600 * 1_000_000;
        crate::workflow::Delays {
            remind_after: i64::from(self.remind_after_hours) * hour,
            auto_reminder_after: i64::from(self.auto_reminder_after_days) * 24 * hour,
            auto_cancel_after: i64::from(self.auto_cancel_after_days) * 24 * hour,
            archive_after: i64::from(self.archive_after_days) * 24 * hour,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://passerelle.db".into(),
            base_url: None,
            max_body_bytes: 8 * 1024 * 1024,
            default_page_size: 20,
            max_page_size: 1000,
            db_pool_size: 8,
            sqlite_durable: true,
            sqlite_mmap_mb: 4096,
            log_json: false,
            workflow: WorkflowConfig::default(),
            psc: None,
            auth: AuthConfig::default(),
            ror: RorConfig::default(),
        }
    }
}

impl Config {
    /// Reads the file (if any) then applies the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(file, &env)
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let key = match name.as_str() {
                "DATABASE_URL" => "database_url".to_owned(),
                // the file itself, and the log filter (read by the logger, not configuration)
                "PASSERELLE_CONFIG" | "PASSERELLE_LOG" => continue,
                n => match n.strip_prefix("PASSERELLE_") {
                    Some(rest) => rest.to_ascii_lowercase(),
                    None => continue,
                },
            };
            set_path(&mut table, &key, value);
        }
        let source = file.map_or("<environment>".to_owned(), |p| p.display().to_string());
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: source,
                    message: e.to_string(),
                })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database_url".into(),
                message: "must start with sqlite: or postgres://".into(),
            });
        }
        if let Some(base) = &self.base_url
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "base_url".into(),
                message: format!("`{base}` is not an http(s) URL"),
            });
        }
        if let Some(psc) = self.psc.as_ref().filter(|p| !p.issuer.is_empty()) {
            let invalid = |key: &str, message: &str| ConfigError::Invalid {
                key: format!("psc.{key}"),
                message: message.into(),
            };
            if !(psc.issuer.starts_with("https://") || psc.issuer.starts_with("http://")) {
                return Err(invalid("issuer", "must be an http(s) URL"));
            }
            if psc.client_id.is_empty() {
                return Err(invalid("client_id", "is required with an issuer"));
            }
            if psc.client_secret.is_some() && psc.client_secret_file.is_some() {
                return Err(invalid(
                    "client_secret",
                    "set client_secret or client_secret_file, not both",
                ));
            }
            if psc.tls_client_cert.is_some() != psc.tls_client_key.is_some() {
                return Err(invalid(
                    "tls_client_key",
                    "tls_client_cert and tls_client_key go together",
                ));
            }
            if psc.client_secret.is_none()
                && psc.client_secret_file.is_none()
                && psc.tls_client_cert.is_none()
            {
                return Err(invalid(
                    "client_secret",
                    "set client_secret or client_secret_file (client_secret_basic), or tls_client_cert and tls_client_key (tls_client_auth)",
                ));
            }
        }
        if self.auth.terms_file.is_some()
            && self
                .auth
                .terms_version
                .as_deref()
                .is_none_or(|v| v.trim().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "auth.terms_version".into(),
                message:
                    "required with auth.terms_file (a new version asks every user to accept again)"
                        .into(),
            });
        }
        for (i, c) in self.auth.clients.iter().enumerate() {
            if c.client_id.is_empty() || (c.jwks_file.is_some() == c.jwks_url.is_some()) {
                return Err(ConfigError::Invalid {
                    key: format!("auth.clients[{i}]"),
                    message: "needs a client_id and exactly one of jwks_file, jwks_url".into(),
                });
            }
            if let Some(o) = &c.organization
                && !o
                    .strip_prefix("Organization/")
                    .is_some_and(crate::fhir::reference::is_id)
            {
                return Err(ConfigError::Invalid {
                    key: format!("auth.clients[{i}].organization"),
                    message: format!("must be `Organization/<id>`, not `{o}`"),
                });
            }
        }
        self.ror.check()?;
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return Err(ConfigError::Invalid {
                key: "default_page_size".into(),
                message: "must be between 1 and max_page_size".into(),
            });
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "listen".into(),
            message: format!("`{}` is not a socket address (host:port)", self.listen),
        })
    }
}

/// A text key that an environment variable may have typed as a number (`PASSERELLE_ROR__REGION=11`).
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::S(s) => s,
        Text::I(i) => i.to_string(),
    }))
}

/// Puts an environment value at a `a__b` path, typed like the TOML literal it spells
/// (numbers and booleans), a string otherwise.
fn set_path(table: &mut toml::Table, key: &str, raw: &str) {
    let mut parts = key.split("__").peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            // `06` is not a TOML integer (no leading zeros): a code stays text.
            let leading_zero = raw.len() > 1 && raw.starts_with('0');
            let value = raw
                .parse::<i64>()
                .ok()
                .filter(|_| !leading_zero)
                .ok_or(())
                .map(toml::Value::Integer)
                .or_else(|_| raw.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or_else(|_| toml::Value::String(raw.to_owned()));
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => current = t,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_then_environment() {
        let c = Config::load_with_env(None, &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://passerelle.db");
        let c = Config::load_with_env(
            None,
            &env(&[
                ("PASSERELLE_LISTEN", "0.0.0.0:9000"),
                ("DATABASE_URL", "postgres://x@y/z"),
                ("PASSERELLE_MAX_PAGE_SIZE", "50"),
                ("PASSERELLE_BASE_URL", "https://gw.example.fr"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.database_url, "postgres://x@y/z");
        assert_eq!(c.max_page_size, 50);
        assert_eq!(c.base_url.as_deref(), Some("https://gw.example.fr"));
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let dir = std::env::temp_dir().join(format!("passerelle-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "listen = 12\n").unwrap();
        let e = Config::load_with_env(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml") && e.contains("listen"), "{e}");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = Config::load_with_env(Some(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::load_with_env(None, &env(&[("DATABASE_URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url"), "{e}");
    }

    #[test]
    fn psc_client_authentication_and_terms() {
        let psc = |extra: &[(&'static str, &'static str)]| {
            let mut e = vec![
                ("PASSERELLE_PSC__ISSUER", "https://psc.example/realm"),
                ("PASSERELLE_PSC__CLIENT_ID", "gw"),
            ];
            e.extend_from_slice(extra);
            Config::load_with_env(None, &env(&e)).map_err(|e| e.to_string())
        };
        // a secret or a client certificate: one way to authenticate at PSC is required
        let e = psc(&[]).unwrap_err();
        assert!(
            e.contains("psc.client_secret") && e.contains("tls_client_auth"),
            "{e}"
        );
        assert!(psc(&[("PASSERELLE_PSC__CLIENT_SECRET", "s")]).is_ok());
        let c = psc(&[
            ("PASSERELLE_PSC__TLS_CLIENT_CERT", "/etc/gw.pem"),
            ("PASSERELLE_PSC__TLS_CLIENT_KEY", "/etc/gw.key"),
            ("PASSERELLE_PSC__TLS_CA_FILE", "/etc/igc-sante.pem"),
        ])
        .unwrap();
        let p = c.psc.unwrap();
        assert!(p.tls_client_cert.is_some() && p.tls_ca_file.is_some());
        let e = psc(&[("PASSERELLE_PSC__TLS_CLIENT_CERT", "/etc/gw.pem")]).unwrap_err();
        assert!(e.contains("psc.tls_client_key"), "{e}");
        // a terms file needs its version; a version alone names the shipped text's
        let e = Config::load_with_env(None, &env(&[("PASSERELLE_AUTH__TERMS_FILE", "/etc/t.md")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.terms_version"), "{e}");
        let c =
            Config::load_with_env(None, &env(&[("PASSERELLE_AUTH__TERMS_VERSION", "3")])).unwrap();
        assert_eq!(c.auth.terms_version.as_deref(), Some("3"));
    }

    #[test]
    fn ror_section_from_file_and_environment() {
        let c = Config::load_with_env(
            None,
            &env(&[
                ("PASSERELLE_ROR__BASE_URL", "https://ror.example/fhir"),
                ("PASSERELLE_ROR__TOKEN_URL", "https://auth.example/token"),
                ("PASSERELLE_ROR__CLIENT_ID", "me"),
                ("PASSERELLE_ROR__CLIENT_SECRET", "12345"),
                ("PASSERELLE_ROR__USER_PROFILE_CODE", "CU20"),
                ("PASSERELLE_ROR__BUSINESS_ROLE_CODE", "AUTOMATE"),
                ("PASSERELLE_ROR__REGION", "06"),
                ("PASSERELLE_ROR__MAX_RETRIES", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.ror.region.as_deref(), Some("06"), "a code keeps its zero");
        assert_eq!(c.ror.client_secret.as_deref(), Some("12345"));
        assert_eq!(c.ror.max_retries, 2);
        assert!(
            !format!("{:?}", c.ror).contains("12345"),
            "secrets stay out of Debug"
        );
        let e = Config::load_with_env(
            None,
            &env(&[("PASSERELLE_ROR__BASE_URL", "https://ror.example/fhir")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ror.token_url"), "{e}");
        let e = Config::load_with_env(None, &env(&[("PASSERELLE_ROR__DELTA_SCHEDULE", "hourly")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ror.delta_schedule"), "{e}");
    }
}
