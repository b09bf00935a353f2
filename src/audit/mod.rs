//! The audit trail: one `AuditEvent` (IHE BALP "RESTful" shape) for every request that reads
//! or writes patient data, refusals included, with who (the habilitation), from where, what
//! (the resource, the patient, or the query), when and the outcome.
//!
//! Requests hand their events to [`Auditor::record`]; one writer task stores them in batches
//! (one write job per batch, gathered for up to 50 ms) so an audited request costs a channel
//! send, not a commit of its own (measured: creates at c=1 434 → 620–660/s on SQLite). The
//! channel is bounded: when the writer falls behind, requests wait rather than go unaudited.
//! `flush` waits until everything recorded so far is stored (tests, shutdown).
//!
//! Events are kept in the store's append-only audit table, not as versioned resources
//! (`store::AuditRow`; [`api`] serves them as FHIR). A REST access is kept as what varies
//! ([`RestAccess`]) and written out whole when served ([`served_body`]); other events (sign-ins,
//! tokens) are kept whole. AuditEvents are read-only through the API (the CapabilityStatement
//! lists no write), and only référents and the platform-wide system read them.

pub mod api;

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::Value;
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
/// Longest an event waits for others to share its commit.
const LINGER: std::time::Duration = std::time::Duration::from_millis(50);

enum Msg {
    Row(Box<AuditRow>),
    Flush(oneshot::Sender<()>),
}

/// The handle requests record through; cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    clock: std::sync::Arc<dyn crate::time::Clock>,
}

impl Auditor {
    /// Starts the writer task.
    pub fn start(store: Store) -> Auditor {
        let (tx, mut rx) = mpsc::channel::<Msg>(10_000);
        let clock = store.clock().clone();
        tokio::spawn(async move {
            let mut batch: Vec<AuditRow> = Vec::new();
            let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(m) = next.take() {
                    match m {
                        Msg::Row(r) => batch.push(*r),
                        Msg::Flush(w) => waiting.push(w),
                    }
                    if batch.len() < BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                // Let the batch gather for LINGER before writing it: an audit commit of its
                // own per request would double the commits of a write at low concurrency, and
                // on SQLite each commit empties every reader's page cache. A flush writes at
                // once.
                let deadline = tokio::time::Instant::now() + LINGER;
                while waiting.is_empty() && batch.len() < BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(Msg::Row(r))) => batch.push(*r),
                        Ok(Some(Msg::Flush(w))) => waiting.push(w),
                        Ok(None) | Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    let rows: Vec<AuditRow> = std::mem::take(&mut batch);
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
        Auditor { tx, clock }
    }

    /// Records one AuditEvent (its `id` and `meta` are the trail's: any given are dropped).
    pub async fn record(&self, event: Value) {
        self.record_row(row(event, self.clock.now())).await;
    }

    /// Records one event already in the trail's form (`Access::rows`).
    pub async fn record_row(&self, row: AuditRow) {
        if self.tx.send(Msg::Row(Box::new(row))).await.is_err() {
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

/// The elements of a resource its audit event names.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(rename = "resourceType", borrow)]
    rtype: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject: Option<Ref<'a>>,
    #[serde(rename = "for", borrow)]
    for_: Option<Ref<'a>>,
    #[serde(borrow)]
    patient: Option<Ref<'a>>,
}

#[derive(serde::Deserialize)]
struct Ref<'a> {
    #[serde(borrow)]
    reference: Option<Cow<'a, str>>,
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
        let reference = |k: &str| resource[k]["reference"].as_str();
        self.note(
            resource["resourceType"].as_str().unwrap_or_default(),
            resource["id"].as_str(),
            [reference("subject"), reference("for"), reference("patient")],
        );
    }

    /// The same, from a resource's JSON text: only the elements it needs are read (a served
    /// resource is not parsed whole for its audit event).
    pub fn saw_text(&mut self, text: &str) {
        match serde_json::from_str::<Seen<'_>>(text) {
            Ok(s) => {
                fn r<'s>(x: &'s Option<Ref<'_>>) -> Option<&'s str> {
                    x.as_ref().and_then(|x| x.reference.as_deref())
                }
                self.note(
                    s.rtype.as_deref().unwrap_or_default(),
                    s.id.as_deref(),
                    [r(&s.subject), r(&s.for_), r(&s.patient)],
                );
            }
            // an element of another shape than a Reference: read it whole
            Err(_) => {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    self.saw(&v);
                }
            }
        }
    }

    /// The same for every resource of a batch or transaction response Bundle's text: the
    /// event names the patients its entries touched, not the response Bundle.
    pub fn saw_entries_text(&mut self, text: &str) {
        #[derive(serde::Deserialize)]
        struct Entries<'a> {
            #[serde(borrow, default)]
            entry: Vec<Entry<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct Entry<'a> {
            #[serde(borrow)]
            resource: Option<&'a serde_json::value::RawValue>,
        }
        if let Ok(b) = serde_json::from_str::<Entries<'_>>(text) {
            for r in b.entry.into_iter().filter_map(|e| e.resource) {
                self.saw_text(r.get());
            }
        }
        self.resource = None;
    }

    fn note(&mut self, rtype: &str, id: Option<&str>, references: [Option<&str>; 3]) {
        if let Some(id) = id {
            self.resource = Some(format!("{rtype}/{id}"));
            if rtype == "Patient" {
                let me = format!("Patient/{id}");
                if !self.patients.contains(&me) {
                    self.patients.push(me);
                }
            }
        }
        for r in references.into_iter().flatten() {
            if r.starts_with("Patient/") && !self.patients.iter().any(|p| p == r) {
                self.patients.push(r.to_owned());
            }
        }
    }

    /// The audit rows of an answer of `status` (with the error's words, if any): one event
    /// per patient the request touched, as IHE BALP asks, or one when it named none.
    pub fn rows(&self, status: u16, error: Option<&str>, now: i64) -> Vec<AuditRow> {
        if self.patients.len() <= 1 {
            return vec![self.row(status, error, now, self.patients.first())];
        }
        self.patients
            .iter()
            .map(|p| self.row(status, error, now, Some(p)))
            .collect()
    }

    /// The event about one patient (or none), written straight from typed parts: one
    /// allocation for its JSON rather than a tree of values (it is made for every read).
    fn row(
        &self,
        status: u16,
        error: Option<&str>,
        now: i64,
        patient: Option<&String>,
    ) -> AuditRow {
        // the instant as written in the event (milliseconds), so the column says the same
        let now = crate::time::to_millis_precision(now);
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
        let display;
        let who = match &self.caller {
            Some(Caller::Person(h)) => Who::Reference(Cow::Borrowed(&h.role)),
            Some(c) => {
                display = c.display();
                Who::Display(Cow::Borrowed(&display))
            }
            None => Who::Display(Cow::Borrowed("anonymous")),
        };
        let mut entity = Vec::new();
        if let Some(p) = patient {
            entity.push(Kept::Patient(Cow::Borrowed(p)));
        }
        let resource = self
            .resource
            .as_ref()
            .filter(|r| patient != Some(r) && !self.patients.contains(r));
        if let Some(r) = resource {
            entity.push(Kept::Resource(Cow::Borrowed(r)));
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
            entity.push(Kept::Query(Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(text),
            )));
        }
        let access = RestAccess {
            subtype: Cow::Borrowed(subtype),
            action: Cow::Borrowed(action),
            outcome: Cow::Borrowed(outcome),
            who,
            address: self.address.as_deref().map(Cow::Borrowed),
            desc: error.map(|msg| Cow::Owned(format!("{status}: {msg}"))),
            export: self.export,
            entity,
        };
        let split = |r: &String| r.split_once('/').map(|(t, i)| (t.to_owned(), i.to_owned()));
        AuditRow {
            recorded: now,
            agent: match &self.caller {
                Some(Caller::Person(h)) => split(&h.role),
                _ => None,
            },
            patient: patient.and_then(split),
            entity: resource.and_then(split),
            kind: (EVENT_TYPE.into(), "rest".into()),
            subtype: (INTERACTION.into(), subtype.into()),
            action: action.into(),
            outcome: outcome.into(),
            // a typed value always serialises; an empty object would still be an event
            body: serde_json::to_string(&Row { rest: access }).unwrap_or_else(|_| "{}".into()),
        }
    }
}

const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The body of a REST access's row: `{"rest": …}`. No AuditEvent has an element `rest`, so
/// such a body is never an event kept whole (those of [`row`], and rows written before).
#[derive(serde::Serialize, serde::Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    rest: RestAccess<'a>,
}

/// A REST access as the trail keeps it: what varies from one access to the next. The event
/// served ([`RestEvent`]) is written from it and the row's time when it is read: the codings,
/// their displays, the gateway's own agent and the source are the same in every event, and
/// kept whole they were ~1.2 KB of a read's 1.4 KB row (measured: BENCHMARKS.md, "A REST
/// access kept as what varies").
#[derive(serde::Serialize, serde::Deserialize)]
struct RestAccess<'a> {
    #[serde(borrow)]
    subtype: Cow<'a, str>,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(borrow)]
    who: Who<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    address: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    desc: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    export: bool,
    #[serde(default, borrow, skip_serializing_if = "Vec::is_empty")]
    entity: Vec<Kept<'a>>,
}

/// An entity of a REST access: its patient, the resource, or the query (base64).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kept<'a> {
    Patient(#[serde(borrow)] Cow<'a, str>),
    Resource(#[serde(borrow)] Cow<'a, str>),
    Query(#[serde(borrow)] Cow<'a, str>),
}

impl RestAccess<'_> {
    /// The IHE BALP "RESTful" AuditEvent of the access, recorded at `recorded`.
    fn event(&self, recorded: Micros) -> RestEvent<'_> {
        let entity = self
            .entity
            .iter()
            .map(|e| match e {
                Kept::Patient(r) => Entity {
                    what: Some(Reference { reference: r }),
                    r#type: Coding::new(ENTITY_TYPE, "1", "Person"),
                    role: Coding::new(OBJECT_ROLE, "1", "Patient"),
                    query: None,
                },
                Kept::Resource(r) => Entity {
                    what: Some(Reference { reference: r }),
                    r#type: Coding::new(ENTITY_TYPE, "2", "System Object"),
                    role: Coding::new(OBJECT_ROLE, "4", "Domain Resource"),
                    query: None,
                },
                Kept::Query(q) => Entity {
                    what: None,
                    r#type: Coding::new(ENTITY_TYPE, "2", "System Object"),
                    role: Coding::new(OBJECT_ROLE, "24", "Query"),
                    query: Some(q),
                },
            })
            .collect();
        RestEvent {
            r#type: Coding::new(EVENT_TYPE, "rest", "Restful Operation"),
            subtype: [Code {
                system: INTERACTION,
                code: &self.subtype,
            }],
            action: &self.action,
            recorded: format_instant(recorded),
            outcome: &self.outcome,
            outcome_desc: self.desc.as_deref(),
            purpose_of_event: self.export.then_some([Text { text: "export" }]),
            agent: (
                UserAgent {
                    r#type: Concept {
                        coding: [Coding::new(
                            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "IRCP",
                            "information recipient",
                        )],
                    },
                    who: &self.who,
                    requestor: true,
                    network: self.address.as_deref().map(|address| Network {
                        address,
                        r#type: "2",
                    }),
                },
                SourceAgent {
                    r#type: Concept {
                        coding: [Coding::new(
                            "http://dicom.nema.org/resources/ontology/DCM",
                            "110153",
                            "Source Role ID",
                        )],
                    },
                    who: Who::Display(Cow::Borrowed("Passerelle")),
                    requestor: false,
                },
            ),
            source: Source {
                observer: Who::Display(Cow::Borrowed("Passerelle")),
                r#type: [Coding::new(
                    "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "4",
                    "Application Server",
                )],
            },
            entity,
        }
    }
}

/// The event an audit row's body stands for, as JSON without `resourceType`, `id` and
/// `meta`: a REST access written out as its AuditEvent, recorded at `recorded` (the row's
/// time); any other body (an event kept whole) as it is.
pub fn served_body(body: &str, recorded: Micros) -> Cow<'_, str> {
    if body.starts_with(r#"{"rest":"#)
        && let Ok(row) = serde_json::from_str::<Row<'_>>(body)
        && let Ok(text) = serde_json::to_string(&row.rest.event(recorded))
    {
        return Cow::Owned(text);
    }
    Cow::Borrowed(body)
}

/// The IHE BALP "RESTful" AuditEvent of one access, as served (without `resourceType`, `id`
/// and `meta`: the trail adds them).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RestEvent<'a> {
    r#type: Coding<'a>,
    subtype: [Code<'a>; 1],
    action: &'a str,
    recorded: String,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose_of_event: Option<[Text<'a>; 1]>,
    agent: (UserAgent<'a>, SourceAgent<'a>),
    source: Source<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entity: Vec<Entity<'a>>,
}

#[derive(serde::Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    display: &'a str,
}

impl<'a> Coding<'a> {
    fn new(system: &'a str, code: &'a str, display: &'a str) -> Self {
        Coding {
            system,
            code,
            display,
        }
    }
}

#[derive(serde::Serialize)]
struct Code<'a> {
    system: &'a str,
    code: &'a str,
}

#[derive(serde::Serialize)]
struct Concept<'a> {
    coding: [Coding<'a>; 1],
}

#[derive(serde::Serialize)]
struct Text<'a> {
    text: &'a str,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Who<'a> {
    Reference(#[serde(borrow)] Cow<'a, str>),
    Display(#[serde(borrow)] Cow<'a, str>),
}

#[derive(serde::Serialize)]
struct UserAgent<'a> {
    r#type: Concept<'a>,
    who: &'a Who<'a>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
}

#[derive(serde::Serialize)]
struct SourceAgent<'a> {
    r#type: Concept<'a>,
    who: Who<'a>,
    requestor: bool,
}

#[derive(serde::Serialize)]
struct Network<'a> {
    address: &'a str,
    r#type: &'a str,
}

#[derive(serde::Serialize)]
struct Source<'a> {
    observer: Who<'a>,
    r#type: [Coding<'a>; 1],
}

#[derive(serde::Serialize)]
struct Entity<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<Reference<'a>>,
    r#type: Coding<'a>,
    role: Coding<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Reference<'a> {
    reference: &'a str,
}

/// The audit table's row of an event: its search columns, and its JSON without `id` and
/// `meta` (the row's sequence number and time stand for them).
pub fn row(mut event: Value, now: Micros) -> AuditRow {
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
    let (kind, subtype) = (coding(&event["type"]), coding(&event["subtype"][0]));
    let action = event["action"].as_str().unwrap_or_default().to_owned();
    let outcome = event["outcome"].as_str().unwrap_or_default().to_owned();
    if let Some(o) = event.as_object_mut() {
        o.remove("resourceType");
        o.remove("id");
        o.remove("meta");
    }
    AuditRow {
        recorded,
        agent,
        patient,
        entity,
        kind,
        subtype,
        action,
        outcome,
        body: event.to_string(),
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

    /// An event as served: its row's body written out, with `resourceType`.
    fn served(r: &AuditRow) -> Value {
        let mut v: Value = serde_json::from_str(&served_body(&r.body, r.recorded)).unwrap();
        v["resourceType"] = Value::String("AuditEvent".into());
        v
    }

    /// The columns of the row `row` makes of an event served, against those of `r`.
    fn same_columns(r: &AuditRow) {
        let again = row(served(r), 0);
        assert_eq!(
            AuditRow {
                body: String::new(),
                ..again
            },
            AuditRow {
                body: String::new(),
                ..r.clone()
            }
        );
    }

    #[test]
    fn a_search_about_two_patients_is_two_events_each_with_its_patient() {
        let rows = search_access().rows(200, None, 0);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].patient, Some(("Patient".into(), "a".into())));
        assert_eq!(rows[1].patient, Some(("Patient".into(), "b".into())));
        for r in &rows {
            assert_eq!(r.agent, Some(("PractitionerRole".into(), "r1".into())));
            assert_eq!(r.subtype.1, "search-type");
            assert_eq!(r.action, "E");
            assert_eq!(r.entity, None);
            assert!(!r.body.contains("resourceType"));
            // the columns say what the served event says
            same_columns(r);
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
            (read.clone(), 200, None),
            (refused, 403, Some("forbidden")),
        ] {
            for r in a.rows(status, error, 1_700_000_000_000_000) {
                let e = served(&r);
                let issues = crate::fhir::validate::validate_resource(model, &e);
                assert!(issues.is_empty(), "{e}: {issues:?}");
                same_columns(&r);
            }
        }
        let r = read.rows(200, None, 0).remove(0);
        assert_eq!(r.entity, Some(("Task".into(), "t1".into())));
        assert_eq!(r.action, "R");
    }

    #[test]
    fn a_rest_access_is_kept_as_what_varies_and_served_whole() {
        let mut read = search_access();
        read.route = Some(Route::Instance("Task".into(), "t1".into()));
        read.resource = Some("Task/t1".into());
        read.patients = vec!["Patient/a".into()];
        let r = read.rows(200, None, 1_700_000_000_123_000).remove(0);
        assert!(r.body.len() < 250, "{}", r.body);
        assert!(r.body.starts_with(r#"{"rest":"#), "{}", r.body);
        let e = served(&r);
        assert_eq!(e["recorded"], "2023-11-14T22:13:20.123Z");
        assert_eq!(e["subtype"][0]["code"], "read");
        assert_eq!(e["source"]["type"][0]["display"], "Application Server");
        assert_eq!(e["agent"][0]["who"]["reference"], "PractitionerRole/r1");
        assert_eq!(e["agent"][0]["network"]["address"], "10.0.0.1");
        assert_eq!(e["agent"][1]["who"]["display"], "Passerelle");
        assert_eq!(e["entity"][0]["what"]["reference"], "Patient/a");
        assert_eq!(e["entity"][0]["role"]["code"], "1");
        assert_eq!(e["entity"][1]["what"]["reference"], "Task/t1");
        assert_eq!(e["entity"][1]["role"]["display"], "Domain Resource");
        // a refused search keeps its words and its query
        let mut refused = search_access();
        refused.export = true;
        let r = refused.rows(403, Some("forbidden"), 0).remove(0);
        let e = served(&r);
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["outcomeDesc"], "403: forbidden");
        assert_eq!(e["purposeOfEvent"][0]["text"], "export");
        let query = e["entity"][1]["query"].as_str().unwrap();
        let text = base64::engine::general_purpose::STANDARD
            .decode(query)
            .unwrap();
        assert_eq!(text, b"Task?status=requested");
        // an event kept whole, or a body that only looks like an access, is served as it is
        for body in [r#"{"action":"R"}"#, r#"{"rest":1}"#] {
            assert_eq!(served_body(body, 0), body);
        }
    }

    #[test]
    fn only_what_the_event_names_is_read_from_a_served_resource() {
        let mut a = Access::default();
        a.saw_text(r#"{"resourceType":"Task","id":"t1","for":{"reference":"Patient/p1"},"input":[{"valueDecimal":4.50}]}"#);
        assert_eq!(a.resource.as_deref(), Some("Task/t1"));
        assert_eq!(a.patients, ["Patient/p1"]);
        // an element of another shape is read the long way
        let mut b = Access::default();
        b.saw_text(r#"{"resourceType":"Patient","id":"p2","patient":[1]}"#);
        assert_eq!(b.patients, ["Patient/p2"]);
    }

    #[test]
    fn a_transaction_names_the_patients_of_its_entries_once_each() {
        let mut a = Access::default();
        a.saw_entries_text(
            r#"{"resourceType":"Bundle","id":"b","type":"transaction-response","entry":[
              {"fullUrl":"x","resource":{"resourceType":"Task","id":"t1","for":{"reference":"Patient/p1"}},"response":{"status":"201 Created"}},
              {"resource":{"resourceType":"Patient","id":"p1"},"response":{"status":"201 Created"}},
              {"response":{"status":"204 No Content"}},
              {"resource":{"resourceType":"ServiceRequest","id":"s","subject":{"reference":"Patient/p2"}}}]}"#,
        );
        assert_eq!(a.patients, ["Patient/p1", "Patient/p2"]);
        assert_eq!(
            a.resource, None,
            "the response Bundle is no resource of the trail"
        );
    }
}
