//! The narrative: XHTML, carried in JSON as text.

use std::borrow::Cow;

use quick_xml::XmlVersion;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{PrefixDeclaration, ResolveResult};

use super::XHTML_NS;
use super::read::XmlReader;
use super::write::escape_attr;

/// What is wrong inside a narrative, at a byte offset of the text being read.
pub(super) struct DivProblem {
    pub(super) pos: usize,
    pub(super) kind: DivKind,
}

pub(super) enum DivKind {
    Syntax(String),
    Forbidden(String),
    Namespace { name: String, namespace: String },
    Other(String),
}

impl DivKind {
    pub(super) fn message(&self) -> String {
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

pub(super) fn offset(p: u64) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

pub(super) fn describe_ns(r: &ResolveResult) -> String {
    match r {
        ResolveResult::Bound(n) => n.0.to_owned(),
        ResolveResult::Unbound => "(none)".to_owned(),
        ResolveResult::Unknown(p) => format!("(undeclared prefix `{p}`)"),
    }
}

/// The XML name characters XML 1.0 allows in a document.
pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Text re-serializing a narrative with the XHTML namespace declared on the div (built only
/// when needed).
pub(super) struct Canon(pub(super) Option<String>);

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
pub(super) fn walk_div<'i>(
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
pub(super) enum AttrProblem {
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
pub(super) fn attribute_value<'a>(a: &Attribute<'a>) -> Result<Cow<'a, str>, AttrProblem> {
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
pub(super) fn check_div(div: &str) -> Result<(), String> {
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
