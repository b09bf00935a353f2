//! Reading: one pass over the document that builds the JSON value a client would have sent.

use std::borrow::Cow;

use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceResolver, ResolveResult};
use quick_xml::reader::Reader;
use serde_json::{Map, Value};

use super::div::{AttrProblem, Canon, DivKind, attribute_value, describe_ns, offset, walk_div};
use super::{
    At, FHIR_NS, Location, MAX_XML_DEPTH, TypeCache, TypeOf, XHTML_NS, XSI_NS, XmlError,
    display_name, is_numeric, scan,
};
use crate::fhir::model::{ElementDef, Kind, Model, TypeDef};
use crate::fhir::validate::{check_lexical, check_primitive};

/// quick-xml's plain `Reader` with a `NamespaceResolver` kept as its `NsReader` keeps it,
/// except that an element's attributes are parsed for namespace declarations only when its
/// tag contains `xmlns`: `NsReader` parses every element's attributes for that, and this
/// module then parses them again for `value`, `id` and `url`.
pub(super) struct XmlReader<'i> {
    r: Reader<&'i [u8]>,
    ns: NamespaceResolver,
    /// The scope of the last `Empty` or `End` element ends before the next event.
    pending_pop: bool,
}

impl<'i> XmlReader<'i> {
    pub(super) fn from_str(text: &'i str) -> XmlReader<'i> {
        XmlReader {
            r: Reader::from_str(text),
            ns: NamespaceResolver::default(),
            pending_pop: false,
        }
    }

    pub(super) fn read_event(&mut self) -> quick_xml::Result<Event<'i>> {
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

    pub(super) fn resolver(&self) -> &NamespaceResolver {
        &self.ns
    }

    pub(super) fn buffer_position(&self) -> u64 {
        self.r.buffer_position()
    }

    pub(super) fn error_position(&self) -> u64 {
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
