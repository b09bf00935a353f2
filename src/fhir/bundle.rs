//! Bundles: searchset and history pages (assembled as text around the stored resources, so a
//! page costs no re-serialisation), and batch / transaction processing.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::error::{Error, Issue, Result, outcome};
use super::interaction::{self, Body, Checked, Fhir, PatchFormat, Req, Resp, Route};
use super::json;
use super::search::{Search, Summary};
use crate::store::{Conn, Stored, Tx};
use crate::time::{format_instant, parse_http_date};

/// Most resources `_include`/`_revinclude` add to one page; past it the page says so.
const MAX_INCLUDED: usize = 1000;

fn link_url(
    base: &str,
    path: &str,
    params: &[(String, String)],
    extra: &[(&str, String)],
) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    for (k, v) in extra {
        ser.append_pair(k, v);
    }
    let q = ser.finish();
    if q.is_empty() {
        format!("{base}/{path}")
    } else {
        format!("{base}/{path}?{q}")
    }
}

/// A resource's text as it goes into the Bundle (the `_summary`/`_elements` view if asked).
fn view(fhir: &Fhir, s: &Search, body: &str) -> String {
    if s.summary.is_none() && s.elements.is_none() {
        return body.to_owned();
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return body.to_owned();
    };
    let v = match (&s.elements, s.summary) {
        (Some(names), _) => json::elements(fhir.model, &v, names),
        (None, Some(mode)) => json::summary(fhir.model, &v, mode),
        (None, None) => v,
    };
    serde_json::to_string(&v).unwrap_or_else(|_| body.to_owned())
}

fn entry(out: &mut String, fhir: &Fhir, rtype: &str, id: &str, resource: &str, mode: &str) {
    if !out.ends_with('[') {
        out.push(',');
    }
    let _ = write!(
        out,
        r#"{{"fullUrl":{},"resource":{resource},"search":{{"mode":"{mode}"}}}}"#,
        Value::String(format!("{}/{rtype}/{id}", fhir.base))
    );
}

pub async fn search(
    fhir: &Fhir,
    conn: &mut Conn<'_>,
    rtype: &str,
    s: Search,
    caller: &crate::auth::Caller,
) -> Result<Resp> {
    let count_only = s.summary == Some(Summary::Count);
    let mut page_query = s.query.clone();
    page_query.limit = if count_only { 0 } else { s.count + 1 };
    let mut rows = if count_only || s.count == 0 {
        Vec::new()
    } else {
        conn.search(&page_query).await?
    };
    let has_next = rows.len() > s.count;
    rows.truncate(s.count);
    let total = if s.total || count_only || s.count == 0 {
        Some(conn.count(&s.query).await?)
    } else if !has_next && (s.offset == 0 || !rows.is_empty()) {
        Some((s.offset + rows.len()) as i64)
    } else {
        None
    };

    let mut included: Vec<Stored> = Vec::new();
    let mut warnings = s.warnings.clone();
    if !rows.is_empty() && (!s.includes.is_empty() || !s.revincludes.is_empty()) {
        included = includes(fhir, conn, &s, &rows, &mut warnings).await?;
        // an include does not show what a search would not (unit notes of other units)
        included.retain(|r| {
            r.body
                .as_deref()
                .is_none_or(|b| fhir.workflow.visible(caller, &r.rtype, b))
        });
    }
    Ok(searchset(
        fhir,
        rtype,
        &s,
        Page {
            rows: &rows,
            included: &included,
            has_next,
            total,
            warnings: &warnings,
        },
    ))
}

/// One page of search results, as found.
pub struct Page<'a> {
    pub rows: &'a [Stored],
    pub included: &'a [Stored],
    /// More matches follow this page.
    pub has_next: bool,
    /// The number of matches, when known.
    pub total: Option<i64>,
    pub warnings: &'a [Issue],
}

/// The searchset Bundle of a page: its links, matches, includes and the outcome of what the
/// search left out.
pub fn searchset(fhir: &Fhir, rtype: &str, s: &Search, page: Page<'_>) -> Resp {
    let Page {
        rows,
        included,
        has_next,
        total,
        warnings,
    } = page;
    let mut out = String::with_capacity(256 + rows.len() * 2500);
    let _ = write!(
        out,
        r#"{{"resourceType":"Bundle","id":"{}","meta":{{"lastUpdated":"{}"}},"type":"searchset""#,
        interaction::new_id(),
        format_instant(fhir.store.clock().now())
    );
    if let Some(t) = total {
        let _ = write!(out, r#","total":{t}"#);
    }
    let mut links = vec![("self", link_url(&fhir.base, rtype, &s.used, &[]))];
    if has_next {
        links.push((
            "next",
            link_url(
                &fhir.base,
                rtype,
                &s.used,
                &[("_offset", (s.offset + s.count).to_string())],
            ),
        ));
    }
    if s.offset > 0 {
        links.push((
            "previous",
            link_url(
                &fhir.base,
                rtype,
                &s.used,
                &[("_offset", s.offset.saturating_sub(s.count).to_string())],
            ),
        ));
    }
    out.push_str(r#","link":["#);
    for (i, (rel, url)) in links.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"relation":"{rel}","url":{}}}"#,
            Value::String(url.clone())
        );
    }
    out.push_str(r#"],"entry":["#);
    for r in rows {
        if let Some(body) = &r.body {
            entry(
                &mut out,
                fhir,
                &r.rtype,
                &r.id,
                &view(fhir, s, body),
                "match",
            );
        }
    }
    for r in included {
        if let Some(body) = &r.body {
            entry(
                &mut out,
                fhir,
                &r.rtype,
                &r.id,
                &view(fhir, s, body),
                "include",
            );
        }
    }
    if !warnings.is_empty() {
        if !out.ends_with('[') {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"resource":{},"search":{{"mode":"outcome"}}}}"#,
            outcome(warnings)
        );
    }
    out.push_str("]}");
    if out.ends_with(r#","entry":[]}"#) {
        out.truncate(out.len() - r#","entry":[]}"#.len());
        out.push('}');
    }
    Resp::text(StatusCode::OK, out)
}

async fn includes(
    fhir: &Fhir,
    conn: &mut Conn<'_>,
    s: &Search,
    rows: &[Stored],
    warnings: &mut Vec<Issue>,
) -> Result<Vec<Stored>> {
    let mut seen: HashSet<(String, String)> = rows
        .iter()
        .map(|r| (r.rtype.clone(), r.id.clone()))
        .collect();
    let mut out: Vec<Stored> = Vec::new();
    let mut frontier: Vec<Stored> = rows.to_vec();
    // `:iterate` follows includes from included resources, a bounded number of rounds.
    for round in 0..4 {
        let mut found = Vec::new();
        for inc in &s.includes {
            if round > 0 && !inc.iterate {
                continue;
            }
            let Some(p) = fhir.registry.param(&inc.source_type, &inc.param) else {
                continue;
            };
            let rids: Vec<i64> = frontier
                .iter()
                .filter(|r| r.rtype == inc.source_type)
                .map(|r| r.rid)
                .collect();
            let targets = conn
                .references_of(&rids, &p.key, inc.target_type.as_deref())
                .await?;
            let new: Vec<(String, String)> = targets
                .into_iter()
                .filter(|t| !t.0.is_empty() && !seen.contains(t))
                .collect();
            found.extend(conn.many(&new).await?);
        }
        if round == 0 {
            for inc in &s.revincludes {
                let Some(p) = fhir.registry.param(&inc.source_type, &inc.param) else {
                    continue;
                };
                let targets: Vec<(String, String)> = rows
                    .iter()
                    .map(|r| (r.rtype.clone(), r.id.clone()))
                    .collect();
                found.extend(
                    conn.referencing(&inc.source_type, &p.key, &targets, MAX_INCLUDED + 1)
                        .await?,
                );
            }
        }
        found.retain(|r| seen.insert((r.rtype.clone(), r.id.clone())));
        if found.is_empty() {
            break;
        }
        out.extend(found.iter().cloned());
        frontier = found;
        if out.len() > MAX_INCLUDED {
            out.truncate(MAX_INCLUDED);
            warnings.push(Issue::warning(
                "too-costly",
                format!("more than {MAX_INCLUDED} included resources: the list is cut"),
            ));
            break;
        }
    }
    Ok(out)
}

pub async fn history(
    fhir: &Fhir,
    conn: &mut Conn<'_>,
    rtype: Option<&str>,
    id: Option<&str>,
    query: &[(String, String)],
    caller: &crate::auth::Caller,
) -> Result<Resp> {
    let mut count = fhir.paging.default_count;
    let mut offset = 0usize;
    let mut since = None;
    let mut used = Vec::new();
    for (k, v) in query {
        let bad = || Error::invalid_at("invalid", format!("{k}=`{v}` is not valid"), k.clone());
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| bad())?
                    .min(fhir.paging.max_count);
                used.push((k.clone(), v.clone()));
            }
            "_offset" => offset = v.parse().map_err(|_| bad())?,
            "_since" => {
                since = Some(
                    crate::time::fhir_date_range(v)
                        .map(|r| r.0)
                        .or_else(|| parse_http_date(v))
                        .ok_or_else(bad)?,
                );
                used.push((k.clone(), v.clone()));
            }
            "_format" | "_pretty" => {}
            _ => {
                return Err(Error::invalid_at(
                    "not-supported",
                    format!("history does not support `{k}`"),
                    k.clone(),
                ));
            }
        }
    }
    let (rows, total) = conn.history(rtype, id, since, count, offset).await?;
    let path = match (rtype, id) {
        (Some(t), Some(i)) => format!("{t}/{i}/_history"),
        (Some(t), None) => format!("{t}/_history"),
        _ => "_history".to_owned(),
    };
    let mut links =
        vec![json!({"relation": "self", "url": link_url(&fhir.base, &path, &used, &[])})];
    if (offset + rows.len()) < total as usize {
        links.push(json!({"relation": "next", "url": link_url(&fhir.base, &path, &used, &[("_offset", (offset + count).to_string())])}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": link_url(&fhir.base, &path, &used, &[("_offset", offset.saturating_sub(count).to_string())])}));
    }
    let mut entries = Vec::with_capacity(rows.len());
    for h in rows {
        // what the caller may not see is left out (a page may then be shorter)
        if h.body
            .as_deref()
            .is_some_and(|b| !fhir.workflow.visible(caller, &h.rtype, b))
        {
            continue;
        }
        let full = format!("{}/{}/{}", fhir.base, h.rtype, h.id);
        let url = if h.method == "POST" {
            h.rtype.clone()
        } else {
            format!("{}/{}", h.rtype, h.id)
        };
        let status = match h.method.as_str() {
            "POST" => "201 Created",
            "DELETE" => "204 No Content",
            _ => "200 OK",
        };
        let mut e = json!({
            "fullUrl": full,
            "request": {"method": h.method, "url": url},
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", h.version),
                "lastModified": format_instant(h.last_updated),
            },
        });
        if let Some(body) = &h.body {
            let resource: Value = serde_json::from_str(body).map_err(|e| {
                Error::invalid("exception", format!("stored resource unreadable: {e}"))
            })?;
            e["resource"] = resource;
        }
        entries.push(e);
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": interaction::new_id(),
        "meta": {"lastUpdated": format_instant(fhir.store.clock().now())},
        "type": "history",
        "total": total,
        "link": links,
    });
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(Resp::json(StatusCode::OK, bundle))
}

/// A Bundle entry read into a request.
struct EntryReq {
    full_url: Option<String>,
    req: Req,
    /// A transaction entry's create or update body, checked before the writer's turn.
    body: Option<Checked>,
}

/// Takes the entries' resources out of `bundle` (no copy).
fn entry_requests(fhir: &Fhir, bundle: &mut Value) -> Result<Vec<EntryReq>> {
    let mut out = Vec::new();
    let entries = bundle.get_mut("entry").and_then(Value::as_array_mut);
    for (i, e) in entries.into_iter().flatten().enumerate() {
        let at = format!("Bundle.entry[{i}]");
        let bad = |msg: String| Error::invalid_at("invalid", msg, at.clone());
        let resource = e.get_mut("resource").map(Value::take);
        let request = e
            .get("request")
            .ok_or_else(|| bad("an entry of a batch or transaction needs a request".into()))?;
        let method = match request["method"].as_str() {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("POST") => Method::POST,
            Some("PUT") => Method::PUT,
            Some("PATCH") => Method::PATCH,
            Some("DELETE") => Method::DELETE,
            other => return Err(bad(format!("unsupported request.method {other:?}"))),
        };
        let url = request["url"]
            .as_str()
            .ok_or_else(|| bad("missing request.url".into()))?;
        let url = url.strip_prefix(&fhir.base).unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let route = interaction::route(path)?;
        let mut req = Req::new(method.clone(), route);
        req.query = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        req.body = resource;
        if method == Method::PATCH {
            // A FHIRPath Patch travels as a Parameters resource; a JSON Patch as a Binary.
            match req.body.as_ref().and_then(json::resource_type) {
                Some("Parameters") => req.patch_format = Some(PatchFormat::FhirPath),
                Some("Binary") => {
                    let data = req
                        .body
                        .as_ref()
                        .and_then(|b| b["data"].as_str())
                        .unwrap_or("");
                    let bytes = base64_decode(data)
                        .ok_or_else(|| bad("Binary.data is not base64".into()))?;
                    req.body = Some(
                        serde_json::from_slice(&bytes)
                            .map_err(|e| bad(format!("JSON Patch: {e}")))?,
                    );
                    req.patch_format = Some(PatchFormat::Json);
                }
                _ => {
                    return Err(bad(
                        "a PATCH entry carries Parameters or a Binary JSON Patch".into(),
                    ));
                }
            }
        }
        if let Some(m) = request["ifMatch"].as_str() {
            req.if_match = Some(parse_etag(m).ok_or_else(|| bad(format!("ifMatch `{m}`")))?);
        }
        req.if_none_exist = request["ifNoneExist"].as_str().map(str::to_owned);
        req.if_none_match = request["ifNoneMatch"].as_str().map(str::to_owned);
        req.if_modified_since = request["ifModifiedSince"]
            .as_str()
            .and_then(|s| crate::time::fhir_date_range(s).map(|r| r.0));
        out.push(EntryReq {
            full_url: e["fullUrl"].as_str().map(str::to_owned),
            req,
            body: None,
        });
    }
    Ok(out)
}

pub fn parse_etag(s: &str) -> Option<i64> {
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// Base64 as clients send it: either alphabet, padded or not, wrapped lines.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(&compact)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, config).decode(&compact))
        .ok()
}

fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

/// A batch or transaction response entry, written to `out` as JSON text: a stored resource
/// goes in as the text it was stored as (not parsed again).
fn response_entry(out: &mut String, fhir: &Fhir, resp: &Resp) {
    let string = |s: &str| Value::String(s.to_owned()).to_string();
    let mut fields: Vec<String> = Vec::with_capacity(3);
    if let Some(l) = &resp.location
        && let Some(full) = l.split("/_history/").next()
    {
        fields.push(format!(r#""fullUrl":{}"#, string(full)));
    }
    match &resp.body {
        // stored text is a JSON object; anything else would not be
        Body::Raw(text) if text.starts_with('{') => fields.push(format!(r#""resource":{text}"#)),
        Body::Json(v) => fields.push(format!(r#""resource":{v}"#)),
        Body::Raw(_) | Body::None | Body::Table(_) => {}
    }
    let mut r = format!(r#""status":{}"#, string(&status_line(resp.status)));
    if let Some(l) = &resp.location {
        let relative = l.strip_prefix(&format!("{}/", fhir.base)).unwrap_or(l);
        let _ = write!(r, r#","location":{}"#, string(relative));
    }
    if let Some(v) = resp.version {
        let _ = write!(r, r#","etag":{}"#, string(&format!("W/\"{v}\"")));
    }
    if let Some(t) = resp.last_modified {
        let _ = write!(r, r#","lastModified":"{}""#, format_instant(t));
    }
    fields.push(format!(r#""response":{{{r}}}"#));
    out.push('{');
    out.push_str(&fields.join(","));
    out.push('}');
}

fn error_entry(err: &Error) -> Value {
    json!({
        "response": {
            "status": status_line(err.status()),
            "outcome": outcome(&err.issues()),
        }
    })
}

/// `POST [base]` with a batch or transaction Bundle.
pub async fn batch_or_transaction(fhir: &Arc<Fhir>, req: Req) -> Result<Resp> {
    let mut bundle = req
        .body
        .ok_or_else(|| Error::invalid("required", "POST to the base needs a Bundle"))?;
    if json::resource_type(&bundle) != Some("Bundle") {
        return Err(Error::invalid_at(
            "invalid",
            "POST to the base takes a Bundle",
            "resourceType",
        ));
    }
    let kind = bundle["type"].as_str().unwrap_or_default().to_owned();
    if kind != "batch" && kind != "transaction" {
        return Err(Error::invalid_at(
            "invalid",
            format!("Bundle.type must be batch or transaction, not `{kind}`"),
            "Bundle.type",
        ));
    }
    // A transaction fails whole on any bad resource, so check them all first; a batch
    // entry fails alone, when it runs.
    if kind == "transaction" {
        let issues = super::validate::validate_resource(fhir.model, &bundle);
        if !issues.is_empty() {
            return Err(Error::Invalid(issues));
        }
    }
    let mut entries = entry_requests(fhir, &mut bundle)?;
    for e in &mut entries {
        e.req.caller = req.caller.clone();
    }
    // The response is written as text: the resources it carries are the stored texts.
    let mut out = String::with_capacity(128 + entries.len() * 2600);
    let _ = write!(
        out,
        r#"{{"resourceType":"Bundle","id":"{}","type":"{kind}-response""#,
        interaction::new_id()
    );
    // FHIR has no empty arrays
    if !entries.is_empty() {
        out.push_str(r#","entry":["#);
    }
    let n = entries.len();
    if kind == "batch" {
        for (i, e) in entries.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let mut r = e.req;
            if matches!(r.route, Route::Root) {
                out.push_str(
                    &error_entry(&Error::invalid("not-supported", "nested batch")).to_string(),
                );
                continue;
            }
            r.strict = req.strict;
            match interaction::run_single(fhir, r).await {
                Ok(resp) => response_entry(&mut out, fhir, &resp),
                Err(err) => out.push_str(&error_entry(&err).to_string()),
            }
        }
    } else {
        // What needs no database is settled before the writer's turn (the Bundle, validated
        // whole above, is not validated again entry by entry).
        for (i, e) in entries.iter_mut().enumerate() {
            interaction::admit(fhir, &e.req).map_err(|x| at_entry(i, x))?;
            e.body = interaction::prepare(fhir, &mut e.req, true).map_err(|x| at_entry(i, x))?;
        }
        let f = fhir.clone();
        let resps = fhir
            .store
            .write(move |tx| Box::pin(async move { transaction(&f, tx, entries).await }))
            .await?;
        for (i, r) in resps.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            response_entry(&mut out, fhir, r);
        }
    }
    if n > 0 {
        out.push(']');
    }
    out.push('}');
    Ok(Resp::text(StatusCode::OK, out))
}

/// Processing order of a transaction (FHIR R4 http.html#trules).
fn phase(m: &Method) -> u8 {
    match *m {
        Method::DELETE => 0,
        Method::POST => 1,
        Method::PUT | Method::PATCH => 2,
        _ => 3,
    }
}

/// An entry's error, naming the entry.
fn at_entry(i: usize, e: Error) -> Error {
    let status = e.status();
    let issues: Vec<Issue> = e
        .issues()
        .into_iter()
        .map(|mut iss| {
            iss.diagnostics = format!("transaction entry {i}: {}", iss.diagnostics);
            if iss.expression.is_none() {
                iss.expression = Some(format!("Bundle.entry[{i}]"));
            }
            iss
        })
        .collect();
    match status {
        StatusCode::BAD_REQUEST => Error::Invalid(issues),
        StatusCode::UNPROCESSABLE_ENTITY => Error::Unprocessable(issues),
        StatusCode::NOT_FOUND => Error::NotFound(issues[0].diagnostics.clone()),
        StatusCode::GONE => Error::Gone(issues[0].diagnostics.clone()),
        StatusCode::PRECONDITION_FAILED => Error::PreconditionFailed(issues[0].diagnostics.clone()),
        StatusCode::CONFLICT => Error::Conflict(issues[0].diagnostics.clone()),
        StatusCode::METHOD_NOT_ALLOWED => Error::MethodNotAllowed(issues[0].diagnostics.clone()),
        _ => e,
    }
}

async fn transaction(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    mut entries: Vec<EntryReq>,
) -> Result<Vec<Resp>> {
    // 1. what each fullUrl will be: new ids for creates, matches for conditional ones
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut matched: HashSet<usize> = HashSet::new();
    let mut touched: HashSet<String> = HashSet::new();
    for (i, e) in entries.iter_mut().enumerate() {
        let target = match (&e.req.method, &e.req.route) {
            (&Method::POST, Route::Type(t)) => {
                let mut found = None;
                if let Some(c) = &e.req.if_none_exist {
                    let criteria = interaction::parse_query_string(c);
                    tx.lock_key(&interaction::criteria_key(t, &criteria))
                        .await?;
                    let mut s = fhir
                        .parse_search(t, &criteria, true)
                        .map_err(|x| at_entry(i, x))?;
                    s.query.limit = 2;
                    let m = tx.conn().search(&s.query).await?;
                    if m.len() == 1 {
                        found = Some(m[0].id.clone());
                        matched.insert(i);
                    }
                }
                let id = found.unwrap_or_else(interaction::new_id);
                Some(format!("{t}/{id}"))
            }
            (&Method::PUT | &Method::PATCH | &Method::DELETE, Route::Instance(t, id)) => {
                Some(format!("{t}/{id}"))
            }
            _ => None,
        };
        if let Some(t) = &target
            && !e.req.route.eq(&Route::Root)
            && e.req.method != Method::POST
            && !touched.insert(t.clone())
        {
            return Err(at_entry(
                i,
                Error::invalid("invalid", format!("{t} appears twice in the transaction")),
            ));
        }
        if let (Some(full), Some(t)) = (&e.full_url, target) {
            ids.insert(full.clone(), t);
        }
    }
    // 2. references to other entries and conditional references
    for (i, e) in entries.iter_mut().enumerate() {
        let body = match e.body.as_mut() {
            Some(checked) => Some(checked.value_mut()),
            None => e.req.body.as_mut(),
        };
        if let Some(body) = body {
            let mut pending = Vec::new();
            rewrite_references(body, &ids, &mut pending);
            for (pointer, criteria) in pending {
                let (t, q) = criteria.split_once('?').unwrap_or((&criteria, ""));
                let params: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let mut s = fhir
                    .parse_search(t, &params, true)
                    .map_err(|x| at_entry(i, x))?;
                s.query.limit = 2;
                let m = tx.conn().search(&s.query).await?;
                if m.len() != 1 {
                    return Err(at_entry(
                        i,
                        Error::PreconditionFailed(format!(
                            "conditional reference `{criteria}` matches {} resources, not one",
                            m.len()
                        )),
                    ));
                }
                if let Some(slot) = body.pointer_mut(&pointer) {
                    *slot = Value::String(format!("{t}/{}", m[0].id));
                }
            }
        }
    }
    // 3. run in the specification's order, answer in the Bundle's
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| phase(&entries[i].req.method));
    let mut responses: Vec<Option<Resp>> = vec![None; entries.len()];
    for i in order {
        let e = &mut entries[i];
        let resp = if e.req.is_write() {
            if let (&Method::POST, Route::Type(t), Some(full)) =
                (&e.req.method, &e.req.route, &e.full_url)
                && !matched.contains(&i)
                && let Some(assigned) = ids.get(full)
            {
                // create under the id other entries already point at
                let id = assigned.rsplit('/').next().unwrap_or_default();
                let body = e.body.take().ok_or_else(|| {
                    at_entry(
                        i,
                        Error::invalid("required", "create needs a resource in the body"),
                    )
                })?;
                interaction::create_as(fhir, tx, &e.req.caller, t, id, body)
                    .await
                    .map_err(|x| at_entry(i, x))?
            } else {
                interaction::write(fhir, tx, &mut e.req, e.body.take())
                    .await
                    .map_err(|x| at_entry(i, x))?
            }
        } else if matches!(e.req.route, Route::Root) {
            return Err(at_entry(
                i,
                Error::invalid("not-supported", "nested transaction"),
            ));
        } else {
            interaction::read(fhir, tx.conn(), &e.req)
                .await
                .map_err(|x| at_entry(i, x))?
        };
        responses[i] = Some(resp);
    }
    Ok(responses.into_iter().flatten().collect())
}

/// Replaces `reference` values naming another entry's fullUrl; collects conditional
/// references (`Patient?identifier=…`) with their JSON pointer.
fn rewrite_references(
    v: &mut Value,
    ids: &HashMap<String, String>,
    pending: &mut Vec<(String, String)>,
) {
    fn walk(
        v: &mut Value,
        path: &mut String,
        ids: &HashMap<String, String>,
        pending: &mut Vec<(String, String)>,
    ) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    if k == "reference"
                        && let Value::String(r) = child
                    {
                        if let Some(new) = ids.get(r.as_str()) {
                            *r = new.clone();
                        } else if r.split_once('?').is_some_and(|(t, _)| {
                            t.starts_with(|c: char| c.is_ascii_uppercase())
                                && t.bytes().all(|b| b.is_ascii_alphabetic())
                        }) {
                            pending.push((path.clone(), r.clone()));
                        }
                    } else {
                        walk(child, path, ids, pending);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter_mut().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "/{i}");
                    walk(child, path, ids, pending);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    walk(v, &mut String::new(), ids, pending);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_rewritten() {
        let mut v = json!({"subject": {"reference": "urn:uuid:1"}, "basedOn": [{"reference": "ServiceRequest?identifier=x|1"}]});
        let ids = HashMap::from([("urn:uuid:1".to_owned(), "Patient/abc".to_owned())]);
        let mut pending = Vec::new();
        rewrite_references(&mut v, &ids, &mut pending);
        assert_eq!(v["subject"]["reference"], "Patient/abc");
        assert_eq!(
            pending,
            vec![(
                "/basedOn/0/reference".to_owned(),
                "ServiceRequest?identifier=x|1".to_owned()
            )]
        );
    }

    #[test]
    fn etags_and_base64() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"3\""), Some(3));
        assert_eq!(base64_decode("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
    }
}
