//! Structural validation against the base model: every element known, arrays where the
//! specification says `*` and nowhere else, primitive values in their lexical form, required
//! elements present, closed required bindings respected, no empty values, bounded nesting.
//! Profiles (`profiles/`) are checked on top of this by the workflow rules.

use serde_json::{Map, Value};

use super::error::Issue;
use super::model::{Kind, Model, Primitive, TypeDef};
use crate::time::fhir_date_range;

/// Deepest nesting of objects and arrays a resource may have.
pub const MAX_DEPTH: usize = 48;

/// Checks a resource; returns every problem found (empty when valid).
pub fn validate_resource(model: &Model, value: &Value) -> Vec<Issue> {
    let mut v = Validator {
        model,
        issues: Vec::new(),
    };
    v.resource(value, "", 0);
    v.issues
}

struct Validator<'m> {
    model: &'m Model,
    issues: Vec<Issue>,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl Validator<'_> {
    fn err(&mut self, code: &'static str, msg: String, at: &str) {
        self.issues.push(Issue::error(code, msg).at(at));
    }

    fn resource(&mut self, value: &Value, path: &str, depth: usize) {
        let Some(obj) = value.as_object() else {
            self.err("structure", "a resource must be a JSON object".into(), path);
            return;
        };
        let rtype = match obj.get("resourceType") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                self.err(
                    "structure",
                    "missing or non-string resourceType".into(),
                    if path.is_empty() {
                        "resourceType"
                    } else {
                        path
                    },
                );
                return;
            }
        };
        if !self.model.is_resource_type(rtype) {
            self.err(
                "structure",
                format!("unknown resource type `{rtype}`"),
                &join(path, "resourceType"),
            );
            return;
        }
        let Some(def) = self.model.get(rtype) else {
            return;
        };
        let here = if path.is_empty() { rtype } else { path }.to_owned();
        self.object(def, obj, &here, depth, true);
    }

    fn object(
        &mut self,
        def: &TypeDef,
        obj: &Map<String, Value>,
        path: &str,
        depth: usize,
        is_resource: bool,
    ) {
        if depth > MAX_DEPTH {
            self.err(
                "too-costly",
                format!("nesting deeper than {MAX_DEPTH} levels"),
                path,
            );
            return;
        }
        if obj.is_empty() {
            self.err("structure", "empty object".into(), path);
            return;
        }
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(base) = key.strip_prefix('_') {
                self.primitive_extension(def, base, value, obj, path, depth);
                continue;
            }
            let Some((el, ty)) = def.element(key) else {
                self.err(
                    "structure",
                    format!("unknown element `{key}` in {}", def.name),
                    &join(path, key),
                );
                continue;
            };
            let at = join(path, key);
            if let Some(items) = value.as_array() {
                if !el.many {
                    self.err(
                        "structure",
                        format!("`{key}` is a single value, not an array"),
                        &at,
                    );
                    continue;
                }
                if items.is_empty() {
                    self.err("structure", "empty array".into(), &at);
                }
                let partner = obj.get(&format!("_{key}")).and_then(Value::as_array);
                for (i, item) in items.iter().enumerate() {
                    let item_at = format!("{at}[{i}]");
                    if item.is_null() {
                        // A null is only a placeholder for a primitive carrying only extensions.
                        let has_ext = partner.and_then(|p| p.get(i)).is_some_and(|p| !p.is_null());
                        if !(self.model.is_primitive(ty) && has_ext) {
                            self.err("structure", "null in array".into(), &item_at);
                        }
                        continue;
                    }
                    self.value(ty, el.codes.as_deref(), item, &item_at, depth + 1);
                }
            } else {
                if el.many {
                    self.err(
                        "structure",
                        format!("`{key}` repeats: it must be an array"),
                        &at,
                    );
                    continue;
                }
                self.value(ty, el.codes.as_deref(), value, &at, depth + 1);
            }
        }
        // Required elements (a primitive may be present through its `_` extension only).
        for el in &def.elements {
            if el.min == 0 {
                continue;
            }
            let present = if el.choice {
                obj.keys().any(|k| {
                    def.element(k.trim_start_matches('_'))
                        .is_some_and(|(e, _)| std::ptr::eq(e, el))
                })
            } else {
                obj.contains_key(&el.name) || obj.contains_key(&format!("_{}", el.name))
            };
            if !present {
                let name = if el.choice {
                    format!("{}[x]", el.name)
                } else {
                    el.name.clone()
                };
                self.err(
                    "required",
                    format!("missing required element `{name}` in {}", def.name),
                    &join(path, &el.name),
                );
            }
        }
    }

    fn primitive_extension(
        &mut self,
        def: &TypeDef,
        base: &str,
        value: &Value,
        obj: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        let at = join(path, &format!("_{base}"));
        // `Element.id` and `Extension.url` are plain strings, not primitives: no extensions
        // (XML has them as attributes, so they could not carry any).
        if (base == "id" && def.kind != Kind::Resource)
            || (base == "url" && def.name == "Extension")
        {
            self.err(
                "structure",
                format!("`{base}` cannot carry extensions (`_{base}`)"),
                &at,
            );
            return;
        }
        let Some((el, ty)) = def.element(base) else {
            self.err(
                "structure",
                format!("unknown element `_{base}` in {}", def.name),
                &at,
            );
            return;
        };
        if !self.model.is_primitive(ty) {
            self.err(
                "structure",
                format!("`_{base}` is only allowed on primitive elements"),
                &at,
            );
            return;
        }
        let Some(element) = self.model.get("Element") else {
            return;
        };
        match (value, el.many) {
            (Value::Array(items), true) => {
                let len = obj.get(base).and_then(Value::as_array).map_or(0, Vec::len);
                if obj.contains_key(base) && len != items.len() {
                    self.err(
                        "structure",
                        format!("`_{base}` must have as many items as `{base}`"),
                        &at,
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Null => {}
                        Value::Object(o) => {
                            self.object(element, o, &format!("{at}[{i}]"), depth + 1, false)
                        }
                        _ => self.err("structure", "expected an object or null".into(), &at),
                    }
                }
            }
            (Value::Object(o), false) => self.object(element, o, &at, depth + 1, false),
            _ => self.err("structure", format!("`_{base}` has the wrong shape"), &at),
        }
    }

    fn value(&mut self, ty: &str, codes: Option<&[String]>, value: &Value, at: &str, depth: usize) {
        if self.model.is_primitive(ty) {
            if let Err(msg) = check_primitive(ty, value) {
                self.err("value", msg, at);
                return;
            }
            if let (Some(codes), Value::String(s)) = (codes, value)
                && !codes.iter().any(|c| c == s)
            {
                self.err(
                    "code-invalid",
                    format!(
                        "`{s}` is not one of the allowed codes ({})",
                        codes.join(", ")
                    ),
                    at,
                );
            }
            return;
        }
        let Some(def) = self.model.get(ty) else {
            return;
        };
        if def.kind == Kind::Resource {
            // `Resource`, or a resource type named as an element's type
            self.resource(value, at, depth);
            return;
        }
        match value {
            Value::Object(o) => self.object(def, o, at, depth, false),
            _ => self.err("structure", format!("expected an object ({ty})"), at),
        }
    }
}

/// Checks a JSON value against the lexical form of a FHIR primitive type.
pub fn check_primitive<'v>(ty: &str, v: &'v Value) -> Result<(), String> {
    let want_str = |v: &'v Value| -> Result<&'v str, String> {
        match v {
            Value::String(s) if s.is_empty() => Err("empty string".into()),
            Value::String(s) => Ok(s.as_str()),
            _ => Err(format!("expected a JSON string ({ty})")),
        }
    };
    match ty {
        "boolean" => match v {
            Value::Bool(_) => Ok(()),
            _ => Err("expected true or false".into()),
        },
        "integer" | "positiveInt" | "unsignedInt" => {
            let n = match v {
                Value::Number(n) => n,
                _ => return Err(format!("expected a JSON number ({ty})")),
            };
            // arbitrary_precision: the number as written, no copy
            let text = n.as_str();
            let i: i64 = text
                .parse()
                .map_err(|_| format!("`{text}` is not an integer"))?;
            let ok = match ty {
                "integer" => i32::try_from(i).is_ok(),
                "positiveInt" => (1..=i32::MAX as i64).contains(&i),
                _ => (0..=i32::MAX as i64).contains(&i),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("`{text}` is out of range for {ty}"))
            }
        }
        "decimal" => match v {
            Value::Number(_) => Ok(()),
            _ => Err("expected a JSON number (decimal)".into()),
        },
        _ => check_lexical(ty, want_str(v)?),
    }
}

/// Checks the text of a string-valued primitive (everything but booleans and numbers)
/// against its lexical form.
pub fn check_lexical(ty: &str, s: &str) -> Result<(), String> {
    match Primitive::of(ty) {
        Some(p) => check_text(p, s),
        None if s.is_empty() => Err("empty string".into()),
        None => Ok(()),
    }
}

/// `check_lexical` for a type already resolved: byte loops, no allocation unless the text
/// is wrong (the XML reader runs it on every `value` attribute).
pub fn check_text(ty: Primitive, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty string".into());
    }
    let b = s.as_bytes();
    let ok = match ty {
        Primitive::Id => {
            s.len() <= 64
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        }
        // no leading or trailing whitespace, no tab or line break, no double space
        Primitive::Code => {
            !s.starts_with(char::is_whitespace)
                && !s.ends_with(char::is_whitespace)
                && b.iter()
                    .try_fold(false, |after_space, &c| match c {
                        b'\t' | b'\n' | b'\r' => None,
                        b' ' if after_space => None,
                        _ => Some(c == b' '),
                    })
                    .is_some()
        }
        Primitive::Uri | Primitive::Url | Primitive::Canonical => !has_whitespace(s),
        Primitive::Oid => is_oid(s),
        Primitive::Uuid => is_uuid(s),
        Primitive::Date => s.len() <= 10 && fhir_date_range(s).is_some(),
        Primitive::DateTime => {
            fhir_date_range(s).is_some() && (s.len() <= 10 || has_zone(s) && s.len() >= 19)
        }
        Primitive::Instant => fhir_date_range(s).is_some() && s.len() >= 20 && has_zone(s),
        Primitive::Time => is_time(s),
        Primitive::Base64Binary => b.iter().all(|&c| {
            c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b' ' | b'\n' | b'\r')
        }),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid {}", ty.name()))
    }
}

/// `s.contains(char::is_whitespace)`, without decoding characters when `s` is ASCII.
fn has_whitespace(s: &str) -> bool {
    // ASCII white space is at or below the space: one comparison a byte in the usual case
    if s.bytes().all(|c| c > b' ' && c < 0x80) {
        false
    } else {
        s.contains(char::is_whitespace)
    }
}

fn has_zone(s: &str) -> bool {
    s.ends_with('Z') || {
        let b = s.as_bytes();
        b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':'
    }
}

fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut n = 0;
    for (i, p) in rest.split('.').enumerate() {
        let ok = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || !p.starts_with('0'))
            && (i > 0 || matches!(p, "0" | "1" | "2"));
        if !ok {
            return false;
        }
        n += 1;
    }
    n >= 2
}

fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let two = |i: usize, max: u8| {
        b.get(i..i + 2).is_some_and(|d| {
            d.iter().all(u8::is_ascii_digit) && (d[0] - b'0') * 10 + (d[1] - b'0') <= max
        })
    };
    let base =
        b.len() >= 8 && two(0, 23) && b[2] == b':' && two(3, 59) && b[5] == b':' && two(6, 60);
    base && (b.len() == 8 || (b[8] == b'.' && b.len() > 9 && b[9..].iter().all(u8::is_ascii_digit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<String> {
        validate_resource(Model::r4(), &v)
            .into_iter()
            .map(|i| format!("{}: {}", i.expression.unwrap_or_default(), i.diagnostics))
            .collect()
    }

    #[test]
    fn accepts_a_task_with_primitive_extensions() {
        let e = errors(json!({
            "resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
            "_status": {"extension": [{"url": "http://x", "valueString": "y"}]},
            "input": [{"type": {"text": "w"}, "valueDecimal": 4.50}],
            "authoredOn": "2026-11-23T10:00:00+01:00",
            "contained": [{"resourceType": "Patient", "id": "p", "name": [{"given": ["A", null], "_given": [null, {"extension": [{"url": "u", "valueCode": "x"}]}]}]}]
        }));
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn reports_each_problem_with_its_path() {
        let e = errors(json!({
            "resourceType": "Task", "status": "bogus", "intent": "order", "foo": 1,
            "identifier": {"value": "x"}, "authoredOn": "2026-13-01",
            "input": [{"type": {"text": "w"}, "valueFoo": 1}],
            "note": [], "description": ""
        }));
        let text = e.join("\n");
        for needle in [
            "Task.status: `bogus` is not one of",
            "Task.foo: unknown element",
            "Task.identifier: `identifier` repeats",
            "Task.authoredOn: `2026-13-01` is not a valid dateTime",
            "Task.input[0].valueFoo: unknown element",
            "Task.input[0].value: missing required element `value[x]`",
            "Task.note: empty array",
            "Task.description: empty string",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn missing_required_and_unknown_type() {
        let e = errors(json!({"resourceType": "Task", "intent": "order"}));
        assert!(e.iter().any(|m| m.contains("`status`")), "{e:?}");
        let e = errors(json!({"resourceType": "Tsk"}));
        assert!(e[0].contains("unknown resource type"), "{e:?}");
    }

    #[test]
    fn primitive_forms() {
        assert!(check_primitive("dateTime", &json!("2020-01-01T10:00:00")).is_err());
        assert!(check_primitive("dateTime", &json!("2020-01-01T10:00:00Z")).is_ok());
        assert!(check_primitive("instant", &json!("2020-01-01")).is_err());
        assert!(check_primitive("id", &json!("a_b")).is_err());
        assert!(check_primitive("oid", &json!("urn:oid:1.2.250.1.213.1.4.8")).is_ok());
        assert!(check_primitive("positiveInt", &json!(0)).is_err());
        assert!(check_primitive("integer", &json!(1.5)).is_err());
        assert!(check_primitive("time", &json!("10:00:00")).is_ok());
        assert!(check_primitive("boolean", &json!("true")).is_err());
        for (ty, good, bad) in [
            ("oid", "urn:oid:2.16.840", "urn:oid:3.1"),
            ("oid", "urn:oid:1.0", "urn:oid:1"),
            ("oid", "urn:oid:0.10.2", "urn:oid:1.02"),
            ("oid", "urn:oid:1.2", "urn:oid:1..2"),
            (
                "uuid",
                "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
                "urn:uuid:c757873d-ec9a-4326-a141556f4-3239520",
            ),
            (
                "uuid",
                "urn:uuid:C757873D-EC9A-4326-A141-556F43239520",
                "urn:uuid:c757873d-ec9a-4326-a141-556f4323952g",
            ),
            ("code", "a b", "a  b"),
            ("code", "a-b", "a\tb"),
            ("code", "é", "\u{a0}x"),
            ("uri", "http://x/é", "http://x/\u{2003}"),
            ("uri", "urn:x", "urn: x"),
        ] {
            assert!(check_lexical(ty, good).is_ok(), "{ty} {good}");
            assert!(check_lexical(ty, bad).is_err(), "{ty} {bad}");
        }
        assert!(check_lexical("uri", "").is_err());
        assert!(check_lexical("notAType", "x").is_ok());
    }
}
