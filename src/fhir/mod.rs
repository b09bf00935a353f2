//! The FHIR R4 server.
//!
//! - [`model`] and [`validate`]: the base model (from `profiles/r4-base/`) and structural
//!   validation of what clients send.
//! - [`search`]: supported parameters (from `conformance/`), index extraction, query parsing.
//! - [`interaction`]: read, vread, create, update, patch, delete, history, search,
//!   `$validate` — independent of HTTP; [`bundle`] builds Bundles and runs batch/transaction
//!   through the same interactions; [`patch`] applies JSON Patch and FHIRPath Patch.
//! - [`rest`]: the HTTP edge (negotiation, headers, errors as OperationOutcome).

pub mod bundle;
pub mod conformance;
pub mod error;
pub mod interaction;
pub mod json;
pub mod model;
pub mod patch;
pub mod reference;
pub mod rest;
pub mod search;
pub mod validate;
pub mod xml;

use serde_json::Value;

use crate::store::Store;
use interaction::Fhir;
use search::Paging;
use search::registry::{Registry, RegistryError};

/// The conformance data shipped in `conformance/`, compiled in.
const CAPABILITY: &str = include_str!("../../conformance/CapabilityStatement.json");
pub(crate) const SEARCH_PARAMETERS: &[(&str, &str)] = &[
    (
        "search-parameters-r4.json",
        include_str!("../../conformance/search-parameters-r4.json"),
    ),
    (
        "search-parameters-workflow.json",
        include_str!("../../conformance/search-parameters-workflow.json"),
    ),
    // the directory (ROR): module, available beds
    (
        "search-parameters-directory.json",
        include_str!("../../conformance/search-parameters-directory.json"),
    ),
];

pub(crate) fn parse_conformance(file: &str, text: &str) -> Result<Value, RegistryError> {
    serde_json::from_str::<Value>(text).map_err(|e| RegistryError::File {
        file: file.to_owned(),
        message: e.to_string(),
    })
}

impl Fhir {
    /// Builds the FHIR service; fails if the conformance files are inconsistent.
    pub fn new(
        store: Store,
        base: String,
        paging: Paging,
        delays: crate::workflow::Delays,
    ) -> Result<Fhir, RegistryError> {
        let parse = parse_conformance;
        let capability = parse("CapabilityStatement.json", CAPABILITY)?;
        let defs: Vec<(&str, Value)> = SEARCH_PARAMETERS
            .iter()
            .map(|(f, t)| parse(f, t).map(|v| (*f, v)))
            .collect::<Result<_, _>>()?;
        let def_refs: Vec<(&str, &Value)> = defs.iter().map(|(f, v)| (*f, v)).collect();
        let model = model::Model::r4();
        let registry = Registry::load(model, &capability, &def_refs)?;
        let mut capability = capability;
        capability["implementation"]["url"] = Value::String(base.clone());
        let workflow =
            crate::workflow::Workflow::load(delays).map_err(|e| RegistryError::File {
                file: e.file.clone(),
                message: format!("{}: {}", e.field, e.message),
            })?;
        // a parameter the gateway computes must be one the workflow knows
        for rtype in registry.types() {
            for p in registry.params(rtype) {
                if let Some(what) = &p.computed
                    && !workflow.computes(what)
                {
                    return Err(RegistryError::Param {
                        rtype: rtype.to_owned(),
                        code: p.code.clone(),
                        message: format!("computed by `{what}`, which the gateway does not know"),
                    });
                }
            }
        }
        Ok(Fhir {
            model,
            registry,
            capability_text: capability.to_string(),
            capability,
            store,
            base,
            paging,
            workflow,
        })
    }
}
