//! The terms of use (the charter, domain.md): accepted once, version by version, before first
//! use. The acceptance is an extension on the person's Practitioner (`version`, `accepted`
//! date) written through the FHIR write path with a Provenance naming the person; until the
//! current version is accepted the token exchange refuses to issue a gateway token.

use std::sync::Arc;

use serde_json::{Value, json};

use super::accounts::{locked_account, save_account};
use crate::config::AuthConfig;
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{Fhir, put_resource};
use crate::time::format_instant;

/// The extension on Practitioner recording the last accepted version.
pub const TERMS_EXTENSION: &str =
    "https://passerelle.dev/fhir/StructureDefinition/terms-of-use-acceptance";
/// The shipped text and its version (the version line of `docs/terms-of-use.md`).
pub const SHIPPED_TEXT: &str = include_str!("../../docs/terms-of-use.md");
pub const SHIPPED_VERSION: &str = "2026-11";

#[derive(Debug, Clone)]
pub struct Terms {
    pub version: String,
    pub text: String,
}

/// A recorded acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub version: String,
    pub date: String,
}

impl Terms {
    pub fn from_config(auth: &AuthConfig) -> std::result::Result<Terms, String> {
        match &auth.terms_file {
            None => Ok(Terms {
                version: auth
                    .terms_version
                    .clone()
                    .unwrap_or_else(|| SHIPPED_VERSION.to_owned()),
                text: SHIPPED_TEXT.to_owned(),
            }),
            Some(path) => Ok(Terms {
                version: auth.terms_version.clone().ok_or_else(|| {
                    "auth.terms_version is required with auth.terms_file".to_owned()
                })?,
                text: std::fs::read_to_string(path)
                    .map_err(|e| format!("auth.terms_file {}: {e}", path.display()))?,
            }),
        }
    }

    /// Whether this Practitioner accepted the current version.
    pub fn accepted_by(&self, practitioner: &Value) -> bool {
        acceptance(practitioner).is_some_and(|a| a.version == self.version)
    }
}

/// The acceptance a Practitioner carries, if any.
pub fn acceptance(practitioner: &Value) -> Option<Acceptance> {
    let ext = practitioner["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == TERMS_EXTENSION)?;
    let part = |name: &str, key: &str| {
        ext["extension"]
            .as_array()?
            .iter()
            .find(|e| e["url"] == name)?[key]
            .as_str()
            .map(str::to_owned)
    };
    Some(Acceptance {
        version: part("version", "valueString")?,
        date: part("accepted", "valueDateTime")?,
    })
}

/// `practitioner` with its acceptance replaced by `version` accepted at `date`.
pub fn with_acceptance(practitioner: &Value, version: &str, date: &str) -> Value {
    let mut p = practitioner.clone();
    let mut exts: Vec<Value> = p["extension"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["url"] != TERMS_EXTENSION)
        .collect();
    exts.push(json!({
        "url": TERMS_EXTENSION,
        "extension": [
            {"url": "version", "valueString": version},
            {"url": "accepted", "valueDateTime": date}
        ]
    }));
    p["extension"] = json!(exts);
    p
}

/// Records that the person of `subject_name_id` accepted `version` (one store job): the
/// extension on their Practitioner, and a Provenance naming them. Accepting the version
/// already accepted changes nothing.
pub async fn accept(fhir: &Arc<Fhir>, subject_name_id: &str, version: &str) -> Result<Acceptance> {
    let f = fhir.clone();
    let (snid, version) = (subject_name_id.to_owned(), version.to_owned());
    fhir.store
        .write(move |tx| {
            Box::pin(async move {
                let (id, _, body) = locked_account(&f, tx, &snid)
                    .await?
                    .ok_or_else(|| Error::NotFound("no account for this clinician".into()))?;
                if let Some(a) = acceptance(&body).filter(|a| a.version == version) {
                    return Ok(a);
                }
                let date = format_instant(tx.now());
                let next = with_acceptance(&body, &version, &date);
                let resp = save_account(&f, tx, &id, next).await?;
                let target = format!(
                    "Practitioner/{id}/_history/{}",
                    resp.version.unwrap_or_default()
                );
                let p = f.workflow.history_entry(
                    &[target],
                    "terms-accepted",
                    Some(&format!("terms of use accepted (version {version})")),
                    json!({"reference": format!("Practitioner/{id}")}),
                    tx.now(),
                );
                put_resource(&f, tx, "Provenance", None, p, "POST").await?;
                Ok::<_, Error>(Acceptance { version, date })
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_text_states_its_version() {
        assert!(SHIPPED_TEXT.contains(&format!("Version {SHIPPED_VERSION}")));
        let t = Terms::from_config(&AuthConfig::default()).unwrap();
        assert_eq!(t.version, SHIPPED_VERSION);
    }

    #[test]
    fn acceptance_is_per_version() {
        let terms = Terms {
            version: "2".into(),
            text: String::new(),
        };
        let p = json!({"resourceType": "Practitioner", "extension": [{"url": "other", "valueString": "x"}]});
        assert!(!terms.accepted_by(&p));
        let v1 = with_acceptance(&p, "1", "2026-11-20T10:00:00Z");
        assert_eq!(
            acceptance(&v1),
            Some(Acceptance {
                version: "1".into(),
                date: "2026-11-20T10:00:00Z".into()
            })
        );
        assert!(
            !terms.accepted_by(&v1),
            "a new version needs a new acceptance"
        );
        let v2 = with_acceptance(&v1, "2", "2026-11-21T10:00:00Z");
        assert!(terms.accepted_by(&v2));
        // one acceptance, the other extensions kept
        assert_eq!(v2["extension"].as_array().unwrap().len(), 2);
        assert_eq!(v2["extension"][0]["url"], "other");
    }
}
