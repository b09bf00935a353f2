//! Placeholder until the patch module lands (JSON Patch and FHIRPath Patch).
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(String);

impl PatchError {
    pub fn is_malformed(&self) -> bool {
        true
    }
}

pub fn json_patch(_doc: &mut Value, _patch: &Value) -> Result<(), PatchError> {
    Err(PatchError("not yet".into()))
}

pub fn fhirpath_patch(
    _model: &crate::fhir::model::Model,
    _doc: &mut Value,
    _params: &Value,
) -> Result<(), PatchError> {
    Err(PatchError("not yet".into()))
}
