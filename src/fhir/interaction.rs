//! The FHIR interactions, independent of HTTP: a [`Req`] (route, query, preconditions,
//! parsed body) in, a [`Resp`] out. The REST edge builds `Req`s from HTTP requests and
//! batch/transaction Bundles build them from entries, so every entry behaves exactly like
//! the same request sent alone.
//!
//! Reads run on a [`Conn`]; writes run inside a store job on a [`Tx`] (one job per request,
//! or one for a whole transaction Bundle).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::Value;

use super::error::{Error, Issue, Result};
use super::json;
use super::model::Model;
use super::patch;
use super::search::{self, Paging, Search, registry::Registry};
use super::validate::validate_resource;
use crate::audit::api as audit;
use crate::auth::Caller;
use crate::store::{Conn, IndexRow, NewVersion, Store, Stored, Tx};
use crate::time::{Micros, format_instant};
use crate::workflow::Workflow;

/// Everything the FHIR server needs, built once at start.
pub struct Fhir {
    pub model: &'static Model,
    pub registry: Registry,
    /// The CapabilityStatement served at `/metadata`, and its JSON text (clients ask for it at
    /// start, some before every call: it is written once).
    pub capability: Value,
    pub capability_text: String,
    pub store: Store,
    /// Public base of the FHIR API, e.g. `https://gw.example.fr/fhir` (no trailing slash).
    pub base: String,
    pub paging: Paging,
    /// The admission workflow: its write rules and operations.
    pub workflow: Workflow,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Metadata,
    /// The base itself: `POST` of a batch or transaction Bundle.
    Root,
    SystemHistory,
    Type(String),
    TypeSearch(String),
    TypeHistory(String),
    Instance(String, String),
    InstanceHistory(String, String),
    Version(String, String, i64),
    /// `$name` on the system, a type or an instance.
    Operation {
        rtype: Option<String>,
        id: Option<String>,
        name: String,
    },
}

impl Route {
    /// The resource type the route is about, if any.
    pub fn resource_type(&self) -> Option<&str> {
        match self {
            Route::Type(t)
            | Route::TypeSearch(t)
            | Route::TypeHistory(t)
            | Route::Instance(t, _)
            | Route::InstanceHistory(t, _)
            | Route::Version(t, _, _) => Some(t),
            Route::Operation { rtype, .. } => rtype.as_deref(),
            _ => None,
        }
    }
}

/// Reads a path relative to the FHIR base (`Task/1/_history/2`, `Task?x` without the query).
pub fn route(path: &str) -> Result<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found =
        || Error::NotFound(format!("no FHIR endpoint at `/{}`", path.trim_matches('/')));
    let op = |s: &str| s.strip_prefix('$').map(str::to_owned);
    let id = |s: &str| -> Result<String> {
        if super::reference::is_id(s) {
            Ok(s.to_owned())
        } else {
            Err(Error::invalid(
                "invalid",
                format!("`{s}` is not a valid resource id"),
            ))
        }
    };
    let rtype = |s: &str| -> Result<String> {
        if s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.bytes().all(|b| b.is_ascii_alphabetic())
        {
            Ok(s.to_owned())
        } else {
            Err(not_found())
        }
    };
    Ok(match parts.as_slice() {
        [""] => Route::Root,
        ["metadata"] => Route::Metadata,
        ["_history"] => Route::SystemHistory,
        [o] if o.starts_with('$') => Route::Operation {
            rtype: None,
            id: None,
            name: op(o).unwrap_or_default(),
        },
        [t] => Route::Type(rtype(t)?),
        [t, "_search"] => Route::TypeSearch(rtype(t)?),
        [t, "_history"] => Route::TypeHistory(rtype(t)?),
        [t, o] if o.starts_with('$') => Route::Operation {
            rtype: Some(rtype(t)?),
            id: None,
            name: op(o).unwrap_or_default(),
        },
        [t, i] => Route::Instance(rtype(t)?, id(i)?),
        [t, i, "_history"] => Route::InstanceHistory(rtype(t)?, id(i)?),
        [t, i, o] if o.starts_with('$') => Route::Operation {
            rtype: Some(rtype(t)?),
            id: Some(id(i)?),
            name: op(o).unwrap_or_default(),
        },
        [t, i, "_history", v] => Route::Version(
            rtype(t)?,
            id(i)?,
            v.parse()
                .map_err(|_| Error::NotFound(format!("version `{v}` of {t}/{i}")))?,
        ),
        _ => return Err(not_found()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    Json,
    FhirPath,
}

/// A FHIR request, from HTTP or from a Bundle entry.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub route: Route,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    pub patch_format: Option<PatchFormat>,
    /// `If-Match: W/"n"`.
    pub if_match: Option<i64>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<Micros>,
    /// `If-None-Exist` (conditional create), as a query string.
    pub if_none_exist: Option<String>,
    /// `Prefer: handling=strict`.
    pub strict: bool,
    /// Who asks (Bundle entries inherit the Bundle's caller).
    pub caller: Caller,
    /// The answer is wanted as a table (`_format=csv|xlsx`): a dashboard export.
    pub table: bool,
}

impl Req {
    pub fn new(method: Method, route: Route) -> Req {
        Req {
            method,
            route,
            query: Vec::new(),
            body: None,
            patch_format: None,
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_none_exist: None,
            strict: false,
            caller: Caller::Anonymous,
            table: false,
        }
    }

    /// Writes go through a store job; everything else reads. Operations that change state
    /// are `POST`s (`$validate` only reads).
    pub fn is_write(&self) -> bool {
        match (&self.method, &self.route) {
            (&Method::POST, Route::Type(_)) => true,
            (
                &Method::PUT | &Method::PATCH | &Method::DELETE,
                Route::Type(_) | Route::Instance(..),
            ) => true,
            (&Method::POST, Route::Operation { name, .. }) => name != "validate",
            _ => false,
        }
    }
}

/// A resource body checked against the base model for its type: what `create` and `update`
/// keep. Checking is pure work, so it is done before a write is handed to the single writer
/// ([`prepare`]): the writer's turn goes to the database, and a bad body never takes one.
#[derive(Debug)]
pub struct Checked(Value);

impl Checked {
    /// For changes that keep the body valid: the id a create or conditional update gives it,
    /// references rewritten to other entries of a transaction.
    pub fn value_mut(&mut self) -> &mut Value {
        &mut self.0
    }
}

/// The part of a write that needs no database, done before the write reaches the writer:
/// the resource type takes the interaction, and the body of a create or an update is checked
/// (`in_checked_bundle`: its transaction Bundle was validated whole, so only its type is).
/// Returns that body, for [`write`].
pub fn prepare(fhir: &Fhir, req: &mut Req, in_checked_bundle: bool) -> Result<Option<Checked>> {
    let (t, interaction) = match (&req.method, &req.route) {
        (&Method::POST, Route::Type(t)) => (t, "create"),
        (&Method::PUT, Route::Type(t) | Route::Instance(t, _)) => (t, "update"),
        _ => return Ok(None),
    };
    fhir.check_type(t, interaction)?;
    let body = req.body.take().ok_or_else(|| {
        Error::invalid(
            "required",
            format!("{interaction} needs a resource in the body"),
        )
    })?;
    if in_checked_bundle {
        check_resource_type(t, &body)?;
        Ok(Some(Checked(body)))
    } else {
        fhir.check_body(t, body).map(Some)
    }
}

/// `rtype` is the body's `resourceType`.
fn check_resource_type(rtype: &str, body: &Value) -> Result<()> {
    match json::resource_type(body) {
        Some(t) if t == rtype => Ok(()),
        Some(t) => Err(Error::invalid_at(
            "invalid",
            format!("resourceType `{t}` does not match the URL's `{rtype}`"),
            "resourceType",
        )),
        None => Err(Error::invalid_at(
            "required",
            "missing resourceType",
            "resourceType",
        )),
    }
}

#[derive(Debug, Clone)]
pub enum Body {
    None,
    /// A stored resource's JSON text, served as is.
    Raw(String),
    Json(Value),
    /// Rows for a spreadsheet (CSV, XLSX).
    Table(crate::export::Table),
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Body,
    /// The body is the resource itself (so `_summary`, `_elements` and `Prefer` apply).
    pub is_resource: bool,
    pub version: Option<i64>,
    pub last_modified: Option<Micros>,
    pub location: Option<String>,
    /// Informational issues (`Prefer: return=OperationOutcome`, search warnings).
    pub issues: Vec<Issue>,
}

impl Resp {
    pub fn json(status: StatusCode, body: Value) -> Resp {
        Resp::of(status, Body::Json(body))
    }

    /// A body already written as JSON text: a Bundle assembled around stored resources.
    pub fn text(status: StatusCode, text: String) -> Resp {
        Resp::of(status, Body::Raw(text))
    }

    fn of(status: StatusCode, body: Body) -> Resp {
        Resp {
            status,
            body,
            is_resource: false,
            version: None,
            last_modified: None,
            location: None,
            issues: Vec::new(),
        }
    }

    pub(crate) fn stored(fhir: &Fhir, status: StatusCode, s: &Stored) -> Resp {
        Resp {
            status,
            body: s.body.clone().map_or(Body::None, Body::Raw),
            is_resource: s.body.is_some(),
            version: Some(s.version),
            last_modified: Some(s.last_updated),
            location: Some(format!(
                "{}/{}/{}/_history/{}",
                fhir.base, s.rtype, s.id, s.version
            )),
            issues: Vec::new(),
        }
    }
}

impl Fhir {
    pub fn check_type(&self, rtype: &str, interaction: &str) -> Result<()> {
        if !self.registry.is_served(rtype) {
            return Err(Error::NotFound(format!(
                "resource type `{rtype}` is not served by this server"
            )));
        }
        if !self.registry.allows(rtype, interaction) {
            return Err(Error::MethodNotAllowed(format!(
                "{interaction} is not allowed on {rtype}"
            )));
        }
        Ok(())
    }

    fn search_context(&self, now: Micros) -> search::Context<'_> {
        search::Context {
            registry: &self.registry,
            base: &self.base,
            now,
        }
    }

    pub fn parse_search(
        &self,
        rtype: &str,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<Search> {
        let now = self.store.clock().now();
        search::parse(
            &self.search_context(now),
            rtype,
            params,
            strict,
            &self.paging,
        )
    }

    /// Checks a resource body for `rtype`: the resource type, then the structure.
    pub fn check_body(&self, rtype: &str, body: Value) -> Result<Checked> {
        check_resource_type(rtype, &body)?;
        let issues = validate_resource(self.model, &body);
        if issues.is_empty() {
            Ok(Checked(body))
        } else {
            Err(Error::Invalid(issues))
        }
    }

    pub fn index(&self, rtype: &str, body: &Value) -> Vec<IndexRow> {
        let mut rows = search::extract::index_rows(self.model, &self.registry, rtype, body);
        for p in self.registry.params(rtype) {
            if let Some(what) = &p.computed {
                for (system, code) in self.workflow.computed(what, body) {
                    rows.push(IndexRow::Token {
                        param: p.key.clone(),
                        system,
                        code,
                    });
                }
            }
        }
        rows
    }
}

/// The key two conditional writes with the same criteria share (parameter order aside): they
/// must not both decide that nothing matches.
pub fn criteria_key(rtype: &str, criteria: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = criteria.iter().collect();
    pairs.sort();
    let mut key = format!("{rtype}?");
    for (k, v) in pairs {
        key.push_str(k);
        key.push('=');
        key.push_str(v);
        key.push('&');
    }
    key
}

pub fn parse_query_string(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The resources a conditional operation's criteria match (strict: no parameter ignored).
async fn conditional_matches(
    fhir: &Fhir,
    conn: &mut Conn<'_>,
    rtype: &str,
    criteria: &[(String, String)],
) -> Result<Vec<Stored>> {
    if criteria.is_empty() {
        return Err(Error::invalid(
            "invalid",
            "a conditional operation needs search criteria",
        ));
    }
    let mut s = fhir.parse_search(rtype, criteria, true)?;
    s.query.limit = 2;
    s.query.offset = 0;
    Ok(conn.search(&s.query).await?)
}

/// Runs a write interaction inside the job's transaction; takes the body out of `req` (a job
/// runs once).
/// Runs a write in the writer's transaction; `body` is what [`prepare`] made of the request.
pub async fn write(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    req: &mut Req,
    body: Option<Checked>,
) -> Result<Resp> {
    let required =
        |what: &str| Error::invalid("required", format!("{what} needs a resource in the body"));
    match (&req.method, &req.route) {
        (&Method::POST, Route::Type(t)) => {
            create(fhir, tx, t, body.ok_or_else(|| required("create"))?, req).await
        }
        (&Method::PUT, Route::Instance(t, id)) => {
            let body = body.ok_or_else(|| required("update"))?;
            update(fhir, tx, &req.caller, t, id, body, req.if_match, "PUT").await
        }
        (&Method::PUT, Route::Type(t)) => {
            let mut body = body.ok_or_else(|| required("update"))?;
            let found = {
                tx.lock_key(&criteria_key(t, &req.query)).await?;
                conditional_matches(fhir, tx.conn(), t, &req.query).await?
            };
            let body_id = body.0.get("id").and_then(Value::as_str).map(str::to_owned);
            let id = match found.as_slice() {
                [] => body_id.clone().unwrap_or_else(new_id),
                [one] => one.id.clone(),
                _ => {
                    return Err(Error::PreconditionFailed(format!(
                        "conditional update: the criteria match more than one {t}"
                    )));
                }
            };
            // The body may leave the id out: it is the match's (or a new one).
            if body_id.is_none()
                && let Some(b) = body.0.as_object_mut()
            {
                b.insert("id".into(), Value::String(id.clone()));
            }
            update(fhir, tx, &req.caller, t, &id, body, req.if_match, "PUT").await
        }
        (&Method::PATCH, Route::Instance(t, id)) => {
            fhir.check_type(t, "patch")?;
            patch_one(fhir, tx, t, id, req).await
        }
        (&Method::PATCH, Route::Type(t)) => {
            fhir.check_type(t, "patch")?;
            let found = conditional_matches(fhir, tx.conn(), t, &req.query).await?;
            match found.as_slice() {
                [] => Err(Error::NotFound(format!(
                    "conditional patch: no {t} matches"
                ))),
                [one] => {
                    let id = one.id.clone();
                    patch_one(fhir, tx, t, &id, req).await
                }
                _ => Err(Error::PreconditionFailed(format!(
                    "conditional patch: the criteria match more than one {t}"
                ))),
            }
        }
        (&Method::DELETE, Route::Instance(t, id)) => {
            fhir.check_type(t, "delete")?;
            delete(fhir, tx, &req.caller, t, id, req.if_match).await
        }
        (&Method::DELETE, Route::Type(t)) => {
            fhir.check_type(t, "delete")?;
            let found = conditional_matches(fhir, tx.conn(), t, &req.query).await?;
            match found.as_slice() {
                [] => Ok(deleted_outcome(format!("no {t} matched: nothing deleted"))),
                [one] => {
                    let id = one.id.clone();
                    delete(fhir, tx, &req.caller, t, &id, None).await
                }
                _ => Err(Error::PreconditionFailed(format!(
                    "conditional delete: the criteria match more than one {t}"
                ))),
            }
        }
        (&Method::POST, Route::Operation { name, .. }) if fhir.workflow.handles(name) => {
            fhir.workflow.operation(fhir, tx, req).await
        }
        (_, Route::Operation { name, .. }) => Err(Error::NotFound(format!(
            "operation ${name} is not supported here"
        ))),
        _ => Err(Error::MethodNotAllowed(format!(
            "{} on this path",
            req.method
        ))),
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn create(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    rtype: &str,
    body: Checked,
    req: &Req,
) -> Result<Resp> {
    if let Some(criteria) = &req.if_none_exist {
        let criteria_pairs = parse_query_string(criteria);
        tx.lock_key(&criteria_key(rtype, &criteria_pairs)).await?;
        let found = conditional_matches(fhir, tx.conn(), rtype, &criteria_pairs).await?;
        match found.as_slice() {
            [] => {}
            [one] => return Ok(Resp::stored(fhir, StatusCode::OK, one)),
            _ => {
                return Err(Error::PreconditionFailed(format!(
                    "If-None-Exist `{criteria}` matches more than one {rtype}"
                )));
            }
        }
    }
    create_as(fhir, tx, &req.caller, rtype, &new_id(), body).await
}

/// Creates `rtype/id` under an id the server has just made ([`new_id`]): nothing can be
/// stored under it yet, so there is nothing to look up.
pub async fn create_as(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    caller: &Caller,
    rtype: &str,
    id: &str,
    body: Checked,
) -> Result<Resp> {
    let mut body = body.0;
    if let Some(b) = body.as_object_mut() {
        b.insert("id".into(), Value::String(id.to_owned()));
    }
    fhir.workflow
        .before_write(fhir, tx, caller, rtype, id, None, &mut body)
        .await?;
    let index = fhir.index(rtype, &body);
    let stored = keep(tx, rtype, id, None, body, &index, "POST").await?;
    Ok(Resp::stored(fhir, StatusCode::CREATED, &stored))
}

/// Writes a resource the gateway itself makes or changes (a side effect of a move: a
/// Provenance, a Communication, a sibling Task): checked against the base model and indexed,
/// without the workflow's write rules, which the caller has already applied. `id` `None`
/// creates.
pub async fn put_resource(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    rtype: &str,
    id: Option<&str>,
    mut body: Value,
    method: &str,
) -> Result<Stored> {
    // a new id names nothing yet: no lookup
    let current = match id {
        Some(id) => tx.current(rtype, id).await?,
        None => None,
    };
    let id = id.map_or_else(new_id, str::to_owned);
    if let Some(b) = body.as_object_mut() {
        b.insert("id".into(), Value::String(id.clone()));
    }
    let body = fhir.check_body(rtype, body)?.0;
    let live = current.as_ref().filter(|c| !c.deleted);
    let index = fhir.index(rtype, &body);
    keep(
        tx,
        rtype,
        &id,
        live.or(current.as_ref()),
        body,
        &index,
        method,
    )
    .await
}

/// Stamps and keeps a new version.
async fn keep(
    tx: &mut Tx<'_>,
    rtype: &str,
    id: &str,
    previous: Option<&Stored>,
    mut body: Value,
    index: &[IndexRow],
    method: &str,
) -> Result<Stored> {
    let version = previous.map_or(1, |p| p.version + 1);
    json::stamp(&mut body, id, version, &format_instant(tx.now()));
    let text = serde_json::to_string(&body)
        .map_err(|e| Error::invalid("invalid", format!("cannot serialise: {e}")))?;
    Ok(tx
        .put(NewVersion {
            rtype,
            id,
            previous,
            version,
            method,
            body: Some(&text),
            index,
        })
        .await?)
}

#[allow(clippy::too_many_arguments)]
pub async fn update(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    caller: &Caller,
    rtype: &str,
    id: &str,
    body: Checked,
    if_match: Option<i64>,
    method: &str,
) -> Result<Resp> {
    let body = body.0;
    match body.get("id") {
        Some(Value::String(b)) if b == id => {}
        Some(Value::String(b)) => {
            return Err(Error::invalid_at(
                "invalid",
                format!("the body's id `{b}` does not match the URL's `{id}`"),
                format!("{rtype}.id"),
            ));
        }
        _ => {
            return Err(Error::invalid_at(
                "required",
                "an update must carry the resource id in the body",
                format!("{rtype}.id"),
            ));
        }
    }
    if !super::reference::is_id(id) {
        return Err(Error::invalid(
            "invalid",
            format!("`{id}` is not a valid id"),
        ));
    }
    let current = tx.current(rtype, id).await?;
    if let Some(expected) = if_match {
        let live = current.as_ref().filter(|c| !c.deleted).map(|c| c.version);
        if live != Some(expected) {
            return Err(Error::PreconditionFailed(format!(
                "If-Match W/\"{expected}\" but {rtype}/{id} is at {}",
                live.map_or("no version".into(), |v| format!("W/\"{v}\""))
            )));
        }
    }
    let live = current.as_ref().filter(|c| !c.deleted);
    let old: Option<Value> = live
        .and_then(|c| c.body.as_deref())
        .and_then(|t| serde_json::from_str(t).ok());
    if let (Some(cur), Some(old)) = (live, &old)
        && json::without_version(old) == json::without_version(&body)
    {
        // Nothing changed: no new version (as HAPI does).
        return Ok(Resp::stored(fhir, StatusCode::OK, cur));
    }
    let status = if live.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut body = body;
    fhir.workflow
        .before_write(fhir, tx, caller, rtype, id, old.as_ref(), &mut body)
        .await?;
    let index = fhir.index(rtype, &body);
    let stored = keep(tx, rtype, id, current.as_ref(), body, &index, method).await?;
    Ok(Resp::stored(fhir, status, &stored))
}

async fn patch_one(fhir: &Fhir, tx: &mut Tx<'_>, rtype: &str, id: &str, req: &Req) -> Result<Resp> {
    let patch_doc = req
        .body
        .as_ref()
        .ok_or_else(|| Error::invalid("required", "patch needs a body"))?;
    let current = tx.current(rtype, id).await?;
    let cur = match &current {
        None => return Err(Error::NotFound(format!("{rtype}/{id} not found"))),
        Some(c) if c.deleted => return Err(Error::Gone(format!("{rtype}/{id} was deleted"))),
        Some(c) => c,
    };
    if let Some(expected) = req.if_match
        && expected != cur.version
    {
        return Err(Error::PreconditionFailed(format!(
            "If-Match W/\"{expected}\" but {rtype}/{id} is at W/\"{}\"",
            cur.version
        )));
    }
    let mut doc: Value = serde_json::from_str(cur.body.as_deref().unwrap_or("{}"))
        .map_err(|e| Error::invalid("exception", format!("stored resource unreadable: {e}")))?;
    let applied = match req.patch_format.unwrap_or(PatchFormat::Json) {
        PatchFormat::Json => patch::json_patch(&mut doc, patch_doc),
        PatchFormat::FhirPath => patch::fhirpath_patch(fhir.model, &mut doc, patch_doc),
    };
    if let Err(e) = applied {
        let issue = Issue::error(
            if e.is_malformed() {
                "invalid"
            } else {
                "processing"
            },
            e.to_string(),
        );
        return Err(if e.is_malformed() {
            Error::Invalid(vec![issue])
        } else {
            Error::Unprocessable(vec![issue])
        });
    }
    if doc.get("id").and_then(Value::as_str) != Some(id) || json::resource_type(&doc) != Some(rtype)
    {
        return Err(Error::unprocessable(
            "processing",
            "a patch may not change the resource type or id",
        ));
    }
    let issues = validate_resource(fhir.model, &doc);
    if !issues.is_empty() {
        return Err(Error::Unprocessable(issues));
    }
    update(
        fhir,
        tx,
        &req.caller,
        rtype,
        id,
        Checked(doc),
        Some(cur.version),
        "PATCH",
    )
    .await
}

fn deleted_outcome(msg: String) -> Resp {
    Resp::json(
        StatusCode::OK,
        super::error::outcome(&[Issue {
            severity: super::error::Severity::Information,
            code: "informational",
            diagnostics: msg,
            expression: None,
        }]),
    )
}

async fn delete(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    caller: &Caller,
    rtype: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Resp> {
    let current = tx.current(rtype, id).await?;
    let live = current.as_ref().filter(|c| !c.deleted);
    if let Some(expected) = if_match
        && live.map(|c| c.version) != Some(expected)
    {
        return Err(Error::PreconditionFailed(format!(
            "If-Match W/\"{expected}\" does not match {rtype}/{id}"
        )));
    }
    let Some(cur) = live else {
        return Ok(deleted_outcome(format!(
            "{rtype}/{id} does not exist: nothing deleted"
        )));
    };
    if let Some(old) = cur
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
    {
        fhir.workflow
            .before_delete(fhir, tx, caller, rtype, id, &old)
            .await?;
    }
    let stored = tx
        .put(NewVersion {
            rtype,
            id,
            previous: Some(cur),
            version: cur.version + 1,
            method: "DELETE",
            body: None,
            index: &[],
        })
        .await?;
    let mut resp = deleted_outcome(format!("deleted {rtype}/{id}"));
    resp.version = Some(stored.version);
    let _ = fhir;
    Ok(resp)
}

/// Read interactions: read, vread, search, history, metadata, `$validate`.
pub async fn read(fhir: &Fhir, conn: &mut Conn<'_>, req: &Req) -> Result<Resp> {
    match (&req.method, &req.route) {
        (&Method::GET, Route::Metadata) => {
            let mut r = Resp::json(StatusCode::OK, Value::Null);
            r.body = Body::Raw(fhir.capability_text.clone());
            Ok(r)
        }
        (&Method::GET, Route::Instance(t, id)) if t == audit::TYPE => {
            fhir.check_type(t, "read")?;
            let cur = audit::read(&fhir.store, id).await?;
            instance(fhir, req, t, id, cur)
        }
        (&Method::GET, Route::Instance(t, id)) => {
            fhir.check_type(t, "read")?;
            let cur = conn.current(t, id, false).await?;
            instance(fhir, req, t, id, cur)
        }
        (&Method::GET, Route::Version(t, id, v)) => {
            fhir.check_type(t, "vread")?;
            match conn.version(t, id, *v).await? {
                None => Err(Error::NotFound(format!("{t}/{id}/_history/{v} not found"))),
                Some(c) if c.deleted => {
                    Err(Error::Gone(format!("{t}/{id}/_history/{v} is a deletion")))
                }
                Some(c)
                    if !c
                        .body
                        .as_deref()
                        .is_none_or(|b| fhir.workflow.visible(&req.caller, t, b)) =>
                {
                    Err(Error::NotFound(format!("{t}/{id}/_history/{v} not found")))
                }
                Some(c) => {
                    let mut r = Resp::stored(fhir, StatusCode::OK, &c);
                    r.location = None;
                    Ok(r)
                }
            }
        }
        (&Method::GET, Route::Type(t)) | (&Method::POST, Route::TypeSearch(t)) if req.table => {
            fhir.check_type(t, "search-type")?;
            let table = fhir.workflow.export(fhir, conn, t, req).await?;
            let mut r = Resp::json(StatusCode::OK, Value::Null);
            r.body = Body::Table(table);
            Ok(r)
        }
        (&Method::GET, Route::Type(t)) | (&Method::POST, Route::TypeSearch(t)) => {
            fhir.check_type(t, "search-type")?;
            let mut s = fhir.parse_search(t, &req.query, req.strict)?;
            if t == audit::TYPE {
                return audit::search(fhir, conn, s).await;
            }
            // what the caller may not see is not found (requests, dossiers and unit notes of
            // other places)
            if fhir.registry.param(t, "visible-to").is_some()
                && let Some(allowed) = fhir.workflow.visible_to(&req.caller)
            {
                let hidden =
                    fhir.parse_search(t, &[("visible-to".into(), allowed.join(","))], true)?;
                s.query.filters.extend(hidden.query.filters);
            }
            if fhir.registry.param(t, "dossier-part").is_some()
                && let Some(parts) = fhir.workflow.readable_parts(&req.caller)
            {
                let mut allowed = vec!["none".to_owned()];
                allowed.extend(parts);
                let hidden =
                    fhir.parse_search(t, &[("dossier-part".into(), allowed.join(","))], true)?;
                s.query.filters.extend(hidden.query.filters);
            }
            super::bundle::search(fhir, conn, t, s, &req.caller).await
        }
        (&Method::GET, Route::InstanceHistory(t, id)) => {
            fhir.check_type(t, "history-instance")?;
            if conn.current(t, id, false).await?.is_none() {
                return Err(Error::NotFound(format!("{t}/{id} not found")));
            }
            super::bundle::history(fhir, conn, Some(t), Some(id), &req.query, &req.caller).await
        }
        (&Method::GET, Route::TypeHistory(t)) => {
            fhir.check_type(t, "history-type")?;
            super::bundle::history(fhir, conn, Some(t), None, &req.query, &req.caller).await
        }
        (&Method::GET, Route::SystemHistory) => {
            super::bundle::history(fhir, conn, None, None, &req.query, &req.caller).await
        }
        (
            &Method::GET,
            Route::Operation {
                rtype: None,
                id: None,
                name,
            },
        ) if name == "referents" => {
            fhir.workflow.may_read_audit(&req.caller)?;
            let p = fhir.workflow.referent_report(fhir, conn).await?;
            Ok(Resp::json(StatusCode::OK, p))
        }
        (
            &Method::GET,
            Route::Operation {
                rtype: None,
                id: None,
                name,
            },
        ) if name == "observatory" => {
            if req.table {
                let table = fhir.workflow.observatory_table(fhir, conn, req).await?;
                let mut r = Resp::json(StatusCode::OK, Value::Null);
                r.body = Body::Table(table);
                return Ok(r);
            }
            let p = fhir.workflow.observatory(fhir, conn, req).await?;
            Ok(Resp::json(StatusCode::OK, p))
        }
        (&Method::POST, Route::Operation { rtype, id, name }) if name == "validate" => {
            validate_operation(fhir, conn, rtype.as_deref(), id.as_deref(), req).await
        }
        (_, Route::Operation { name, .. }) => Err(Error::NotFound(format!(
            "operation ${name} is not supported here"
        ))),
        _ => Err(Error::MethodNotAllowed(format!(
            "{} on this path",
            req.method
        ))),
    }
}

/// The answer to a read of `t/id` whose current row is `cur`.
fn instance(fhir: &Fhir, req: &Req, t: &str, id: &str, cur: Option<Stored>) -> Result<Resp> {
    let cur = cur.filter(|c| {
        c.body
            .as_deref()
            .is_none_or(|b| fhir.workflow.visible(&req.caller, t, b))
    });
    match cur {
        None => Err(Error::NotFound(format!("{t}/{id} not found"))),
        Some(c) if c.deleted => Err(Error::Gone(format!("{t}/{id} was deleted"))),
        Some(c) => {
            let status = if not_modified(req, &c) {
                StatusCode::NOT_MODIFIED
            } else {
                StatusCode::OK
            };
            let mut r = Resp::stored(fhir, status, &c);
            r.location = None;
            if status == StatusCode::NOT_MODIFIED {
                r.body = Body::None;
            }
            Ok(r)
        }
    }
}

fn not_modified(req: &Req, c: &Stored) -> bool {
    if let Some(tags) = &req.if_none_match {
        return tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/").trim_matches('"') == c.version.to_string()
        });
    }
    if let Some(since) = req.if_modified_since {
        // HTTP dates have second precision.
        return c.last_updated / 1_000_000 <= since / 1_000_000;
    }
    false
}

async fn validate_operation(
    fhir: &Fhir,
    conn: &mut Conn<'_>,
    rtype: Option<&str>,
    id: Option<&str>,
    req: &Req,
) -> Result<Resp> {
    let body = req
        .body
        .as_ref()
        .ok_or_else(|| Error::invalid("required", "$validate needs a resource or Parameters"))?;
    // Parameters with a `resource` part, or the resource itself.
    let resource = if json::resource_type(body) == Some("Parameters") && rtype != Some("Parameters")
    {
        body["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "resource")
            .and_then(|p| p.get("resource"))
            .ok_or_else(|| {
                Error::invalid("required", "Parameters without a `resource` parameter")
            })?
    } else {
        body
    };
    let rt = json::resource_type(resource).unwrap_or_default();
    if let Some(t) = rtype {
        fhir.check_type(t, "read")?;
        if t != rt {
            return Err(Error::invalid(
                "invalid",
                format!("resourceType `{rt}` does not match `{t}`"),
            ));
        }
    }
    let mut issues = validate_resource(fhir.model, resource);
    if issues.is_empty() {
        issues = fhir.workflow.profile_issues(resource);
    }
    if let (Some(t), Some(id)) = (rtype, id) {
        if conn.current(t, id, false).await?.is_none() {
            return Err(Error::NotFound(format!("{t}/{id} not found")));
        }
        if resource.get("id").and_then(Value::as_str) != Some(id) {
            issues.push(
                Issue::error("invalid", format!("the resource id is not `{id}`"))
                    .at(format!("{t}.id")),
            );
        }
    }
    if issues.is_empty() {
        issues.push(Issue {
            severity: super::error::Severity::Information,
            code: "informational",
            diagnostics: "validation passed".into(),
            expression: None,
        });
    }
    Ok(Resp::json(StatusCode::OK, super::error::outcome(&issues)))
}

/// Runs one request: reads on a pooled connection, writes as one store job.
pub async fn run(fhir: &Arc<Fhir>, req: Req) -> Result<Resp> {
    if matches!((&req.method, &req.route), (&Method::POST, Route::Root)) {
        return super::bundle::batch_or_transaction(fhir, req).await;
    }
    run_single(fhir, req).await
}

/// What no request may do, alone or as a Bundle entry: read the audit trail without the
/// right (référents and the platform-wide system only; nobody writes it: the
/// CapabilityStatement lists no write, so writes are 405), or touch patient data anonymously
/// (contract §4: a `dev` mode caller without a habilitation sets up the directory and
/// accounts, and never reads or writes patient data).
pub fn admit(fhir: &Fhir, req: &Req) -> Result<()> {
    if req.route.resource_type() == Some(audit::TYPE)
        && !matches!(req.route, Route::Operation { .. })
        && !req.is_write()
    {
        fhir.workflow.may_read_audit(&req.caller)?;
    }
    let patient_data = match &req.route {
        Route::SystemHistory => true,
        r => r
            .resource_type()
            .is_some_and(|t| crate::audit::PATIENT_DATA.contains(&t)),
    };
    if patient_data && matches!(req.caller, Caller::Anonymous) {
        return Err(Error::Unauthorized(
            "patient data needs an identified caller: a gateway token, or a habilitation (X-Passerelle-Role) in dev mode"
                .into(),
        ));
    }
    Ok(())
}

/// Runs one request that is not a Bundle.
pub async fn run_single(fhir: &Arc<Fhir>, req: Req) -> Result<Resp> {
    admit(fhir, &req)?;
    // The hottest read goes through the store's cache, without a pooled connection.
    if let (&Method::GET, Route::Instance(t, id)) = (&req.method, &req.route) {
        fhir.check_type(t, "read")?;
        let cur = if t == audit::TYPE {
            audit::read(&fhir.store, id).await?
        } else {
            fhir.store.current(t, id).await?
        };
        return instance(fhir, &req, t, id, cur);
    }
    if req.is_write() {
        let mut req = req;
        let body = prepare(fhir, &mut req, false)?;
        let f = fhir.clone();
        return fhir
            .store
            .write(move |tx| {
                Box::pin(async move {
                    let mut req = req;
                    write(&f, tx, &mut req, body).await
                })
            })
            .await;
    }
    let f = fhir.clone();
    let out: std::result::Result<Result<Resp>, crate::store::StoreError> = fhir
        .store
        .read(move |c| Box::pin(async move { Ok(read(&f, c, &req).await) }))
        .await;
    out?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("").unwrap(), Route::Root);
        assert_eq!(route("metadata").unwrap(), Route::Metadata);
        assert_eq!(route("Task").unwrap(), Route::Type("Task".into()));
        assert_eq!(
            route("Task/_search").unwrap(),
            Route::TypeSearch("Task".into())
        );
        assert_eq!(
            route("Task/1").unwrap(),
            Route::Instance("Task".into(), "1".into())
        );
        assert_eq!(
            route("Task/1/_history/3").unwrap(),
            Route::Version("Task".into(), "1".into(), 3)
        );
        assert_eq!(
            route("Task/$validate").unwrap(),
            Route::Operation {
                rtype: Some("Task".into()),
                id: None,
                name: "validate".into()
            }
        );
        assert!(matches!(route("Task/a_b"), Err(Error::Invalid(_))));
        assert!(matches!(route("task"), Err(Error::NotFound(_))));
        assert!(matches!(route("Task/1/x/y/z"), Err(Error::NotFound(_))));
    }
}
