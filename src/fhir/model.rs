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

/// A FHIR primitive type, for the checks of its lexical form (`validate::check_text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    /// The primitive type named `name` (`dateTime`), if it is one of R4's.
    pub fn of(name: &str) -> Option<Primitive> {
        Some(match name {
            "base64Binary" => Primitive::Base64Binary,
            "boolean" => Primitive::Boolean,
            "canonical" => Primitive::Canonical,
            "code" => Primitive::Code,
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "decimal" => Primitive::Decimal,
            "id" => Primitive::Id,
            "instant" => Primitive::Instant,
            "integer" => Primitive::Integer,
            "markdown" => Primitive::Markdown,
            "oid" => Primitive::Oid,
            "positiveInt" => Primitive::PositiveInt,
            "string" => Primitive::String,
            "time" => Primitive::Time,
            "unsignedInt" => Primitive::UnsignedInt,
            "uri" => Primitive::Uri,
            "url" => Primitive::Url,
            "uuid" => Primitive::Uuid,
            "xhtml" => Primitive::Xhtml,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Base64Binary => "base64Binary",
            Primitive::Boolean => "boolean",
            Primitive::Canonical => "canonical",
            Primitive::Code => "code",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Decimal => "decimal",
            Primitive::Id => "id",
            Primitive::Instant => "instant",
            Primitive::Integer => "integer",
            Primitive::Markdown => "markdown",
            Primitive::Oid => "oid",
            Primitive::PositiveInt => "positiveInt",
            Primitive::String => "string",
            Primitive::Time => "time",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::Uri => "uri",
            Primitive::Url => "url",
            Primitive::Uuid => "uuid",
            Primitive::Xhtml => "xhtml",
        }
    }

    /// A JSON number (the others but `boolean` are JSON strings).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Primitive::Integer
                | Primitive::PositiveInt
                | Primitive::UnsignedInt
                | Primitive::Decimal
        )
    }
}

/// A type definition's place in the model (`Model::type_at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeId(u32);

/// An element's type, resolved once when the model is loaded, so that walking a resource
/// does not look type names up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeRef {
    Primitive(Primitive),
    /// A complex, backbone or resource type.
    Defined(TypeId),
    /// A name the model does not define (none in R4).
    Unknown,
}

#[derive(Debug)]
pub struct ElementDef {
    /// The JSON name, without `[x]` for a choice.
    pub name: String,
    pub choice: bool,
    /// Type codes (`string`, `Reference`, `Task.input` for a backbone, `Resource`).
    pub types: Vec<String>,
    /// `types`, resolved (same order).
    pub refs: Vec<TypeRef>,
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
    /// Every key an element can have in JSON (its name, or for a choice its name and each
    /// type: `valueString`) → the element's position and the type's place in `types`.
    keys: Keys,
}

/// `TypeDef::keys`: an open-addressing table probed by a hash of a key's length and three of
/// its bytes, at most a quarter full, with what a lookup answers in the slot itself and the
/// keys of a type side by side in one string. The readers and the XML writer look up every
/// key of every object: through a `HashMap` of boxed names, and then the element and its type
/// vectors, that was three times the instructions and most of the cache misses of writing.
#[derive(Debug, Default)]
struct Keys {
    /// A power of two long; `len == 0` is a free slot.
    slots: Vec<KeySlot>,
    /// The keys, one after the other.
    text: String,
}

#[derive(Debug, Clone, Copy)]
struct KeySlot {
    ty_ref: TypeRef,
    /// The key: `text[at..at + len]`.
    at: u32,
    len: u16,
    /// The element's position, and the place of the key's type in its `types`.
    pos: u16,
    ty: u16,
    many: bool,
}

impl Default for KeySlot {
    fn default() -> KeySlot {
        KeySlot {
            ty_ref: TypeRef::Unknown,
            at: 0,
            len: 0,
            pos: 0,
            ty: 0,
            many: false,
        }
    }
}

impl Keys {
    fn start(&self, key: &[u8]) -> usize {
        let n = key.len();
        let byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
        let h = (n as u64 | byte(0) << 8 | byte(n / 2) << 16 | byte(n.wrapping_sub(1)) << 24)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & self.slots.len().wrapping_sub(1)
    }

    fn get(&self, key: &str) -> Option<&KeySlot> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = self.start(key.as_bytes());
        loop {
            let s = self.slots.get(i)?;
            if s.len == 0 {
                return None;
            }
            if usize::from(s.len) == key.len()
                && self
                    .text
                    .as_bytes()
                    .get(s.at as usize..s.at as usize + key.len())
                    == Some(key.as_bytes())
            {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// Builds the table of `(key, element position, type place)`; the first of two equal
    /// keys wins.
    fn build(elements: &[ElementDef], keys: Vec<(String, usize, usize)>) -> Keys {
        let mut t = Keys {
            slots: vec![KeySlot::default(); (keys.len() * 4).next_power_of_two()],
            text: String::new(),
        };
        for (key, pos, ty) in keys {
            if key.is_empty() || t.get(&key).is_some() {
                continue;
            }
            let Some(el) = elements.get(pos) else {
                continue;
            };
            let slot = KeySlot {
                ty_ref: el.refs.get(ty).copied().unwrap_or(TypeRef::Unknown),
                at: t.text.len() as u32,
                len: key.len() as u16,
                pos: pos as u16,
                ty: ty as u16,
                many: el.many,
            };
            t.text.push_str(&key);
            let mask = t.slots.len() - 1;
            let mut i = t.start(key.as_bytes());
            while t.slots[i].len != 0 {
                i = (i + 1) & mask;
            }
            t.slots[i] = slot;
        }
        t
    }
}

/// What a JSON key (or XML element name) names in a type: see `TypeDef::child`.
#[derive(Debug, Clone, Copy)]
pub struct Child<'a> {
    /// The element's position in specification order.
    pub pos: usize,
    pub el: &'a ElementDef,
    /// The concrete type (for a choice, the one the key names), resolved.
    pub ty_ref: TypeRef,
    /// `el.many`, without reading `el`.
    pub many: bool,
    ty: usize,
}

impl<'a> Child<'a> {
    /// The name of the concrete type.
    pub fn ty(&self) -> &'a str {
        self.el.types.get(self.ty).map_or("", String::as_str)
    }
}

impl TypeDef {
    /// The element a JSON key names, its position and concrete type (`valueString` →
    /// `value[x]`, `string`): one hash lookup.
    pub fn child(&self, key: &str) -> Option<Child<'_>> {
        let k = self.keys.get(key)?;
        Some(Child {
            pos: usize::from(k.pos),
            el: self.elements.get(usize::from(k.pos))?,
            ty_ref: k.ty_ref,
            many: k.many,
            ty: usize::from(k.ty),
        })
    }

    /// The element a JSON key names, with the concrete type for a choice (`valueString` →
    /// `value[x]`, `string`).
    pub fn element<'a>(&'a self, key: &str) -> Option<(&'a ElementDef, &'a str)> {
        self.child(key).map(|c| (c.el, c.ty()))
    }

    /// The element named `name` (a choice by its bare name).
    pub fn by_name(&self, name: &str) -> Option<&ElementDef> {
        self.by_name.get(name).map(|&i| &self.elements[i])
    }

    /// Position of an element in specification order (for XML output and `_elements`).
    pub fn order_of(&self, key: &str) -> Option<usize> {
        self.child(key).map(|c| c.pos)
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
    types: Vec<TypeDef>,
    index: HashMap<String, TypeId, NameHash>,
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

    fn parse(text: &str) -> Result<Model, String> {
        let raw: RawModel = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(p) = raw.primitives.iter().find(|p| Primitive::of(p).is_none()) {
            return Err(format!("`{p}` is not an R4 primitive type"));
        }
        let primitives: HashSet<String, NameHash> = raw.primitives.into_iter().collect();
        let mut raw_types: Vec<(String, RawType)> = raw.types.into_iter().collect();
        // the same places from one load to the next
        raw_types.sort_by(|a, b| a.0.cmp(&b.0));
        let index: HashMap<String, TypeId, NameHash> = raw_types
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), TypeId(i as u32)))
            .collect();
        let resolve = |t: &str| match Primitive::of(t) {
            Some(p) if primitives.contains(t) => TypeRef::Primitive(p),
            _ => index
                .get(t)
                .map_or(TypeRef::Unknown, |&id| TypeRef::Defined(id)),
        };
        let mut types = Vec::with_capacity(raw_types.len());
        for (name, t) in raw_types {
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
                        refs: e.t.iter().map(|t| resolve(t)).collect(),
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
            // A plain element's name wins over a choice's key; between choices, the first.
            let mut keys = Vec::new();
            for (i, e) in elements.iter().enumerate().filter(|(_, e)| !e.choice) {
                keys.push((e.name.clone(), i, 0));
            }
            for (i, e) in elements.iter().enumerate().filter(|(_, e)| e.choice) {
                for (j, t) in e.types.iter().enumerate() {
                    let mut chars = t.chars();
                    let key: String = match chars.next() {
                        Some(first) => {
                            format!("{}{}{}", e.name, first.to_ascii_uppercase(), chars.as_str())
                        }
                        None => continue,
                    };
                    keys.push((key, i, j));
                }
            }
            types.push(TypeDef {
                name,
                kind,
                is_abstract: t.is_abstract,
                keys: Keys::build(&elements, keys),
                elements,
                by_name,
            });
        }
        Ok(Model {
            types,
            index,
            primitives,
        })
    }

    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.index.get(name).map(|&id| self.type_at(id))
    }

    /// The type an element's `TypeRef::Defined` names.
    pub fn type_at(&self, id: TypeId) -> &TypeDef {
        &self.types[id.0 as usize]
    }

    pub fn is_primitive(&self, t: &str) -> bool {
        self.primitives.contains(t)
    }

    /// A concrete resource type (`Task`, not `DomainResource`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.get(name)
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

    #[test]
    fn keys_are_resolved_once() {
        let m = Model::r4();
        let input = m.get("Task.input").unwrap();
        assert!(
            input.child("value").is_none(),
            "a choice's bare name is no key"
        );
        let c = input.child("valueCodeableConcept").unwrap();
        assert_eq!((c.el.name.as_str(), c.ty()), ("value", "CodeableConcept"));
        assert!(
            matches!(c.ty_ref, TypeRef::Defined(id) if m.type_at(id).name == "CodeableConcept")
        );
        let c = input.child("valueDate").unwrap();
        assert_eq!(c.ty_ref, TypeRef::Primitive(Primitive::Date));
        assert_eq!(c.pos, input.by_name.get("value").copied().unwrap());
        // every element of every type answers to its keys, with the type the key names
        for def in &m.types {
            for (i, e) in def.elements.iter().enumerate() {
                for (j, t) in e.types.iter().enumerate() {
                    let key = if e.choice {
                        let mut c = t.chars();
                        let first = c.next().unwrap().to_ascii_uppercase();
                        format!("{}{first}{}", e.name, c.as_str())
                    } else if j == 0 {
                        e.name.clone()
                    } else {
                        continue;
                    };
                    let c = def.child(&key).unwrap();
                    assert_eq!((c.pos, c.ty()), (i, t.as_str()), "{}.{key}", def.name);
                    assert_eq!(c.many, e.many);
                    assert_ne!(c.ty_ref, TypeRef::Unknown, "{}.{key}", def.name);
                    assert_eq!(
                        c.ty_ref == TypeRef::Primitive(Primitive::Xhtml),
                        t == "xhtml"
                    );
                }
            }
        }
    }
}
