//! `meta.k8s.io/v1` Table responses (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`),
//! which `kubectl get` prints: the columns and cells Kubernetes' printers
//! (`pkg/printers/internalversion`) produce for the built-in types — `-o wide` columns
//! have `priority: 1` — and NAME/AGE (plus a CRD's additionalPrinterColumns) otherwise.

use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::registry::ResourceDef;
use super::request::Query;
use super::selectors;

pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, ptr: &str) -> Vec<&'a Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn or_none(x: String) -> String {
    if x.is_empty() { "<none>".into() } else { x }
}

/// Human age like `kubectl` (`5s`, `3m2s`, `4h`, `2d3h`).
pub fn age(timestamp: &str) -> String {
    let Ok(t) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    human((jiff::Timestamp::now().as_second() - t.as_second()).max(0))
}

/// A span of seconds as kubectl prints ages and durations.
fn human(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        0..120 => format!("{secs}s"),
        120..600 => format!("{m}m{}s", secs % 60),
        600..10800 => format!("{m}m"),
        10800..28800 => format!("{h}h{}m", m % 60),
        28800..172800 => format!("{h}h"),
        172800..691200 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn selector_string(sel: &Value) -> String {
    or_none(selectors::format_selector(sel))
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs = arr(spec, "/containers");
    (
        cs.iter()
            .map(|c| s(c, "/name"))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(c, "/image"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// kubectl's `formatHPAMetrics`: each metric's current/target, at most two, then
/// `+ N more...`.
fn hpa_metrics(hpa: &Value) -> String {
    let specs = arr(hpa, "/spec/metrics");
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = arr(hpa, "/status/currentMetrics");
    let quantity = |v: &Value, ptr: &str| match v.pointer(ptr) {
        Some(Value::String(q)) => q.clone(),
        Some(Value::Number(q)) => q.to_string(),
        _ => "0".into(),
    };
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i);
            match s(spec, "/type") {
                "Resource" | "ContainerResource" => {
                    let key = if s(spec, "/type") == "Resource" {
                        "resource"
                    } else {
                        "containerResource"
                    };
                    let name = s(spec, &format!("/{key}/name"));
                    let target = &spec[key]["target"];
                    let current_of = status.and_then(|st| st.get(key));
                    if target.get("averageValue").is_some() {
                        let current = current_of
                            .map(|c| quantity(c, "/current/averageValue"))
                            .unwrap_or_else(|| "<unknown>".into());
                        format!("{name}: {current}/{}", quantity(target, "/averageValue"))
                    } else {
                        let current = current_of
                            .and_then(|c| c.pointer("/current/averageUtilization"))
                            .and_then(Value::as_i64)
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(|| "<unknown>".into());
                        let target = target
                            .get("averageUtilization")
                            .and_then(Value::as_i64)
                            .map(|u| format!("{u}%"))
                            .unwrap_or_else(|| "<auto>".into());
                        format!("{name}: {current}/{target}")
                    }
                }
                "Pods" => {
                    let current = status
                        .and_then(|st| st.get("pods"))
                        .map(|c| quantity(c, "/current/averageValue"))
                        .unwrap_or_else(|| "<unknown>".into());
                    format!("{current}/{}", quantity(spec, "/pods/target/averageValue"))
                }
                "Object" | "External" => {
                    let key = if s(spec, "/type") == "Object" {
                        "object"
                    } else {
                        "external"
                    };
                    let target = &spec[key]["target"];
                    let (field, suffix) = if target.get("averageValue").is_some() {
                        ("averageValue", " (avg)")
                    } else {
                        ("value", "")
                    };
                    let current = status
                        .and_then(|st| st.get(key))
                        .map(|c| quantity(c, &format!("/current/{field}")))
                        .unwrap_or_else(|| "<unknown>".into());
                    format!(
                        "{current}/{}{suffix}",
                        quantity(target, &format!("/{field}"))
                    )
                }
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    if list.len() > 2 {
        format!("{} + {} more...", list[..2].join(", "), list.len() - 2)
    } else {
        list.join(", ")
    }
}

/// (name, type, priority) columns and the cells of one object, after NAME.
fn columns(def: &ResourceDef) -> Vec<(&'static str, &'static str, u8)> {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => vec![
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        ("", "Service") => vec![
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        ("apps", "Deployment") => vec![
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") | ("", "ReplicationController") => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "StatefulSet") => vec![
            ("Ready", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        ("apps", "DaemonSet") => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            ("Age", "string", 0),
        ],
        ("batch", "Job") => vec![
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("policy", "PodDisruptionBudget") => vec![
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        ("apps", "ControllerRevision") => vec![
            ("Controller", "string", 0),
            ("Revision", "integer", 0),
            ("Age", "string", 0),
        ],
        ("batch", "CronJob") => vec![
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "PersistentVolume") => vec![
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        ("", "PersistentVolumeClaim") => vec![
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Age", "string", 0),
            ("VolumeMode", "string", 1),
        ],
        ("storage.k8s.io", "CSIStorageCapacity") => {
            vec![("StorageClassName", "string", 0), ("Capacity", "string", 0)]
        }
        ("storage.k8s.io", "StorageClass") => vec![
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Namespace") => vec![("Status", "string", 0), ("Age", "string", 0)],
        ("", "Node") => vec![
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        ("", "ConfigMap") => vec![("Data", "integer", 0), ("Age", "string", 0)],
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => vec![("Webhooks", "integer", 0), ("Age", "string", 0)],
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => vec![
            ("Validations", "integer", 0),
            ("ParamKind", "string", 0),
            ("Age", "string", 0),
        ],
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => vec![
            ("PolicyName", "string", 0),
            ("ParamRef", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "Secret") => vec![
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        ("", "ServiceAccount") => vec![("Secrets", "integer", 0), ("Age", "string", 0)],
        ("", "Endpoints") => vec![("Endpoints", "string", 0), ("Age", "string", 0)],
        ("", "Event") => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        ("coordination.k8s.io", "Lease") => vec![("Holder", "string", 0), ("Age", "string", 0)],
        ("autoscaling", "HorizontalPodAutoscaler") => vec![
            ("Reference", "string", 0),
            ("Targets", "string", 0),
            ("MinPods", "string", 0),
            ("MaxPods", "integer", 0),
            ("Replicas", "string", 0),
            ("Age", "string", 0),
        ],
        ("certificates.k8s.io", "CertificateSigningRequest") => vec![
            ("Age", "string", 0),
            ("SignerName", "string", 0),
            ("Requestor", "string", 0),
            ("RequestedDuration", "string", 0),
            ("Condition", "string", 0),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![("Created At", "date", 0)]
        }
        ("apiregistration.k8s.io", "APIService") => super::aggregator::apiservice::COLUMNS.to_vec(),
        ("flowcontrol.apiserver.k8s.io", kind) => super::flowcontrol::columns(kind),
        _ => vec![("Age", "string", 0)],
    }
}

/// kubectl's `GetAccessModesAsString`: RWO, ROX, RWX, RWOP in that order.
fn access_modes(o: &Value, ptr: &str) -> String {
    let modes = arr(o, ptr);
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(m, _)| has(m))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

fn quantity(o: &Value, ptr: &str) -> String {
    match o.pointer(ptr) {
        Some(Value::String(q)) => q.clone(),
        Some(Value::Number(q)) => q.to_string(),
        _ => "0".into(),
    }
}

fn unset(v: &str) -> &str {
    if v.is_empty() { "<unset>" } else { v }
}

/// A volume's or claim's phase, `Terminating` once deleted.
fn storage_phase(o: &Value) -> &str {
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else {
        s(o, "/status/phase")
    }
}

/// The beta class annotation, else `spec.storageClassName`.
fn storage_class_of(o: &Value) -> &str {
    o.pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class")
        .and_then(Value::as_str)
        .unwrap_or_else(|| s(o, "/spec/storageClassName"))
}

/// The Name cell: a default StorageClass is `name (default)`, as kubectl prints it.
fn name_cell(def: &ResourceDef, o: &Value) -> String {
    let name = s(o, "/metadata/name");
    let default = |k: &str| {
        o.pointer("/metadata/annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            == Some("true")
    };
    if def.group == "storage.k8s.io"
        && def.kind == "StorageClass"
        && (default("storageclass.kubernetes.io/is-default-class")
            || default("storageclass.beta.kubernetes.io/is-default-class"))
    {
        format!("{name} (default)")
    } else {
        name.to_owned()
    }
}

fn cells(def: &ResourceDef, o: &Value) -> Vec<Value> {
    let created = age(s(o, "/metadata/creationTimestamp"));
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            let statuses = arr(o, "/status/containerStatuses");
            let total = arr(o, "/spec/containers").len();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count();
            let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
            let mut reason = s(o, "/status/phase").to_owned();
            if !s(o, "/status/reason").is_empty() {
                reason = s(o, "/status/reason").to_owned();
            }
            for c in &statuses {
                let waiting = s(c, "/state/waiting/reason");
                let terminated = s(c, "/state/terminated/reason");
                if !waiting.is_empty() {
                    reason = waiting.to_owned();
                } else if !terminated.is_empty() {
                    reason = terminated.to_owned();
                }
            }
            if o.pointer("/metadata/deletionTimestamp").is_some() {
                reason = "Terminating".into();
            }
            vec![
                json!(format!("{ready}/{total}")),
                json!(reason),
                json!(restarts.to_string()),
                json!(created),
                json!(or_none(s(o, "/status/podIP").into())),
                json!(or_none(s(o, "/spec/nodeName").into())),
                json!(or_none(s(o, "/status/nominatedNodeName").into())),
                json!("<none>"),
            ]
        }
        ("", "Service") => {
            let ports: Vec<String> = arr(o, "/spec/ports")
                .iter()
                .map(|p| {
                    let np = n(p, "/nodePort");
                    if np > 0 {
                        format!("{}:{np}/{}", n(p, "/port"), s(p, "/protocol"))
                    } else {
                        format!("{}/{}", n(p, "/port"), s(p, "/protocol"))
                    }
                })
                .collect();
            let external: Vec<&str> = arr(o, "/spec/externalIPs")
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            let external = if !external.is_empty() {
                external.join(",")
            } else if s(o, "/spec/type") == "LoadBalancer" {
                "<pending>".into()
            } else if s(o, "/spec/type") == "ExternalName" {
                s(o, "/spec/externalName").into()
            } else {
                "<none>".into()
            };
            let selector = o
                .pointer("/spec/selector")
                .map(selector_string)
                .unwrap_or_else(|| "<none>".into());
            vec![
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP").into())),
                json!(external),
                json!(or_none(ports.join(","))),
                json!(created),
                json!(selector),
            ]
        }
        ("apps", "Deployment") => {
            let (c, i) =
                containers_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                json!(created),
                json!(c),
                json!(i),
                json!(
                    o.pointer("/spec/selector")
                        .map(selector_string)
                        .unwrap_or_default()
                ),
            ]
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            let (c, i) =
                containers_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                json!(created),
                json!(c),
                json!(i),
                json!(
                    o.pointer("/spec/selector")
                        .map(selector_string)
                        .unwrap_or_default()
                ),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, i) =
                containers_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(created),
                json!(c),
                json!(i),
            ]
        }
        ("apps", "DaemonSet") => {
            let sel = o
                .pointer("/spec/template/spec/nodeSelector")
                .map(selectors::format_selector)
                .unwrap_or_default();
            vec![
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(or_none(sel)),
                json!(created),
            ]
        }
        ("batch", "Job") => {
            let completions = o.pointer("/spec/completions").and_then(Value::as_i64);
            let succeeded = n(o, "/status/succeeded");
            let has = |t: &str| {
                arr(o, "/status/conditions")
                    .iter()
                    .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else if has("SuccessCriteriaMet") {
                "SuccessCriteriaMet"
            } else if has("Suspended") {
                "Suspended"
            } else if has("FailureTarget") {
                "FailureTarget"
            } else {
                "Running"
            };
            let secs = |p: &str| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_second())
            };
            let duration = match (secs("/status/startTime"), secs("/status/completionTime")) {
                (Some(start), Some(end)) => human((end - start).max(0)),
                (Some(start), None) => human((jiff::Timestamp::now().as_second() - start).max(0)),
                _ => String::new(),
            };
            let (c, i) =
                containers_images(o.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                json!(status),
                json!(match completions {
                    Some(c) => format!("{succeeded}/{c}"),
                    None => format!("{succeeded}/1 of {}", n(o, "/spec/parallelism")),
                }),
                json!(duration),
                json!(created),
                json!(c),
                json!(i),
                json!(
                    o.pointer("/spec/selector")
                        .map(selector_string)
                        .unwrap_or_default()
                ),
            ]
        }
        ("policy", "PodDisruptionBudget") => {
            let shown = |p: &str| match o.pointer(p) {
                Some(Value::String(v)) => v.clone(),
                Some(Value::Number(v)) => v.to_string(),
                _ => "N/A".to_owned(),
            };
            vec![
                json!(shown("/spec/minAvailable")),
                json!(shown("/spec/maxUnavailable")),
                json!(n(o, "/status/disruptionsAllowed")),
                json!(created),
            ]
        }
        ("apps", "ControllerRevision") => {
            let owner = arr(o, "/metadata/ownerReferences")
                .iter()
                .find(|r| r.get("controller") == Some(&Value::Bool(true)))
                .map(|r| {
                    let api = s(r, "/apiVersion");
                    let group = api.split_once('/').map_or("", |(g, _)| g);
                    let kind = s(r, "/kind").to_lowercase();
                    let resource = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{resource}/{}", s(r, "/name"))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![json!(owner), json!(n(o, "/revision")), json!(created)]
        }
        ("batch", "CronJob") => vec![
            json!(s(o, "/spec/schedule")),
            json!(or_none(s(o, "/spec/timeZone").into())),
            json!(
                o.pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            ),
            json!(arr(o, "/status/active").len()),
            json!(match s(o, "/status/lastScheduleTime") {
                "" => "<none>".to_owned(),
                t => age(t),
            }),
            json!(created),
        ],
        ("", "PersistentVolume") => {
            let claim = match o.pointer("/spec/claimRef") {
                Some(r) if r.is_object() => format!("{}/{}", s(r, "/namespace"), s(r, "/name")),
                _ => String::new(),
            };
            vec![
                json!(quantity(o, "/spec/capacity/storage")),
                json!(access_modes(o, "/spec/accessModes")),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(storage_phase(o)),
                json!(claim),
                json!(storage_class_of(o)),
                json!(unset(s(o, "/spec/volumeAttributesClassName"))),
                json!(s(o, "/status/reason")),
                json!(created),
                json!(unset(s(o, "/spec/volumeMode"))),
            ]
        }
        ("", "PersistentVolumeClaim") => {
            // Capacity and access modes are the bound volume's, once there is one.
            let bound = !s(o, "/spec/volumeName").is_empty();
            vec![
                json!(storage_phase(o)),
                json!(s(o, "/spec/volumeName")),
                json!(if bound {
                    quantity(o, "/status/capacity/storage")
                } else {
                    String::new()
                }),
                json!(if bound {
                    access_modes(o, "/status/accessModes")
                } else {
                    String::new()
                }),
                json!(storage_class_of(o)),
                json!(unset(s(o, "/spec/volumeAttributesClassName"))),
                json!(created),
                json!(unset(s(o, "/spec/volumeMode"))),
            ]
        }
        ("storage.k8s.io", "CSIStorageCapacity") => vec![
            json!(s(o, "/storageClassName")),
            json!(unset(s(o, "/capacity"))),
        ],
        ("storage.k8s.io", "StorageClass") => vec![
            json!(s(o, "/provisioner")),
            json!(match s(o, "/reclaimPolicy") {
                "" => "Delete",
                p => p,
            }),
            json!(match s(o, "/volumeBindingMode") {
                "" => "Immediate",
                m => m,
            }),
            json!(
                o.get("allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
            ),
            json!(created),
        ],
        ("", "Namespace") => vec![json!(s(o, "/status/phase")), json!(created)],
        ("", "Node") => {
            let ready = arr(o, "/status/conditions")
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| {
                    if s(c, "/status") == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_owned()
            };
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .collect()
                })
                .unwrap_or_default();
            let addr = |t: &str| {
                arr(o, "/status/addresses")
                    .iter()
                    .find(|a| s(a, "/type") == t)
                    .map(|a| s(a, "/address").to_owned())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                json!(status),
                json!(or_none(roles.join(","))),
                json!(created),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(s(o, "/status/nodeInfo/osImage")),
                json!(s(o, "/status/nodeInfo/kernelVersion")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => vec![json!(arr(o, "/webhooks").len()), json!(created)],
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => {
            let kind = match o.pointer("/spec/paramKind") {
                Some(k) if !k.is_null() => format!("{}/{}", s(k, "/apiVersion"), s(k, "/kind")),
                _ => "<unset>".to_owned(),
            };
            vec![
                json!(arr(o, "/spec/validations").len()),
                json!(kind),
                json!(created),
            ]
        }
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding") => {
            // kubectl's printer: `ns/name`, `*/name` without a namespace, or the selector.
            let param = match o.pointer("/spec/paramRef") {
                Some(r) if !s(r, "/name").is_empty() => match s(r, "/namespace") {
                    "" => format!("*/{}", s(r, "/name")),
                    ns => format!("{ns}/{}", s(r, "/name")),
                },
                Some(r) if r.get("selector").is_some_and(|x| !x.is_null()) => {
                    super::selectors::format_selector(&r["selector"])
                }
                _ => "<unset>".to_owned(),
            };
            vec![
                json!(s(o, "/spec/policyName")),
                json!(param),
                json!(created),
            ]
        }
        ("", "ConfigMap") => {
            let count = ["/data", "/binaryData"]
                .iter()
                .map(|p| {
                    o.pointer(p)
                        .and_then(Value::as_object)
                        .map_or(0, |m| m.len())
                })
                .sum::<usize>();
            vec![json!(count), json!(created)]
        }
        ("", "Secret") => vec![
            json!(s(o, "/type")),
            json!(
                o.pointer("/data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            ),
            json!(created),
        ],
        ("", "ServiceAccount") => vec![json!(arr(o, "/secrets").len()), json!(created)],
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for subset in arr(o, "/subsets") {
                for a in arr(subset, "/addresses") {
                    for p in arr(subset, "/ports") {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            vec![json!(or_none(eps.join(","))), json!(created)]
        }
        ("", "Event") => {
            let last = [
                s(o, "/lastTimestamp"),
                s(o, "/eventTime"),
                s(o, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .map(age)
            .unwrap_or_default();
            vec![
                json!(last),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_lowercase(),
                    s(o, "/involvedObject/name")
                )),
                json!(s(o, "/message")),
            ]
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            // The printer works on the internal (v2-shaped) object whatever the version.
            let v2 = if s(o, "/apiVersion") == "autoscaling/v1" {
                crate::apiserver::conversion::autoscaling::v1_to_v2(o.clone())
            } else {
                o.clone()
            };
            let min = match v2.pointer("/spec/minReplicas").and_then(Value::as_i64) {
                Some(m) => m.to_string(),
                None => "<unset>".into(),
            };
            vec![
                json!(format!(
                    "{}/{}",
                    s(&v2, "/spec/scaleTargetRef/kind"),
                    s(&v2, "/spec/scaleTargetRef/name")
                )),
                json!(hpa_metrics(&v2)),
                json!(min),
                json!(n(&v2, "/spec/maxReplicas")),
                json!(n(&v2, "/status/currentReplicas")),
                json!(created),
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![json!(s(o, "/spec/holderIdentity")), json!(created)]
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            // `extractCSRStatus`: Denied over Approved over Pending, then Failed, Issued.
            let types: Vec<&str> = arr(o, "/status/conditions")
                .iter()
                .map(|c| s(c, "/type"))
                .collect();
            let mut condition = if types.contains(&"Denied") {
                "Denied".to_owned()
            } else if types.contains(&"Approved") {
                "Approved".to_owned()
            } else {
                "Pending".to_owned()
            };
            if types.contains(&"Failed") {
                condition.push_str(",Failed");
            }
            if !s(o, "/status/certificate").is_empty() {
                condition.push_str(",Issued");
            }
            let duration = o
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64)
                .map_or_else(|| "<none>".to_owned(), human);
            vec![
                json!(created),
                json!(s(o, "/spec/signerName")),
                json!(s(o, "/spec/username")),
                json!(duration),
                json!(condition),
            ]
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![json!(s(o, "/metadata/creationTimestamp"))]
        }
        ("apiregistration.k8s.io", "APIService") => {
            super::aggregator::apiservice::cells(o, created)
        }
        ("flowcontrol.apiserver.k8s.io", kind) => super::flowcontrol::cells(kind, o, created),
        _ => vec![json!(created)],
    }
}

/// A Table of `objects` (rows carry PartialObjectMetadata, as kubectl asks).
pub fn table(def: &ResourceDef, objects: &[Value], revision: Option<i64>, query: &Query) -> Value {
    let cols = columns(def);
    let custom = def
        .crd
        .as_ref()
        .map(|c| c.printer_columns.clone())
        .unwrap_or_default();
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    if custom.is_empty() {
        defs.extend(cols.iter().map(|(name, ty, prio)| json!({"name": name, "type": ty, "format": "", "description": name, "priority": prio})));
    } else {
        defs.extend(custom.iter().map(|c| json!({"name": c.name, "type": c.kind, "format": "", "description": c.name, "priority": c.priority})));
        defs.push(
            json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}),
        );
    }
    let include_object = query.get("includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = vec![json!(name_cell(def, o))];
            if custom.is_empty() {
                row.extend(cells(def, o));
            } else {
                for c in &custom {
                    let path = c.json_path.trim_start_matches('.').replace('.', "/");
                    row.push(
                        o.pointer(&format!("/{path}"))
                            .cloned()
                            .unwrap_or(Value::Null),
                    );
                }
                row.push(json!(age(s(o, "/metadata/creationTimestamp"))));
            }
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                }),
            };
            json!({"cells": row, "object": object})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = revision {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}
