//! The parts (volets) of a dossier: QuestionnaireResponses answering the shipped
//! Questionnaires. Who writes and validates each part comes from the habilitation rights
//! (`mappings/dossier-parts.json` names the right prefix of each Questionnaire); a part is
//! `completed` only with every required, enabled item answered (R4 `enableWhen`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::fhir::error::Issue;

/// Every answer given, by linkId (the first occurrence decides `enableWhen`, as R4 allows).
fn answers(items: &Value, out: &mut BTreeMap<String, Vec<Value>>) {
    for i in items.as_array().into_iter().flatten() {
        if let Some(id) = i["linkId"].as_str() {
            for a in i["answer"].as_array().into_iter().flatten() {
                if let Some((_, v)) = a
                    .as_object()
                    .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
                {
                    out.entry(id.to_owned()).or_default().push(v.clone());
                }
                answers(&a["item"], out);
            }
        }
        answers(&i["item"], out);
    }
}

/// Whether two answer values are equal: codings by code (local lists have no system, see
/// profiles/README.md), the rest as JSON.
fn same(a: &Value, b: &Value) -> bool {
    match (a.get("code"), b.get("code")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Whether a Questionnaire item is enabled, given the answers.
pub fn enabled(item: &Value, given: &BTreeMap<String, Vec<Value>>) -> bool {
    let Some(conds) = item["enableWhen"].as_array() else {
        return true;
    };
    let test = |c: &Value| {
        let q = c["question"].as_str().unwrap_or_default();
        let got = given.get(q).map_or(&[][..], Vec::as_slice);
        let expected = c
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("answer")))
            .map(|(_, v)| v);
        match (c["operator"].as_str().unwrap_or("="), expected) {
            ("exists", Some(Value::Bool(want))) => got.is_empty() != *want,
            ("=", Some(e)) => got.iter().any(|g| same(g, e)),
            ("!=", Some(e)) => !got.iter().any(|g| same(g, e)),
            _ => false,
        }
    };
    if item["enableBehavior"] == "any" {
        conds.iter().any(test)
    } else {
        conds.iter().all(test)
    }
}

/// The required, enabled items a response leaves unanswered, as issues naming the linkId.
pub fn missing(questionnaire: &Value, response: &Value) -> Vec<Issue> {
    let mut given = BTreeMap::new();
    answers(&response["item"], &mut given);
    let mut issues = Vec::new();
    walk(
        &questionnaire["item"],
        &response["item"],
        &given,
        "QuestionnaireResponse",
        &mut issues,
    );
    issues
}

fn walk(
    q_items: &Value,
    r_items: &Value,
    given: &BTreeMap<String, Vec<Value>>,
    at: &str,
    issues: &mut Vec<Issue>,
) {
    for qi in q_items.as_array().into_iter().flatten() {
        let Some(id) = qi["linkId"].as_str() else {
            continue;
        };
        if qi["type"] == "display" || !enabled(qi, given) {
            continue;
        }
        let present: Vec<&Value> = r_items
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["linkId"] == id)
            .collect();
        let here = format!("{at}.item.where(linkId='{id}')");
        let answered = |r: &&Value| r["answer"].as_array().is_some_and(|a| !a.is_empty());
        if qi["required"] == true {
            let ok = if qi["type"] == "group" {
                !present.is_empty()
            } else {
                present.iter().any(answered)
            };
            if !ok {
                let text = qi["text"].as_str().unwrap_or_default();
                issues.push(
                    Issue::error(
                        "required",
                        format!("part not complete: `{id}` ({text}) is required"),
                    )
                    .at(&here),
                );
                continue;
            }
        }
        // required items inside a group (or an answer) count in each instance present
        for r in present {
            if qi["type"] == "group" {
                walk(&qi["item"], &r["item"], given, &here, issues);
            } else if qi["item"].is_array() {
                for a in r["answer"].as_array().into_iter().flatten() {
                    walk(&qi["item"], &a["item"], given, &here, issues);
                }
            }
        }
    }
}

/// A complete set of answers to a Questionnaire for a module (the first option of each
/// choice, `false` for booleans, short texts): what the demo and the tests send, and a
/// starting point for an integrator's mapping.
pub fn example_items(questionnaire: &Value, module: &str) -> Value {
    let mut given = BTreeMap::new();
    json!(fill(&questionnaire["item"], module, &mut given))
}

fn fill(q_items: &Value, module: &str, given: &mut BTreeMap<String, Vec<Value>>) -> Vec<Value> {
    let mut out = Vec::new();
    for qi in q_items.as_array().into_iter().flatten() {
        let Some(id) = qi["linkId"].as_str() else {
            continue;
        };
        if qi["type"] == "display" || !enabled(qi, given) {
            continue;
        }
        let mut item = json!({"linkId": id});
        if qi["type"] == "group" {
            item["item"] = json!(fill(&qi["item"], module, given));
            out.push(item);
            continue;
        }
        let value = match qi["type"].as_str().unwrap_or_default() {
            "choice" | "open-choice" => match qi["answerOption"][0]["valueCoding"].clone() {
                Value::Null if id == "module" => json!({"valueCoding": {
                    "system": super::rules::code_system("orientation-module"), "code": module}}),
                Value::Null => json!({"valueString": "Non précisé"}),
                c => json!({"valueCoding": c}),
            },
            "boolean" => json!({"valueBoolean": false}),
            "date" => json!({"valueDate": "2026-11-20"}),
            "dateTime" => json!({"valueDateTime": "2026-11-20T10:00:00+01:00"}),
            "decimal" => json!({"valueDecimal": 1.0}),
            "integer" => json!({"valueInteger": 1}),
            _ => json!({"valueString": "Voir le dossier"}),
        };
        if let Some((_, v)) = value.as_object().and_then(|o| o.iter().next()) {
            given.entry(id.to_owned()).or_default().push(v.clone());
        }
        item["answer"] = json!([value]);
        out.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::rules::Rules;

    fn questionnaire(id: &str) -> Value {
        let r = Rules::load().unwrap();
        r.files[&format!("Questionnaire-{id}.json")].clone()
    }

    #[test]
    fn example_answers_complete_every_part_for_every_module() {
        for q in [
            "volet-medical",
            "volet-soins-projet",
            "volet-administratif-social",
        ] {
            let q = questionnaire(q);
            for module in ["smr", "usp", "ehpad", "had", "esms-handicap"] {
                let r = json!({"resourceType": "QuestionnaireResponse", "item": example_items(&q, module)});
                assert_eq!(missing(&q, &r), vec![], "{module}");
            }
        }
    }

    #[test]
    fn the_palliative_block_is_required_for_usp_only() {
        let q = questionnaire("volet-medical");
        let smr = json!({"item": example_items(&q, "smr")});
        let mut usp = smr.clone();
        usp["item"][0]["answer"][0]["valueCoding"]["code"] = json!("usp");
        let issues = missing(&q, &usp);
        assert!(
            issues
                .iter()
                .any(|i| i.diagnostics.contains("`palliative`")),
            "{issues:?}"
        );
        assert_eq!(missing(&q, &smr), vec![]);
        let mut bare = smr.clone();
        bare["item"]
            .as_array_mut()
            .unwrap()
            .retain(|i| i["linkId"] != "care-goal");
        let issues = missing(&q, &bare);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(
            issues[0].expression.as_deref(),
            Some("QuestionnaireResponse.item.where(linkId='care-goal')")
        );
    }
}
