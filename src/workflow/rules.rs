//! The workflow's rules, as data: loaded at start from `profiles/` (code systems and their
//! properties, value sets, concept maps), `conformance/` (the operations' parameters) and
//! `mappings/task-moves.json` (who moves a request from where to where), cross-checked so a
//! broken file stops the gateway at start with the file and field named.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The canonical base of everything the gateway ships (contract §4).
pub const CANONICAL: &str = "https://passerelle.dev/fhir/";
pub const DOSSIER_SYSTEM: &str = "https://passerelle.dev/fhir/sid/dossier";
pub const NOS_R358: &str = "https://mos.esante.gouv.fr/NOS/TRE_R358-MotifStatutPersonnePriseCharge/FHIR/TRE-R358-MotifStatutPersonnePriseCharge";

pub fn code_system(id: &str) -> String {
    format!("{CANONICAL}CodeSystem/{id}")
}

/// The shipped files the rules come from, compiled in.
pub const PROFILE_FILES: &[(&str, &str)] = &[
    (
        "CodeSystem-account-event.json",
        include_str!("../../profiles/CodeSystem-account-event.json"),
    ),
    (
        "CodeSystem-business-status.json",
        include_str!("../../profiles/CodeSystem-business-status.json"),
    ),
    (
        "CodeSystem-cancellation-reason.json",
        include_str!("../../profiles/CodeSystem-cancellation-reason.json"),
    ),
    (
        "CodeSystem-communication-category.json",
        include_str!("../../profiles/CodeSystem-communication-category.json"),
    ),
    (
        "CodeSystem-habilitation-profile.json",
        include_str!("../../profiles/CodeSystem-habilitation-profile.json"),
    ),
    (
        "CodeSystem-orientation-module.json",
        include_str!("../../profiles/CodeSystem-orientation-module.json"),
    ),
    (
        "CodeSystem-refusal-reason.json",
        include_str!("../../profiles/CodeSystem-refusal-reason.json"),
    ),
    (
        "CodeSystem-task-output-type.json",
        include_str!("../../profiles/CodeSystem-task-output-type.json"),
    ),
    (
        "ConceptMap-cancellation-reason-to-TRE-R358.json",
        include_str!("../../profiles/ConceptMap-cancellation-reason-to-TRE-R358.json"),
    ),
    (
        "ConceptMap-refusal-reason-to-TRE-R358.json",
        include_str!("../../profiles/ConceptMap-refusal-reason-to-TRE-R358.json"),
    ),
    (
        "Questionnaire-volet-administratif-social.json",
        include_str!("../../profiles/Questionnaire-volet-administratif-social.json"),
    ),
    (
        "Questionnaire-volet-medical.json",
        include_str!("../../profiles/Questionnaire-volet-medical.json"),
    ),
    (
        "Questionnaire-volet-soins-projet.json",
        include_str!("../../profiles/Questionnaire-volet-soins-projet.json"),
    ),
    (
        "StructureDefinition-AdmissionRequest.json",
        include_str!("../../profiles/StructureDefinition-AdmissionRequest.json"),
    ),
    (
        "StructureDefinition-AdmissionTask.json",
        include_str!("../../profiles/StructureDefinition-AdmissionTask.json"),
    ),
    (
        "ValueSet-admission-request-status.json",
        include_str!("../../profiles/ValueSet-admission-request-status.json"),
    ),
    (
        "ValueSet-admission-task-status.json",
        include_str!("../../profiles/ValueSet-admission-task-status.json"),
    ),
    (
        "ValueSet-business-status.json",
        include_str!("../../profiles/ValueSet-business-status.json"),
    ),
    (
        "ValueSet-cancellation-reason.json",
        include_str!("../../profiles/ValueSet-cancellation-reason.json"),
    ),
    (
        "ValueSet-communication-category.json",
        include_str!("../../profiles/ValueSet-communication-category.json"),
    ),
    (
        "ValueSet-habilitation-profile.json",
        include_str!("../../profiles/ValueSet-habilitation-profile.json"),
    ),
    (
        "ValueSet-orientation-module.json",
        include_str!("../../profiles/ValueSet-orientation-module.json"),
    ),
    (
        "ValueSet-refusal-reason.json",
        include_str!("../../profiles/ValueSet-refusal-reason.json"),
    ),
    (
        "ValueSet-task-output-type.json",
        include_str!("../../profiles/ValueSet-task-output-type.json"),
    ),
    (
        "ValueSet-task-status-reason.json",
        include_str!("../../profiles/ValueSet-task-status-reason.json"),
    ),
];

pub const OPERATION_FILES: &[(&str, &str)] = &[
    (
        "OperationDefinition-admit.json",
        include_str!("../../conformance/OperationDefinition-admit.json"),
    ),
    (
        "OperationDefinition-agree-in-principle.json",
        include_str!("../../conformance/OperationDefinition-agree-in-principle.json"),
    ),
    (
        "OperationDefinition-cancel.json",
        include_str!("../../conformance/OperationDefinition-cancel.json"),
    ),
    (
        "OperationDefinition-confirm.json",
        include_str!("../../conformance/OperationDefinition-confirm.json"),
    ),
    (
        "OperationDefinition-copy.json",
        include_str!("../../conformance/OperationDefinition-copy.json"),
    ),
    (
        "OperationDefinition-delegate.json",
        include_str!("../../conformance/OperationDefinition-delegate.json"),
    ),
    (
        "OperationDefinition-mark-read.json",
        include_str!("../../conformance/OperationDefinition-mark-read.json"),
    ),
    (
        "OperationDefinition-observatory.json",
        include_str!("../../conformance/OperationDefinition-observatory.json"),
    ),
    (
        "OperationDefinition-propose-admission.json",
        include_str!("../../conformance/OperationDefinition-propose-admission.json"),
    ),
    (
        "OperationDefinition-reactivate.json",
        include_str!("../../conformance/OperationDefinition-reactivate.json"),
    ),
    (
        "OperationDefinition-referents.json",
        include_str!("../../conformance/OperationDefinition-referents.json"),
    ),
    (
        "OperationDefinition-refuse.json",
        include_str!("../../conformance/OperationDefinition-refuse.json"),
    ),
    (
        "OperationDefinition-remind.json",
        include_str!("../../conformance/OperationDefinition-remind.json"),
    ),
    (
        "OperationDefinition-request-info.json",
        include_str!("../../conformance/OperationDefinition-request-info.json"),
    ),
    (
        "OperationDefinition-send.json",
        include_str!("../../conformance/OperationDefinition-send.json"),
    ),
    (
        "OperationDefinition-update.json",
        include_str!("../../conformance/OperationDefinition-update.json"),
    ),
    (
        "OperationDefinition-withdraw.json",
        include_str!("../../conformance/OperationDefinition-withdraw.json"),
    ),
];

const PARTS_FILE: (&str, &str) = (
    "mappings/dossier-parts.json",
    include_str!("../../mappings/dossier-parts.json"),
);

const TABS_FILE: (&str, &str) = (
    "mappings/dashboard-tabs.json",
    include_str!("../../mappings/dashboard-tabs.json"),
);

const MOVES_FILE: (&str, &str) = (
    "mappings/task-moves.json",
    include_str!("../../mappings/task-moves.json"),
);

#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct RulesError {
    pub file: String,
    pub field: String,
    pub message: String,
}

fn err(file: &str, field: impl Into<String>, message: impl Into<String>) -> RulesError {
    RulesError {
        file: file.to_owned(),
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Sending,
    Receiving,
    System,
    Administration,
}

impl Side {
    fn parse(s: &str) -> Option<Side> {
        Some(match s {
            "sending" => Side::Sending,
            "receiving" => Side::Receiving,
            "system" => Side::System,
            "administration" => Side::Administration,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Sending => "sending",
            Side::Receiving => "receiving",
            Side::System => "system",
            Side::Administration => "administration",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonSystem {
    Refusal,
    Cancellation,
    Any,
}

/// A business status (`Task.businessStatus`) and what it implies.
#[derive(Debug, Clone)]
pub struct Status {
    pub display: String,
    pub task_status: String,
    pub open: bool,
    pub required_output: Option<String>,
    pub reason: Option<ReasonSystem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Status(String),
    /// Back to the state the Task had before it was cancelled.
    Previous,
}

#[derive(Debug, Clone)]
pub struct Move {
    pub name: String,
    pub by: Vec<Side>,
    pub right: String,
    pub from: Vec<String>,
    pub to: Target,
    /// Cancel the dossier's other open Tasks with this cancellation reason.
    pub siblings: Option<String>,
    /// The dossier's status after the move.
    pub dossier: Option<String>,
    /// What happens to the dossier when this move closes its last open Task.
    pub last_open: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Reason {
    pub display: String,
    pub comment_required: bool,
    /// The TRE_R358 coding with the same (or a wider) meaning.
    pub nos: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub side: Side,
    pub rights: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub min: u32,
    /// `None` for `*`.
    pub max: Option<u32>,
    pub ptype: String,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub url: String,
    pub resources: Vec<String>,
    pub params: BTreeMap<String, Param>,
}

#[derive(Debug, Clone)]
pub struct Rules {
    pub statuses: BTreeMap<String, Status>,
    pub moves: BTreeMap<String, Move>,
    /// Orientation module code → dossier-number prefix.
    pub modules: BTreeMap<String, String>,
    pub refusal: BTreeMap<String, Reason>,
    pub cancellation: BTreeMap<String, Reason>,
    pub profiles: BTreeMap<String, Profile>,
    /// Task output type → the `value[x]` type it carries.
    pub output_types: BTreeMap<String, String>,
    /// Communication category → who sees it (`owner-unit`, `both-sides`).
    pub categories: BTreeMap<String, String>,
    /// Account event code → its display (the account history's Provenance activities).
    pub account_events: BTreeMap<String, String>,
    pub operations: BTreeMap<String, Operation>,
    /// Business status → dashboard tab; and the tab of archived requests, and the tabs'
    /// code system.
    pub tabs: BTreeMap<String, String>,
    pub archived_tab: String,
    pub tab_system: String,
    /// Questionnaire canonical URL → the prefix of the rights on that part (`medical`…).
    pub parts: BTreeMap<String, String>,
    /// The export columns (key, title), and what each business status waits for.
    pub columns: Vec<(String, String)>,
    pub pending_action: BTreeMap<String, String>,
    /// The shipped conformance resources, parsed, by file name.
    pub files: BTreeMap<String, Value>,
    /// Their canonical URLs → file name (profiles, forms, value sets are looked up by URL on
    /// every write: no scan).
    by_url: BTreeMap<String, String>,
    /// Every shipped ValueSet expanded once at load: URL → (system, code).
    value_sets: BTreeMap<String, BTreeSet<(String, String)>>,
}

fn parse(file: &str, text: &str) -> Result<Value, RulesError> {
    serde_json::from_str(text).map_err(|e| err(file, "(file)", e.to_string()))
}

/// A concept's properties as (code, value) pairs.
fn properties(c: &Value) -> BTreeMap<String, Value> {
    c["property"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let code = p["code"].as_str()?;
            let value = p
                .as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value"))
                .map(|(_, v)| v.clone())?;
            Some((code.to_owned(), value))
        })
        .collect()
}

fn concepts(cs: &Value) -> impl Iterator<Item = (&str, &Value)> {
    cs["concept"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["code"].as_str()?, c)))
}

impl Rules {
    pub fn load() -> Result<Rules, RulesError> {
        let mut files = BTreeMap::new();
        for (f, t) in PROFILE_FILES.iter().chain(OPERATION_FILES) {
            files.insert((*f).to_owned(), parse(f, t)?);
        }
        let file = |name: &str| -> Result<&Value, RulesError> {
            files
                .get(name)
                .ok_or_else(|| err(name, "(file)", "missing"))
        };

        let mut statuses = BTreeMap::new();
        let f = "CodeSystem-business-status.json";
        for (code, c) in concepts(file(f)?) {
            let p = properties(c);
            let at = |prop: &str| format!("concept[{code}].property[{prop}]");
            let task_status = p
                .get("task-status")
                .and_then(Value::as_str)
                .ok_or_else(|| err(f, at("task-status"), "missing"))?
                .to_owned();
            let reason = match p.get("reason-system").and_then(Value::as_str) {
                None => None,
                Some("refusal") => Some(ReasonSystem::Refusal),
                Some("cancellation") => Some(ReasonSystem::Cancellation),
                Some("any") => Some(ReasonSystem::Any),
                Some(o) => return Err(err(f, at("reason-system"), format!("unknown `{o}`"))),
            };
            statuses.insert(
                code.to_owned(),
                Status {
                    display: c["display"].as_str().unwrap_or(code).to_owned(),
                    task_status,
                    open: p.get("open").and_then(Value::as_bool).unwrap_or(false),
                    required_output: p
                        .get("required-output")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    reason,
                },
            );
        }

        let reasons = |f: &str, map: &str| -> Result<BTreeMap<String, Reason>, RulesError> {
            let nos: BTreeMap<String, (String, String)> = file(map)?["group"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["element"].as_array().into_iter().flatten())
                .filter_map(|e| {
                    let t = e["target"].as_array()?.first()?;
                    Some((
                        e["code"].as_str()?.to_owned(),
                        (
                            t["code"].as_str()?.to_owned(),
                            t["display"].as_str().unwrap_or_default().to_owned(),
                        ),
                    ))
                })
                .collect();
            Ok(concepts(file(f)?)
                .map(|(code, c)| {
                    let p = properties(c);
                    (
                        code.to_owned(),
                        Reason {
                            display: c["display"].as_str().unwrap_or(code).to_owned(),
                            comment_required: p
                                .get("comment-required")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            nos: nos.get(code).cloned(),
                        },
                    )
                })
                .collect())
        };
        let refusal = reasons(
            "CodeSystem-refusal-reason.json",
            "ConceptMap-refusal-reason-to-TRE-R358.json",
        )?;
        let cancellation = reasons(
            "CodeSystem-cancellation-reason.json",
            "ConceptMap-cancellation-reason-to-TRE-R358.json",
        )?;

        let f = "CodeSystem-orientation-module.json";
        let mut modules = BTreeMap::new();
        for (code, c) in concepts(file(f)?) {
            let prefix = properties(c)
                .get("number-prefix")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    err(
                        f,
                        format!("concept[{code}].property[number-prefix]"),
                        "missing",
                    )
                })?
                .to_owned();
            modules.insert(code.to_owned(), prefix);
        }

        let f = "CodeSystem-habilitation-profile.json";
        let mut profiles = BTreeMap::new();
        for (code, c) in concepts(file(f)?) {
            let p = properties(c);
            let side = p
                .get("side")
                .and_then(Value::as_str)
                .and_then(Side::parse)
                .ok_or_else(|| {
                    err(
                        f,
                        format!("concept[{code}].property[side]"),
                        "missing or unknown",
                    )
                })?;
            let rights = p
                .iter()
                .filter(|(_, v)| **v == Value::Bool(true))
                .map(|(k, _)| k.clone())
                .collect();
            profiles.insert(code.to_owned(), Profile { side, rights });
        }
        let known_rights: BTreeSet<String> = file(f)?["property"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["type"] == "boolean")
            .filter_map(|p| p["code"].as_str().map(str::to_owned))
            .collect();

        let f = "CodeSystem-task-output-type.json";
        let output_types = concepts(file(f)?)
            .map(|(code, c)| {
                let t = properties(c)
                    .get("value-type")
                    .and_then(Value::as_str)
                    .unwrap_or("dateTime")
                    .to_owned();
                (code.to_owned(), t)
            })
            .collect();
        let f = "CodeSystem-account-event.json";
        let account_events = concepts(file(f)?)
            .map(|(code, c)| {
                let display = c["display"].as_str().unwrap_or(code).to_owned();
                (code.to_owned(), display)
            })
            .collect();
        let f = "CodeSystem-communication-category.json";
        let categories = concepts(file(f)?)
            .map(|(code, c)| {
                let v = properties(c)
                    .get("visible-to")
                    .and_then(Value::as_str)
                    .unwrap_or("both-sides")
                    .to_owned();
                (code.to_owned(), v)
            })
            .collect();

        let mut operations = BTreeMap::new();
        for (f, _) in OPERATION_FILES {
            let od = file(f)?;
            let code = od["code"]
                .as_str()
                .ok_or_else(|| err(f, "code", "missing"))?;
            let mut params = BTreeMap::new();
            for p in od["parameter"].as_array().into_iter().flatten() {
                if p["use"] != "in" {
                    continue;
                }
                let name = p["name"]
                    .as_str()
                    .ok_or_else(|| err(f, "parameter.name", "missing"))?;
                params.insert(
                    name.to_owned(),
                    Param {
                        min: p["min"].as_u64().unwrap_or(0) as u32,
                        max: p["max"].as_str().and_then(|m| m.parse().ok()),
                        ptype: p["type"].as_str().unwrap_or("string").to_owned(),
                    },
                );
            }
            operations.insert(
                code.to_owned(),
                Operation {
                    url: od["url"].as_str().unwrap_or_default().to_owned(),
                    resources: od["resource"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect(),
                    params,
                },
            );
        }

        let (f, text) = MOVES_FILE;
        let table = parse(f, text)?;
        let mut moves = BTreeMap::new();
        for (name, m) in table["moves"].as_object().into_iter().flatten() {
            let at = |field: &str| format!("moves.{name}.{field}");
            let known = |code: &str, field: &str| {
                if statuses.contains_key(code) {
                    Ok(code.to_owned())
                } else {
                    Err(err(
                        f,
                        at(field),
                        format!("`{code}` is not a business status"),
                    ))
                }
            };
            let by = m["by"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    s.as_str()
                        .and_then(Side::parse)
                        .ok_or_else(|| err(f, at("by"), format!("unknown side {s}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let right = m["right"].as_str().unwrap_or_default().to_owned();
            if !known_rights.contains(&right) {
                return Err(err(
                    f,
                    at("right"),
                    format!("`{right}` is not a habilitation right"),
                ));
            }
            let from = m["from"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| known(s.as_str().unwrap_or_default(), "from"))
                .collect::<Result<Vec<_>, _>>()?;
            let to = match m["to"].as_str() {
                Some("previous") => Target::Previous,
                Some(s) => Target::Status(known(s, "to")?),
                None => return Err(err(f, at("to"), "missing")),
            };
            let siblings = m["siblings"].as_str().map(str::to_owned);
            if let Some(s) = &siblings
                && !cancellation.contains_key(s)
            {
                return Err(err(
                    f,
                    at("siblings"),
                    format!("`{s}` is not a cancellation reason"),
                ));
            }
            moves.insert(
                name.clone(),
                Move {
                    name: name.clone(),
                    by,
                    right,
                    from,
                    to,
                    siblings,
                    dossier: m["dossier"].as_str().map(str::to_owned),
                    last_open: m["last-open"].as_str().map(str::to_owned),
                },
            );
        }
        let (f, text) = TABS_FILE;
        let table = parse(f, text)?;
        let mut tabs = BTreeMap::new();
        for (tab, list) in table["tabs"].as_object().into_iter().flatten() {
            for s in list.as_array().into_iter().flatten() {
                let code = s.as_str().unwrap_or_default();
                if !statuses.contains_key(code) {
                    return Err(err(
                        f,
                        format!("tabs.{tab}"),
                        format!("`{code}` is not a business status"),
                    ));
                }
                if tabs.insert(code.to_owned(), tab.clone()).is_some() {
                    return Err(err(
                        f,
                        format!("tabs.{tab}"),
                        format!("`{code}` is in two tabs"),
                    ));
                }
            }
        }
        if let Some(missing) = statuses.keys().find(|s| !tabs.contains_key(*s)) {
            return Err(err(
                f,
                "tabs",
                format!("the business status `{missing}` is in no tab"),
            ));
        }
        let archived_tab = table["archived"]
            .as_str()
            .ok_or_else(|| err(f, "archived", "missing"))?
            .to_owned();
        let tab_system = table["system"]
            .as_str()
            .ok_or_else(|| err(f, "system", "missing"))?
            .to_owned();
        let columns = table["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let key = c["key"].as_str().unwrap_or_default();
                if !super::dashboard::COLUMNS.contains(&key) {
                    return Err(err(
                        f,
                        "columns",
                        format!(
                            "unknown column `{key}`; known: {}",
                            super::dashboard::COLUMNS.join(", ")
                        ),
                    ));
                }
                Ok((
                    key.to_owned(),
                    c["title"].as_str().unwrap_or(key).to_owned(),
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pending_action = table["pending-action"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let (f, text) = PARTS_FILE;
        let table = parse(f, text)?;
        let mut parts = BTreeMap::new();
        for (url, prefix) in table["parts"].as_object().into_iter().flatten() {
            let prefix = prefix.as_str().unwrap_or_default().to_owned();
            let shipped = files
                .values()
                .any(|q| q["resourceType"] == "Questionnaire" && q["url"].as_str() == Some(url));
            if !shipped {
                return Err(err(
                    f,
                    format!("parts.{url}"),
                    "no such Questionnaire in profiles/",
                ));
            }
            for right in ["read", "write", "validate"] {
                if !known_rights.contains(&format!("{prefix}-{right}")) {
                    return Err(err(
                        f,
                        format!("parts.{url}"),
                        format!("no right `{prefix}-{right}` in the habilitation profiles"),
                    ));
                }
            }
            parts.insert(url.clone(), prefix);
        }
        let by_url: BTreeMap<String, String> = files
            .iter()
            .filter_map(|(f, r)| Some((r["url"].as_str()?.to_owned(), f.clone())))
            .collect();
        let mut value_sets = BTreeMap::new();
        for vs in files.values().filter(|r| r["resourceType"] == "ValueSet") {
            let url = vs["url"].as_str().unwrap_or_default();
            let mut codes = BTreeSet::new();
            for inc in vs["compose"]["include"].as_array().into_iter().flatten() {
                let system = inc["system"].as_str().unwrap_or_default();
                match inc["concept"].as_array() {
                    Some(list) => {
                        for c in list {
                            if let Some(code) = c["code"].as_str() {
                                codes.insert((system.to_owned(), code.to_owned()));
                            }
                        }
                    }
                    None => {
                        let cs =
                            by_url
                                .get(system)
                                .and_then(|f| files.get(f))
                                .ok_or_else(|| {
                                    err(
                                        url,
                                        "compose.include.system",
                                        format!("no shipped CodeSystem {system}"),
                                    )
                                })?;
                        for (code, _) in concepts(cs) {
                            codes.insert((system.to_owned(), code.to_owned()));
                        }
                    }
                }
            }
            value_sets.insert(url.to_owned(), codes);
        }
        Ok(Rules {
            by_url,
            value_sets,
            parts,
            columns,
            pending_action,
            tabs,
            archived_tab,
            tab_system,
            statuses,
            moves,
            modules,
            refusal,
            cancellation,
            profiles,
            output_types,
            categories,
            account_events,
            operations,
            files,
        })
    }

    pub fn status(&self, code: &str) -> Option<&Status> {
        self.statuses.get(code)
    }

    /// The reason code system a code belongs to, with its rules.
    pub fn reason(&self, system: &str, code: &str) -> Option<&Reason> {
        if system == code_system("refusal-reason") {
            self.refusal.get(code)
        } else if system == code_system("cancellation-reason") {
            self.cancellation.get(code)
        } else {
            None
        }
    }

    /// Whether a habilitation profile has a right (a boolean property of the profile code
    /// system: `request-send`, `medical-read`…).
    pub fn has_right(&self, profile: &str, right: &str) -> bool {
        self.profiles
            .get(profile)
            .is_some_and(|p| p.rights.contains(right))
    }

    /// The codes of a shipped ValueSet, as (system, code).
    pub fn value_set(&self, url: &str) -> Option<&BTreeSet<(String, String)>> {
        self.value_sets.get(url)
    }

    /// A shipped conformance resource of `rtype` by its canonical URL.
    pub fn resource(&self, rtype: &str, url: &str) -> Option<&Value> {
        let r = self.files.get(self.by_url.get(url)?)?;
        (r["resourceType"] == rtype).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_load_and_agree() {
        let r = Rules::load().unwrap();
        assert_eq!(r.statuses["agreed-in-principle"].task_status, "received");
        assert_eq!(
            r.statuses["agreed-in-principle"].required_output.as_deref(),
            Some("admission-window")
        );
        assert_eq!(r.moves["confirm"].siblings.as_deref(), Some("not-selected"));
        assert_eq!(r.moves["reactivate"].to, Target::Previous);
        assert_eq!(r.modules["smr"], "s");
        assert_eq!(r.modules["ehpad"], "ga");
        assert!(r.refusal["other"].comment_required);
        assert_eq!(r.cancellation["auto-cancel"].nos.as_ref().unwrap().0, "95");
        assert_eq!(r.profiles["responsable-admission"].side, Side::Receiving);
        assert!(
            r.profiles["prescripteur-medical"]
                .rights
                .contains("request-send")
        );
        assert_eq!(
            r.operations["agree-in-principle"].params["window"].ptype,
            "Period"
        );
        assert_eq!(r.categories["unit-note"], "owner-unit");
        let vs = r
            .value_set("https://passerelle.dev/fhir/ValueSet/admission-task-status")
            .unwrap();
        assert!(vs.contains(&("http://hl7.org/fhir/task-status".into(), "requested".into())));
        // every move's target has a task status, every operation a move or a dossier handler
        for name in r.operations.keys() {
            assert!(
                r.moves.contains_key(name)
                    || [
                        "send",
                        "update",
                        "remind",
                        "observatory",
                        "copy",
                        "referents",
                        "delegate"
                    ]
                    .contains(&name.as_str()),
                "{name}"
            );
        }
    }
}
