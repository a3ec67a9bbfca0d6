//! The audit event (`audit.k8s.io/v1` `Event`) as kube-apiserver writes it to its log:
//! its fields in upstream's order, empty optional fields left out, timestamps as
//! `MicroTime` (RFC 3339, UTC, six fractional digits), the response status as a
//! `meta/v1` `Status` (`{"metadata":{},"code":200}` on success; status, message and
//! reason too on failure).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::policy::{Level, Stage};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::authz::Attributes;

/// User agents longer than this are cut (upstream's `maxUserAgentLength`).
const MAX_USER_AGENT: usize = 1024;

/// One audit event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub level: Level,
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: Stage,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: User,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<User>,
    #[serde(rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_object: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_object: Option<Value>,
    pub request_received_timestamp: MicroTime,
    pub stage_timestamp: MicroTime,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `authentication/v1` `UserInfo`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct User {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl From<&UserInfo> for User {
    fn from(u: &UserInfo) -> Self {
        Self {
            username: u.name.clone(),
            uid: u.uid.clone(),
            groups: u.groups.clone(),
            extra: u.extra.clone(),
        }
    }
}

/// What the request is about (`audit.k8s.io/v1` `ObjectReference`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The response's `meta/v1` `Status` (bounded fields only, as upstream copies them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResponseStatus {
    pub metadata: BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub code: u16,
}

impl ResponseStatus {
    pub fn code(code: u16) -> Self {
        Self {
            code,
            ..Self::default()
        }
    }

    /// From the `Status` object the client is sent (a failure, or a delete's success).
    pub fn from_status(status: &Value) -> Self {
        let text = |k: &str| {
            status
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            metadata: BTreeMap::new(),
            status: text("status"),
            message: text("message"),
            reason: text("reason"),
            details: status.get("details").cloned(),
            code: status
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or_default(),
        }
    }
}

/// A `metav1.MicroTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroTime(pub jiff::Timestamp);

impl MicroTime {
    pub fn now() -> Self {
        Self(jiff::Timestamp::now())
    }
}

impl Serialize for MicroTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

/// What is known of a request when it arrives.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub audit_id: String,
    pub request_uri: String,
    pub source_ips: Vec<String>,
    pub user_agent: String,
    pub received: MicroTime,
}

impl RequestMeta {
    /// The user agent, cut as upstream cuts it.
    pub fn user_agent(raw: &str) -> String {
        if raw.len() <= MAX_USER_AGENT {
            return raw.to_owned();
        }
        let mut end = MAX_USER_AGENT;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...TRUNCATED", &raw[..end])
    }
}

impl Event {
    /// The event of a request at `level` (`LogRequestMetadata`): the user (empty when
    /// authentication failed), the verb and, for a resource request, what it is about.
    pub fn new(
        level: Level,
        meta: RequestMeta,
        user: Option<&UserInfo>,
        attrs: &Attributes,
    ) -> Self {
        let object_ref = attrs.resource_request.then(|| ObjectRef {
            resource: attrs.resource.clone(),
            namespace: attrs.namespace.clone(),
            name: attrs.name.clone(),
            api_group: attrs.api_group.clone(),
            api_version: attrs.api_version.clone(),
            subresource: attrs.subresource.clone(),
            ..ObjectRef::default()
        });
        Self {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level,
            audit_id: meta.audit_id,
            stage: Stage::RequestReceived,
            request_uri: meta.request_uri,
            verb: attrs.verb.clone(),
            user: user.map(User::from).unwrap_or_default(),
            impersonated_user: None,
            source_ips: meta.source_ips,
            user_agent: meta.user_agent,
            object_ref,
            response_status: None,
            request_object: None,
            response_object: None,
            request_received_timestamp: meta.received,
            stage_timestamp: meta.received,
            annotations: BTreeMap::new(),
        }
    }
}

/// Drops `metadata.managedFields` from an object, a list's items, or a Table's rows
/// (`omitManagedFields`).
pub fn drop_managed_fields(value: &mut Value) {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    for key in ["items", "rows"] {
        if let Some(items) = value.get_mut(key).and_then(Value::as_array_mut) {
            for item in items {
                let item = if key == "rows" {
                    match item.get_mut("object") {
                        Some(obj) => obj,
                        None => continue,
                    }
                } else {
                    item
                };
                if let Some(meta) = item.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("managedFields");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_has_six_digits_and_z() {
        let t: jiff::Timestamp = "2024-05-01T10:20:30.123Z".parse().expect("timestamp");
        let out = serde_json::to_string(&MicroTime(t)).expect("json");
        assert_eq!(out, "\"2024-05-01T10:20:30.123000Z\"");
    }

    #[test]
    fn success_status_is_metadata_and_code() {
        let out = serde_json::to_string(&ResponseStatus::code(200)).expect("json");
        assert_eq!(out, r#"{"metadata":{},"code":200}"#);
    }

    #[test]
    fn long_user_agents_are_cut() {
        let ua = "x".repeat(2000);
        let cut = RequestMeta::user_agent(&ua);
        assert_eq!(cut.len(), 1024 + "...TRUNCATED".len());
        assert!(cut.ends_with("...TRUNCATED"));
    }

    #[test]
    fn managed_fields_are_dropped_from_objects_and_lists() {
        let mut v = serde_json::json!({"metadata": {"name": "a", "managedFields": [{}]},
            "items": [{"metadata": {"managedFields": [{}], "name": "b"}}]});
        drop_managed_fields(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"metadata": {"name": "a"}, "items": [{"metadata": {"name": "b"}}]})
        );
    }
}
