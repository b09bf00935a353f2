//! FHIR JSON in and out: parsing request bodies (decimals kept as written, key order kept),
//! stamping `id` and `meta`, and the `_summary` / `_elements` views of a resource.

use serde_json::{Map, Value};

use super::error::{Error, Issue, Result};
use super::model::{Kind, Model};
use super::validate::MAX_DEPTH;

/// Parses a request body as one FHIR resource (not validated yet).
pub fn parse_resource(bytes: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::Invalid(vec![Issue::error(
            "invalid",
            format!("body is not valid JSON: {e}"),
        )])
    })?;
    if depth(&v, 0) > MAX_DEPTH + 4 {
        return Err(Error::invalid(
            "too-costly",
            format!("body nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    if !v.is_object() {
        return Err(Error::invalid("structure", "body must be a JSON object"));
    }
    Ok(v)
}

fn depth(v: &Value, d: usize) -> usize {
    if d > MAX_DEPTH + 4 {
        return d;
    }
    match v {
        Value::Array(a) => a.iter().map(|x| depth(x, d + 1)).max().unwrap_or(d + 1),
        Value::Object(o) => o.values().map(|x| depth(x, d + 1)).max().unwrap_or(d + 1),
        _ => d,
    }
}

pub fn resource_type(v: &Value) -> Option<&str> {
    v.get("resourceType").and_then(Value::as_str)
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping every other element and the
/// client's meta parts (`profile`, `tag`, `security`, `source`); `resourceType`, `id` and
/// `meta` come first, as the specification orders them.
pub fn stamp(resource: &mut Value, id: &str, version: i64, last_updated: &str) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let old = std::mem::take(obj);
    let mut meta = match old.get("meta") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert("lastUpdated".into(), Value::String(last_updated.to_owned()));
    let mut ordered = Map::new();
    ordered.insert("versionId".into(), meta["versionId"].clone());
    ordered.insert("lastUpdated".into(), meta["lastUpdated"].clone());
    for (k, v) in meta {
        if k != "versionId" && k != "lastUpdated" {
            ordered.insert(k, v);
        }
    }
    obj.insert(
        "resourceType".into(),
        old.get("resourceType").cloned().unwrap_or(Value::Null),
    );
    obj.insert("id".into(), Value::String(id.to_owned()));
    obj.insert("meta".into(), Value::Object(ordered));
    for (k, v) in old {
        if !matches!(k.as_str(), "resourceType" | "id" | "meta") {
            obj.insert(k, v);
        }
    }
}

/// The resource without the server-set `meta.versionId` / `meta.lastUpdated`, to tell
/// whether an update changes anything.
pub fn without_version(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().map(|o| o.remove("meta"));
        }
    }
    v
}

/// `_summary=true`: the elements the specification marks as summary are not in the
/// distilled model, so this keeps the mandatory and the identifying ones: `id`, `meta`,
/// required elements, `identifier`, `status`, `name`, and references to the subject.
pub fn summary(model: &Model, v: &Value, mode: super::search::Summary) -> Value {
    use super::search::Summary;
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    let rtype = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let def = model.get(rtype);
    let mut out = Map::new();
    for (k, val) in obj {
        let keep = match mode {
            Summary::False => true,
            Summary::Text => {
                matches!(k.as_str(), "resourceType" | "id" | "meta" | "text")
                    || def
                        .and_then(|d| d.element(k))
                        .is_some_and(|(e, _)| e.min > 0)
            }
            Summary::Data => k != "text",
            Summary::True | Summary::Count => {
                matches!(
                    k.as_str(),
                    "resourceType"
                        | "id"
                        | "meta"
                        | "identifier"
                        | "status"
                        | "name"
                        | "code"
                        | "subject"
                        | "patient"
                        | "for"
                        | "owner"
                        | "intent"
                        | "category"
                        | "active"
                        | "url"
                        | "version"
                        | "title"
                        | "date"
                ) || def
                    .and_then(|d| d.element(k.trim_start_matches('_')))
                    .is_some_and(|(e, _)| e.min > 0)
            }
        };
        if keep {
            out.insert(k.clone(), val.clone());
        }
    }
    if mode != Summary::False {
        mark_subsetted(&mut out);
    }
    Value::Object(out)
}

/// `_elements=a,b`: those top-level elements plus the mandatory ones, marked SUBSETTED.
pub fn elements(model: &Model, v: &Value, names: &[String]) -> Value {
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    let rtype = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let def = model.get(rtype).filter(|d| d.kind == Kind::Resource);
    let mut out = Map::new();
    for (k, val) in obj {
        let bare = k.trim_start_matches('_');
        let element_name = def
            .and_then(|d| d.element(bare))
            .map(|(e, _)| e.name.as_str())
            .unwrap_or(bare);
        let keep = matches!(k.as_str(), "resourceType" | "id" | "meta")
            || names.iter().any(|n| n == bare || n == element_name)
            || def
                .and_then(|d| d.element(bare))
                .is_some_and(|(e, _)| e.min > 0);
        if keep {
            out.insert(k.clone(), val.clone());
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

fn mark_subsetted(obj: &mut Map<String, Value>) {
    let subsetted = serde_json::json!({
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    });
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = meta.as_object_mut() {
        let tags = m.entry("tag").or_insert_with(|| Value::Array(vec![]));
        if let Some(t) = tags.as_array_mut()
            && !t.contains(&subsetted)
        {
            t.push(subsetted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_and_order_are_kept() {
        let v = parse_resource(br#"{"resourceType":"Task","zeta":1,"value":4.50,"alpha":1.0}"#)
            .unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"resourceType":"Task","zeta":1,"value":4.50,"alpha":1.0}"#
        );
    }

    #[test]
    fn stamp_puts_id_and_meta_first() {
        let mut v = json!({"status": "draft", "resourceType": "Task", "meta": {"tag": [{"code": "x"}], "versionId": "9"}});
        stamp(&mut v, "abc", 2, "2026-01-01T00:00:00.000Z");
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"resourceType":"Task","id":"abc","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000Z","tag":[{"code":"x"}]},"status":"draft"}"#
        );
    }

    #[test]
    fn rejects_deep_nesting_and_non_objects() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_resource(deep.as_bytes()).is_err());
        assert!(parse_resource(b"[1]").is_err());
        assert!(parse_resource(b"{").is_err());
    }
}
