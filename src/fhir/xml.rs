//! FHIR R4 XML (<https://hl7.org/fhir/R4/xml.html>) to and from the JSON form the server
//! keeps.
//!
//! Writing walks the JSON value once straight into a `String`, putting each object's
//! elements in specification order (the model's), not the JSON key order. Reading is a
//! single pass over quick-xml's namespace-aware events that builds the `serde_json::Value` a
//! client would have sent as JSON: arrays where the element repeats, numbers keeping their
//! lexical text, `id` and extensions of primitives as `_name` partners. For valid resources
//! the two are exact inverses.
//!
//! Reading is strict: the FHIR namespace, known elements in specification order, primitive
//! values in their lexical form, no text outside the narrative, no DTD and no entities
//! beyond the five predefined ones and character references. Errors carry a FHIRPath-like
//! location and the line and column in the document.

use std::borrow::Cow;
use std::fmt;

use quick_xml::XmlVersion;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceResolver, PrefixDeclaration, ResolveResult};
use quick_xml::reader::Reader;
use serde_json::{Map, Value};

use super::model::{ElementDef, Kind, Model, TypeDef};
use super::validate::{MAX_DEPTH, check_lexical, check_primitive};

/// The namespace of every FHIR element.
pub const FHIR_NS: &str = "http://hl7.org/fhir";
/// The namespace of the narrative `div` and everything in it.
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
/// `xsi:schemaLocation` and friends are tolerated on resource elements.
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// What a primitive without id or extensions has as its `_name` partner.
static EMPTY_MAP: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
/// Deepest element nesting read or written (what `json::parse_resource` allows for JSON).
const MAX_XML_DEPTH: usize = MAX_DEPTH + 4;

/// Where a problem is: a FHIRPath-like path (empty outside the root element) and the
/// 1-based line and column (in characters) of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "line {}, column {}", self.line, self.column)
        } else {
            write!(
                f,
                "{} (line {}, column {})",
                self.path, self.line, self.column
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The document is not well-formed XML.
    #[error("{at}: XML is not well-formed: {message}")]
    Syntax { at: Location, message: String },
    /// A DTD, or an entity other than the predefined ones and character references.
    #[error("{at}: {what} is not allowed in FHIR XML")]
    Forbidden { at: Location, what: String },
    #[error("{at}: element `{name}` is in namespace `{namespace}`, expected `{expected}`")]
    Namespace {
        at: Location,
        name: String,
        namespace: String,
        expected: &'static str,
    },
    #[error("{at}: unknown element `{name}` in {type_name}")]
    UnknownElement {
        at: Location,
        name: String,
        type_name: String,
    },
    #[error("{at}: unknown attribute `{name}`")]
    UnknownAttribute { at: Location, name: String },
    /// An element that the specification puts before one already read.
    #[error("{at}: `{name}` is out of order: it must come before `{before}`")]
    Order {
        at: Location,
        name: String,
        before: String,
    },
    #[error("{at}: `{name}` appears more than once but does not repeat")]
    Repeated { at: Location, name: String },
    /// A `value` attribute that is not in the lexical form of its type.
    #[error("{at}: {message}")]
    Value { at: Location, message: String },
    #[error("{at}: text content is not allowed here")]
    Text { at: Location },
    /// Anything else that does not fit the model (missing value, wrong root, ...).
    #[error("{at}: {message}")]
    Structure { at: Location, message: String },
    /// A JSON resource that has no XML form (not valid FHIR JSON).
    #[error("{path}: cannot be written as XML: {message}")]
    Write { path: String, message: String },
}

impl XmlError {
    fn location(&self) -> Option<&Location> {
        match self {
            XmlError::Syntax { at, .. }
            | XmlError::Forbidden { at, .. }
            | XmlError::Namespace { at, .. }
            | XmlError::UnknownElement { at, .. }
            | XmlError::UnknownAttribute { at, .. }
            | XmlError::Order { at, .. }
            | XmlError::Repeated { at, .. }
            | XmlError::Value { at, .. }
            | XmlError::Text { at }
            | XmlError::Structure { at, .. } => Some(at),
            XmlError::Write { .. } => None,
        }
    }

    /// The FHIRPath-like location of the problem (`Patient.name[0].given[1]`), if known.
    pub fn expression(&self) -> Option<String> {
        match self {
            XmlError::Write { path, .. } => Some(path).filter(|p| !p.is_empty()).cloned(),
            other => other
                .location()
                .filter(|l| !l.path.is_empty())
                .map(|l| l.path.clone()),
        }
    }

    /// The 1-based line of the document where reading failed.
    pub fn line(&self) -> Option<usize> {
        self.location().map(|l| l.line)
    }

    /// The 1-based column (in characters) of the document where reading failed.
    pub fn column(&self) -> Option<usize> {
        self.location().map(|l| l.column)
    }
}

/// A position in the resource while reading or writing; rendered only for errors, so
/// building it costs nothing on the way.
#[derive(Clone, Copy)]
struct At<'a> {
    parent: Option<&'a At<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl<'a> At<'a> {
    fn root(name: &'a str) -> At<'a> {
        At {
            parent: None,
            name,
            index: None,
        }
    }

    fn child<'b>(&'b self, name: &'b str, index: Option<usize>) -> At<'b> {
        At {
            parent: Some(self),
            name,
            index,
        }
    }

    fn render(&self) -> String {
        let mut chain = Vec::new();
        let mut cur = Some(self);
        while let Some(a) = cur {
            chain.push(a);
            cur = a.parent;
        }
        let mut s = String::new();
        for (i, a) in chain.iter().rev().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(a.name);
            if let Some(n) = a.index {
                s.push('[');
                s.push_str(&n.to_string());
                s.push(']');
            }
        }
        s
    }
}

/// The element a JSON key (or XML element name) names among `def.elements[range]`, with its
/// position and concrete type: what `TypeDef::element` answers, found by scanning from where
/// the previous key was. Keys come in specification order (always in XML, usually in JSON),
/// so this is a few short comparisons instead of hashing.
fn scan<'m>(
    def: &'m TypeDef,
    range: std::ops::Range<usize>,
    key: &str,
) -> Option<(usize, &'m ElementDef, &'m str)> {
    let elements = def.elements.get(range.clone())?;
    for (i, e) in elements.iter().enumerate() {
        if !e.choice {
            if e.name == key {
                return Some((
                    range.start + i,
                    e,
                    e.types.first().map_or("", String::as_str),
                ));
            }
        } else if let Some(suffix) = key.strip_prefix(e.name.as_str())
            && let Some(t) = e.types.iter().find(|t| type_suffix_matches(t, suffix))
        {
            return Some((range.start + i, e, t.as_str()));
        }
    }
    None
}

/// Like `scan` over the whole type, starting at `from` and wrapping around.
fn find<'m>(def: &'m TypeDef, from: usize, key: &str) -> Option<(usize, &'m ElementDef, &'m str)> {
    let from = from.min(def.elements.len());
    scan(def, from..def.elements.len(), key).or_else(|| scan(def, 0..from, key))
}

use super::model::type_suffix_matches;

/// What an element's type is, with one hash lookup: FHIR primitive type names start with a
/// lower-case letter, the others (complex, backbone, resource) with a capital.
#[derive(Clone, Copy)]
enum TypeOf<'m> {
    Primitive,
    Defined(&'m TypeDef),
    Unknown,
}

/// `type_of` remembered by the address of the type name in the model (a few dozen types
/// recur in a document): a direct-mapped table of 256 slots, no hashing of the name.
struct TypeCache<'m> {
    slots: [(usize, TypeOf<'m>); 256],
}

impl<'m> TypeCache<'m> {
    fn new() -> TypeCache<'m> {
        TypeCache {
            slots: [(0, TypeOf::Unknown); 256],
        }
    }

    fn get(&mut self, model: &'m Model, ty: &'m str) -> TypeOf<'m> {
        let key = ty.as_ptr() as usize;
        // Fibonacci hashing of the address: its low bits are mostly alignment.
        let slot = &mut self.slots
            [key.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> (usize::BITS - 8)];
        if slot.0 != key {
            *slot = (key, type_of(model, ty));
        }
        slot.1
    }
}

fn type_of<'m>(model: &'m Model, ty: &str) -> TypeOf<'m> {
    if ty.starts_with(|c: char| c.is_ascii_lowercase()) {
        if model.is_primitive(ty) {
            return TypeOf::Primitive;
        }
    } else if let Some(def) = model.get(ty) {
        return TypeOf::Defined(def);
    }
    TypeOf::Unknown
}

/// `value[x]` for a choice, else the element name.
fn display_name(el: &ElementDef) -> String {
    if el.choice {
        format!("{}[x]", el.name)
    } else {
        el.name.clone()
    }
}

fn is_numeric(ty: &str) -> bool {
    matches!(ty, "integer" | "positiveInt" | "unsignedInt" | "decimal")
}

// ---------------------------------------------------------------------------------------
// Writing

/// The resource as FHIR XML on one line (after the XML declaration).
pub fn to_xml(model: &Model, resource: &Value) -> Result<String, XmlError> {
    write(model, resource, false)
}

/// The resource as FHIR XML, one element per line, indented by two spaces.
pub fn to_xml_pretty(model: &Model, resource: &Value) -> Result<String, XmlError> {
    write(model, resource, true)
}

fn write(model: &Model, resource: &Value, pretty: bool) -> Result<String, XmlError> {
    let (Some(element), Some(extension)) = (model.get("Element"), model.get("Extension")) else {
        return Err(XmlError::Write {
            path: String::new(),
            message: "the model has no Element or Extension type".into(),
        });
    };
    let mut w = Writer {
        model,
        element,
        extension,
        types: TypeCache::new(),
        out: String::with_capacity(4096),
        pretty,
        depth: 0,
        pool: Vec::new(),
    };
    w.out.push_str(DECLARATION);
    w.out.push('\n');
    w.resource(resource, None, true)?;
    Ok(w.out)
}

struct Writer<'m, 'v> {
    model: &'m Model,
    element: &'m TypeDef,
    extension: &'m TypeDef,
    types: TypeCache<'m>,
    out: String,
    pretty: bool,
    depth: usize,
    /// Emptied `entries` vectors of finished objects, reused: one allocation per nesting
    /// level instead of one per object.
    pool: Vec<Vec<Entry<'v, 'm>>>,
}

/// What is being written as an XML element.
enum Mode<'v> {
    Resource {
        root: bool,
    },
    Complex,
    /// A primitive: its lexical value (if any); the object is its `_name` partner.
    Primitive(Option<&'v str>),
}

/// One JSON key of an object (or a `_name` partner without its value), placed in order.
struct Entry<'v, 'm> {
    pos: usize,
    key: &'v str,
    el: &'m ElementDef,
    ty: &'m str,
    value: Option<&'v Value>,
    partner: Option<&'v Value>,
}

fn write_err(at: &At, message: impl Into<String>) -> XmlError {
    XmlError::Write {
        path: at.render(),
        message: message.into(),
    }
}

impl<'m, 'v> Writer<'m, 'v> {
    fn indent(&mut self) {
        if self.pretty {
            for _ in 0..self.depth {
                self.out.push_str("  ");
            }
        }
    }

    fn newline(&mut self) {
        if self.pretty {
            self.out.push('\n');
        }
    }

    fn attr(&mut self, name: &str, value: &str, at: &At) -> Result<(), XmlError> {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape_attr(&mut self.out, value).map_err(|c| {
            write_err(
                at,
                format!("character U+{:04X} cannot appear in XML", c as u32),
            )
        })?;
        self.out.push('"');
        Ok(())
    }

    fn resource(&mut self, v: &'v Value, at: Option<&At>, root: bool) -> Result<(), XmlError> {
        let unnamed = At::root("");
        let where_ = at.unwrap_or(&unnamed);
        let obj = v
            .as_object()
            .ok_or_else(|| write_err(where_, "a resource must be a JSON object"))?;
        let rtype = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| write_err(where_, "missing or non-string resourceType"))?;
        let def = self
            .model
            .get(rtype)
            .filter(|_| self.model.is_resource_type(rtype))
            .ok_or_else(|| write_err(where_, format!("unknown resource type `{rtype}`")))?;
        let here = at.copied().unwrap_or(At::root(rtype));
        self.object(rtype, def, obj, &here, Mode::Resource { root })
    }

    /// Writes `<name attrs>children</name>` for an object of type `def`.
    fn object(
        &mut self,
        name: &str,
        def: &'m TypeDef,
        obj: &'v Map<String, Value>,
        at: &At,
        mode: Mode,
    ) -> Result<(), XmlError> {
        if self.depth > MAX_XML_DEPTH {
            return Err(write_err(at, "nested too deeply"));
        }
        let is_resource = matches!(mode, Mode::Resource { .. });
        let is_extension = std::ptr::eq(def, self.extension);
        // Only primitives have `_name` partners; skip the lookups when there are none.
        let has_partners = obj.keys().any(|k| k.starts_with('_'));
        let mut id_attr = None;
        let mut url_attr = None;
        let mut entries = self.pool.pop().unwrap_or_default();
        let mut partner_key = String::new();
        let mut cursor = 0;
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            // Element.id and Extension.url are XML attributes (a resource's id is not).
            if !is_resource && (key == "id" || is_extension && key == "url") {
                let s = value
                    .as_str()
                    .ok_or_else(|| write_err(&at.child(key, None), "expected a JSON string"))?;
                if key == "id" {
                    id_attr = Some(s);
                } else {
                    url_attr = Some(s);
                }
                continue;
            }
            let (bare, partner_only) = match key.strip_prefix('_') {
                Some(base) => (base, true),
                None => (key.as_str(), false),
            };
            let Some((pos, el, ty)) = find(def, cursor, bare) else {
                return Err(write_err(
                    &at.child(key, None),
                    format!("unknown element `{key}` in {}", def.name),
                ));
            };
            cursor = pos;
            if partner_only {
                if !is_resource && (bare == "id" || is_extension && bare == "url") {
                    return Err(write_err(
                        &at.child(key, None),
                        "an XML attribute cannot carry an id or extensions",
                    ));
                }
                if !matches!(self.types.get(self.model, ty), TypeOf::Primitive) {
                    return Err(write_err(
                        &at.child(key, None),
                        format!("`{key}` is only allowed on primitive elements"),
                    ));
                }
                if obj.contains_key(bare) {
                    // Written with its value.
                    continue;
                }
            }
            let (value, partner) = if partner_only {
                (None, Some(value))
            } else if has_partners && matches!(self.types.get(self.model, ty), TypeOf::Primitive) {
                partner_key.clear();
                partner_key.push('_');
                partner_key.push_str(key);
                (Some(value), obj.get(partner_key.as_str()))
            } else {
                (Some(value), None)
            };
            entries.push(Entry {
                pos,
                key: bare,
                el,
                ty,
                value,
                partner,
            });
        }
        // JSON usually comes in specification order already.
        if !entries.is_sorted_by_key(|e| e.pos) {
            entries.sort_by_key(|e| e.pos);
        }

        self.indent();
        self.out.push('<');
        self.out.push_str(name);
        if let Mode::Resource { root: true } = mode {
            self.out.push_str(" xmlns=\"");
            self.out.push_str(FHIR_NS);
            self.out.push('"');
        }
        if let Some(id) = id_attr {
            self.attr("id", id, &at.child("id", None))?;
        }
        if let Some(url) = url_attr {
            self.attr("url", url, &at.child("url", None))?;
        }
        if let Mode::Primitive(Some(v)) = mode {
            self.attr("value", v, at)?;
        }
        if entries.is_empty() {
            self.out.push_str("/>");
            self.newline();
            self.pool.push(entries);
            return Ok(());
        }
        self.out.push('>');
        self.newline();
        self.depth += 1;
        for e in &entries {
            self.entry(e, at)?;
        }
        entries.clear();
        self.pool.push(entries);
        self.depth -= 1;
        self.indent();
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self.newline();
        Ok(())
    }

    fn entry(&mut self, e: &Entry<'v, 'm>, at: &At) -> Result<(), XmlError> {
        if !e.el.many {
            let here = at.child(e.key, None);
            if matches!(e.value, Some(Value::Array(_)))
                || matches!(e.partner, Some(Value::Array(_)))
            {
                return Err(write_err(&here, "a single value, not an array"));
            }
            return self.item(e.key, e.ty, e.value, e.partner, &here);
        }
        let values = match e.value {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(write_err(&at.child(e.key, None), "empty array"));
            }
            Some(Value::Array(a)) => Some(a),
            Some(_) => return Err(write_err(&at.child(e.key, None), "expected an array")),
        };
        let partners = match e.partner {
            None => None,
            Some(Value::Array(a)) => Some(a),
            Some(_) => {
                return Err(write_err(
                    &at.child(e.key, None),
                    format!("`_{}` must be an array", e.key),
                ));
            }
        };
        let n = match (values, partners) {
            (Some(v), Some(p)) if v.len() != p.len() => {
                return Err(write_err(
                    &at.child(e.key, None),
                    format!("`_{0}` must have as many items as `{0}`", e.key),
                ));
            }
            (Some(v), _) => v.len(),
            (None, Some(p)) => p.len(),
            (None, None) => 0,
        };
        for i in 0..n {
            let here = at.child(e.key, Some(i));
            let value = values.and_then(|v| v.get(i));
            let partner = partners.and_then(|p| p.get(i));
            self.item(e.key, e.ty, value, partner, &here)?;
        }
        Ok(())
    }

    /// One occurrence of an element: a primitive, the narrative div, a wrapped resource or
    /// a complex value.
    fn item(
        &mut self,
        name: &str,
        ty: &'m str,
        value: Option<&'v Value>,
        partner: Option<&'v Value>,
        at: &At,
    ) -> Result<(), XmlError> {
        let value = value.filter(|v| !v.is_null());
        let partner = partner.filter(|v| !v.is_null());
        let def = match self.types.get(self.model, ty) {
            TypeOf::Defined(def) => def,
            TypeOf::Unknown => return Err(write_err(at, format!("unknown type `{ty}`"))),
            TypeOf::Primitive => return self.primitive(name, ty, value, partner, at),
        };
        if partner.is_some() {
            return Err(write_err(
                at,
                format!("`_{name}` is only allowed on primitive elements"),
            ));
        }
        let value = value.ok_or_else(|| write_err(at, "null is not a value"))?;
        if def.kind == Kind::Resource {
            self.indent();
            self.out.push('<');
            self.out.push_str(name);
            self.out.push('>');
            self.newline();
            self.depth += 1;
            self.resource(value, Some(at), false)?;
            self.depth -= 1;
            self.indent();
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
            self.newline();
            return Ok(());
        }
        let obj = value
            .as_object()
            .ok_or_else(|| write_err(at, format!("expected a JSON object ({ty})")))?;
        self.object(name, def, obj, at, Mode::Complex)
    }

    /// A primitive element (or the narrative div) with its `_name` partner.
    fn primitive(
        &mut self,
        name: &str,
        ty: &str,
        value: Option<&'v Value>,
        partner: Option<&'v Value>,
        at: &At,
    ) -> Result<(), XmlError> {
        {
            if ty == "xhtml" {
                if partner.is_some() {
                    return Err(write_err(
                        at,
                        "the narrative cannot carry an id or extensions",
                    ));
                }
                let div = value
                    .and_then(Value::as_str)
                    .ok_or_else(|| write_err(at, "the narrative must be a JSON string"))?
                    .trim();
                check_div(div).map_err(|m| write_err(at, m))?;
                // Standalone-valid XHTML with its own namespace declarations: written as is,
                // so the client's narrative comes back byte for byte.
                self.indent();
                self.out.push_str(div);
                self.newline();
                return Ok(());
            }
            let lexical = match value {
                None => None,
                Some(v) => Some(
                    lexical(ty, v)
                        .ok_or_else(|| write_err(at, format!("not a valid JSON value for {ty}")))?,
                ),
            };
            let partner_obj = match partner {
                None if lexical.is_none() => {
                    return Err(write_err(at, "null without an id or extensions"));
                }
                None => &*EMPTY_MAP,
                Some(Value::Object(o)) => o,
                Some(_) => {
                    return Err(write_err(
                        at,
                        format!("`_{name}` must be an object (or null in an array)"),
                    ));
                }
            };
            self.object(
                name,
                self.element,
                partner_obj,
                at,
                Mode::Primitive(lexical),
            )
        }
    }
}

/// The text of a primitive's `value` attribute: numbers as written, booleans as words.
fn lexical<'v>(ty: &str, v: &'v Value) -> Option<&'v str> {
    match v {
        Value::Bool(b) if ty == "boolean" => Some(if *b { "true" } else { "false" }),
        Value::Number(n) if is_numeric(ty) => Some(n.as_str()),
        Value::String(s) if ty != "boolean" && !is_numeric(ty) => Some(s),
        _ => None,
    }
}

/// Bytes that `escape_attr` must look at: markup characters, control characters, and 0xEF
/// (the first byte of U+FFFE and U+FFFF). Everything else is copied in runs.
static ATTR_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'"' as usize] = true;
    t[0xEF] = true;
    t
};

/// Whether any byte of `w` may be one of `ATTR_SPECIAL` (false positives are fine: the
/// word is then looked at byte by byte). The classic SWAR "has a zero byte" test, applied to
/// `w` XOR each special byte, and "has a byte below 0x20".
fn may_be_special(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space
        | has_zero(w ^ (ONES * u64::from(b'&')))
        | has_zero(w ^ (ONES * u64::from(b'<')))
        | has_zero(w ^ (ONES * u64::from(b'>')))
        | has_zero(w ^ (ONES * u64::from(b'"')))
        | has_zero(w ^ (ONES * 0xEF)))
        != 0
}

/// Appends `s` escaped for a double-quoted attribute. Tab, CR and LF become character
/// references, or attribute-value normalization would turn them into spaces. Fails on a
/// character XML 1.0 cannot carry at all.
fn escape_attr(out: &mut String, s: &str) -> Result<(), char> {
    let bytes = s.as_bytes();
    let mut last = 0;
    let mut i = 0;
    let mut word_end = 0;
    while i < bytes.len() {
        if i >= word_end {
            // Skip eight ordinary bytes at a time; a word that may hold a special byte is
            // looked at byte by byte.
            while let Some(w) = bytes.get(i..i + 8) {
                let mut a = [0u8; 8];
                a.copy_from_slice(w);
                if may_be_special(u64::from_le_bytes(a)) {
                    break;
                }
                i += 8;
            }
            word_end = i + 8;
            if i >= bytes.len() {
                break;
            }
        }
        let b = bytes[i];
        if !ATTR_SPECIAL[usize::from(b)] {
            i += 1;
            continue;
        }
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\n' => "&#10;",
            b'\r' => "&#13;",
            b'\t' => "&#9;",
            0..=0x1f => return Err(char::from(b)),
            // U+FFFE and U+FFFF (EF BF BE / EF BF BF) are not XML characters.
            _ if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                return Err(if bytes.get(i + 2) == Some(&0xBE) {
                    '\u{FFFE}'
                } else {
                    '\u{FFFF}'
                });
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        i += 1;
        last = i;
    }
    out.push_str(&s[last..]);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The narrative: XHTML, carried in JSON as text.

/// What is wrong inside a narrative, at a byte offset of the text being read.
struct DivProblem {
    pos: usize,
    kind: DivKind,
}

enum DivKind {
    Syntax(String),
    Forbidden(String),
    Namespace { name: String, namespace: String },
    Other(String),
}

impl DivKind {
    fn message(&self) -> String {
        match self {
            DivKind::Syntax(m) => format!("not well-formed XML: {m}"),
            DivKind::Forbidden(w) => format!("{w} is not allowed"),
            DivKind::Namespace { name, namespace } => {
                format!("element `{name}` is in namespace `{namespace}`, expected `{XHTML_NS}`")
            }
            DivKind::Other(m) => m.clone(),
        }
    }
}

fn offset(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

fn describe_ns(r: &ResolveResult) -> String {
    match r {
        ResolveResult::Bound(n) => n.0.to_owned(),
        ResolveResult::Unbound => "(none)".to_owned(),
        ResolveResult::Unknown(p) => format!("(undeclared prefix `{p}`)"),
    }
}

/// The XML name characters XML 1.0 allows in a document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Text re-serializing a narrative with the XHTML namespace declared on the div (built only
/// when needed).
struct Canon(Option<String>);

impl Canon {
    fn push_str(&mut self, s: &str) {
        if let Some(c) = &mut self.0 {
            c.push_str(s);
        }
    }

    fn attr_value(&mut self, s: &str) -> Result<(), char> {
        match &mut self.0 {
            Some(c) => escape_attr(c, s),
            None => Ok(()),
        }
    }
}

/// Walks a narrative whose start tag `start` (at byte `pos`) was just read, up to its end
/// tag: every element in the XHTML namespace, attributes without foreign namespaces, only the
/// predefined entities and character references, no processing instruction or DTD. Returns
/// whether the source text of the div is self-contained (it declares the XHTML namespace as
/// its default and uses no prefixes), so that it can be kept verbatim.
fn walk_div<'i>(
    r: &mut XmlReader<'i>,
    start: &BytesStart<'i>,
    empty: bool,
    pos: usize,
    canon: &mut Canon,
) -> Result<bool, DivProblem> {
    let mut simple = true;
    div_tag(r, start, true, pos, canon, &mut simple)?;
    if empty {
        canon.push_str("/>");
        return Ok(simple);
    }
    canon.push_str(">");
    let mut depth = 1usize;
    loop {
        let pos = offset(r.buffer_position());
        let ev = r.read_event().map_err(|e| DivProblem {
            pos: offset(r.error_position()),
            kind: DivKind::Syntax(e.to_string()),
        })?;
        let problem = |kind| Err(DivProblem { pos, kind });
        match ev {
            Event::Start(e) => {
                div_tag(r, &e, false, pos, canon, &mut simple)?;
                canon.push_str(">");
                depth += 1;
            }
            Event::Empty(e) => {
                div_tag(r, &e, false, pos, canon, &mut simple)?;
                canon.push_str("/>");
            }
            Event::End(e) => {
                canon.push_str("</");
                canon.push_str(e.local_name().into_inner());
                canon.push_str(">");
                depth -= 1;
                if depth == 0 {
                    return Ok(simple);
                }
            }
            // Text events hold no markup and no references (those are GeneralRef events).
            Event::Text(t) => canon.push_str(&t),
            Event::GeneralRef(g) => {
                let name: &str = &g;
                let ok = if g.is_char_ref() {
                    matches!(g.resolve_char_ref(), Ok(Some(c)) if is_xml_char(c))
                } else {
                    matches!(name, "lt" | "gt" | "amp" | "apos" | "quot")
                };
                if !ok {
                    return problem(if g.is_char_ref() {
                        DivKind::Syntax(format!("invalid character reference `&{name};`"))
                    } else {
                        DivKind::Forbidden(format!("the entity reference `&{name};`"))
                    });
                }
                canon.push_str("&");
                canon.push_str(name);
                canon.push_str(";");
            }
            Event::CData(c) => {
                canon.push_str("<![CDATA[");
                canon.push_str(&c);
                canon.push_str("]]>");
            }
            Event::Comment(_) => {}
            Event::PI(_) => {
                return problem(DivKind::Other(
                    "processing instructions are not allowed in the narrative".into(),
                ));
            }
            Event::DocType(_) => return problem(DivKind::Forbidden("a DOCTYPE (DTD)".into())),
            Event::Decl(_) => {
                return problem(DivKind::Syntax("misplaced XML declaration".into()));
            }
            Event::Eof => {
                return problem(DivKind::Syntax(
                    "unexpected end inside the narrative".into(),
                ));
            }
        }
    }
}

/// Checks one start tag inside the narrative and writes it (without its closing `>`).
fn div_tag(
    r: &XmlReader,
    e: &BytesStart,
    root: bool,
    pos: usize,
    canon: &mut Canon,
    simple: &mut bool,
) -> Result<(), DivProblem> {
    let problem = |kind| DivProblem { pos, kind };
    let (ns, local) = r.resolver().resolve_element(e.name());
    let local = local.into_inner();
    if !matches!(&ns, ResolveResult::Bound(n) if n.0 == XHTML_NS) {
        return Err(problem(DivKind::Namespace {
            name: e.name().into_inner().to_owned(),
            namespace: describe_ns(&ns),
        }));
    }
    if root && local != "div" {
        return Err(problem(DivKind::Other(
            "the narrative must be a `div` element".into(),
        )));
    }
    if e.name().prefix().is_some() {
        *simple = false;
    }
    canon.push_str("<");
    canon.push_str(local);
    if root {
        canon.push_str(" xmlns=\"");
        canon.push_str(XHTML_NS);
        canon.push_str("\"");
    }
    let mut own_default = false;
    for a in e.attributes() {
        let a = a.map_err(|err| problem(DivKind::Syntax(err.to_string())))?;
        if let Some(decl) = a.key.as_namespace_binding() {
            match decl {
                PrefixDeclaration::Default => own_default |= root && a.value == XHTML_NS,
                PrefixDeclaration::Named(_) => *simple = false,
            }
            continue;
        }
        let value = attribute_value(&a).map_err(|k| problem(k.into_div()))?;
        canon.push_str(" ");
        match a.key.prefix() {
            None => {}
            Some(p) if p.into_inner() == "xml" => canon.push_str("xml:"),
            Some(_) => {
                return Err(problem(DivKind::Other(format!(
                    "attribute `{}` is not allowed in the narrative",
                    a.key.into_inner()
                ))));
            }
        }
        canon.push_str(a.key.local_name().into_inner());
        canon.push_str("=\"");
        canon.attr_value(&value).map_err(|c| {
            problem(DivKind::Syntax(format!(
                "character U+{:04X} cannot appear in XML",
                c as u32
            )))
        })?;
        canon.push_str("\"");
    }
    if root && !own_default {
        *simple = false;
    }
    Ok(())
}

/// Why an attribute value could not be read.
enum AttrProblem {
    Entity(String),
    Syntax(String),
}

impl AttrProblem {
    fn into_div(self) -> DivKind {
        match self {
            AttrProblem::Entity(w) => DivKind::Forbidden(w),
            AttrProblem::Syntax(m) => DivKind::Syntax(m),
        }
    }
}

/// The attribute's value after XML normalization: the predefined entities and character
/// references replaced, any other entity refused.
fn attribute_value<'a>(a: &Attribute<'a>) -> Result<Cow<'a, str>, AttrProblem> {
    use quick_xml::escape::EscapeError;
    match a.normalized_value(XmlVersion::Implicit1_0) {
        Ok(v) => Ok(v),
        Err(quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(_, name))) => Err(
            AttrProblem::Entity(format!("the entity reference `&{name};`")),
        ),
        Err(e) => Err(AttrProblem::Syntax(e.to_string())),
    }
}

/// Checks that a JSON narrative is one XHTML `div`, valid on its own (its namespace
/// declarations included), so that it can be written verbatim into a FHIR document.
fn check_div(div: &str) -> Result<(), String> {
    let mut r = XmlReader::from_str(div);
    let (start, empty) = match r.read_event() {
        Ok(Event::Start(e)) => (e, false),
        Ok(Event::Empty(e)) => (e, true),
        Ok(_) => return Err("the narrative must be one XHTML `div` element".into()),
        Err(e) => return Err(format!("the narrative is not well-formed XML: {e}")),
    };
    walk_div(&mut r, &start, empty, 0, &mut Canon(None)).map_err(|p| p.kind.message())?;
    match r.read_event() {
        Ok(Event::Eof) => Ok(()),
        Ok(_) => Err("content after the narrative `div`".into()),
        Err(e) => Err(format!("the narrative is not well-formed XML: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// quick-xml's plain `Reader` with a `NamespaceResolver` kept as its `NsReader` keeps it,
/// except that an element's attributes are parsed for namespace declarations only when its
/// tag contains `xmlns`: `NsReader` parses every element's attributes for that, and this
/// module then parses them again for `value`, `id` and `url`.
struct XmlReader<'i> {
    r: Reader<&'i [u8]>,
    ns: NamespaceResolver,
    /// The scope of the last `Empty` or `End` element ends before the next event.
    pending_pop: bool,
}

impl<'i> XmlReader<'i> {
    fn from_str(text: &'i str) -> XmlReader<'i> {
        XmlReader {
            r: Reader::from_str(text),
            ns: NamespaceResolver::default(),
            pending_pop: false,
        }
    }

    fn read_event(&mut self) -> quick_xml::Result<Event<'i>> {
        if self.pending_pop {
            self.ns.pop();
            self.pending_pop = false;
        }
        let ev = self.r.read_event()?;
        match &ev {
            Event::Start(e) => self.push(e)?,
            Event::Empty(e) => {
                self.push(e)?;
                self.pending_pop = true;
            }
            Event::End(_) => self.pending_pop = true,
            _ => {}
        }
        Ok(ev)
    }

    fn push(&mut self, e: &BytesStart) -> quick_xml::Result<()> {
        // A declaration is an attribute named `xmlns` or `xmlns:…`; names hold no references.
        // (A byte loop: `str::contains` sets up a substring searcher for every tag.)
        let raw = e.attributes_raw().as_bytes();
        if raw
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'x' && raw.get(i + 1..i + 5) == Some(b"mlns"))
        {
            return Ok(self.ns.push(e)?);
        }
        let level = self.ns.level().checked_add(1).ok_or(
            quick_xml::name::NamespaceError::TooDeeplyNested(usize::from(u16::MAX)),
        )?;
        self.ns.set_level(level);
        Ok(())
    }

    fn resolver(&self) -> &NamespaceResolver {
        &self.ns
    }

    fn buffer_position(&self) -> u64 {
        self.r.buffer_position()
    }

    fn error_position(&self) -> u64 {
        self.r.error_position()
    }
}

/// Reads a FHIR XML document into the JSON form of the resource (not validated beyond what
/// the XML form itself requires; run `validate::validate_resource` on the result).
pub fn from_xml(model: &Model, text: &str) -> Result<Value, XmlError> {
    read(model, text).map_err(|e| *e)
}

fn read(model: &Model, text: &str) -> Res<Value> {
    // A byte order mark is not part of the document.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (Some(element), Some(extension)) = (model.get("Element"), model.get("Extension")) else {
        return Err(Box::new(XmlError::Structure {
            at: Location {
                path: String::new(),
                line: 1,
                column: 1,
            },
            message: "the model has no Element or Extension type".into(),
        }));
    };
    let mut p = Parser {
        model,
        text,
        r: XmlReader::from_str(text),
        element,
        extension,
        types: TypeCache::new(),
    };
    // The prolog: the declaration, comments, processing instructions, blank text.
    let root = loop {
        let pos = p.pos();
        match p.next()? {
            Event::Start(e) => break p.resource(&e, false, pos, None, None, 0)?,
            Event::Empty(e) => break p.resource(&e, true, pos, None, None, 0)?,
            Event::Eof => return Err(p.structure(None, pos, "no root element".into())),
            Event::Decl(d) => {
                if let Some(Ok(enc)) = d.encoding()
                    && !enc.eq_ignore_ascii_case("utf-8")
                {
                    return Err(p.structure(
                        None,
                        pos,
                        format!("encoding `{enc}` is not supported: send UTF-8"),
                    ));
                }
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Text(t) if is_blank(&t) => {}
            Event::DocType(_) => return Err(p.forbidden(None, pos, "a DOCTYPE (DTD)")),
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                return Err(Box::new(XmlError::Text {
                    at: p.loc(None, pos),
                }));
            }
            Event::End(_) => return Err(p.syntax(pos, "misplaced end tag".into())),
        }
    };
    // The epilog: comments, processing instructions, blank text.
    loop {
        let pos = p.pos();
        match p.next()? {
            Event::Eof => return Ok(root),
            Event::Comment(_) | Event::PI(_) => {}
            Event::Text(t) if is_blank(&t) => {}
            Event::DocType(_) => return Err(p.forbidden(None, pos, "a DOCTYPE (DTD)")),
            _ => {
                return Err(p.structure(None, pos, "content after the root element".into()));
            }
        }
    }
}

fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// The 1-based line and column (in characters) of byte `pos` of `text`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..pos.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = before[start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

/// Reading errors are boxed: a large error type makes every `?` on the hot path copy it.
type Res<T> = Result<T, Box<XmlError>>;

/// Namespace of an element, as far as the checks need it.
enum Ns {
    Fhir,
    Xhtml,
    Other(String),
}

struct Parser<'i, 'm> {
    model: &'m Model,
    text: &'i str,
    r: XmlReader<'i>,
    element: &'m TypeDef,
    extension: &'m TypeDef,
    types: TypeCache<'m>,
}

/// The next piece of element-only content.
enum Content<'i> {
    Open(BytesStart<'i>, bool, usize),
    Close,
}

impl<'i, 'm> Parser<'i, 'm> {
    fn pos(&self) -> usize {
        offset(self.r.buffer_position())
    }

    fn loc(&self, at: Option<&At>, pos: usize) -> Location {
        let (line, column) = line_col(self.text, pos);
        Location {
            path: at.map(At::render).unwrap_or_default(),
            line,
            column,
        }
    }

    fn syntax(&self, pos: usize, message: String) -> Box<XmlError> {
        Box::new(XmlError::Syntax {
            at: self.loc(None, pos),
            message,
        })
    }

    fn forbidden(&self, at: Option<&At>, pos: usize, what: &str) -> Box<XmlError> {
        Box::new(XmlError::Forbidden {
            at: self.loc(at, pos),
            what: what.to_owned(),
        })
    }

    fn structure(&self, at: Option<&At>, pos: usize, message: String) -> Box<XmlError> {
        Box::new(XmlError::Structure {
            at: self.loc(at, pos),
            message,
        })
    }

    fn next(&mut self) -> Res<Event<'i>> {
        self.r.read_event().map_err(|e| {
            let pos = offset(self.r.error_position());
            self.syntax(pos, e.to_string())
        })
    }

    fn ns_of(&self, e: &BytesStart) -> Ns {
        match self.r.resolver().resolve_element(e.name()).0 {
            ResolveResult::Bound(n) if n.0 == FHIR_NS => Ns::Fhir,
            ResolveResult::Bound(n) if n.0 == XHTML_NS => Ns::Xhtml,
            other => Ns::Other(describe_ns(&other)),
        }
    }

    fn namespace_err(
        &self,
        e: &BytesStart,
        ns: Ns,
        at: &At,
        pos: usize,
        expected: &'static str,
    ) -> Box<XmlError> {
        Box::new(XmlError::Namespace {
            at: self.loc(Some(at), pos),
            name: e.name().into_inner().to_owned(),
            namespace: match ns {
                Ns::Fhir => FHIR_NS.to_owned(),
                Ns::Xhtml => XHTML_NS.to_owned(),
                Ns::Other(s) => s,
            },
            expected,
        })
    }

    /// The value of an attribute, with entity problems reported at `at`.
    fn attr_value<'a>(&self, a: &Attribute<'a>, at: &At, pos: usize) -> Res<Cow<'a, str>> {
        attribute_value(a).map_err(|p| match p {
            AttrProblem::Entity(w) => self.forbidden(Some(at), pos, &w),
            AttrProblem::Syntax(m) => self.syntax(pos, m),
        })
    }

    /// Reads element-only content: blank text, comments and processing instructions are
    /// skipped; anything else but elements is an error.
    fn content(&mut self, at: &At) -> Res<Content<'i>> {
        loop {
            let pos = self.pos();
            return Ok(match self.next()? {
                Event::Start(e) => Content::Open(e, false, pos),
                Event::Empty(e) => Content::Open(e, true, pos),
                Event::End(_) => Content::Close,
                Event::Comment(_) | Event::PI(_) => continue,
                Event::Text(t) if is_blank(&t) => continue,
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                    return Err(Box::new(XmlError::Text {
                        at: self.loc(Some(at), pos),
                    }));
                }
                Event::DocType(_) => return Err(self.forbidden(Some(at), pos, "a DOCTYPE (DTD)")),
                Event::Decl(_) => return Err(self.syntax(pos, "misplaced XML declaration".into())),
                Event::Eof => return Err(self.syntax(pos, "unexpected end of the document".into())),
            });
        }
    }

    /// A resource element (the root, or inside `contained`/`resource`/`outcome`).
    fn resource(
        &mut self,
        e: &BytesStart<'i>,
        empty: bool,
        pos: usize,
        at: Option<&At>,
        expected: Option<&str>,
        depth: usize,
    ) -> Res<Value> {
        let name = e.local_name().into_inner();
        let here = at.copied().unwrap_or(At::root(name));
        match self.ns_of(e) {
            Ns::Fhir => {}
            ns => return Err(self.namespace_err(e, ns, &here, pos, FHIR_NS)),
        }
        let def = self
            .model
            .get(name)
            .filter(|_| self.model.is_resource_type(name))
            .ok_or_else(|| {
                self.structure(
                    Some(&here),
                    pos,
                    format!("`{name}` is not a FHIR resource type"),
                )
            })?;
        if let Some(want) = expected
            && want != name
        {
            return Err(self.structure(
                Some(&here),
                pos,
                format!("expected a {want}, found a {name}"),
            ));
        }
        for a in e.attributes() {
            let a = a.map_err(|err| self.syntax(pos, err.to_string()))?;
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let (ns, _) = self.r.resolver().resolve_attribute(a.key);
            if !matches!(ns, ResolveResult::Bound(n) if n.0 == XSI_NS) {
                return Err(Box::new(XmlError::UnknownAttribute {
                    at: self.loc(Some(&here), pos),
                    name: a.key.into_inner().to_owned(),
                }));
            }
        }
        let mut obj = Map::new();
        obj.insert("resourceType".into(), Value::String(name.to_owned()));
        if !empty {
            self.children(def, &mut obj, &here, true, depth + 1)?;
        }
        Ok(Value::Object(obj))
    }

    /// The child elements of an object of type `def`, up to its end tag, into `obj`.
    fn children(
        &mut self,
        def: &'m TypeDef,
        obj: &mut Map<String, Value>,
        at: &At,
        is_resource: bool,
        depth: usize,
    ) -> Res<()> {
        if depth > MAX_XML_DEPTH {
            let pos = self.pos();
            return Err(self.structure(Some(at), pos, "nested too deeply".into()));
        }
        let is_extension = std::ptr::eq(def, self.extension);
        let mut last: Option<(usize, &'m ElementDef)> = None;
        let mut run: Option<Run> = None;
        loop {
            let (e, empty, pos) = match self.content(at)? {
                Content::Open(e, empty, pos) => (e, empty, pos),
                Content::Close => {
                    flush(obj, &mut run);
                    return Ok(());
                }
            };
            let key = e.local_name().into_inner();
            let ns = self.ns_of(&e);
            // Element.id and Extension.url are attributes in XML; a resource's id is not.
            let attribute_only = !is_resource && (key == "id" || is_extension && key == "url");
            let from = last.map_or(0, |(lp, _)| lp);
            let found = if attribute_only {
                None
            } else {
                scan(def, from..def.elements.len(), key)
            };
            let Some((p, el, ty)) = found else {
                let earlier = if attribute_only {
                    None
                } else {
                    def.element(key)
                };
                if let (Some((el, _)), Some((_, lel)), Ns::Fhir) = (earlier, last, &ns) {
                    // Known, but the specification puts it before the last one read.
                    let index = match obj.get(key) {
                        Some(Value::Array(a)) => Some(a.len()),
                        _ => el.many.then_some(0),
                    };
                    return Err(Box::new(XmlError::Order {
                        at: self.loc(Some(&at.child(key, index)), pos),
                        name: display_name(el),
                        before: display_name(lel),
                    }));
                }
                let here = at.child(key, None);
                if !matches!(ns, Ns::Fhir) {
                    return Err(self.namespace_err(&e, ns, &here, pos, FHIR_NS));
                }
                return Err(Box::new(XmlError::UnknownElement {
                    at: self.loc(Some(&here), pos),
                    name: key.to_owned(),
                    type_name: def.name.clone(),
                }));
            };
            // Repeats are contiguous (anything else is out of order).
            let same = last.is_some_and(|(lp, _)| lp == p);
            if !same {
                flush(obj, &mut run);
            }
            let index = el.many.then(|| run.as_ref().map_or(0, |r| r.items.len()));
            let here = at.child(key, index);
            match (ns, ty == "xhtml") {
                (Ns::Fhir, false) | (Ns::Xhtml, true) => {}
                (ns, xhtml) => {
                    let want = if xhtml { XHTML_NS } else { FHIR_NS };
                    return Err(self.namespace_err(&e, ns, &here, pos, want));
                }
            }
            if same && !el.many {
                return Err(Box::new(XmlError::Repeated {
                    at: self.loc(Some(&here), pos),
                    name: display_name(el),
                }));
            }
            last = Some((p, el));

            let (value, partner) = match self.types.get(self.model, ty) {
                TypeOf::Defined(d) if d.kind == Kind::Resource => {
                    let want = (ty != "Resource").then_some(ty);
                    (
                        Some(self.wrapped(&e, empty, pos, &here, want, depth)?),
                        None,
                    )
                }
                TypeOf::Defined(d) => (Some(self.complex(d, &e, empty, pos, &here, depth)?), None),
                TypeOf::Primitive if ty == "xhtml" => {
                    (Some(Value::String(self.div(&e, empty, pos, &here)?)), None)
                }
                TypeOf::Primitive => self.primitive(ty, &e, empty, pos, &here, depth)?,
                TypeOf::Unknown => {
                    return Err(self.structure(Some(&here), pos, format!("unknown type `{ty}`")));
                }
            };
            if !el.many {
                if let Some(v) = value {
                    obj.insert(key.to_owned(), v);
                }
                if let Some(pv) = partner {
                    obj.insert(format!("_{key}"), pv);
                }
                continue;
            }
            // `name[i]` pairs with `_name[i]`, null-padded both ways.
            let r = run.get_or_insert_with(|| Run {
                key: key.to_owned(),
                items: Vec::new(),
                partners: None,
            });
            let i = r.items.len();
            r.items.push(value.unwrap_or(Value::Null));
            match (partner, &mut r.partners) {
                (Some(pv), Some(ps)) => ps.push(pv),
                (Some(pv), none) => {
                    let mut ps = vec![Value::Null; i];
                    ps.push(pv);
                    *none = Some(ps);
                }
                (None, Some(ps)) => ps.push(Value::Null),
                (None, None) => {}
            }
        }
    }

    /// A primitive element: its `value` attribute converted by type, and its `_name`
    /// partner (the `id` attribute and the extensions) if it has one.
    fn primitive(
        &mut self,
        ty: &str,
        e: &BytesStart<'i>,
        empty: bool,
        pos: usize,
        at: &At,
        depth: usize,
    ) -> Res<(Option<Value>, Option<Value>)> {
        let mut lexical = None;
        let mut id = None;
        // Without quick-xml's duplicate check (it allocates for every element): the two
        // attributes a primitive may have are checked here.
        for a in e.attributes().with_checks(false) {
            let a = a.map_err(|err| self.syntax(pos, err.to_string()))?;
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let slot = match a.key.into_inner() {
                "value" => &mut lexical,
                "id" => &mut id,
                other => {
                    return Err(Box::new(XmlError::UnknownAttribute {
                        at: self.loc(Some(at), pos),
                        name: other.to_owned(),
                    }));
                }
            };
            if slot.is_some() {
                return Err(self.duplicate(&a, pos));
            }
            *slot = Some(self.attr_value(&a, at, pos)?);
        }
        let mut partner = Map::new();
        if let Some(id) = id {
            let id = Value::String(id.into_owned());
            self.check(&at.child("id", None), pos, "string", &id)?;
            partner.insert("id".into(), id);
        }
        if !empty {
            self.children(self.element, &mut partner, at, false, depth + 1)?;
        }
        let value = match lexical {
            None => None,
            Some(l) => Some(to_json(ty, l).map_err(|message| XmlError::Value {
                at: self.loc(Some(at), pos),
                message,
            })?),
        };
        if value.is_none() && partner.is_empty() {
            return Err(self.structure(
                Some(at),
                pos,
                "a primitive element needs a value attribute or an extension".into(),
            ));
        }
        Ok((
            value,
            (!partner.is_empty()).then_some(Value::Object(partner)),
        ))
    }

    fn duplicate(&self, a: &Attribute, pos: usize) -> Box<XmlError> {
        self.syntax(pos, format!("duplicate attribute `{}`", a.key.into_inner()))
    }

    fn check(&self, at: &At, pos: usize, ty: &str, v: &Value) -> Res<()> {
        check_primitive(ty, v).map_err(|message| {
            Box::new(XmlError::Value {
                at: self.loc(Some(at), pos),
                message,
            })
        })
    }

    /// A complex or backbone element: `id` (and `url` for an Extension) from attributes,
    /// the rest from child elements.
    fn complex(
        &mut self,
        def: &'m TypeDef,
        e: &BytesStart<'i>,
        empty: bool,
        pos: usize,
        at: &At,
        depth: usize,
    ) -> Res<Value> {
        let is_extension = std::ptr::eq(def, self.extension);
        let mut id = None;
        let mut url = None;
        for a in e.attributes().with_checks(false) {
            let a = a.map_err(|err| self.syntax(pos, err.to_string()))?;
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let name = a.key.into_inner();
            let slot = match name {
                "id" => &mut id,
                "url" if is_extension => &mut url,
                _ => {
                    return Err(Box::new(XmlError::UnknownAttribute {
                        at: self.loc(Some(at), pos),
                        name: name.to_owned(),
                    }));
                }
            };
            if slot.is_some() {
                return Err(self.duplicate(&a, pos));
            }
            let v = Value::String(self.attr_value(&a, at, pos)?.into_owned());
            let ty = def.element(name).map_or("string", |(_, t)| t);
            self.check(&at.child(name, None), pos, ty, &v)?;
            *slot = Some(v);
        }
        let mut obj = Map::new();
        if let Some(v) = id {
            obj.insert("id".into(), v);
        }
        if let Some(v) = url {
            obj.insert("url".into(), v);
        }
        if !empty {
            self.children(def, &mut obj, at, false, depth + 1)?;
        }
        if obj.is_empty() {
            return Err(self.structure(Some(at), pos, "an element without content".into()));
        }
        Ok(Value::Object(obj))
    }

    /// `contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`,
    /// `Bundle.entry.response.outcome`: an element holding one resource element.
    fn wrapped(
        &mut self,
        e: &BytesStart<'i>,
        empty: bool,
        pos: usize,
        at: &At,
        expected: Option<&str>,
        depth: usize,
    ) -> Res<Value> {
        for a in e.attributes() {
            let a = a.map_err(|err| self.syntax(pos, err.to_string()))?;
            if a.key.as_namespace_binding().is_none() {
                return Err(Box::new(XmlError::UnknownAttribute {
                    at: self.loc(Some(at), pos),
                    name: a.key.into_inner().to_owned(),
                }));
            }
        }
        let mut found = None;
        if !empty {
            while let Content::Open(inner, inner_empty, inner_pos) = self.content(at)? {
                if found.is_some() {
                    return Err(self.structure(
                        Some(at),
                        inner_pos,
                        "holds more than one resource".into(),
                    ));
                }
                found = Some(self.resource(
                    &inner,
                    inner_empty,
                    inner_pos,
                    Some(at),
                    expected,
                    depth + 1,
                )?);
            }
        }
        found.ok_or_else(|| self.structure(Some(at), pos, "holds no resource".into()))
    }

    /// The narrative: its source text if that is self-contained XHTML, else re-serialized
    /// with the namespace declared on the div.
    fn div(&mut self, e: &BytesStart<'i>, empty: bool, start: usize, at: &At) -> Res<String> {
        let mut canon = Canon(Some(String::new()));
        let simple = walk_div(&mut self.r, e, empty, start, &mut canon).map_err(|p| {
            let loc = self.loc(Some(at), p.pos);
            match p.kind {
                DivKind::Syntax(message) => XmlError::Syntax { at: loc, message },
                DivKind::Forbidden(what) => XmlError::Forbidden { at: loc, what },
                DivKind::Namespace { name, namespace } => XmlError::Namespace {
                    at: loc,
                    name,
                    namespace,
                    expected: XHTML_NS,
                },
                DivKind::Other(message) => XmlError::Structure { at: loc, message },
            }
        })?;
        let end = self.pos();
        match (simple, self.text.get(start..end), canon.0) {
            (true, Some(raw), _) => Ok(raw.to_owned()),
            (_, _, Some(c)) => Ok(c),
            (_, _, None) => Err(self.structure(Some(at), start, "narrative lost".into())),
        }
    }
}

/// The repeating element being read: its items are gathered here and put into the object
/// when another element (or the end) comes, so that an item costs no map lookup.
struct Run {
    key: String,
    items: Vec<Value>,
    /// The `_name` partners, once an item has one (null-padded).
    partners: Option<Vec<Value>>,
}

fn flush(obj: &mut Map<String, Value>, run: &mut Option<Run>) {
    if let Some(r) = run.take() {
        let partner_key = r.partners.is_some().then(|| format!("_{}", r.key));
        obj.insert(r.key, Value::Array(r.items));
        if let (Some(k), Some(ps)) = (partner_key, r.partners) {
            obj.insert(k, Value::Array(ps));
        }
    }
}

/// A `value` attribute as the JSON value of its type: booleans as JSON booleans, numbers as
/// JSON numbers with the same lexical text, everything else as strings.
fn to_json(ty: &str, lexical: Cow<str>) -> Result<Value, String> {
    let v = match ty {
        "boolean" => match &*lexical {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("`{lexical}` is not a boolean (true or false)")),
        },
        _ if is_numeric(ty) => {
            if !is_fhir_number(&lexical, ty == "decimal") {
                return Err(format!("`{lexical}` is not a valid {ty}"));
            }
            serde_json::from_str::<Value>(&lexical)
                .map_err(|_| format!("`{lexical}` is not a valid {ty}"))?
        }
        _ => {
            // Checked before the one copy into the value.
            check_lexical(ty, &lexical)?;
            return Ok(Value::String(lexical.into_owned()));
        }
    };
    check_primitive(ty, &v)?;
    Ok(v)
}

/// The FHIR lexical form of integers (`-?(0|[1-9][0-9]*)`) and decimals (plus an optional
/// fraction and exponent), which is also valid JSON.
fn is_fhir_number(s: &str, decimal: bool) -> bool {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i, i - from)
    };
    let mut i = usize::from(b.first() == Some(&b'-'));
    let (end, n) = digits(i);
    if n == 0 || (n > 1 && b.get(i) == Some(&b'0')) {
        return false;
    }
    i = end;
    if decimal {
        if b.get(i) == Some(&b'.') {
            let (end, n) = digits(i + 1);
            if n == 0 {
                return false;
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let (end, n) = digits(i);
            if n == 0 {
                return false;
            }
            i = end;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m() -> &'static Model {
        Model::r4()
    }

    fn xml(v: &Value) -> String {
        to_xml(m(), v).unwrap()
    }

    fn read(text: &str) -> Value {
        from_xml(m(), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn read_err(text: &str) -> XmlError {
        match from_xml(m(), text) {
            Ok(v) => panic!("accepted: {v}"),
            Err(e) => e,
        }
    }

    /// Parses JSON text keeping decimals as written.
    fn j(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// JSON → XML → JSON gives the same value, and XML → JSON → XML the same text, compact
    /// and pretty.
    fn round_trip(v: &Value) -> String {
        for pretty in [false, true] {
            let x1 = if pretty {
                to_xml_pretty(m(), v)
            } else {
                to_xml(m(), v)
            }
            .unwrap();
            let back = from_xml(m(), &x1).unwrap_or_else(|e| panic!("{e}\n{x1}"));
            assert_eq!(&back, v, "JSON → XML → JSON differs\n{x1}");
            let x2 = if pretty {
                to_xml_pretty(m(), &back)
            } else {
                to_xml(m(), &back)
            }
            .unwrap();
            assert_eq!(x1, x2, "XML → JSON → XML differs");
            assert_namespaces(&x1);
        }
        xml(v)
    }

    /// Every element of the output is in the FHIR namespace, or the XHTML one inside a div.
    fn assert_namespaces(text: &str) {
        let mut r = quick_xml::reader::NsReader::from_str(text);
        let mut elements = 0;
        loop {
            match r.read_resolved_event().unwrap() {
                (ResolveResult::Bound(n), Event::Start(e) | Event::Empty(e)) => {
                    elements += 1;
                    let local = e.local_name().into_inner().to_owned();
                    assert!(n.0 == FHIR_NS || n.0 == XHTML_NS, "{local} in {}", n.0);
                }
                (other, Event::Start(e) | Event::Empty(e)) => {
                    panic!("{:?} not namespaced: {other:?}", e.name())
                }
                (_, Event::Eof) => break,
                _ => {}
            }
        }
        assert!(elements > 0);
    }

    #[test]
    fn map_equality_ignores_key_order() {
        // With `preserve_order`, `Map` is an IndexMap whose equality ignores order: the
        // round-trip comparisons below rely on it.
        assert_eq!(
            j(r#"{"a":1,"b":{"c":2,"d":3}}"#),
            j(r#"{"b":{"d":3,"c":2},"a":1}"#)
        );
        assert_ne!(j(r#"{"a":[1,2]}"#), j(r#"{"a":[2,1]}"#));
        assert_ne!(j(r#"{"a":4.50}"#), j(r#"{"a":4.5}"#));
    }

    #[test]
    fn writes_in_model_order_with_declaration_and_namespace() {
        let v = j(
            r#"{"gender":"female","name":[{"given":["Ann"],"family":"Lee"}],
                      "active":true,"id":"p1","resourceType":"Patient"}"#,
        );
        assert_eq!(
            xml(&v),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Patient xmlns=\"http://hl7.org/fhir\"><id value=\"p1\"/><active value=\"true\"/>\
             <name><family value=\"Lee\"/><given value=\"Ann\"/></name>\
             <gender value=\"female\"/></Patient>"
        );
        assert_eq!(
            to_xml_pretty(m(), &v).unwrap(),
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <active value="true"/>
  <name>
    <family value="Lee"/>
    <given value="Ann"/>
  </name>
  <gender value="female"/>
</Patient>
"#
        );
        round_trip(&v);
        // Read back in model order.
        let back = read(&xml(&v));
        let keys: Vec<&str> = back
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["resourceType", "id", "active", "name", "gender"]);
    }

    #[test]
    fn primitive_id_and_extensions_both_ways() {
        let v = j(r#"{"resourceType":"Patient",
            "birthDate":"1970-03-30",
            "_birthDate":{"id":"bd","extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1970-03-30T14:35:45-05:00"}]},
            "name":[{"family":"Doe","given":["A",null,"C"],
                     "_given":[null,{"extension":[{"url":"http://x/e","valueCode":"x"}]},{"id":"g3"}]}],
            "_gender":{"extension":[{"url":"http://x/absent","valueCode":"unknown"}]}}"#);
        let x = round_trip(&v);
        assert!(x.contains(
            "<birthDate id=\"bd\" value=\"1970-03-30\"><extension url=\"http://hl7.org/fhir/StructureDefinition/patient-birthTime\"><valueDateTime value=\"1970-03-30T14:35:45-05:00\"/></extension></birthDate>"
        ), "{x}");
        assert!(x.contains(
            "<given value=\"A\"/><given><extension url=\"http://x/e\"><valueCode value=\"x\"/></extension></given><given id=\"g3\" value=\"C\"/>"
        ), "{x}");
        assert!(
            x.contains("<gender><extension url=\"http://x/absent\">"),
            "{x}"
        );

        // Written by hand: the partner array is padded with nulls, before and after.
        let back = read(
            r#"<Patient xmlns="http://hl7.org/fhir"><name>
                 <given value="A"/>
                 <given id="g2"><extension url="u"><valueString value="s"/></extension></given>
                 <given value="C"/>
               </name></Patient>"#,
        );
        assert_eq!(
            back["name"][0],
            json!({"given": ["A", null, "C"],
                   "_given": [null, {"id": "g2", "extension": [{"url": "u", "valueString": "s"}]}, null]})
        );
        // No partner at all when no item has one.
        let back = read(
            r#"<Patient xmlns="http://hl7.org/fhir"><name><given value="A"/><given value="B"/></name></Patient>"#,
        );
        assert_eq!(back["name"][0], json!({"given": ["A", "B"]}));
    }

    #[test]
    fn choice_types_keep_their_json_name() {
        let v = j(
            r#"{"resourceType":"Patient","deceasedBoolean":false,"multipleBirthInteger":2,
            "extension":[{"url":"http://x/a","valueString":"s"},{"url":"http://x/b","valueQuantity":{"value":4.50,"unit":"kg"}}]}"#,
        );
        let x = round_trip(&v);
        assert!(x.contains("<deceasedBoolean value=\"false\"/>"), "{x}");
        assert!(x.contains("<multipleBirthInteger value=\"2\"/>"), "{x}");
        assert!(x.contains("<extension url=\"http://x/b\"><valueQuantity><value value=\"4.50\"/><unit value=\"kg\"/></valueQuantity></extension>"), "{x}");
        // Extensions come before the other elements of a resource.
        assert!(x.find("<extension").unwrap() < x.find("<deceasedBoolean").unwrap());
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><deceasedBoolean value="true"/><deceasedDateTime value="2020-01-01"/></Patient>"#,
        );
        assert!(matches!(err, XmlError::Repeated { .. }), "{err}");
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><deceasedString value="x"/></Patient>"#,
        );
        assert!(matches!(err, XmlError::UnknownElement { .. }), "{err}");
    }

    #[test]
    fn element_id_and_extension_url_are_attributes() {
        let v = j(
            r#"{"resourceType":"Patient","id":"p","name":[{"id":"n1","family":"X",
            "extension":[{"id":"e1","url":"http://x","valueBoolean":true}]}],
            "contact":[{"id":"c1","name":{"family":"Y"}}]}"#,
        );
        let x = round_trip(&v);
        assert!(
            x.contains("<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"p\"/>"),
            "{x}"
        );
        assert!(x.contains("<name id=\"n1\"><extension id=\"e1\" url=\"http://x\"><valueBoolean value=\"true\"/></extension><family value=\"X\"/></name>"), "{x}");
        assert!(x.contains("<contact id=\"c1\">"), "{x}");
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><name><id value="n1"/></name></Patient>"#,
        );
        assert!(
            matches!(&err, XmlError::UnknownElement { name, .. } if name == "id"),
            "{err}"
        );
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><extension><url value="u"/></extension></Patient>"#,
        );
        assert!(
            matches!(&err, XmlError::UnknownElement { name, .. } if name == "url"),
            "{err}"
        );
        let err = read_err(r#"<Patient xmlns="http://hl7.org/fhir" id="p"/>"#);
        assert!(
            matches!(&err, XmlError::UnknownAttribute { name, .. } if name == "id"),
            "{err}"
        );
    }

    #[test]
    fn contained_resources_are_wrapped() {
        let v = j(r##"{"resourceType":"Patient","id":"p","contained":[
              {"resourceType":"Organization","id":"o1","name":"Org"},
              {"resourceType":"Practitioner","id":"pr","active":true}],
            "managingOrganization":{"reference":"#o1"}}"##);
        let x = round_trip(&v);
        assert!(x.contains("<contained><Organization><id value=\"o1\"/><name value=\"Org\"/></Organization></contained><contained><Practitioner>"), "{x}");
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><contained><Organization><name value="a"/></Organization><Organization><name value="b"/></Organization></contained></Patient>"#,
        );
        assert!(err.to_string().contains("more than one resource"), "{err}");
        let err = read_err(r#"<Patient xmlns="http://hl7.org/fhir"><contained/></Patient>"#);
        assert!(err.to_string().contains("holds no resource"), "{err}");
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><contained><HumanName/></contained></Patient>"#,
        );
        assert!(
            err.to_string().contains("not a FHIR resource type"),
            "{err}"
        );
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><contained><Organization xmlns="urn:other"/></contained></Patient>"#,
        );
        assert!(matches!(err, XmlError::Namespace { .. }), "{err}");
        assert_eq!(err.expression().as_deref(), Some("Patient.contained[0]"));
    }

    #[test]
    fn bundle_entries_and_outcomes() {
        let v = j(
            r#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource":{"resourceType":"Patient","active":true},
             "response":{"status":"201 Created","outcome":{"resourceType":"OperationOutcome",
                 "issue":[{"severity":"warning","code":"not-found","expression":["Patient.x"]}]}}},
            {"response":{"status":"200 OK"}}]}"#,
        );
        let x = round_trip(&v);
        assert!(
            x.contains("<resource><Patient><active value=\"true\"/></Patient></resource>"),
            "{x}"
        );
        assert!(x.contains("<outcome><OperationOutcome><issue>"), "{x}");
        let err = read_err(
            r#"<Bundle xmlns="http://hl7.org/fhir"><type value="batch-response"/><entry><response><status value="200"/><outcome><Patient/></outcome></response></entry></Bundle>"#,
        );
        assert!(
            err.to_string().contains("expected a OperationOutcome"),
            "{err}"
        );
        let p = j(
            r#"{"resourceType":"Parameters","parameter":[{"name":"r","resource":{"resourceType":"Patient","id":"x"}}]}"#,
        );
        assert!(round_trip(&p).contains("<parameter><name value=\"r\"/><resource><Patient><id value=\"x\"/></Patient></resource></parameter>"));
    }

    #[test]
    fn narrative_is_inline_xhtml() {
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p class="a">Tom &amp; Jerry &lt;3 &#233;t&#xE9; &quot;q&quot;</p><table><tr><td>1</td></tr></table><br/><!-- c --><![CDATA[x<y]]></div>"#;
        let v = json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}, "active": true});
        let x = round_trip(&v);
        assert!(
            x.contains(&format!("<text><status value=\"generated\"/>{div}</text>")),
            "{x}"
        );
        let pretty = to_xml_pretty(m(), &v).unwrap();
        assert!(pretty.contains(&format!("    {div}\n")), "{pretty}");

        // A div whose namespace is declared elsewhere is re-serialized with its own.
        let back = read(
            r#"<Patient xmlns="http://hl7.org/fhir" xmlns:h="http://www.w3.org/1999/xhtml">
                 <text><status value="generated"/><h:div><h:p xml:lang="fr" title="a&amp;b">x &amp; y</h:p><h:br/></h:div></text>
               </Patient>"#,
        );
        assert_eq!(
            back["text"]["div"],
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p xml:lang="fr" title="a&amp;b">x &amp; y</p><br/></div>"#
        );
        round_trip(&back);

        // Not XHTML.
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div>x</div></text></Patient>"#,
        );
        assert!(
            matches!(
                err,
                XmlError::Namespace {
                    expected: XHTML_NS,
                    ..
                }
            ),
            "{err}"
        );
        let err = read_err(
            r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p xmlns="urn:x">x</p></div></text></Patient>"#,
        );
        assert!(matches!(err, XmlError::Namespace { .. }), "{err}");
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/>\n<div xmlns=\"http://www.w3.org/1999/xhtml\">&nbsp;</div></text></Patient>",
        );
        assert!(matches!(err, XmlError::Forbidden { .. }), "{err}");
        assert_eq!(err.line(), Some(2));
        // A JSON narrative that is not one XHTML div cannot be written.
        for bad in [
            "plain text",
            "<div>no namespace</div>",
            r#"<div xmlns="http://www.w3.org/1999/xhtml">unclosed"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">a</div><p/>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml">&nbsp;</div>"#,
            r#"<p xmlns="http://www.w3.org/1999/xhtml">a</p>"#,
        ] {
            let v = json!({"resourceType": "Patient", "text": {"status": "generated", "div": bad}});
            let err = to_xml(m(), &v).unwrap_err();
            assert_eq!(
                err.expression().as_deref(),
                Some("Patient.text.div"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn escaping_in_attributes() {
        let s = "a & b < c > d \"e\" 'f'\nline\ttab\r\nend é 😀";
        let v = json!({"resourceType": "Patient", "name": [{"text": s}]});
        let x = round_trip(&v);
        assert!(x.contains(
            "<text value=\"a &amp; b &lt; c &gt; d &quot;e&quot; 'f'&#10;line&#9;tab&#13;&#10;end é 😀\"/>"
        ), "{x}");
        // Character and predefined references are read; a literal newline in an attribute
        // is a space (XML attribute-value normalization).
        let back = read(
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"&#x41;&apos;&amp;\nB\"/></name></Patient>",
        );
        assert_eq!(back["name"][0]["text"], "A'& B");
        let v = json!({"resourceType": "Patient", "name": [{"text": "bell\u{7}"}]});
        let err = to_xml(m(), &v).unwrap_err();
        assert_eq!(
            err.expression().as_deref(),
            Some("Patient.name[0].text"),
            "{err}"
        );
    }

    #[test]
    fn decimals_keep_their_lexical_form() {
        let v = j(
            r#"{"resourceType":"Task","status":"requested","intent":"order",
            "input":[{"type":{"text":"a"},"valueDecimal":4.50},{"type":{"text":"b"},"valueDecimal":1.0},
                     {"type":{"text":"c"},"valueDecimal":-0.000120},{"type":{"text":"d"},"valueDecimal":1e3},
                     {"type":{"text":"e"},"valueInteger":-7},{"type":{"text":"f"},"valueUnsignedInt":0}]}"#,
        );
        let x = round_trip(&v);
        // serde_json itself writes an exponent with its sign (`1e3` is read as `1e+3`), in
        // JSON bodies as well: XML keeps whatever the Number holds.
        for lit in ["4.50", "1.0", "-0.000120", "1e+3"] {
            assert!(
                x.contains(&format!("<valueDecimal value=\"{lit}\"/>")),
                "{lit}: {x}"
            );
        }
        let back = read(&x);
        assert_eq!(
            serde_json::to_string(&back["input"][0]["valueDecimal"]).unwrap(),
            "4.50"
        );
        assert_eq!(
            serde_json::to_string(&back["input"][1]["valueDecimal"]).unwrap(),
            "1.0"
        );
        for (ty, bad) in [
            ("valueDecimal", "4.5.0"),
            ("valueDecimal", "+1"),
            ("valueDecimal", "01"),
            ("valueDecimal", ".5"),
            ("valueDecimal", "1."),
            ("valueDecimal", "NaN"),
            ("valueInteger", "1.0"),
            ("valueInteger", "3000000000"),
            ("valuePositiveInt", "0"),
            ("valueUnsignedInt", "-1"),
        ] {
            let doc = format!(
                r#"<Task xmlns="http://hl7.org/fhir"><status value="draft"/><intent value="order"/><input><type><text value="t"/></type><{ty} value="{bad}"/></input></Task>"#
            );
            let err = read_err(&doc);
            assert!(matches!(err, XmlError::Value { .. }), "{ty}={bad}: {err}");
            assert_eq!(
                err.expression().as_deref(),
                Some(format!("Task.input[0].{ty}").as_str())
            );
        }
    }

    #[test]
    fn rejects_dtd_and_entities_with_lines() {
        let err = read_err(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE Patient [<!ENTITY x \"y\">]>\n<Patient xmlns=\"http://hl7.org/fhir\"/>",
        );
        assert!(matches!(err, XmlError::Forbidden { .. }), "{err}");
        assert_eq!(err.line(), Some(2));
        let err = read_err(
            "<!DOCTYPE Patient [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n<Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"&xxe;\"/></name></Patient>",
        );
        assert!(matches!(err, XmlError::Forbidden { .. }), "{err}");
        assert_eq!(err.line(), Some(1));
        // No DTD at all: an undeclared entity is refused, not expanded.
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\">\n<name>\n<text value=\"a&xxe;\"/></name></Patient>",
        );
        assert!(matches!(err, XmlError::Forbidden { .. }), "{err}");
        assert_eq!((err.line(), err.column()), (Some(3), Some(1)));
        assert_eq!(err.expression().as_deref(), Some("Patient.name[0].text"));
        assert!(err.to_string().contains("&xxe;"), "{err}");
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\">&xxe;</Patient>");
        assert!(matches!(err, XmlError::Text { .. }), "{err}");
    }

    #[test]
    fn rejects_wrong_namespace() {
        let err = read_err("<Patient/>");
        assert!(
            matches!(&err, XmlError::Namespace { namespace, .. } if namespace == "(none)"),
            "{err}"
        );
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir/\"/>");
        assert!(matches!(err, XmlError::Namespace { .. }), "{err}");
        let err = read_err(
            "<f:Patient xmlns:f=\"http://hl7.org/fhir\">\n  <f:active value=\"true\"/>\n  <active value=\"true\"/></f:Patient>",
        );
        assert!(matches!(err, XmlError::Namespace { .. }), "{err}");
        assert_eq!(err.line(), Some(3));
        assert_eq!(err.column(), Some(3));
        assert_eq!(err.expression().as_deref(), Some("Patient.active"));
        // Prefixes are fine as long as the namespace is FHIR.
        let v = read(
            "<f:Patient xmlns:f=\"http://hl7.org/fhir\"><f:active value=\"true\"/></f:Patient>",
        );
        assert_eq!(v, json!({"resourceType": "Patient", "active": true}));
        // xsi:schemaLocation is tolerated on resources.
        read(
            r#"<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir ../patient.xsd"/>"#,
        );
    }

    #[test]
    fn rejects_unknown_elements_and_attributes() {
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\">\n  <name>\n    <nickname value=\"x\"/>\n  </name>\n</Patient>",
        );
        assert!(
            matches!(&err, XmlError::UnknownElement { name, type_name, .. } if name == "nickname" && type_name == "HumanName"),
            "{err}"
        );
        assert_eq!(
            err.expression().as_deref(),
            Some("Patient.name[0].nickname")
        );
        assert_eq!((err.line(), err.column()), (Some(3), Some(5)));
        assert_eq!(
            err.to_string(),
            "Patient.name[0].nickname (line 3, column 5): unknown element `nickname` in HumanName"
        );
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\" extra=\"1\"/></Patient>",
        );
        assert!(matches!(err, XmlError::UnknownAttribute { .. }), "{err}");
        let err = read_err("<Tsk xmlns=\"http://hl7.org/fhir\"/>");
        assert!(
            err.to_string().contains("not a FHIR resource type"),
            "{err}"
        );
        let err = read_err("<DomainResource xmlns=\"http://hl7.org/fhir\"/>");
        assert!(
            err.to_string().contains("not a FHIR resource type"),
            "{err}"
        );
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><resourceType value=\"Patient\"/></Patient>",
        );
        assert!(matches!(err, XmlError::UnknownElement { .. }), "{err}");
    }

    #[test]
    fn rejects_wrong_order_naming_both() {
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\">\n<gender value=\"male\"/>\n<active value=\"true\"/>\n</Patient>",
        );
        assert!(
            matches!(&err, XmlError::Order { name, before, .. } if name == "active" && before == "gender"),
            "{err}"
        );
        assert_eq!(err.line(), Some(3));
        assert!(
            err.to_string()
                .contains("`active` is out of order: it must come before `gender`"),
            "{err}"
        );
        // A repeating element split by another one is out of order too.
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"a\"/></name><telecom><value value=\"1\"/></telecom><name><family value=\"b\"/></name></Patient>",
        );
        assert!(matches!(err, XmlError::Order { .. }), "{err}");
        assert_eq!(err.expression().as_deref(), Some("Patient.name[1]"));
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/><active value=\"false\"/></Patient>",
        );
        assert!(matches!(err, XmlError::Repeated { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_primitive_values() {
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"yes\"/>\n</Patient>",
        );
        assert!(matches!(err, XmlError::Value { .. }), "{err}");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.expression().as_deref(), Some("Patient.active"));
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"2020-13-01\"/></Patient>",
        );
        assert!(matches!(err, XmlError::Value { .. }), "{err}");
        assert!(err.to_string().contains("not a valid date"), "{err}");
        let err =
            read_err("<Patient xmlns=\"http://hl7.org/fhir\"><active value=\" true\"/></Patient>");
        assert!(matches!(err, XmlError::Value { .. }), "{err}");
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"\"/></name></Patient>",
        );
        assert!(matches!(err, XmlError::Value { .. }), "{err}");
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><name id=\"\"><family value=\"a\"/></name></Patient>",
        );
        assert!(matches!(err, XmlError::Value { .. }), "{err}");
        assert_eq!(err.expression().as_deref(), Some("Patient.name[0].id"));
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\"><active/></Patient>");
        assert!(err.to_string().contains("needs a value attribute"), "{err}");
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\"><active></active></Patient>");
        assert!(err.to_string().contains("needs a value attribute"), "{err}");
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\"><name/></Patient>");
        assert!(err.to_string().contains("without content"), "{err}");
    }

    #[test]
    fn rejects_text_content() {
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\">true</active>\n</Patient>",
        );
        assert!(matches!(err, XmlError::Text { .. }), "{err}");
        assert_eq!(err.line(), Some(2));
        assert_eq!(err.expression().as_deref(), Some("Patient.active"));
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\"><name>Doe</name></Patient>");
        assert!(matches!(err, XmlError::Text { .. }), "{err}");
        let err =
            read_err("<Patient xmlns=\"http://hl7.org/fhir\"><name><![CDATA[x]]></name></Patient>");
        assert!(matches!(err, XmlError::Text { .. }), "{err}");
        let err = read_err("junk<Patient xmlns=\"http://hl7.org/fhir\"/>");
        assert!(matches!(err, XmlError::Text { .. }), "{err}");
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\"/>junk");
        assert!(err.to_string().contains("after the root"), "{err}");
    }

    #[test]
    fn comments_whitespace_and_prolog_are_ignored() {
        let v = read(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!-- hi -->\n<Patient xmlns=\"http://hl7.org/fhir\">\n  <!-- c -->\n  <active value=\"true\"/>\n  <?pi x?>\n</Patient>\n<!-- bye -->\n",
        );
        assert_eq!(v, json!({"resourceType": "Patient", "active": true}));
        let err = read_err(
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Patient xmlns=\"http://hl7.org/fhir\"/>",
        );
        assert!(err.to_string().contains("ISO-8859-1"), "{err}");
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\">\n<active value=\"true\">\n</Patient>",
        );
        assert!(matches!(err, XmlError::Syntax { .. }), "{err}");
        assert_eq!(err.line(), Some(3));
        assert_eq!(err.expression(), None);
        let err = read_err("<Patient xmlns=\"http://hl7.org/fhir\">\n<active value=\"true\"/>");
        assert!(matches!(err, XmlError::Syntax { .. }), "{err}");
        let err = read_err("");
        assert!(err.to_string().contains("no root element"), "{err}");
        let err = read_err(
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\" value=\"false\"/></Patient>",
        );
        assert!(matches!(err, XmlError::Syntax { .. }), "{err}");
    }

    #[test]
    fn refuses_deep_nesting() {
        let mut doc =
            String::from("<Questionnaire xmlns=\"http://hl7.org/fhir\"><status value=\"draft\"/>");
        for _ in 0..60 {
            doc.push_str("<item><linkId value=\"a\"/><type value=\"group\"/>");
        }
        for _ in 0..60 {
            doc.push_str("</item>");
        }
        doc.push_str("</Questionnaire>");
        let err = read_err(&doc);
        assert!(err.to_string().contains("nested too deeply"), "{err}");
    }

    #[test]
    fn rejects_json_that_has_no_xml_form() {
        for (v, path) in [
            (json!({"resourceType": "Patient", "foo": 1}), "Patient.foo"),
            (
                json!({"resourceType": "Patient", "name": {"family": "x"}}),
                "Patient.name",
            ),
            (
                json!({"resourceType": "Patient", "active": "true"}),
                "Patient.active",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": []}]}),
                "Patient.name[0].given",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"_family": {"extension": []}, "family": null}]}),
                "Patient.name[0].family.extension",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"family": null}]}),
                "Patient.name[0].family",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"family": "a", "_family": {"id": "f", "value": 1}}]}),
                "Patient.name[0].family.value",
            ),
            (
                json!({"resourceType": "Patient", "name": [{"family": "a"}], "_name": [{"id": "x"}]}),
                "Patient._name",
            ),
            (
                json!({"resourceType": "Patient", "extension": [{"url": "u", "_url": {"id": "x"}, "valueString": "s"}]}),
                "Patient.extension[0]._url",
            ),
            (
                json!({"resourceType": "Patient", "_name": [{"id": "x"}]}),
                "Patient._name",
            ),
        ] {
            let err = to_xml(m(), &v).unwrap_err();
            assert_eq!(err.expression().as_deref(), Some(path), "{v}: {err}");
        }
        let err = to_xml(m(), &json!({"resourceType": "Nope"})).unwrap_err();
        assert_eq!(err.expression(), None);
        assert!(
            err.to_string().contains("unknown resource type `Nope`"),
            "{err}"
        );
    }

    fn examples() -> Vec<(String, Value)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/fhir-r4-examples");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.display().to_string(),
                serde_json::from_str(&text).unwrap(),
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn official_examples_round_trip() {
        let all = examples();
        assert_eq!(all.len(), 63);
        for (name, v) in &all {
            for pretty in [false, true] {
                let write = if pretty { to_xml_pretty } else { to_xml };
                let x1 = write(m(), v).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_namespaces(&x1);
                let back = from_xml(m(), &x1).unwrap_or_else(|e| panic!("{name}: {e}\n{x1}"));
                assert!(
                    &back == v,
                    "{name}: JSON → XML → JSON differs\n{x1}\n{back}"
                );
                let x2 = write(m(), &back).unwrap();
                assert_eq!(x1, x2, "{name}: XML → JSON → XML differs");
                // What comes back is valid FHIR JSON, like the original.
                let issues = super::super::validate::validate_resource(m(), &back);
                assert!(issues.is_empty(), "{name}: {issues:?}");
            }
        }
    }

    /// Mangles the examples' XML (byte changes, cuts, splices, inserted markup): the reader
    /// refuses or accepts, never panics; what it accepts writes back (when it has an XML
    /// form) and reads again to the same value. More rounds:
    /// `XML_FUZZ_ROUNDS=200000 cargo test --release --lib xml::tests::mangled -- --nocapture`
    #[test]
    fn mangled_documents_never_panic_and_round_trip() {
        let rounds: u64 = std::env::var("XML_FUZZ_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3000);
        let mut docs: Vec<String> = examples().iter().map(|(_, v)| xml(v)).collect();
        docs.push(xml(&json!({"resourceType": "Patient", "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p a=\"1\">x &amp; <b>y</b></p></div>"},
            "name": [{"given": ["a", null], "_given": [null, {"id": "g"}]}]})));
        const PIECES: [&str; 14] = [
            "<",
            ">",
            "/>",
            "&",
            "&amp;",
            "&#10;",
            "\"",
            "<!--x-->",
            "<![CDATA[z]]>",
            "<!DOCTYPE x>",
            "xmlns=\"urn:x\" ",
            " value=\"1\"",
            "<extension url=\"u\"/>",
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">t</div>",
        ];
        let mut seed = std::env::var("XML_FUZZ_SEED")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0x9E37_79B9_7F4A_7C15u64)
            | 1;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let (mut accepted, mut total) = (0, 0);
        for _ in 0..rounds {
            let mut bytes = docs[rand(docs.len())].clone().into_bytes();
            for _ in 0..1 + rand(3) {
                let i = rand(bytes.len());
                match rand(4) {
                    0 => {
                        let set = b"<>/&\"=a :;#x\n";
                        bytes[i] = set[rand(set.len())];
                    }
                    1 => bytes.truncate(i.max(1)),
                    2 => {
                        let j = rand(bytes.len());
                        let (a, b) = (i.min(j), i.max(j));
                        let piece = bytes[a..b.min(a + 80)].to_vec();
                        let k = rand(bytes.len());
                        bytes.splice(k..k, piece);
                    }
                    _ => {
                        let piece = PIECES[rand(PIECES.len())].as_bytes().to_vec();
                        bytes.splice(i..i, piece);
                    }
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            total += 1;
            let Ok(v) = from_xml(m(), &text) else {
                continue;
            };
            accepted += 1;
            if let Ok(again) = to_xml(m(), &v) {
                let back = from_xml(m(), &again)
                    .unwrap_or_else(|e| panic!("{e}\nfrom\n{text}\nwrote\n{again}"));
                assert_eq!(back, v, "from\n{text}\nwrote\n{again}");
            }
        }
        println!("mangled documents: {total} read, {accepted} accepted");
        assert!(total > 0);
    }

    /// `cargo test --release --lib xml_read_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn xml_read_cost() {
        let all = examples();
        let jsons: Vec<String> = all.iter().map(|(_, v)| v.to_string()).collect();
        let xmls: Vec<String> = all.iter().map(|(_, v)| xml(v)).collect();
        let rounds = 200;
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for s in &jsons {
                std::hint::black_box(serde_json::from_str::<Value>(s).unwrap());
            }
        }
        let json_read = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for s in &xmls {
                std::hint::black_box(from_xml(m(), s).unwrap());
            }
        }
        let xml_read = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for (_, v) in &all {
                std::hint::black_box(serde_json::to_string(v).unwrap());
            }
        }
        let json_write = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for (_, v) in &all {
                std::hint::black_box(xml(v));
            }
        }
        let xml_write = t.elapsed();
        println!(
            "read: json {json_read:?}, xml {xml_read:?} ({:.2}x); write: json {json_write:?}, xml {xml_write:?} ({:.2}x)",
            xml_read.as_secs_f64() / json_read.as_secs_f64(),
            xml_write.as_secs_f64() / json_write.as_secs_f64()
        );
    }
}
