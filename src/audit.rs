//! The audit trail: one `AuditEvent` (IHE BALP "RESTful" shape) for every request that reads
//! or writes patient data, refusals included, with who (the habilitation), from where, what
//! (the resource, the patient, or the query), when and the outcome.
//!
//! Requests hand their event to [`Auditor::record`]; one writer task stores them in batches
//! (one transaction per batch) so an audited read costs a channel send, not a commit. The
//! channel is bounded: when the writer falls behind, requests wait rather than go unaudited.
//! `flush` waits until everything recorded so far is stored (tests, shutdown).
//! AuditEvents are read-only through the API (the CapabilityStatement lists no write), and only
//! référents and the system may read them.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::auth::Caller;
use crate::fhir::interaction::{Fhir, Route, put_resource};
use crate::time::format_instant;

/// The resource types that hold patient data: any access to them is audited.
pub const PATIENT_DATA: &[&str] = &[
    "Patient",
    "ServiceRequest",
    "Task",
    "QuestionnaireResponse",
    "Communication",
    "DocumentReference",
    "Binary",
    "Encounter",
];

const BATCH: usize = 500;

enum Msg {
    Event(Value),
    Flush(oneshot::Sender<()>),
}

/// The handle requests record through; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
}

impl Auditor {
    /// Starts the writer task.
    pub fn start(fhir: Arc<Fhir>) -> Auditor {
        let (tx, mut rx) = mpsc::channel::<Msg>(10_000);
        tokio::spawn(async move {
            let mut batch: Vec<Value> = Vec::new();
            let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(m) = next.take() {
                    match m {
                        Msg::Event(e) => batch.push(e),
                        Msg::Flush(w) => waiting.push(w),
                    }
                    if batch.len() < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !batch.is_empty() {
                    let events = std::mem::take(&mut batch);
                    let n = events.len();
                    let f = fhir.clone();
                    let stored: Result<(), crate::fhir::error::Error> = fhir
                        .store
                        .write(move |tx| {
                            Box::pin(async move {
                                for e in events {
                                    put_resource(&f, tx, "AuditEvent", None, e, "POST").await?;
                                }
                                Ok(())
                            })
                        })
                        .await;
                    if let Err(e) = stored {
                        // never the events themselves: they name patients
                        tracing::error!(error = %e, events = n, "audit events could not be stored");
                    }
                }
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
        });
        Auditor { tx }
    }

    pub async fn record(&self, event: Value) {
        if self.tx.send(Msg::Event(event)).await.is_err() {
            tracing::error!("audit writer stopped: an access was not audited");
        }
    }

    /// Waits until every event recorded before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// What one REST request did, gathered by the edge as it goes.
#[derive(Debug, Default, Clone)]
pub struct Access {
    pub caller: Option<Caller>,
    pub address: Option<String>,
    pub method: String,
    pub route: Option<Route>,
    pub query: Vec<(String, String)>,
    /// The resource the request touched, as `Type/id`, and the patients it names.
    pub resource: Option<String>,
    pub patients: Vec<String>,
    pub export: bool,
}

impl Access {
    /// Whether this request touches patient data (and so is audited).
    pub fn audited(&self) -> bool {
        match &self.route {
            Some(Route::Root | Route::SystemHistory) => true,
            Some(Route::Operation {
                name, rtype: None, ..
            }) => name == "observatory",
            Some(r) => r.resource_type().is_some_and(|t| PATIENT_DATA.contains(&t)),
            None => false,
        }
    }

    /// Notes the patients a resource names (itself, `subject`, `for`, `patient`).
    pub fn saw(&mut self, resource: &Value) {
        let rtype = resource["resourceType"].as_str().unwrap_or_default();
        if let Some(id) = resource["id"].as_str() {
            self.resource = Some(format!("{rtype}/{id}"));
            if rtype == "Patient" {
                self.patients.push(format!("Patient/{id}"));
            }
        }
        for k in ["subject", "for", "patient"] {
            if let Some(r) = resource[k]["reference"].as_str()
                && r.starts_with("Patient/")
                && !self.patients.iter().any(|p| p == r)
            {
                self.patients.push(r.to_owned());
            }
        }
    }

    /// The AuditEvent, for an answer of `status` (with the error's words, if any).
    pub fn event(&self, status: u16, error: Option<&str>, now: i64) -> Value {
        let (subtype, action) = match (self.method.as_str(), &self.route) {
            (_, Some(Route::Root)) => ("transaction", "E"),
            (_, Some(Route::Operation { .. })) => ("operation", "E"),
            ("GET", Some(Route::Instance(..))) => ("read", "R"),
            ("GET", Some(Route::Version(..))) => ("vread", "R"),
            ("GET", Some(Route::InstanceHistory(..))) => ("history-instance", "R"),
            ("GET", Some(Route::TypeHistory(_))) => ("history-type", "R"),
            ("GET", Some(Route::SystemHistory)) => ("history-system", "R"),
            ("GET", _) | ("POST", Some(Route::TypeSearch(_))) => ("search-type", "E"),
            ("POST", _) => ("create", "C"),
            ("PUT", _) => ("update", "U"),
            ("PATCH", _) => ("patch", "U"),
            ("DELETE", _) => ("delete", "D"),
            _ => ("read", "R"),
        };
        let outcome = match status {
            0..=399 => "0",
            400..=499 => "4",
            _ => "8",
        };
        let who = match &self.caller {
            Some(Caller::Person(h)) => json!({"reference": h.role}),
            Some(Caller::System(s)) => json!({"display": format!("system: {s}")}),
            _ => json!({"display": "anonymous"}),
        };
        let mut user = json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": who,
            "requestor": true,
        });
        if let Some(a) = &self.address {
            user["network"] = json!({"address": a, "type": "2"});
        }
        let mut entities = Vec::new();
        for p in &self.patients {
            entities.push(json!({
                "what": {"reference": p},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
            }));
        }
        if let Some(r) = &self.resource
            && !self.patients.contains(r)
        {
            entities.push(json!({
                "what": {"reference": r},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"}
            }));
        }
        if subtype == "search-type" || subtype == "operation" && self.resource.is_none() {
            let path = match &self.route {
                Some(Route::Operation { name, .. }) => format!("${name}"),
                Some(r) => r.resource_type().unwrap_or_default().to_owned(),
                None => String::new(),
            };
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.query {
                q.append_pair(k, v);
            }
            let text = format!("{path}?{}", q.finish());
            entities.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(text),
            }));
        }
        let mut e = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
            "action": action,
            "recorded": format_instant(now),
            "outcome": outcome,
            "agent": [user, {
                "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
                "who": {"display": "Passerelle"},
                "requestor": false
            }],
            "source": {
                "observer": {"display": "Passerelle"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
            },
        });
        if self.export {
            e["purposeOfEvent"] = json!([{"text": "export"}]);
        }
        if let Some(msg) = error {
            e["outcomeDesc"] = json!(format!("{status}: {msg}"));
        }
        if !entities.is_empty() {
            e["entity"] = json!(entities);
        }
        e
    }
}
