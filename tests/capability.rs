//! The CapabilityStatement tells the truth: every interaction it lists works on every type it
//! lists, every search parameter, `_include` and `_revinclude` it lists is accepted under
//! `Prefer: handling=strict`, and each parameter that has a value in the official examples
//! finds the example by that value.

mod common;

use passerelle::fhir::model::{Kind, Model};
use serde_json::{Map, Value, json};

/// The smallest valid instance of a type: its required elements, recursively.
fn minimal(model: &Model, ty: &str, depth: usize) -> Value {
    let prim = |t: &str, codes: Option<&Vec<String>>| -> Value {
        match t {
            "boolean" => json!(true),
            "integer" | "unsignedInt" | "positiveInt" => json!(1),
            "decimal" => json!(1.5),
            "date" => json!("2026-01-01"),
            "dateTime" | "instant" => json!("2026-01-01T00:00:00Z"),
            "time" => json!("10:00:00"),
            "uri" | "url" | "canonical" => json!("http://example.org/x"),
            "oid" => json!("urn:oid:1.2.3"),
            "uuid" => json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"),
            "id" => json!("x"),
            "base64Binary" => json!("AAAA"),
            "code" => json!(
                codes
                    .and_then(|c| c.first())
                    .cloned()
                    .unwrap_or_else(|| "x".into())
            ),
            _ => json!("x"),
        }
    };
    let Some(def) = model.get(ty) else {
        return json!({});
    };
    let mut out = Map::new();
    if def.kind == Kind::Resource {
        out.insert("resourceType".into(), json!(ty));
    }
    for el in def.elements.iter().filter(|e| e.min > 0) {
        let t = el.types.first().map(String::as_str).unwrap_or("string");
        let key = if el.choice {
            let mut c = t.chars();
            let first = c.next().unwrap().to_ascii_uppercase();
            format!("{}{first}{}", el.name, c.as_str())
        } else {
            el.name.clone()
        };
        let v = if model.is_primitive(t) {
            prim(t, el.codes.as_ref())
        } else if t == "Reference" {
            json!({"display": "x"})
        } else if t == "CodeableConcept" {
            json!({"text": "x"})
        } else if t == "Resource" {
            json!({"resourceType": "Basic", "code": {"text": "x"}})
        } else if depth < 6 {
            minimal(model, t, depth + 1)
        } else {
            json!({"id": "x"})
        };
        out.insert(key, if el.many { json!([v]) } else { v });
    }
    if def.kind != Kind::Resource && out.is_empty() {
        out.insert("id".into(), json!("x"));
    }
    Value::Object(out)
}

fn sample_value(kind: &str) -> &'static str {
    match kind {
        "token" => "x",
        "string" => "x",
        "date" => "ge2020-01-01",
        "reference" => "Patient/x",
        "uri" => "http://example.org/x",
        "number" | "quantity" => "1",
        "special" => "48.85|2.35|10|km", // Location?near
        _ => "x",
    }
}

on_both_engines!(every_listed_interaction_and_parameter_works, |gw| {
    // a référent: sees everything listed, the audit trail included
    let role = json!({"resourceType": "PractitionerRole", "id": "cap-referent",
        "code": [{"coding": [{"system": "https://passerelle.dev/fhir/CodeSystem/habilitation-profile", "code": "referent"}]}]});
    gw.put("PractitionerRole/cap-referent", &role)
        .await
        .expect(201);
    let referent = gw.acting("cap-referent");
    // a référent grants habilitations in its own structure only: accounts are set up
    // anonymously, as dev mode allows
    let anonymous = gw.anonymous();
    let cs = referent.get("metadata").await.expect(200).json();
    let model = Model::r4();
    let strict = |url: String| {
        gw.anon
            .get(gw.url(&url))
            .header("x-passerelle-role", "PractitionerRole/cap-referent")
            .header("prefer", "handling=strict")
    };
    for r in cs["rest"][0]["resource"].as_array().unwrap() {
        let rtype = r["type"].as_str().unwrap();
        let me = if rtype == "PractitionerRole" {
            &anonymous
        } else {
            &referent
        };
        let interactions: Vec<&str> = r["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        if interactions.contains(&"create") {
            let body = minimal(model, rtype, 0);
            let created = me.post(rtype, &body).await;
            assert_eq!(
                created.status, 201,
                "create {rtype}: {} from {body}",
                created.text
            );
            let created = created.json();
            let id = created["id"].as_str().unwrap().to_owned();
            if interactions.contains(&"read") {
                me.get(&format!("{rtype}/{id}")).await.expect(200);
            }
            if interactions.contains(&"vread") {
                me.get(&format!("{rtype}/{id}/_history/1"))
                    .await
                    .expect(200);
            }
            if interactions.contains(&"update") {
                let mut u = created.clone();
                u["meta"] = json!({"tag": [{"system": "http://example.org", "code": "updated"}]});
                me.put(&format!("{rtype}/{id}"), &u).await.expect(200);
            }
            if interactions.contains(&"patch") {
                let p = json!([{"op": "add", "path": "/meta/security", "value": [{"system": "http://example.org", "code": "p"}]}]);
                let client = if me.system { &gw.client } else { &gw.anon };
                let mut patch = client
                    .patch(gw.url(&format!("{rtype}/{id}")))
                    .header("content-type", "application/json-patch+json")
                    .body(p.to_string());
                if let Some(role) = &me.role {
                    patch = patch.header("x-passerelle-role", role);
                }
                gw.send(patch).await.expect(200);
            }
            if interactions.contains(&"history-instance") {
                me.get(&format!("{rtype}/{id}/_history")).await.expect(200);
            }
            if interactions.contains(&"delete") {
                me.delete(&format!("{rtype}/{id}")).await.expect(200);
                me.get(&format!("{rtype}/{id}")).await.expect(410);
            }
        } else {
            me.post(rtype, &minimal(model, rtype, 0)).await.expect(405);
        }
        if interactions.contains(&"history-type") {
            me.get(&format!("{rtype}/_history")).await.expect(200);
        }
        if interactions.contains(&"search-type") {
            for p in r["searchParam"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(cs["rest"][0]["searchParam"].as_array().unwrap())
            {
                let name = p["name"].as_str().unwrap();
                let url = format!(
                    "{rtype}?{name}={}",
                    urlencode(sample_value(p["type"].as_str().unwrap()))
                );
                let a = gw.send(strict(url.clone())).await;
                assert_eq!(a.status, 200, "{url}: {}", a.text);
            }
            for inc in r["searchInclude"].as_array().into_iter().flatten() {
                gw.send(strict(format!(
                    "{rtype}?_include={}",
                    inc.as_str().unwrap()
                )))
                .await
                .expect(200);
            }
            for inc in r["searchRevInclude"].as_array().into_iter().flatten() {
                gw.send(strict(format!(
                    "{rtype}?_revinclude={}",
                    inc.as_str().unwrap()
                )))
                .await
                .expect(200);
            }
        }
    }
    // system-level interactions
    referent.get("_history").await.expect(200);
    referent
        .post("", &json!({"resourceType": "Bundle", "type": "batch"}))
        .await
        .expect(200);
    referent
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction"}),
        )
        .await
        .expect(200);
    // every operation listed has its definition published and is answered (not "unknown")
    let ops = cs["rest"][0]["operation"].as_array().unwrap().iter().chain(
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["operation"].as_array().into_iter().flatten()),
    );
    for op in ops {
        let url = op["definition"].as_str().unwrap();
        if let Some(id) = url.strip_prefix("https://passerelle.dev/fhir/OperationDefinition/") {
            let od = gw
                .get(&format!("OperationDefinition/{id}"))
                .await
                .expect(200)
                .json();
            assert_eq!(od["code"], op["name"]);
        }
    }
    // the conformance resources are published, read-only
    referent
        .get("CapabilityStatement/passerelle")
        .await
        .expect(200);
    let sp = gw
        .get("SearchParameter?code=owner&base=Task")
        .await
        .expect(200)
        .json();
    assert_eq!(sp["total"], 1);
});

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

on_both_engines!(
    every_parameter_finds_the_examples_that_have_its_value,
    |gw| {
        use passerelle::fhir::search::extract::index_rows;
        use passerelle::store::IndexRow;
        let fhir = gw.app.fhir.clone();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fhir-r4-examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let rtype = v["resourceType"].as_str().unwrap().to_owned();
            if !fhir.registry.is_served(&rtype) || !fhir.registry.allows(&rtype, "search-type") {
                continue;
            }
            let created = gw
                .send(
                    gw.client
                        .post(gw.url(&rtype))
                        .header("content-type", common::FHIR_JSON)
                        .body(text),
                )
                .await
                .expect(201)
                .json();
            let id = created["id"].as_str().unwrap().to_owned();
            for row in index_rows(fhir.model, &fhir.registry, &rtype, &created) {
                let (key, query) = match &row {
                    IndexRow::Token {
                        param,
                        system,
                        code,
                    } => (
                        param,
                        if system.is_empty() {
                            code.clone()
                        } else {
                            format!("{system}|{code}")
                        },
                    ),
                    IndexRow::String { param, exact, .. } => (param, exact.clone()),
                    IndexRow::Reference {
                        param,
                        target_type,
                        target_id,
                    } if !target_type.is_empty() => (param, format!("{target_type}/{target_id}")),
                    IndexRow::Reference {
                        param, target_id, ..
                    } => (param, target_id.clone()),
                    IndexRow::Uri { param, value } => (param, value.clone()),
                    IndexRow::Date { param, lo, .. } if *lo > i64::MIN => (
                        param,
                        format!(
                            "ge{}",
                            passerelle::time::format_instant(*lo).get(..10).unwrap()
                        ),
                    ),
                    // `near` rows come in lat/long pairs (tests/ror.rs searches them)
                    IndexRow::Number { param, .. } if param.ends_with(".near") => continue,
                    IndexRow::Number { param, lo, hi, .. } => {
                        (param, format!("ge{}", (lo + hi) / 2.0 - 1.0))
                    }
                    _ => continue,
                };
                let code = key.split_once('.').unwrap().1;
                let url = format!(
                    "{rtype}?{code}={}&_id={id}",
                    urlencode(&query.replace(',', "\\,"))
                );
                let found = gw.search_ids(&url).await;
                assert_eq!(found, vec![id.clone()], "{url} should find the example");
                checked += 1;
            }
        }
        assert!(checked > 300, "only {checked} parameter values checked");
    }
);
