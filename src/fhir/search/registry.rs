//! The search parameters the server supports: exactly those its CapabilityStatement
//! (`conformance/CapabilityStatement.json`) lists, with their definitions taken from the
//! SearchParameter Bundles in `conformance/`. Loading fails loudly on any parameter it lists
//! but cannot run, so the CapabilityStatement cannot promise what the server does not do.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::fhirpath::{self, Expr};
use crate::fhir::model::Model;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Quantity,
    Uri,
    Special,
}

impl ParamKind {
    fn parse(s: &str) -> Option<ParamKind> {
        Some(match s {
            "number" => ParamKind::Number,
            "date" => ParamKind::Date,
            "string" => ParamKind::String,
            "token" => ParamKind::Token,
            "reference" => ParamKind::Reference,
            "quantity" => ParamKind::Quantity,
            "uri" => ParamKind::Uri,
            "special" => ParamKind::Special,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamKind,
    /// `None` for `_id` and `_lastUpdated`, answered from the resource table.
    pub expr: Option<Expr>,
    /// Target types of a reference parameter.
    pub targets: Vec<String>,
    /// The key of its index rows: `Task.owner`.
    pub key: String,
    /// For a parameter the gateway computes (no FHIRPath), what computes it.
    pub computed: Option<String>,
}

/// The extension that marks a SearchParameter computed by the gateway, not by FHIRPath.
pub const COMPUTED: &str =
    "https://passerelle.dev/fhir/StructureDefinition/computed-search-parameter";

#[derive(Debug, Default)]
pub struct TypeSupport {
    pub params: HashMap<String, Arc<SearchParam>>,
    /// Interactions the CapabilityStatement lists (`read`, `create`, `search-type`…).
    pub interactions: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Registry {
    types: HashMap<String, TypeSupport>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("conformance file {file}: {message}")]
    File { file: String, message: String },
    #[error("CapabilityStatement lists {rtype}?{code}: {message}")]
    Param {
        rtype: String,
        code: String,
        message: String,
    },
}

impl Registry {
    /// `capability` is the CapabilityStatement; `definitions` the SearchParameter Bundles.
    pub fn load(
        model: &Model,
        capability: &Value,
        definitions: &[(&str, &Value)],
    ) -> Result<Registry, RegistryError> {
        let mut by_url: HashMap<&str, &Value> = HashMap::new();
        for (file, bundle) in definitions {
            let entries = bundle["entry"]
                .as_array()
                .ok_or_else(|| RegistryError::File {
                    file: file.to_string(),
                    message: "not a Bundle with entries".into(),
                })?;
            for e in entries {
                if let Some(url) = e["resource"]["url"].as_str() {
                    by_url.insert(url, &e["resource"]);
                }
            }
        }
        let mut reg = Registry::default();
        let resources = capability["rest"][0]["resource"]
            .as_array()
            .ok_or_else(|| RegistryError::File {
                file: "CapabilityStatement.json".into(),
                message: "no rest[0].resource".into(),
            })?;
        let common = capability["rest"][0]["searchParam"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in resources {
            let rtype = r["type"].as_str().unwrap_or_default().to_owned();
            if !model.is_resource_type(&rtype) {
                return Err(RegistryError::File {
                    file: "CapabilityStatement.json".into(),
                    message: format!("unknown resource type `{rtype}`"),
                });
            }
            let mut support = TypeSupport {
                interactions: r["interaction"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["code"].as_str().map(str::to_owned))
                    .collect(),
                ..Default::default()
            };
            let listed = r["searchParam"].as_array().into_iter().flatten();
            for sp in common.iter().chain(listed) {
                let code = sp["name"].as_str().unwrap_or_default().to_owned();
                let fail = |message: String| RegistryError::Param {
                    rtype: rtype.clone(),
                    code: code.clone(),
                    message,
                };
                let url = sp["definition"]
                    .as_str()
                    .ok_or_else(|| fail("no definition".into()))?;
                let def = by_url
                    .get(url)
                    .ok_or_else(|| fail(format!("definition {url} not found")))?;
                let kind = def["type"]
                    .as_str()
                    .and_then(ParamKind::parse)
                    .ok_or_else(|| fail(format!("unsupported type {}", def["type"])))?;
                let computed = def["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["url"] == COMPUTED)
                    .and_then(|e| e["valueCode"].as_str())
                    .map(str::to_owned);
                let expr = match (code.as_str(), def["expression"].as_str()) {
                    ("_id" | "_lastUpdated", _) => None,
                    (_, None) if computed.is_some() => None,
                    (_, Some(e)) => {
                        let parsed = fhirpath::parse(e).map_err(|e| fail(e.to_string()))?;
                        Some(parsed)
                    }
                    (_, None) => return Err(fail("no expression".into())),
                };
                let targets = def["target"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect();
                support.params.insert(
                    code.clone(),
                    Arc::new(SearchParam {
                        key: format!("{rtype}.{code}"),
                        code,
                        url: url.to_owned(),
                        kind,
                        expr,
                        targets,
                        computed,
                    }),
                );
            }
            reg.types.insert(rtype, support);
        }
        Ok(reg)
    }

    pub fn param(&self, rtype: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.types.get(rtype)?.params.get(code)
    }

    pub fn params(&self, rtype: &str) -> impl Iterator<Item = &Arc<SearchParam>> {
        self.types
            .get(rtype)
            .into_iter()
            .flat_map(|t| t.params.values())
    }

    pub fn is_served(&self, rtype: &str) -> bool {
        self.types.contains_key(rtype)
    }

    /// Whether the CapabilityStatement lists `interaction` for `rtype`.
    pub fn allows(&self, rtype: &str, interaction: &str) -> bool {
        self.types
            .get(rtype)
            .is_some_and(|t| t.interactions.iter().any(|i| i == interaction))
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }
}
