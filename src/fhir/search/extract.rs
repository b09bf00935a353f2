//! From a resource to its index rows: evaluates each search parameter of its type and turns
//! the values into rows by parameter kind (a HumanName gives one string row per name part, a
//! CodeableConcept one token row per coding, a Period one date range…).

use serde_json::Value;

use super::fhirpath::{Node, evaluate};
use super::registry::{ParamKind, Registry, SearchParam};
use crate::fhir::model::Model;
use crate::fhir::reference;
use crate::store::IndexRow;
use crate::time::fhir_date_range;

/// The index rows of `resource`, a resource of type `rtype`.
pub fn index_rows(
    model: &Model,
    registry: &Registry,
    rtype: &str,
    resource: &Value,
) -> Vec<IndexRow> {
    let Some(rtype) = model.get(rtype).map(|t| t.name.as_str()) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for p in registry.params(rtype) {
        let Some(expr) = &p.expr else { continue };
        for node in evaluate(model, expr, rtype, resource) {
            rows_of(p, node, &mut rows);
        }
    }
    rows.dedup();
    rows
}

/// Lower case without diacritics, so `Hélène` is found by `helene`.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        let base = match ch {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => {
                "a"
            }
            'ç' | 'Ç' => "c",
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => "e",
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => "i",
            'ñ' | 'Ñ' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'ø' | 'Ø' => {
                "o"
            }
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => "u",
            'ý' | 'ÿ' | 'Ý' | 'Ÿ' => "y",
            'æ' | 'Æ' => "ae",
            'œ' | 'Œ' => "oe",
            'ß' => "ss",
            _ => {
                out.extend(ch.to_lowercase());
                continue;
            }
        };
        out.push_str(base);
    }
    out
}

fn string_row(p: &SearchParam, s: &str, rows: &mut Vec<IndexRow>) {
    rows.push(IndexRow::String {
        param: p.key.clone(),
        norm: normalize(s),
        exact: s.to_owned(),
    });
}

fn token_row(param: &str, system: &str, code: &str, rows: &mut Vec<IndexRow>) {
    rows.push(IndexRow::Token {
        param: param.to_owned(),
        system: system.to_owned(),
        code: code.to_owned(),
    });
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn strings_at<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = &'v str> {
    match v.get(key) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
    .into_iter()
}

fn rows_of(p: &SearchParam, n: Node<'_, '_>, rows: &mut Vec<IndexRow>) {
    let v = n.value;
    match p.kind {
        ParamKind::String => match n.ty {
            "HumanName" => {
                for k in ["family", "given", "prefix", "suffix", "text"] {
                    for s in strings_at(v, k) {
                        string_row(p, s, rows);
                    }
                }
            }
            "Address" => {
                for k in [
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                    "text",
                ] {
                    for s in strings_at(v, k) {
                        string_row(p, s, rows);
                    }
                }
            }
            _ => {
                if let Some(s) = v.as_str() {
                    string_row(p, s, rows);
                }
            }
        },
        ParamKind::Token => match n.ty {
            "Coding" => coding_row(&p.key, v, rows),
            "CodeableConcept" => {
                for c in v
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    coding_row(&p.key, c, rows);
                }
            }
            "Identifier" => {
                if let Some(value) = str_at(v, "value") {
                    token_row(&p.key, str_at(v, "system").unwrap_or(""), value, rows);
                }
            }
            "ContactPoint" => {
                if let Some(value) = str_at(v, "value") {
                    token_row(&p.key, "", value, rows);
                }
            }
            _ => match v {
                Value::String(s) => token_row(&p.key, "", s, rows),
                Value::Bool(b) => token_row(&p.key, "", if *b { "true" } else { "false" }, rows),
                _ => {}
            },
        },
        ParamKind::Reference => match n.ty {
            "Reference" => {
                if let Some(r) = str_at(v, "reference") {
                    reference_row(&p.key, r, rows);
                }
                // `:identifier` searches logical references.
                if let Some(id) = v.get("identifier")
                    && let Some(value) = str_at(id, "value")
                {
                    let key = format!("{}:identifier", p.key);
                    token_row(&key, str_at(id, "system").unwrap_or(""), value, rows);
                }
            }
            _ => {
                if let Some(s) = v.as_str() {
                    reference_row(&p.key, s, rows);
                }
            }
        },
        ParamKind::Date => {
            let mut push = |lo: i64, hi: i64| {
                rows.push(IndexRow::Date {
                    param: p.key.clone(),
                    lo,
                    hi,
                })
            };
            match n.ty {
                "Period" => {
                    let lo = str_at(v, "start").and_then(fhir_date_range).map(|r| r.0);
                    let hi = str_at(v, "end").and_then(fhir_date_range).map(|r| r.1);
                    if lo.is_some() || hi.is_some() {
                        push(lo.unwrap_or(i64::MIN), hi.unwrap_or(i64::MAX));
                    }
                }
                "Timing" => {
                    for e in strings_at(v, "event") {
                        if let Some((lo, hi)) = fhir_date_range(e) {
                            push(lo, hi);
                        }
                    }
                }
                _ => {
                    if let Some((lo, hi)) = v.as_str().and_then(fhir_date_range) {
                        push(lo, hi);
                    }
                }
            }
        }
        ParamKind::Uri => {
            if let Some(s) = v.as_str() {
                rows.push(IndexRow::Uri {
                    param: p.key.clone(),
                    value: s.to_owned(),
                });
            }
        }
        ParamKind::Number | ParamKind::Quantity => {
            let (number, system, code) = match v {
                Value::Number(num) => (Some(num.to_string()), "", ""),
                Value::Object(_) => (
                    v.get("value").map(Value::to_string),
                    str_at(v, "system").unwrap_or(""),
                    str_at(v, "code")
                        .or_else(|| str_at(v, "unit"))
                        .unwrap_or(""),
                ),
                _ => (None, "", ""),
            };
            if let Some((lo, hi)) = number.as_deref().and_then(number_range) {
                rows.push(IndexRow::Number {
                    param: p.key.clone(),
                    lo,
                    hi,
                    system: system.to_owned(),
                    code: code.to_owned(),
                });
            }
        }
        ParamKind::Special => {
            // `near` (Location.position): latitude and longitude as two number rows, coded
            // `lat` and `long`, that a `Filter::Near` pairs up
            if let (Some(lat), Some(long)) = (
                v.get("latitude").and_then(Value::as_f64),
                v.get("longitude").and_then(Value::as_f64),
            ) {
                for (code, x) in [("lat", lat), ("long", long)] {
                    rows.push(IndexRow::Number {
                        param: p.key.clone(),
                        lo: x,
                        hi: x,
                        system: String::new(),
                        code: code.to_owned(),
                    });
                }
            }
        }
    }
}

fn coding_row(param: &str, c: &Value, rows: &mut Vec<IndexRow>) {
    if let Some(code) = str_at(c, "code") {
        token_row(param, str_at(c, "system").unwrap_or(""), code, rows);
    }
}

/// Relative references index as (type, id); absolute and canonical ones by their full text
/// with an empty type, so they are found by the same URL.
fn reference_row(param: &str, r: &str, rows: &mut Vec<IndexRow>) {
    let (target_type, target_id) = match reference::parse(r) {
        Some(p) if p.base.is_none() => (p.rtype.to_owned(), p.id.to_owned()),
        _ if r.starts_with('#') => return,
        _ => (String::new(), r.split('|').next().unwrap_or(r).to_owned()),
    };
    rows.push(IndexRow::Reference {
        param: param.to_owned(),
        target_type,
        target_id,
    });
}

/// The range a decimal's written precision implies: `4.50` is [4.495, 4.505].
pub fn number_range(text: &str) -> Option<(f64, f64)> {
    let value: f64 = text.parse().ok()?;
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let exponent: i32 = text
        .split(['e', 'E'])
        .nth(1)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let decimals = mantissa.split('.').nth(1).map_or(0, str::len) as i32;
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value - half, value + half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_french_names() {
        assert_eq!(normalize("Hélène Œuvray-LÉGER"), "helene oeuvray-leger");
    }

    #[test]
    fn precision_ranges() {
        let (lo, hi) = number_range("4.50").unwrap();
        assert!((lo - 4.495).abs() < 1e-9 && (hi - 4.505).abs() < 1e-9);
        let (lo, hi) = number_range("100").unwrap();
        assert!((lo - 99.5).abs() < 1e-9 && (hi - 100.5).abs() < 1e-9);
    }
}
