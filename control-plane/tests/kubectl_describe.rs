//! `kubectl describe` of every kind berth serves, with the real kubectl: one object of
//! each kind, an event recorded about each, and `describe <kind>/<name>` must show the
//! object and — wherever kubectl's describer has an `Events:` section — that event
//! (kubectl finds it with `involvedObject.{name,namespace,kind,uid}` field selectors,
//! so this checks the server's event search for every kind). A kind berth serves with
//! no case here fails the test.

use std::collections::BTreeSet;

use berth_testkit::BerthServer;
use serde_json::{Value, json};

const NS: &str = "desc";
const REASON: &str = "BerthDescribeCheck";

/// One object per kind: (resource as `kubectl api-resources -o name` prints it, the
/// object's name, whether it is namespaced, the manifest).
/// A PEM certificate request (base64, as `spec.request` carries it).
fn csr_request() -> String {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "describe");
    let pem = params
        .serialize_request(&key)
        .expect("a request")
        .pem()
        .expect("PEM");
    base64::engine::general_purpose::STANDARD.encode(pem)
}

fn objects() -> Vec<(&'static str, &'static str, bool, Value)> {
    let labels = json!({"app": "d"});
    let pod_spec = json!({"containers": [{"name": "c", "image": "busybox:1.36"}]});
    let template = json!({"metadata": {"labels": labels}, "spec": pod_spec});
    let selector = json!({"matchLabels": labels});
    let meta = |name: &str| json!({"name": name, "namespace": NS, "labels": {"app": "d"}});
    let cluster = |name: &str| json!({"name": name});
    vec![
        (
            "pods",
            "p",
            true,
            // Not labelled app=d: the controllers (scaled to 0) would adopt and delete it.
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS}, "spec": pod_spec}),
        ),
        (
            "podtemplates",
            "pt",
            true,
            json!({"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta("pt"), "template": template}),
        ),
        (
            "replicationcontrollers",
            "rc",
            true,
            json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": meta("rc"), "spec": {"replicas": 0, "selector": labels, "template": template}}),
        ),
        (
            "services",
            "svc",
            true,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("svc"), "spec": {"selector": labels, "ports": [{"port": 80}]}}),
        ),
        (
            "endpoints",
            "ep",
            true,
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": meta("ep"), "subsets": [{"addresses": [{"ip": "10.1.2.3"}], "ports": [{"port": 80}]}]}),
        ),
        (
            "namespaces",
            NS,
            false,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": cluster(NS)}),
        ),
        (
            "nodes",
            "n1",
            false,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": cluster("n1")}),
        ),
        (
            "configmaps",
            "cm",
            true,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cm"), "data": {"a": "b"}}),
        ),
        (
            "secrets",
            "s",
            true,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("s"), "stringData": {"k": "v"}}),
        ),
        (
            "serviceaccounts",
            "sa",
            true,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("sa")}),
        ),
        (
            "events",
            "ev",
            true,
            json!({"apiVersion": "v1", "kind": "Event", "metadata": meta("ev"), "involvedObject": {"kind": "Pod", "name": "p", "namespace": NS}, "reason": "Other", "message": "m", "type": "Normal"}),
        ),
        (
            "persistentvolumes",
            "pv",
            false,
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": cluster("pv"), "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/tmp/pv"}}}),
        ),
        (
            "persistentvolumeclaims",
            "pvc",
            true,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("pvc"), "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        (
            "resourcequotas",
            "q",
            true,
            json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta("q"), "spec": {"hard": {"pods": "10"}}}),
        ),
        (
            "limitranges",
            "lr",
            true,
            json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta("lr"), "spec": {"limits": [{"type": "Container", "default": {"cpu": "100m"}}]}}),
        ),
        (
            "deployments.apps",
            "dep",
            true,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("dep"), "spec": {"replicas": 0, "selector": selector, "template": template}}),
        ),
        (
            "replicasets.apps",
            "rs",
            true,
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta("rs"), "spec": {"replicas": 0, "selector": selector, "template": template}}),
        ),
        (
            "statefulsets.apps",
            "sts",
            true,
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta("sts"), "spec": {"replicas": 0, "serviceName": "svc", "selector": selector, "template": template}}),
        ),
        (
            "daemonsets.apps",
            "ds",
            true,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("ds"), "spec": {"selector": selector, "template": template}}),
        ),
        (
            "controllerrevisions.apps",
            "cr",
            true,
            json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": meta("cr"), "revision": 1, "data": {"spec": {}}}),
        ),
        (
            "jobs.batch",
            "job",
            true,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("job"), "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}),
        ),
        (
            "cronjobs.batch",
            "cj",
            true,
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta("cj"), "spec": {"schedule": "0 0 1 1 *", "suspend": true, "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}}),
        ),
        (
            "endpointslices.discovery.k8s.io",
            "eps",
            true,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta("eps"), "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"]}], "ports": [{"port": 80}]}),
        ),
        (
            "leases.coordination.k8s.io",
            "lease",
            true,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta("lease"), "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}),
        ),
        (
            "roles.rbac.authorization.k8s.io",
            "role",
            true,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("role"), "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
        ),
        (
            "clusterroles.rbac.authorization.k8s.io",
            "crole",
            false,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": cluster("crole"), "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}),
        ),
        (
            "rolebindings.rbac.authorization.k8s.io",
            "rb",
            true,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("rb"), "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "role"}, "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
        ),
        (
            "clusterrolebindings.rbac.authorization.k8s.io",
            "crb",
            false,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": cluster("crb"), "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "crole"}, "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]}),
        ),
        (
            "certificatesigningrequests.certificates.k8s.io",
            "csr",
            false,
            json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": cluster("csr"), "spec": {"request": csr_request(), "signerName": "example.com/describe", "usages": ["client auth"]}}),
        ),
        (
            "networkpolicies.networking.k8s.io",
            "np",
            true,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("np"), "spec": {"podSelector": selector, "policyTypes": ["Ingress"]}}),
        ),
        (
            "ingresses.networking.k8s.io",
            "ing",
            true,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("ing"), "spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]}}),
        ),
        (
            "ingressclasses.networking.k8s.io",
            "ic",
            false,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": cluster("ic"), "spec": {"controller": "example.com/ingress"}}),
        ),
        (
            "storageclasses.storage.k8s.io",
            "sc",
            false,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": cluster("sc"), "provisioner": "example.com/csi"}),
        ),
        (
            "csidrivers.storage.k8s.io",
            "csi.example.com",
            false,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": cluster("csi.example.com"), "spec": {}}),
        ),
        (
            "csinodes.storage.k8s.io",
            "n1",
            false,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": cluster("n1"), "spec": {"drivers": [{"name": "csi.example.com", "nodeID": "n1"}]}}),
        ),
        (
            "csistoragecapacities.storage.k8s.io",
            "cap",
            true,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity", "metadata": meta("cap"), "storageClassName": "local", "capacity": "10Gi", "nodeTopology": {"matchLabels": {"topology.berth.io/node": "n1"}}}),
        ),
        (
            "volumeattachments.storage.k8s.io",
            "va",
            false,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": cluster("va"), "spec": {"attacher": "csi.example.com", "nodeName": "n1", "source": {"persistentVolumeName": "pv"}}}),
        ),
        (
            "priorityclasses.scheduling.k8s.io",
            "prio",
            false,
            json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": cluster("prio"), "value": 100, "description": "d"}),
        ),
        (
            "poddisruptionbudgets.policy",
            "pdb",
            true,
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("pdb"), "spec": {"minAvailable": 1, "selector": selector}}),
        ),
        (
            "events.events.k8s.io",
            "ev2",
            true,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": meta("ev2"), "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "example.com/c", "reportingInstance": "i", "action": "Check", "reason": "Other", "regarding": {"kind": "Pod", "name": "p", "namespace": NS}, "type": "Normal"}),
        ),
        (
            "horizontalpodautoscalers.autoscaling",
            "hpa",
            true,
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta("hpa"), "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dep"}, "minReplicas": 1, "maxReplicas": 3, "metrics": [{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}}]}}),
        ),
        (
            "customresourcedefinitions.apiextensions.k8s.io",
            "widgets.example.com",
            false,
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": cluster("widgets.example.com"), "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"}, "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
        ),
        // Admission and aggregation objects for a group nothing serves, so they touch
        // none of the other creates.
        (
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            "mwc",
            false,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": cluster("mwc"), "webhooks": [{"name": "m.d.example.org", "clientConfig": {"url": "https://127.0.0.1:1/m"}, "rules": [{"operations": ["CREATE"], "apiGroups": ["d.example.org"], "apiVersions": ["v1"], "resources": ["things"]}], "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore"}]}),
        ),
        (
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            "vwc",
            false,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": cluster("vwc"), "webhooks": [{"name": "v.d.example.org", "clientConfig": {"url": "https://127.0.0.1:1/v"}, "rules": [{"operations": ["CREATE"], "apiGroups": ["d.example.org"], "apiVersions": ["v1"], "resources": ["things"]}], "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore"}]}),
        ),
        (
            "validatingadmissionpolicies.admissionregistration.k8s.io",
            "vap",
            false,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": cluster("vap"), "spec": {"matchConstraints": {"resourceRules": [{"operations": ["CREATE"], "apiGroups": ["d.example.org"], "apiVersions": ["v1"], "resources": ["things"]}]}, "validations": [{"expression": "true"}]}}),
        ),
        (
            "validatingadmissionpolicybindings.admissionregistration.k8s.io",
            "vapb",
            false,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": cluster("vapb"), "spec": {"policyName": "vap", "validationActions": ["Deny"]}}),
        ),
        (
            "apiservices.apiregistration.k8s.io",
            "v1.d.example.org",
            false,
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": cluster("v1.d.example.org"), "spec": {"group": "d.example.org", "version": "v1", "groupPriorityMinimum": 100, "versionPriority": 10}}),
        ),
        (
            "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io",
            "plc",
            false,
            json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration", "metadata": cluster("plc"), "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 5, "limitResponse": {"type": "Reject"}}}}),
        ),
        (
            "flowschemas.flowcontrol.apiserver.k8s.io",
            "fs",
            false,
            json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": cluster("fs"), "spec": {"priorityLevelConfiguration": {"name": "plc"}, "matchingPrecedence": 1000, "rules": [{"subjects": [{"kind": "Group", "group": {"name": "system:authenticated"}}], "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "namespaces": ["*"]}]}]}}),
        ),
    ]
}

/// Resources kubectl lists that are not stored objects one can describe (the metrics
/// server's are read-only readings, as with metrics-server).
const NOT_DESCRIBABLE: &[&str] = &[
    "bindings",
    "componentstatuses",
    "tokenreviews",
    "nodes.metrics.k8s.io",
    "pods.metrics.k8s.io",
];

#[test]
fn describe_shows_every_kind_and_its_events() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = berth_testkit::Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let cases = objects();

    // Every kind berth serves has a case.
    let served: BTreeSet<String> = k
        .ok(&["api-resources", "--verbs=get", "-o", "name"])
        .lines()
        .map(str::to_owned)
        .filter(|r| !NOT_DESCRIBABLE.contains(&r.as_str()))
        .filter(|r| !r.ends_with(".example.com"))
        .collect();
    let covered: BTreeSet<String> = cases.iter().map(|(r, ..)| (*r).to_owned()).collect();
    let missing: Vec<&String> = served.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "kinds berth serves with no describe case: {missing:?}"
    );

    // The namespace first, then everything else (the CRD's Widget after it).
    let (ns, rest): (Vec<_>, Vec<_>) = cases.iter().partition(|(r, ..)| *r == "namespaces");
    for (_, _, _, manifest) in ns.iter().chain(rest.iter()) {
        k.apply(&manifest.to_string());
    }
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": NS}, "spec": {"size": 3}});
    let mut widget_applied = false;
    for _ in 0..50 {
        if k.cmd(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(widget.to_string().as_bytes())?;
                c.wait()
            })
            .is_ok_and(|s| s.success())
        {
            widget_applied = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(widget_applied, "the Widget custom resource was not created");

    // One event about each object (and the custom resource), as a controller would
    // record it: involvedObject names the object by kind, name, namespace and uid.
    let mut all: Vec<(String, String, bool)> = cases
        .iter()
        .map(|(r, n, namespaced, _)| ((*r).to_owned(), (*n).to_owned(), *namespaced))
        .collect();
    all.push(("widgets.example.com".into(), "w".into(), true));
    for (i, (resource, name, namespaced)) in all.iter().enumerate() {
        let mut get = vec!["get", resource.as_str(), name.as_str()];
        if *namespaced {
            get.extend(["-n", NS]);
        }
        let obj = k.json(&get);
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("check-{i}"), "namespace": if *namespaced { NS } else { "default" }},
            "involvedObject": {
                "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": name,
                "namespace": if *namespaced { NS } else { "" }, "uid": obj["metadata"]["uid"],
            },
            "reason": REASON, "message": format!("checked {resource}"), "type": "Normal",
            "source": {"component": "describe-test"},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 1,
        });
        k.apply(&event.to_string());
    }

    let mut failures = Vec::new();
    let mut with_events = 0;
    for (resource, name, namespaced) in &all {
        let object = format!("{resource}/{name}");
        let mut args = vec!["describe", object.as_str()];
        if *namespaced {
            args.extend(["-n", NS]);
        }
        let out = k.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            failures.push(format!(
                "{object}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            continue;
        }
        if !text
            .lines()
            .any(|l| l.starts_with("Name:") && l.ends_with(name.as_str()))
        {
            failures.push(format!("{object}: no `Name: {name}` line:\n{text}"));
        }
        // Where kubectl's describer has an Events section, it must find the event.
        if text.contains("\nEvents:") {
            with_events += 1;
            if !text.contains(REASON) {
                failures.push(format!("{object}: Events without {REASON}:\n{text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // kubectl's generic describer (Lease, ControllerRevision, CSIDriver, the custom
    // resource, …) and most typed ones show events: far more than half the kinds.
    assert!(
        with_events > all.len() / 2,
        "only {with_events} of {} describes showed an Events section",
        all.len()
    );
}
