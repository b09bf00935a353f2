//! The HTTP edge of the FHIR API: one handler for everything under `/fhir` that reads the
//! HTTP request into a [`Req`], runs it, and writes the [`Resp`] (or the error, as an
//! `OperationOutcome`) back with the FHIR headers. Content negotiation lives here.

use std::sync::Arc;

use axum::body::{Body as HttpBody, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;

use super::bundle::parse_etag;
use super::error::{Error, Issue, Severity, outcome};
use super::interaction::{self, Body, Fhir, PatchFormat, Req, Resp, Return, Route};
use super::json;
use super::search::Summary;
use crate::audit::Access;
use crate::time::{http_date, parse_http_date};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

/// The two wire formats of FHIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// A MIME type (or `_format` value) this server reads and writes.
    fn from_mime(mime: &str) -> Option<Format> {
        match mime.trim().to_ascii_lowercase().as_str() {
            "json"
            | "application/json"
            | "application/fhir+json"
            | "application/json+fhir"
            | "text/json" => Some(Format::Json),
            "xml"
            | "application/xml"
            | "application/fhir+xml"
            | "application/xml+fhir"
            | "text/xml" => Some(Format::Xml),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => FHIR_JSON,
            Format::Xml => FHIR_XML,
        }
    }
}

/// The spreadsheet formats of dashboard exports (a Task search), besides FHIR's two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tabular {
    Csv,
    Xlsx,
}

impl Tabular {
    fn from_mime(mime: &str) -> Option<Tabular> {
        match mime.trim().to_ascii_lowercase().as_str() {
            "csv" | "text/csv" => Some(Tabular::Csv),
            "xlsx" | crate::export::XLSX_MIME => Some(Tabular::Xlsx),
            _ => None,
        }
    }

    /// `_format`, or an `Accept` that names only this type.
    fn negotiate(format: Option<&str>, accept: Option<&str>) -> Option<Tabular> {
        match format {
            Some(f) => Tabular::from_mime(f),
            None => accept.and_then(|a| Tabular::from_mime(a.split(';').next().unwrap_or(""))),
        }
    }
}

/// What the handler needs besides the FHIR service.
pub struct Edge {
    pub fhir: Arc<Fhir>,
    pub audit: crate::audit::Auditor,
    pub max_body_bytes: usize,
    /// How the caller is established (`dev` header or `psc` bearer tokens).
    pub auth: crate::auth::Authenticator,
}

/// How the response is written.
struct Output {
    format: Format,
    pretty: bool,
    tabular: Option<Tabular>,
    summary: Option<Summary>,
    elements: Option<Vec<String>>,
    prefer: Return,
}

pub async fn handle(State(edge): State<Arc<Edge>>, request: Request) -> Response {
    // Errors go back in the format the client asked for, when it asked for one we speak.
    let format = response_format(&request).unwrap_or(Format::Json);
    let had_token = request.headers().contains_key(header::AUTHORIZATION);
    let mut access = Access {
        method: request.method().to_string(),
        address: request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        ..Access::default()
    };
    let (mut response, error) = match handle_inner(&edge, request, &mut access).await {
        Ok(r) => (r, None),
        Err(e) => (error_response_in(&e, format), Some(e.to_string())),
    };
    if response.status() == StatusCode::UNAUTHORIZED && (had_token || !edge.auth.is_dev()) {
        // RFC 6750 §3: a bad token is `invalid_token`; no token, just the challenge
        let challenge = if had_token {
            "Bearer realm=\"passerelle\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"passerelle\""
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if access.audited() {
        let now = edge.fhir.store.clock().now();
        for row in access.rows(response.status().as_u16(), error.as_deref(), now) {
            edge.audit.record_row(row).await;
        }
    }
    response
}

pub fn error_response(e: &Error) -> Response {
    error_response_in(e, Format::Json)
}

fn error_response_in(e: &Error, format: Format) -> Response {
    if let Error::Store(inner) = e {
        tracing::error!(error = %inner, "storage error");
    }
    let mut resp = value_response(e.status(), &outcome(&e.issues()), format, false);
    if e.status() == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
        );
    }
    resp
}

/// Writes a resource (or Bundle, OperationOutcome…) in `format`.
fn value_response(status: StatusCode, v: &Value, format: Format, pretty: bool) -> Response {
    let model = super::model::Model::r4();
    let text = match (format, pretty) {
        (Format::Json, false) => serde_json::to_string(v).map_err(|e| e.to_string()),
        (Format::Json, true) => serde_json::to_string_pretty(v).map_err(|e| e.to_string()),
        (Format::Xml, false) => super::xml::to_xml(model, v).map_err(|e| e.to_string()),
        (Format::Xml, true) => super::xml::to_xml_pretty(model, v).map_err(|e| e.to_string()),
    };
    match text {
        Ok(t) => text_response(status, t, format),
        Err(e) => {
            tracing::error!(error = %e, "cannot write the response");
            let oo = outcome(&[Issue::error("exception", "cannot write the response")]);
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::to_string(&oo).unwrap_or_default(),
                Format::Json,
            )
        }
    }
}

fn text_response(status: StatusCode, text: String, format: Format) -> Response {
    let mut r = (status, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The response format: `_format` wins over `Accept`; `Accept` ranges are taken by `q`
/// then order; no preference means JSON. `Err` (406) when nothing acceptable is served.
fn negotiate(format: Option<&str>, accept: Option<&str>) -> Result<Format, Error> {
    if let Some(f) = format {
        return Format::from_mime(f).ok_or_else(|| {
            Error::NotAcceptable(format!("_format `{f}` is not served (json, xml)"))
        });
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Format::Json);
    };
    let mut ranges: Vec<(f32, usize, &str)> = Vec::new();
    for (i, part) in accept.split(',').enumerate() {
        let mut pieces = part.split(';');
        let mime = pieces.next().unwrap_or("").trim();
        let q = pieces
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q > 0.0 {
            ranges.push((q, i, mime));
        }
    }
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, mime) in ranges {
        if let Some(f) = Format::from_mime(mime) {
            return Ok(f);
        }
        if matches!(mime, "*/*" | "application/*" | "text/*" | "") {
            return Ok(Format::Json);
        }
    }
    Err(Error::NotAcceptable(format!(
        "cannot answer in `{accept}`: this server speaks application/fhir+json and application/fhir+xml"
    )))
}

/// The format the response to `request` will use, if the request allows one.
fn response_format(request: &Request) -> Option<Format> {
    let format = request.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "_format")
            .map(|(_, v)| v.into_owned())
    });
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    negotiate(format.as_deref(), accept).ok()
}

/// Most bytes read past the limit so that the client, still sending, receives the 413
/// instead of a broken connection; a larger body is cut off at once.
const DRAIN_FACTOR: usize = 4;

/// The request body, or 413 when it is over `limit` bytes.
async fn read_body(body: HttpBody, limit: usize) -> Result<Bytes, Error> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Error::invalid("incomplete", format!("cannot read the body: {e}")))?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > limit * DRAIN_FACTOR {
            break;
        }
    }
    if seen > limit {
        return Err(Error::TooLarge(limit));
    }
    Ok(Bytes::from(buf))
}

/// Reads a FHIR resource body in either format.
fn parse_body(bytes: &[u8], format: Format) -> Result<Value, Error> {
    match format {
        Format::Json => json::parse_resource(bytes),
        Format::Xml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::invalid("invalid", "the XML body is not UTF-8"))?;
            super::xml::from_xml(super::model::Model::r4(), text).map_err(|e| {
                let mut issue = Issue::error("invalid", format!("invalid FHIR XML: {e}"));
                issue.expression = e.expression();
                Error::Invalid(vec![issue])
            })
        }
    }
}

async fn handle_inner(
    edge: &Edge,
    request: Request,
    access: &mut Access,
) -> Result<Response, Error> {
    let fhir = &edge.fhir;
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let headers = &parts.headers;
    let path = parts.uri.path().strip_prefix("/fhir").unwrap_or("");
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let format = query
        .iter()
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.clone());
    let tabular = Tabular::negotiate(format.as_deref(), header_str(headers, "accept"));
    let format = match tabular {
        Some(_) => Format::Json,
        None => negotiate(format.as_deref(), header_str(headers, "accept"))?,
    };
    let route = interaction::route(path)?;
    // what the request is about, even if it is refused (the answer may name patients too)
    if let Route::Instance(t, id)
    | Route::Version(t, id, _)
    | Route::InstanceHistory(t, id)
    | Route::Operation {
        rtype: Some(t),
        id: Some(id),
        ..
    } = &route
    {
        access.resource = Some(format!("{t}/{id}"));
    }
    access.route = Some(route.clone());
    access.query = query
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .cloned()
        .collect();
    access.export = tabular.is_some();
    // who is calling, before the body is read
    let caller = edge
        .auth
        .caller(headers, &fhir.store, &method, &route)
        .await?;
    if tabular.is_some()
        && !matches!(
            (&method, &route),
            (&Method::GET, Route::Type(_)) | (&Method::POST, Route::TypeSearch(_))
        )
        && !matches!(&route, Route::Operation { name, .. } if name == "observatory")
    {
        return Err(Error::NotAcceptable(
            "CSV and XLSX are served for searches (dashboard exports) only".into(),
        ));
    }

    let bytes = read_body(body, edge.max_body_bytes).await?;
    let content_type = header_str(headers, "content-type").map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let mut req = Req::new(method.clone(), route);
    req.table = tabular.is_some();
    req.caller = caller;
    if !bytes.is_empty() {
        match content_type.as_deref() {
            Some("application/x-www-form-urlencoded")
                if matches!(req.route, Route::TypeSearch(_)) =>
            {
                query.extend(
                    form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())),
                );
            }
            Some("application/json-patch+json") if method == Method::PATCH => {
                req.patch_format = Some(PatchFormat::Json);
                req.body = Some(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::invalid("invalid", format!("JSON Patch body is not JSON: {e}"))
                })?);
            }
            Some(ct) => {
                let body_format = Format::from_mime(ct).ok_or_else(|| {
                    Error::UnsupportedMediaType(format!(
                        "cannot read a `{ct}` body: send application/fhir+json or application/fhir+xml"
                    ))
                })?;
                req.body = Some(parse_body(&bytes, body_format)?);
                if method == Method::PATCH {
                    req.patch_format = Some(PatchFormat::FhirPath);
                }
            }
            None => {
                return Err(Error::UnsupportedMediaType(
                    "a body needs a Content-Type (application/fhir+json or application/fhir+xml)"
                        .into(),
                ));
            }
        }
    }
    if let Some(m) = header_str(headers, "if-match") {
        req.if_match = Some(parse_etag(m).ok_or_else(|| {
            Error::invalid(
                "invalid",
                format!("If-Match `{m}` is not an ETag like W/\"1\""),
            )
        })?);
    }
    req.if_none_match = header_str(headers, "if-none-match").map(str::to_owned);
    req.if_modified_since = header_str(headers, "if-modified-since").and_then(parse_http_date);
    req.if_none_exist = header_str(headers, "if-none-exist").map(str::to_owned);
    let prefer = header_str(headers, "prefer").unwrap_or("");
    req.strict = prefer
        .split([',', ';'])
        .any(|p| p.trim() == "handling=strict");
    let ret = if prefer.contains("return=minimal") {
        Return::Minimal
    } else if prefer.contains("return=OperationOutcome") {
        Return::OperationOutcome
    } else {
        Return::Representation
    };
    // Some clients send conditional create as `POST Type?criteria`.
    if method == Method::POST && matches!(req.route, Route::Type(_)) && req.if_none_exist.is_none()
    {
        let criteria: Vec<_> = query
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
            .collect();
        if !criteria.is_empty() {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in criteria {
                ser.append_pair(k, v);
            }
            req.if_none_exist = Some(ser.finish());
        }
    }
    let out = Output {
        format,
        pretty: query.iter().any(|(k, v)| k == "_pretty" && v == "true"),
        tabular,
        summary: query
            .iter()
            .find(|(k, _)| k == "_summary")
            .and_then(|(_, v)| match v.as_str() {
                "true" => Some(Summary::True),
                "text" => Some(Summary::Text),
                "data" => Some(Summary::Data),
                "false" => Some(Summary::False),
                _ => None,
            }),
        elements: query.iter().find(|(k, _)| k == "_elements").map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        }),
        prefer: ret,
    };
    req.query = query;
    access.caller = Some(req.caller.clone());
    let resp = interaction::run(fhir, req).await?;
    if access.audited() {
        observe(access, &resp);
    }
    Ok(render(fhir, resp, &out))
}

/// Notes for the audit trail which resource and patients an answer carries.
fn observe(access: &mut Access, resp: &Resp) {
    match &resp.body {
        Body::Raw(text) if resp.is_resource => access.saw_text(text),
        Body::Raw(text) if matches!(access.route, Some(Route::Root)) => {
            access.saw_entries_text(text)
        }
        Body::Json(v) if v["resourceType"] == "Bundle" && v["type"] == "collection" => {
            for e in v["entry"].as_array().into_iter().flatten() {
                access.saw(&e["resource"]);
            }
            access.resource = None;
        }
        Body::Json(v) if v.get("id").is_some() => access.saw(v),
        _ => {}
    }
    // a search for one patient's data names that patient
    for (k, v) in &access.query {
        let k = k.split(':').next().unwrap_or_default();
        if matches!(k, "patient" | "subject" | "for") && v.starts_with("Patient/") {
            access.patients.push(v.clone());
        }
    }
}

fn render(fhir: &Fhir, resp: Resp, out: &Output) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(v) = resp.version
        && let Ok(h) = HeaderValue::from_str(&format!("W/\"{v}\""))
    {
        headers.insert(header::ETAG, h);
    }
    if let Some(t) = resp.last_modified
        && let Ok(h) = HeaderValue::from_str(&http_date(t))
    {
        headers.insert(header::LAST_MODIFIED, h);
    }
    if let Some(l) = &resp.location
        && let Ok(h) = HeaderValue::from_str(l)
    {
        headers.insert(header::LOCATION, h.clone());
        if resp.status == StatusCode::CREATED {
            headers.insert(header::CONTENT_LOCATION, h);
        }
    }
    let is_write_result = resp.location.is_some();
    let mut response = if resp.status == StatusCode::NOT_MODIFIED {
        StatusCode::NOT_MODIFIED.into_response()
    } else if is_write_result && out.prefer == Return::Minimal {
        resp.status.into_response()
    } else if is_write_result && out.prefer == Return::OperationOutcome {
        let issue = Issue {
            severity: Severity::Information,
            code: "informational",
            diagnostics: format!("{}", resp.status),
            expression: None,
        };
        value_response(resp.status, &outcome(&[issue]), out.format, out.pretty)
    } else {
        match resp.body {
            Body::None => resp.status.into_response(),
            Body::Raw(text) => {
                let transform =
                    resp.is_resource && (out.summary.is_some() || out.elements.is_some());
                if out.format == Format::Json && !out.pretty && !transform {
                    // the common case: the stored text, untouched
                    text_response(resp.status, text, Format::Json)
                } else {
                    match serde_json::from_str::<Value>(&text) {
                        Ok(mut v) => {
                            if transform {
                                v = match (&out.elements, out.summary) {
                                    (Some(names), _) => json::elements(fhir.model, &v, names),
                                    (None, Some(mode)) => json::summary(fhir.model, &v, mode),
                                    _ => v,
                                };
                            }
                            value_response(resp.status, &v, out.format, out.pretty)
                        }
                        Err(_) => text_response(resp.status, text, Format::Json),
                    }
                }
            }
            Body::Json(v) => value_response(resp.status, &v, out.format, out.pretty),
            Body::Table(t) => {
                let (bytes, mime, ext) = match out.tabular {
                    Some(Tabular::Xlsx) => {
                        (crate::export::to_xlsx(&t), crate::export::XLSX_MIME, "xlsx")
                    }
                    _ => (crate::export::to_csv(&t), crate::export::CSV_MIME, "csv"),
                };
                let mut r = (resp.status, bytes).into_response();
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
                if let Ok(h) = HeaderValue::from_str(&format!(
                    "attachment; filename=\"{}.{ext}\"",
                    t.sheet.to_lowercase()
                )) {
                    r.headers_mut().insert(header::CONTENT_DISPOSITION, h);
                }
                r
            }
        }
    };
    response.headers_mut().extend(headers);
    response
}
