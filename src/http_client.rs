//! The one way the gateway builds an HTTP client towards a national service (Pro Santé
//! Connect, the ROR): rustls on ring, an optional client certificate (mutual TLS, IGC-Santé
//! ORG AUTH_CLI) and optional extra trusted roots added to the system's. Each caller then
//! sets its own timeouts and redirect policy.

use std::path::Path;

/// The TLS material of a client, read from PEM files at start.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The certificate chain then the private key (PEM), for mutual TLS.
    pub identity_pem: Option<Vec<u8>>,
    /// Extra trusted roots (PEM bundle).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the identity holds a private key
        f.debug_struct("TlsFiles")
            .field("identity", &self.identity_pem.is_some())
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{key}` {path}: {message}")]
    File {
        key: String,
        path: String,
        message: String,
    },
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl TlsFiles {
    /// Reads `cert` + `key` (both or neither) and `ca`; `section` names the configuration
    /// section in errors (`psc`, `ror`).
    pub fn read(
        section: &str,
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<TlsFiles, TlsError> {
        let read = |p: &Path, name: &str| {
            std::fs::read(p).map_err(|e| TlsError::File {
                key: format!("{section}.{name}"),
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let identity_pem = match (cert, key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "tls_client_cert")?;
                pem.push(b'\n');
                pem.extend(read(key, "tls_client_key")?);
                Some(pem)
            }
            (None, None) => None,
            _ => {
                return Err(TlsError::Invalid {
                    key: format!("{section}.tls_client_key"),
                    message: "tls_client_cert and tls_client_key go together".into(),
                });
            }
        };
        let ca_pem = ca.map(|p| read(p, "tls_ca_file")).transpose()?;
        Ok(TlsFiles {
            identity_pem,
            ca_pem,
        })
    }

    /// A client builder with this material; `section` names the configuration in errors.
    pub fn builder(&self, section: &str) -> Result<reqwest::ClientBuilder, TlsError> {
        crate::install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("passerelle/", env!("CARGO_PKG_VERSION")))
            // TLS 1.0/1.1 are forbidden by the ANS transport rules; rustls has neither
            .tls_version_min(reqwest::tls::Version::TLS_1_2);
        if let Some(pem) = &self.identity_pem {
            let id = reqwest::Identity::from_pem(pem).map_err(|e| TlsError::Invalid {
                key: format!("{section}.tls_client_cert/tls_client_key"),
                message: describe(e),
            })?;
            b = b.identity(id);
        }
        if let Some(pem) = &self.ca_pem {
            let roots =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| TlsError::Invalid {
                    key: format!("{section}.tls_ca_file"),
                    message: describe(e),
                })?;
            b = b.tls_certs_merge(roots);
        }
        Ok(b)
    }
}

/// A reqwest error with its causes (the TLS reason of a refused handshake is several levels
/// down), without the URL (it may carry a query with a token).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
