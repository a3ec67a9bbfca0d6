//! The `APIService` object: its reading ([`ApiService::parse`]), kube-aggregator's
//! defaults (`spec.service.port` 443) and validation
//! (`pkg/apis/apiregistration/validation`, with its messages: the name must be
//! `spec.version+"."+spec.group`, priorities in range, no `caBundle` or
//! `insecureSkipTLSVerify` on a local APIService, …), the `Available` condition, and
//! the columns `kubectl get apiservices` prints (NAME, SERVICE, AVAILABLE, AGE, as
//! kube-aggregator's `ConvertToTable`).

use base64::Engine;
use serde_json::{Value, json};

use crate::apiserver::admission::validation;
use crate::apiserver::object;
use crate::apiserver::status::Cause;

/// The label the autoregistration controller manages its APIServices by.
pub const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";
/// The condition type.
pub const AVAILABLE: &str = "Available";

/// Where a remote APIService's server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl ServiceRef {
    /// The DNS name the server's certificate is checked against
    /// (`<name>.<namespace>.svc`, as kube-aggregator's `ServerName`).
    pub fn server_name(&self) -> String {
        format!("{}.{}.svc", self.name, self.namespace)
    }
}

/// What routing, discovery and the controllers read of an APIService.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiService {
    pub name: String,
    pub group: String,
    pub version: String,
    pub group_priority: i64,
    pub version_priority: i64,
    /// `None` for a local APIService.
    pub service: Option<ServiceRef>,
    /// The decoded `caBundle` (PEM).
    pub ca_bundle: Vec<u8>,
    pub insecure: bool,
    /// The `Available` condition's status, if set.
    pub available: Option<String>,
}

impl ApiService {
    pub fn parse(obj: &Value) -> Option<Self> {
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        let s = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or_default();
        let service = spec
            .get("service")
            .filter(|v| v.is_object())
            .map(|svc| ServiceRef {
                namespace: svc["namespace"].as_str().unwrap_or_default().to_owned(),
                name: svc["name"].as_str().unwrap_or_default().to_owned(),
                port: svc["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(443),
            });
        Some(Self {
            name: object::name(obj).to_owned(),
            group: s("group").to_owned(),
            version: s("version").to_owned(),
            group_priority: spec["groupPriorityMinimum"].as_i64().unwrap_or(0),
            version_priority: spec["versionPriority"].as_i64().unwrap_or(0),
            service,
            ca_bundle: ca_bundle(spec),
            insecure: spec["insecureSkipTLSVerify"].as_bool().unwrap_or(false),
            available: condition(obj, AVAILABLE)
                .and_then(|c| c.get("status"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    pub fn is_local(&self) -> bool {
        self.service.is_none()
    }

    pub fn is_available(&self) -> bool {
        self.available.as_deref() == Some("True")
    }
}

/// The decoded `spec.caBundle` (base64 in JSON); empty if unset or undecodable.
fn ca_bundle(spec: &Value) -> Vec<u8> {
    spec.get("caBundle")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default()
}

/// The APIService name of a group-version: `v1.apps`, and `v1.` for the core group.
pub fn name_of(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

/// A condition of `type_` in `status.conditions`.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

/// Sets the `Available` condition as `SetAPIServiceCondition` does: the transition
/// time changes only when the status does.
pub fn set_available(obj: &mut Value, status: &str, reason: &str, message: &str) {
    let since = condition(obj, AVAILABLE)
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(object::now()));
    let cond = json!({
        "type": AVAILABLE,
        "status": status,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    });
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    let conditions = obj["status"]
        .as_object_mut()
        .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    if let Some(list) = conditions {
        if !list.is_array() {
            *list = json!([]);
        }
        if let Some(list) = list.as_array_mut() {
            match list
                .iter_mut()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(AVAILABLE))
            {
                Some(existing) => *existing = cond,
                None => list.push(cond),
            }
        }
    }
}

/// `SetDefaults_ServiceReference`: port 443.
pub fn defaults(obj: &mut Value) {
    if let Some(service) = obj
        .get_mut("spec")
        .and_then(|s| s.get_mut("service"))
        .and_then(Value::as_object_mut)
        && service.get("port").is_none_or(Value::is_null)
    {
        service.insert("port".into(), json!(443));
    }
}

/// `IsValidPathSegmentName`.
fn path_segment_errors(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    match name {
        "." => out.push("may not be '.'"),
        ".." => out.push("may not be '..'"),
        _ => {
            if name.contains('/') {
                out.push("may not contain '/'");
            }
            if name.contains('%') {
                out.push("may not contain '%'");
            }
        }
    }
    out
}

/// `IsDNS1035Label`.
fn dns1035_errors(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    if value.len() > 63 {
        out.push("must be no more than 63 characters".to_owned());
    }
    let b = value.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_lowercase)
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !ok {
        out.push("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".to_owned());
    }
    out
}

/// kube-aggregator's `ValidateAPIService` (and the status check), beyond the object
/// meta checks every kind gets.
pub fn validate(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let s = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or_default();
    let (group, version) = (s("group"), s("version"));
    let name = object::name(obj);
    if !name.is_empty() {
        let required = name_of(group, version);
        let errors = path_segment_errors(name);
        if !errors.is_empty() {
            for e in errors {
                causes.push(Cause::invalid(
                    "metadata.name",
                    format!("Invalid value: \"{name}\": {e}"),
                ));
            }
        } else if name != required {
            causes.push(Cause::invalid(
                "metadata.name",
                format!(
                    "Invalid value: \"{name}\": must be `spec.version+\".\"+spec.group`: \"{required}\""
                ),
            ));
        }
    }
    if group.is_empty() && version != "v1" {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "spec.group".into(),
            message: "Required value: only v1 may have an empty group and it better be legacy kube"
                .into(),
        });
    }
    if !group.is_empty() && !validation::is_dns_subdomain(group) {
        causes.push(Cause::invalid(
            "spec.group",
            validation::dns_subdomain_msg(group),
        ));
    }
    for e in dns1035_errors(version) {
        causes.push(Cause::invalid(
            "spec.version",
            format!("Invalid value: \"{version}\": {e}"),
        ));
    }
    let int = |k: &str| spec.get(k).and_then(Value::as_i64).unwrap_or(0);
    let gpm = int("groupPriorityMinimum");
    if gpm <= 0 || gpm > 20000 {
        causes.push(Cause::invalid(
            "spec.groupPriorityMinimum",
            format!("Invalid value: {gpm}: must be positive and less than 20000"),
        ));
    }
    let vp = int("versionPriority");
    if vp <= 0 || vp > 1000 {
        causes.push(Cause::invalid(
            "spec.versionPriority",
            format!("Invalid value: {vp}: must be positive and less than 1000"),
        ));
    }
    let bundle = ca_bundle(spec);
    let insecure = spec["insecureSkipTLSVerify"].as_bool().unwrap_or(false);
    match spec.get("service").filter(|v| v.is_object()) {
        None => {
            if !bundle.is_empty() {
                causes.push(Cause::invalid(
                    "spec.caBundle",
                    format!(
                        "Invalid value: \"{} bytes\": local APIServices may not have a caBundle",
                        bundle.len()
                    ),
                ));
            }
            if insecure {
                causes.push(Cause::invalid(
                    "spec.insecureSkipTLSVerify",
                    "Invalid value: true: local APIServices may not have insecureSkipTLSVerify",
                ));
            }
        }
        Some(service) => {
            for field in ["namespace", "name"] {
                if service
                    .get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(Cause::required(format!("spec.service.{field}")));
                }
            }
            if let Some(port) = service.get("port").and_then(Value::as_i64)
                && !(1..=65535).contains(&port)
            {
                causes.push(Cause::invalid(
                    "spec.service.port",
                    format!(
                        "Invalid value: {port}: port is not valid: must be between 1 and 65535, inclusive"
                    ),
                ));
            }
            if insecure && !bundle.is_empty() {
                causes.push(Cause::invalid(
                    "spec.insecureSkipTLSVerify",
                    "Invalid value: true: may not be true if caBundle is present",
                ));
            }
        }
    }
    // ValidateAPIServiceStatus.
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, c) in conditions.iter().enumerate() {
        let status = c.get("status").and_then(Value::as_str).unwrap_or_default();
        if !matches!(status, "True" | "False" | "Unknown") {
            causes.push(validation::unsupported(
                &format!("status.conditions[{i}].status"),
                status,
                &["False", "True", "Unknown"],
            ));
        }
    }
}

/// The columns after NAME (kube-aggregator's `ConvertToTable`).
pub const COLUMNS: &[(&str, &str, u8)] = &[
    ("Service", "string", 0),
    ("Available", "string", 0),
    ("Age", "string", 0),
];

/// SERVICE (`Local` or `namespace/name`) and AVAILABLE (`True`, or `False
/// (<reason>)`, or `Unknown`) of one APIService.
pub fn cells(obj: &Value, age: String) -> Vec<Value> {
    let service = match obj.pointer("/spec/service").filter(|v| v.is_object()) {
        Some(svc) => format!(
            "{}/{}",
            svc["namespace"].as_str().unwrap_or_default(),
            svc["name"].as_str().unwrap_or_default()
        ),
        None => "Local".to_owned(),
    };
    let available = match condition(obj, AVAILABLE) {
        None => "Unknown".to_owned(),
        Some(c) => {
            let status = c["status"].as_str().unwrap_or_default();
            let reason = c["reason"].as_str().unwrap_or_default();
            if status == "True" || reason.is_empty() {
                status.to_owned()
            } else {
                format!("{status} ({reason})")
            }
        }
    };
    vec![json!(service), json!(available), json!(age)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Value {
        json!({
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "group": "metrics.k8s.io", "version": "v1beta1",
                "groupPriorityMinimum": 100, "versionPriority": 100,
                "insecureSkipTLSVerify": true,
                "service": {"namespace": "kube-system", "name": "metrics-server"},
            },
        })
    }

    fn messages(obj: &Value) -> Vec<String> {
        let mut causes = Vec::new();
        validate(obj, &mut causes);
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn a_remote_apiservice_defaults_its_port_and_validates() {
        let mut obj = remote();
        defaults(&mut obj);
        assert_eq!(obj["spec"]["service"]["port"], 443);
        assert!(messages(&obj).is_empty(), "{:?}", messages(&obj));
        let parsed = ApiService::parse(&obj).expect("parse");
        assert_eq!(
            parsed.service.as_ref().map(ServiceRef::server_name),
            Some("metrics-server.kube-system.svc".into())
        );
        assert!(parsed.insecure && !parsed.is_local() && !parsed.is_available());
    }

    #[test]
    fn upstream_messages() {
        let mut obj = remote();
        obj["metadata"]["name"] = json!("metrics");
        obj["spec"]["groupPriorityMinimum"] = json!(0);
        obj["spec"]["versionPriority"] = json!(1001);
        obj["spec"]["caBundle"] = json!("aGVsbG8=");
        obj["spec"]["service"]["name"] = json!("");
        let got = messages(&obj);
        assert_eq!(
            got,
            [
                "metadata.name: Invalid value: \"metrics\": must be `spec.version+\".\"+spec.group`: \"v1beta1.metrics.k8s.io\"",
                "spec.groupPriorityMinimum: Invalid value: 0: must be positive and less than 20000",
                "spec.versionPriority: Invalid value: 1001: must be positive and less than 1000",
                "spec.service.name: Required value",
                "spec.insecureSkipTLSVerify: Invalid value: true: may not be true if caBundle is present",
            ]
        );
        // Local: no caBundle, no insecureSkipTLSVerify; the core group is `v1.`.
        let local = json!({
            "metadata": {"name": "v2."},
            "spec": {"version": "v2", "groupPriorityMinimum": 18000, "versionPriority": 1,
                     "caBundle": "aGVsbG8=", "insecureSkipTLSVerify": true},
        });
        assert_eq!(
            messages(&local),
            [
                "spec.group: Required value: only v1 may have an empty group and it better be legacy kube",
                "spec.caBundle: Invalid value: \"5 bytes\": local APIServices may not have a caBundle",
                "spec.insecureSkipTLSVerify: Invalid value: true: local APIServices may not have insecureSkipTLSVerify",
            ]
        );
        let core = json!({"metadata": {"name": "v1."},
            "spec": {"version": "v1", "groupPriorityMinimum": 18000, "versionPriority": 1}});
        assert!(messages(&core).is_empty());
        let bad_version = json!({"metadata": {"name": "V1.x.io"},
            "spec": {"group": "x.io", "version": "V1", "groupPriorityMinimum": 1, "versionPriority": 1}});
        assert!(
            messages(&bad_version)[0]
                .starts_with("spec.version: Invalid value: \"V1\": a DNS-1035 label")
        );
    }

    #[test]
    fn table_cells_as_kubectl_prints_them() {
        let mut obj = remote();
        assert_eq!(
            cells(&obj, "1s".into())[..2],
            [json!("kube-system/metrics-server"), json!("Unknown")]
        );
        set_available(&mut obj, "False", "FailedDiscoveryCheck", "boom");
        assert_eq!(cells(&obj, "1s".into())[1], "False (FailedDiscoveryCheck)");
        let since = obj
            .pointer("/status/conditions/0/lastTransitionTime")
            .cloned();
        set_available(&mut obj, "False", "MissingEndpoints", "gone");
        assert_eq!(
            obj.pointer("/status/conditions/0/lastTransitionTime")
                .cloned(),
            since,
            "same status, same transition time"
        );
        assert_eq!(
            obj["status"]["conditions"].as_array().map(Vec::len),
            Some(1)
        );
        set_available(&mut obj, "True", "Passed", "all checks passed");
        assert_eq!(cells(&obj, "1s".into())[1], "True");
        let local = json!({"spec": {"version": "v1"}});
        assert_eq!(cells(&local, "1s".into())[0], "Local");
    }
}
