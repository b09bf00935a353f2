//! FHIR search: the supported parameters ([`registry`]), what a resource is indexed under
//! ([`extract`]), and here the reading of a search's query string into a [`store::Query`]
//! plus the result parameters (`_count`, `_sort`, `_include`, `_summary`…).
//!
//! Unknown or unsupported parameters are reported (and ignored) unless the search is strict
//! (`Prefer: handling=strict`, and always for conditional operations, which must never match
//! more than the client meant).

pub mod extract;
pub mod fhirpath;
pub mod registry;

use std::sync::Arc;

use crate::fhir::error::{Error, Issue, Result};
use crate::fhir::reference;
use crate::store::{self, Check, Cmp, Filter, Query, Sort, SortKey, Table, like_escape};
use crate::time::{Micros, fhir_date_range};
use registry::{ParamKind, Registry, SearchParam};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    Text,
    Data,
    Count,
    False,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    pub param: String,
    pub target_type: Option<String>,
    pub iterate: bool,
}

/// A parsed search.
#[derive(Debug)]
pub struct Search {
    pub query: Query,
    pub count: usize,
    pub offset: usize,
    pub total: bool,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// Parameters left out, reported in the Bundle's OperationOutcome.
    pub warnings: Vec<Issue>,
    /// The parameters as understood, for the `self` and paging links.
    pub used: Vec<(String, String)>,
}

pub struct Paging {
    pub default_count: usize,
    pub max_count: usize,
}

/// What a search is evaluated against: the model, the registry, the public base (absolute
/// references to it are read as local) and the clock (`ap` dates).
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub base: &'a str,
    pub now: Micros,
}

pub fn parse(
    ctx: &Context<'_>,
    rtype: &str,
    params: &[(String, String)],
    strict: bool,
    paging: &Paging,
) -> Result<Search> {
    let mut s = Search {
        query: Query::new(rtype),
        count: paging.default_count,
        offset: 0,
        total: false,
        summary: None,
        elements: None,
        includes: Vec::new(),
        revincludes: Vec::new(),
        warnings: Vec::new(),
        used: Vec::new(),
    };
    for (name, value) in params {
        let bad = |msg: String| Error::invalid_at("invalid", msg, name.clone());
        let mut used = true;
        match name.as_str() {
            "_format" | "_pretty" => used = false,
            "_count" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(format!("_count `{value}` is not a whole number")))?;
                s.count = n.min(paging.max_count);
            }
            "_offset" => {
                s.offset = value
                    .parse()
                    .map_err(|_| bad(format!("_offset `{value}` is not a whole number")))?;
            }
            "_total" => match value.as_str() {
                "none" => s.total = false,
                "estimate" | "accurate" => s.total = true,
                _ => return Err(bad(format!("_total `{value}`: none, estimate or accurate"))),
            },
            "_summary" => {
                s.summary = Some(match value.as_str() {
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    _ => return Err(bad(format!("_summary `{value}` is not a summary mode"))),
                })
            }
            "_elements" => {
                s.elements = Some(
                    value
                        .split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect(),
                )
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (code, descending) = match key.strip_prefix('-') {
                        Some(k) => (k, true),
                        None => (key, false),
                    };
                    let key = match code {
                        "_id" => SortKey::Id,
                        "_lastUpdated" => SortKey::LastUpdated,
                        _ => match ctx.registry.param(rtype, code) {
                            Some(p) => {
                                let (table, column) = sort_column(p.kind)
                                    .ok_or_else(|| bad(format!("cannot sort on `{code}`")))?;
                                SortKey::Index {
                                    table,
                                    param: p.key.clone(),
                                    column,
                                }
                            }
                            None => {
                                unknown(
                                    &mut s,
                                    strict,
                                    name,
                                    &format!("unknown sort parameter `{code}`"),
                                )?;
                                continue;
                            }
                        },
                    };
                    s.query.sort.push(Sort { key, descending });
                }
            }
            n if n.starts_with("_include") || n.starts_with("_revinclude") => {
                let (base, modifier) = n.split_once(':').unwrap_or((n, ""));
                let iterate = match modifier {
                    "" => false,
                    "iterate" | "recurse" => true,
                    _ => return Err(bad(format!("unknown modifier `:{modifier}`"))),
                };
                let inc = parse_include(ctx.registry, value, iterate)
                    .map_err(|m| bad(format!("{base}={value}: {m}")))?;
                if base == "_include" {
                    s.includes.push(inc);
                } else {
                    s.revincludes.push(inc);
                }
            }
            "_text" | "_content" | "_list" | "_query" | "_filter" | "_containedType"
            | "_contained" => {
                unknown(
                    &mut s,
                    strict,
                    name,
                    &format!("parameter `{name}` is not supported"),
                )?;
                used = false;
            }
            _ => match filter_for(ctx, rtype, name, value)? {
                Some(f) => s.query.filters.push(f),
                None => {
                    unknown(
                        &mut s,
                        strict,
                        name,
                        &format!("unknown search parameter `{name}` for {rtype}"),
                    )?;
                    used = false;
                }
            },
        }
        if used && name != "_offset" {
            s.used.push((name.clone(), value.clone()));
        }
    }
    s.query.limit = s.count;
    s.query.offset = s.offset;
    Ok(s)
}

fn unknown(s: &mut Search, strict: bool, name: &str, msg: &str) -> Result<()> {
    if strict {
        return Err(Error::invalid_at("not-supported", msg, name));
    }
    s.warnings
        .push(Issue::warning("not-supported", format!("{msg}: ignored")).at(name));
    Ok(())
}

fn sort_column(kind: ParamKind) -> Option<(Table, &'static str)> {
    Some(match kind {
        ParamKind::String => (Table::String, "norm"),
        ParamKind::Token => (Table::Token, "code"),
        ParamKind::Date => (Table::Date, "lo"),
        ParamKind::Reference => (Table::Reference, "target_id"),
        ParamKind::Uri => (Table::Uri, "value"),
        ParamKind::Number | ParamKind::Quantity => (Table::Number, "lo"),
        ParamKind::Special => return None,
    })
}

fn parse_include(registry: &Registry, value: &str, iterate: bool) -> Result<Include, String> {
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let param = parts.next().ok_or("expected Type:parameter")?;
    let target = parts.next().map(str::to_owned);
    let p = registry
        .param(source, param)
        .ok_or_else(|| format!("unknown parameter {source}:{param}"))?;
    if p.kind != ParamKind::Reference {
        return Err(format!("{source}:{param} is not a reference parameter"));
    }
    Ok(Include {
        source_type: source.to_owned(),
        param: param.to_owned(),
        target_type: target,
        iterate,
    })
}

/// Splits a parameter value at commas not escaped with `\`, unescaping `\,` `\|` `\$` `\\`.
pub fn split_or(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '$' | '|' | '\\')) => {
                    if let Some(s) = out.last_mut() {
                        s.push(n);
                    }
                }
                Some(n) => {
                    if let Some(s) = out.last_mut() {
                        s.push('\\');
                        s.push(n);
                    }
                }
                None => {
                    if let Some(s) = out.last_mut() {
                        s.push('\\');
                    }
                }
            },
            ',' => out.push(String::new()),
            c => {
                if let Some(s) = out.last_mut() {
                    s.push(c);
                }
            }
        }
    }
    out
}

/// Splits at the first `|` not escaped.
fn split_pipe(v: &str) -> Option<(String, String)> {
    let mut prev_backslash = false;
    for (i, c) in v.char_indices() {
        if c == '|' && !prev_backslash {
            return Some((v[..i].replace("\\|", "|"), v[i + 1..].replace("\\|", "|")));
        }
        prev_backslash = c == '\\' && !prev_backslash;
    }
    None
}

/// The filter for one `name=value` pair, `None` if the parameter is unknown for `rtype`.
fn filter_for(ctx: &Context<'_>, rtype: &str, name: &str, value: &str) -> Result<Option<Filter>> {
    let bad = |msg: String| Error::invalid_at("invalid", msg, name.to_owned());
    if let Some(rest) = name.strip_prefix("_has:") {
        // _has:Type:param:chained-param
        let mut parts = rest.splitn(3, ':');
        let (Some(src), Some(param), Some(chained)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected _has:Type:parameter:parameter".into()));
        };
        let Some(p) = ctx.registry.param(src, param) else {
            return Ok(None);
        };
        if p.kind != ParamKind::Reference {
            return Err(bad(format!("{src}:{param} is not a reference parameter")));
        }
        let Some(inner) = filter_for(ctx, src, chained, value)? else {
            return Ok(None);
        };
        let mut q = Query::new(src);
        q.filters.push(inner);
        return Ok(Some(Filter::ReverseChain {
            param: p.key.clone(),
            query: Box::new(q),
        }));
    }
    // chain: `patient.identifier`, `owner:HealthcareService.name`
    if let Some((head, rest)) = name.split_once('.') {
        let (code, type_mod) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let Some(p) = ctx.registry.param(rtype, code) else {
            return Ok(None);
        };
        if p.kind != ParamKind::Reference {
            return Err(bad(format!(
                "`{code}` is not a reference parameter: it cannot be chained"
            )));
        }
        let chained_code = rest.split(['.', ':']).next().unwrap_or(rest);
        let candidates: Vec<&str> = match type_mod {
            Some(t) => vec![t],
            None => p
                .targets
                .iter()
                .map(String::as_str)
                .filter(|t| {
                    ctx.registry.param(t, chained_code).is_some() || chained_code.starts_with('_')
                })
                .collect(),
        };
        let mut alternatives = Vec::new();
        for t in candidates {
            if !ctx.registry.is_served(t) {
                continue;
            }
            if let Some(inner) = filter_for(ctx, t, rest, value)? {
                let mut q = Query::new(t);
                q.filters.push(inner);
                alternatives.push(Filter::Chain {
                    param: p.key.clone(),
                    query: Box::new(q),
                });
            }
        }
        return match alternatives.len() {
            0 => Err(bad(format!(
                "no target type of `{code}` has a parameter `{chained_code}`"
            ))),
            1 => Ok(alternatives.pop()),
            _ => Ok(Some(Filter::Or(alternatives))),
        };
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let Some(p) = ctx.registry.param(rtype, code) else {
        return Ok(None);
    };
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad(format!(":missing takes true or false, not `{value}`"))),
        };
        let table = match p.kind {
            ParamKind::String => Table::String,
            ParamKind::Token => Table::Token,
            ParamKind::Reference => Table::Reference,
            ParamKind::Date => Table::Date,
            ParamKind::Uri => Table::Uri,
            ParamKind::Number | ParamKind::Quantity => Table::Number,
            ParamKind::Special => return Err(bad(format!("`{code}` does not support :missing"))),
        };
        if p.expr.is_none() {
            // _id and _lastUpdated are never missing
            return Ok(Some(if missing {
                Filter::Nothing
            } else {
                Filter::And(vec![])
            }));
        }
        return Ok(Some(Filter::Missing {
            table,
            param: p.key.clone(),
            missing,
        }));
    }
    let values = split_or(value);
    if values.iter().all(String::is_empty) {
        return Err(bad(format!("empty value for `{name}`")));
    }
    let mut alternatives = Vec::with_capacity(values.len());
    for v in &values {
        alternatives.push(value_filter(ctx, p, modifier, v).map_err(&bad)?);
    }
    // `:not` excludes any of the listed values: NOT (a OR b) = NOT a AND NOT b.
    Ok(Some(if alternatives.len() == 1 {
        alternatives.remove(0)
    } else if modifier == Some("not") {
        Filter::And(alternatives)
    } else {
        Filter::Or(alternatives)
    }))
}

fn value_filter(
    ctx: &Context<'_>,
    p: &Arc<SearchParam>,
    modifier: Option<&str>,
    v: &str,
) -> Result<Filter, String> {
    let unsupported = |m: &str| Err(format!("modifier `:{m}` is not supported on `{}`", p.code));
    let has = |table, checks| Filter::Has {
        table,
        param: p.key.clone(),
        checks,
    };
    match p.kind {
        ParamKind::Token if p.code == "_id" => match modifier {
            None => Ok(Filter::Id(vec![v.to_owned()])),
            Some(m) => unsupported(m),
        },
        ParamKind::Token => {
            let mut checks = Vec::new();
            match split_pipe(v) {
                Some((system, code)) => {
                    checks.push(Check::text("system", Cmp::Eq, system));
                    if !code.is_empty() {
                        checks.push(Check::text("code", Cmp::Eq, code));
                    }
                }
                None => checks.push(Check::text("code", Cmp::Eq, v)),
            }
            match modifier {
                None => Ok(has(Table::Token, checks)),
                Some("not") => Ok(Filter::HasNot {
                    table: Table::Token,
                    param: p.key.clone(),
                    checks,
                }),
                Some(m) => unsupported(m),
            }
        }
        ParamKind::String => {
            let check = match modifier {
                None => Check::text(
                    "norm",
                    Cmp::Like,
                    format!("{}%", like_escape(&extract::normalize(v))),
                ),
                Some("exact") => Check::text("exact", Cmp::Eq, v),
                Some("contains") => Check::text(
                    "norm",
                    Cmp::Like,
                    format!("%{}%", like_escape(&extract::normalize(v))),
                ),
                Some(m) => return unsupported(m),
            };
            Ok(has(Table::String, vec![check]))
        }
        ParamKind::Uri => {
            let check = match modifier {
                None => Check::text("value", Cmp::Eq, v),
                Some("below") => Check::text("value", Cmp::Like, format!("{}%", like_escape(v))),
                Some(m) => return unsupported(m),
            };
            Ok(has(Table::Uri, vec![check]))
        }
        ParamKind::Reference => reference_filter(ctx, p, modifier, v),
        ParamKind::Date => {
            if let Some(m) = modifier {
                return unsupported(m);
            }
            let (prefix, date) = split_prefix(v);
            let Some((plo, phi)) = fhir_date_range(date) else {
                return Err(format!("`{date}` is not a date, dateTime or instant"));
            };
            date_filter(p, prefix, plo, phi, ctx.now)
        }
        ParamKind::Number | ParamKind::Quantity => {
            if let Some(m) = modifier {
                return unsupported(m);
            }
            let (prefix, rest) = split_prefix(v);
            let mut parts = rest.splitn(3, '|');
            let num = parts.next().unwrap_or_default();
            let Some((plo, phi)) = extract::number_range(num) else {
                return Err(format!("`{num}` is not a number"));
            };
            let mut checks = range_checks(prefix, plo, phi, Arg::Real)?;
            if let Some(system) = parts.next().filter(|s| !s.is_empty()) {
                checks.push(Check::text("system", Cmp::Eq, system));
            }
            if let Some(code) = parts.next().filter(|s| !s.is_empty()) {
                checks.push(Check::text("code", Cmp::Eq, code));
            }
            Ok(has(Table::Number, checks))
        }
        ParamKind::Special if p.code == "near" && modifier.is_none() => near(p, v),
        ParamKind::Special => Err(format!("`{}` is not supported", p.code)),
    }
}

/// Default radius of `near` without a distance, in km.
pub const NEAR_DEFAULT_KM: f64 = 50.0;

/// `near=lat|long|distance|unit` (unit `km` by default, or `m`, `[mi_i]`, `[mi_us]`).
fn near(p: &Arc<SearchParam>, v: &str) -> Result<Filter, String> {
    let parts: Vec<&str> = v.split('|').collect();
    let num = |i: usize, what: &str| -> Result<Option<f64>, String> {
        match parts.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(t) => t
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| format!("`near`: `{t}` is not a {what}")),
        }
    };
    let lat = num(0, "latitude")?.ok_or("`near` needs latitude|longitude[|distance|unit]")?;
    let long = num(1, "longitude")?.ok_or("`near` needs latitude|longitude[|distance|unit]")?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&long) {
        return Err("`near`: latitude or longitude out of range".into());
    }
    let distance = num(2, "distance")?.unwrap_or(NEAR_DEFAULT_KM);
    let km = match parts.get(3).copied().unwrap_or("km") {
        "" | "km" => distance,
        "m" => distance / 1000.0,
        "[mi_i]" | "[mi_us]" | "mi" => distance * 1.609_344,
        u => return Err(format!("`near`: unit `{u}` is not one of km, m, [mi_i]")),
    };
    if km < 0.0 {
        return Err("`near`: the distance must not be negative".into());
    }
    Ok(Filter::Near {
        param: p.key.clone(),
        lat,
        long,
        km,
    })
}

use store::Arg;

fn split_prefix(v: &str) -> (&str, &str) {
    for p in ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"] {
        if let Some(rest) = v.strip_prefix(p)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        {
            return (p, rest);
        }
    }
    ("eq", v)
}

/// Conditions on an index row's [lo, hi] for a search range [plo, phi] under a prefix
/// (FHIR R4 search §3.1.1.4.2: the search value and the target value are both ranges).
fn range_checks<T: Copy>(
    prefix: &str,
    plo: T,
    phi: T,
    arg: impl Fn(T) -> Arg,
) -> Result<Vec<Check>, String> {
    let c = |col, cmp, v| Check::new(col, cmp, arg(v));
    Ok(match prefix {
        "eq" => vec![c("lo", Cmp::Ge, plo), c("hi", Cmp::Le, phi)],
        "gt" => vec![c("hi", Cmp::Gt, phi)],
        "lt" => vec![c("lo", Cmp::Lt, plo)],
        "ge" => vec![c("hi", Cmp::Ge, plo)],
        "le" => vec![c("lo", Cmp::Le, phi)],
        "sa" => vec![c("lo", Cmp::Gt, phi)],
        "eb" => vec![c("hi", Cmp::Lt, plo)],
        // overlap, for `ap` after widening by the caller
        "ap" => vec![c("lo", Cmp::Le, phi), c("hi", Cmp::Ge, plo)],
        _ => return Err(format!("prefix `{prefix}` is not supported here")),
    })
}

fn date_filter(
    p: &SearchParam,
    prefix: &str,
    plo: i64,
    phi: i64,
    now: Micros,
) -> Result<Filter, String> {
    let (plo, phi) = if prefix == "ap" {
        // ± 10 % of the distance to now, at least a day
        let gap = ((now - plo).abs() / 10).max(86_400_000_000);
        (plo.saturating_sub(gap), phi.saturating_add(gap))
    } else {
        (plo, phi)
    };
    if p.expr.is_none() {
        // _lastUpdated: an instant column
        let bounds = match prefix {
            "eq" | "ap" => vec![(Cmp::Ge, plo), (Cmp::Le, phi)],
            "ne" => {
                return Ok(Filter::Or(vec![
                    Filter::LastUpdated(vec![(Cmp::Lt, plo)]),
                    Filter::LastUpdated(vec![(Cmp::Gt, phi)]),
                ]));
            }
            "gt" | "sa" => vec![(Cmp::Gt, phi)],
            "lt" | "eb" => vec![(Cmp::Lt, plo)],
            "ge" => vec![(Cmp::Ge, plo)],
            "le" => vec![(Cmp::Le, phi)],
            _ => return Err(format!("prefix `{prefix}`")),
        };
        return Ok(Filter::LastUpdated(bounds));
    }
    if prefix == "ne" {
        let eq = range_checks("eq", plo, phi, Arg::Int)?;
        return Ok(Filter::HasNot {
            table: Table::Date,
            param: p.key.clone(),
            checks: eq,
        });
    }
    Ok(Filter::Has {
        table: Table::Date,
        param: p.key.clone(),
        checks: range_checks(prefix, plo, phi, Arg::Int)?,
    })
}

fn reference_filter(
    ctx: &Context<'_>,
    p: &SearchParam,
    modifier: Option<&str>,
    v: &str,
) -> Result<Filter, String> {
    if modifier == Some("identifier") {
        let mut checks = Vec::new();
        match split_pipe(v) {
            Some((system, code)) => {
                checks.push(Check::text("system", Cmp::Eq, system));
                checks.push(Check::text("code", Cmp::Eq, code));
            }
            None => checks.push(Check::text("code", Cmp::Eq, v)),
        }
        return Ok(Filter::Has {
            table: Table::Token,
            param: format!("{}:identifier", p.key),
            checks,
        });
    }
    let type_mod = match modifier {
        None => None,
        Some(t) if t.starts_with(char::is_uppercase) => Some(t),
        Some(m) => return Err(format!("modifier `:{m}` is not supported on `{}`", p.code)),
    };
    // a reference to this server written absolute is the same as a relative one
    let local = v
        .strip_prefix(ctx.base)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(v);
    let checks = match reference::parse(local) {
        Some(r) if r.base.is_none() => {
            if type_mod.is_some_and(|t| t != r.rtype) {
                return Err(format!("`{v}` is not a {}", type_mod.unwrap_or_default()));
            }
            vec![
                Check::text("target_type", Cmp::Eq, r.rtype),
                Check::text("target_id", Cmp::Eq, r.id),
            ]
        }
        _ if reference::is_id(local) => {
            let mut c = vec![Check::text("target_id", Cmp::Eq, local)];
            if let Some(t) = type_mod {
                c.push(Check::text("target_type", Cmp::Eq, t));
            }
            c
        }
        // absolute URLs elsewhere and canonicals
        _ => vec![
            Check::text("target_type", Cmp::Eq, ""),
            Check::text("target_id", Cmp::Eq, v.split('|').next().unwrap_or(v)),
        ],
    };
    Ok(Filter::Has {
        table: Table::Reference,
        param: p.key.clone(),
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_values_and_escapes() {
        assert_eq!(split_or("a,b\\,c"), vec!["a", "b,c"]);
        assert_eq!(
            split_pipe("http://s|c"),
            Some(("http://s".into(), "c".into()))
        );
        assert_eq!(split_pipe("|c"), Some(("".into(), "c".into())));
        assert_eq!(split_pipe("c"), None);
        assert_eq!(split_prefix("ge2020"), ("ge", "2020"));
        assert_eq!(split_prefix("2020"), ("eq", "2020"));
    }
}
