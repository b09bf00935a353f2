//! The FHIR R4 base model: every type's elements in specification order, with cardinality,
//! types and the codes of small required bindings. Loaded from `profiles/r4-base/model.json`
//! (distilled from the official 4.0.1 StructureDefinitions by `tools/gen-r4-model.py`).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Resource,
    ComplexType,
    /// A backbone element of a resource or type (`Task.input`), named by its path.
    Backbone,
}

#[derive(Debug)]
pub struct ElementDef {
    /// The JSON name, without `[x]` for a choice.
    pub name: String,
    pub choice: bool,
    /// Type codes (`string`, `Reference`, `Task.input` for a backbone, `Resource`).
    pub types: Vec<String>,
    pub min: u32,
    /// `max` is `*` (an array in JSON).
    pub many: bool,
    /// Allowed codes of a required binding, where the value set is a closed list.
    pub codes: Option<Vec<String>>,
    /// Target resource types of a `Reference`.
    pub targets: Vec<String>,
}

#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub kind: Kind,
    pub is_abstract: bool,
    pub elements: Vec<ElementDef>,
    by_name: HashMap<String, usize, NameHash>,
}

impl TypeDef {
    /// The element a JSON key names, with the concrete type for a choice (`valueString` →
    /// `value[x]`, `string`).
    pub fn element<'a>(&'a self, key: &str) -> Option<(&'a ElementDef, &'a str)> {
        if let Some(&i) = self.by_name.get(key) {
            let e = &self.elements[i];
            if !e.choice {
                return Some((e, e.types.first().map_or("", String::as_str)));
            }
        }
        for e in self.elements.iter().filter(|e| e.choice) {
            if let Some(suffix) = key.strip_prefix(e.name.as_str())
                && let Some(t) = e.types.iter().find(|t| type_suffix_matches(t, suffix))
            {
                return Some((e, t.as_str()));
            }
        }
        None
    }

    /// The element named `name` (a choice by its bare name).
    pub fn by_name(&self, name: &str) -> Option<&ElementDef> {
        self.by_name.get(name).map(|&i| &self.elements[i])
    }

    /// Position of an element in specification order (for XML output and `_elements`).
    pub fn order_of(&self, key: &str) -> Option<usize> {
        let (e, _) = self.element(key)?;
        self.by_name.get(&e.name).copied()
    }
}

/// Whether a choice element's key suffix names type `t`: `String` for `string`,
/// `CodeableConcept` for `CodeableConcept`.
pub fn type_suffix_matches(t: &str, suffix: &str) -> bool {
    let mut chars = t.chars();
    match chars.next() {
        Some(first) => {
            suffix.len() == t.len()
                && suffix.starts_with(first.to_ascii_uppercase())
                && suffix[first.len_utf8()..] == *chars.as_str()
        }
        None => false,
    }
}

/// The model's maps are built once from our own file and never grow, so hash flooding by a
/// client is not possible: a multiply-rotate hash (FxHash's) instead of SipHash, which was
/// a tenth of the time of reading and writing XML.
#[derive(Default, Clone, Copy)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn write_u8(&mut self, b: u8) {
        self.write(&[b]);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type NameHash = BuildHasherDefault<NameHasher>;

pub struct Model {
    types: HashMap<String, TypeDef, NameHash>,
    primitives: HashSet<String, NameHash>,
}

#[derive(Deserialize)]
struct RawModel {
    primitives: Vec<String>,
    types: HashMap<String, RawType>,
}

#[derive(Deserialize)]
struct RawType {
    kind: String,
    #[serde(rename = "abstract", default)]
    is_abstract: bool,
    elements: Vec<RawElement>,
}

#[derive(Deserialize)]
struct RawElement {
    n: String,
    min: u32,
    max: String,
    #[serde(default)]
    t: Vec<String>,
    #[serde(default)]
    codes: Option<Vec<String>>,
    #[serde(default)]
    r: Vec<String>,
}

static R4: OnceLock<Model> = OnceLock::new();

impl Model {
    /// The R4 model shipped in `profiles/r4-base/model.json`.
    pub fn r4() -> &'static Model {
        R4.get_or_init(|| {
            Model::parse(include_str!("../../profiles/r4-base/model.json"))
                .unwrap_or_else(|e| panic!("profiles/r4-base/model.json is broken: {e}"))
        })
    }

    fn parse(text: &str) -> Result<Model, serde_json::Error> {
        let raw: RawModel = serde_json::from_str(text)?;
        let mut types = HashMap::with_capacity_and_hasher(raw.types.len(), NameHash::default());
        for (name, t) in raw.types {
            let kind = match t.kind.as_str() {
                "resource" => Kind::Resource,
                "backbone" => Kind::Backbone,
                _ => Kind::ComplexType,
            };
            let elements: Vec<ElementDef> = t
                .elements
                .into_iter()
                .map(|e| {
                    let choice = e.n.ends_with("[x]");
                    ElementDef {
                        name: e.n.trim_end_matches("[x]").to_owned(),
                        choice,
                        types: e.t,
                        min: e.min,
                        many: e.max == "*",
                        codes: e.codes,
                        targets: e.r,
                    }
                })
                .collect();
            let by_name = elements
                .iter()
                .enumerate()
                .map(|(i, e)| (e.name.clone(), i))
                .collect();
            types.insert(
                name.clone(),
                TypeDef {
                    name,
                    kind,
                    is_abstract: t.is_abstract,
                    elements,
                    by_name,
                },
            );
        }
        Ok(Model {
            types,
            primitives: raw.primitives.into_iter().collect(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    pub fn is_primitive(&self, t: &str) -> bool {
        self.primitives.contains(t)
    }

    /// A concrete resource type (`Task`, not `DomainResource`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == Kind::Resource && !t.is_abstract)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_r4() {
        let m = Model::r4();
        assert!(m.is_resource_type("Task"));
        assert!(!m.is_resource_type("DomainResource"));
        assert!(m.is_primitive("dateTime"));
        let task = m.get("Task").unwrap();
        let (status, t) = task.element("status").unwrap();
        assert_eq!(t, "code");
        assert!(
            status
                .codes
                .as_ref()
                .unwrap()
                .contains(&"requested".to_owned())
        );
        let input = m.get("Task.input").unwrap();
        let (e, t) = input.element("valueDecimal").unwrap();
        assert_eq!((e.name.as_str(), t), ("value", "decimal"));
        assert!(input.element("valueFoo").is_none());
        let (e, t) = m
            .get("ServiceRequest")
            .unwrap()
            .element("occurrencePeriod")
            .unwrap();
        assert_eq!((e.name.as_str(), t), ("occurrence", "Period"));
        let (item, _) = m
            .get("Questionnaire.item")
            .unwrap()
            .element("item")
            .unwrap();
        assert_eq!(item.types, vec!["Questionnaire.item".to_owned()]);
    }
}
