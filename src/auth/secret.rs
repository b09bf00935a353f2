//! Secrets (client secrets, private keys): read from the configuration value (so from the
//! environment, `PASSERELLE_PSC__CLIENT_SECRET`) or from a file, and never printed: their
//! `Debug` and `Display` show `***`.

use std::path::Path;

use serde::Deserialize;

/// A secret string. Its `Debug` does not show it, so a `Config` can be logged whole.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends or uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret file; surrounding whitespace (the final newline) is not part of it.
    pub fn from_file(path: &Path) -> std::io::Result<Secret> {
        Ok(Secret(std::fs::read_to_string(path)?.trim().to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(s.clone())).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
