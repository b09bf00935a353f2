//! The mapping from ROR resources to the gateway's directory, as data (`mappings/ror.json`):
//! which types and elements are kept, which extensions, which code lists are known (an
//! unknown code is kept and reported), which codes make a unit a target of a module (SMR,
//! HAD, EHPAD…), and how available beds are counted. Loaded and checked at start: a broken
//! file is an error naming the file and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The mapping shipped with the binary.
pub const DEFAULT: &str = include_str!("../../mappings/ror.json");
pub const DEFAULT_NAME: &str = "mappings/ror.json";

/// The resource types the directory keeps.
pub const TYPES: [&str; 3] = ["Organization", "HealthcareService", "Location"];

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("mapping {file}: {message}")]
    File { file: String, message: String },
    #[error("mapping {file}: field `{field}`: {message}")]
    Field {
        file: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    /// Documentation inside the file; not used.
    #[serde(default, rename = "about")]
    _about: Option<String>,
    id_prefix: String,
    ror_id_system: String,
    region_tag_system: String,
    types: BTreeMap<String, RawType>,
    axes: BTreeMap<String, RawAxis>,
    module_system: String,
    modules: Vec<RawModule>,
    capacity: Capacity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawType {
    keep: Vec<String>,
    #[serde(default)]
    extensions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAxis {
    /// Documentation inside the file; not used.
    #[serde(default, rename = "about")]
    _about: Option<String>,
    element: String,
    systems: Vec<String>,
    codes: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    code: String,
    display: String,
    when: BTreeMap<String, Vec<String>>,
    /// Documentation inside the file; not used.
    #[serde(default, rename = "note")]
    _note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// `ror-location-supported-capacity`.
    pub extension: String,
    /// capacityStatus counted as available (TRE_R330 `02` Disponible).
    pub status: String,
    /// temporalityCapacity counted (JDV_J189 `01` Courant).
    pub temporality: String,
    /// The gateway's extension on Location carrying the count (searched as `available-beds`).
    pub available_beds_extension: String,
}

#[derive(Debug, Clone)]
pub struct TypeMap {
    pub keep: Vec<String>,
    pub extensions: Vec<String>,
}

/// A coded dimension of a HealthcareService (champ d'activité, mode de prise en charge…).
#[derive(Debug, Clone)]
pub struct Axis {
    pub name: String,
    pub element: String,
    /// Markers of the code systems: a coding belongs to the axis if its system contains one
    /// (the ROR writes both JDV and TRE URLs, with or without a trailing slash).
    pub systems: Vec<String>,
    /// Known codes; empty: no closed list, nothing reported unknown.
    pub codes: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Module {
    pub code: String,
    pub display: String,
    /// Axis index → accepted codes; every condition must hold.
    pub when: Vec<(usize, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub id_prefix: String,
    pub ror_id_system: String,
    pub region_tag_system: String,
    pub types: BTreeMap<String, TypeMap>,
    pub axes: Vec<Axis>,
    pub module_system: String,
    pub modules: Vec<Module>,
    pub capacity: Capacity,
}

/// A ROR resource as the gateway keeps it.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub rtype: String,
    /// The gateway's id (`ror-` + the ROR id).
    pub id: String,
    pub ror_id: String,
    pub body: Value,
    /// `axis code` of codes outside the known lists (kept in the resource, reported).
    pub unknown_codes: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// PractitionerRole and the like: not part of the directory (not an error).
    #[error("{0} is not kept in the directory")]
    Ignored(String),
    #[error("malformed ROR resource: {0}")]
    Malformed(String),
}

impl Mapping {
    pub fn builtin() -> Result<Mapping, MappingError> {
        Self::parse(DEFAULT_NAME, DEFAULT)
    }

    pub fn load(path: Option<&Path>) -> Result<Mapping, MappingError> {
        match path {
            None => Self::builtin(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| MappingError::File {
                    file: p.display().to_string(),
                    message: e.to_string(),
                })?;
                Self::parse(&p.display().to_string(), &text)
            }
        }
    }

    pub fn parse(file: &str, text: &str) -> Result<Mapping, MappingError> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| MappingError::File {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let field = |field: String, message: String| MappingError::Field {
            file: file.to_owned(),
            field,
            message,
        };
        if raw.id_prefix.is_empty()
            || !raw
                .id_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(field(
                "id_prefix".into(),
                "must be non-empty letters, digits, `-` or `.` (it starts resource ids)".into(),
            ));
        }
        for (name, v) in [
            ("ror_id_system", &raw.ror_id_system),
            ("region_tag_system", &raw.region_tag_system),
            ("module_system", &raw.module_system),
            ("capacity.extension", &raw.capacity.extension),
            (
                "capacity.available_beds_extension",
                &raw.capacity.available_beds_extension,
            ),
        ] {
            if !(v.starts_with("http://") || v.starts_with("https://") || v.starts_with("urn:")) {
                return Err(field(name.into(), format!("`{v}` is not an absolute URI")));
            }
        }
        let model = crate::fhir::model::Model::r4();
        let mut types = BTreeMap::new();
        for (rtype, t) in raw.types {
            if !TYPES.contains(&rtype.as_str()) {
                return Err(field(
                    format!("types.{rtype}"),
                    format!("not a directory type (one of {})", TYPES.join(", ")),
                ));
            }
            let def = model
                .get(&rtype)
                .ok_or_else(|| field(format!("types.{rtype}"), "not in the R4 model".into()))?;
            for (i, e) in t.keep.iter().enumerate() {
                if def.by_name(e).is_none() || matches!(e.as_str(), "id" | "meta" | "extension") {
                    return Err(field(
                        format!("types.{rtype}.keep[{i}]"),
                        format!("`{e}` is not an element of {rtype} that can be kept"),
                    ));
                }
            }
            types.insert(
                rtype,
                TypeMap {
                    keep: t.keep,
                    extensions: t.extensions,
                },
            );
        }
        for t in TYPES {
            if !types.contains_key(t) {
                return Err(field(format!("types.{t}"), "missing".into()));
            }
        }
        let mut axes = Vec::new();
        for (name, a) in raw.axes {
            let def = model.get("HealthcareService");
            if def.and_then(|d| d.by_name(&a.element)).is_none() {
                return Err(field(
                    format!("axes.{name}.element"),
                    format!("`{}` is not an element of HealthcareService", a.element),
                ));
            }
            if a.systems.is_empty() || a.systems.iter().any(String::is_empty) {
                return Err(field(
                    format!("axes.{name}.systems"),
                    "needs at least one non-empty system marker".into(),
                ));
            }
            axes.push(Axis {
                name,
                element: a.element,
                systems: a.systems,
                codes: a.codes,
            });
        }
        let mut modules = Vec::new();
        for (i, m) in raw.modules.into_iter().enumerate() {
            if m.code.is_empty() || m.code.contains(char::is_whitespace) {
                return Err(field(
                    format!("modules[{i}].code"),
                    "must be a code without spaces".into(),
                ));
            }
            if m.when.is_empty() {
                return Err(field(
                    format!("modules[{i}].when"),
                    "needs at least one condition".into(),
                ));
            }
            let mut when = Vec::new();
            for (axis, codes) in m.when {
                let idx = axes.iter().position(|a| a.name == axis).ok_or_else(|| {
                    field(
                        format!("modules[{i}].when.{axis}"),
                        "no such axis in `axes`".into(),
                    )
                })?;
                if codes.is_empty() {
                    return Err(field(
                        format!("modules[{i}].when.{axis}"),
                        "needs at least one code".into(),
                    ));
                }
                if let Some(bad) = codes
                    .iter()
                    .find(|c| c.is_empty() || c.contains(char::is_whitespace))
                {
                    return Err(field(
                        format!("modules[{i}].when.{axis}"),
                        format!("`{bad}` is not a code"),
                    ));
                }
                let known = &axes[idx].codes;
                if let Some(bad) = codes
                    .iter()
                    .find(|c| !known.is_empty() && !known.contains_key(*c))
                {
                    return Err(field(
                        format!("modules[{i}].when.{axis}"),
                        format!("`{bad}` is not one of the axis' codes"),
                    ));
                }
                when.push((idx, codes));
            }
            modules.push(Module {
                code: m.code,
                display: m.display,
                when,
            });
        }
        Ok(Mapping {
            id_prefix: raw.id_prefix,
            ror_id_system: raw.ror_id_system,
            region_tag_system: raw.region_tag_system,
            types,
            axes,
            module_system: raw.module_system,
            modules,
            capacity: raw.capacity,
        })
    }

    /// The gateway id of a ROR resource id.
    pub fn gateway_id(&self, ror_id: &str) -> String {
        format!("{}{ror_id}", self.id_prefix)
    }

    /// Turns one ROR resource into the gateway's. `source` is the ROR base (`meta.source`).
    pub fn map(&self, ror: &Value, source: &str) -> Result<Mapped, MapError> {
        let obj = ror
            .as_object()
            .ok_or_else(|| MapError::Malformed("not a JSON object".into()))?;
        let rtype = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| MapError::Malformed("no resourceType".into()))?;
        let Some(tmap) = self.types.get(rtype) else {
            return Err(MapError::Ignored(rtype.to_owned()));
        };
        let ror_id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| MapError::Malformed(format!("{rtype} without id")))?;
        let id = self.gateway_id(ror_id);
        if !crate::fhir::reference::is_id(ror_id) || !crate::fhir::reference::is_id(&id) {
            return Err(MapError::Malformed(format!(
                "{rtype} id `{ror_id}` is not usable"
            )));
        }
        let mut out = Map::new();
        out.insert("resourceType".into(), json!(rtype));
        out.insert("id".into(), json!(id));
        let mut meta = Map::new();
        meta.insert("source".into(), json!(source));
        let tags: Vec<Value> = obj
            .get("meta")
            .and_then(|m| m.get("tag"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("system").and_then(Value::as_str) == Some(&self.region_tag_system))
            .cloned()
            .collect();
        if !tags.is_empty() {
            meta.insert("tag".into(), Value::Array(tags));
        }
        out.insert("meta".into(), Value::Object(meta));
        let mut extensions: Vec<Value> = obj
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| {
                e.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| tmap.extensions.iter().any(|k| k == u))
            })
            .cloned()
            .collect();
        if rtype == "Location"
            && let Some(n) = self.available_beds(obj.get("extension"))
        {
            extensions.push(json!({
                "url": self.capacity.available_beds_extension,
                "valueInteger": n
            }));
        }
        if !extensions.is_empty() {
            out.insert("extension".into(), Value::Array(extensions));
        }
        for key in &tmap.keep {
            if let Some(v) = obj.get(key) {
                let mut v = v.clone();
                self.rewrite_references(&mut v);
                out.insert(key.clone(), v);
            }
        }
        // the ROR logical id, beside the ROR's own identifiers
        let ids = out
            .entry("identifier")
            .or_insert_with(|| Value::Array(Vec::new()));
        match ids {
            Value::Array(a) => a.push(json!({"system": self.ror_id_system, "value": ror_id})),
            _ => {
                return Err(MapError::Malformed(format!(
                    "{rtype}/{ror_id}: identifier is not a list"
                )));
            }
        }
        let mut unknown_codes = Vec::new();
        if rtype == "HealthcareService" {
            let (modules, unknown) = self.classify(obj);
            unknown_codes = unknown;
            let programs: Vec<Value> = modules
                .iter()
                .map(|m| {
                    json!({"coding": [{"system": self.module_system, "code": m.code, "display": m.display}]})
                })
                .collect();
            if !programs.is_empty() {
                out.insert("program".into(), Value::Array(programs));
            }
        }
        Ok(Mapped {
            rtype: rtype.to_owned(),
            id,
            ror_id: ror_id.to_owned(),
            body: Value::Object(out),
            unknown_codes,
        })
    }

    /// The modules a ROR HealthcareService is a target of (every condition of a rule holds:
    /// one of its codes is among the unit's codes of that axis), and its codes outside the
    /// axes' known lists (`axis code`).
    pub fn classify(&self, hs: &Map<String, Value>) -> (Vec<&Module>, Vec<String>) {
        let mut unknown = Vec::new();
        let mut found: Vec<Vec<&str>> = vec![Vec::new(); self.axes.len()];
        for (i, axis) in self.axes.iter().enumerate() {
            for coding in codings(hs.get(&axis.element)) {
                let system = coding.get("system").and_then(Value::as_str).unwrap_or("");
                let Some(code) = coding.get("code").and_then(Value::as_str) else {
                    continue;
                };
                if !axis.systems.iter().any(|m| system.contains(m.as_str())) {
                    continue;
                }
                if !axis.codes.is_empty() && !axis.codes.contains_key(code) {
                    unknown.push(format!("{} {code}", axis.name));
                }
                found[i].push(code);
            }
        }
        let modules = self
            .modules
            .iter()
            .filter(|m| {
                m.when
                    .iter()
                    .all(|(axis, codes)| found[*axis].iter().any(|c| codes.iter().any(|k| k == c)))
            })
            .collect();
        (modules, unknown)
    }

    /// Beds available now: the sum of `nbCapacity` over the capacity records with the
    /// configured status and temporality; `None` when the Location has no capacity record.
    pub fn available_beds(&self, extensions: Option<&Value>) -> Option<i64> {
        let records: Vec<&Value> = extensions
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(&self.capacity.extension))
            .collect();
        if records.is_empty() {
            return None;
        }
        let sub = |rec: &Value, name: &str| -> Option<Value> {
            rec.get("extension")?
                .as_array()?
                .iter()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(name))
                .cloned()
        };
        let code_of = |v: Option<Value>| -> Option<String> {
            v.as_ref()
                .and_then(|v| v.get("valueCodeableConcept"))
                .and_then(|c| c.get("coding"))
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|c| c.get("code"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut total = 0i64;
        for rec in records {
            if code_of(sub(rec, "capacityStatus")).as_deref() == Some(&self.capacity.status)
                && code_of(sub(rec, "temporalityCapacity")).as_deref()
                    == Some(&self.capacity.temporality)
            {
                total += sub(rec, "nbCapacity")
                    .and_then(|v| v.get("valueInteger").and_then(Value::as_i64))
                    .unwrap_or(0);
            }
        }
        Some(total)
    }

    /// `Organization/123` (or `https://ror…/Organization/123`) → `Organization/ror-123`
    /// for the directory types; other references are left as they are.
    fn rewrite_references(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    if k == "reference"
                        && let Value::String(r) = child
                        && let Some(new) = self.rewrite_reference(r)
                    {
                        *r = new;
                    } else {
                        self.rewrite_references(child);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| self.rewrite_references(c)),
            _ => {}
        }
    }

    fn rewrite_reference(&self, r: &str) -> Option<String> {
        let mut parts = r.rsplit('/');
        let id = parts.next()?;
        let rtype = parts.next()?;
        if TYPES.contains(&rtype) && crate::fhir::reference::is_id(id) {
            Some(format!("{rtype}/{}", self.gateway_id(id)))
        } else {
            None
        }
    }
}

/// The codings of a CodeableConcept or a list of them.
fn codings(v: Option<&Value>) -> Vec<&Value> {
    let concepts: Vec<&Value> = match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => Vec::new(),
    };
    concepts
        .into_iter()
        .filter_map(|c| c.get("coding").and_then(Value::as_array))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_mapping_loads() {
        let m = Mapping::builtin().unwrap();
        assert!(m.modules.iter().any(|m| m.code == "SMR"));
    }

    #[test]
    fn broken_mappings_name_the_field() {
        let good: Value = serde_json::from_str(DEFAULT).unwrap();
        type Case = (fn(&mut Value), &'static str);
        let cases: Vec<Case> = vec![
            (
                |v| v["types"]["Location"]["keep"][0] = json!("nonsense"),
                "types.Location.keep[0]",
            ),
            (
                |v| v["modules"][0]["when"] = json!({"nope": ["1"]}),
                "modules[0].when.nope",
            ),
            (
                |v| v["modules"][0]["when"] = json!({"activity": ["99"]}),
                "modules[0].when.activity",
            ),
            (|v| v["id_prefix"] = json!("a b"), "id_prefix"),
            (
                |v| v["modules"][3]["when"] = json!({"offer_type": []}),
                "modules[3].when.offer_type",
            ),
            (
                |v| v["modules"][3]["when"] = json!({"offer_type": ["A CONFIRMER"]}),
                "modules[3].when.offer_type",
            ),
            (
                |v| {
                    v["types"].as_object_mut().unwrap().remove("Location");
                },
                "types.Location",
            ),
            (
                |v| v["capacity"]["extension"] = json!("x"),
                "capacity.extension",
            ),
        ];
        for (break_it, field) in cases {
            let mut v = good.clone();
            break_it(&mut v);
            let e = Mapping::parse("m.json", &v.to_string())
                .unwrap_err()
                .to_string();
            assert!(e.contains("m.json") && e.contains(field), "{field}: {e}");
        }
        let e = Mapping::parse("m.json", "{").unwrap_err().to_string();
        assert!(e.contains("m.json"), "{e}");
    }

    /// A ROR offer with its champ d'activité, mode de prise en charge, type d'offre and
    /// activité opérationnelle, coded as the ROR writes them (TRE URLs, JDV URLs with a slash).
    fn offer(activity: &str, mode: &str, offer_type: &str, specialty: &str) -> Map<String, Value> {
        let nos = "https://mos.esante.gouv.fr/NOS";
        let cc = |system: &str, code: &str| json!([{"coding": [{"system": format!("{nos}/{system}"), "code": code}]}]);
        let v = json!({
            "resourceType": "HealthcareService", "id": "1",
            "type": cc("TRE_R227-ChampActivite/FHIR/TRE-R227-ChampActivite", activity),
            "characteristic": cc("JDV_J19-ModePriseEnCharge-ROR/FHIR/JDV-J19-ModePriseEnCharge-ROR/", mode),
            "category": cc("TRE_R244-CategorieOrganisation/FHIR/TRE-R244-CategorieOrganisation", offer_type),
            "specialty": cc("TRE_R211-ActiviteOperationnelle/FHIR/TRE-R211-ActiviteOperationnelle", specialty),
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn module_rules_follow_the_nos() {
        let m = Mapping::builtin().unwrap();
        let modules = |o: Map<String, Value>| -> Vec<String> {
            let (found, unknown) = m.classify(&o);
            assert!(unknown.is_empty(), "{unknown:?}");
            found.iter().map(|x| x.code.clone()).collect()
        };
        // USP: type d'offre TRE_R244 175 "Unités de soins palliatifs" (MCO or SMR),
        // activité TRE_R211 170 "Soins palliatifs", hospitalisation complète
        assert_eq!(modules(offer("01", "28", "175", "170")), ["USP"]);
        assert_eq!(modules(offer("02", "28", "175", "170")), ["SMR", "USP"]);
        // LISP: TRE_R211 076 "Soins palliatifs avec lits identifiés" in a medicine unit
        // (TRE_R244 238 "Unité de médecine polyvalente"): not an USP
        assert!(modules(offer("01", "28", "238", "076")).is_empty());
        // the palliative activity alone is not an USP: EMSP (TRE_R244 252), mobile team
        assert!(modules(offer("01", "52", "252", "170")).is_empty());
        // EHPAD: médico-social, hébergement, personnes âgées dépendantes (21, UHR 23, UVP 24, PUV 26)
        for t in ["21", "23", "24", "26"] {
            assert_eq!(modules(offer("04", "46", t, "293")), ["EHPAD"], "{t}");
        }
        // médico-social hébergement for others: MAS (40), FAM (39), résidence autonomie (22)
        for t in ["40", "39", "22"] {
            assert!(modules(offer("04", "46", t, "293")).is_empty(), "{t}");
        }
        // an EHPAD's accueil de jour (47) is not a place to be admitted to
        assert!(modules(offer("04", "47", "21", "293")).is_empty());
        // SMR: champ 02; HAD: mode 31
        assert_eq!(modules(offer("02", "28", "100", "172")), ["SMR"]);
        assert_eq!(modules(offer("01", "31", "128", "083")), ["HAD"]);
        // a code outside the known list of an axis is reported, and still matches nothing
        let (found, unknown) = m.classify(&offer("01", "99", "175", "170"));
        assert_eq!(unknown, ["care_mode 99"]);
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn maps_ids_references_modules_beds_and_unknown_codes() {
        let m = Mapping::builtin().unwrap();
        let hs = json!({
            "resourceType": "HealthcareService", "id": "42",
            "meta": {"tag": [{"system": m.region_tag_system, "code": "11"}]},
            "identifier": [{"value": "11/42"}],
            "providedBy": {"reference": "Organization/7"},
            "location": [{"reference": "https://ror.example/fhir/Location/8"}],
            "type": [{"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_R227-ChampActivite/FHIR/TRE-R227-ChampActivite", "code": "02"}]}],
            "characteristic": [{"coding": [{"system": "https://mos.esante.gouv.fr/NOS/JDV_J19-ModePriseEnCharge-ROR/FHIR/JDV-J19-ModePriseEnCharge-ROR/", "code": "77"}]}],
            "comment": "x", "extraElement": "dropped"
        });
        let out = m.map(&hs, "https://ror.example/fhir").unwrap();
        assert_eq!(out.id, "ror-42");
        assert_eq!(out.body["providedBy"]["reference"], "Organization/ror-7");
        assert_eq!(out.body["location"][0]["reference"], "Location/ror-8");
        assert_eq!(out.body["program"][0]["coding"][0]["code"], "SMR");
        assert_eq!(out.body["meta"]["source"], "https://ror.example/fhir");
        assert_eq!(out.body["identifier"][1]["value"], "42");
        assert!(out.body.get("extraElement").is_none());
        assert_eq!(out.unknown_codes, vec!["care_mode 77".to_owned()]);

        let cap = |status: &str, temp: &str, n: i64| {
            json!({
                "url": m.capacity.extension,
                "extension": [
                    {"url": "capacityStatus", "valueCodeableConcept": {"coding": [{"code": status}]}},
                    {"url": "temporalityCapacity", "valueCodeableConcept": {"coding": [{"code": temp}]}},
                    {"url": "nbCapacity", "valueInteger": n}
                ]
            })
        };
        let loc = json!({"resourceType": "Location", "id": "8",
            "extension": [cap("02", "01", 3), cap("01", "01", 20), cap("02", "02", 5), cap("02", "01", 1)]});
        let out = m.map(&loc, "s").unwrap();
        let beds = out.body["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == m.capacity.available_beds_extension)
            .unwrap();
        assert_eq!(beds["valueInteger"], 4);

        assert!(matches!(
            m.map(&json!({"resourceType": "PractitionerRole", "id": "1"}), "s"),
            Err(MapError::Ignored(_))
        ));
        assert!(matches!(
            m.map(&json!({"resourceType": "Location"}), "s"),
            Err(MapError::Malformed(_))
        ));
        assert!(matches!(
            m.map(&json!({"resourceType": "Location", "id": "bad id"}), "s"),
            Err(MapError::Malformed(_))
        ));
    }
}
