//! The gateway's signing key (Ed25519) for its own access tokens, and its public JWKS.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::RngCore;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key file {path}: {message}")]
    File { path: String, message: String },
    #[error("signing key: {0}")]
    Key(String),
}

/// The key pair; `Debug` shows the key id only.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(kid={})", self.kid)
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        der.extend_from_slice(&seed);
        SigningKey::from_pkcs8_der(&der)
    }

    /// Loads the PEM file, or creates it (mode 0600) with a new key when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => SigningKey::from_pem(&pem).map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::generate()?;
                let pem = key.to_pem();
                write_private(path, &pem).map_err(|e| err(e.to_string()))?;
                Ok(key)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| KeyError::Key("not a PEM file".into()))?;
        SigningKey::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        if der.len() != 48 || der[..16] != ED25519_PKCS8_PREFIX {
            return Err(KeyError::Key(
                "expected an Ed25519 private key in PKCS#8 (openssl genpkey -algorithm ed25519)"
                    .into(),
            ));
        }
        let encoding = EncodingKey::from_ed_der(der);
        let mut public = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let kid = public
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Key(e.to_string()))?;
        public.common.key_id = Some(kid.clone());
        public.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&public).map_err(|e| KeyError::Key(e.to_string()))?;
        Ok(SigningKey {
            kid,
            encoding,
            decoding,
            public,
        })
    }

    fn to_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.encoding.as_bytes());
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
    }

    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The public key set served at `/auth/jwks`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public.clone()],
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// A random, URL-safe identifier (`jti`, `state`, session ids): 256 bits.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_survives_its_file_and_signs() {
        let dir = std::env::temp_dir().join(format!("passerelle-key-{}", random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.pem");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.kid, b.kid);
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}),
            a.encoding(),
        )
        .unwrap();
        let v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        jsonwebtoken::decode::<serde_json::Value>(&token, b.decoding(), &v).unwrap();
        assert!(format!("{a:?}").starts_with("SigningKey(kid="));
        assert!(SigningKey::from_pem("-----BEGIN X-----\nAAAA\n-----END X-----").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
