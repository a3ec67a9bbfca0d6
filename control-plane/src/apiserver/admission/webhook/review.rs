//! The `AdmissionReview` (admission.k8s.io/v1, or v1beta1 for webhooks that only take
//! that) a webhook is POSTed, the checks its answer must pass
//! (`webhook/request/admissionreview.go`: `VerifyAdmissionResponse`), and the errors
//! the dispatchers return, worded as upstream's: a refusal
//! (`webhook/errors/statuserror.go`: `ToStatusErr`) and a webhook that could not be
//! called (`ErrCallingWebhook` wrapped in an internal error).

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, Mutex};

use base64::Engine;
use serde_json::{Value, json};

use super::config::REVIEW_VERSIONS;
use super::rules::Operation;
use crate::apiserver::auth::UserInfo;
use crate::apiserver::status::ApiError;

/// The resource and kind a webhook is called with (the request's own, or an equivalent
/// resource's under `matchPolicy: Equivalent`).
#[derive(Debug, Clone)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
    /// The kind's group and version when they are not the resource's (a Scale's).
    pub kind_group_version: Option<(String, String)>,
}

impl Gvr {
    fn kind_json(&self) -> Value {
        let (group, version) = self
            .kind_group_version
            .as_ref()
            .map_or((&self.group, &self.version), |(g, v)| (g, v));
        json!({"group": group, "version": version, "kind": self.kind})
    }

    fn resource_json(&self) -> Value {
        json!({"group": self.group, "version": self.version, "resource": self.resource})
    }
}

/// Everything an AdmissionRequest carries but its uid and objects' versions.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    pub operation: Operation,
    pub name: &'a str,
    pub namespace: &'a str,
    pub subresource: &'a str,
    pub requested: &'a Gvr,
    pub user: Option<&'a UserInfo>,
    pub dry_run: bool,
    pub options: &'a Value,
}

/// The version of AdmissionReview to speak with a webhook: the first it lists that this
/// server knows.
pub fn review_version(accepted: &[String]) -> Result<&'static str, String> {
    accepted
        .iter()
        .find_map(|v| REVIEW_VERSIONS.iter().find(|k| *k == v).copied())
        .ok_or_else(|| {
            format!(
                "webhook does not accept known AdmissionReview versions; accepted: {}",
                REVIEW_VERSIONS.join(", ")
            )
        })
}

fn user_json(user: Option<&UserInfo>) -> Value {
    // The server's own writes run as the loopback client, `system:apiserver`.
    let Some(u) = user else {
        return json!({"username": "system:apiserver", "groups": ["system:masters"]});
    };
    let mut out = json!({"username": u.name});
    if !u.uid.is_empty() {
        out["uid"] = json!(u.uid);
    }
    if !u.groups.is_empty() {
        out["groups"] = json!(u.groups);
    }
    if !u.extra.is_empty() {
        out["extra"] = json!(u.extra);
    }
    out
}

/// The AdmissionReview to POST.
pub fn request(
    version: &str,
    uid: &str,
    info: &RequestInfo,
    target: &Gvr,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Value {
    let mut req = json!({
        "uid": uid,
        "kind": target.kind_json(),
        "resource": target.resource_json(),
        "requestKind": info.requested.kind_json(),
        "requestResource": info.requested.resource_json(),
        "name": info.name,
        "namespace": info.namespace,
        "operation": info.operation.as_str(),
        "userInfo": user_json(info.user),
        "object": object.cloned().unwrap_or(Value::Null),
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": info.dry_run,
        "options": info.options,
    });
    if !info.subresource.is_empty() {
        req["subResource"] = json!(info.subresource);
        req["requestSubResource"] = json!(info.subresource);
    }
    if info.options.is_null()
        && let Some(m) = req.as_object_mut()
    {
        m.remove("options");
    }
    for key in ["name", "namespace"] {
        if req[key] == ""
            && let Some(m) = req.as_object_mut()
        {
            m.remove(key);
        }
    }
    json!({
        "kind": "AdmissionReview",
        "apiVersion": format!("admission.k8s.io/{version}"),
        "request": req,
    })
}

/// A verified AdmissionResponse.
#[derive(Debug, Default)]
pub struct Response {
    pub allowed: bool,
    pub status: Option<Value>,
    /// The decoded JSON patch (mutating webhooks).
    pub patch: Option<Vec<u8>>,
    pub audit_annotations: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

/// `VerifyAdmissionResponse`: the answer must be an AdmissionReview of the version sent,
/// for this request's uid; patches only from mutating webhooks, always with their type.
pub fn verify(
    version: &str,
    uid: &str,
    mutating: bool,
    review: &Value,
) -> Result<Response, String> {
    let want = format!("admission.k8s.io/{version}");
    let api_version = review
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = review
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != want || kind != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of {want}, Kind=AdmissionReview, got {api_version}, Kind={kind}"
        ));
    }
    let Some(resp) = review.get("response").filter(|r| r.is_object()) else {
        return Err("webhook response was absent".into());
    };
    let got = resp.get("uid").and_then(Value::as_str).unwrap_or_default();
    if got != uid {
        return Err(format!("expected response.uid=\"{uid}\", got \"{got}\""));
    }
    let patch_text = resp
        .get("patch")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let patch_type = resp.get("patchType").and_then(Value::as_str);
    let patch = if patch_text.is_empty() {
        None
    } else {
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(patch_text)
                .map_err(|e| format!("illegal base64 data in response.patch: {e}"))?,
        )
    };
    if mutating {
        match (&patch, patch_type) {
            // v1beta1 webhooks may leave the type out.
            (Some(_), None) if version == "v1" => {
                return Err("webhook returned response.patch but not response.patchType".into());
            }
            (None, Some(_)) if version == "v1" => {
                return Err("webhook returned response.patchType but not response.patch".into());
            }
            (_, Some("")) => {
                return Err("webhook returned invalid response.patchType of \"\"".into());
            }
            (Some(_), Some(t)) if t != "JSONPatch" => {
                return Err(format!("unsupported patch type \"{t}\""));
            }
            _ => {}
        }
    } else {
        if patch.is_some() {
            return Err("validating webhook may not return response.patch".into());
        }
        if patch_type.is_some() {
            return Err("validating webhook may not return response.patchType".into());
        }
    }
    let audit_annotations = resp
        .get("auditAnnotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let warnings = resp
        .get("warnings")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Response {
        allowed: resp
            .get("allowed")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        status: resp.get("status").filter(|s| s.is_object()).cloned(),
        patch,
        audit_annotations,
        warnings,
    })
}

/// The reasons kube-apiserver knows, and those webhooks sent (bounded: a webhook must
/// not make the server keep an unbounded set of strings).
static REASONS: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(|| {
    Mutex::new(HashSet::from([
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "StoreReadError",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ]))
});

/// A `&'static str` for a reason a webhook answered with ("" past the bound).
fn reason(text: &str) -> &'static str {
    let mut known = REASONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = known.get(text) {
        return r;
    }
    if known.len() >= 256 || text.len() > 128 {
        return "";
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    known.insert(leaked);
    leaked
}

/// `ToStatusErr`: the webhook's Status, its message prefixed with who refused; a code
/// under 400 becomes 400.
pub fn rejection(webhook: &str, status: Option<&Value>) -> ApiError {
    let text = |k: &str| {
        status
            .and_then(|s| s.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let denied = format!("admission webhook \"{webhook}\" denied the request");
    let message = if !text("message").is_empty() {
        format!("{denied}: {}", text("message"))
    } else if !text("reason").is_empty() {
        format!("{denied}: {}", text("reason"))
    } else {
        format!("{denied} without explanation")
    };
    // Upstream raises a code under 400 to 400 and keeps the rest; an HTTP status has
    // three digits, so one past 999 (which Go's server would not write) is a 500.
    let code = match status
        .and_then(|s| s.get("code"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
    {
        c if c < 400 => 400,
        c => u16::try_from(c).ok().filter(|c| *c <= 999).unwrap_or(500),
    };
    let mut err = ApiError::new(code, reason(text("reason")), message);
    err.details = status
        .and_then(|s| s.get("details"))
        .filter(|d| d.is_object())
        .cloned();
    err
}

/// A webhook that could not be called (or answered nonsense) under `failurePolicy:
/// Fail`: `Internal error occurred: failed calling webhook "<name>": <why>`.
pub fn calling_error(webhook: &str, why: &str) -> ApiError {
    let inner = format!("failed calling webhook \"{webhook}\": {why}");
    let mut err = ApiError::internal(format!("Internal error occurred: {inner}"));
    err.details = Some(json!({"causes": [{"message": inner}]}));
    err
}

/// `apierrors.NewInternalError(err)` for anything else that went wrong.
pub fn internal(message: &str) -> ApiError {
    let mut err = ApiError::internal(format!("Internal error occurred: {message}"));
    err.details = Some(json!({"causes": [{"message": message}]}));
    err
}

/// `NewDryRunUnsupportedErr`.
pub fn dry_run_unsupported(webhook: &str) -> ApiError {
    ApiError::bad_request(format!(
        "admission webhook \"{webhook}\" does not support dry run"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(response: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }

    #[test]
    fn verify_checks_version_uid_and_patches() {
        let ok = verify(
            "v1",
            "u1",
            true,
            &answer(json!({"uid": "u1", "allowed": true})),
        );
        assert!(ok.is_ok_and(|r| r.allowed));
        let e = verify(
            "v1",
            "u1",
            true,
            &answer(json!({"uid": "u2", "allowed": true})),
        );
        assert_eq!(
            e.err().as_deref(),
            Some("expected response.uid=\"u1\", got \"u2\"")
        );
        let e = verify("v1", "u1", true, &json!({"response": {"uid": "u1"}}));
        assert_eq!(
            e.err().as_deref(),
            Some(
                "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got , Kind="
            )
        );
        let e = verify(
            "v1",
            "u1",
            true,
            &answer(json!({"uid": "u1", "allowed": true, "patch": "W10="})),
        );
        assert_eq!(
            e.err().as_deref(),
            Some("webhook returned response.patch but not response.patchType")
        );
        let e = verify(
            "v1",
            "u1",
            false,
            &answer(
                json!({"uid": "u1", "allowed": true, "patch": "W10=", "patchType": "JSONPatch"}),
            ),
        );
        assert_eq!(
            e.err().as_deref(),
            Some("validating webhook may not return response.patch")
        );
        let r = verify(
            "v1",
            "u1",
            true,
            &answer(
                json!({"uid": "u1", "allowed": true, "patch": "W10=", "patchType": "JSONPatch", "warnings": ["careful"], "auditAnnotations": {"k": "v"}}),
            ),
        );
        let r = r.expect("valid");
        assert_eq!(r.patch.as_deref(), Some(&b"[]"[..]));
        assert_eq!(r.warnings, ["careful"]);
        assert_eq!(r.audit_annotations.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn rejections_read_as_upstreams() {
        let e = rejection(
            "deny.example.com",
            Some(&json!({"message": "no way", "code": 403, "reason": "Forbidden"})),
        );
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request: no way"
        );
        assert_eq!((e.code, e.reason), (403, "Forbidden"));
        let e = rejection("deny.example.com", Some(&json!({"code": 200})));
        assert_eq!(
            e.message,
            "admission webhook \"deny.example.com\" denied the request without explanation"
        );
        assert_eq!(e.code, 400);
        let e = rejection("deny.example.com", None);
        assert_eq!(e.code, 400);
        // Codes from 400 up are kept, beyond 5xx too, as kube-apiserver keeps them.
        let e = rejection("deny.example.com", Some(&json!({"code": 600})));
        assert_eq!(e.code, 600);
        let e = rejection("deny.example.com", Some(&json!({"code": 429})));
        assert_eq!(e.code, 429);
        let e = rejection("deny.example.com", Some(&json!({"code": 70000})));
        assert_eq!(e.code, 500);
        let e = calling_error("x.example.com", "failed to call webhook: boom");
        assert_eq!(
            e.message,
            "Internal error occurred: failed calling webhook \"x.example.com\": failed to call webhook: boom"
        );
        assert_eq!(e.code, 500);
    }

    #[test]
    fn review_versions() {
        assert_eq!(
            review_version(&["v9".into(), "v1beta1".into(), "v1".into()]),
            Ok("v1beta1")
        );
        assert!(review_version(&["v9".into()]).is_err());
    }
}
