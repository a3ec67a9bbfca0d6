//! Errors as the Kubernetes API reports them: a `meta/v1` `Status` object with the
//! HTTP code, a machine-readable `reason` and, for validation, the offending fields.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// One invalid field (`Status.details.causes[]`).
#[derive(Debug, Clone)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: \"{value}\""),
        }
    }

    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `Retry-After` seconds, for 429/503-style answers.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `fieldValidation=Strict` found fields the type does not have.
    pub fn unknown_fields(paths: &[String]) -> Self {
        let list = paths
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self::bad_request(format!("strict decoding error: {list}"))
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(group, resource, name)
    }

    /// 404 for a path no resource lives at (the path is not echoed back, as
    /// Kubernetes does not).
    /// kube-apiserver's answer carries an empty `details` (clients such as `kubectl
    /// debug` read `details.name`).
    pub fn path_not_found(_path: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(serde_json::json!({}));
        e
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        )
        .with_details(group, resource, name)
    }

    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict_because(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// upstream's `NewConflict`: `Operation cannot be fulfilled on <resource> "<name>": <why>`.
    pub fn conflict_because(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let qualified = qualified(group, resource);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        )
        .with_details(group, resource, name)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// 422 with the invalid fields, worded like Kubernetes:
    /// `Pod "x" is invalid: spec.containers[0].image: Required value`,
    /// `Deployment.apps "x" is invalid: …`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let summary = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        // `GroupKind.String()`: `Deployment.apps`, `Pod`.
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let mut err = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {summary}"),
        );
        err.details = Some(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason, "message": c.message, "field": c.field,
            })).collect::<Vec<_>>(),
        }));
        err
    }

    pub(crate) fn with_details(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": group, "kind": resource}));
        self
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.reason.is_empty() {
            // StatusReasonUnknown: Go leaves it out.
            if let Some(m) = status.as_object_mut() {
                m.remove("reason");
            }
        }
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        if let Some(secs) = self.retry_after {
            status["details"]["retryAfterSeconds"] = json!(secs);
        }
        status
    }

    /// Maps a store error on `resource`/`name`.
    pub fn from_store(err: StoreError, group: &str, resource: &str, name: &str) -> Self {
        match err {
            StoreError::AlreadyExists { .. } => Self::already_exists(group, resource, name),
            StoreError::NotFound { .. } => Self::not_found(group, resource, name),
            StoreError::Conflict { .. } => Self::conflict(group, resource, name),
            StoreError::Compacted {
                requested,
                compacted,
            } => Self::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => {
                let mut err = Self::timeout(format!(
                    "Too large resource version: {requested}, current: {current}"
                ));
                err.retry_after = Some(1);
                err
            }
            // etcd down or without quorum: nothing was written, try again.
            StoreError::Unavailable(why) => {
                let mut err = Self::new(
                    503,
                    "ServiceUnavailable",
                    format!("the storage backend is unavailable: {why}"),
                );
                err.retry_after = Some(1);
                err
            }
            // No answer in time: the write may or may not have been applied (as
            // kube-apiserver's 504 for an etcd request that timed out).
            StoreError::Timeout(why) => {
                let mut err = Self::timeout(format!(
                    "request did not complete within the storage timeout: {why}"
                ));
                err.retry_after = Some(1);
                err
            }
            other => Self::internal(other.to_string()),
        }
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl ApiError {
    /// The error as a protobuf `meta.v1.Status` (JSON if it cannot be encoded).
    pub fn into_protobuf_response(self) -> Response {
        let Some(Ok(body)) = super::protobuf::encode(&self.to_status()) else {
            return self.into_response();
        };
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            code,
            [("content-type", super::protobuf::CONTENT_TYPE)],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = super::field_order::to_vec(&self.to_status());
        let mut resp = (code, [("content-type", "application/json")], body).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}
