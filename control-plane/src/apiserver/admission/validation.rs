//! Validation: what Kubernetes rejects with `422 Invalid` and a field path
//! (`pkg/apis/*/validation`): object names, labels and annotations, container specs,
//! ports, selectors matching templates, and the fields that cannot change on update.

use serde_json::{Value, json};

use super::super::status::Cause;

const DNS_LABEL_MAX: usize = 63;
const DNS_SUBDOMAIN_MAX: usize = 253;

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS_LABEL_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= DNS_SUBDOMAIN_MAX && s.split('.').all(is_dns_label)
}

pub(crate) fn dns_label_msg(value: &str) -> String {
    format!(
        "Invalid value: \"{value}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
    )
}

pub(crate) fn dns_subdomain_msg(value: &str) -> String {
    format!(
        "Invalid value: \"{value}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )
}

/// A qualified name (`prefix/name`), as label keys and annotation keys are.
pub(super) fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Some(format!("prefix part {}", dns_subdomain_msg(p)));
    }
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Some(format!(
            "Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    None
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Names that must be DNS labels rather than subdomains.
fn name_is_label(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Service")
}

/// An object's labels and annotations (`meta` its metadata, `path` where it is).
pub fn labels_and_annotations(meta: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(msg) = qualified_name_error(k) {
                causes.push(Cause::invalid(format!("{path}.labels"), msg));
            }
            let v = v.as_str().unwrap_or_default();
            if !v.is_empty() && (v.len() > 63 || !label_chars(v)) {
                causes.push(Cause::invalid(
                    format!("{path}.labels"),
                    format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (k, v) in annotations {
            if let Some(msg) = qualified_name_error(k) {
                causes.push(Cause::invalid(format!("{path}.annotations"), msg));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause::invalid(
                format!("{path}.annotations"),
                format!("Too long: may not be more than 262144 bytes (found {total})"),
            ));
        }
    }
    causes
}

/// Validates `metadata` and the kind-specific fields of a whole object.
pub fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if kind == "Namespace" {
        causes.extend(super::pod_security::validate_labels(
            obj.pointer("/metadata/labels").and_then(Value::as_object),
        ));
    }
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if name_is_label(kind) {
        if !is_dns_label(name) {
            causes.push(Cause::invalid("metadata.name", dns_label_msg(name)));
        }
    } else if !matches!(
        kind,
        "Event"
            | "Lease"
            | "ClusterRole"
            | "Role"
            | "ClusterRoleBinding"
            | "RoleBinding"
            | "CertificateSigningRequest"
            // A path segment named `<version>.<group>` (`v1.` for the core group).
            | "APIService"
    ) && !is_dns_subdomain(name)
    {
        causes.push(Cause::invalid("metadata.name", dns_subdomain_msg(name)));
    }
    causes.extend(labels_and_annotations(&meta, "metadata"));
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match kind {
        "Pod" => pod_spec(spec, "spec", &mut causes),
        "PodTemplate" => template(obj.get("template"), "template", &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            workload(kind, spec, &mut causes)
        }
        "ReplicationController" => {
            replicas(spec, &mut causes);
            template(spec.get("template"), "spec.template", &mut causes);
        }
        "Job" => job(spec, &mut causes),
        "CronJob" => cronjob_spec(spec, &mut causes),
        "Service" => service(spec, &mut causes),
        "NetworkPolicy" => network_policy(spec, &mut causes),
        "Node" => super::pod_cidrs::validate(obj, &mut causes),
        "PodDisruptionBudget" => disruption_budget(spec, &mut causes),
        "CertificateSigningRequest" => super::certificates::validate(obj, &mut causes),
        "APIService" => crate::apiserver::aggregator::apiservice::validate(obj, &mut causes),
        "FlowSchema" | "PriorityLevelConfiguration" => {
            crate::apiserver::flowcontrol::validate(kind, obj, &mut causes)
        }
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => {
            causes.extend(super::policy::validate(kind, obj))
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
            super::rbac::validate(kind, obj, &mut causes)
        }
        "HorizontalPodAutoscaler" => causes.extend(super::autoscaling::validate(obj)),
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            super::webhook::validation::validate(kind, obj, &mut causes)
        }
        "CustomResourceDefinition" => super::webhook::validation::validate_crd_conversion(
            obj.get("spec").unwrap_or(&Value::Null),
            &mut causes,
        ),
        "ResourceQuota" => causes.extend(super::resource_quota::validate(obj)),
        "LimitRange" => causes.extend(super::limit_ranger::validate(obj)),
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => {
            super::storage::validation::validate(kind, obj, &mut causes)
        }
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(data) = obj.get(field).and_then(Value::as_object) {
                    for key in data.keys() {
                        let ok = !key.is_empty()
                            && key.len() <= DNS_SUBDOMAIN_MAX
                            && key.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
                            });
                        if !ok {
                            causes.push(Cause::invalid(
                                format!("{field}[{key}]"),
                                format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// What only a new object is held to (`ValidateXCreate` beyond `ValidateX`).
pub fn validate_create(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if kind == "CronJob" {
        // Its jobs are named `<name>-<11 digits>` and must fit in 63 characters.
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name.len() > 52 {
            causes.push(Cause::invalid(
                "metadata.name",
                format!("Invalid value: \"{name}\": must be no more than 52 characters"),
            ));
        }
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        schedule_time_zone(spec, false, &mut causes);
        time_zone(spec, &mut causes);
    }
    causes
}

/// `pkg/apis/batch/validation`'s CronJobSpec checks that hold on create and update.
fn cronjob_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let schedule = spec
        .get("schedule")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if schedule.is_empty() {
        causes.push(Cause::required("spec.schedule"));
    } else if let Err(e) = crate::controllers::cronjob::schedule::parse(schedule) {
        causes.push(Cause::invalid(
            "spec.schedule",
            format!("Invalid value: \"{schedule}\": {e}"),
        ));
    }
    for field in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        if let Some(v) = spec.get(field).and_then(Value::as_i64)
            && v < 0
        {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                format!("Invalid value: {v}: must be greater than or equal to 0"),
            ));
        }
    }
    match spec.get("concurrencyPolicy").and_then(Value::as_str) {
        Some("Allow" | "Forbid" | "Replace") => {}
        None | Some("") => causes.push(Cause::required("spec.concurrencyPolicy")),
        Some(other) => causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.concurrencyPolicy".into(),
            message: format!(
                "Unsupported value: \"{other}\": supported values: \"Allow\", \"Forbid\", \"Replace\""
            ),
        }),
    }
    let job = spec
        .pointer("/jobTemplate/spec")
        .cloned()
        .unwrap_or(Value::Null);
    job_spec(&job, "spec.jobTemplate.spec", false, causes);
}

/// `TZ=`/`CRON_TZ=` in the schedule: refused, except on an update of a CronJob whose
/// schedule already had it (and then not together with `timeZone`).
fn schedule_time_zone(spec: &Value, allow_tz: bool, causes: &mut Vec<Cause>) {
    let schedule = spec
        .get("schedule")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !schedule.contains("TZ") {
        return;
    }
    let message = if !allow_tz {
        "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
    } else if spec.get("timeZone").is_some_and(|z| !z.is_null()) {
        "cannot use both timeZone field and TZ or CRON_TZ in schedule"
    } else {
        return;
    };
    causes.push(Cause::invalid(
        "spec.schedule",
        format!("Invalid value: \"{schedule}\": {message}"),
    ));
}

/// `spec.timeZone`: an IANA name this host's time zone database knows.
fn time_zone(spec: &Value, causes: &mut Vec<Cause>) {
    let Some(tz) = spec.get("timeZone").and_then(Value::as_str) else {
        return;
    };
    let invalid =
        |msg: String| Cause::invalid("spec.timeZone", format!("Invalid value: \"{tz}\": {msg}"));
    if tz.is_empty() {
        causes.push(invalid("timeZone must be nil or non-empty string".into()));
        return;
    }
    // https://data.iana.org/time-zones/theory.html#naming, as upstream checks it.
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 14
            && p != "."
            && p != ".."
            && !p.starts_with('-')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    };
    if !tz.split('/').all(part_ok) {
        causes.push(invalid(format!("unknown time zone {tz}")));
        return;
    }
    if tz.eq_ignore_ascii_case("Local") {
        causes.push(invalid(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        ));
    } else if jiff::tz::TimeZone::get(tz).is_err() {
        causes.push(invalid(format!("unknown time zone {tz}")));
    }
}

fn replicas(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            format!("Invalid value: {r}: must be greater than or equal to 0"),
        ));
    }
}

/// `ValidatePodDisruptionBudgetSpec` (pkg/apis/policy/validation): one of minAvailable and
/// maxUnavailable, each a non-negative integer or a percent of at most 100%, and a known
/// unhealthyPodEvictionPolicy.
fn disruption_budget(spec: &Value, causes: &mut Vec<Cause>) {
    let set = |f: &str| spec.get(f).is_some_and(|v| !v.is_null());
    if set("minAvailable") && set("maxUnavailable") {
        causes.push(Cause::invalid(
            "spec",
            format!(
                "Invalid value: {}: minAvailable and maxUnavailable cannot be both set",
                serde_json::to_string(spec).unwrap_or_default()
            ),
        ));
    }
    for field in ["minAvailable", "maxUnavailable"] {
        if let Some(v) = spec.get(field).filter(|v| !v.is_null()) {
            int_or_percent(v, &format!("spec.{field}"), causes);
        }
    }
    if let Some(policy) = spec
        .get("unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
        && !matches!(policy, "AlwaysAllow" | "IfHealthyBudget")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.unhealthyPodEvictionPolicy".into(),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"AlwaysAllow\", \"IfHealthyBudget\""
            ),
        });
    }
}

/// `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent` (pkg/apis/apps/validation),
/// with the value printed as Go's `%#v` prints an IntOrString.
fn int_or_percent(v: &Value, field: &str, causes: &mut Vec<Cause>) {
    match v {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                causes.push(Cause::invalid(
                    field,
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
            }
        }
        Value::String(s) => {
            let shown = format!("intstr.IntOrString{{Type:1, IntVal:0, StrVal:{s:?}}}");
            match s.strip_suffix('%').filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
                None => causes.push(Cause::invalid(
                    field,
                    format!("Invalid value: {shown}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%', or '93%', regex used for validation is '[0-9]+%')"),
                )),
                Some(digits) => {
                    if digits.parse::<u64>().map_or(true, |p| p > 100) {
                        causes.push(Cause::invalid(
                            field,
                            format!("Invalid value: {shown}: must not be greater than 100%"),
                        ));
                    }
                }
            }
        }
        _ => causes.push(Cause::invalid(
            field,
            format!("Invalid value: {v}: must be an integer or percentage (e.g '5%')"),
        )),
    }
}

fn workload(kind: &str, spec: &Value, causes: &mut Vec<Cause>) {
    replicas(spec, causes);
    let selector = spec.get("selector");
    let match_labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    let has_expressions = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_expressions {
        causes.push(Cause::required("spec.selector"));
    } else if let Some(wanted) = match_labels {
        let labels = spec
            .pointer("/template/metadata/labels")
            .and_then(Value::as_object);
        let matches = wanted
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
        if !matches {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    serde_json::to_string(&labels).unwrap_or_default()
                ),
            ));
        }
    }
    match kind {
        "StatefulSet" => {
            let policy = spec
                .get("podManagementPolicy")
                .and_then(Value::as_str)
                .unwrap_or("OrderedReady");
            if !matches!(policy, "OrderedReady" | "Parallel") {
                causes.push(unsupported(
                    "spec.podManagementPolicy",
                    policy,
                    &["OrderedReady", "Parallel"],
                ));
            }
            let strategy = spec
                .pointer("/updateStrategy/type")
                .and_then(Value::as_str)
                .unwrap_or("RollingUpdate");
            if !matches!(strategy, "RollingUpdate" | "OnDelete") {
                causes.push(unsupported(
                    "spec.updateStrategy.type",
                    strategy,
                    &["OnDelete", "RollingUpdate"],
                ));
            }
            if let Some(ru) = spec.pointer("/updateStrategy/rollingUpdate") {
                non_negative(ru, "spec.updateStrategy.rollingUpdate", "partition", causes);
            }
            if let Some(o) = spec.get("ordinals") {
                non_negative(o, "spec.ordinals", "start", causes);
            }
            for (field, value) in [
                (
                    "whenDeleted",
                    spec.pointer("/persistentVolumeClaimRetentionPolicy/whenDeleted"),
                ),
                (
                    "whenScaled",
                    spec.pointer("/persistentVolumeClaimRetentionPolicy/whenScaled"),
                ),
            ] {
                if let Some(v) = value.and_then(Value::as_str)
                    && !matches!(v, "Retain" | "Delete")
                {
                    causes.push(unsupported(
                        &format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                        v,
                        &["Retain", "Delete"],
                    ));
                }
            }
        }
        "DaemonSet" => {
            let strategy = spec
                .pointer("/updateStrategy/type")
                .and_then(Value::as_str)
                .unwrap_or("RollingUpdate");
            if !matches!(strategy, "RollingUpdate" | "OnDelete") {
                causes.push(unsupported(
                    "spec.updateStrategy.type",
                    strategy,
                    &["OnDelete", "RollingUpdate"],
                ));
            }
            let restart = spec
                .pointer("/template/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or("Always");
            if restart != "Always" {
                causes.push(unsupported(
                    "spec.template.spec.restartPolicy",
                    restart,
                    &["Always"],
                ));
            }
            let ru = spec.pointer("/updateStrategy/rollingUpdate");
            let zero = |v: Option<&Value>| {
                v.is_none_or(|v| v.as_i64() == Some(0) || v.as_str() == Some("0%"))
            };
            if strategy == "RollingUpdate"
                && let Some(ru) = ru
                && zero(ru.get("maxUnavailable"))
                && zero(ru.get("maxSurge"))
            {
                causes.push(Cause::invalid(
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    "Invalid value: 0: may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        _ => {}
    }
    if kind == "StatefulSet" {
        // Claims from volumeClaimTemplates are volumes of every pod.
        let mut t = spec.get("template").cloned().unwrap_or(Value::Null);
        let claims: Vec<Value> = spec
            .get("volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.pointer("/metadata/name").cloned())
            .map(|name| json!({"name": name, "persistentVolumeClaim": {"claimName": name}}))
            .collect();
        if let Some(ps) = t.get_mut("spec").and_then(Value::as_object_mut) {
            let volumes = ps.entry("volumes").or_insert_with(|| json!([]));
            if let Some(list) = volumes.as_array_mut() {
                list.extend(claims);
            } else {
                *volumes = Value::Array(claims);
            }
        }
        template(Some(&t), "spec.template", causes);
        return;
    }
    template(spec.get("template"), "spec.template", causes);
}

/// A field that must be ≥ 0 when set.
fn non_negative(spec: &Value, path: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = spec.get(field).and_then(Value::as_i64)
        && n < 0
    {
        causes.push(Cause::invalid(
            format!("{path}.{field}"),
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

pub(crate) fn unsupported(path: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause {
        reason: "FieldValueNotSupported",
        field: path.into(),
        message: format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    }
}

/// A Job's spec (also a CronJob's `jobTemplate.spec`, under `path`).
pub fn job_spec(spec: &Value, path: &str, generated_selector: bool, causes: &mut Vec<Cause>) {
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ] {
        non_negative(spec, path, field, causes);
    }
    if spec.get("activeDeadlineSeconds").and_then(Value::as_i64) == Some(0) {
        causes.push(Cause::invalid(
            format!("{path}.activeDeadlineSeconds"),
            "Invalid value: 0: must be greater than 0",
        ));
    }
    let mode = spec
        .get("completionMode")
        .and_then(Value::as_str)
        .unwrap_or("NonIndexed");
    let indexed = mode == "Indexed";
    if !matches!(mode, "NonIndexed" | "Indexed") {
        causes.push(unsupported(
            &format!("{path}.completionMode"),
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    let set = |f: &str| spec.get(f).is_some_and(|v| !v.is_null());
    if indexed && !set("completions") {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.completions"),
            message: "Required value: when completion mode is Indexed".into(),
        });
    }
    if indexed
        && let Some(c) = spec.get("completions").and_then(Value::as_i64)
        && c > 100_000
    {
        causes.push(Cause::invalid(
            format!("{path}.completions"),
            format!("Invalid value: {c}: must be less than or equal to 100000 when completion mode is Indexed"),
        ));
    }
    if set("backoffLimitPerIndex") && !indexed {
        causes.push(Cause::forbidden(
            format!("{path}.backoffLimitPerIndex"),
            "Forbidden: requires indexed completion mode",
        ));
    }
    if set("maxFailedIndexes") && !set("backoffLimitPerIndex") {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.backoffLimitPerIndex"),
            message: "Required value: when maxFailedIndexes is specified".into(),
        });
    }
    if set("successPolicy") && !indexed {
        causes.push(Cause::invalid(
            format!("{path}.successPolicy"),
            "Invalid value: \"NonIndexed\": requires indexed completion mode",
        ));
    }
    let restart = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if !matches!(restart, "OnFailure" | "Never") {
        causes.push(unsupported(
            &format!("{path}.template.spec.restartPolicy"),
            restart,
            &["OnFailure", "Never"],
        ));
    } else if set("podFailurePolicy") && restart != "Never" {
        causes.push(Cause::invalid(
            format!("{path}.template.spec.restartPolicy"),
            format!("Invalid value: \"{restart}\": only \"Never\" is supported when podFailurePolicy is specified"),
        ));
    }
    if let Some(rules) = spec
        .pointer("/podFailurePolicy/rules")
        .and_then(Value::as_array)
    {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{path}.podFailurePolicy.rules[{i}]");
            let action = rule
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !matches!(action, "FailJob" | "FailIndex" | "Ignore" | "Count") {
                causes.push(unsupported(
                    &format!("{at}.action"),
                    action,
                    &["Count", "FailIndex", "FailJob", "Ignore"],
                ));
            } else if action == "FailIndex" && !set("backoffLimitPerIndex") {
                causes.push(Cause::forbidden(
                    format!("{at}.action"),
                    "Forbidden: requires the backoffLimitPerIndex to be set",
                ));
            }
            let codes = rule.get("onExitCodes").filter(|v| !v.is_null());
            let conds = rule.get("onPodConditions").filter(|v| !v.is_null());
            if codes.is_some() == conds.is_some() {
                causes.push(Cause::invalid(
                    at.clone(),
                    "Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
                ));
            }
            if let Some(codes) = codes {
                let op = codes
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !matches!(op, "In" | "NotIn") {
                    causes.push(unsupported(
                        &format!("{at}.onExitCodes.operator"),
                        op,
                        &["In", "NotIn"],
                    ));
                }
                let values = codes.get("values").and_then(Value::as_array);
                if values.is_none_or(Vec::is_empty) {
                    causes.push(Cause {
                        reason: "FieldValueRequired",
                        field: format!("{at}.onExitCodes.values"),
                        message: "Required value: at least one value is required".into(),
                    });
                }
                if op == "In" && values.is_some_and(|v| v.iter().any(|c| c.as_i64() == Some(0))) {
                    causes.push(Cause::invalid(
                        format!("{at}.onExitCodes.values"),
                        "Invalid value: 0: must not be 0 for the In operator",
                    ));
                }
            }
        }
    }
    let replacement = spec.get("podReplacementPolicy").and_then(Value::as_str);
    if let Some(r) = replacement {
        if !matches!(r, "TerminatingOrFailed" | "Failed") {
            causes.push(unsupported(
                &format!("{path}.podReplacementPolicy"),
                r,
                &["Failed", "TerminatingOrFailed"],
            ));
        } else if r == "TerminatingOrFailed" && set("podFailurePolicy") {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("{path}.podReplacementPolicy"),
                message: "Unsupported value: \"TerminatingOrFailed\": supported values: \"Failed\""
                    .into(),
            });
        }
    }
    if generated_selector {
        let selector = spec.get("selector").filter(|s| !s.is_null());
        match selector
            .and_then(|s| s.get("matchLabels"))
            .and_then(Value::as_object)
        {
            None if selector.is_none() => causes.push(Cause::required(format!("{path}.selector"))),
            Some(wanted) => {
                let labels = spec
                    .pointer("/template/metadata/labels")
                    .and_then(Value::as_object);
                if !wanted
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                {
                    causes.push(Cause::invalid(
                        format!("{path}.template.metadata.labels"),
                        format!(
                            "Invalid value: {}: `selector` does not match template `labels`",
                            serde_json::to_string(&labels).unwrap_or_default()
                        ),
                    ));
                }
            }
            None => {}
        }
    }
    template(spec.get("template"), &format!("{path}.template"), causes);
}

fn job(spec: &Value, causes: &mut Vec<Cause>) {
    job_spec(spec, "spec", true, causes);
}

fn template(template: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    match template.and_then(|t| t.get("spec")) {
        Some(spec) => pod_spec(spec, &format!("{path}.spec"), causes),
        None => causes.push(Cause::required(format!("{path}.spec.containers"))),
    }
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let volumes: Vec<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    for (i, v) in volumes.iter().enumerate() {
        let field = format!("{path}.volumes[{i}].name");
        if !is_dns_label(v) {
            causes.push(Cause::invalid(field, dns_label_msg(v)));
        } else if volumes[..i].contains(v) {
            causes.push(Cause::duplicate(field, v));
        }
    }
    let mut names: Vec<String> = Vec::new();
    let host_users = spec.get("hostUsers").and_then(Value::as_bool) != Some(false);
    if !host_users {
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            if spec.get(field).and_then(Value::as_bool) == Some(true) {
                causes.push(Cause::forbidden(
                    // Upstream's path: the internal API keeps these in securityContext.
                    format!("{path}.securityContext.{field}"),
                    "Forbidden: when `hostUsers` is false",
                ));
            }
        }
    }
    for key in ["initContainers", "containers"] {
        let Some(list) = spec.get(key).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in list.iter().enumerate() {
            let at = format!("{path}.{key}[{i}]");
            // An unmasked /proc only inside the pod's own user namespace.
            if host_users
                && c.pointer("/securityContext/procMount")
                    .and_then(Value::as_str)
                    == Some("Unmasked")
            {
                causes.push(Cause::invalid(
                    format!("{at}.securityContext.procMount"),
                    "Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`",
                ));
            }
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.is_empty() {
                causes.push(Cause::required(format!("{at}.name")));
            } else if !is_dns_label(name) {
                causes.push(Cause::invalid(format!("{at}.name"), dns_label_msg(name)));
            } else if names.iter().any(|n| n == name) {
                causes.push(Cause::duplicate(format!("{at}.name"), name));
            } else {
                names.push(name.to_owned());
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(format!("{at}.image")));
            }
            if let Some(r) = c.get("resources") {
                resource_requirements(r, &format!("{at}.resources"), causes);
            }
            if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                for (j, p) in ports.iter().enumerate() {
                    let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        causes.push(Cause::invalid(
                            format!("{at}.ports[{j}].containerPort"),
                            format!(
                                "Invalid value: {port}: must be between 1 and 65535, inclusive"
                            ),
                        ));
                    }
                    protocol(p, &format!("{at}.ports[{j}].protocol"), causes);
                }
            }
            if let Some(mounts) = c.get("volumeMounts").and_then(Value::as_array) {
                for (j, m) in mounts.iter().enumerate() {
                    let vol = m.get("name").and_then(Value::as_str).unwrap_or_default();
                    if !volumes.contains(&vol) {
                        causes.push(Cause {
                            reason: "FieldValueNotFound",
                            field: format!("{at}.volumeMounts[{j}].name"),
                            message: format!("Not found: \"{vol}\""),
                        });
                    }
                    if m.get("mountPath")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        causes.push(Cause::required(format!("{at}.volumeMounts[{j}].mountPath")));
                    }
                }
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: format!("{path}.restartPolicy"),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
}

/// Whether requests of `name` may be below its limit: native resources (no domain,
/// or `kubernetes.io/`) but hugepages (upstream's `IsOvercommitAllowed`).
fn overcommit_allowed(name: &str) -> bool {
    let native = !name.contains('/') || name.starts_with("kubernetes.io/");
    native && !name.starts_with("hugepages-")
}

/// A container's `resources` (upstream's `validateResourceRequirements`): quantities
/// not negative, requests not above their limits (equal to them for resources that
/// cannot be overcommitted, which must have a limit).
fn resource_requirements(r: &Value, path: &str, causes: &mut Vec<Cause>) {
    use crate::quota::Amount;
    let list = |key: &str| -> Vec<(String, Value)> {
        r.get(key)
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    let (limits, requests) = (list("limits"), list("requests"));
    let mut parsed = |key: &str, entries: &[(String, Value)]| -> Vec<(String, Option<Amount>)> {
        entries
            .iter()
            .map(|(name, v)| {
                let amount = Amount::from_value(v);
                if let Some(a) = &amount
                    && a.milli < 0
                {
                    causes.push(Cause::invalid(
                        format!("{path}.{key}[{name}]"),
                        format!("Invalid value: \"{a}\": must be greater than or equal to 0"),
                    ));
                }
                (name.clone(), amount)
            })
            .collect()
    };
    let limits = parsed("limits", &limits);
    let requests = parsed("requests", &requests);
    for (name, request) in &requests {
        let Some(request) = request else { continue };
        match limits.iter().find(|(n, _)| n == name) {
            Some((_, Some(limit))) => {
                if request.milli != limit.milli && !overcommit_allowed(name) {
                    causes.push(Cause::invalid(
                        format!("{path}.requests"),
                        format!(
                            "Invalid value: \"{request}\": must be equal to {name} limit of {limit}"
                        ),
                    ));
                } else if request.milli > limit.milli {
                    causes.push(Cause::invalid(
                        format!("{path}.requests"),
                        format!(
                            "Invalid value: \"{request}\": must be less than or equal to {name} limit of {limit}"
                        ),
                    ));
                }
            }
            Some((_, None)) => {}
            None if !overcommit_allowed(name) => causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.limits"),
                message: "Required value: Limit must be set for non overcommitable resources"
                    .into(),
            }),
            None => {}
        }
    }
}

fn protocol(p: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(proto) = p.get("protocol").and_then(Value::as_str)
        && !matches!(proto, "TCP" | "UDP" | "SCTP")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: \"{proto}\": supported values: \"SCTP\", \"TCP\", \"UDP\""
            ),
        });
    }
}

/// A CIDR (`address/prefix`, IPv4 or IPv6), as (address, prefix length).
fn cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (a, p) = text.split_once('/')?;
    let a: std::net::IpAddr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    (p <= max).then_some((a, p))
}

/// Whether CIDR `inner` lies inside `outer` and is smaller.
fn strict_subset(outer: (std::net::IpAddr, u8), inner: (std::net::IpAddr, u8)) -> bool {
    let bits = |a: std::net::IpAddr| -> u128 {
        match a {
            std::net::IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            std::net::IpAddr::V6(v) => u128::from(v),
        }
    };
    if outer.0.is_ipv4() != inner.0.is_ipv4() || inner.1 <= outer.1 {
        return false;
    }
    let shift = if outer.0.is_ipv4() {
        32 - u32::from(outer.1) + 96
    } else {
        128 - u32::from(outer.1)
    };
    let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
    bits(outer.0) & mask == bits(inner.0) & mask
}

const CIDR_MESSAGE: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// An IANA service name as a port name (`validation.IsValidPortName`).
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if name.len() > 15 {
        errors.push("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errors.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if name.contains("--") {
        errors.push("must not contain consecutive hyphens");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errors.push("must not begin or end with a hyphen");
    }
    errors
}

/// `ValidateNetworkPolicySpec`: policy types, peers, ipBlocks, ports.
fn network_policy(spec: &Value, causes: &mut Vec<Cause>) {
    let types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, t) in types.iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if !matches!(t, "Ingress" | "Egress") {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: format!("spec.policyTypes[{i}]"),
                message: format!(
                    "Unsupported value: \"{t}\": supported values: \"Egress\", \"Ingress\""
                ),
            });
        }
    }
    if types.len() > 2 {
        causes.push(Cause::invalid(
            "spec.policyTypes",
            "may not specify more than two policyTypes",
        ));
    }
    for (direction, peers_key) in [("ingress", "from"), ("egress", "to")] {
        let rules = spec
            .get(direction)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.{direction}[{i}]");
            for (j, port) in rule
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                network_policy_port(port, &format!("{path}.ports[{j}]"), causes);
            }
            for (j, peer) in rule
                .get(peers_key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                network_policy_peer(peer, &format!("{path}.{peers_key}[{j}]"), causes);
            }
        }
    }
}

fn network_policy_port(port: &Value, path: &str, causes: &mut Vec<Cause>) {
    protocol(port, &format!("{path}.protocol"), causes);
    let end = port.get("endPort").and_then(Value::as_i64);
    match port.get("port") {
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(0);
            if !(1..=65535).contains(&n) {
                causes.push(Cause::invalid(
                    format!("{path}.port"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                ));
            }
            if let Some(e) = end {
                if !(1..=65535).contains(&e) {
                    causes.push(Cause::invalid(
                        format!("{path}.endPort"),
                        format!("Invalid value: {e}: must be between 1 and 65535, inclusive"),
                    ));
                } else if e < n {
                    causes.push(Cause::invalid(
                        format!("{path}.endPort"),
                        format!("Invalid value: {e}: must be greater than or equal to `port`"),
                    ));
                }
            }
        }
        Some(Value::String(name)) => {
            for msg in port_name_errors(name) {
                causes.push(Cause::invalid(
                    format!("{path}.port"),
                    format!("Invalid value: \"{name}\": {msg}"),
                ));
            }
            if let Some(e) = end {
                causes.push(Cause::invalid(
                    format!("{path}.endPort"),
                    format!("Invalid value: {e}: may not be specified when `port` is non-numeric"),
                ));
            }
        }
        _ => {
            if end.is_some() {
                causes.push(Cause {
                    reason: "FieldValueRequired",
                    field: format!("{path}.port"),
                    message: "Required value: must specify port when endPort is specified".into(),
                });
            }
        }
    }
}

fn network_policy_peer(peer: &Value, path: &str, causes: &mut Vec<Cause>) {
    let present = |k: &str| peer.get(k).is_some_and(|v| !v.is_null());
    let count = ["podSelector", "namespaceSelector", "ipBlock"]
        .iter()
        .filter(|k| present(k))
        .count();
    if count == 0 {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: path.to_owned(),
            message: "Required value: must specify a peer".into(),
        });
    } else if count > 1 && present("ipBlock") {
        causes.push(Cause::forbidden(
            path,
            "Forbidden: may not specify both ipBlock and another peer",
        ));
    }
    let Some(block) = peer.get("ipBlock").filter(|b| !b.is_null()) else {
        return;
    };
    let text = block
        .get("cidr")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if text.is_empty() {
        causes.push(Cause::required(format!("{path}.ipBlock.cidr")));
        return;
    }
    let Some(net) = cidr(text) else {
        causes.push(Cause::invalid(
            format!("{path}.ipBlock.cidr"),
            format!("Invalid value: \"{text}\": {CIDR_MESSAGE}"),
        ));
        return;
    };
    for (k, e) in block
        .get("except")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let e = e.as_str().unwrap_or_default();
        let field = format!("{path}.ipBlock.except[{k}]");
        match cidr(e) {
            None => causes.push(Cause::invalid(
                field,
                format!("Invalid value: \"{e}\": {CIDR_MESSAGE}"),
            )),
            Some(inner) if !strict_subset(net, inner) => causes.push(Cause::invalid(
                field,
                format!("Invalid value: \"{e}\": must be a strict subset of `cidr`"),
            )),
            Some(_) => {}
        }
    }
}

fn service(spec: &Value, causes: &mut Vec<Cause>) {
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.type".into(),
            message: format!("Unsupported value: \"{kind}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        });
    }
    let ports = spec.get("ports").and_then(Value::as_array);
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if kind != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        causes.push(Cause::required("spec.ports"));
    }
    let ports = ports.cloned().unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        } else if !name.is_empty() && names.contains(&name) {
            causes.push(Cause::duplicate(format!("spec.ports[{i}].name"), name));
        }
        names.push(name);
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && np != 0
            && !(30000..=32767).contains(&np)
        {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].nodePort"),
                format!("Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            ));
        }
        protocol(p, &format!("spec.ports[{i}].protocol"), causes);
    }
    if let Some(policy) = spec.get("externalTrafficPolicy").and_then(Value::as_str)
        && !matches!(policy, "Cluster" | "Local")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: "spec.externalTrafficPolicy".into(),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Cluster\", \"Local\""
            ),
        });
    }
    let ranges = spec
        .get("loadBalancerSourceRanges")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !ranges.is_empty() && kind != "LoadBalancer" {
        causes.push(Cause::forbidden(
            "spec.loadBalancerSourceRanges",
            "Forbidden: may only be used when `type` is 'LoadBalancer'",
        ));
    }
    for (i, r) in ranges.iter().enumerate() {
        let text = r.as_str().unwrap_or_default();
        if cidr(text.trim()).is_none() {
            causes.push(Cause::invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("Invalid value: \"{text}\": must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 "),
            ));
        }
    }
}

/// What may not change on update (the `ValidateXUpdate` functions).
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    super::rbac::validate_update(kind, old, new, &mut causes);
    super::storage::validation::validate_update(kind, old, new, &mut causes);
    match kind {
        "Node" => super::pod_cidrs::validate_update(old, new, &mut causes),
        "Pod" => {
            // Only images, activeDeadlineSeconds, tolerations (additions) and the grace
            // period may change in a running pod's spec.
            let strip = |spec: &Value| {
                let mut s = spec.clone();
                for key in ["containers", "initContainers"] {
                    if let Some(list) = s.get_mut(key).and_then(Value::as_array_mut) {
                        for c in list {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("image");
                            }
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    for key in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "schedulingGates",
                    ] {
                        m.remove(key);
                    }
                }
                s
            };
            let (o, n) = (
                strip(old.get("spec").unwrap_or(&Value::Null)),
                strip(new.get("spec").unwrap_or(&Value::Null)),
            );
            if o != n {
                causes.push(Cause::forbidden(
                    "spec",
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        "StatefulSet" => {
            // Only these may change (ValidateStatefulSetUpdate).
            let strip = |o: &Value| {
                let mut spec = o.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = spec.as_object_mut() {
                    for k in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                        "revisionHistoryLimit",
                    ] {
                        m.remove(k);
                    }
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push(Cause::forbidden(
                    "spec",
                    "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        "Deployment" | "ReplicaSet" | "DaemonSet"
            if old.pointer("/spec/selector") != new.pointer("/spec/selector") =>
        {
            causes.push(Cause::invalid(
                "spec.selector",
                "Invalid value: field is immutable",
            ));
        }
        "Job" => {
            for (field, path) in [
                ("selector", "/spec/selector"),
                ("template", "/spec/template"),
                ("completions", "/spec/completions"),
                ("completionMode", "/spec/completionMode"),
                ("podFailurePolicy", "/spec/podFailurePolicy"),
                ("successPolicy", "/spec/successPolicy"),
            ] {
                let (o, n) = (old.pointer(path), new.pointer(path));
                if o != n {
                    let shown = n.map_or_else(|| "null".to_owned(), |v| v.to_string());
                    causes.push(Cause::invalid(
                        format!("spec.{field}"),
                        format!("Invalid value: {shown}: field is immutable"),
                    ));
                }
            }
        }
        "CronJob" => {
            let (o, n) = (
                old.get("spec").unwrap_or(&Value::Null),
                new.get("spec").unwrap_or(&Value::Null),
            );
            let old_schedule = o
                .get("schedule")
                .and_then(Value::as_str)
                .unwrap_or_default();
            schedule_time_zone(n, old_schedule.contains("TZ"), &mut causes);
            if o.get("timeZone") != n.get("timeZone") {
                time_zone(n, &mut causes);
            }
        }
        "Service" => {
            let old_ip = old.pointer("/spec/clusterIP");
            let new_ip = new.pointer("/spec/clusterIP");
            if new_ip.is_some() && old_ip != new_ip {
                causes.push(Cause::invalid(
                    "spec.clusterIP",
                    "Invalid value: field is immutable",
                ));
            }
        }
        "ConfigMap" | "Secret"
            if old.get("immutable") == Some(&Value::Bool(true))
                && (old.get("data") != new.get("data")
                    || old.get("binaryData") != new.get("binaryData")) =>
        {
            causes.push(Cause::forbidden(
                "data",
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
        _ => {}
    }
    causes
}

/// `pods/ephemeralcontainers` updates (ValidatePodEphemeralContainersUpdate): existing
/// ephemeral containers may be neither changed nor removed, and each one is checked as
/// upstream's validateEphemeralContainers: a name and an image, a name unique in the
/// pod, a `targetContainerName` naming one of the pod's containers, and none of the
/// fields an ephemeral container cannot have.
pub fn validate_ephemeral_update(old: &Value, new: &Value) -> Vec<Cause> {
    const PATH: &str = "spec.ephemeralContainers";
    let list = |pod: &Value| -> Vec<Value> {
        pod.pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (old_list, new_list) = (list(old), list(new));
    let mut causes = Vec::new();
    for (i, o) in old_list.iter().enumerate() {
        let name = o["name"].as_str().unwrap_or_default();
        match new_list.iter().find(|n| n["name"] == o["name"]) {
            None => causes.push(Cause::forbidden(
                PATH,
                format!("Forbidden: existing ephemeral containers \"{name}\" may not be removed\n"),
            )),
            Some(n) if n != o => causes.push(Cause::forbidden(
                format!("{PATH}[{i}]"),
                format!("Forbidden: existing ephemeral containers \"{name}\" may not be changed\n"),
            )),
            Some(_) => {}
        }
    }
    let regular: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|k| {
            new.pointer(&format!("/spec/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut names: std::collections::HashSet<&str> = regular.iter().copied().collect();
    for (i, ec) in new_list.iter().enumerate() {
        let at = format!("{PATH}[{i}]");
        match ec["name"].as_str().filter(|n| !n.is_empty()) {
            None => causes.push(Cause::required(format!("{at}.name"))),
            Some(n) if !names.insert(n) => causes.push(Cause::duplicate(format!("{at}.name"), n)),
            Some(_) => {}
        }
        if ec["image"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(format!("{at}.image")));
        }
        for field in [
            "lifecycle",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "ports",
            "resizePolicy",
            "restartPolicy",
        ] {
            if ec.get(field).is_some_and(|v| !v.is_null()) {
                causes.push(Cause::forbidden(
                    format!("{at}.{field}"),
                    "Forbidden: cannot be set for an Ephemeral Container",
                ));
            }
        }
        if ec
            .get("resources")
            .and_then(Value::as_object)
            .is_some_and(|r| {
                r.values()
                    .any(|v| v.as_object().is_none_or(|m| !m.is_empty()))
            })
        {
            causes.push(Cause::forbidden(
                format!("{at}.resources"),
                "Forbidden: cannot be set for an Ephemeral Container",
            ));
        }
        for (j, m) in ec["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if m["subPath"].as_str().is_some_and(|s| !s.is_empty()) {
                causes.push(Cause::forbidden(
                    format!("{at}.volumeMounts[{j}].subPath"),
                    "Forbidden: cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(target) = ec["targetContainerName"].as_str().filter(|t| !t.is_empty())
            && !regular.contains(&target)
        {
            causes.push(Cause {
                reason: "FieldValueNotFound",
                field: format!("{at}.targetContainerName"),
                message: format!("Not found: \"{target}\""),
            });
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_labels_and_containers() {
        let pod = json!({"metadata": {"name": "Bad_Name", "labels": {"ok": "x", "bad key!": "v"}},
            "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "i",
                "ports": [{"containerPort": 70000}]}]}});
        let causes = validate("Pod", &pod);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"metadata.name"), "{fields:?}");
        assert!(fields.contains(&"metadata.labels"));
        assert!(fields.contains(&"spec.containers[0].image"));
        assert!(fields.contains(&"spec.containers[1].name"));
        assert!(fields.contains(&"spec.containers[1].ports[0].containerPort"));
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate("Deployment", &d);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    fn cronjob(name: &str, spec: Value) -> Value {
        let mut s = json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Allow",
            "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}}}});
        if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            s.extend(extra.clone());
        }
        json!({"metadata": {"name": name}, "spec": s})
    }

    fn messages(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn cronjob_schedule_zone_limits_and_policy() {
        let ok = cronjob("ok", json!({"timeZone": "Europe/Paris"}));
        assert!(validate("CronJob", &ok).is_empty());
        assert!(validate_create("CronJob", &ok).is_empty());
        let bad = cronjob(
            "bad",
            json!({"schedule": "61 * * * *", "startingDeadlineSeconds": -1,
                "successfulJobsHistoryLimit": -2, "failedJobsHistoryLimit": -3,
                "concurrencyPolicy": "Sometimes"}),
        );
        assert_eq!(
            messages(&validate("CronJob", &bad)),
            [
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61",
                "spec.startingDeadlineSeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.successfulJobsHistoryLimit: Invalid value: -2: must be greater than or equal to 0",
                "spec.failedJobsHistoryLimit: Invalid value: -3: must be greater than or equal to 0",
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
            ]
        );
        let no_schedule = cronjob("x", json!({"schedule": ""}));
        assert_eq!(validate("CronJob", &no_schedule)[0].field, "spec.schedule");
        let tz = cronjob(
            "a-very-long-cronjob-name-that-is-more-than-fifty-two-chars",
            json!({"schedule": "CRON_TZ=UTC 0 * * * *", "timeZone": "Mars/Olympus"}),
        );
        assert!(validate("CronJob", &tz).is_empty(), "parsable as upstream");
        assert_eq!(
            messages(&validate_create("CronJob", &tz)),
            [
                "metadata.name: Invalid value: \"a-very-long-cronjob-name-that-is-more-than-fifty-two-chars\": must be no more than 52 characters",
                "spec.schedule: Invalid value: \"CRON_TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
            ]
        );
        for (zone, msg) in [
            ("", "timeZone must be nil or non-empty string"),
            (
                "Local",
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ),
            ("../etc/passwd", "unknown time zone ../etc/passwd"),
        ] {
            let cj = cronjob("z", json!({"timeZone": zone}));
            assert_eq!(
                messages(&validate_create("CronJob", &cj)),
                [format!("spec.timeZone: Invalid value: \"{zone}\": {msg}")]
            );
        }
        // An old TZ schedule may stay on update, but not gain a timeZone.
        let old = cronjob("u", json!({"schedule": "TZ=UTC 0 * * * *"}));
        assert!(validate_update("CronJob", &old, &old).is_empty());
        let both = cronjob(
            "u",
            json!({"schedule": "TZ=UTC 0 * * * *", "timeZone": "UTC"}),
        );
        assert_eq!(
            messages(&validate_update("CronJob", &old, &both)),
            [
                "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": cannot use both timeZone field and TZ or CRON_TZ in schedule"
            ]
        );
        assert_eq!(validate_update("CronJob", &ok, &old).len(), 1);
    }

    #[test]
    fn disruption_budget_spec() {
        let pdb = |spec: serde_json::Value| {
            validate(
                "PodDisruptionBudget",
                &json!({"metadata": {"name": "p"}, "spec": spec}),
            )
        };
        assert!(pdb(json!({"minAvailable": 2, "selector": {}})).is_empty());
        assert!(
            pdb(json!({"maxUnavailable": "100%", "unhealthyPodEvictionPolicy": "AlwaysAllow"}))
                .is_empty()
        );
        let both = pdb(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_eq!(both.len(), 1, "{both:?}");
        assert_eq!(both[0].field, "spec");
        assert!(
            both[0]
                .message
                .ends_with(": minAvailable and maxUnavailable cannot be both set")
        );
        let fields = |c: Vec<Cause>| c.into_iter().map(|c| c.field).collect::<Vec<_>>();
        assert_eq!(
            fields(pdb(json!({"minAvailable": -1}))),
            ["spec.minAvailable"]
        );
        assert_eq!(
            fields(pdb(json!({"maxUnavailable": "101%"}))),
            ["spec.maxUnavailable"]
        );
        assert_eq!(
            fields(pdb(json!({"maxUnavailable": "ten"}))),
            ["spec.maxUnavailable"]
        );
        let policy = pdb(json!({"unhealthyPodEvictionPolicy": "Sometimes"}));
        assert_eq!(policy[0].reason, "FieldValueNotSupported");
    }

    #[test]
    fn container_requests_stay_within_limits_as_upstream() {
        let pod = |resources: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}})
        };
        let messages = |resources: Value| -> Vec<String> {
            validate("Pod", &pod(resources))
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        assert_eq!(
            messages(json!({"requests": {"cpu": "600m"}, "limits": {"cpu": "500m"}})),
            [
                "spec.containers[0].resources.requests: Invalid value: \"600m\": must be less than or equal to cpu limit of 500m"
            ]
        );
        assert_eq!(
            messages(json!({"requests": {"example.com/dongle": "1"}})),
            [
                "spec.containers[0].resources.limits: Required value: Limit must be set for non overcommitable resources"
            ]
        );
        assert_eq!(
            messages(
                json!({"requests": {"example.com/dongle": "1"}, "limits": {"example.com/dongle": "2"}})
            ),
            [
                "spec.containers[0].resources.requests: Invalid value: \"1\": must be equal to example.com/dongle limit of 2"
            ]
        );
        assert_eq!(
            messages(json!({"requests": {"cpu": "-1"}})),
            [
                "spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
            ]
        );
        assert!(
            messages(json!({"requests": {"cpu": "100m", "memory": "1Gi"},
            "limits": {"cpu": "1", "memory": "1Gi", "example.com/dongle": "2"}}))
            .is_empty()
        );
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let old = json!({"spec": {"containers": [{"name": "c", "image": "a"}]}});
        let image = json!({"spec": {"containers": [{"name": "c", "image": "b"}]}});
        assert!(validate_update("Pod", &old, &image).is_empty());
        let port = json!({"spec": {"containers": [{"name": "c", "image": "a", "ports": [{"containerPort": 1}]}]}});
        assert_eq!(validate_update("Pod", &old, &port).len(), 1);
    }
}
