//! A strict XML 1.0 tokenizer with namespaces (<https://www.w3.org/TR/xml/>,
//! <https://www.w3.org/TR/xml-names/>), for the FHIR reader and the narrative.
//!
//! What a general-purpose reader spends on every element (events, attribute iterators,
//! namespace resolution by name, re-validating names as UTF-8) was more than half of the cost
//! of reading FHIR XML, so this one does one pass over the bytes and hands out slices of the
//! input. It is strict: well-formedness (names, matching tags, quoted and unique attributes,
//! `<` and `&` in values, `--` in comments, `]]>` in text, XML characters only), namespace
//! well-formedness (prefixes declared, reserved prefixes kept), no DOCTYPE (a token the reader
//! refuses, never parsed), no entities beyond the five predefined ones and character
//! references. The input is a `&str`: UTF-8 is the caller's check.

use std::borrow::Cow;

use super::{FHIR_NS, XHTML_NS, XSI_NS};

const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

/// A namespace, as far as FHIR XML cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ns {
    /// No namespace (no prefix and no default declared, or `xmlns=""`).
    None,
    Fhir,
    Xhtml,
    Xsi,
    Xml,
    Other,
    /// A prefix without a declaration.
    Undeclared,
}

fn ns_of(uri: &str) -> Ns {
    match uri {
        FHIR_NS => Ns::Fhir,
        XHTML_NS => Ns::Xhtml,
        XSI_NS => Ns::Xsi,
        XML_NS => Ns::Xml,
        "" => Ns::None,
        _ => Ns::Other,
    }
}

/// Why a document is refused, at a byte offset of it.
#[derive(Debug)]
pub(super) struct LexError {
    pub(super) pos: usize,
    pub(super) kind: LexKind,
}

#[derive(Debug)]
pub(super) enum LexKind {
    /// Not well-formed.
    Syntax(String),
    /// Well-formed, but not allowed in FHIR XML (an entity other than the predefined ones).
    Forbidden(String),
}

#[cold]
fn syntax<T>(pos: usize, message: impl Into<String>) -> Result<T, LexError> {
    Err(LexError {
        pos,
        kind: LexKind::Syntax(message.into()),
    })
}

/// What an attribute is to namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decl {
    /// An ordinary attribute.
    No,
    /// `xmlns="…"`.
    Default,
    /// `xmlns:p="…"`.
    Prefix,
}

/// An attribute of the last start tag.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attr<'i> {
    /// The qualified name, as written.
    pub(super) name: &'i str,
    pub(super) prefix: Option<&'i str>,
    pub(super) local: &'i str,
    pub(super) decl: Decl,
    /// The text between the quotes.
    raw: &'i str,
    /// No reference and no white space to normalize: the value is `raw`.
    plain: bool,
    /// Refers to an entity that is not predefined.
    bad_entity: bool,
}

impl<'i> Attr<'i> {
    /// The value after XML attribute-value normalization: references replaced, each literal
    /// tab, line feed, carriage return or CR LF pair a space.
    pub(super) fn value(&self) -> Cow<'i, str> {
        if self.plain {
            Cow::Borrowed(self.raw)
        } else {
            Cow::Owned(decode_attr(self.raw))
        }
    }
}

/// A start tag (or empty-element tag); its attributes are `Lexer::attrs` until the next token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Start<'i> {
    /// The qualified name, as written.
    pub(super) name: &'i str,
    pub(super) prefix: Option<&'i str>,
    pub(super) local: &'i str,
    pub(super) ns: Ns,
    pub(super) empty: bool,
    pub(super) pos: usize,
}

/// Character data up to the next markup, as written (references kept).
#[derive(Debug)]
pub(super) struct Text<'i> {
    pub(super) raw: &'i str,
    pub(super) pos: usize,
    /// Only XML white space.
    pub(super) blank: bool,
    /// A reference to an entity that is not predefined, a malformed reference or `]]>`:
    /// refused where text is allowed (the narrative); elsewhere any text is refused anyway.
    pub(super) problem: Option<LexError>,
}

#[derive(Debug)]
pub(super) enum Token<'i> {
    Start(Start<'i>),
    /// An end tag, already matched with its start tag.
    End {
        local: &'i str,
    },
    Text(Text<'i>),
    CData {
        /// The content between `<![CDATA[` and `]]>`.
        raw: &'i str,
        pos: usize,
    },
    Comment,
    /// A processing instruction other than the XML declaration.
    Pi,
    /// The XML declaration (only ever at the start of the document).
    Decl {
        encoding: Option<&'i str>,
        pos: usize,
    },
    DocType {
        pos: usize,
    },
    Eof {
        pos: usize,
    },
}

/// A namespace declaration in scope.
struct Binding<'i> {
    /// How many elements were open once it was declared (its element's depth).
    depth: usize,
    /// `""` for the default namespace.
    prefix: &'i str,
    uri: Cow<'i, str>,
    ns: Ns,
}

/// Trouble met in an attribute value that only its consumer can place (with the element's
/// path): see `Lexer::attrs`.
#[derive(Debug, Clone)]
pub(super) struct AttrProblem(pub(super) String);

pub(super) struct Lexer<'i> {
    text: &'i str,
    b: &'i [u8],
    pos: usize,
    /// Qualified and local names of the open elements.
    open: Vec<(&'i str, &'i str)>,
    bindings: Vec<Binding<'i>>,
    /// The default namespace in scope (what `bindings` says, kept at hand).
    default_ns: Ns,
    attrs: Vec<Attr<'i>>,
    /// An entity reference that is not predefined, in the last start tag's attributes.
    attr_problem: Option<AttrProblem>,
    /// The last token was an empty-element tag: its scope ends before the next token.
    pending_pop: bool,
}

impl<'i> Lexer<'i> {
    pub(super) fn new(text: &'i str) -> Lexer<'i> {
        Lexer {
            text,
            b: text.as_bytes(),
            pos: 0,
            open: Vec::new(),
            bindings: Vec::new(),
            default_ns: Ns::None,
            attrs: Vec::new(),
            attr_problem: None,
            pending_pop: false,
        }
    }

    /// The byte offset where the next token starts (just after the last one).
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// The attributes of the last start tag; an error if one refers to an entity that is not
    /// predefined (the consumer reports it with the element's path).
    pub(super) fn attrs(&self) -> Result<&[Attr<'i>], AttrProblem> {
        match &self.attr_problem {
            Some(p) => Err(p.clone()),
            None => Ok(&self.attrs),
        }
    }

    /// The namespace a prefix (`None`: the default) is bound to, as of the last start tag.
    pub(super) fn resolve(&self, prefix: Option<&str>) -> Ns {
        match prefix {
            None => self.default_ns,
            Some("xml") => Ns::Xml,
            Some(p) => self.binding(p).map_or(Ns::Undeclared, |b| b.ns),
        }
    }

    /// The namespace a prefix is bound to, for messages.
    pub(super) fn describe(&self, prefix: Option<&str>) -> String {
        match (prefix, self.binding(prefix.unwrap_or(""))) {
            (Some("xml"), _) => XML_NS.to_owned(),
            (_, Some(b)) if !b.uri.is_empty() => b.uri.clone().into_owned(),
            (None, _) => "(none)".to_owned(),
            (Some(p), None) => format!("(undeclared prefix `{p}`)"),
            (Some(_), Some(_)) => "(none)".to_owned(),
        }
    }

    fn binding(&self, prefix: &str) -> Option<&Binding<'i>> {
        self.bindings.iter().rev().find(|b| b.prefix == prefix)
    }

    fn pop_scope(&mut self) {
        let depth = self.open.len();
        let mut default_changed = false;
        while let Some(b) = self.bindings.pop_if(|b| b.depth >= depth) {
            default_changed |= b.prefix.is_empty();
        }
        if default_changed {
            self.default_ns = self.binding("").map_or(Ns::None, |b| b.ns);
        }
        self.open.pop();
    }

    pub(super) fn next(&mut self) -> Result<Token<'i>, LexError> {
        if self.pending_pop {
            self.pending_pop = false;
            self.pop_scope();
        }
        let start = self.pos;
        match self.b.get(start) {
            None => Ok(Token::Eof { pos: start }),
            Some(b'<') => match self.b.get(start + 1) {
                Some(b'/') => self.end_tag(start),
                Some(b'?') => self.pi(start),
                Some(b'!') => self.bang(start),
                _ => self.start_tag(start),
            },
            Some(_) => Ok(self.text(start)),
        }
    }

    /// A name (XML `Name`) at `i`; returns where it ends.
    fn name(&self, i: usize) -> Result<usize, LexError> {
        let mut j = i;
        loop {
            match self.b.get(j).map(|&c| NAME[usize::from(c)]) {
                Some(PART) if j > i => j += 1,
                Some(START | COLON) => j += 1,
                Some(HIGH) => {
                    let Some(c) = self.text.get(j..).and_then(|s| s.chars().next()) else {
                        break;
                    };
                    if !(is_name_start(c) || j > i && is_name_char(c)) {
                        break;
                    }
                    j += c.len_utf8();
                }
                _ => break,
            }
        }
        if j == i {
            return match self.b.get(i) {
                None => syntax(i, "unexpected end of the document"),
                Some(_) => syntax(i, "expected a name"),
            };
        }
        Ok(j)
    }

    /// A qualified name (`prefix:local` or `local`) at `i`: where it ends, the name, its
    /// prefix and local part. ASCII names (all of FHIR's and XHTML's) in one pass over their
    /// bytes; anything else goes the general way.
    fn qname(&self, i: usize) -> Result<QName<'i>, LexError> {
        let b = self.b;
        // An NCName of ASCII letters, digits, `_`, `-` and `.` at `from`: where it ends.
        let ncname = |from: usize| -> Option<usize> {
            let rest = b.get(from..)?;
            if NAME[usize::from(*rest.first()?)] != START {
                return None;
            }
            let n = rest
                .iter()
                .position(|&c| NAME[usize::from(c)] & (START | PART) == 0)
                .unwrap_or(rest.len());
            Some(from + n)
        };
        let Some(mut j) = ncname(i) else {
            return self.qname_slow(i);
        };
        let mut colon = None;
        if b.get(j) == Some(&b':') {
            colon = Some(j);
            match ncname(j + 1) {
                Some(end) => j = end,
                None => return self.qname_slow(i),
            }
        }
        // stopped on a non-ASCII character or a second colon: the general way
        if b.get(j).is_some_and(|&c| NAME[usize::from(c)] != 0) {
            return self.qname_slow(i);
        }
        let name = self.text.get(i..j).unwrap_or_default();
        Ok(match colon {
            None => (j, name, None, name),
            Some(c) => (
                j,
                name,
                self.text.get(i..c),
                self.text.get(c + 1..j).unwrap_or_default(),
            ),
        })
    }

    /// `qname` for names with non-ASCII characters, and the errors.
    fn qname_slow(&self, i: usize) -> Result<QName<'i>, LexError> {
        let j = self.name(i)?;
        let name = self.text.get(i..j).unwrap_or_default();
        let Some((prefix, local)) = name.split_once(':') else {
            return Ok((j, name, None, name));
        };
        let ncname = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c != ':' && is_name_start(c))
                && !s.contains(':')
        };
        if !ncname(prefix) || !ncname(local) {
            return syntax(i, format!("`{name}` is not a valid qualified name"));
        }
        Ok((j, name, Some(prefix), local))
    }

    fn skip_space(&self, mut i: usize) -> usize {
        while self.b.get(i).is_some_and(|&c| is_space(c)) {
            i += 1;
        }
        i
    }

    fn start_tag(&mut self, start: usize) -> Result<Token<'i>, LexError> {
        let (name_end, name, prefix, local) = self.qname(start + 1)?;
        self.attrs.clear();
        self.attr_problem = None;
        let (mut decls, mut prefixed) = (false, 0);
        let mut i = name_end;
        let empty = loop {
            let after_space = self.skip_space(i);
            match self.b.get(after_space) {
                Some(b'>') => {
                    i = after_space + 1;
                    break false;
                }
                Some(b'/') if self.b.get(after_space + 1) == Some(&b'>') => {
                    i = after_space + 2;
                    break true;
                }
                None => return syntax(after_space, "unexpected end inside a start tag"),
                Some(_) if after_space == i => {
                    return syntax(i, "expected white space, `>` or `/>` in a start tag");
                }
                Some(_) => {}
            }
            let (a, end) = self.attribute(after_space)?;
            i = end;
            decls |= a.decl != Decl::No;
            prefixed += usize::from(a.decl == Decl::No && a.prefix.is_some());
            self.attrs.push(a);
        };
        if self.attrs.len() > 1 {
            self.check_unique(start)?;
        }
        self.open.push((name, local));
        if decls {
            self.declare(start)?;
        }
        if prefixed > 1 {
            self.check_expanded(start)?;
        }
        let ns = self.resolve(prefix);
        self.pending_pop = empty;
        self.pos = i;
        Ok(Token::Start(Start {
            name,
            prefix,
            local,
            ns,
            empty,
            pos: start,
        }))
    }

    /// One `name="value"` at `i`; returns where it ends.
    #[inline]
    fn attribute(&mut self, i: usize) -> Result<(Attr<'i>, usize), LexError> {
        // `value="`: most attributes of FHIR XML, without the general name scan
        let (name, prefix, local, from, quote) = match self.b.get(i..i + 7) {
            Some(&[b'v', b'a', b'l', b'u', b'e', b'=', q]) if q == b'"' || q == b'\'' => {
                ("value", None, "value", i + 7, q)
            }
            _ => {
                let (name_end, name, prefix, local) = self.qname(i)?;
                let mut j = self.skip_space(name_end);
                if self.b.get(j) != Some(&b'=') {
                    return syntax(j, format!("expected `=` after the attribute name `{name}`"));
                }
                j = self.skip_space(j + 1);
                match self.b.get(j) {
                    Some(&q @ (b'"' | b'\'')) => (name, prefix, local, j + 1, q),
                    _ => return syntax(j, format!("the value of `{name}` must be quoted")),
                }
            }
        };
        let mut k = from;
        let mut plain = true;
        let mut bad_entity = false;
        loop {
            k = plain_run(self.b, k);
            match self.b.get(k) {
                None => return syntax(from, "unexpected end inside an attribute value"),
                Some(&c) if c == quote => break,
                Some(b'"' | b'\'') => k += 1,
                Some(b'<') => return syntax(k, "`<` in an attribute value"),
                Some(b'&') => {
                    plain = false;
                    let (end, entity) = self.reference(k)?;
                    if let Some(entity) = entity {
                        bad_entity = true;
                        if self.attr_problem.is_none() {
                            self.attr_problem =
                                Some(AttrProblem(format!("the entity reference `&{entity};`")));
                        }
                    }
                    k = end;
                }
                Some(b'\t' | b'\n' | b'\r') => {
                    plain = false;
                    k += 1;
                }
                Some(_) => k = self.check_char(k)?,
            }
        }
        let decl = match (prefix, local) {
            (None, "xmlns") => Decl::Default,
            (Some("xmlns"), _) => Decl::Prefix,
            _ => Decl::No,
        };
        Ok((
            Attr {
                name,
                prefix,
                local,
                decl,
                raw: self.text.get(from..k).unwrap_or_default(),
                plain,
                bad_entity,
            },
            k + 1,
        ))
    }

    /// No two attributes with the same name, nor the same namespace and local name.
    fn check_unique(&self, start: usize) -> Result<(), LexError> {
        let attrs = &self.attrs;
        let duplicate = |name: &str| syntax(start, format!("duplicate attribute `{name}`"));
        if attrs.len() <= 16 {
            for (i, a) in attrs.iter().enumerate() {
                if attrs[..i].iter().any(|b| b.name == a.name) {
                    return duplicate(a.name);
                }
            }
        } else {
            let mut names: Vec<&str> = attrs.iter().map(|a| a.name).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return duplicate(w[0]);
            }
        }
        Ok(())
    }

    /// The namespace declarations of the start tag just read (its element is open).
    fn declare(&mut self, start: usize) -> Result<(), LexError> {
        let depth = self.open.len();
        for a in &self.attrs {
            let prefix = match a.decl {
                Decl::No => continue,
                Decl::Default => "",
                Decl::Prefix => a.local,
            };
            if a.bad_entity {
                return Err(LexError {
                    pos: start,
                    kind: LexKind::Forbidden(format!(
                        "an entity reference in the declaration `{}`",
                        a.name
                    )),
                });
            }
            let uri = a.value();
            let ns = ns_of(&uri);
            let bad = match prefix {
                "xml" => (uri != XML_NS).then_some("the `xml` prefix cannot be rebound"),
                "xmlns" => Some("the `xmlns` prefix cannot be declared"),
                _ if uri == XML_NS || uri == XMLNS_NS => {
                    Some("a reserved namespace cannot be bound to another prefix")
                }
                "" => None,
                _ if uri.is_empty() => Some("a prefix cannot be bound to the empty namespace"),
                _ => None,
            };
            if let Some(message) = bad {
                return syntax(start, message);
            }
            if prefix.is_empty() {
                self.default_ns = ns;
            }
            self.bindings.push(Binding {
                depth,
                prefix,
                uri,
                ns,
            });
        }
        Ok(())
    }

    /// Not the same expanded name twice (`a:x` and `b:x`, `a` and `b` bound to one
    /// namespace); rare, so not fast.
    fn check_expanded(&self, start: usize) -> Result<(), LexError> {
        let prefixed: Vec<(&str, &str)> = self
            .attrs
            .iter()
            .filter(|a| a.decl == Decl::No)
            .filter_map(|a| a.prefix.map(|p| (p, a.local)))
            .collect();
        if prefixed.len() > 1 {
            let mut expanded: Vec<(String, &str)> = prefixed
                .iter()
                .map(|&(p, local)| (self.describe(Some(p)), local))
                .collect();
            expanded.sort_unstable();
            if let Some(w) = expanded.windows(2).find(|w| w[0] == w[1]) {
                return syntax(
                    start,
                    format!("duplicate attribute `{}` in namespace `{}`", w[0].1, w[0].0),
                );
            }
        }
        Ok(())
    }

    fn end_tag(&mut self, start: usize) -> Result<Token<'i>, LexError> {
        let from = start + 2;
        let Some(&(open, local)) = self.open.last() else {
            let end = self.name(from)?;
            let name = self.text.get(from..end).unwrap_or_default();
            return syntax(start, format!("`</{name}>` closes no element"));
        };
        // The name of the open element, and no more of a name.
        let name_end = from + open.len();
        let matches = self.b.get(from..name_end) == Some(open.as_bytes())
            && self
                .b
                .get(name_end)
                .is_none_or(|&c| NAME[usize::from(c)] == 0);
        if !matches {
            let end = self.name(from)?;
            let name = self.text.get(from..end).unwrap_or_default();
            return syntax(start, format!("expected `</{open}>`, found `</{name}>`"));
        }
        let close = self.skip_space(name_end);
        if self.b.get(close) != Some(&b'>') {
            return syntax(close, "expected `>` to close the end tag");
        }
        self.pop_scope();
        self.pos = close + 1;
        Ok(Token::End { local })
    }

    /// `<?target …?>`, or the XML declaration at the very start.
    fn pi(&mut self, start: usize) -> Result<Token<'i>, LexError> {
        let name_end = self.name(start + 2)?;
        let target = self.text.get(start + 2..name_end).unwrap_or_default();
        if target.eq_ignore_ascii_case("xml") {
            if start == 0 && target == "xml" {
                return self.declaration(name_end);
            }
            return syntax(start, "misplaced XML declaration");
        }
        if target.contains(':') {
            return syntax(start, "a processing instruction target cannot contain `:`");
        }
        let Some(end) = find(self.b, name_end, b"?>") else {
            return syntax(start, "unclosed processing instruction");
        };
        if end > name_end && !self.b.get(name_end).is_some_and(|&c| is_space(c)) {
            return syntax(name_end, "expected white space after the target");
        }
        self.check_chars(name_end, end)?;
        self.pos = end + 2;
        Ok(Token::Pi)
    }

    /// `<?xml version="1.x" encoding="…" standalone="yes|no"?>` after `<?xml`.
    fn declaration(&mut self, mut i: usize) -> Result<Token<'i>, LexError> {
        let mut encoding = None;
        let mut seen = 0;
        loop {
            let j = self.skip_space(i);
            if self.b.get(j..j + 2) == Some(b"?>") {
                if seen == 0 {
                    return syntax(j, "the XML declaration needs a version");
                }
                self.pos = j + 2;
                return Ok(Token::Decl { encoding, pos: 0 });
            }
            if j == i {
                return syntax(j, "malformed XML declaration");
            }
            let name_end = self.name(j)?;
            let name = self.text.get(j..name_end).unwrap_or_default();
            let mut k = self.skip_space(name_end);
            if self.b.get(k) != Some(&b'=') {
                return syntax(k, "malformed XML declaration");
            }
            k = self.skip_space(k + 1);
            let quote = match self.b.get(k) {
                Some(&q @ (b'"' | b'\'')) => q,
                _ => return syntax(k, "malformed XML declaration"),
            };
            let Some(close) = self
                .b
                .get(k + 1..)
                .and_then(|rest| rest.iter().position(|&c| c == quote))
                .map(|p| k + 1 + p)
            else {
                return syntax(k, "malformed XML declaration");
            };
            let value = self.text.get(k + 1..close).unwrap_or_default();
            let ok = match (seen, name) {
                (0, "version") => {
                    seen = 1;
                    value
                        .strip_prefix("1.")
                        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
                }
                (1, "encoding") => {
                    seen = 2;
                    encoding = Some(value);
                    value.bytes().enumerate().all(|(n, c)| {
                        c.is_ascii_alphabetic()
                            || n > 0 && (c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
                    }) && !value.is_empty()
                }
                (1 | 2, "standalone") => {
                    seen = 3;
                    matches!(value, "yes" | "no")
                }
                _ => false,
            };
            if !ok {
                return syntax(j, format!("malformed XML declaration at `{name}`"));
            }
            i = close + 1;
        }
    }

    /// `<!--…-->`, `<![CDATA[…]]>` or `<!DOCTYPE`.
    fn bang(&mut self, start: usize) -> Result<Token<'i>, LexError> {
        let rest = self.b.get(start..).unwrap_or_default();
        if rest.starts_with(b"<!--") {
            let from = start + 4;
            let Some(dashes) = find(self.b, from, b"--") else {
                return syntax(start, "unclosed comment");
            };
            if self.b.get(dashes + 2) != Some(&b'>') {
                return syntax(dashes, "`--` inside a comment");
            }
            self.check_chars(from, dashes)?;
            self.pos = dashes + 3;
            Ok(Token::Comment)
        } else if rest.starts_with(b"<![CDATA[") {
            let from = start + 9;
            let Some(end) = find(self.b, from, b"]]>") else {
                return syntax(start, "unclosed CDATA section");
            };
            self.check_chars(from, end)?;
            if self.open.is_empty() {
                return syntax(start, "a CDATA section outside the root element");
            }
            self.pos = end + 3;
            Ok(Token::CData {
                raw: self.text.get(from..end).unwrap_or_default(),
                pos: start,
            })
        } else if rest.starts_with(b"<!DOCTYPE") {
            Ok(Token::DocType { pos: start })
        } else {
            syntax(start, "unknown markup after `<!`")
        }
    }

    /// Character data from `start` to the next `<` (or the end).
    fn text(&mut self, start: usize) -> Token<'i> {
        let mut i = start;
        let mut blank = true;
        let mut problem = None;
        loop {
            match self.b.get(i) {
                None | Some(b'<') => break,
                Some(b' ' | b'\t' | b'\n' | b'\r') => i += 1,
                Some(&c) => {
                    blank = false;
                    match c {
                        b'&' => match self.reference(i) {
                            Ok((end, None)) => i = end,
                            Ok((end, Some(entity))) => {
                                problem.get_or_insert(LexError {
                                    pos: i,
                                    kind: LexKind::Forbidden(format!(
                                        "the entity reference `&{entity};`"
                                    )),
                                });
                                i = end;
                            }
                            Err(e) => {
                                problem.get_or_insert(e);
                                i += 1;
                            }
                        },
                        b']' if self.b.get(i..i + 3) == Some(b"]]>") => {
                            problem.get_or_insert(LexError {
                                pos: i,
                                kind: LexKind::Syntax("`]]>` in text".into()),
                            });
                            i += 3;
                        }
                        _ if c < 0x20 || c == 0xEF => match self.check_char(i) {
                            Ok(next) => i = next,
                            Err(e) => {
                                problem.get_or_insert(e);
                                i += 1;
                            }
                        },
                        _ => i += 1,
                    }
                }
            }
        }
        self.pos = i;
        Token::Text(Text {
            raw: self.text.get(start..i).unwrap_or_default(),
            pos: start,
            blank,
            problem,
        })
    }

    /// A reference at `i` (`&…;`): its end, and the name of an entity that is not one of the
    /// five predefined ones. Character references must name XML characters.
    fn reference(&self, i: usize) -> Result<(usize, Option<&'i str>), LexError> {
        let bad = || syntax(i, "malformed reference (`&` must be written `&amp;`)");
        if self.b.get(i + 1) == Some(&b'#') {
            let (radix, from) = match self.b.get(i + 2) {
                Some(b'x') => (16, i + 3),
                _ => (10, i + 2),
            };
            let mut j = from;
            let mut code: u32 = 0;
            while let Some(d) = self.b.get(j).and_then(|&c| char::from(c).to_digit(radix)) {
                code = code.saturating_mul(radix).saturating_add(d);
                j += 1;
            }
            if j == from || self.b.get(j) != Some(&b';') {
                return bad();
            }
            return match char::from_u32(code) {
                Some(c) if is_xml_char(c) => Ok((j + 1, None)),
                _ => syntax(
                    i,
                    format!(
                        "invalid character reference `{}`",
                        self.text.get(i..=j).unwrap_or_default()
                    ),
                ),
            };
        }
        let Ok(end) = self.name(i + 1) else {
            return bad();
        };
        if self.b.get(end) != Some(&b';') {
            return bad();
        }
        let name = self.text.get(i + 1..end).unwrap_or_default();
        Ok((
            end + 1,
            (!matches!(name, "lt" | "gt" | "amp" | "apos" | "quot")).then_some(name),
        ))
    }

    /// The character at `i` (a control byte or the lead byte of U+FFFE/U+FFFF may start
    /// one that XML does not allow); returns where the next one starts.
    fn check_char(&self, i: usize) -> Result<usize, LexError> {
        match self.b.get(i) {
            Some(&c) if c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r') => {
                syntax(i, format!("character U+{c:04X} is not allowed in XML"))
            }
            Some(0xEF)
                if self.b.get(i + 1) == Some(&0xBF)
                    && matches!(self.b.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                syntax(i, "character U+FFFE or U+FFFF is not allowed in XML")
            }
            _ => Ok(i + 1),
        }
    }

    fn check_chars(&self, from: usize, to: usize) -> Result<(), LexError> {
        let mut i = from;
        while i < to {
            i = self.check_char(i)?;
        }
        Ok(())
    }
}

/// Where the ordinary bytes of an attribute value from `i` end (at one of `ATTR_SPECIAL` or
/// the end): eight at a time while a word cannot hold a special one, then one by one.
fn plain_run(b: &[u8], mut i: usize) -> usize {
    while let Some(w) = b.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        if may_stop(u64::from_le_bytes(a)) {
            break;
        }
        i += 8;
    }
    while b.get(i).is_some_and(|&c| ATTR_SPECIAL[usize::from(c)] == 0) {
        i += 1;
    }
    i
}

/// Whether a byte of `w` may be one of `ATTR_SPECIAL` (false positives are fine: the bytes
/// are then looked at one by one). The SWAR "has a zero byte" test on `w` XOR each special
/// byte, and "has a byte below 0x20".
fn may_stop(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space
        | has_zero(w ^ (ONES * u64::from(b'"')))
        | has_zero(w ^ (ONES * u64::from(b'\'')))
        | has_zero(w ^ (ONES * u64::from(b'<')))
        | has_zero(w ^ (ONES * u64::from(b'&')))
        | has_zero(w ^ (ONES * 0xEF)))
        != 0
}

/// Where `needle` first occurs in `b` at or after `from`.
fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// A qualified name: where it ends, the name, its prefix and local part.
type QName<'i> = (usize, &'i str, Option<&'i str>, &'i str);

/// `NAME[c]`: what byte `c` is to names. 0: not in names; `START`: may start one; `PART`:
/// only follows; `COLON`; `HIGH`: part of a non-ASCII character (decoded to tell).
const PART: u8 = 1;
const START: u8 = 2;
const COLON: u8 = 4;
const HIGH: u8 = 8;
static NAME: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b >= 0x80 {
            HIGH
        } else if b == b':' {
            COLON
        } else if b.is_ascii_alphabetic() || b == b'_' {
            START
        } else if b.is_ascii_digit() || b == b'-' || b == b'.' {
            PART
        } else {
            0
        };
        c += 1;
    }
    t
};

/// Bytes an attribute value's scan stops at: quotes, markup, references, white space that
/// normalization changes, control bytes, and 0xEF (U+FFFE and U+FFFF start with it).
static ATTR_SPECIAL: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = 1;
        c += 1;
    }
    t[b'"' as usize] = 1;
    t[b'\'' as usize] = 1;
    t[b'<' as usize] = 1;
    t[b'&' as usize] = 1;
    t[0xEF] = 1;
    t
};

/// XML 1.0 `NameStartChar`.
fn is_name_start(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar`.
fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// The characters XML 1.0 allows in a document.
pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Replaces the references of an attribute value checked by `Lexer::attribute` and
/// normalizes its white space.
fn decode_attr(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '\t', '\n', '\r']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("\r\n") {
            out.push(' ');
            rest = after;
        } else if let Some(after) = tail.strip_prefix(['\t', '\n', '\r']) {
            out.push(' ');
            rest = after;
        } else {
            // `&…;`: checked by the lexer, so the `;` is there
            let Some(semi) = tail.find(';') else {
                out.push_str(tail);
                return out;
            };
            let name = &tail[1..semi];
            let c = match name {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "apos" => Some('\''),
                "quot" => Some('"'),
                _ => name
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| name.strip_prefix('#').map(str::parse))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            match c {
                Some(c) => out.push(c),
                None => out.push_str(&tail[..=semi]),
            }
            rest = &tail[semi + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokens of a document, as short strings; the error as `!pos message`.
    fn tokens(text: &str) -> Vec<String> {
        let mut lx = Lexer::new(text);
        let mut out = Vec::new();
        loop {
            match lx.next() {
                Ok(Token::Eof { pos }) => {
                    // the reader refuses an end with elements open
                    if !lx.open.is_empty() {
                        out.push(format!("!{pos} unclosed"));
                    }
                    return out;
                }
                Ok(Token::Start(s)) => {
                    let attrs: Vec<String> = lx
                        .attrs()
                        .map(|a| {
                            a.iter()
                                .map(|a| format!(" {}={}", a.name, a.value()))
                                .collect()
                        })
                        .unwrap_or_else(|p| vec![format!(" !{}", p.0)]);
                    out.push(format!(
                        "<{}{:?}{}{}>",
                        s.name,
                        s.ns,
                        attrs.concat(),
                        if s.empty { "/" } else { "" }
                    ));
                }
                Ok(Token::End { local }) => out.push(format!("</{local}>")),
                Ok(Token::Text(t)) => out.push(match t.problem {
                    Some(p) => format!("text!{:?}", p.kind),
                    None => format!("text({})", t.raw),
                }),
                Ok(Token::CData { raw, .. }) => out.push(format!("cdata({raw})")),
                Ok(Token::Comment) => out.push("comment".into()),
                Ok(Token::Pi) => out.push("pi".into()),
                Ok(Token::Decl { encoding, .. }) => out.push(format!("decl({encoding:?})")),
                Ok(Token::DocType { .. }) => {
                    out.push("doctype".into());
                    return out;
                }
                Err(e) => {
                    out.push(format!("!{} {:?}", e.pos, e.kind));
                    return out;
                }
            }
        }
    }

    fn fails(text: &str) -> String {
        let t = tokens(text);
        let last = t.last().cloned().unwrap_or_default();
        assert!(last.starts_with('!'), "accepted {text:?}: {t:?}");
        last
    }

    #[test]
    fn tokens_with_namespaces() {
        assert_eq!(
            tokens(
                "<?xml version=\"1.0\" encoding='UTF-8'?><!--c--><a xmlns=\"http://hl7.org/fhir\" x:y='1' xmlns:x=\"urn:x\"><b v=\"&lt;&#x41;&#66;\r\n\t\"/>\n<?pi x?><h:p xmlns:h=\"http://www.w3.org/1999/xhtml\">t &amp; <![CDATA[<]]></h:p></a>"
            ),
            [
                "decl(Some(\"UTF-8\"))",
                "comment",
                "<aFhir xmlns=http://hl7.org/fhir x:y=1 xmlns:x=urn:x>",
                "<bFhir v=<AB  />",
                "text(\n)",
                "pi",
                "<h:pXhtml xmlns:h=http://www.w3.org/1999/xhtml>",
                "text(t &amp; )",
                "cdata(<)",
                "</p>",
                "</a>",
            ]
        );
        // scopes end with their element, empty or not
        assert_eq!(
            tokens("<a><b xmlns=\"http://hl7.org/fhir\"/><c/><d xmlns:p=\"urn:p\"></d><p:e/></a>")
                [5],
            "<p:eUndeclared/>"
        );
        assert_eq!(
            tokens("<a xmlns=\"urn:a\"><b xmlns=\"\"/></a>")[1],
            "<bNone xmlns=/>"
        );
        assert!(
            tokens("<a b=\"&xxe;\"/>")[0].contains("!the entity reference `&xxe;`"),
            "reported with the element"
        );
        assert_eq!(
            tokens("<a>&xxe;</a>")[1],
            "text!Forbidden(\"the entity reference `&xxe;`\")"
        );
        assert!(tokens("<a>]]></a>")[1].starts_with("text!Syntax"));
        assert!(tokens("<a>&#0;</a>")[1].starts_with("text!Syntax"));
        assert!(tokens("<a>\u{1}</a>")[1].starts_with("text!Syntax"));
        assert_eq!(
            tokens("<é:ü xmlns:é=\"urn:x\"/>")[0],
            "<é:üOther xmlns:é=urn:x/>"
        );
    }

    #[test]
    fn refuses_what_is_not_well_formed() {
        for bad in [
            "<a></b>",
            "<a>",
            "</a>",
            "<a b='1' b='2'/>",
            "<a p:b='1' q:b='2' xmlns:p='urn:x' xmlns:q='urn:x'/>",
            "<a b='1'c='2'/>",
            "<a b=1/>",
            "<a b='<'/>",
            "<a b='&'/>",
            "<a b='&#xD800;'/>",
            "<a b='&#1;'/>",
            "<a b='\u{1}'/>",
            "<a b='\u{FFFE}'/>",
            "<a b",
            "<a b='x",
            "<1a/>",
            "<a:/>",
            "<:a/>",
            "<a:b:c/>",
            "<a:1b xmlns:a='urn:a'/>",
            "<a xmlns:p=''/>",
            "<a xmlns:xml='urn:x'/>",
            "<a xmlns:xmlns='urn:x'/>",
            "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            "<a/ >",
            "<a><!-- a -- b --></a>",
            "<a><!-- a ---></a>",
            "<a><!-- a",
            "<a><![CDATA[x</a>",
            "<a><!ELEMENT x></a>",
            "<a><?xml version='1.0'?></a>",
            " <?xml version='1.0'?><a/>",
            "<?xml?><a/>",
            "<?xml version='2.0'?><a/>",
            "<?xml encoding='UTF-8' version='1.0'?><a/>",
            "<?xml version='1.0' standalone='maybe'?><a/>",
            "<?xml version='1.0'encoding='UTF-8'?><a/>",
            "<a><?p:q x?></a>",
            "<a><?pi x</a>",
            "<a><?pix\u{1}?></a>",
            "<a><!--\u{1}--></a>",
            "<![CDATA[x]]><a/>",
        ] {
            fails(bad);
        }
        // a prefixed attribute needs its prefix declared only to be used: the reader refuses
        // attributes it does not know anyway, so the lexer reports the namespace as undeclared
        assert_eq!(tokens("<a><!DOCTYPE a></a>").last().unwrap(), "doctype");
    }

    #[test]
    fn attribute_values_are_normalized() {
        assert_eq!(decode_attr("a\r\nb\tc\rd\ne"), "a b c d e");
        assert_eq!(decode_attr("&#10;&#x9;&quot;&apos;&gt;"), "\n\t\"'>");
        assert_eq!(decode_attr("é&amp;😀"), "é&😀");
    }
}
