//! The part of FHIRPath that search-parameter expressions use: paths, unions, parentheses,
//! `where(resolve() is T)`, `where(field = 'literal')`, `ofType(T)`, `as T`. Evaluation is
//! typed by the base model so that choice elements (`occurrence` → `occurrencePeriod`) and
//! `ofType` work. Anything else is refused when the registry loads, never at request time.

use serde_json::Value;

use crate::fhir::model::{Model, TypeDef};

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Union(Vec<Expr>),
    Path { start: Start, steps: Vec<Step> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// `Task…`: the resource itself, which must be of that type.
    Type(String),
    Group(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Child(String),
    WhereResolveIs(String),
    WhereEquals(String, String),
    OfType(String),
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported FHIRPath `{expr}`: {message}")]
pub struct ParseError {
    pub expr: String,
    pub message: String,
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Tok>,
    pos: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Sym(char),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c == '\'' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            if i == chars.len() {
                return Err("unterminated string".into());
            }
            out.push(Tok::Str(chars[start..i].iter().collect()));
            i += 1;
        } else if "().|=".contains(c) {
            out.push(Tok::Sym(c));
            i += 1;
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
    Ok(out)
}

impl Parser<'_> {
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            expr: self.src.to_owned(),
            message: message.into(),
        })
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect_sym(&mut self, c: char) -> Result<(), ParseError> {
        match self.next() {
            Some(Tok::Sym(s)) if s == c => Ok(()),
            other => self.fail(format!("expected `{c}`, found {other:?}")),
        }
    }
    fn ident(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            other => self.fail(format!("expected a name, found {other:?}")),
        }
    }

    fn union(&mut self) -> Result<Expr, ParseError> {
        let mut parts = vec![self.path()?];
        while self.peek() == Some(&Tok::Sym('|')) {
            self.pos += 1;
            parts.push(self.path()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Union(parts)
        })
    }

    fn path(&mut self) -> Result<Expr, ParseError> {
        let start = match self.next() {
            Some(Tok::Sym('(')) => {
                let inner = self.union()?;
                self.expect_sym(')')?;
                Start::Group(Box::new(inner))
            }
            Some(Tok::Ident(t)) if t.starts_with(char::is_uppercase) => Start::Type(t),
            other => return self.fail(format!("expected a type name or `(`, found {other:?}")),
        };
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Sym('.')) => {
                    self.pos += 1;
                    let name = self.ident()?;
                    if self.peek() == Some(&Tok::Sym('(')) {
                        self.pos += 1;
                        steps.push(self.function(&name)?);
                        self.expect_sym(')')?;
                    } else {
                        steps.push(Step::Child(name));
                    }
                }
                Some(Tok::Ident(kw)) if kw == "as" => {
                    self.pos += 1;
                    steps.push(Step::OfType(self.ident()?));
                }
                _ => break,
            }
        }
        Ok(Expr::Path { start, steps })
    }

    fn function(&mut self, name: &str) -> Result<Step, ParseError> {
        match name {
            "ofType" | "as" => Ok(Step::OfType(self.ident()?)),
            "where" => {
                let first = self.ident()?;
                if first == "resolve" {
                    self.expect_sym('(')?;
                    self.expect_sym(')')?;
                    match self.next() {
                        Some(Tok::Ident(kw)) if kw == "is" => {}
                        other => return self.fail(format!("expected `is`, found {other:?}")),
                    }
                    Ok(Step::WhereResolveIs(self.ident()?))
                } else {
                    self.expect_sym('=')?;
                    match self.next() {
                        Some(Tok::Str(lit)) => Ok(Step::WhereEquals(first, lit)),
                        other => self.fail(format!("expected a string, found {other:?}")),
                    }
                }
            }
            other => self.fail(format!("function `{other}` is not supported")),
        }
    }
}

pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src).map_err(|message| ParseError {
        expr: src.to_owned(),
        message,
    })?;
    let mut p = Parser { src, toks, pos: 0 };
    let e = p.union()?;
    if p.pos != p.toks.len() {
        return p.fail("trailing input");
    }
    Ok(e)
}

/// A value reached by evaluation, with its FHIR type.
#[derive(Debug, Clone, Copy)]
pub struct Node<'v, 'm> {
    pub value: &'v Value,
    pub ty: &'m str,
}

/// Evaluates `expr` on a resource of type `rtype`.
pub fn evaluate<'v, 'm>(
    model: &'m Model,
    expr: &Expr,
    rtype: &'m str,
    resource: &'v Value,
) -> Vec<Node<'v, 'm>> {
    let mut out = Vec::new();
    eval(model, expr, rtype, resource, &mut out);
    out
}

fn eval<'v, 'm>(
    model: &'m Model,
    expr: &Expr,
    rtype: &'m str,
    resource: &'v Value,
    out: &mut Vec<Node<'v, 'm>>,
) {
    match expr {
        Expr::Union(parts) => {
            for p in parts {
                eval(model, p, rtype, resource, out);
            }
        }
        Expr::Path { start, steps } => {
            let mut current = match start {
                Start::Type(t) if t == rtype => vec![Node {
                    value: resource,
                    ty: rtype,
                }],
                // `Resource.meta…` and friends apply to every type.
                Start::Type(t) if t == "Resource" || t == "DomainResource" => vec![Node {
                    value: resource,
                    ty: rtype,
                }],
                Start::Type(_) => return,
                Start::Group(inner) => evaluate(model, inner, rtype, resource),
            };
            for step in steps {
                current = apply(model, step, current);
                if current.is_empty() {
                    return;
                }
            }
            out.extend(current);
        }
    }
}

fn apply<'v, 'm>(model: &'m Model, step: &Step, nodes: Vec<Node<'v, 'm>>) -> Vec<Node<'v, 'm>> {
    let mut out = Vec::new();
    match step {
        Step::Child(name) => {
            for n in nodes {
                let (Some(obj), Some(def)) = (n.value.as_object(), model.get(n.ty)) else {
                    continue;
                };
                children(def, obj, name, &mut out);
            }
        }
        Step::OfType(t) => out.extend(nodes.into_iter().filter(|n| n.ty == t)),
        Step::WhereResolveIs(t) => out.extend(
            nodes
                .into_iter()
                .filter(|n| reference_type(n.value).as_deref() == Some(t.as_str())),
        ),
        Step::WhereEquals(field, lit) => out.extend(
            nodes
                .into_iter()
                .filter(|n| n.value.get(field).and_then(Value::as_str) == Some(lit.as_str())),
        ),
    }
    out
}

fn children<'v, 'm>(
    def: &'m TypeDef,
    obj: &'v serde_json::Map<String, Value>,
    name: &str,
    out: &mut Vec<Node<'v, 'm>>,
) {
    let Some(el) = def.by_name(name) else {
        return;
    };
    let mut push = |value: &'v Value, ty: &'m str| match value {
        Value::Array(items) => out.extend(
            items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| Node { value: v, ty }),
        ),
        v => out.push(Node { value: v, ty }),
    };
    if !el.choice {
        if let (Some(v), Some(ty)) = (obj.get(name), el.types.first()) {
            push(v, ty);
        }
        return;
    }
    for (key, v) in obj {
        if let Some((e, ty)) = def.element(key)
            && std::ptr::eq(e, el)
        {
            push(v, ty);
        }
    }
}

/// The type a Reference points at, from `reference` (`Patient/1`, an absolute URL ending in
/// `Patient/1[/_history/n]`) or else from `type`.
pub fn reference_type(reference: &Value) -> Option<String> {
    if let Some(r) = reference.get("reference").and_then(Value::as_str) {
        return crate::fhir::reference::parse(r).map(|p| p.rtype.to_owned());
    }
    reference
        .get("type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, rtype: &str, r: &Value) -> Vec<(String, Value)> {
        let e = parse(expr).unwrap();
        evaluate(
            Model::r4(),
            &e,
            Box::leak(rtype.to_owned().into_boxed_str()),
            r,
        )
        .into_iter()
        .map(|n| (n.ty.to_owned(), n.value.clone()))
        .collect()
    }

    #[test]
    fn paths_unions_and_where() {
        let t = json!({"resourceType": "Task", "for": {"reference": "Patient/p1"},
            "owner": {"reference": "HealthcareService/h1"}, "requester": {"reference": "Practitioner/x"}});
        assert_eq!(
            values("Task.for.where(resolve() is Patient)", "Task", &t).len(),
            1
        );
        assert_eq!(
            values("Task.owner.where(resolve() is Patient)", "Task", &t).len(),
            0
        );
        assert_eq!(
            values("Task.owner | Task.requester | Patient.name", "Task", &t).len(),
            2
        );
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}]});
        let v = values("Patient.telecom.where(system='email')", "Patient", &p);
        assert_eq!(v[0].1["value"], "a@b");
    }

    #[test]
    fn choices_and_of_type() {
        let sr =
            json!({"resourceType": "ServiceRequest", "occurrencePeriod": {"start": "2026-01-01"}});
        let v = values("ServiceRequest.occurrence", "ServiceRequest", &sr);
        assert_eq!(v[0].0, "Period");
        assert!(
            values(
                "(ServiceRequest.occurrence as dateTime)",
                "ServiceRequest",
                &sr
            )
            .is_empty()
        );
        assert_eq!(
            values(
                "ServiceRequest.occurrence.ofType(Period)",
                "ServiceRequest",
                &sr
            )
            .len(),
            1
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(parse("Patient.deceased.exists() and Patient.deceased != false").is_err());
        assert!(parse("Task.input.value.extension('x')").is_err());
    }
}
