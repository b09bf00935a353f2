//! Writing: the JSON value walked once straight into a `String`, each object's elements in
//! specification order.

use serde_json::{Map, Value};

use super::div::check_div;
use super::{At, DECLARATION, FHIR_NS, MAX_XML_DEPTH, XmlError};
use crate::fhir::model::{Kind, Model, Primitive, TypeDef, TypeRef};

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
    out: String,
    pretty: bool,
    depth: usize,
    /// Emptied `entries` vectors of finished objects, reused: one allocation per nesting
    /// level instead of one per object.
    pool: Vec<Vec<Entry<'v>>>,
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

/// One JSON key of an object (or a `_name` partner), placed in order.
#[derive(Clone, Copy)]
struct Entry<'v> {
    pos: usize,
    key: &'v str,
    many: bool,
    ty: TypeRef,
    value: Option<&'v Value>,
    partner: Option<&'v Value>,
}

/// Joins each `name` entry with its `_name` partner: once sorted (stably) by position, they
/// are next to each other, and no other two entries have one key.
fn pair_partners(entries: &mut Vec<Entry>) {
    let mut kept = 0usize;
    for i in 0..entries.len() {
        let e = entries[i];
        match kept.checked_sub(1).and_then(|k| entries.get_mut(k)) {
            Some(last) if last.pos == e.pos && last.key == e.key => {
                last.value = last.value.or(e.value);
                last.partner = last.partner.or(e.partner);
            }
            _ => {
                entries[kept] = e;
                kept += 1;
            }
        }
    }
    entries.truncate(kept);
}

#[cold]
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
            let Some(child) = def.child(bare) else {
                return Err(write_err(
                    &at.child(key, None),
                    format!("unknown element `{key}` in {}", def.name),
                ));
            };
            let is_primitive = matches!(child.ty_ref, TypeRef::Primitive(_));
            if partner_only {
                if !is_resource && (bare == "id" || is_extension && bare == "url") {
                    return Err(write_err(
                        &at.child(key, None),
                        "an XML attribute cannot carry an id or extensions",
                    ));
                }
                if !is_primitive {
                    return Err(write_err(
                        &at.child(key, None),
                        format!("`{key}` is only allowed on primitive elements"),
                    ));
                }
            }
            let (value, partner) = if partner_only {
                (None, Some(value))
            } else {
                (Some(value), None)
            };
            entries.push(Entry {
                pos: child.pos,
                key: bare,
                many: child.many,
                ty: child.ty_ref,
                value,
                partner,
            });
        }
        // JSON usually comes in specification order already.
        if !entries.is_sorted_by_key(|e| e.pos) {
            entries.sort_by_key(|e| e.pos);
        }
        if has_partners {
            pair_partners(&mut entries);
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

    fn entry(&mut self, e: &Entry<'v>, at: &At) -> Result<(), XmlError> {
        if !e.many {
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
        ty: TypeRef,
        value: Option<&'v Value>,
        partner: Option<&'v Value>,
        at: &At,
    ) -> Result<(), XmlError> {
        let value = value.filter(|v| !v.is_null());
        let partner = partner.filter(|v| !v.is_null());
        let def = match ty {
            TypeRef::Defined(id) => self.model.type_at(id),
            TypeRef::Unknown => return Err(write_err(at, "unknown type")),
            TypeRef::Primitive(p) => return self.primitive(name, p, value, partner, at),
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
            .ok_or_else(|| write_err(at, format!("expected a JSON object ({})", def.name)))?;
        self.object(name, def, obj, at, Mode::Complex)
    }

    /// A primitive element (or the narrative div) with its `_name` partner.
    fn primitive(
        &mut self,
        name: &str,
        ty: Primitive,
        value: Option<&'v Value>,
        partner: Option<&'v Value>,
        at: &At,
    ) -> Result<(), XmlError> {
        {
            if ty == Primitive::Xhtml {
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
                Some(v) => Some(lexical(ty, v).ok_or_else(|| {
                    write_err(at, format!("not a valid JSON value for {}", ty.name()))
                })?),
            };
            let partner_obj = match (partner, lexical) {
                (None, None) => {
                    return Err(write_err(at, "null without an id or extensions"));
                }
                // Most elements: `<name value="…"/>`, without the walk of an object.
                (None, Some(v)) => {
                    self.indent();
                    self.out.push('<');
                    self.out.push_str(name);
                    self.attr("value", v, at)?;
                    self.out.push_str("/>");
                    self.newline();
                    return Ok(());
                }
                (Some(Value::Object(o)), _) => o,
                (Some(_), _) => {
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
fn lexical(ty: Primitive, v: &Value) -> Option<&str> {
    match v {
        Value::Bool(b) if ty == Primitive::Boolean => Some(if *b { "true" } else { "false" }),
        Value::Number(n) if ty.is_numeric() => Some(n.as_str()),
        Value::String(s) if ty != Primitive::Boolean && !ty.is_numeric() => Some(s),
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
pub(super) fn escape_attr(out: &mut String, s: &str) -> Result<(), char> {
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
