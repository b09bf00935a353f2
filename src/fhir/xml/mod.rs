//! FHIR R4 XML (<https://hl7.org/fhir/R4/xml.html>) to and from the JSON form the server
//! keeps.
//!
//! Writing walks the JSON value once straight into a `String`, putting each object's
//! elements in specification order (the model's), not the JSON key order. Reading is a
//! single pass over the tokens of our own strict tokenizer (`lex`: quick-xml's events,
//! attribute iterators and namespace resolver were more than half of the cost) that builds
//! the `serde_json::Value` a client would have sent as JSON: arrays where the element
//! repeats, numbers keeping their lexical text, `id` and extensions of primitives as `_name`
//! partners. For valid resources the two are exact inverses.
//!
//! Reading is strict: the FHIR namespace, known elements in specification order, primitive
//! values in their lexical form, no text outside the narrative, no DTD and no entities
//! beyond the five predefined ones and character references. Errors carry a FHIRPath-like
//! location and the line and column in the document.

use std::fmt;

use super::model::ElementDef;
use super::validate::MAX_DEPTH;

mod div;
mod lex;
mod read;
#[cfg(test)]
mod tests;
mod write;

pub use read::from_xml;
pub use write::{to_xml, to_xml_pretty};

/// The namespace of every FHIR element.
pub const FHIR_NS: &str = "http://hl7.org/fhir";
/// The namespace of the narrative `div` and everything in it.
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
/// `xsi:schemaLocation` and friends are tolerated on resource elements.
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
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

/// `value[x]` for a choice, else the element name.
fn display_name(el: &ElementDef) -> String {
    if el.choice {
        format!("{}[x]", el.name)
    } else {
        el.name.clone()
    }
}
