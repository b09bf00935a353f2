//! Checking a resource against the gateway's profiles (`profiles/StructureDefinition-*`):
//! the differential's cardinalities, fixed and pattern values, required bindings to the
//! shipped value sets, reference targets and slices, then the AdmissionTask invariants.
//!
//! The invariants `pas-task-1…9` restate, in FHIRPath, what the business-status code system's
//! properties say (`required-output`, `reason-system`, `task-status`) and what the reason code
//! systems' `comment-required` says. The gateway evaluates them from those properties, so each
//! rule lives once, as data, and the error names the invariant's key.

use serde_json::Value;

use super::rules::{CANONICAL, ReasonSystem, Rules, code_system};
use crate::fhir::error::Issue;

pub const ADMISSION_REQUEST: &str =
    "https://passerelle.dev/fhir/StructureDefinition/AdmissionRequest";
pub const ADMISSION_TASK: &str = "https://passerelle.dev/fhir/StructureDefinition/AdmissionTask";

/// Whether a resource declares one of the gateway's profiles in `meta.profile`.
pub fn declares(resource: &Value, profile: &str) -> bool {
    resource["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p.as_str().map(|s| s.split('|').next() == Some(profile)) == Some(true))
}

/// The nodes at a dotted path below `v` (arrays flattened; `x[x]` matches any `xType`).
fn nodes<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return vec![v];
    };
    let mut out = Vec::new();
    let children: Vec<&Value> = match first.strip_suffix("[x]") {
        Some(stem) => v
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| {
                k.strip_prefix(stem)
                    .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
            })
            .map(|(_, c)| c)
            .collect(),
        None => v.get(*first).into_iter().collect(),
    };
    for c in children {
        match c {
            Value::Array(items) => {
                for i in items {
                    out.extend(nodes(i, rest));
                }
            }
            other => out.extend(nodes(other, rest)),
        }
    }
    out
}

/// The `value[x]` type of a choice node's parent: `valuePeriod` → `Period`.
fn choice_type<'a>(parent: &'a Value, stem: &str) -> Option<&'a str> {
    parent.as_object()?.keys().find_map(|k| {
        k.strip_prefix(stem)
            .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
    })
}

fn matches_pattern(node: &Value, pattern: &Value) -> bool {
    match (node, pattern) {
        (Value::Object(n), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| n.get(k).is_some_and(|nv| matches_pattern(nv, pv))),
        (Value::Array(n), Value::Array(p)) => p
            .iter()
            .all(|pv| n.iter().any(|nv| matches_pattern(nv, pv))),
        (n, p) => n == p,
    }
}

/// What one differential element constrains.
struct Constraint<'a> {
    min: Option<u64>,
    max: Option<u64>,
    fixed: Option<&'a Value>,
    pattern: Option<&'a Value>,
    binding: Option<&'a str>,
    targets: Vec<&'a str>,
    types: Vec<&'a str>,
}

fn constraint(e: &Value) -> Constraint<'_> {
    let obj = e.as_object();
    let key_value = |prefix: &str| {
        obj.into_iter()
            .flatten()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    };
    Constraint {
        min: e["min"].as_u64(),
        max: e["max"].as_str().and_then(|m| m.parse().ok()),
        fixed: key_value("fixed"),
        pattern: key_value("pattern"),
        binding: (e["binding"]["strength"] == "required")
            .then(|| e["binding"]["valueSet"].as_str())
            .flatten(),
        targets: e["type"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["targetProfile"].as_array().into_iter().flatten())
            .filter_map(|p| p.as_str()?.rsplit('/').next())
            .collect(),
        types: e["type"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["code"].as_str())
            .collect(),
    }
}

/// Checks `nodes` (all the values at `path` under one parent) against one constraint.
fn check_nodes(
    rules: &Rules,
    c: &Constraint<'_>,
    path: &str,
    parent: &Value,
    found: &[&Value],
    issues: &mut Vec<Issue>,
) {
    let n = found.len() as u64;
    if let Some(min) = c.min
        && n < min
    {
        issues.push(
            Issue::error(
                "required",
                format!("{path}: at least {min} required, found {n}"),
            )
            .at(path),
        );
    }
    if let Some(max) = c.max
        && n > max
    {
        issues.push(
            Issue::error(
                "structure",
                format!("{path}: at most {max} allowed, found {n}"),
            )
            .at(path),
        );
    }
    for node in found {
        if let Some(f) = c.fixed
            && *node != f
        {
            issues.push(Issue::error("value", format!("{path} must be {f}")).at(path));
        }
        if let Some(p) = c.pattern
            && !matches_pattern(node, p)
        {
            issues.push(Issue::error("value", format!("{path} must contain {p}")).at(path));
        }
        if let Some(vs) = c.binding
            && let Some(codes) = rules.value_set(vs)
        {
            let ok = match node {
                Value::String(code) => codes.iter().any(|(_, c)| c == code),
                cc => cc["coding"].as_array().into_iter().flatten().any(|coding| {
                    codes.contains(&(
                        coding["system"].as_str().unwrap_or_default().to_owned(),
                        coding["code"].as_str().unwrap_or_default().to_owned(),
                    ))
                }),
            };
            if !ok {
                issues.push(
                    Issue::error("code-invalid", format!("{path}: {node} is not in {vs}")).at(path),
                );
            }
        }
        if !c.targets.is_empty()
            && let Some(r) = node["reference"].as_str()
            && let Some(p) = crate::fhir::reference::parse(r)
            && !c.targets.contains(&p.rtype)
        {
            issues.push(
                Issue::error(
                    "value",
                    format!("{path} must point at {}, not {r}", c.targets.join(" or ")),
                )
                .at(path),
            );
        }
    }
    // a choice restricted to some types
    if let Some(stem) = path.rsplit('.').next().and_then(|l| l.strip_suffix("[x]"))
        && !c.types.is_empty()
        && let Some(t) = choice_type(parent, stem)
    {
        let t_lower = t.to_ascii_lowercase();
        if !c.types.iter().any(|ty| ty.to_ascii_lowercase() == t_lower) {
            issues.push(
                Issue::error(
                    "value",
                    format!("{path} must be of type {}, not {t}", c.types.join(" or ")),
                )
                .at(path),
            );
        }
    }
}

/// Checks `resource` against the StructureDefinition `sd` (a differential).
pub fn check(rules: &Rules, sd: &Value, resource: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let elements: Vec<&Value> = sd["differential"]["element"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for e in &elements {
        let Some(id) = e["id"].as_str() else { continue };
        let c = constraint(e);
        match id.split_once(':') {
            None => {
                let segs: Vec<&str> = id.split('.').skip(1).collect();
                let Some((last, parent_path)) = segs.split_last() else {
                    continue;
                };
                for parent in nodes(resource, parent_path) {
                    let found = nodes(parent, &[*last]);
                    check_nodes(rules, &c, id, parent, &found, &mut issues);
                }
            }
            Some((base, slice_rest)) => {
                // `Task.output:admission-window[.type…]`: a slice of the nodes at `base`.
                let (slice, child) = slice_rest.split_once('.').unwrap_or((slice_rest, ""));
                if child.is_empty() && e["sliceName"].is_string() {
                    let base_segs: Vec<&str> = base.split('.').skip(1).collect();
                    let Some((last, parent_path)) = base_segs.split_last() else {
                        continue;
                    };
                    let discriminator = slice_discriminator(&elements, base, slice);
                    for parent in nodes(resource, parent_path) {
                        let members: Vec<&Value> = nodes(parent, &[*last])
                            .into_iter()
                            .filter(|m| discriminator.iter().all(|(p, v)| in_slice(m, p, v)))
                            .collect();
                        check_nodes(rules, &c, id, parent, &members, &mut issues);
                        for m in members {
                            check_slice_children(rules, &elements, base, slice, m, &mut issues);
                        }
                    }
                }
            }
        }
    }
    issues
}

/// The (child path, fixed or pattern value) pairs that put a node in a slice.
fn slice_discriminator<'a>(
    elements: &[&'a Value],
    base: &str,
    slice: &str,
) -> Vec<(String, &'a Value)> {
    let prefix = format!("{base}:{slice}.");
    elements
        .iter()
        .filter_map(|e| {
            let child = e["id"].as_str()?.strip_prefix(&prefix)?;
            let c = constraint(e);
            Some((child.to_owned(), c.fixed.or(c.pattern)?))
        })
        .collect()
}

fn in_slice(member: &Value, child: &str, value: &Value) -> bool {
    let segs: Vec<&str> = child.split('.').collect();
    nodes(member, &segs)
        .into_iter()
        .any(|n| matches_pattern(n, value))
}

fn check_slice_children(
    rules: &Rules,
    elements: &[&Value],
    base: &str,
    slice: &str,
    member: &Value,
    issues: &mut Vec<Issue>,
) {
    let prefix = format!("{base}:{slice}.");
    for e in elements {
        let Some(id) = e["id"].as_str() else { continue };
        let Some(child) = id.strip_prefix(&prefix) else {
            continue;
        };
        let segs: Vec<&str> = child.split('.').collect();
        let Some((last, parent_path)) = segs.split_last() else {
            continue;
        };
        let mut c = constraint(e);
        // the discriminator already holds for every member
        c.pattern = None;
        c.fixed = None;
        for parent in nodes(member, parent_path) {
            let found = nodes(parent, &[*last]);
            check_nodes(rules, &c, id, parent, &found, issues);
        }
    }
}

fn codings(v: &Value) -> impl Iterator<Item = &Value> {
    v["coding"].as_array().into_iter().flatten()
}

/// The AdmissionTask invariants (`pas-task-1…9`), from the code systems' properties.
pub fn task_invariants(rules: &Rules, task: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    let bs_system = code_system("business-status");
    let Some(code) = codings(&task["businessStatus"])
        .find(|c| c["system"] == bs_system.as_str())
        .and_then(|c| c["code"].as_str())
    else {
        return issues;
    };
    let Some(status) = rules.status(code) else {
        return issues;
    };
    let key = |rule: &str| {
        let n = match rule {
            "agreed-in-principle" => 1,
            "admission-proposed" => 2,
            "admitted" => 3,
            "refused" => 4,
            "cancelled" => 5,
            "auto-cancelled" => 6,
            _ => 7,
        };
        format!("pas-task-{n}")
    };
    if let Some(out) = &status.required_output {
        let has = task["output"].as_array().into_iter().flatten().any(|o| {
            codings(&o["type"]).any(|c| {
                c["system"] == code_system("task-output-type").as_str() && c["code"] == out.as_str()
            })
        });
        if !has {
            issues.push(
                Issue::error(
                    "required",
                    format!("{}: a Task `{code}` carries an output `{out}`", key(code)),
                )
                .at("Task.output"),
            );
        }
    }
    if let Some(system) = status.reason {
        let systems: Vec<String> = match system {
            ReasonSystem::Refusal => vec![code_system("refusal-reason")],
            ReasonSystem::Cancellation => vec![code_system("cancellation-reason")],
            ReasonSystem::Any => vec![
                code_system("refusal-reason"),
                code_system("cancellation-reason"),
            ],
        };
        let reason = codings(&task["statusReason"]).find(|c| {
            systems
                .iter()
                .any(|s| c["system"].as_str() == Some(s.as_str()))
        });
        match reason {
            None => issues.push(
                Issue::error(
                    "required",
                    format!(
                        "{}: a Task `{code}` carries a statusReason from {}",
                        key(code),
                        systems.join(" or ")
                    ),
                )
                .at("Task.statusReason"),
            ),
            Some(c) => {
                let known = rules.reason(
                    c["system"].as_str().unwrap_or_default(),
                    c["code"].as_str().unwrap_or_default(),
                );
                if code == "auto-cancelled" && c["code"] != "auto-cancel" {
                    issues.push(
                        Issue::error(
                            "value",
                            "pas-task-6: an automatic cancellation has the reason `auto-cancel`",
                        )
                        .at("Task.statusReason"),
                    );
                }
                if known.is_some_and(|r| r.comment_required)
                    && task["statusReason"]["text"]
                        .as_str()
                        .is_none_or(|t| t.trim().is_empty())
                {
                    issues.push(
                        Issue::error(
                            "required",
                            "pas-task-8: the reason `other` needs a comment in statusReason.text",
                        )
                        .at("Task.statusReason.text"),
                    );
                }
            }
        }
    }
    if task["status"].as_str() != Some(status.task_status.as_str()) {
        issues.push(
            Issue::error(
                "value",
                format!(
                    "pas-task-9: a Task `{code}` has status `{}`, not {}",
                    status.task_status, task["status"]
                ),
            )
            .at("Task.status"),
        );
    }
    issues
}

/// The StructureDefinition a profile URL names, among the shipped ones.
pub fn structure_definition<'r>(rules: &'r Rules, url: &str) -> Option<&'r Value> {
    rules
        .resource("StructureDefinition", url)
        .filter(|_| url.starts_with(CANONICAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(bs: &str, status: &str) -> Value {
        json!({
            "resourceType": "Task",
            "meta": {"profile": [ADMISSION_TASK]},
            "groupIdentifier": {"system": "https://passerelle.dev/fhir/sid/dossier", "value": "s0000001"},
            "status": status,
            "businessStatus": {"coding": [{"system": code_system("business-status"), "code": bs}]},
            "intent": "order",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "focus": {"reference": "ServiceRequest/sr"},
            "for": {"reference": "Patient/p"},
            "authoredOn": "2026-01-01T10:00:00Z",
            "requester": {"reference": "PractitionerRole/r"},
            "owner": {"reference": "HealthcareService/u"}
        })
    }

    fn all(t: &Value) -> Vec<Issue> {
        let rules = Rules::load().unwrap();
        let sd = structure_definition(&rules, ADMISSION_TASK).unwrap();
        let mut i = check(&rules, sd, t);
        i.extend(task_invariants(&rules, t));
        i
    }

    #[test]
    fn a_sent_task_conforms() {
        assert_eq!(all(&task("sent", "requested")), vec![]);
    }

    #[test]
    fn differential_rules_name_the_element() {
        let mut t = task("sent", "requested");
        t["intent"] = json!("plan");
        t["owner"] = json!({"reference": "Organization/o"});
        t.as_object_mut().unwrap().remove("groupIdentifier");
        let issues = all(&t);
        let at: Vec<_> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert!(at.contains(&"Task.intent".to_owned()), "{issues:?}");
        assert!(at.contains(&"Task.owner".to_owned()), "{issues:?}");
        assert!(
            at.contains(&"Task.groupIdentifier".to_owned()),
            "{issues:?}"
        );
        let mut t = task("nonsense", "requested");
        t["status"] = json!("on-hold");
        let issues = all(&t);
        assert!(
            issues
                .iter()
                .any(|i| i.expression.as_deref() == Some("Task.businessStatus"))
        );
        assert!(
            issues
                .iter()
                .any(|i| i.expression.as_deref() == Some("Task.status"))
        );
    }

    #[test]
    fn invariants_follow_the_code_system() {
        let issues = all(&task("agreed-in-principle", "received"));
        assert!(
            issues[0].diagnostics.starts_with("pas-task-1"),
            "{issues:?}"
        );
        let issues = all(&task("read", "requested"));
        assert!(
            issues[0].diagnostics.starts_with("pas-task-9"),
            "{issues:?}"
        );
        let mut t = task("refused", "rejected");
        t["statusReason"] =
            json!({"coding": [{"system": code_system("refusal-reason"), "code": "other"}]});
        let issues = all(&t);
        assert!(
            issues[0].diagnostics.starts_with("pas-task-8"),
            "{issues:?}"
        );
        t["statusReason"]["text"] = json!("plus de place en chambre seule");
        assert_eq!(all(&t), vec![]);
    }

    #[test]
    fn slices_check_their_members() {
        let mut t = task("agreed-in-principle", "received");
        t["output"] = json!([{
            "type": {"coding": [{"system": code_system("task-output-type"), "code": "admission-window"}]},
            "valueDateTime": "2026-02-01"
        }]);
        let issues = all(&t);
        assert!(
            issues
                .iter()
                .any(|i| i.diagnostics.contains("must be of type Period")),
            "{issues:?}"
        );
        t["output"][0] = json!({
            "type": {"coding": [{"system": code_system("task-output-type"), "code": "admission-window"}]},
            "valuePeriod": {"start": "2026-02-01", "end": "2026-02-10"}
        });
        assert_eq!(all(&t), vec![]);
    }
}
