//! The conformance resources (`conformance/` and `profiles/`) served read-only
//! through the API: written into the store at start, through the ordinary update path, so
//! an unchanged file makes no new version.

use std::sync::Arc;

use serde_json::Value;

use super::error::{Error, Result};
use super::interaction::{self, Fhir};
use super::{SEARCH_PARAMETERS, parse_conformance};

/// Every conformance resource the server publishes, as (type, id, resource).
fn resources(fhir: &Fhir) -> Result<Vec<(String, String, Value)>> {
    let mut out = Vec::new();
    let cs = fhir.capability.clone();
    out.push((
        "CapabilityStatement".to_owned(),
        "passerelle".to_owned(),
        cs,
    ));
    for (file, text) in SEARCH_PARAMETERS {
        let bundle = parse_conformance(file, text)
            .map_err(|e| Error::invalid("exception", e.to_string()))?;
        for e in bundle["entry"].as_array().into_iter().flatten() {
            let r = e["resource"].clone();
            if let Some(id) = r["id"].as_str() {
                out.push(("SearchParameter".to_owned(), id.to_owned(), r.clone()));
            }
        }
    }
    // the profiles, code systems, value sets, forms and operations the workflow runs on
    // (ConceptMap is data the gateway reads, not a type it serves)
    for (file, text) in crate::workflow::rules::PROFILE_FILES
        .iter()
        .chain(crate::workflow::rules::OPERATION_FILES)
    {
        let r: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid("exception", format!("{file}: {e}")))?;
        let (Some(rtype), Some(id)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
            continue;
        };
        if fhir.registry.is_served(rtype) {
            out.push((rtype.to_owned(), id.to_owned(), r.clone()));
        }
    }
    Ok(out)
}

/// Writes the conformance resources (one transaction; a no-op when nothing changed).
pub async fn publish(fhir: &Arc<Fhir>) -> Result<usize> {
    let all = resources(fhir)?;
    let f = fhir.clone();
    fhir.store
        .write(move |tx| {
            Box::pin(async move {
                // Two gateways starting together against one PostgreSQL take turns.
                tx.lock_key("conformance").await?;
                let system = crate::auth::Caller::System("conformance".into());
                let mut written = 0;
                for (rtype, id, mut body) in all {
                    body["id"] = Value::String(id.clone());
                    let in_context =
                        |e: Error| Error::invalid("exception", format!("{rtype}/{id}: {e}"));
                    let body = f.check_body(&rtype, body).map_err(in_context)?;
                    let r = interaction::update(&f, tx, &system, &rtype, &id, body, None, "PUT")
                        .await
                        .map_err(in_context)?;
                    if r.status == axum::http::StatusCode::CREATED || r.version != Some(1) {
                        written += 1;
                    }
                }
                Ok::<_, Error>(written)
            })
        })
        .await
}
