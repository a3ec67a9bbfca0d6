//! Defaulting: the fields Kubernetes fills in when a client leaves them out
//! (`pkg/apis/*/v1/defaults.go`), plus the admission defaults every cluster applies
//! (the `default` ServiceAccount, DefaultTolerationSeconds), so objects read back
//! exactly as they would from a Kubernetes apiserver.

use serde_json::{Map, Value, json};

/// Sets `obj[key]` to `value` if absent or null.
fn default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let entry = map.entry(key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = value;
        }
    }
}

/// `obj[key]` as an object, created if absent.
fn object<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    let map = obj.as_object_mut()?;
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    Some(entry)
}

fn each(obj: &mut Value, key: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(items) = obj.get_mut(key).and_then(Value::as_array_mut) {
        items.iter_mut().for_each(&mut f);
    }
}

/// Applies the defaults of `kind` to `obj` (a whole object): the API's own and, for a
/// pod, the admission defaults (the `default` ServiceAccount, priority 0,
/// DefaultTolerationSeconds).
pub fn apply(kind: &str, obj: &mut Value) {
    apply_decoded(kind, obj);
    if kind == "Pod" {
        // The ServiceAccount plugin leaves a static pod's mirror without an account.
        let mirror = obj
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some();
        if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
            pod_admission(spec, mirror);
        }
    }
}

/// The API's own defaults of `kind`, what kube-apiserver applies when it decodes a
/// request, before admission: not what admission plugins set (a pod's priority, its
/// ServiceAccount, its default tolerations), which is no manager's and which the
/// Priority plugin refuses to find already set.
pub fn apply_decoded(kind: &str, obj: &mut Value) {
    if matches!(kind, "RoleBinding" | "ClusterRoleBinding") {
        super::rbac::default_subjects(obj);
    }
    if kind == "LimitRange" {
        super::limit_ranger::default_limit_range(obj);
    }
    if kind == "APIService" {
        crate::apiserver::aggregator::apiservice::defaults(obj);
    }
    if matches!(kind, "FlowSchema" | "PriorityLevelConfiguration") {
        crate::apiserver::flowcontrol::defaults(kind, obj);
    }
    if super::webhook::validation::is_config_kind(kind) {
        super::webhook::validation::apply_defaults(kind, obj);
    }
    if super::policy::is_policy_kind(kind) {
        super::policy::apply_defaults(kind, obj);
    }
    fields(kind, obj);
    always_written(kind, obj);
}

/// The fields kube-apiserver always writes because their Go type cannot be omitted:
/// a non-pointer struct (`encoding/json`'s `omitempty` never omits a struct, so
/// `ServiceStatus.LoadBalancer` is `{}`) or a scalar without `omitempty`
/// (`ReplicaSetStatus.Replicas`). From k8s.io/api `core/v1`, `apps/v1`, `batch/v1`,
/// `networking/v1` `types.go`.
fn always_written(kind: &str, obj: &mut Value) {
    let zeros = |obj: &mut Value, names: &[&str]| {
        if let Some(status) = object(obj, "status") {
            for n in names {
                default(status, n, json!(0));
            }
        }
    };
    match kind {
        // ServiceStatus.LoadBalancer, IngressStatus.LoadBalancer: structs.
        "Service" | "Ingress" => {
            if let Some(status) = object(obj, "status") {
                object(status, "loadBalancer");
            }
        }
        // Status structs whose fields are all omitempty: `status: {}`.
        "Deployment" | "Job" | "CronJob" | "Pod" => {
            object(obj, "status");
        }
        "ReplicaSet" | "ReplicationController" => zeros(obj, &["replicas"]),
        "StatefulSet" => zeros(obj, &["replicas", "availableReplicas"]),
        "DaemonSet" => zeros(
            obj,
            &[
                "currentNumberScheduled",
                "numberMisscheduled",
                "desiredNumberScheduled",
                "numberReady",
            ],
        ),
        // PersistentVolumeClaimSpec.Resources: a struct.
        "PersistentVolumeClaim" => {
            if let Some(spec) = object(obj, "spec") {
                object(spec, "resources");
            }
        }
        "Node" => {
            object(obj, "spec");
            super::pod_cidrs::default(obj);
            if let Some(status) = object(obj, "status") {
                // NodeDaemonEndpoints.KubeletEndpoint and DaemonEndpoint.Port (`json:"Port"`).
                if let Some(endpoints) = object(status, "daemonEndpoints")
                    && let Some(kubelet) = object(endpoints, "kubeletEndpoint")
                {
                    default(kubelet, "Port", json!(0));
                }
                // NodeSystemInfo: strings without omitempty.
                if let Some(info) = object(status, "nodeInfo") {
                    for n in [
                        "machineID",
                        "systemUUID",
                        "bootID",
                        "kernelVersion",
                        "osImage",
                        "containerRuntimeVersion",
                        "kubeletVersion",
                        "kubeProxyVersion",
                        "operatingSystem",
                        "architecture",
                    ] {
                        default(info, n, json!(""));
                    }
                }
            }
        }
        _ => {}
    }
}

/// The `pkg/apis/*/v1/defaults.go` defaults of `kind`.
fn fields(kind: &str, obj: &mut Value) {
    match kind {
        "HorizontalPodAutoscaler" => super::autoscaling::defaults(obj),
        "CustomResourceDefinition" => super::webhook::validation::default_crd_conversion(obj),
        // stringData is write-only: merged into data (base64), as kube-apiserver does.
        "Secret" => {
            if let Some(Value::Object(strings)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                use base64::Engine;
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in strings {
                    let text = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
            if obj.get("type") == Some(&json!("")) {
                obj["type"] = json!("Opaque");
            }
            default(obj, "type", json!("Opaque"));
        }
        "Pod" => {
            if let Some(spec) = object(obj, "spec") {
                pod_spec(spec);
            }
            let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
            if let Some(status) = object(obj, "status") {
                default(status, "phase", json!("Pending"));
                default(status, "qosClass", json!(qos));
            }
        }
        "PodTemplate" => template(obj.get_mut("template")),
        "ReplicationController" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "minReadySeconds", json!(0));
                let labels = spec
                    .pointer("/template/metadata/labels")
                    .cloned()
                    .unwrap_or(Value::Null);
                if labels.is_object() {
                    default(spec, "selector", labels);
                }
                template(spec.get_mut("template"));
            }
        }
        "Deployment" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "revisionHistoryLimit", json!(10));
                default(spec, "progressDeadlineSeconds", json!(600));
                if let Some(strategy) = object(spec, "strategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type") == Some(&json!("RollingUpdate"))
                        && let Some(ru) = object(strategy, "rollingUpdate")
                    {
                        default(ru, "maxUnavailable", json!("25%"));
                        default(ru, "maxSurge", json!("25%"));
                    }
                }
                template(spec.get_mut("template"));
            }
        }
        "ReplicaSet" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "replicas", json!(1));
                template(spec.get_mut("template"));
            }
        }
        "StatefulSet" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "replicas", json!(1));
                default(spec, "podManagementPolicy", json!("OrderedReady"));
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = object(spec, "updateStrategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type") == Some(&json!("RollingUpdate"))
                        && let Some(ru) = object(strategy, "rollingUpdate")
                    {
                        default(ru, "partition", json!(0));
                    }
                }
                if let Some(policy) = object(spec, "persistentVolumeClaimRetentionPolicy") {
                    default(policy, "whenDeleted", json!("Retain"));
                    default(policy, "whenScaled", json!("Retain"));
                }
                template(spec.get_mut("template"));
            }
        }
        "DaemonSet" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "revisionHistoryLimit", json!(10));
                if let Some(strategy) = object(spec, "updateStrategy") {
                    default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type") == Some(&json!("RollingUpdate"))
                        && let Some(ru) = object(strategy, "rollingUpdate")
                    {
                        default(ru, "maxUnavailable", json!(1));
                        default(ru, "maxSurge", json!(0));
                    }
                }
                template(spec.get_mut("template"));
            }
        }
        "Job" => {
            let uid = obj
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(spec) = object(obj, "spec") {
                job_spec(spec);
                if let Some(uid) = uid {
                    job_selector(spec, &uid, &name);
                }
            }
        }
        "CronJob" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "concurrencyPolicy", json!("Allow"));
                default(spec, "suspend", json!(false));
                default(spec, "successfulJobsHistoryLimit", json!(3));
                default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(jt) = object(spec, "jobTemplate")
                    && let Some(js) = object(jt, "spec")
                {
                    job_spec(js);
                }
            }
        }
        "Service" => {
            if let Some(spec) = object(obj, "spec") {
                service_spec(spec);
            }
        }
        "Namespace" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = object(obj, "status") {
                default(status, "phase", json!("Active"));
            }
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(meta) = object(obj, "metadata")
                && let Some(labels) = object(meta, "labels")
            {
                default(labels, "kubernetes.io/metadata.name", json!(name));
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = object(obj, "status") {
                default(status, "phase", json!("Pending"));
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = object(obj, "spec") {
                default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                default(spec, "volumeMode", json!("Filesystem"));
            }
            if let Some(status) = object(obj, "status") {
                default(status, "phase", json!("Pending"));
            }
        }
        "EndpointSlice" => each(obj, "ports", |p| default(p, "protocol", json!("TCP"))),
        "PriorityClass" => default(obj, "preemptionPolicy", json!("PreemptLowerPriority")),
        "StorageClass" => {
            default(obj, "reclaimPolicy", json!("Delete"));
            default(obj, "volumeBindingMode", json!("Immediate"));
        }
        "NetworkPolicy" => {
            if let Some(spec) = object(obj, "spec") {
                let egress = spec.get("egress").is_some_and(|e| !e.is_null());
                let types = if egress {
                    json!(["Ingress", "Egress"])
                } else {
                    json!(["Ingress"])
                };
                default(spec, "policyTypes", types);
                for dir in ["ingress", "egress"] {
                    each(spec, dir, |rule| {
                        each(rule, "ports", |p| default(p, "protocol", json!("TCP")));
                    });
                }
            }
        }
        _ => {}
    }
}

fn template(template: Option<&mut Value>) {
    if let Some(t) = template
        && let Some(spec) = object(t, "spec")
    {
        pod_spec(spec);
    }
}

fn job_spec(spec: &mut Value) {
    let completions_unset = spec.get("completions").is_none_or(Value::is_null);
    let parallelism_unset = spec.get("parallelism").is_none_or(Value::is_null);
    if completions_unset && parallelism_unset {
        default(spec, "completions", json!(1));
    }
    default(spec, "parallelism", json!(1));
    // With a per-index limit the Job-wide one is off (math.MaxInt32), as upstream.
    let backoff = if spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null())
    {
        i64::from(i32::MAX)
    } else {
        6
    };
    default(spec, "backoffLimit", json!(backoff));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default(spec, "podReplacementPolicy", json!(replacement));
    template(spec.get_mut("template"));
}

/// The selector the apiserver generates for a Job without `manualSelector`: its uid,
/// as a label on the pod template (with the Job's name) and in `matchLabels`.
fn job_selector(spec: &mut Value, uid: &str, name: &str) {
    if spec.get("manualSelector") == Some(&json!(true))
        || spec.get("selector").is_some_and(|s| !s.is_null())
    {
        return;
    }
    if let Some(template) = object(spec, "template")
        && let Some(meta) = object(template, "metadata")
        && let Some(labels) = object(meta, "labels")
    {
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", uid),
            ("batch.kubernetes.io/job-name", name),
            ("controller-uid", uid),
            ("job-name", name),
        ] {
            default(labels, k, json!(v));
        }
    }
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
}

fn service_spec(spec: &mut Value) {
    default(spec, "type", json!("ClusterIP"));
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if kind == "ExternalName" {
        return;
    }
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    default(spec, "ipFamilies", json!(["IPv4"]));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    if kind == "NodePort" || kind == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    each(spec, "ports", |p| {
        default(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            default(p, "targetPort", port);
        }
    });
    if spec.get("sessionAffinity") == Some(&json!("ClientIP"))
        && let Some(cfg) = object(spec, "sessionAffinityConfig")
        && let Some(ip) = object(cfg, "clientIP")
    {
        default(ip, "timeoutSeconds", json!(10800));
    }
}

/// `SetDefaults_PodSpec` and the container, probe and volume defaults under it.
pub fn pod_spec(spec: &mut Value) {
    service_account_alias(spec);
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for key in ["containers", "initContainers"] {
        each(spec, key, container);
    }
    each(spec, "volumes", |v| {
        for (source, mode_key) in [("configMap", "defaultMode"), ("secret", "defaultMode")] {
            if let Some(src) = v.get_mut(source) {
                default(src, mode_key, json!(420));
            }
        }
        if let Some(src) = v.get_mut("projected") {
            default(src, "defaultMode", json!(420));
        }
        if let Some(src) = v.get_mut("downwardAPI") {
            default(src, "defaultMode", json!(420));
        }
        if let Some(src) = v.get_mut("hostPath") {
            default(src, "type", json!(""));
        }
        let has_source = v.as_object().is_some_and(|m| m.keys().any(|k| k != "name"));
        if !has_source {
            default(v, "emptyDir", json!({}));
        }
    });
}

/// v1's `serviceAccount` is an alias of `serviceAccountName`, as the v1 conversion
/// makes it: the name wins, the alias names the account when the name is empty, and
/// the alias always reads back as the name. Part of decoding, so a client that sets
/// either owns both.
fn service_account_alias(spec: &mut Value) {
    let named = |key: &str| {
        spec.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(name) = named("serviceAccountName").or_else(|| named("serviceAccount"))
        && let Some(map) = spec.as_object_mut()
    {
        map.insert("serviceAccountName".into(), json!(name));
        map.insert("serviceAccount".into(), json!(name));
    }
}

/// Admission defaults for a pod being created (not for templates); a `mirror` pod
/// gets no account.
fn pod_admission(spec: &mut Value, mirror: bool) {
    if !mirror {
        default(spec, "serviceAccountName", json!("default"));
        let sa = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(Value::Null);
        default(spec, "serviceAccount", sa);
    }
    default(spec, "priority", json!(0));
    // DefaultTolerationSeconds: tolerate not-ready / unreachable nodes for 300 s.
    let tolerations = spec
        .as_object_mut()
        .map(|m| m.entry("tolerations").or_insert_with(|| json!([])));
    if let Some(Value::Array(list)) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = list.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    || (t.get("key").is_none() && t.get("operator") == Some(&json!("Exists")))
            });
            if !present {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

fn container(c: &mut Value) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = if image_tag_is_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    default(c, "imagePullPolicy", json!(policy));
    default(c, "resources", json!({}));
    // Requests default to limits.
    if let Some(limits) = c.pointer("/resources/limits").cloned()
        && let Some(res) = c.get_mut("resources")
        && let Some(requests) = object(res, "requests")
        && let (Some(req), Some(lim)) = (requests.as_object_mut(), limits.as_object())
    {
        for (k, v) in lim {
            req.entry(k.clone()).or_insert(v.clone());
        }
    }
    each(c, "ports", |p| default(p, "protocol", json!("TCP")));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe) {
            default(p, "timeoutSeconds", json!(1));
            default(p, "periodSeconds", json!(10));
            default(p, "successThreshold", json!(1));
            default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet") {
                default(h, "scheme", json!("HTTP"));
                default(h, "path", json!("/"));
            }
        }
    }
    each(c, "env", |e| {
        if let Some(fr) = e.pointer_mut("/valueFrom/fieldRef") {
            default(fr, "apiVersion", json!("v1"));
        }
    });
}

/// `:latest` or no tag (and no digest) means `imagePullPolicy: Always`.
fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// The pod's QoS class (`pkg/apis/core/v1/helper/qos`).
pub fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = ["containers", "initContainers"].into_iter().flat_map(|k| {
        spec.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    });
    for c in containers {
        let requests = c.pointer("/resources/requests").and_then(Value::as_object);
        let limits = c.pointer("/resources/limits").and_then(Value::as_object);
        for res in ["cpu", "memory"] {
            let req = requests.and_then(|r| r.get(res));
            let lim = limits.and_then(|l| l.get(res));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_kubernetes_defaults() {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "readinessProbe": {"httpGet": {"port": 80}}}]}});
        apply("Pod", &mut pod);
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["serviceAccountName"], "default");
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        assert_eq!(c["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
    }

    /// What decoding sets and what only admission sets: a pod's account name and its
    /// v1 alias are decoded together; the `default` account, priority and default
    /// tolerations come with [`apply`] only.
    #[test]
    fn the_account_alias_is_decoded_and_admission_defaults_are_not() {
        let pod = |spec: Value| json!({"kind": "Pod", "spec": spec});
        for (sent, name) in [
            (json!({"serviceAccountName": "a"}), "a"),
            (json!({"serviceAccount": "b"}), "b"),
            (
                json!({"serviceAccountName": "a", "serviceAccount": "b"}),
                "a",
            ),
        ] {
            let mut p = pod(sent.clone());
            apply_decoded("Pod", &mut p);
            assert_eq!(p["spec"]["serviceAccountName"], name, "{sent}");
            assert_eq!(p["spec"]["serviceAccount"], name, "{sent}");
        }
        let mut p = pod(json!({"containers": []}));
        apply_decoded("Pod", &mut p);
        for admitted in [
            "serviceAccountName",
            "serviceAccount",
            "priority",
            "tolerations",
        ] {
            assert!(p["spec"].get(admitted).is_none(), "{admitted}: {p}");
        }
        apply("Pod", &mut p);
        assert_eq!(p["spec"]["serviceAccount"], "default", "{p}");
        assert_eq!(p["spec"]["priority"], 0, "{p}");
    }

    #[test]
    fn structs_go_always_writes_are_present() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply("Service", &mut svc);
        assert_eq!(svc["status"], json!({"loadBalancer": {}}), "{svc}");
        let mut rs = json!({"spec": {}});
        apply("ReplicaSet", &mut rs);
        assert_eq!(rs["status"], json!({"replicas": 0}), "{rs}");
        let mut ds = json!({"spec": {}, "status": {"numberReady": 2}});
        apply("DaemonSet", &mut ds);
        assert_eq!(ds["status"]["numberReady"], 2, "{ds}");
        assert_eq!(ds["status"]["numberMisscheduled"], 0, "{ds}");
        let mut deploy = json!({"spec": {}});
        apply("Deployment", &mut deploy);
        assert_eq!(deploy["status"], json!({}), "{deploy}");
        let mut node = json!({"status": {"nodeInfo": {"kubeletVersion": "v1.34.0"}}});
        apply("Node", &mut node);
        assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.34.0");
        assert_eq!(node["status"]["nodeInfo"]["bootID"], "");
        assert_eq!(
            node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
            0
        );
        let mut ing =
            json!({"spec": {}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        apply("Ingress", &mut ing);
        assert_eq!(ing["status"]["loadBalancer"]["ingress"][0]["ip"], "1.2.3.4");
    }

    #[test]
    fn image_pull_policy_follows_the_tag() {
        assert!(image_tag_is_latest("nginx"));
        assert!(image_tag_is_latest("registry:5000/nginx"));
        assert!(image_tag_is_latest("nginx:latest"));
        assert!(!image_tag_is_latest("nginx:1.27"));
        assert!(!image_tag_is_latest("registry:5000/nginx:1"));
        assert!(!image_tag_is_latest("nginx@sha256:abcd"));
    }

    #[test]
    fn qos_classes() {
        let best = json!({"containers": [{"name": "a"}]});
        assert_eq!(qos_class(&best), "BestEffort");
        let burst = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&burst), "Burstable");
    }
}
