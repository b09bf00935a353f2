//! Reading: one pass over the tokens of `lex` that builds the JSON value a client would have
//! sent: arrays where the element repeats, numbers keeping their lexical text, `id` and
//! extensions of primitives as `_name` partners.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::div::{Canon, DivKind, walk_div};
use super::lex::{Attr, AttrProblem, Decl, LexError, LexKind, Lexer, Ns, Start, Text, Token};
use super::{At, FHIR_NS, Location, MAX_XML_DEPTH, XHTML_NS, XmlError, display_name};
use crate::fhir::model::{ElementDef, Kind, Model, Primitive, TypeDef, TypeRef};
use crate::fhir::validate::{check_primitive, check_text};

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
        lx: Lexer::new(text),
        element,
        extension,
    };
    // The prolog: the declaration, comments, processing instructions, blank text.
    let root = loop {
        match p.next()? {
            Token::Start(s) => break p.resource(&s, None, None, 0)?,
            Token::Eof { pos } => return Err(p.structure(None, pos, "no root element".into())),
            Token::Decl { encoding, pos } => {
                if let Some(enc) = encoding
                    && !enc.eq_ignore_ascii_case("utf-8")
                {
                    return Err(p.structure(
                        None,
                        pos,
                        format!("encoding `{enc}` is not supported: send UTF-8"),
                    ));
                }
            }
            Token::Comment | Token::Pi => {}
            Token::Text(t) if t.blank => {}
            Token::DocType { pos } => return Err(p.forbidden(None, pos, "a DOCTYPE (DTD)")),
            Token::Text(Text { pos, .. }) | Token::CData { pos, .. } => {
                return Err(Box::new(XmlError::Text {
                    at: p.loc(None, pos),
                }));
            }
            // the lexer matches end tags with start tags
            Token::End { .. } => {
                let pos = p.lx.pos();
                return Err(p.syntax(pos, "misplaced end tag".into()));
            }
        }
    };
    // The epilog: comments, processing instructions, blank text.
    loop {
        let pos = p.lx.pos();
        match p.next()? {
            Token::Eof { .. } => return Ok(root),
            Token::Comment | Token::Pi => {}
            Token::Text(t) if t.blank => {}
            Token::DocType { pos } => return Err(p.forbidden(None, pos, "a DOCTYPE (DTD)")),
            _ => {
                return Err(p.structure(None, pos, "content after the root element".into()));
            }
        }
    }
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

struct Parser<'i, 'm> {
    model: &'m Model,
    text: &'i str,
    lx: Lexer<'i>,
    element: &'m TypeDef,
    extension: &'m TypeDef,
}

/// The next piece of element-only content.
enum Content<'i> {
    Open(Start<'i>),
    Close,
}

impl<'i, 'm> Parser<'i, 'm> {
    // Errors are built out of the way of the hot code (#[cold]).
    #[cold]
    fn loc(&self, at: Option<&At>, pos: usize) -> Location {
        let (line, column) = line_col(self.text, pos);
        Location {
            path: at.map(At::render).unwrap_or_default(),
            line,
            column,
        }
    }

    #[cold]
    fn syntax(&self, pos: usize, message: String) -> Box<XmlError> {
        Box::new(XmlError::Syntax {
            at: self.loc(None, pos),
            message,
        })
    }

    #[cold]
    fn forbidden(&self, at: Option<&At>, pos: usize, what: &str) -> Box<XmlError> {
        Box::new(XmlError::Forbidden {
            at: self.loc(at, pos),
            what: what.to_owned(),
        })
    }

    #[cold]
    fn structure(&self, at: Option<&At>, pos: usize, message: String) -> Box<XmlError> {
        Box::new(XmlError::Structure {
            at: self.loc(at, pos),
            message,
        })
    }

    #[cold]
    fn lex_error(&self, e: LexError) -> Box<XmlError> {
        match e.kind {
            LexKind::Syntax(message) => self.syntax(e.pos, message),
            LexKind::Forbidden(what) => self.forbidden(None, e.pos, &what),
        }
    }

    fn next(&mut self) -> Res<Token<'i>> {
        self.lx.next().map_err(|e| self.lex_error(e))
    }

    /// The attributes of the start tag just read; an entity that is not predefined is
    /// reported at the element.
    fn attrs(&self, at: &At, pos: usize) -> Res<&[Attr<'i>]> {
        self.lx
            .attrs()
            .map_err(|AttrProblem(what)| self.forbidden(Some(at), pos, &what))
    }

    #[cold]
    fn namespace_err(&self, e: &Start, at: &At, expected: &'static str) -> Box<XmlError> {
        Box::new(XmlError::Namespace {
            at: self.loc(Some(at), e.pos),
            name: e.name.to_owned(),
            namespace: match e.ns {
                Ns::Fhir => FHIR_NS.to_owned(),
                Ns::Xhtml => XHTML_NS.to_owned(),
                _ => self.lx.describe(e.prefix),
            },
            expected,
        })
    }

    #[cold]
    fn unknown_attribute(&self, at: &At, pos: usize, a: &Attr) -> Box<XmlError> {
        Box::new(XmlError::UnknownAttribute {
            at: self.loc(Some(at), pos),
            name: a.name.to_owned(),
        })
    }

    /// Reads element-only content: blank text, comments and processing instructions are
    /// skipped; anything else but elements is an error.
    fn content(&mut self, at: &At) -> Res<Content<'i>> {
        loop {
            return Ok(match self.next()? {
                Token::Start(s) => Content::Open(s),
                Token::End { .. } => Content::Close,
                Token::Comment | Token::Pi => continue,
                Token::Text(t) if t.blank => continue,
                Token::Text(Text { pos, .. }) | Token::CData { pos, .. } => {
                    return Err(Box::new(XmlError::Text {
                        at: self.loc(Some(at), pos),
                    }));
                }
                Token::DocType { pos } => {
                    return Err(self.forbidden(Some(at), pos, "a DOCTYPE (DTD)"));
                }
                Token::Decl { pos, .. } => {
                    return Err(self.syntax(pos, "misplaced XML declaration".into()));
                }
                Token::Eof { pos } => {
                    return Err(self.syntax(pos, "unexpected end of the document".into()));
                }
            });
        }
    }

    /// A resource element (the root, or inside `contained`/`resource`/`outcome`).
    fn resource(
        &mut self,
        e: &Start<'i>,
        at: Option<&At>,
        expected: Option<&str>,
        depth: usize,
    ) -> Res<Value> {
        let name = e.local;
        let here = at.copied().unwrap_or(At::root(name));
        if e.ns != Ns::Fhir {
            return Err(self.namespace_err(e, &here, FHIR_NS));
        }
        let def = self
            .model
            .get(name)
            .filter(|_| self.model.is_resource_type(name))
            .ok_or_else(|| {
                self.structure(
                    Some(&here),
                    e.pos,
                    format!("`{name}` is not a FHIR resource type"),
                )
            })?;
        if let Some(want) = expected
            && want != name
        {
            return Err(self.structure(
                Some(&here),
                e.pos,
                format!("expected a {want}, found a {name}"),
            ));
        }
        // `xsi:schemaLocation` and friends are tolerated on resource elements.
        for a in self.attrs(&here, e.pos)? {
            // (an attribute without a prefix is in no namespace)
            if a.decl == Decl::No && (a.prefix.is_none() || self.lx.resolve(a.prefix) != Ns::Xsi) {
                return Err(self.unknown_attribute(&here, e.pos, a));
            }
        }
        let mut obj = Map::new();
        obj.insert("resourceType".into(), Value::String(name.to_owned()));
        if !e.empty {
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
            let pos = self.lx.pos();
            return Err(self.structure(Some(at), pos, "nested too deeply".into()));
        }
        let is_extension = std::ptr::eq(def, self.extension);
        let mut last: Option<(usize, &'m ElementDef)> = None;
        let mut run: Option<Run> = None;
        loop {
            let e = match self.content(at)? {
                Content::Open(e) => e,
                Content::Close => {
                    flush(obj, &mut run);
                    return Ok(());
                }
            };
            let key = e.local;
            // Element.id and Extension.url are attributes in XML; a resource's id is not.
            let attribute_only = !is_resource && (key == "id" || is_extension && key == "url");
            let found = if attribute_only { None } else { def.child(key) };
            let Some(c) = found else {
                let here = at.child(key, None);
                if e.ns != Ns::Fhir {
                    return Err(self.namespace_err(&e, &here, FHIR_NS));
                }
                return Err(Box::new(XmlError::UnknownElement {
                    at: self.loc(Some(&here), e.pos),
                    name: key.to_owned(),
                    type_name: def.name.clone(),
                }));
            };
            // Known, but the specification puts it before the last one read.
            let out_of_order = last.filter(|&(lp, _)| c.pos < lp);
            let order_err = |lel: &ElementDef| {
                let index = match obj.get(key) {
                    Some(Value::Array(a)) => Some(a.len()),
                    _ => c.many.then_some(0),
                };
                Box::new(XmlError::Order {
                    at: self.loc(Some(&at.child(key, index)), e.pos),
                    name: display_name(c.el),
                    before: display_name(lel),
                })
            };
            if let Some((_, lel)) = out_of_order
                && e.ns == Ns::Fhir
            {
                return Err(order_err(lel));
            }
            // Repeats are contiguous (anything else is out of order).
            let same = last.is_some_and(|(lp, _)| lp == c.pos);
            let index = c.many.then(|| {
                if same {
                    run.as_ref().map_or(0, |r| r.items.len())
                } else {
                    0
                }
            });
            let here = at.child(key, index);
            let xhtml = c.ty_ref == TypeRef::Primitive(Primitive::Xhtml);
            match (e.ns, xhtml) {
                (Ns::Fhir, false) | (Ns::Xhtml, true) => {}
                (_, xhtml) => {
                    let want = if xhtml { XHTML_NS } else { FHIR_NS };
                    return Err(self.namespace_err(&e, &here, want));
                }
            }
            if let Some((_, lel)) = out_of_order {
                // the narrative, in its own namespace
                return Err(order_err(lel));
            }
            if same && !c.many {
                return Err(Box::new(XmlError::Repeated {
                    at: self.loc(Some(&here), e.pos),
                    name: display_name(c.el),
                }));
            }
            if !same {
                flush(obj, &mut run);
            }
            last = Some((c.pos, c.el));

            let (value, partner) = match c.ty_ref {
                TypeRef::Defined(id) => {
                    let d = self.model.type_at(id);
                    if d.kind == Kind::Resource {
                        let want = Some(c.ty()).filter(|&t| t != "Resource");
                        (Some(self.wrapped(&e, &here, want, depth)?), None)
                    } else {
                        (Some(self.complex(d, &e, &here, depth)?), None)
                    }
                }
                TypeRef::Primitive(Primitive::Xhtml) => {
                    (Some(Value::String(self.div(&e, &here)?)), None)
                }
                TypeRef::Primitive(p) => self.primitive(p, &e, &here, depth)?,
                TypeRef::Unknown => {
                    return Err(self.structure(
                        Some(&here),
                        e.pos,
                        format!("unknown type `{}`", c.ty()),
                    ));
                }
            };
            if !c.many {
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
        ty: Primitive,
        e: &Start<'i>,
        at: &At,
        depth: usize,
    ) -> Res<(Option<Value>, Option<Value>)> {
        let mut lexical = None;
        let mut id = None;
        // (the lexer refuses duplicate attributes)
        for a in self.attrs(at, e.pos)? {
            match (a.decl, a.name) {
                (Decl::No, "value") => lexical = Some(a.value()),
                (Decl::No, "id") => id = Some(a.value()),
                (Decl::No, _) => return Err(self.unknown_attribute(at, e.pos, a)),
                _ => {}
            }
        }
        let mut partner = Map::new();
        if let Some(id) = id {
            self.check(&at.child("id", None), e.pos, Primitive::String, &id)?;
            partner.insert("id".into(), Value::String(id.into_owned()));
        }
        if !e.empty {
            self.children(self.element, &mut partner, at, false, depth + 1)?;
        }
        let value = match lexical {
            None => None,
            Some(l) => Some(to_json(ty, l).map_err(|message| XmlError::Value {
                at: self.loc(Some(at), e.pos),
                message,
            })?),
        };
        if value.is_none() && partner.is_empty() {
            return Err(self.structure(
                Some(at),
                e.pos,
                "a primitive element needs a value attribute or an extension".into(),
            ));
        }
        Ok((
            value,
            (!partner.is_empty()).then_some(Value::Object(partner)),
        ))
    }

    fn check(&self, at: &At, pos: usize, ty: Primitive, s: &str) -> Res<()> {
        check_text(ty, s).map_err(|message| {
            Box::new(XmlError::Value {
                at: self.loc(Some(at), pos),
                message,
            })
        })
    }

    /// A complex or backbone element: `id` (and `url` for an Extension) from attributes,
    /// the rest from child elements.
    fn complex(&mut self, def: &'m TypeDef, e: &Start<'i>, at: &At, depth: usize) -> Res<Value> {
        let is_extension = std::ptr::eq(def, self.extension);
        let mut id = None;
        let mut url = None;
        for a in self.attrs(at, e.pos)? {
            let slot = match (a.decl, a.name) {
                (Decl::No, "id") => &mut id,
                (Decl::No, "url") if is_extension => &mut url,
                (Decl::No, _) => return Err(self.unknown_attribute(at, e.pos, a)),
                _ => continue,
            };
            let v = a.value();
            // `Element.id` and `Extension.url` are strings in the model
            let ty = match def.child(a.name).map(|c| c.ty_ref) {
                Some(TypeRef::Primitive(p)) => p,
                _ => Primitive::String,
            };
            self.check(&at.child(a.name, None), e.pos, ty, &v)?;
            *slot = Some(v);
        }
        let mut obj = Map::new();
        if let Some(v) = id {
            obj.insert("id".into(), Value::String(v.into_owned()));
        }
        if let Some(v) = url {
            obj.insert("url".into(), Value::String(v.into_owned()));
        }
        if !e.empty {
            self.children(def, &mut obj, at, false, depth + 1)?;
        }
        if obj.is_empty() {
            return Err(self.structure(Some(at), e.pos, "an element without content".into()));
        }
        Ok(Value::Object(obj))
    }

    /// `contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`,
    /// `Bundle.entry.response.outcome`: an element holding one resource element.
    fn wrapped(
        &mut self,
        e: &Start<'i>,
        at: &At,
        expected: Option<&str>,
        depth: usize,
    ) -> Res<Value> {
        if let Some(a) = self.attrs(at, e.pos)?.iter().find(|a| a.decl == Decl::No) {
            return Err(self.unknown_attribute(at, e.pos, a));
        }
        let mut found = None;
        if !e.empty {
            while let Content::Open(inner) = self.content(at)? {
                if found.is_some() {
                    return Err(self.structure(
                        Some(at),
                        inner.pos,
                        "holds more than one resource".into(),
                    ));
                }
                found = Some(self.resource(&inner, Some(at), expected, depth + 1)?);
            }
        }
        found.ok_or_else(|| self.structure(Some(at), e.pos, "holds no resource".into()))
    }

    /// The narrative: its source text if that is self-contained XHTML, else re-serialized
    /// with the namespace declared on the div.
    fn div(&mut self, e: &Start<'i>, at: &At) -> Res<String> {
        let mut canon = Canon(Some(String::new()));
        let simple = walk_div(&mut self.lx, e, &mut canon).map_err(|p| {
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
        let end = self.lx.pos();
        match (simple, self.text.get(e.pos..end), canon.0) {
            (true, Some(raw), _) => Ok(raw.to_owned()),
            (_, _, Some(c)) => Ok(c),
            (_, _, None) => Err(self.structure(Some(at), e.pos, "narrative lost".into())),
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
fn to_json(ty: Primitive, lexical: Cow<str>) -> Result<Value, String> {
    let v = match ty {
        Primitive::Boolean => match &*lexical {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("`{lexical}` is not a boolean (true or false)")),
        },
        _ if ty.is_numeric() => {
            let invalid = || format!("`{lexical}` is not a valid {}", ty.name());
            if !is_fhir_number(&lexical, ty == Primitive::Decimal) {
                return Err(invalid());
            }
            serde_json::from_str::<Value>(&lexical).map_err(|_| invalid())?
        }
        _ => {
            // Checked before the one copy into the value.
            check_text(ty, &lexical)?;
            return Ok(Value::String(lexical.into_owned()));
        }
    };
    check_primitive(ty.name(), &v)?;
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
