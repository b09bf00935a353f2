//! The narrative: XHTML, carried in JSON as text.

use super::XHTML_NS;
use super::lex::{Decl, LexError, LexKind, Lexer, Ns, Start, Token};
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

impl From<LexError> for DivProblem {
    fn from(e: LexError) -> DivProblem {
        DivProblem {
            pos: e.pos,
            kind: match e.kind {
                LexKind::Syntax(m) => DivKind::Syntax(m),
                LexKind::Forbidden(w) => DivKind::Forbidden(w),
            },
        }
    }
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

/// Walks a narrative whose start tag `start` was just read, up to its end tag: every element
/// in the XHTML namespace, attributes without foreign namespaces, only the predefined
/// entities and character references, no processing instruction or DTD. Returns whether the
/// source text of the div is self-contained (it declares the XHTML namespace as its default
/// and uses no prefixes), so that it can be kept verbatim.
pub(super) fn walk_div(
    lx: &mut Lexer,
    start: &Start,
    canon: &mut Canon,
) -> Result<bool, DivProblem> {
    let mut simple = true;
    div_tag(lx, start, true, canon, &mut simple)?;
    if start.empty {
        canon.push_str("/>");
        return Ok(simple);
    }
    canon.push_str(">");
    let mut depth = 1usize;
    loop {
        let pos = lx.pos();
        let problem = |kind| Err(DivProblem { pos, kind });
        match lx.next()? {
            Token::Start(e) => {
                div_tag(lx, &e, false, canon, &mut simple)?;
                if e.empty {
                    canon.push_str("/>");
                } else {
                    canon.push_str(">");
                    depth += 1;
                }
            }
            Token::End { local } => {
                canon.push_str("</");
                canon.push_str(local);
                canon.push_str(">");
                depth -= 1;
                if depth == 0 {
                    return Ok(simple);
                }
            }
            // As written: references are checked, and kept.
            Token::Text(t) => match t.problem {
                Some(e) => return Err(e.into()),
                None => canon.push_str(t.raw),
            },
            Token::CData { raw, .. } => {
                canon.push_str("<![CDATA[");
                canon.push_str(raw);
                canon.push_str("]]>");
            }
            Token::Comment => {}
            Token::Pi => {
                return problem(DivKind::Other(
                    "processing instructions are not allowed in the narrative".into(),
                ));
            }
            Token::DocType { .. } => {
                return problem(DivKind::Forbidden("a DOCTYPE (DTD)".into()));
            }
            Token::Decl { .. } => {
                return problem(DivKind::Syntax("misplaced XML declaration".into()));
            }
            Token::Eof { .. } => {
                return problem(DivKind::Syntax(
                    "unexpected end inside the narrative".into(),
                ));
            }
        }
    }
}

/// Checks one start tag inside the narrative and writes it (without its closing `>`).
fn div_tag(
    lx: &Lexer,
    e: &Start,
    root: bool,
    canon: &mut Canon,
    simple: &mut bool,
) -> Result<(), DivProblem> {
    let problem = |kind| DivProblem { pos: e.pos, kind };
    if e.ns != Ns::Xhtml {
        return Err(problem(DivKind::Namespace {
            name: e.name.to_owned(),
            namespace: lx.describe(e.prefix),
        }));
    }
    if root && e.local != "div" {
        return Err(problem(DivKind::Other(
            "the narrative must be a `div` element".into(),
        )));
    }
    if e.prefix.is_some() {
        *simple = false;
    }
    canon.push_str("<");
    canon.push_str(e.local);
    if root {
        canon.push_str(" xmlns=\"");
        canon.push_str(XHTML_NS);
        canon.push_str("\"");
    }
    let mut own_default = false;
    let attrs = lx.attrs().map_err(|p| problem(DivKind::Forbidden(p.0)))?;
    for a in attrs {
        match a.decl {
            Decl::Default => {
                own_default |= root && a.value() == XHTML_NS;
                continue;
            }
            Decl::Prefix => {
                *simple = false;
                continue;
            }
            Decl::No => {}
        }
        canon.push_str(" ");
        match a.prefix {
            None => {}
            Some("xml") => canon.push_str("xml:"),
            Some(_) => {
                return Err(problem(DivKind::Other(format!(
                    "attribute `{}` is not allowed in the narrative",
                    a.name
                ))));
            }
        }
        canon.push_str(a.local);
        canon.push_str("=\"");
        canon.attr_value(&a.value()).map_err(|c| {
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

/// Checks that a JSON narrative is one XHTML `div`, valid on its own (its namespace
/// declarations included), so that it can be written verbatim into a FHIR document.
pub(super) fn check_div(div: &str) -> Result<(), String> {
    let not_well_formed = |e: LexError| {
        let p: DivProblem = e.into();
        format!("the narrative is {}", p.kind.message())
    };
    let mut lx = Lexer::new(div);
    let start = match lx.next() {
        Ok(Token::Start(s)) => s,
        Ok(_) => return Err("the narrative must be one XHTML `div` element".into()),
        Err(e) => return Err(not_well_formed(e)),
    };
    walk_div(&mut lx, &start, &mut Canon(None)).map_err(|p| p.kind.message())?;
    match lx.next() {
        Ok(Token::Eof { .. }) => Ok(()),
        Ok(_) => Err("content after the narrative `div`".into()),
        Err(e) => Err(not_well_formed(e)),
    }
}
