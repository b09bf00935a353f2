//! The FHIR layer's one error type. Each variant says the HTTP status it becomes; the edge
//! ([`crate::fhir::rest`]) turns it into an `OperationOutcome` once. Database errors are
//! logged there and never shown to the client.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::store::StoreError;

/// An `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    /// `OperationOutcome.issue.code` (IssueType value set).
    pub code: &'static str,
    pub diagnostics: String,
    /// FHIRPath of the element at fault.
    pub expression: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }
    pub fn warning(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Warning,
            ..Issue::error(code, diagnostics)
        }
    }
    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "severity": self.severity.as_str(),
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            v["expression"] = json!([e]);
        }
        v
    }
}

pub fn outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request cannot be parsed or is structurally wrong.
    #[error("invalid request: {}", first(.0))]
    Invalid(Vec<Issue>),
    /// 422: well-formed, but breaks a profile or business rule.
    #[error("unprocessable: {}", first(.0))]
    Unprocessable(Vec<Issue>),
    /// 401: no valid identity where one is needed.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403: the caller's habilitations do not allow this.
    #[error("forbidden: {}", first(.0))]
    Forbidden(Vec<Issue>),
    /// 404
    #[error("not found: {0}")]
    NotFound(String),
    /// 410: the resource was deleted.
    #[error("gone: {0}")]
    Gone(String),
    /// 409
    #[error("conflict: {0}")]
    Conflict(String),
    /// 412: `If-Match` or a conditional operation's precondition failed.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// 405: the interaction is not allowed on this resource type or path.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// 406
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// 413
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    /// 415
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// 501
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// 500, or 409 for a lost write race.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn first(issues: &[Issue]) -> &str {
    issues.first().map_or("", |i| i.diagnostics.as_str())
}

impl Error {
    pub fn invalid(code: &'static str, msg: impl Into<String>) -> Error {
        Error::Invalid(vec![Issue::error(code, msg)])
    }
    pub fn invalid_at(code: &'static str, msg: impl Into<String>, at: impl Into<String>) -> Error {
        Error::Invalid(vec![Issue::error(code, msg).at(at)])
    }
    pub fn unprocessable(code: &'static str, msg: impl Into<String>) -> Error {
        Error::Unprocessable(vec![Issue::error(code, msg)])
    }
    pub fn forbidden(msg: impl Into<String>) -> Error {
        Error::Forbidden(vec![Issue::error("forbidden", msg)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Gone(_) => StatusCode::GONE,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::Store(StoreError::Conflict { .. }) => StatusCode::CONFLICT,
            Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The issues the client sees.
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code, msg: String| vec![Issue::error(code, msg)];
        match self {
            Error::Invalid(i) | Error::Unprocessable(i) | Error::Forbidden(i) => i.clone(),
            Error::Unauthorized(m) => one("login", m.clone()),
            Error::NotFound(m) => one("not-found", m.clone()),
            Error::Gone(m) => one("deleted", m.clone()),
            Error::Conflict(m) | Error::PreconditionFailed(m) => one("conflict", m.clone()),
            Error::MethodNotAllowed(m) | Error::NotImplemented(m) => {
                one("not-supported", m.clone())
            }
            Error::NotAcceptable(m) | Error::UnsupportedMediaType(m) => {
                one("not-supported", m.clone())
            }
            Error::TooLarge(n) => one("too-costly", format!("request body larger than {n} bytes")),
            Error::Store(StoreError::Conflict { rtype, id }) => one(
                "conflict",
                format!("{rtype}/{id} was changed by a concurrent request; retry"),
            ),
            // Never the database's own words: they may carry data and internals.
            Error::Store(_) => one("exception", "internal storage error".into()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
