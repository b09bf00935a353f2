//! The moves of a request, as pure functions on Task bodies: what a move changes
//! ([`apply`]), which move a plain `PUT`/`PATCH` makes ([`detect`]), and who may make it
//! ([`authorize`]). No I/O here: the callers load and store.

use serde_json::{Value, json};

use super::rules::{Move, NOS_R358, ReasonSystem, Rules, Side, Target, code_system};
use crate::auth::Caller;
use crate::fhir::error::{Error, Issue};

/// What a move carries, from an operation's Parameters or read off a `PUT`'s Task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    /// `window` (Period), or `approximate-date` made a Period with start = end.
    pub window: Option<Value>,
    /// `date` (dateTime).
    pub date: Option<String>,
    /// `reason` (Coding).
    pub reason: Option<Value>,
    pub comment: Option<String>,
    pub message: Option<String>,
}

pub const ARCHIVED_TAG: &str = "archived";
/// The system of the gateway's tags (`meta.tag`), e.g. `archived`.
pub const TAG_SYSTEM: &str = "https://passerelle.dev/fhir/CodeSystem/task-tag";

pub fn rule(name: &str, msg: impl Into<String>) -> Error {
    Error::Unprocessable(vec![Issue::error(
        "business-rule",
        format!("{name}: {}", msg.into()),
    )])
}

pub fn business_status(task: &Value) -> Option<&str> {
    let system = code_system("business-status");
    task["businessStatus"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["system"].as_str() == Some(system.as_str()))
        .and_then(|c| c["code"].as_str())
}

pub fn is_archived(task: &Value) -> bool {
    task["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["system"].as_str() == Some(TAG_SYSTEM) && t["code"] == ARCHIVED_TAG)
}

fn output_index(task: &Value, otype: &str) -> Option<usize> {
    let system = code_system("task-output-type");
    task["output"].as_array()?.iter().position(|o| {
        o["type"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["system"].as_str() == Some(system.as_str()) && c["code"] == otype)
    })
}

/// The output of a type, as its `value[x]` (`valuePeriod`, `valueDateTime`).
pub fn output<'t>(task: &'t Value, otype: &str) -> Option<&'t Value> {
    let i = output_index(task, otype)?;
    task["output"][i]
        .as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| v)
}

fn set_output(task: &mut Value, otype: &str, vtype: &str, value: Value) {
    let entry = json!({
        "type": {"coding": [{"system": code_system("task-output-type"), "code": otype}]},
        format!("value{}{}", vtype[..1].to_ascii_uppercase(), &vtype[1..]): value,
    });
    match output_index(task, otype) {
        Some(i) => task["output"][i] = entry,
        None => match task["output"].as_array_mut() {
            Some(list) => list.push(entry),
            None => task["output"] = json!([entry]),
        },
    }
}

/// The reason codings a status accepts, by system.
fn reason_systems(rs: ReasonSystem) -> Vec<String> {
    match rs {
        ReasonSystem::Refusal => vec![code_system("refusal-reason")],
        ReasonSystem::Cancellation => vec![code_system("cancellation-reason")],
        ReasonSystem::Any => vec![
            code_system("refusal-reason"),
            code_system("cancellation-reason"),
        ],
    }
}

/// The Task after `mv`, from `task` (its current version) and `input`. `before_cancel` is the
/// version to go back to, for a move to the previous state.
pub fn apply(
    rules: &Rules,
    mv: &Move,
    task: &Value,
    input: &Input,
    before_cancel: Option<&Value>,
    now: &str,
) -> Result<Value, Error> {
    let name = format!("${}", mv.name);
    let current = business_status(task)
        .ok_or_else(|| rule(&name, "the Task has no business status of the gateway"))?;
    if is_archived(task) {
        return Err(Error::Conflict(format!(
            "{name}: the request is archived; it can no longer change"
        )));
    }
    if !mv.from.iter().any(|f| f == current) {
        if let Target::Status(to) = &mv.to
            && to == current
        {
            return Err(Error::Conflict(format!(
                "{name}: the request is already `{current}`"
            )));
        }
        return Err(rule(
            &format!("move-from ({name})"),
            format!(
                "not allowed from `{current}`; allowed from {}",
                mv.from.join(", ")
            ),
        ));
    }
    let mut next = task.clone();
    let to = match &mv.to {
        Target::Status(s) => s.clone(),
        Target::Previous => {
            let prev = before_cancel
                .ok_or_else(|| rule(&name, "no earlier state of this request to go back to"))?;
            for k in ["status", "businessStatus", "statusReason", "output"] {
                match prev.get(k) {
                    Some(v) => next[k] = v.clone(),
                    None => {
                        if let Some(o) = next.as_object_mut() {
                            o.remove(k);
                        }
                    }
                }
            }
            return Ok(next);
        }
    };
    let status = rules
        .status(&to)
        .ok_or_else(|| rule(&name, format!("unknown target `{to}`")))?;
    next["status"] = json!(status.task_status);
    next["businessStatus"] = json!({
        "coding": [{"system": code_system("business-status"), "code": to, "display": status.display}]
    });
    if let Some(otype) = &status.required_output {
        let vtype = rules
            .output_types
            .get(otype)
            .map_or("dateTime", String::as_str);
        let value = match vtype {
            "Period" => input.window.clone().ok_or_else(|| {
                rule(
                    &format!("{name} needs a window"),
                    "give `window` (Period) or `approximate-date` (date)",
                )
            })?,
            _ => match (&input.date, otype.as_str()) {
                (Some(d), _) => json!(d),
                (None, "admission-date") => json!(now),
                (None, _) => {
                    return Err(rule(
                        &format!("{name} needs a date"),
                        "give `date` (dateTime)",
                    ));
                }
            },
        };
        check_value(&name, vtype, &value)?;
        set_output(&mut next, otype, vtype, value);
    }
    match status.reason {
        Some(rs) => {
            let systems = reason_systems(rs);
            let coding = input.reason.as_ref().ok_or_else(|| {
                rule(
                    &format!("{name} needs a reason"),
                    format!("give `reason`, a Coding from {}", systems.join(" or ")),
                )
            })?;
            let system = coding["system"].as_str().unwrap_or_default();
            let code = coding["code"].as_str().unwrap_or_default();
            let reason = rules
                .reason(system, code)
                .filter(|_| systems.iter().any(|s| s == system))
                .ok_or_else(|| {
                    rule(
                        &format!("{name} reason"),
                        format!(
                            "`{system}#{code}` is not a code of {}",
                            systems.join(" or ")
                        ),
                    )
                })?;
            let comment = input
                .comment
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty());
            if reason.comment_required && comment.is_none() {
                return Err(rule(
                    &format!("{name} comment"),
                    format!("the reason `{code}` needs a `comment`"),
                ));
            }
            let mut codings =
                vec![json!({"system": system, "code": code, "display": reason.display})];
            if let Some((nos, display)) = &reason.nos {
                codings.push(json!({"system": NOS_R358, "code": nos, "display": display}));
            }
            let mut sr = json!({ "coding": codings });
            if let Some(c) = comment {
                sr["text"] = json!(c);
            }
            next["statusReason"] = sr;
        }
        None => {
            if let Some(o) = next.as_object_mut() {
                o.remove("statusReason");
            }
        }
    }
    Ok(next)
}

/// A date or Period given to a move must be a FHIR value of its type.
fn check_value(name: &str, vtype: &str, v: &Value) -> Result<(), Error> {
    let ok_date = |s: Option<&str>| s.is_some_and(|s| crate::time::fhir_date_range(s).is_some());
    let ok = match vtype {
        "Period" => {
            let (s, e) = (v["start"].as_str(), v["end"].as_str());
            (s.is_some() || e.is_some())
                && (s.is_none() || ok_date(s))
                && (e.is_none() || ok_date(e))
                && match (
                    s.and_then(crate::time::fhir_date_range),
                    e.and_then(crate::time::fhir_date_range),
                ) {
                    (Some(a), Some(b)) => a.0 <= b.1,
                    _ => true,
                }
        }
        _ => ok_date(v.as_str()),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Unprocessable(vec![
            Issue::error("value", format!("{name}: {v} is not a valid {vtype}"))
                .at(if vtype == "Period" { "window" } else { "date" }),
        ]))
    }
}

/// The fields only a move may change.
const MOVE_FIELDS: &[&str] = &["status", "businessStatus", "statusReason", "output"];

/// Which move a `PUT`/`PATCH` of an AdmissionTask makes, and with what: `None` when the
/// business status is unchanged (then nothing else may change either).
pub fn detect(rules: &Rules, old: &Value, new: &Value) -> Result<Option<(Move, Input)>, Error> {
    // everything but the move's fields (and what the server stamps) stays as it was
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for k in MOVE_FIELDS.iter().chain(&["meta", "lastModified", "text"]) {
                o.remove(*k);
            }
        }
        v
    };
    if strip(old) != strip(new) {
        let changed: Vec<String> = new
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone())
            .chain(
                old.as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone()),
            )
            .filter(|k| {
                !MOVE_FIELDS.contains(&k.as_str())
                    && !["meta", "lastModified", "text"].contains(&k.as_str())
                    && old.get(k) != new.get(k)
            })
            .collect();
        return Err(rule(
            "moves-only",
            format!(
                "an admission request changes only by a move; `{}` may not change",
                changed.join("`, `")
            ),
        ));
    }
    let (from, to) = (business_status(old), business_status(new));
    let (Some(from), Some(to)) = (from, to) else {
        return Err(rule("moves-only", "Task.businessStatus is required"));
    };
    if from == to {
        let same = MOVE_FIELDS.iter().all(|k| old.get(*k) == new.get(*k));
        return if same {
            Ok(None)
        } else {
            Err(rule(
                "moves-only",
                format!("the request stays `{to}`: its status, reason and outputs may not change"),
            ))
        };
    }
    let mv = rules
        .moves
        .values()
        .find(|m| {
            m.from.iter().any(|f| f == from)
                && match &m.to {
                    Target::Status(s) => s == to,
                    Target::Previous => true,
                }
                && !m.by.iter().all(|s| *s == Side::System)
        })
        .or_else(|| {
            rules
                .moves
                .values()
                .find(|m| matches!(&m.to, Target::Status(s) if s == to))
        })
        .ok_or_else(|| {
            rule(
                "move-from",
                format!("no move leads from `{from}` to `{to}`"),
            )
        })?;
    let reason = new["statusReason"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            rules
                .reason(
                    c["system"].as_str().unwrap_or_default(),
                    c["code"].as_str().unwrap_or_default(),
                )
                .is_some()
        })
        .cloned();
    let status = rules.status(to);
    let out_type = status.and_then(|s| s.required_output.clone());
    let given = out_type.as_deref().and_then(|t| output(new, t)).cloned();
    let input = Input {
        window: given.clone().filter(Value::is_object),
        date: given.and_then(|g| g.as_str().map(str::to_owned)),
        reason,
        comment: new["statusReason"]["text"].as_str().map(str::to_owned),
        message: None,
    };
    Ok(Some((mv.clone(), input)))
}

/// Where the caller stands towards one request.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    /// The caller's habilitation covers the Task's owner unit.
    pub receiving: bool,
    /// The caller's habilitation covers the dossier's requesting structure.
    pub sending: bool,
}

/// Whether `caller`, standing as given, may make `mv`: 401 anonymous, 403 otherwise.
pub fn authorize(
    rules: &Rules,
    mv: &Move,
    caller: &Caller,
    standing: &Standing,
) -> Result<(), Error> {
    let name = format!("${}", mv.name);
    match caller {
        Caller::Anonymous => Err(Error::Unauthorized(format!(
            "{name} needs an identified caller (X-Passerelle-Role in dev mode)"
        ))),
        Caller::System(_) => {
            if mv.by.contains(&Side::System) {
                Ok(())
            } else {
                Err(Error::forbidden(format!(
                    "{name} is not made by the system"
                )))
            }
        }
        // a client bound to a structure makes the system's moves on that structure's
        // requests only (its units' as the receiving side, its dossiers' as the sending one)
        Caller::Client(c) => {
            if !mv.by.contains(&Side::System) {
                Err(Error::forbidden(format!(
                    "{name} is not made by a system client"
                )))
            } else if standing.receiving || standing.sending {
                Ok(())
            } else {
                Err(Error::forbidden(format!(
                    "{name}: this request is not of {}, the structure of the client {}",
                    c.organization, c.client_id
                )))
            }
        }
        Caller::Person(h) => {
            let profile = rules.profiles.get(&h.profile).ok_or_else(|| {
                Error::forbidden(format!("unknown habilitation profile `{}`", h.profile))
            })?;
            if !profile.rights.contains(&mv.right) {
                return Err(Error::forbidden(format!(
                    "{name} needs the right `{}`, which the profile `{}` does not have",
                    mv.right, h.profile
                )));
            }
            let side_ok = mv.by.iter().any(|s| match s {
                Side::Receiving => standing.receiving && profile.side == Side::Receiving,
                Side::Sending => standing.sending && profile.side == Side::Sending,
                _ => false,
            });
            if side_ok {
                Ok(())
            } else {
                let who: Vec<&str> = mv.by.iter().map(|s| s.as_str()).collect();
                Err(Error::forbidden(format!(
                    "{name} is made by the {} side of this request; the habilitation {} is not",
                    who.join(" or "),
                    h.role
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Habilitation;

    fn rules() -> Rules {
        Rules::load().unwrap()
    }

    fn task(bs: &str, status: &str) -> Value {
        json!({
            "resourceType": "Task", "id": "t", "status": status, "intent": "order",
            "businessStatus": {"coding": [{"system": code_system("business-status"), "code": bs}]},
            "owner": {"reference": "HealthcareService/u"}
        })
    }

    const NOW: &str = "2026-03-01T10:00:00Z";

    #[test]
    fn agreement_needs_a_window_and_keeps_it() {
        let r = rules();
        let mv = &r.moves["agree-in-principle"];
        let t = task("read", "received");
        let e = apply(&r, mv, &t, &Input::default(), None, NOW).unwrap_err();
        assert!(e.to_string().contains("needs a window"), "{e}");
        let input = Input {
            window: Some(json!({"start": "2026-03-10", "end": "2026-03-20"})),
            ..Input::default()
        };
        let n = apply(&r, mv, &t, &input, None, NOW).unwrap();
        assert_eq!(business_status(&n), Some("agreed-in-principle"));
        assert_eq!(n["status"], "received");
        assert_eq!(output(&n, "admission-window").unwrap()["end"], "2026-03-20");
        let bad = Input {
            window: Some(json!({"start": "2026-03-20", "end": "2026-03-10"})),
            ..Input::default()
        };
        assert!(apply(&r, mv, &t, &bad, None, NOW).is_err());
    }

    #[test]
    fn moves_leave_only_from_their_states() {
        let r = rules();
        let t = task("admitted", "completed");
        let e = apply(&r, &r.moves["refuse"], &t, &Input::default(), None, NOW).unwrap_err();
        assert!(matches!(e, Error::Unprocessable(_)));
        assert!(e.to_string().contains("move-from"), "{e}");
        let t = task("read", "received");
        let e = apply(&r, &r.moves["mark-read"], &t, &Input::default(), None, NOW).unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
    }

    #[test]
    fn a_refusal_carries_its_reason_and_the_nos_code() {
        let r = rules();
        let mv = &r.moves["refuse"];
        let t = task("sent", "requested");
        let other = Input {
            reason: Some(json!({"system": code_system("refusal-reason"), "code": "other"})),
            ..Input::default()
        };
        let e = apply(&r, mv, &t, &other, None, NOW).unwrap_err();
        assert!(e.to_string().contains("comment"), "{e}");
        let wrong = Input {
            reason: Some(json!({"system": code_system("cancellation-reason"), "code": "death"})),
            ..Input::default()
        };
        assert!(apply(&r, mv, &t, &wrong, None, NOW).is_err());
        let age = Input {
            reason: Some(json!({"system": code_system("refusal-reason"), "code": "age"})),
            ..Input::default()
        };
        let n = apply(&r, mv, &t, &age, None, NOW).unwrap();
        assert_eq!(n["status"], "rejected");
        assert_eq!(n["statusReason"]["coding"][1]["system"], NOS_R358);
        assert_eq!(n["statusReason"]["coding"][1]["code"], "122");
    }

    #[test]
    fn reactivation_restores_the_state_left() {
        let r = rules();
        let mut before = task("agreed-in-principle", "received");
        set_output(
            &mut before,
            "admission-window",
            "Period",
            json!({"start": "2026-04-01"}),
        );
        let cancel = Input {
            reason: Some(
                json!({"system": code_system("cancellation-reason"), "code": "patient-wish"}),
            ),
            ..Input::default()
        };
        let cancelled = apply(&r, &r.moves["cancel"], &before, &cancel, None, NOW).unwrap();
        let back = apply(
            &r,
            &r.moves["reactivate"],
            &cancelled,
            &Input::default(),
            Some(&before),
            NOW,
        )
        .unwrap();
        assert_eq!(back, before);
    }

    #[test]
    fn detect_reads_the_move_off_a_put() {
        let r = rules();
        let old = task("sent", "requested");
        let mut new = old.clone();
        new["status"] = json!("received");
        new["businessStatus"]["coding"][0]["code"] = json!("read");
        let (mv, _) = detect(&r, &old, &new).unwrap().unwrap();
        assert_eq!(mv.name, "mark-read");
        let mut other = new.clone();
        other["owner"] = json!({"reference": "HealthcareService/v"});
        let e = detect(&r, &old, &other).unwrap_err();
        assert!(e.to_string().contains("`owner`"), "{e}");
        assert!(detect(&r, &old, &old).unwrap().is_none());
    }

    #[test]
    fn who_may_move() {
        let r = rules();
        let hab = |profile: &str| {
            Caller::Person(Habilitation {
                role: "PractitionerRole/x".into(),
                practitioner: None,
                profile: profile.into(),
                organization: None,
                services: vec![],
                delegated_by: None,
            })
        };
        let unit = Standing {
            receiving: true,
            sending: false,
        };
        let prescriber = Standing {
            receiving: false,
            sending: true,
        };
        let refuse = &r.moves["refuse"];
        assert!(authorize(&r, refuse, &hab("responsable-admission"), &unit).is_ok());
        assert!(matches!(
            authorize(
                &r,
                refuse,
                &hab("responsable-admission"),
                &Standing::default()
            ),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&r, refuse, &hab("prescripteur-medical"), &prescriber),
            Err(Error::Forbidden(_))
        ));
        assert!(
            authorize(
                &r,
                &r.moves["confirm"],
                &hab("prescripteur-medical"),
                &prescriber
            )
            .is_ok()
        );
        assert!(matches!(
            authorize(&r, &r.moves["confirm"], &hab("referent"), &prescriber),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&r, refuse, &Caller::Anonymous, &unit),
            Err(Error::Unauthorized(_))
        ));
        assert!(
            authorize(
                &r,
                &r.moves["auto-cancel"],
                &Caller::System("timer".into()),
                &Standing::default()
            )
            .is_ok()
        );
    }
}
