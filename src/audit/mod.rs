//! The audit trail: one `AuditEvent` (IHE BALP "RESTful" shape) for every request that reads
//! or writes patient data, refusals included, with who (the habilitation), from where, what
//! (the resource, the patient, or the query), when and the outcome.
//!
//! Requests hand their events to [`Auditor::record`]; one writer task stores them in batches
//! (one write job per batch) so an audited read costs a channel send, not a commit. The
//! channel is bounded: when the writer falls behind, requests wait rather than go unaudited.
//! `flush` waits until everything recorded so far is stored (tests, shutdown).
//!
//! Events are kept in the store's append-only audit table, not as versioned resources
//! (`store::AuditRow`; [`api`] serves them as FHIR). AuditEvents are read-only through the
//! API (the CapabilityStatement lists no write), and only référents and the platform-wide
//! system read them.

pub mod api;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::auth::Caller;
use crate::fhir::interaction::Route;
use crate::fhir::reference;
use crate::store::{AuditRow, Store, StoreError};
use crate::time::{Micros, fhir_date_range, format_instant};

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

/// Most events one write job stores.
const BATCH: usize = 1000;

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
    pub fn start(store: Store) -> Auditor {
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
                    let now = store.clock().now();
                    let rows: Vec<AuditRow> = batch.drain(..).map(|e| row(&e, now)).collect();
                    let n = rows.len();
                    let stored: Result<(), StoreError> = store
                        .write(move |tx| Box::pin(async move { tx.append_audit(rows).await }))
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

    /// Records one AuditEvent (its `id` and `meta` are the trail's: any given are dropped).
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

    /// The AuditEvents of an answer of `status` (with the error's words, if any): one per
    /// patient the request touched, as IHE BALP asks, or one when it named none.
    pub fn events(&self, status: u16, error: Option<&str>, now: i64) -> Vec<Value> {
        if self.patients.len() <= 1 {
            return vec![self.event(status, error, now, self.patients.first())];
        }
        self.patients
            .iter()
            .map(|p| self.event(status, error, now, Some(p)))
            .collect()
    }

    /// The AuditEvent about one patient (or none).
    fn event(&self, status: u16, error: Option<&str>, now: i64, patient: Option<&String>) -> Value {
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
            Some(c) => json!({"display": c.display()}),
            None => json!({"display": "anonymous"}),
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
        if let Some(p) = patient {
            entities.push(json!({
                "what": {"reference": p},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
            }));
        }
        if let Some(r) = &self.resource
            && patient != Some(r)
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

/// The audit table's row of an event: its search columns, and its JSON without `id` and
/// `meta` (the row's sequence number and time stand for them).
pub fn row(event: &Value, now: Micros) -> AuditRow {
    let recorded = event["recorded"]
        .as_str()
        .and_then(fhir_date_range)
        .map_or(now, |(lo, _)| lo);
    let local = |v: &Value| {
        v["reference"]
            .as_str()
            .and_then(reference::parse)
            .filter(|r| r.base.is_none())
            .map(|r| (r.rtype.to_owned(), r.id.to_owned()))
    };
    let agent = event["agent"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["requestor"] == Value::Bool(true))
        .and_then(|a| local(&a["who"]));
    let entities: Vec<&Value> = event["entity"].as_array().into_iter().flatten().collect();
    let role = |e: &&Value| e["role"]["code"].as_str().map(str::to_owned);
    let patient = entities
        .iter()
        .find(|e| role(e).as_deref() == Some("1"))
        .and_then(|e| local(&e["what"]));
    let entity = entities
        .iter()
        .find(|e| role(e).as_deref() != Some("1") && e["what"].is_object())
        .and_then(|e| local(&e["what"]));
    let coding = |v: &Value| {
        (
            v["system"].as_str().unwrap_or_default().to_owned(),
            v["code"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let mut body = event.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("resourceType");
        o.remove("id");
        o.remove("meta");
    }
    AuditRow {
        recorded,
        agent,
        patient,
        entity,
        kind: coding(&event["type"]),
        subtype: coding(&event["subtype"][0]),
        action: event["action"].as_str().unwrap_or_default().to_owned(),
        outcome: event["outcome"].as_str().unwrap_or_default().to_owned(),
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Habilitation;

    fn search_access() -> Access {
        Access {
            caller: Some(Caller::Person(Habilitation {
                role: "PractitionerRole/r1".into(),
                practitioner: None,
                profile: "responsable-admission".into(),
                organization: None,
                services: vec![],
                delegated_by: None,
            })),
            address: Some("10.0.0.1".into()),
            method: "GET".into(),
            route: Some(Route::Type("Task".into())),
            query: vec![("status".into(), "requested".into())],
            resource: None,
            patients: vec!["Patient/a".into(), "Patient/b".into()],
            export: false,
        }
    }

    #[test]
    fn a_search_about_two_patients_is_two_events_each_with_its_patient() {
        let events = search_access().events(200, None, 0);
        assert_eq!(events.len(), 2);
        let rows: Vec<AuditRow> = events.iter().map(|e| row(e, 0)).collect();
        assert_eq!(rows[0].patient, Some(("Patient".into(), "a".into())));
        assert_eq!(rows[1].patient, Some(("Patient".into(), "b".into())));
        for r in &rows {
            assert_eq!(r.agent, Some(("PractitionerRole".into(), "r1".into())));
            assert_eq!(r.subtype.1, "search-type");
            assert_eq!(r.action, "E");
            assert_eq!(r.entity, None);
            assert!(!r.body.contains("resourceType"));
        }
    }

    #[test]
    fn every_kind_of_event_is_a_valid_audit_event() {
        let model = crate::fhir::model::Model::r4();
        let mut read = search_access();
        read.route = Some(Route::Instance("Task".into(), "t1".into()));
        read.resource = Some("Task/t1".into());
        read.patients = vec!["Patient/a".into()];
        let mut refused = search_access();
        refused.caller = Some(Caller::Anonymous);
        refused.export = true;
        for (a, status, error) in [
            (search_access(), 200, None),
            (read, 200, None),
            (refused, 403, Some("forbidden")),
        ] {
            for e in a.events(status, error, 1_700_000_000_000_000) {
                let issues = crate::fhir::validate::validate_resource(model, &e);
                assert!(issues.is_empty(), "{e}: {issues:?}");
            }
        }
        let r = row(
            &{
                let mut a = search_access();
                a.route = Some(Route::Instance("Task".into(), "t1".into()));
                a.resource = Some("Task/t1".into());
                a.patients = vec!["Patient/a".into()];
                a.events(200, None, 0).remove(0)
            },
            0,
        );
        assert_eq!(r.entity, Some(("Task".into(), "t1".into())));
        assert_eq!(r.action, "R");
    }
}
