//! The two PATCH formats of FHIR R4 (<https://hl7.org/fhir/R4/http.html#patch>): RFC 6902 JSON
//! Patch ([`json_patch`]) and FHIRPath Patch ([`fhirpath_patch`],
//! <https://hl7.org/fhir/R4/fhirpatch.html>).
//!
//! Both check the whole patch document before touching anything, then apply every operation to
//! a clone of the resource and swap it in only when all succeeded: a failed patch changes
//! nothing. This module only edits JSON; the caller still validates the result and guards `id`
//! and `resourceType`.
//!
//! Errors tell a body that is not a patch at all ([`PatchError::is_malformed`]: 400) from a
//! patch that cannot apply to this resource (422). Operations are numbered from 0, like the
//! entries of the JSON Patch array and of `Parameters.parameter`.

use std::fmt;

use serde_json::{Map, Value};

use crate::fhir::model::{ElementDef, Kind, Model, TypeDef};

/// The operation at fault: its position (from 0), its kind and its path as the client wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpRef {
    pub index: usize,
    /// `add`, `replace`… (empty when the operation does not say).
    pub op: String,
    /// A JSON Pointer or a FHIRPath (empty when the operation does not say).
    pub path: String,
}

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation {}", self.index)?;
        match (self.op.is_empty(), self.path.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => write!(f, " ({})", self.op),
            (true, false) => write!(f, " ({})", self.path),
            (false, false) => write!(f, " ({} {})", self.op, self.path),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not a patch document at all (400).
    #[error("malformed patch: {0}")]
    NotAPatch(String),
    /// One operation is not well formed (400).
    #[error("{at}: {reason}")]
    BadOperation { at: OpRef, reason: String },
    /// The path of a `replace`, `insert`, `move`, `add`, `remove` or `test` matches nothing (422).
    #[error("{at}: path matches nothing")]
    NotFound { at: OpRef },
    /// FHIRPath Patch operates on exactly one element (422).
    #[error("{at}: path matches {count} elements, expected one")]
    MultipleMatches { at: OpRef, count: usize },
    /// A JSON Patch `test` found a different value (422).
    #[error("{at}: test failed, the value differs")]
    TestFailed { at: OpRef },
    /// Any other reason the operation cannot apply to this resource (422).
    #[error("{at}: {reason}")]
    CannotApply { at: OpRef, reason: String },
}

impl PatchError {
    /// The client did not send a usable patch document (400), as opposed to a patch that does
    /// not fit this resource (422).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            PatchError::NotAPatch(_) | PatchError::BadOperation { .. }
        )
    }

    /// The failing operation, when one is to blame.
    pub fn operation(&self) -> Option<&OpRef> {
        match self {
            PatchError::NotAPatch(_) => None,
            PatchError::BadOperation { at, .. }
            | PatchError::NotFound { at }
            | PatchError::MultipleMatches { at, .. }
            | PatchError::TestFailed { at }
            | PatchError::CannotApply { at, .. } => Some(at),
        }
    }
}

/// Why one operation failed, before it is tied to its [`OpRef`].
#[derive(Debug)]
enum Fail {
    Malformed(String),
    NotFound,
    Multiple(usize),
    TestFailed,
    Cannot(String),
}

impl Fail {
    fn at(self, at: OpRef) -> PatchError {
        match self {
            Fail::Malformed(reason) => PatchError::BadOperation { at, reason },
            Fail::NotFound => PatchError::NotFound { at },
            Fail::Multiple(count) => PatchError::MultipleMatches { at, count },
            Fail::TestFailed => PatchError::TestFailed { at },
            Fail::Cannot(reason) => PatchError::CannotApply { at, reason },
        }
    }
}

fn cannot<T>(reason: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Cannot(reason.into()))
}

// ---------------------------------------------------------------------------------------------
// JSON Patch (RFC 6902) and JSON Pointer (RFC 6901)
// ---------------------------------------------------------------------------------------------

/// Applies an RFC 6902 JSON Patch to `doc`, all or nothing.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Some(ops) = patch.as_array() else {
        return Err(PatchError::NotAPatch(
            "a JSON Patch is a JSON array of operations".into(),
        ));
    };
    // Read every operation first: a malformed document is a 400 whatever the resource holds.
    let ops = ops
        .iter()
        .enumerate()
        .map(|(i, op)| JsonOp::parse(i, op))
        .collect::<Result<Vec<_>, _>>()?;
    let mut work = doc.clone();
    for op in &ops {
        op.apply(&mut work).map_err(|f| f.at(op.at.clone()))?;
    }
    *doc = work;
    Ok(())
}

struct JsonOp<'p> {
    at: OpRef,
    kind: JsonKind<'p>,
}

enum JsonKind<'p> {
    Add(Vec<String>, &'p Value),
    Remove(Vec<String>),
    Replace(Vec<String>, &'p Value),
    Move {
        from: Vec<String>,
        path: Vec<String>,
    },
    Copy {
        from: Vec<String>,
        path: Vec<String>,
    },
    Test(Vec<String>, &'p Value),
}

impl<'p> JsonOp<'p> {
    fn parse(index: usize, op: &'p Value) -> Result<JsonOp<'p>, PatchError> {
        let mut at = OpRef {
            index,
            ..OpRef::default()
        };
        let bad = |at: &OpRef, reason: String| PatchError::BadOperation {
            at: at.clone(),
            reason,
        };
        let Some(obj) = op.as_object() else {
            return Err(bad(&at, "an operation is a JSON object".into()));
        };
        let member = |at: &OpRef, name: &str| match obj.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(bad(at, format!("`{name}` must be a string"))),
            None => Err(bad(at, format!("missing `{name}`"))),
        };
        at.op = member(&at, "op")?.to_owned();
        at.path = member(&at, "path")?.to_owned();
        let path = parse_pointer(&at.path).map_err(|r| bad(&at, r))?;
        // `value` may be null, so presence is what counts.
        let value = |at: &OpRef| {
            obj.get("value")
                .ok_or_else(|| bad(at, "missing `value`".into()))
        };
        let from = |at: &OpRef| {
            let text = member(at, "from")?;
            parse_pointer(text).map_err(|r| bad(at, format!("`from`: {r}")))
        };
        let kind = match at.op.as_str() {
            "add" => JsonKind::Add(path, value(&at)?),
            "remove" => JsonKind::Remove(path),
            "replace" => JsonKind::Replace(path, value(&at)?),
            "test" => JsonKind::Test(path, value(&at)?),
            "copy" => JsonKind::Copy {
                from: from(&at)?,
                path,
            },
            "move" => {
                let from = from(&at)?;
                // RFC 6902 §4.4: a value cannot move into one of its own children.
                if path.len() > from.len() && path.starts_with(&from) {
                    return Err(bad(
                        &at,
                        "cannot move a value into one of its own children".into(),
                    ));
                }
                JsonKind::Move { from, path }
            }
            other => return Err(bad(&at, format!("unknown op `{other}`"))),
        };
        Ok(JsonOp { at, kind })
    }

    fn apply(&self, doc: &mut Value) -> Result<(), Fail> {
        match &self.kind {
            JsonKind::Add(path, value) => pointer_add(doc, path, (*value).clone()),
            JsonKind::Remove(path) => pointer_remove(doc, path).map(drop),
            JsonKind::Replace(path, value) => {
                let target = pointer_mut(doc, path).ok_or(Fail::NotFound)?;
                *target = (*value).clone();
                Ok(())
            }
            JsonKind::Move { from, path } => {
                if from == path {
                    // A no-op, but `from` must still exist.
                    return match pointer(doc, from) {
                        Some(_) => Ok(()),
                        None => cannot("`from` matches nothing"),
                    };
                }
                let value = pointer_remove(doc, from).map_err(|f| match f {
                    Fail::NotFound => Fail::Cannot("`from` matches nothing".into()),
                    Fail::Cannot(r) => Fail::Cannot(format!("`from`: {r}")),
                    other => other,
                })?;
                pointer_add(doc, path, value)
            }
            JsonKind::Copy { from, path } => {
                let value = pointer(doc, from)
                    .cloned()
                    .ok_or_else(|| Fail::Cannot("`from` matches nothing".into()))?;
                pointer_add(doc, path, value)
            }
            JsonKind::Test(path, expected) => {
                let actual = pointer(doc, path).ok_or(Fail::NotFound)?;
                if json_eq(actual, expected) {
                    Ok(())
                } else {
                    Err(Fail::TestFailed)
                }
            }
        }
    }
}

/// Splits a JSON Pointer into its unescaped reference tokens (`""` is the whole document).
fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "`{text}` is not a JSON Pointer: it must be empty or start with `/`"
        ));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => {
                        return Err(format!(
                            "`{text}` is not a JSON Pointer: `~` must be followed by 0 or 1"
                        ));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

enum ArrayIndex {
    At(usize),
    /// `-`: just past the last element.
    End,
}

/// RFC 6901 array indexes: `0` or digits without a leading zero, or `-`.
fn array_index(token: &str) -> Result<ArrayIndex, Fail> {
    if token == "-" {
        return Ok(ArrayIndex::End);
    }
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return cannot(format!("`{token}` is not an array index"));
    }
    token
        .parse()
        .map(ArrayIndex::At)
        .or_else(|_| cannot(format!("array index {token} is out of range")))
}

fn pointer<'a>(mut v: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    for t in tokens {
        v = match v {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => match array_index(t) {
                Ok(ArrayIndex::At(i)) => a.get(i)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(v)
}

fn pointer_mut<'a>(mut v: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    for t in tokens {
        v = match v {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => match array_index(t) {
                Ok(ArrayIndex::At(i)) => a.get_mut(i)?,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(v)
}

fn pointer_add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), Fail> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match pointer_mut(doc, parent) {
        // `insert` keeps an existing member's position, which is what replacing it means.
        Some(Value::Object(m)) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(a)) => match array_index(last)? {
            ArrayIndex::End => {
                a.push(value);
                Ok(())
            }
            ArrayIndex::At(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            ArrayIndex::At(i) => cannot(format!(
                "index {i} is past the end of the array ({} items)",
                a.len()
            )),
        },
        Some(_) => cannot("the parent of the target is neither an object nor an array"),
        None => cannot("the parent of the target does not exist"),
    }
}

fn pointer_remove(doc: &mut Value, tokens: &[String]) -> Result<Value, Fail> {
    let Some((last, parent)) = tokens.split_last() else {
        return cannot("cannot remove the whole document");
    };
    match pointer_mut(doc, parent) {
        // `shift_remove` keeps the order of the remaining members (plain `remove` swaps).
        Some(Value::Object(m)) => m.shift_remove(last).ok_or(Fail::NotFound),
        Some(Value::Array(a)) => match array_index(last)? {
            ArrayIndex::At(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(Fail::NotFound),
        },
        _ => Err(Fail::NotFound),
    }
}

/// JSON equality where numbers compare by value (`4.5` equals `4.50`, `1e2` equals `100`):
/// with `arbitrary_precision`, `Number`'s own `==` compares the literal text.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_eq(&x.to_string(), &y.to_string()),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| json_eq(xv, yv)))
        }
        _ => a == b,
    }
}

fn numbers_eq(a: &str, b: &str) -> bool {
    match (decimal_key(a), decimal_key(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A JSON number literal as (negative, significant digits, exponent) with no leading or
/// trailing zeros, so that equal values have equal keys whatever their precision.
fn decimal_key(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        // Zero, whatever its sign or precision.
        return Some((false, String::new(), 0));
    }
    let trimmed = significant.trim_end_matches('0');
    let shift = i64::try_from(significant.len() - trimmed.len()).ok()?;
    let frac_len = i64::try_from(frac.len()).ok()?;
    let exp = exp.checked_sub(frac_len)?.checked_add(shift)?;
    Some((negative, trimmed.to_owned(), exp))
}

// ---------------------------------------------------------------------------------------------
// FHIRPath Patch
// ---------------------------------------------------------------------------------------------

/// Applies a FHIRPath Patch (a `Parameters` resource) to the resource `doc`, all or nothing.
pub fn fhirpath_patch(model: &Model, doc: &mut Value, params: &Value) -> Result<(), PatchError> {
    if params.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(PatchError::NotAPatch(
            "a FHIRPath Patch is a Parameters resource".into(),
        ));
    }
    let empty: &[Value] = &[];
    let list = match params.get("parameter") {
        None => empty,
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => {
            return Err(PatchError::NotAPatch(
                "`Parameters.parameter` must be an array".into(),
            ));
        }
    };
    let ops = list
        .iter()
        .enumerate()
        .map(|(i, p)| FpOp::parse(model, i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut work = doc.clone();
    for op in &ops {
        op.apply(model, &mut work)
            .map_err(|f| f.at(op.at.clone()))?;
    }
    *doc = work;
    Ok(())
}

struct FpOp<'p> {
    at: OpRef,
    path: FpPath,
    kind: FpKind<'p>,
}

enum FpKind<'p> {
    Add { name: &'p str, value: ValueSpec<'p> },
    Insert { index: usize, value: ValueSpec<'p> },
    Delete,
    Replace { value: ValueSpec<'p> },
    Move { source: usize, destination: usize },
}

/// A `value` part as the client gave it; it becomes JSON once the target type is known.
enum ValueSpec<'p> {
    /// `valueString`, `valueCodeableConcept`…: `suffix` is `String`, `ty` the FHIR type `string`.
    Typed {
        suffix: &'p str,
        ty: String,
        json: &'p Value,
    },
    /// A whole resource (for `contained` and the like).
    Resource(&'p Value),
    /// Nested parts, one per element, for types value[x] cannot carry (backbone elements).
    Parts(&'p [Value]),
}

const PART_NAMES: [&str; 7] = [
    "type",
    "path",
    "name",
    "value",
    "index",
    "source",
    "destination",
];

impl<'p> FpOp<'p> {
    fn parse(model: &Model, index: usize, param: &'p Value) -> Result<FpOp<'p>, PatchError> {
        let mut at = OpRef {
            index,
            ..OpRef::default()
        };
        let bad = |at: &OpRef, reason: String| PatchError::BadOperation {
            at: at.clone(),
            reason,
        };
        let Some(obj) = param.as_object() else {
            return Err(bad(&at, "a parameter is a JSON object".into()));
        };
        match obj.get("name").and_then(Value::as_str) {
            Some("operation") => {}
            Some(other) => {
                return Err(bad(&at, format!("parameter `{other}` is not an operation")));
            }
            None => return Err(bad(&at, "a parameter needs a name".into())),
        }
        let Some(list) = obj.get("part").and_then(Value::as_array) else {
            return Err(bad(
                &at,
                "an operation carries its arguments in `part`".into(),
            ));
        };
        let mut parts: [Option<&'p Map<String, Value>>; 7] = [None; 7];
        for part in list {
            let p = part
                .as_object()
                .ok_or_else(|| bad(&at, "a part is a JSON object".into()))?;
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&at, "a part needs a name".into()))?;
            let slot = PART_NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| bad(&at, format!("unknown part `{name}`")))?;
            if parts[slot].replace(p).is_some() {
                return Err(bad(&at, format!("part `{name}` is given twice")));
            }
        }
        let [ty, path, name, value, idx, source, destination] = parts;

        // The path and the type first, so that later messages can name them.
        if let Some(p) = path {
            at.path = part_string(p)
                .ok_or_else(|| bad(&at, "`path` must be a string".into()))?
                .to_owned();
        }
        let Some(ty) = ty else {
            return Err(bad(&at, "missing part `type`".into()));
        };
        at.op = part_string(ty)
            .ok_or_else(|| bad(&at, "`type` must be a code".into()))?
            .to_owned();
        if path.is_none() {
            return Err(bad(&at, "missing part `path`".into()));
        }
        let fp =
            parse_path(&at.path).map_err(|e| bad(&at, format!("unsupported FHIRPath: {e}")))?;

        let require = |at: &OpRef, part: Option<&'p Map<String, Value>>, name: &str| {
            part.ok_or_else(|| bad(at, format!("`{}` needs part `{name}`", at.op)))
        };
        let integer = |at: &OpRef, part: Option<&'p Map<String, Value>>, name: &str| {
            part_index(require(at, part, name)?)
                .ok_or_else(|| bad(at, format!("`{name}` must be a non-negative integer")))
        };
        let value_of = |at: &OpRef| {
            value_spec(model, require(at, value, "value")?)
                .map_err(|r| bad(at, format!("`value`: {r}")))
        };
        // `insert` and `move` work on a list, which the path must name as a whole.
        let list_path = |at: &OpRef| {
            if matches!(fp.steps.last(), Some(Step::Child(_))) {
                Ok(())
            } else {
                Err(bad(
                    at,
                    format!("`{}` needs the path of a list, ending with its name", at.op),
                ))
            }
        };
        let kind = match at.op.as_str() {
            "add" => FpKind::Add {
                name: part_string(require(&at, name, "name")?)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| bad(&at, "`name` must be a string".into()))?,
                value: value_of(&at)?,
            },
            "insert" => {
                list_path(&at)?;
                FpKind::Insert {
                    index: integer(&at, idx, "index")?,
                    value: value_of(&at)?,
                }
            }
            "delete" => FpKind::Delete,
            "replace" => FpKind::Replace {
                value: value_of(&at)?,
            },
            "move" => {
                list_path(&at)?;
                FpKind::Move {
                    source: integer(&at, source, "source")?,
                    destination: integer(&at, destination, "destination")?,
                }
            }
            other => {
                return Err(bad(
                    &at,
                    format!(
                        "unknown operation type `{other}` (add | insert | delete | replace | move)"
                    ),
                ));
            }
        };
        Ok(FpOp { at, path: fp, kind })
    }

    fn apply(&self, model: &Model, doc: &mut Value) -> Result<(), Fail> {
        let nodes = evaluate(model, doc, &self.path)?;
        match &self.kind {
            FpKind::Add { name, value } => add_element(model, doc, one(nodes)?, name, value),
            FpKind::Insert { index, value } => {
                let (list, el) = one_list(&nodes)?;
                let value = materialize(model, value, declared_type(el), &el.name)?;
                let items = at_mut(doc, &list)
                    .and_then(Value::as_array_mut)
                    .ok_or(Fail::NotFound)?;
                if *index > items.len() {
                    return cannot(format!(
                        "index {index} is past the end of the list ({} items)",
                        items.len()
                    ));
                }
                items.insert(*index, value);
                if let Some(shadow) = shadow_mut(doc, &list)
                    && *index <= shadow.len()
                {
                    shadow.insert(*index, Value::Null);
                }
                Ok(())
            }
            FpKind::Delete => match nodes.len() {
                0 => Ok(()),
                1 => delete_node(doc, &nodes[0].loc),
                n => Err(Fail::Multiple(n)),
            },
            FpKind::Replace { value } => replace_node(model, doc, one(nodes)?, value),
            FpKind::Move {
                source,
                destination,
            } => {
                let (list, _) = one_list(&nodes)?;
                let items = at_mut(doc, &list)
                    .and_then(Value::as_array_mut)
                    .ok_or(Fail::NotFound)?;
                let len = items.len();
                if *source >= len || *destination >= len {
                    return cannot(format!(
                        "source {source} and destination {destination} must be below the \
                         length of the list ({len})"
                    ));
                }
                let item = items.remove(*source);
                items.insert(*destination, item);
                if let Some(shadow) = shadow_mut(doc, &list)
                    && shadow.len() == len
                {
                    let ext = shadow.remove(*source);
                    shadow.insert(*destination, ext);
                }
                Ok(())
            }
        }
    }
}

/// The string a part carries in its value[x] (`valueCode`, `valueString`…).
fn part_string(part: &Map<String, Value>) -> Option<&str> {
    part_primitive(part)?.as_str()
}

fn part_index(part: &Map<String, Value>) -> Option<usize> {
    part_primitive(part)?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

fn part_primitive(part: &Map<String, Value>) -> Option<&Value> {
    part.iter()
        .find(|(k, _)| value_suffix(k).is_some())
        .map(|(_, v)| v)
}

/// `String` for `valueString`; `None` for `value`, `_valueString` or `valueset`.
fn value_suffix(key: &str) -> Option<&str> {
    key.strip_prefix("value")
        .filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The FHIR type a value[x] suffix names: `string` for `String`, `HumanName` for `HumanName`.
fn fhir_type(model: &Model, suffix: &str) -> Option<String> {
    let mut chars = suffix.chars();
    let first = chars.next()?;
    let lower = format!("{}{}", first.to_ascii_lowercase(), chars.as_str());
    if model.is_primitive(&lower) {
        Some(lower)
    } else if model
        .get(suffix)
        .is_some_and(|t| t.kind == Kind::ComplexType && !t.is_abstract)
    {
        Some(suffix.to_owned())
    } else {
        None
    }
}

/// Which JSON kind a primitive type takes.
fn json_kind(ty: &str) -> &'static str {
    match ty {
        "boolean" => "boolean",
        "integer" | "decimal" | "positiveInt" | "unsignedInt" => "number",
        _ => "string",
    }
}

fn has_json_kind(v: &Value, kind: &str) -> bool {
    match kind {
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        _ => v.is_string(),
    }
}

/// Reads and checks a part's value (recursively for nested parts).
fn value_spec<'p>(model: &Model, part: &'p Map<String, Value>) -> Result<ValueSpec<'p>, String> {
    let mut found = Vec::new();
    for (key, v) in part {
        if let Some(suffix) = value_suffix(key) {
            let ty = fhir_type(model, suffix)
                .ok_or_else(|| format!("`{key}` does not name a FHIR data type"))?;
            if model.is_primitive(&ty) {
                let kind = json_kind(&ty);
                if !has_json_kind(v, kind) {
                    return Err(format!("`{key}` must be a JSON {kind}"));
                }
            } else if !v.is_object() {
                return Err(format!("`{key}` must be a JSON object"));
            }
            found.push(ValueSpec::Typed {
                suffix,
                ty,
                json: v,
            });
        } else if key == "resource" {
            if v.get("resourceType").and_then(Value::as_str).is_none() {
                return Err("`resource` must be a resource with a resourceType".into());
            }
            found.push(ValueSpec::Resource(v));
        } else if key == "part" {
            let nested = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or("`part` must be a non-empty array")?;
            for p in nested {
                let obj = p.as_object().ok_or("a part is a JSON object")?;
                let name = obj
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or("a part needs a name")?;
                value_spec(model, obj).map_err(|r| format!("part `{name}`: {r}"))?;
            }
            found.push(ValueSpec::Parts(nested));
        }
    }
    match found.len() {
        0 => Err("no value: give a value[x], a resource or parts".into()),
        1 => found.pop().ok_or_else(String::new),
        _ => Err("give only one of value[x], resource or part".into()),
    }
}

// --- FHIRPath: the subset that names elements ------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct FpPath {
    /// `Patient` in `Patient.name`; `None` when the path starts at an element name.
    start: Option<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Child(String),
    Index(usize),
    First,
    Last,
    /// `where(a.b = literal)`.
    Where(Vec<String>, Literal),
    OfType(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    /// The literal's text, compared by value.
    Num(String),
}

impl Literal {
    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Literal::Str(s), Value::String(x)) => s == x,
            (Literal::Bool(b), Value::Bool(x)) => b == x,
            (Literal::Num(n), Value::Number(x)) => numbers_eq(n, &x.to_string()),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(char),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
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
        } else if c == '`' {
            // A delimited identifier, for element names that are also keywords.
            let start = i + 1;
            let end = chars[start..]
                .iter()
                .position(|&c| c == '`')
                .ok_or("unterminated `identifier`")?;
            out.push(Tok::Ident(chars[start..start + end].iter().collect()));
            i = start + end + 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string".into()),
                    Some('\'') => break,
                    Some('\\') => {
                        let escaped = chars.get(i + 1).ok_or("unterminated string")?;
                        i += 2;
                        match escaped {
                            'n' => s.push('\n'),
                            'r' => s.push('\r'),
                            't' => s.push('\t'),
                            'f' => s.push('\u{c}'),
                            'u' => {
                                let hex: String =
                                    chars.get(i..i + 4).unwrap_or(&[]).iter().collect();
                                let code = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .filter(|_| hex.len() == 4)
                                    .and_then(char::from_u32)
                                    .ok_or("bad \\u escape")?;
                                s.push(code);
                                i += 4;
                            }
                            other => s.push(*other),
                        }
                    }
                    Some(&c) => {
                        s.push(c);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
            i += 1;
        } else if ".()[]=".contains(c) {
            out.push(Tok::Sym(c));
            i += 1;
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn peek_is(&self, c: char) -> bool {
        self.toks.get(self.pos) == Some(&Tok::Sym(c))
    }
    fn sym(&mut self, c: char) -> Result<(), String> {
        match self.next() {
            Some(Tok::Sym(s)) if s == c => Ok(()),
            other => Err(format!(
                "expected `{c}`, found {}",
                describe(other.as_ref())
            )),
        }
    }
    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            other => Err(format!(
                "expected a name, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn function(&mut self, name: &str) -> Result<Step, String> {
        let step = match name {
            "first" => Step::First,
            "last" => Step::Last,
            "ofType" => Step::OfType(self.ident()?),
            "where" => {
                let mut field = vec![self.ident()?];
                while self.peek_is('.') {
                    self.pos += 1;
                    field.push(self.ident()?);
                }
                self.sym('=')?;
                let literal = match self.next() {
                    Some(Tok::Str(s)) => Literal::Str(s),
                    Some(Tok::Num(n)) => Literal::Num(n),
                    Some(Tok::Ident(b)) if b == "true" || b == "false" => {
                        Literal::Bool(b == "true")
                    }
                    other => {
                        return Err(format!(
                            "expected a literal, found {}",
                            describe(other.as_ref())
                        ));
                    }
                };
                Step::Where(field, literal)
            }
            other => return Err(format!("function `{other}()` is not supported")),
        };
        self.sym(')')?;
        Ok(step)
    }
}

fn describe(t: Option<&Tok>) -> String {
    match t {
        None => "the end".into(),
        Some(Tok::Ident(s)) => format!("`{s}`"),
        Some(Tok::Str(s)) => format!("'{s}'"),
        Some(Tok::Num(n)) => n.clone(),
        Some(Tok::Sym(c)) => format!("`{c}`"),
    }
}

/// Parses `Type(.name | [n] | .where(a='x') | .first() | .last() | .ofType(T))*`.
fn parse_path(src: &str) -> Result<FpPath, String> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let mut steps = Vec::new();
    let start = match p.next() {
        Some(Tok::Ident(t)) if t.starts_with(|c: char| c.is_uppercase()) => Some(t),
        Some(Tok::Ident(name)) => {
            steps.push(Step::Child(name));
            None
        }
        other => {
            return Err(format!(
                "expected a resource type, found {}",
                describe(other.as_ref())
            ));
        }
    };
    while let Some(tok) = p.next() {
        match tok {
            Tok::Sym('.') => {
                let name = p.ident()?;
                if p.peek_is('(') {
                    p.pos += 1;
                    steps.push(p.function(&name)?);
                } else {
                    steps.push(Step::Child(name));
                }
            }
            Tok::Sym('[') => {
                let index = match p.next() {
                    Some(Tok::Num(n)) => n.parse().map_err(|_| format!("bad index `{n}`"))?,
                    other => {
                        return Err(format!(
                            "expected an index, found {}",
                            describe(other.as_ref())
                        ));
                    }
                };
                p.sym(']')?;
                steps.push(Step::Index(index));
            }
            other => return Err(format!("unexpected {}", describe(Some(&other)))),
        }
    }
    Ok(FpPath { start, steps })
}

// --- Evaluation to locations ------------------------------------------------------------------

/// One step of a location in the JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// An element the path reached: where it is, its FHIR type, and its definition (none for the
/// resource itself).
struct Node<'m> {
    loc: Vec<Seg>,
    ty: String,
    el: Option<&'m ElementDef>,
}

fn at<'a>(mut v: &'a Value, loc: &[Seg]) -> Option<&'a Value> {
    for s in loc {
        v = match s {
            Seg::Key(k) => v.as_object()?.get(k)?,
            Seg::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

fn at_mut<'a>(mut v: &'a mut Value, loc: &[Seg]) -> Option<&'a mut Value> {
    for s in loc {
        v = match s {
            Seg::Key(k) => v.as_object_mut()?.get_mut(k)?,
            Seg::Index(i) => v.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(v)
}

fn evaluate<'m>(model: &'m Model, doc: &Value, path: &FpPath) -> Result<Vec<Node<'m>>, Fail> {
    let Some(rtype) = doc.get("resourceType").and_then(Value::as_str) else {
        return cannot("the resource has no resourceType");
    };
    if let Some(t) = &path.start
        && t != rtype
        && t != "Resource"
        && t != "DomainResource"
    {
        return cannot(format!(
            "the path is for {t}, but the resource is a {rtype}"
        ));
    }
    let mut nodes = vec![Node {
        loc: Vec::new(),
        ty: rtype.to_owned(),
        el: None,
    }];
    for step in &path.steps {
        nodes = match step {
            Step::Child(name) => {
                let mut out = Vec::new();
                for n in &nodes {
                    children(model, doc, n, name, &mut out)?;
                }
                out
            }
            // Indexing and first()/last() apply to the whole collection, as in FHIRPath.
            Step::Index(i) => nodes.into_iter().nth(*i).into_iter().collect(),
            Step::First => nodes.into_iter().next().into_iter().collect(),
            Step::Last => nodes.into_iter().last().into_iter().collect(),
            Step::Where(field, lit) => nodes
                .into_iter()
                .filter(|n| at(doc, &n.loc).is_some_and(|v| field_matches(v, field, lit)))
                .collect(),
            Step::OfType(t) => nodes.into_iter().filter(|n| n.ty == *t).collect(),
        };
    }
    Ok(nodes)
}

/// The children of `node` named `name`, one node per array item.
fn children<'m>(
    model: &'m Model,
    doc: &Value,
    node: &Node<'m>,
    name: &str,
    out: &mut Vec<Node<'m>>,
) -> Result<(), Fail> {
    // Primitives (JSON scalars) have no children we can address.
    let (Some(obj), Some(td)) = (
        at(doc, &node.loc).and_then(Value::as_object),
        model.get(&node.ty),
    ) else {
        return Ok(());
    };
    // `Observation.value` names the choice; `Observation.valueQuantity` (not FHIRPath, but
    // common) names one of its types.
    let (el, only_key) = match td.by_name(name) {
        Some(el) => (el, None),
        None => match td.element(name) {
            Some((el, _)) => (el, Some(name)),
            None => return cannot(format!("{} has no element `{name}`", td.name)),
        },
    };
    for (key, v) in obj {
        let ty = if el.choice {
            match td.element(key) {
                Some((e, t)) if e.name == el.name && only_key.is_none_or(|k| k == key.as_str()) => {
                    t
                }
                _ => continue,
            }
        } else if key == name {
            declared_type(el)
        } else {
            continue;
        };
        let mut loc = node.loc.clone();
        loc.push(Seg::Key(key.clone()));
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().filter(|(_, v)| !v.is_null()) {
                    let mut loc = loc.clone();
                    loc.push(Seg::Index(i));
                    out.push(Node {
                        loc,
                        ty: concrete_type(ty, item),
                        el: Some(el),
                    });
                }
            }
            v => out.push(Node {
                loc,
                ty: concrete_type(ty, v),
                el: Some(el),
            }),
        }
    }
    Ok(())
}

fn declared_type(el: &ElementDef) -> &str {
    el.types.first().map_or("", String::as_str)
}

/// A `Resource`-typed element (`contained`) is typed by its content.
fn concrete_type(ty: &str, v: &Value) -> String {
    match ty {
        "Resource" | "DomainResource" => v
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or(ty)
            .to_owned(),
        _ => ty.to_owned(),
    }
}

/// `where(a.b = literal)`: some value reached by `field` equals the literal.
fn field_matches(v: &Value, field: &[String], lit: &Literal) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| field_matches(i, field, lit)),
        _ => match field.split_first() {
            None => lit.matches(v),
            Some((f, rest)) => v.get(f).is_some_and(|c| field_matches(c, rest, lit)),
        },
    }
}

fn one(mut nodes: Vec<Node<'_>>) -> Result<Node<'_>, Fail> {
    match nodes.len() {
        0 => Err(Fail::NotFound),
        1 => Ok(nodes.remove(0)),
        n => Err(Fail::Multiple(n)),
    }
}

/// The single JSON array whose items `nodes` are, with the items' definition.
fn one_list<'m>(nodes: &[Node<'m>]) -> Result<(Vec<Seg>, &'m ElementDef), Fail> {
    let mut lists: Vec<&[Seg]> = Vec::new();
    let mut el = None;
    for n in nodes {
        match n.loc.split_last() {
            Some((Seg::Index(_), list)) => {
                if !lists.contains(&list) {
                    lists.push(list);
                }
                el = n.el;
            }
            _ => return cannot("the path names a single element, not a list"),
        }
    }
    match (lists.as_slice(), el) {
        ([list], Some(el)) => Ok((list.to_vec(), el)),
        ([], _) | (_, None) => Err(Fail::NotFound),
        (many, _) => Err(Fail::Multiple(many.len())),
    }
}

// --- The operations ---------------------------------------------------------------------------

/// `add`: a new child `name` of the element at the path.
fn add_element(
    model: &Model,
    doc: &mut Value,
    node: Node<'_>,
    name: &str,
    spec: &ValueSpec<'_>,
) -> Result<(), Fail> {
    let Some(td) = model.get(&node.ty) else {
        return cannot(format!("cannot add `{name}` to a {}", node.ty));
    };
    let (el, key, ty) = new_element(td, name, spec)?;
    let value = materialize(model, spec, &ty, name)?;
    let Some(obj) = at_mut(doc, &node.loc).and_then(Value::as_object_mut) else {
        return cannot(format!("cannot add `{name}` to a {}", node.ty));
    };
    if el.choice && has_choice_value(td, obj, el) {
        return cannot(format!("`{}[x]` already has a value", el.name));
    }
    if !el.many {
        if obj.contains_key(&key) {
            return cannot(format!("`{key}` already exists and does not repeat"));
        }
        insert_ordered(obj, Some(td), key, value);
        return Ok(());
    }
    // A repeating element: append, creating the array when absent.
    let len = match obj.get_mut(&key) {
        Some(Value::Array(items)) => {
            items.push(value);
            items.len() - 1
        }
        Some(_) => return cannot(format!("`{key}` should be an array")),
        None => {
            insert_ordered(obj, Some(td), key, Value::Array(vec![value]));
            return Ok(());
        }
    };
    // Keep a primitive list's `_name` extensions aligned with its values.
    if let Some(Value::Array(shadow)) = obj.get_mut(&format!("_{key}"))
        && shadow.len() == len
    {
        shadow.push(Value::Null);
    }
    Ok(())
}

/// The element `name` of `td` that a new value goes into: its definition, its JSON key
/// (`valueString` for a choice given a `valueString`) and the FHIR type of the value.
fn new_element<'m>(
    td: &'m TypeDef,
    name: &str,
    spec: &ValueSpec<'_>,
) -> Result<(&'m ElementDef, String, String), Fail> {
    match td.by_name(name) {
        Some(el) if el.choice => {
            let ValueSpec::Typed { suffix, ty, .. } = spec else {
                return cannot(format!(
                    "`{name}[x]` needs a value[x] that says which type it is"
                ));
            };
            let key = format!("{name}{suffix}");
            if td.element(&key).is_none_or(|(e, _)| e.name != el.name) {
                return cannot(format!("`{name}[x]` does not allow type {ty}"));
            }
            Ok((el, key, ty.clone()))
        }
        Some(el) => Ok((el, name.to_owned(), declared_type(el).to_owned())),
        // A choice named with its type (`valueString`).
        None => match td.element(name) {
            Some((el, t)) => Ok((el, name.to_owned(), t.to_owned())),
            None => cannot(format!("{} has no element `{name}`", td.name)),
        },
    }
}

fn has_choice_value(td: &TypeDef, obj: &Map<String, Value>, el: &ElementDef) -> bool {
    obj.keys()
        .any(|k| td.element(k).is_some_and(|(e, _)| e.name == el.name))
}

/// The JSON for a value going where a `target` is expected, checking its type.
fn materialize(
    model: &Model,
    spec: &ValueSpec<'_>,
    target: &str,
    name: &str,
) -> Result<Value, Fail> {
    match spec {
        ValueSpec::Typed { ty, json, .. } => {
            if !type_fits(model, target, ty) {
                return cannot(format!("`{name}` is a {target}, not a {ty}"));
            }
            Ok((*json).clone())
        }
        ValueSpec::Resource(v) => {
            let rtype = v.get("resourceType").and_then(Value::as_str).unwrap_or("");
            if !matches!(target, "Resource" | "DomainResource" | "") && target != rtype {
                return cannot(format!("`{name}` is a {target}, not a resource"));
            }
            Ok((*v).clone())
        }
        ValueSpec::Parts(parts) => {
            if model.is_primitive(target) {
                return cannot(format!(
                    "`{name}` is a {target}: give it as a value[x], not as parts"
                ));
            }
            build_object(model, target, parts)
        }
    }
}

/// Whether a value of type `given` may stand where `target` is expected. Primitives only need
/// the same JSON kind (a `valueString` for a `code` is common); their format is the
/// validator's business.
fn type_fits(model: &Model, target: &str, given: &str) -> bool {
    const QUANTITIES: [&str; 7] = [
        "Quantity",
        "Age",
        "Count",
        "Distance",
        "Duration",
        "SimpleQuantity",
        "MoneyQuantity",
    ];
    target.is_empty()
        || target == given
        || (model.is_primitive(target)
            && model.is_primitive(given)
            && json_kind(target) == json_kind(given))
        || (QUANTITIES.contains(&target) && QUANTITIES.contains(&given))
}

/// Builds a complex value of type `ty` from nested parts, one part per element.
fn build_object(model: &Model, ty: &str, parts: &[Value]) -> Result<Value, Fail> {
    let td = model.get(ty);
    let mut obj = Map::new();
    for part in parts {
        // `value_spec` checked the parts' shape when the patch was read.
        let p = part
            .as_object()
            .ok_or_else(|| Fail::Malformed("a part is a JSON object".into()))?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Fail::Malformed("a part needs a name".into()))?;
        let spec = value_spec(model, p).map_err(Fail::Malformed)?;
        let (key, many, child_ty) = match td {
            Some(td) => {
                let (el, key, child_ty) = new_element(td, name, &spec)?;
                if el.choice && has_choice_value(td, &obj, el) {
                    return cannot(format!("`{}[x]` is given twice", el.name));
                }
                (key, el.many, child_ty)
            }
            None => (name.to_owned(), false, String::new()),
        };
        let value = materialize(model, &spec, &child_ty, name)?;
        if many {
            match obj.get_mut(&key) {
                Some(Value::Array(items)) => items.push(value),
                _ => insert_ordered(&mut obj, td, key, Value::Array(vec![value])),
            }
        } else if obj.contains_key(&key) {
            return cannot(format!("`{name}` is given twice but does not repeat"));
        } else {
            insert_ordered(&mut obj, td, key, value);
        }
    }
    Ok(Value::Object(obj))
}

/// Inserts `key` before the first member that comes after it in specification order (or before
/// its own `_key`), so a patched resource reads like one written by hand (`preserve_order`
/// keeps map order).
fn insert_ordered(obj: &mut Map<String, Value>, td: Option<&TypeDef>, key: String, value: Value) {
    let pos = td.and_then(|td| {
        let order = td.order_of(&key)?;
        obj.keys().position(|k| match k.strip_prefix('_') {
            Some(base) => td.order_of(base).is_some_and(|o| o >= order),
            None => td.order_of(k).is_some_and(|o| o > order),
        })
    });
    match pos {
        Some(p) => obj.shift_insert(p, key, value),
        None => obj.insert(key, value),
    };
}

/// The `_name` array holding the extensions of the primitive list at `list`, if any.
fn shadow_mut<'a>(doc: &'a mut Value, list: &[Seg]) -> Option<&'a mut Vec<Value>> {
    let (Seg::Key(k), parent) = list.split_last()? else {
        return None;
    };
    at_mut(doc, parent)?
        .as_object_mut()?
        .get_mut(&format!("_{k}"))?
        .as_array_mut()
}

fn delete_node(doc: &mut Value, loc: &[Seg]) -> Result<(), Fail> {
    let Some((_, parent)) = loc.split_last() else {
        return cannot("cannot delete the resource itself");
    };
    remove_at(doc, loc);
    // FHIR forbids empty arrays and objects: remove the containers the deletion emptied.
    let mut container = parent;
    while let Some((_, up)) = container.split_last() {
        let empty = match at(doc, container) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        };
        if !empty {
            break;
        }
        remove_at(doc, container);
        container = up;
    }
    Ok(())
}

/// Removes the element at `loc` with the extensions of a primitive (`_name`).
fn remove_at(doc: &mut Value, loc: &[Seg]) {
    let Some((last, parent)) = loc.split_last() else {
        return;
    };
    match last {
        Seg::Key(k) => {
            if let Some(obj) = at_mut(doc, parent).and_then(Value::as_object_mut) {
                obj.shift_remove(k);
                obj.shift_remove(&format!("_{k}"));
            }
        }
        Seg::Index(i) => {
            let Some(items) = at_mut(doc, parent).and_then(Value::as_array_mut) else {
                return;
            };
            if *i >= items.len() {
                return;
            }
            items.remove(*i);
            let Some(shadow) = shadow_mut(doc, parent) else {
                return;
            };
            if *i < shadow.len() {
                shadow.remove(*i);
            }
            // Extensions left for no value at all mean the `_name` array can go.
            if shadow.iter().all(Value::is_null)
                && let Some((Seg::Key(k), grand)) = parent.split_last()
                && let Some(obj) = at_mut(doc, grand).and_then(Value::as_object_mut)
            {
                obj.shift_remove(&format!("_{k}"));
            }
        }
    }
}

/// `replace`: a choice takes the new value's type suffix (`valueString` → `valueInteger`).
fn replace_node(
    model: &Model,
    doc: &mut Value,
    node: Node<'_>,
    spec: &ValueSpec<'_>,
) -> Result<(), Fail> {
    let (Some((last, parent)), Some(el)) = (node.loc.split_last(), node.el) else {
        return cannot("cannot replace the resource itself");
    };
    let (new_key, ty) = match spec {
        ValueSpec::Typed { suffix, ty, .. } if el.choice => {
            if !el.types.contains(ty) {
                return cannot(format!("`{}[x]` does not allow type {ty}", el.name));
            }
            (Some(format!("{}{suffix}", el.name)), ty.clone())
        }
        // A choice given as parts keeps its current type.
        _ if el.choice => (None, node.ty.clone()),
        _ => (None, declared_type(el).to_owned()),
    };
    let value = materialize(model, spec, &ty, &el.name)?;
    match last {
        Seg::Index(i) => {
            let slot = at_mut(doc, parent)
                .and_then(Value::as_array_mut)
                .and_then(|items| items.get_mut(*i))
                .ok_or(Fail::NotFound)?;
            *slot = value;
        }
        Seg::Key(k) => {
            let obj = at_mut(doc, parent)
                .and_then(Value::as_object_mut)
                .ok_or(Fail::NotFound)?;
            match new_key {
                Some(nk) if nk != *k => {
                    // Same place, new name; a primitive's extensions follow it.
                    let pos = obj.keys().position(|x| x == k).unwrap_or(obj.len());
                    obj.shift_remove(k);
                    let ext = obj.shift_remove(&format!("_{k}"));
                    let pos = pos.min(obj.len());
                    obj.shift_insert(pos, nk.clone(), value);
                    if let Some(ext) = ext
                        && model.is_primitive(&ty)
                    {
                        obj.shift_insert(pos + 1, format!("_{nk}"), ext);
                    }
                }
                _ => {
                    obj.insert(k.clone(), value);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn patched(doc: &Value, patch: Value) -> Result<Value, PatchError> {
        let mut d = doc.clone();
        json_patch(&mut d, &patch).map(|()| d)
    }

    // --- JSON Patch: RFC 6902 appendix A --------------------------------------------------

    #[test]
    fn rfc6902_examples() {
        // A.1 add an object member
        let d = patched(
            &json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux"}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": "bar", "baz": "qux"}));
        // A.2 add an array element
        let d = patched(
            &json!({"foo": ["bar", "baz"]}),
            json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": ["bar", "qux", "baz"]}));
        // A.3 remove an object member
        let d = patched(
            &json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "remove", "path": "/baz"}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": "bar"}));
        // A.4 remove an array element
        let d = patched(
            &json!({"foo": ["bar", "qux", "baz"]}),
            json!([{"op": "remove", "path": "/foo/1"}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": ["bar", "baz"]}));
        // A.5 replace a value
        let d = patched(
            &json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
        );
        assert_eq!(d.unwrap(), json!({"baz": "boo", "foo": "bar"}));
        // A.6 move a value
        let d = patched(
            &json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
            json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
        );
        assert_eq!(
            d.unwrap(),
            json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}})
        );
        // A.7 move an array element
        let d = patched(
            &json!({"foo": ["all", "grass", "cows", "eat"]}),
            json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": ["all", "cows", "eat", "grass"]}));
        // A.8 test a value: success
        let doc = json!({"baz": "qux", "foo": ["a", 2, "c"]});
        let d = patched(
            &doc,
            json!([
                {"op": "test", "path": "/baz", "value": "qux"},
                {"op": "test", "path": "/foo/1", "value": 2}
            ]),
        );
        assert_eq!(d.unwrap(), doc);
        // A.9 test a value: error
        let e = patched(
            &json!({"baz": "qux"}),
            json!([{"op": "test", "path": "/baz", "value": "bar"}]),
        )
        .unwrap_err();
        assert!(matches!(e, PatchError::TestFailed { .. }));
        assert!(!e.is_malformed());
        // A.10 add a nested member object
        let d = patched(
            &json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/child", "value": {"grandchild": {}}}]),
        );
        assert_eq!(
            d.unwrap(),
            json!({"foo": "bar", "child": {"grandchild": {}}})
        );
        // A.11 ignore unrecognised members
        let d = patched(
            &json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": "bar", "baz": "qux"}));
        // A.12 add to a nonexistent target
        let e = patched(
            &json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "qux"}]),
        )
        .unwrap_err();
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        // A.14 ~ escape ordering
        let doc = json!({"/": 9, "~1": 10});
        assert!(patched(&doc, json!([{"op": "test", "path": "/~01", "value": 10}])).is_ok());
        // A.15 comparing strings and numbers
        let e = patched(&doc, json!([{"op": "test", "path": "/~01", "value": "10"}]));
        assert!(matches!(e, Err(PatchError::TestFailed { .. })));
        // A.16 add an array value
        let d = patched(
            &json!({"foo": ["bar"]}),
            json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]),
        );
        assert_eq!(d.unwrap(), json!({"foo": ["bar", ["abc", "def"]]}));
    }

    #[test]
    fn rfc6901_pointers() {
        let doc = parse(
            r#"{"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4,
                "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8}"#,
        );
        let get = |p: &str| pointer(&doc, &parse_pointer(p).unwrap()).cloned();
        assert_eq!(get(""), Some(doc.clone()));
        assert_eq!(get("/foo"), Some(json!(["bar", "baz"])));
        assert_eq!(get("/foo/0"), Some(json!("bar")));
        assert_eq!(get("/"), Some(json!(0)));
        assert_eq!(get("/a~1b"), Some(json!(1)));
        assert_eq!(get("/c%d"), Some(json!(2)));
        assert_eq!(get("/e^f"), Some(json!(3)));
        assert_eq!(get("/g|h"), Some(json!(4)));
        assert_eq!(get("/i\\j"), Some(json!(5)));
        assert_eq!(get("/k\"l"), Some(json!(6)));
        assert_eq!(get("/ "), Some(json!(7)));
        assert_eq!(get("/m~0n"), Some(json!(8)));
        assert_eq!(get("/foo/01"), None);
        assert_eq!(get("/foo/-"), None);
        assert!(parse_pointer("foo").is_err());
        assert!(parse_pointer("/a~2b").is_err());
        assert!(parse_pointer("/a~").is_err());
    }

    #[test]
    fn array_index_rules() {
        let doc = json!({"a": [1, 2]});
        let add = |path: &str| patched(&doc, json!([{"op": "add", "path": path, "value": 9}]));
        assert_eq!(add("/a/2").unwrap(), json!({"a": [1, 2, 9]}));
        assert_eq!(add("/a/-").unwrap(), json!({"a": [1, 2, 9]}));
        assert_eq!(add("/a/0").unwrap(), json!({"a": [9, 1, 2]}));
        for bad in [
            "/a/3",
            "/a/01",
            "/a/x",
            "/a/-1",
            "/a/99999999999999999999999",
        ] {
            let e = add(bad).unwrap_err();
            assert!(matches!(e, PatchError::CannotApply { .. }), "{bad}: {e}");
        }
        let remove = |path: &str| patched(&doc, json!([{"op": "remove", "path": path}]));
        assert_eq!(remove("/a/1").unwrap(), json!({"a": [1]}));
        assert!(matches!(remove("/a/2"), Err(PatchError::NotFound { .. })));
        assert!(matches!(remove("/a/-"), Err(PatchError::NotFound { .. })));
        assert!(matches!(
            remove("/a/01"),
            Err(PatchError::CannotApply { .. })
        ));
        let replace =
            |path: &str| patched(&doc, json!([{"op": "replace", "path": path, "value": 0}]));
        assert_eq!(replace("/a/0").unwrap(), json!({"a": [0, 2]}));
        assert!(matches!(replace("/a/2"), Err(PatchError::NotFound { .. })));
        assert!(matches!(replace("/a/-"), Err(PatchError::NotFound { .. })));
    }

    #[test]
    fn every_op_and_its_failures() {
        let doc = json!({"a": {"b": 1}, "list": ["x", "y"]});
        // add replaces an existing member in place
        let d = patched(&doc, json!([{"op": "add", "path": "/a", "value": 2}])).unwrap();
        assert_eq!(d, json!({"a": 2, "list": ["x", "y"]}));
        assert_eq!(d.as_object().unwrap().keys().next().unwrap(), "a");
        // add, replace and remove at the root
        let d = patched(&doc, json!([{"op": "add", "path": "", "value": [1]}])).unwrap();
        assert_eq!(d, json!([1]));
        let d = patched(
            &doc,
            json!([{"op": "replace", "path": "", "value": {"z": 0}}]),
        )
        .unwrap();
        assert_eq!(d, json!({"z": 0}));
        let e = patched(&doc, json!([{"op": "remove", "path": ""}])).unwrap_err();
        assert!(matches!(e, PatchError::CannotApply { .. }));
        // add under a scalar
        let e = patched(&doc, json!([{"op": "add", "path": "/a/b/c", "value": 1}])).unwrap_err();
        assert!(matches!(e, PatchError::CannotApply { .. }));
        // remove and replace of nothing
        for op in [
            json!({"op": "remove", "path": "/nope"}),
            json!({"op": "replace", "path": "/nope", "value": 1}),
            json!({"op": "test", "path": "/nope", "value": 1}),
        ] {
            let e = patched(&doc, json!([op])).unwrap_err();
            assert!(matches!(e, PatchError::NotFound { .. }), "{e}");
        }
        // copy
        let d = patched(
            &doc,
            json!([{"op": "copy", "from": "/a", "path": "/list/0"}]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": {"b": 1}, "list": [{"b": 1}, "x", "y"]}));
        let e = patched(&doc, json!([{"op": "copy", "from": "/nope", "path": "/c"}])).unwrap_err();
        assert!(matches!(e, PatchError::CannotApply { .. }));
        assert!(e.to_string().contains("`from`"), "{e}");
        // move: to itself is a no-op, but `from` must exist
        let d = patched(&doc, json!([{"op": "move", "from": "/a", "path": "/a"}])).unwrap();
        assert_eq!(d, doc);
        let e = patched(&doc, json!([{"op": "move", "from": "/x", "path": "/x"}])).unwrap_err();
        assert!(matches!(e, PatchError::CannotApply { .. }));
        let e = patched(&doc, json!([{"op": "move", "from": "/nope", "path": "/c"}])).unwrap_err();
        assert!(matches!(e, PatchError::CannotApply { .. }));
        // move into a child of itself is a malformed patch
        let e = patched(
            &doc,
            json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]),
        )
        .unwrap_err();
        assert!(e.is_malformed(), "{e}");
        // move to a sibling with a shared prefix is fine
        let d = patched(
            &json!({"a": 1}),
            json!([{"op": "move", "from": "/a", "path": "/ab"}]),
        );
        assert_eq!(d.unwrap(), json!({"ab": 1}));
        // test of null and of whole structures, in any member order
        let d = json!({"n": null, "o": {"x": 1, "y": [1, {"z": true}]}});
        let ok = patched(
            &d,
            json!([
                {"op": "test", "path": "/n", "value": null},
                {"op": "test", "path": "/o", "value": {"y": [1, {"z": true}], "x": 1}}
            ]),
        );
        assert!(ok.is_ok());
        let e = patched(&d, json!([{"op": "test", "path": "/o", "value": {"x": 1}}]));
        assert!(matches!(e, Err(PatchError::TestFailed { .. })));
    }

    #[test]
    fn remove_keeps_member_order() {
        let d = patched(
            &json!({"a": 1, "b": 2, "c": 3, "d": 4}),
            json!([{"op": "remove", "path": "/b"}]),
        )
        .unwrap();
        let keys: Vec<_> = d.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["a", "c", "d"]);
    }

    #[test]
    fn numbers_compare_by_value_and_keep_their_text() {
        let doc = parse(r#"{"q": 4.50, "n": 100, "z": 0, "l": [1.0]}"#);
        let ok = patched(
            &doc,
            parse(
                r#"[{"op": "test", "path": "/q", "value": 4.5},
                    {"op": "test", "path": "/q", "value": 45e-1},
                    {"op": "test", "path": "/n", "value": 1e2},
                    {"op": "test", "path": "/n", "value": 100.000},
                    {"op": "test", "path": "/z", "value": -0.0},
                    {"op": "test", "path": "/l", "value": [1]}]"#,
            ),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let e = patched(
            &doc,
            parse(r#"[{"op": "test", "path": "/q", "value": 4.51}]"#),
        );
        assert!(matches!(e, Err(PatchError::TestFailed { .. })));
        let e = patched(
            &doc,
            parse(r#"[{"op": "test", "path": "/n", "value": -100}]"#),
        );
        assert!(matches!(e, Err(PatchError::TestFailed { .. })));
        // What is written stays written.
        let d = patched(
            &doc,
            parse(r#"[{"op": "add", "path": "/r", "value": 1.250}]"#),
        )
        .unwrap();
        assert_eq!(serde_json::to_string(&d["r"]).unwrap(), "1.250");
        assert_eq!(serde_json::to_string(&d["q"]).unwrap(), "4.50");
        assert_eq!(decimal_key("0.00120"), decimal_key("1.2e-3"));
        assert_ne!(decimal_key("12"), decimal_key("1.2"));
    }

    #[test]
    fn json_patch_is_atomic() {
        let doc = json!({"a": 1, "list": [1, 2]});
        let mut d = doc.clone();
        let e = json_patch(
            &mut d,
            &json!([
                {"op": "replace", "path": "/a", "value": 2},
                {"op": "remove", "path": "/list/0"},
                {"op": "test", "path": "/a", "value": 1}
            ]),
        )
        .unwrap_err();
        assert_eq!(d, doc);
        assert_eq!(
            e.to_string(),
            "operation 2 (test /a): test failed, the value differs"
        );
        assert_eq!(e.operation().unwrap().index, 2);
        // A malformed operation later in the patch wins over an earlier failing one.
        let e = json_patch(
            &mut d,
            &json!([{"op": "remove", "path": "/nope"}, {"op": "frobnicate", "path": "/a"}]),
        )
        .unwrap_err();
        assert!(e.is_malformed(), "{e}");
        assert_eq!(d, doc);
    }

    #[test]
    fn malformed_json_patches() {
        let doc = json!({"a": 1});
        let cases = [
            (json!({"op": "add"}), "malformed patch"),
            (json!([1]), "operation 0: an operation is a JSON object"),
            (json!([{"path": "/a"}]), "operation 0: missing `op`"),
            (json!([{"op": 1, "path": "/a"}]), "`op` must be a string"),
            (
                json!([{"op": "add", "value": 1}]),
                "operation 0 (add): missing `path`",
            ),
            (
                json!([{"op": "add", "path": "/a"}]),
                "operation 0 (add /a): missing `value`",
            ),
            (json!([{"op": "replace", "path": "/a"}]), "missing `value`"),
            (json!([{"op": "test", "path": "/a"}]), "missing `value`"),
            (json!([{"op": "move", "path": "/a"}]), "missing `from`"),
            (
                json!([{"op": "copy", "path": "/b", "from": 3}]),
                "`from` must be a string",
            ),
            (json!([{"op": "copy", "path": "/b", "from": "a"}]), "`from`"),
            (
                json!([{"op": "remove", "path": "a"}]),
                "must be empty or start with `/`",
            ),
            (
                json!([{"op": "remove", "path": "/a~2"}]),
                "`~` must be followed",
            ),
            (
                json!([{"op": "delete", "path": "/a"}]),
                "unknown op `delete`",
            ),
        ];
        for (patch, msg) in cases {
            let e = patched(&doc, patch.clone()).unwrap_err();
            assert!(e.is_malformed(), "{patch}: {e}");
            assert!(e.to_string().contains(msg), "{patch}: {e}");
        }
        // An empty patch is valid and changes nothing.
        assert_eq!(patched(&doc, json!([])).unwrap(), doc);
    }

    // --- FHIRPath Patch -------------------------------------------------------------------

    fn op(ty: &str, path: &str, extra: Vec<Value>) -> Value {
        let mut parts = vec![
            json!({"name": "type", "valueCode": ty}),
            json!({"name": "path", "valueString": path}),
        ];
        parts.extend(extra);
        json!({"name": "operation", "part": parts})
    }

    /// A `value` part from its value[x] (or `part`): `val(json!({"valueString": "x"}))`.
    fn val(v: Value) -> Value {
        let mut part = json!({"name": "value"});
        part.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        part
    }

    /// A value given as nested parts.
    fn parts(list: Value) -> Value {
        json!({ "part": list })
    }

    fn int(name: &str, i: u64) -> Value {
        json!({"name": name, "valueInteger": i})
    }

    fn add(path: &str, name: &str, value: Value) -> Value {
        let name = json!({"name": "name", "valueString": name});
        op("add", path, vec![name, val(value)])
    }

    fn insert(path: &str, index: u64, value: Value) -> Value {
        op("insert", path, vec![int("index", index), val(value)])
    }

    fn delete(path: &str) -> Value {
        op("delete", path, vec![])
    }

    fn replace(path: &str, value: Value) -> Value {
        op("replace", path, vec![val(value)])
    }

    fn mv(path: &str, source: u64, destination: u64) -> Value {
        let args = vec![int("source", source), int("destination", destination)];
        op("move", path, args)
    }

    fn params(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn fp(doc: &Value, ops: Vec<Value>) -> Result<Value, PatchError> {
        let mut d = doc.clone();
        fhirpath_patch(Model::r4(), &mut d, &params(ops)).map(|()| d)
    }

    /// The error of a patch that must fail, after checking it left `doc` alone.
    fn fp_err(doc: &Value, ops: Vec<Value>) -> PatchError {
        let mut d = doc.clone();
        let e = fhirpath_patch(Model::r4(), &mut d, &params(ops)).unwrap_err();
        assert_eq!(&d, doc, "a failed patch changed the resource");
        e
    }

    fn keys(v: &Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn systems(d: &Value) -> Vec<Value> {
        let ids = d["identifier"].as_array().unwrap();
        ids.iter().map(|i| i["system"].clone()).collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [
                {"system": "http://a", "value": "1"},
                {"system": "http://b", "value": "2"},
                {"system": "http://c", "value": "3"}
            ],
            "name": [
                {"use": "official", "family": "Martin", "given": ["Jeanne", "Marie"]},
                {"use": "maiden", "family": "Durand"}
            ],
            "telecom": [
                {"system": "phone", "value": "0102030405"},
                {"system": "email", "value": "j@example.org"}
            ],
            "gender": "female",
            "address": [{"city": "Lyon"}]
        })
    }

    fn task() -> Value {
        json!({
            "resourceType": "Task",
            "id": "t1",
            "status": "requested",
            "intent": "order",
            "input": [
                {"type": {"text": "motif"}, "valueString": "chute"},
                {"type": {"text": "poids"}, "valueQuantity": {"value": 62.5, "unit": "kg"}}
            ]
        })
    }

    #[test]
    fn spec_add_primitive_in_specification_order() {
        let birth = add("Patient", "birthDate", json!({"valueDate": "1930-01-01"}));
        let d = fp(&patient(), vec![birth]).unwrap();
        assert_eq!(d["birthDate"], "1930-01-01");
        let expected = [
            "resourceType",
            "id",
            "identifier",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "address",
        ];
        assert_eq!(keys(&d), expected);
    }

    #[test]
    fn add_goes_before_its_own_extensions() {
        let mut p = patient();
        p.as_object_mut().unwrap().shift_remove("address");
        p["_birthDate"] = json!({"extension": [{"url": "http://x", "valueString": "y"}]});
        let birth = add("Patient", "birthDate", json!({"valueDate": "1930-01-01"}));
        let d = fp(&p, vec![birth]).unwrap();
        let tail: Vec<_> = keys(&d).into_iter().skip(5).collect();
        assert_eq!(tail, ["gender", "birthDate", "_birthDate"]);
        // Complex types only: resources and abstract types are no value[x].
        let e = fp_err(
            &p,
            vec![replace("Patient.gender", json!({"valueElement": {}}))],
        );
        assert!(e.is_malformed(), "{e}");
        let e = fp_err(
            &p,
            vec![replace("Patient.gender", json!({"valuePatient": {}}))],
        );
        assert!(e.is_malformed(), "{e}");
    }

    #[test]
    fn spec_add_complex_value_from_parts() {
        // The spec's example: a contact (a backbone element) built from parts.
        let contact = parts(json!([
            {"name": "name", "valueHumanName": {"text": "a name"}},
            {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "06"}},
            {"name": "relationship", "valueCodeableConcept": {"text": "fille"}},
            {"name": "relationship", "valueCodeableConcept": {"text": "aidante"}}
        ]));
        let d = fp(&patient(), vec![add("Patient", "contact", contact)]).unwrap();
        let expected = json!([{
            "relationship": [{"text": "fille"}, {"text": "aidante"}],
            "name": {"text": "a name"},
            "telecom": [{"system": "phone", "value": "06"}]
        }]);
        assert_eq!(d["contact"], expected);
        // Members come in specification order, whatever the order of the parts.
        assert_eq!(keys(&d["contact"][0]), ["relationship", "name", "telecom"]);
        // A second add appends.
        let male = parts(json!([{"name": "gender", "valueCode": "male"}]));
        let d = fp(&d, vec![add("Patient", "contact", male)]).unwrap();
        assert_eq!(d["contact"][1], json!({"gender": "male"}));
    }

    #[test]
    fn add_to_a_nested_element_and_repeating_primitive() {
        let ops = vec![
            add(
                "Patient.name.where(use='official')",
                "given",
                json!({"valueString": "Louise"}),
            ),
            add("Patient.name[1]", "given", json!({"valueString": "Anne"})),
        ];
        let d = fp(&patient(), ops).unwrap();
        assert_eq!(d["name"][0]["given"], json!(["Jeanne", "Marie", "Louise"]));
        assert_eq!(d["name"][1]["given"], json!(["Anne"]));
        assert_eq!(keys(&d["name"][1]), ["use", "family", "given"]);
    }

    #[test]
    fn add_errors() {
        let p = patient();
        let string = json!({"valueString": "x"});
        // A single element that exists already.
        let e = fp_err(
            &p,
            vec![add("Patient", "gender", json!({"valueCode": "male"}))],
        );
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        assert!(e.to_string().contains("already exists"), "{e}");
        // The path matches several elements, or none.
        let e = fp_err(&p, vec![add("Patient.name", "text", string.clone())]);
        assert!(
            matches!(e, PatchError::MultipleMatches { count: 2, .. }),
            "{e}"
        );
        let e = fp_err(
            &p,
            vec![add(
                "Patient.contact",
                "gender",
                json!({"valueCode": "male"}),
            )],
        );
        assert!(matches!(e, PatchError::NotFound { .. }), "{e}");
        // No such element.
        let e = fp_err(&p, vec![add("Patient", "colour", string.clone())]);
        assert!(
            e.to_string().contains("Patient has no element `colour`"),
            "{e}"
        );
        // Wrong type: a string is not a HumanName, a HumanName is not a date.
        let e = fp_err(&p, vec![add("Patient", "name", string.clone())]);
        assert!(
            e.to_string().contains("is a HumanName, not a string"),
            "{e}"
        );
        let human = json!({"valueHumanName": {"text": "x"}});
        let e = fp_err(&p, vec![add("Patient", "birthDate", human)]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        // A primitive cannot be given as parts, nor receive children.
        let as_parts = parts(json!([{"name": "x", "valueString": "y"}]));
        let e = fp_err(&p, vec![add("Patient", "birthDate", as_parts)]);
        assert!(e.to_string().contains("not as parts"), "{e}");
        let e = fp_err(&p, vec![add("Patient.gender", "id", string)]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        // An unknown element inside parts.
        let nickname = parts(json!([{"name": "nickname", "valueString": "y"}]));
        let e = fp_err(&p, vec![add("Patient", "contact", nickname)]);
        let msg = "Patient.contact has no element `nickname`";
        assert!(e.to_string().contains(msg), "{e}");
        // A non-repeating element given twice in parts.
        let twice = parts(json!([
            {"name": "gender", "valueCode": "male"},
            {"name": "gender", "valueCode": "female"}
        ]));
        let e = fp_err(&p, vec![add("Patient", "contact", twice)]);
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn spec_insert() {
        let p = patient();
        let id = json!({"valueIdentifier": {"system": "http://z", "value": "9"}});
        let d = fp(&p, vec![insert("Patient.identifier", 1, id.clone())]).unwrap();
        assert_eq!(
            systems(&d),
            ["http://a", "http://z", "http://b", "http://c"]
        );
        // At the end (index = length) is allowed, past it is not.
        let d = fp(&p, vec![insert("Patient.identifier", 3, id.clone())]).unwrap();
        assert_eq!(
            systems(&d),
            ["http://a", "http://b", "http://c", "http://z"]
        );
        let e = fp_err(&p, vec![insert("Patient.identifier", 4, id.clone())]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        // A list that is absent is an error (that is what add is for).
        let photo = json!({"valueAttachment": {"url": "x"}});
        let e = fp_err(&p, vec![insert("Patient.photo", 0, photo)]);
        assert!(matches!(e, PatchError::NotFound { .. }), "{e}");
        // A nested list; several lists at once are an error.
        let ada = json!({"valueString": "Ada"});
        let d = fp(&p, vec![insert("Patient.name[0].given", 0, ada.clone())]).unwrap();
        assert_eq!(d["name"][0]["given"], json!(["Ada", "Jeanne", "Marie"]));
        let mut two = patient();
        two["name"][1]["given"] = json!(["Zoé"]);
        let e = fp_err(&two, vec![insert("Patient.name.given", 0, ada)]);
        assert!(
            matches!(e, PatchError::MultipleMatches { count: 2, .. }),
            "{e}"
        );
        // A single element is not a list; a path ending in an item is malformed.
        let male = json!({"valueCode": "male"});
        let e = fp_err(&p, vec![insert("Patient.gender", 0, male)]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        let e = fp_err(&p, vec![insert("Patient.identifier[0]", 0, id)]);
        assert!(e.is_malformed(), "{e}");
    }

    #[test]
    fn spec_delete() {
        let p = patient();
        let d = fp(
            &p,
            vec![delete("Patient.identifier.where(system='http://b')")],
        )
        .unwrap();
        assert_eq!(systems(&d), ["http://a", "http://c"]);
        let d = fp(&p, vec![delete("Patient.gender")]).unwrap();
        assert!(d.get("gender").is_none());
        // Nothing matches: a no-op.
        let ops = vec![delete("Patient.birthDate"), delete("Patient.identifier[7]")];
        assert_eq!(fp(&p, ops).unwrap(), p);
        // Several match: an error.
        let e = fp_err(&p, vec![delete("Patient.identifier")]);
        assert_eq!(
            e.to_string(),
            "operation 0 (delete Patient.identifier): path matches 3 elements, expected one"
        );
        // The resource itself cannot go.
        let e = fp_err(&p, vec![delete("Patient")]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
    }

    #[test]
    fn delete_removes_what_it_leaves_empty() {
        let ops = vec![
            delete("Patient.address[0].city"),
            delete("Patient.name[1].family"),
            delete("Patient.name[1].use"),
        ];
        let d = fp(&patient(), ops).unwrap();
        // address[0] became {} and then address became []: both are gone.
        assert!(d.get("address").is_none());
        assert_eq!(d["name"].as_array().unwrap().len(), 1);
        let ops = vec![
            delete("Patient.name.given.first()"),
            delete("Patient.name.given.last()"),
        ];
        let d = fp(&d, ops).unwrap();
        assert_eq!(d["name"], json!([{"use": "official", "family": "Martin"}]));
    }

    #[test]
    fn primitive_extensions_follow_their_values() {
        let ext = json!({"extension": [{"url": "http://x", "valueString": "y"}]});
        let mut p = patient();
        p["name"][0]["_given"] = json!([null, ext]);
        p["_gender"] = ext.clone();
        let d = fp(&p, vec![delete("Patient.name[0].given[0]")]).unwrap();
        assert_eq!(d["name"][0]["given"], json!(["Marie"]));
        assert_eq!(d["name"][0]["_given"], json!([ext]));
        // No extension left: no `_given` either.
        let d = fp(&p, vec![delete("Patient.name[0].given[1]")]).unwrap();
        assert!(d["name"][0].get("_given").is_none(), "{d}");
        let d = fp(&p, vec![delete("Patient.gender")]).unwrap();
        assert!(d.get("_gender").is_none());
        let ops = vec![
            insert("Patient.name[0].given", 0, json!({"valueString": "A"})),
            add("Patient.name[0]", "given", json!({"valueString": "Z"})),
            mv("Patient.name[0].given", 2, 0),
        ];
        let d = fp(&p, ops).unwrap();
        assert_eq!(d["name"][0]["given"], json!(["Marie", "A", "Jeanne", "Z"]));
        assert_eq!(d["name"][0]["_given"], json!([ext, null, null, null]));
    }

    #[test]
    fn spec_replace() {
        let p = patient();
        let d = fp(
            &p,
            vec![replace("Patient.gender", json!({"valueCode": "other"}))],
        )
        .unwrap();
        assert_eq!(d["gender"], "other");
        assert_eq!(keys(&d), keys(&p));
        let phone = replace(
            "Patient.telecom.where(system='phone').value",
            json!({"valueString": "0611223344"}),
        );
        let d = fp(&p, vec![phone]).unwrap();
        assert_eq!(d["telecom"][0]["value"], "0611223344");
        assert_eq!(d["telecom"][1]["value"], "j@example.org");
        let petit = json!({"valueHumanName": {"family": "Petit"}});
        let d = fp(&p, vec![replace("Patient.name[1]", petit)]).unwrap();
        assert_eq!(d["name"][1], json!({"family": "Petit"}));
        let date = json!({"valueDate": "2000-01-01"});
        let e = fp_err(&p, vec![replace("Patient.birthDate", date)]);
        assert!(matches!(e, PatchError::NotFound { .. }), "{e}");
        let x = json!({"valueString": "X"});
        let e = fp_err(&p, vec![replace("Patient.name.family", x)]);
        assert!(
            matches!(e, PatchError::MultipleMatches { count: 2, .. }),
            "{e}"
        );
        let yes = json!({"valueBoolean": true});
        let e = fp_err(&p, vec![replace("Patient.gender", yes)]);
        assert!(e.to_string().contains("is a code, not a boolean"), "{e}");
    }

    #[test]
    fn spec_move() {
        let p = patient();
        let d = fp(&p, vec![mv("Patient.identifier", 0, 2)]).unwrap();
        assert_eq!(systems(&d), ["http://b", "http://c", "http://a"]);
        let d = fp(&p, vec![mv("Patient.identifier", 2, 0)]).unwrap();
        assert_eq!(systems(&d), ["http://c", "http://a", "http://b"]);
        let e = fp_err(&p, vec![mv("Patient.identifier", 0, 3)]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        let e = fp_err(&p, vec![mv("Patient.photo", 0, 0)]);
        assert!(matches!(e, PatchError::NotFound { .. }), "{e}");
    }

    #[test]
    fn task_operations() {
        let t = task();
        let address = parts(json!([
            {"name": "type", "valueCodeableConcept": {"text": "adresse"}},
            {"name": "value", "valueString": "Lyon"}
        ]));
        let ops = vec![
            replace("Task.status", json!({"valueCode": "accepted"})),
            add("Task", "input", address),
            replace(
                "Task.input[1].value",
                json!({"valueQuantity": {"value": 63, "unit": "kg"}}),
            ),
            delete("Task.input[0]"),
            add(
                "Task",
                "owner",
                json!({"valueReference": {"reference": "Organization/o1"}}),
            ),
        ];
        let d = fp(&t, ops).unwrap();
        assert_eq!(d["status"], "accepted");
        let inputs = json!([
            {"type": {"text": "poids"}, "valueQuantity": {"value": 63, "unit": "kg"}},
            {"type": {"text": "adresse"}, "valueString": "Lyon"}
        ]);
        assert_eq!(d["input"], inputs);
        assert_eq!(d["owner"], json!({"reference": "Organization/o1"}));
        let expected = ["resourceType", "id", "status", "intent", "owner", "input"];
        assert_eq!(keys(&d), expected);
        // A Task path on a Patient is refused.
        let accepted = json!({"valueCode": "accepted"});
        let e = fp_err(&patient(), vec![replace("Task.status", accepted.clone())]);
        assert!(matches!(e, PatchError::CannotApply { .. }), "{e}");
        // The message names the operation's index, type and path.
        let mut no_status = t.clone();
        no_status.as_object_mut().unwrap().shift_remove("status");
        let ops = vec![
            replace("Task.intent", json!({"valueCode": "plan"})),
            delete("Task.note"),
            replace("Task.status", accepted),
        ];
        let e = fp_err(&no_status, ops);
        assert_eq!(
            e.to_string(),
            "operation 2 (replace Task.status): path matches nothing"
        );
        assert!(!e.is_malformed());
    }

    #[test]
    fn choice_elements() {
        let obs = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "poids"},
            "valueQuantity": {"value": 62, "unit": "kg"},
            "interpretation": [{"text": "normal"}]
        });
        // The bare name finds the typed key; replacing takes the new value's type, in place.
        let soixante = json!({"valueString": "soixante"});
        let d = fp(&obs, vec![replace("Observation.value", soixante)]).unwrap();
        assert_eq!(d["valueString"], "soixante");
        assert!(d.get("valueQuantity").is_none());
        let expected = [
            "resourceType",
            "status",
            "code",
            "valueString",
            "interpretation",
        ];
        assert_eq!(keys(&d), expected);
        // A primitive's extensions follow it to its new name, but cannot go to a complex type.
        let mut text = d.clone();
        text["_valueString"] = json!({"id": "e1"});
        let d = fp(
            &text,
            vec![replace("Observation.value", json!({"valueInteger": 60}))],
        );
        let d = d.unwrap();
        assert_eq!(d["_valueInteger"], json!({"id": "e1"}));
        let expected = [
            "resourceType",
            "status",
            "code",
            "valueInteger",
            "_valueInteger",
            "interpretation",
        ];
        assert_eq!(keys(&d), expected);
        let q = json!({"valueQuantity": {"value": 60}});
        let d = fp(&d, vec![replace("Observation.value", q)]).unwrap();
        let expected = [
            "resourceType",
            "status",
            "code",
            "valueQuantity",
            "interpretation",
        ];
        assert_eq!(keys(&d), expected);
        let q = json!({"valueQuantity": {"value": 63}});
        let d = fp(&obs, vec![replace("Observation.value", q)]).unwrap();
        assert_eq!(d["valueQuantity"], json!({"value": 63}));
        // Replacing with parts keeps the current type.
        let q = parts(json!([
            {"name": "value", "valueDecimal": 64},
            {"name": "unit", "valueString": "kg"}
        ]));
        let d = fp(&obs, vec![replace("Observation.value", q)]).unwrap();
        assert_eq!(d["valueQuantity"], json!({"value": 64, "unit": "kg"}));
        // The typed name works too, and ofType() filters.
        let d = fp(&obs, vec![delete("Observation.valueQuantity")]).unwrap();
        assert!(d.get("valueQuantity").is_none());
        let d = fp(&obs, vec![delete("Observation.value.ofType(string)")]).unwrap();
        assert_eq!(d, obs);
        let address = json!({"valueAddress": {"city": "x"}});
        let e = fp_err(&obs, vec![replace("Observation.value", address)]);
        assert!(e.to_string().contains("does not allow type Address"), "{e}");

        // Adding a choice names the key from the value's type.
        let mut bare = obs.clone();
        bare.as_object_mut().unwrap().shift_remove("valueQuantity");
        let high = json!({"valueCodeableConcept": {"text": "élevé"}});
        let d = fp(&bare, vec![add("Observation", "value", high)]).unwrap();
        assert_eq!(d["valueCodeableConcept"], json!({"text": "élevé"}));
        let expected = [
            "resourceType",
            "status",
            "code",
            "valueCodeableConcept",
            "interpretation",
        ];
        assert_eq!(keys(&d), expected);
        // …but not when the choice already has a value, whatever its type.
        let string = json!({"valueString": "x"});
        let e = fp_err(&obs, vec![add("Observation", "value", string)]);
        assert!(e.to_string().contains("already has a value"), "{e}");
        let human = json!({"valueHumanName": {"text": "x"}});
        let e = fp_err(&bare, vec![add("Observation", "value", human)]);
        assert!(
            e.to_string().contains("does not allow type HumanName"),
            "{e}"
        );

        // A choice inside parts, named bare.
        let component = parts(json!([
            {"name": "code", "valueCodeableConcept": {"text": "systolique"}},
            {"name": "value", "valueQuantity": {"value": 120}}
        ]));
        let d = fp(&bare, vec![add("Observation", "component", component)]).unwrap();
        let expected = json!([{
            "code": {"text": "systolique"},
            "valueQuantity": {"value": 120}
        }]);
        assert_eq!(d["component"], expected);
        // A choice in parts needs a typed value.
        let untyped = parts(json!([
            {"name": "value", "part": [{"name": "value", "valueDecimal": 1}]}
        ]));
        let e = fp_err(&bare, vec![add("Observation", "component", untyped)]);
        assert!(e.to_string().contains("needs a value[x]"), "{e}");

        // The choice of a backbone element, reached through where() on a nested field.
        let chute = json!({"valueCodeableConcept": {"text": "chute"}});
        let path = "Task.input.where(type.text='motif').value";
        let d = fp(&task(), vec![replace(path, chute)]).unwrap();
        let expected = json!({
            "type": {"text": "motif"},
            "valueCodeableConcept": {"text": "chute"}
        });
        assert_eq!(d["input"][0], expected);
    }

    #[test]
    fn where_literals_and_selection() {
        let mut p = patient();
        p["contact"] = json!([{"gender": "male"}, {"gender": "female"}]);
        p["communication"] = json!([
            {"language": {"text": "fr"}, "preferred": true},
            {"language": {"text": "en"}, "preferred": false}
        ]);
        let d = fp(
            &p,
            vec![delete("Patient.communication.where(preferred=false)")],
        )
        .unwrap();
        let french = json!([{"language": {"text": "fr"}, "preferred": true}]);
        assert_eq!(d["communication"], french);
        let d = fp(&p, vec![delete("Patient.identifier.where(value='2')")]).unwrap();
        assert_eq!(systems(&d), ["http://a", "http://c"]);
        let d = fp(&p, vec![delete("Patient.contact.last()")]).unwrap();
        assert_eq!(d["contact"], json!([{"gender": "male"}]));
        let d = fp(&p, vec![delete("Patient.telecom.first().value")]).unwrap();
        assert_eq!(d["telecom"][0], json!({"system": "phone"}));
        let d = fp(&p, vec![delete("Patient.telecom.where(system = 'email')")]).unwrap();
        assert_eq!(d["telecom"].as_array().unwrap().len(), 1);
        // Quoted strings with escapes, and numbers compared by value.
        let obs = parse(
            r#"{"resourceType": "Observation", "status": "final", "code": {"text": "it's"},
                "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1.50}}]}"#,
        );
        let ok = json!({"valueString": "ok"});
        let d = fp(
            &obs,
            vec![replace("Observation.code.where(text='it\\'s').text", ok)],
        );
        assert_eq!(d.unwrap()["code"]["text"], "ok");
        let path = "Observation.component.where(valueQuantity.value=1.5)";
        let d = fp(&obs, vec![delete(path)]).unwrap();
        assert!(d.get("component").is_none());
    }

    #[test]
    fn contained_resources() {
        let org = json!({"resource": {"resourceType": "Organization", "id": "o1", "name": "CHU"}});
        let d = fp(&patient(), vec![add("Patient", "contained", org)]).unwrap();
        assert_eq!(d["contained"][0]["name"], "CHU");
        // Paths go into a contained resource by its own type.
        let lyon = json!({"valueString": "CHU Lyon"});
        let d = fp(&d, vec![replace("Patient.contained[0].name", lyon)]).unwrap();
        assert_eq!(d["contained"][0]["name"], "CHU Lyon");
    }

    #[test]
    fn fhirpath_patch_is_atomic() {
        let t = task();
        let owner = json!({"valueReference": {"reference": "Organization/o1"}});
        let ops = vec![
            replace("Task.status", json!({"valueCode": "accepted"})),
            add("Task", "owner", owner),
            delete("Task.input"),
        ];
        // `fp_err` checks that the first two operations were undone.
        let e = fp_err(&t, ops);
        assert!(
            matches!(e, PatchError::MultipleMatches { count: 2, .. }),
            "{e}"
        );
        assert_eq!(e.operation().unwrap().index, 2);
        // An empty Parameters changes nothing.
        let mut d = t.clone();
        let empty = json!({"resourceType": "Parameters"});
        fhirpath_patch(Model::r4(), &mut d, &empty).unwrap();
        assert_eq!(d, t);
    }

    #[test]
    fn malformed_fhirpath_patches() {
        let t = task();
        let check = |p: Value, msg: &str| {
            let mut d = t.clone();
            let e = fhirpath_patch(Model::r4(), &mut d, &p).unwrap_err();
            assert!(e.is_malformed(), "{p}: {e}");
            assert!(
                e.to_string().contains(msg),
                "{p}: expected `{msg}` in `{e}`"
            );
            assert_eq!(d, t);
        };
        let one = |op: Value, msg: &str| check(params(vec![op]), msg);
        check(
            json!([{"op": "add"}]),
            "malformed patch: a FHIRPath Patch is a Parameters resource",
        );
        check(json!({"resourceType": "Patient"}), "Parameters resource");
        let not_array = json!({"resourceType": "Parameters", "parameter": {}});
        check(not_array, "must be an array");
        one(
            json!({"name": "op", "part": []}),
            "operation 0: parameter `op` is not an operation",
        );
        one(json!({"name": "operation"}), "`part`");
        let path_only = json!({"name": "path", "valueString": "Task.status"});
        one(
            json!({"name": "operation", "part": [path_only]}),
            "operation 0 (Task.status): missing part `type`",
        );
        let type_only = json!({"name": "type", "valueCode": "delete"});
        one(
            json!({"name": "operation", "part": [type_only]}),
            "missing part `path`",
        );
        one(
            op("upsert", "Task.status", vec![]),
            "unknown operation type `upsert`",
        );
        let string = val(json!({"valueString": "x"}));
        one(op("add", "Task", vec![string.clone()]), "needs part `name`");
        let note = json!({"name": "name", "valueString": "note"});
        one(op("add", "Task", vec![note]), "needs part `value`");
        one(
            op("replace", "Task.status", vec![]),
            "operation 0 (replace Task.status): `replace` needs part `value`",
        );
        one(
            op("insert", "Task.input", vec![string]),
            "needs part `index`",
        );
        let from_0 = int("source", 0);
        one(
            op("move", "Task.input", vec![from_0.clone()]),
            "needs part `destination`",
        );
        let negative = json!({"name": "source", "valueInteger": -1});
        one(
            op("move", "Task.input", vec![negative, int("destination", 0)]),
            "non-negative",
        );
        let colour = json!({"name": "colour", "valueString": "x"});
        one(
            op("delete", "Task.status", vec![colour]),
            "unknown part `colour`",
        );
        let path = json!({"name": "path", "valueString": "x"});
        one(op("delete", "Task.status", vec![path]), "given twice");
        for bad in [
            "Task.input.where(type.exists())",
            "Task.input[",
            "Task.status | Task.intent",
            "Task.code.text.where(x='unterminated)",
        ] {
            one(delete(bad), "unsupported FHIRPath");
        }
        one(mv("Task.input.first()", 0, 0), "needs the path of a list");
        let cases = [
            (json!({"valueCode": 3}), "`valueCode` must be a JSON string"),
            (
                json!({"valueFoo": "x"}),
                "`valueFoo` does not name a FHIR data type",
            ),
            (json!({"valueCode": "x", "valueString": "y"}), "only one of"),
            (json!({}), "no value"),
            (parts(json!([{"valueString": "y"}])), "a part needs a name"),
            (
                parts(json!([{"name": "type", "valueDecimal": "1"}])),
                "part `type`: `valueDecimal` must be a JSON number",
            ),
        ];
        for (value, msg) in cases {
            one(replace("Task.input[0]", value), msg);
        }
        // Malformed operations are found before anything applies.
        check(
            params(vec![delete("Task.input"), op("frob", "Task", vec![])]),
            "operation 1 (frob Task)",
        );
    }

    #[test]
    fn path_parser() {
        let p = parse_path("Patient.name[0].where(use = 'official').given.first()").unwrap();
        assert_eq!(p.start.as_deref(), Some("Patient"));
        let official = Literal::Str("official".into());
        let expected = vec![
            Step::Child("name".into()),
            Step::Index(0),
            Step::Where(vec!["use".into()], official),
            Step::Child("given".into()),
            Step::First,
        ];
        assert_eq!(p.steps, expected);
        let p = parse_path("name.`given`").unwrap();
        assert_eq!(p.start, None);
        let expected = vec![Step::Child("name".into()), Step::Child("given".into())];
        assert_eq!(p.steps, expected);
        let escaped = Literal::Str("é\n".into());
        let p = parse_path("X.where(a='\\u00e9\\n')").unwrap();
        assert_eq!(p.steps, vec![Step::Where(vec!["a".into()], escaped)]);
        for bad in [
            "",
            ".name",
            "Patient..name",
            "Patient.name[x]",
            "Patient.name.exists()",
            "Patient.name.where(a=b)",
            "Patient name",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_display_and_classes() {
        let at = OpRef {
            index: 2,
            op: "replace".into(),
            path: "Task.status".into(),
        };
        let e = PatchError::NotFound { at: at.clone() };
        assert_eq!(
            e.to_string(),
            "operation 2 (replace Task.status): path matches nothing"
        );
        let e = PatchError::MultipleMatches {
            at: at.clone(),
            count: 3,
        };
        assert_eq!(
            e.to_string(),
            "operation 2 (replace Task.status): path matches 3 elements, expected one"
        );
        assert!(!e.is_malformed());
        let reason = "x".to_owned();
        let e = PatchError::CannotApply {
            at: at.clone(),
            reason: reason.clone(),
        };
        assert!(!e.is_malformed());
        assert!(!PatchError::TestFailed { at: at.clone() }.is_malformed());
        assert!(PatchError::BadOperation { at, reason }.is_malformed());
        assert!(PatchError::NotAPatch("x".into()).is_malformed());
        assert!(PatchError::NotAPatch("x".into()).operation().is_none());
    }
}
