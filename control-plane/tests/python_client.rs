//! The official Python `kubernetes` client (pinned, from `cargo xtask setup`) against a
//! berth-server started by the test: CRUD, list pagination, a watch resumed from a
//! resourceVersion, the error codes clients branch on (409, 422, 404, 403, 413, 400), a
//! typed Service read and delete (`status.loadBalancer`, the deleted object as answer),
//! and HorizontalPodAutoscalers through `AutoscalingV1Api` and `AutoscalingV2Api`.

use std::process::Command;

use berth_testkit::{BerthServer, skip, tools::venv};

const SCRIPT: &str = r#"
import json, sys, urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config()
v1 = client.CoreV1Api()
ns = "default"

def status_of(call):
    try:
        call()
    except ApiException as e:
        return e.status
    return 200

# CRUD
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"app": "py"}), data={"k": "v"})
created = v1.create_namespaced_config_map(ns, cm)
assert created.metadata.uid and created.metadata.resource_version, created.metadata
got = v1.read_namespaced_config_map("py", ns)
assert got.data == {"k": "v"}
got.data["k"] = "v2"
updated = v1.replace_namespaced_config_map("py", ns, got)
assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
patched = v1.patch_namespaced_config_map("py", ns, {"data": {"extra": "1"}})
assert patched.data == {"k": "v2", "extra": "1"}, patched.data

# 409 on a stale resourceVersion, 404, 422
got.data["k"] = "stale"
assert status_of(lambda: v1.replace_namespaced_config_map("py", ns, got)) == 409
assert status_of(lambda: v1.read_namespaced_config_map("nope", ns)) == 404
bad = client.V1Pod(metadata=client.V1ObjectMeta(name="bad"), spec=client.V1PodSpec(containers=[client.V1Container(name="c")]))
try:
    v1.create_namespaced_pod(ns, bad)
    raise SystemExit("an image-less pod was accepted")
except ApiException as e:
    assert e.status == 422, e.status
    body = json.loads(e.body)
    assert body["reason"] == "Invalid"
    assert any(c["field"] == "spec.containers[0].image" for c in body["details"]["causes"]), body

# Pagination
for i in range(25):
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i:02d}", labels={"page": "yes"})))
names, token, pages = [], None, 0
while True:
    page = v1.list_namespaced_config_map(ns, label_selector="page=yes", limit=10, _continue=token)
    pages += 1
    names += [i.metadata.name for i in page.items]
    token = page.metadata._continue
    if not token:
        break
assert pages == 3 and names == [f"page-{i:02d}" for i in range(25)], (pages, names)

# Watch resumed from a resourceVersion: only what happened after it.
rv = v1.list_namespaced_config_map(ns).metadata.resource_version
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after-1")))
v1.delete_namespaced_config_map("page-00", ns)
events = []
for ev in watch.Watch().stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=2):
    events.append((ev["type"], ev["object"].metadata.name))
assert events == [("ADDED", "after-1"), ("DELETED", "page-00")], events

# Raw HTTP: a request without credentials is the anonymous user, whom RBAC lets read
# only the public paths (403 elsewhere, as kube-apiserver with --anonymous-auth);
# 413 for a huge body, 400 for malformed JSON.
cfg = client.Configuration.get_default_copy()
host = cfg.host
anon = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=cfg.ssl_ca_cert)
r = anon.request("GET", host + "/api/v1/namespaces")
assert r.status == 403, r.status
assert json.loads(r.data)["message"] == 'namespaces is forbidden: User "system:anonymous" cannot list resource "namespaces" in API group "" at the cluster scope', r.data
assert anon.request("GET", host + "/healthz").status == 200
auth = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=cfg.ssl_ca_cert, cert_file=cfg.cert_file, key_file=cfg.key_file)
url = host + "/api/v1/namespaces/default/configmaps"
big = b'{"metadata":{"name":"big"},"data":{"x":"' + b"a" * (4 * 1024 * 1024) + b'"}}'
assert auth.request("POST", url, body=big, headers={"Content-Type": "application/json"}).status == 413
r = auth.request("POST", url, body=b'{"metadata": ', headers={"Content-Type": "application/json"})
assert r.status == 400 and b"BadRequest" in r.data, (r.status, r.data)

v1.delete_namespaced_config_map("py", ns)
assert status_of(lambda: v1.read_namespaced_config_map("py", ns)) == 404

# A typed Service: status.load_balancer is written (`{}`), and DELETE answers with the
# Service (upstream's services registry returns the deleted object).
svc = client.V1Service(metadata=client.V1ObjectMeta(name="py-svc"),
    spec=client.V1ServiceSpec(selector={"app": "py"}, ports=[client.V1ServicePort(port=80)]))
created = v1.create_namespaced_service(ns, svc)
assert created.status is not None and created.status.load_balancer is not None, created.status
deleted = v1.delete_namespaced_service("py-svc", ns)
assert isinstance(deleted, client.V1Service), type(deleted)
assert deleted.kind == "Service" and deleted.metadata.name == "py-svc", deleted
assert deleted.spec.ports[0].port == 80, deleted.spec
assert status_of(lambda: v1.read_namespaced_service("py-svc", ns)) == 404

# HorizontalPodAutoscalers: written as autoscaling/v1, read as v2 and v1, listed,
# status read, 422 for a bad spec, deleted.
hv1, hv2 = client.AutoscalingV1Api(), client.AutoscalingV2Api()
ref = client.V1CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name="py")
hpa = client.V1HorizontalPodAutoscaler(metadata=client.V1ObjectMeta(name="py"),
    spec=client.V1HorizontalPodAutoscalerSpec(scale_target_ref=ref, max_replicas=4, target_cpu_utilization_percentage=70))
created = hv1.create_namespaced_horizontal_pod_autoscaler(ns, hpa)
assert created.spec.target_cpu_utilization_percentage == 70 and created.spec.min_replicas == 1, created.spec
as_v2 = hv2.read_namespaced_horizontal_pod_autoscaler("py", ns)
assert as_v2.spec.metrics[0].resource.name == "cpu", as_v2.spec
assert as_v2.spec.metrics[0].resource.target.average_utilization == 70, as_v2.spec
assert [h.metadata.name for h in hv2.list_namespaced_horizontal_pod_autoscaler(ns).items] == ["py"]
hv1.read_namespaced_horizontal_pod_autoscaler_status("py", ns)
bad = client.V2HorizontalPodAutoscaler(metadata=client.V1ObjectMeta(name="bad"),
    spec=client.V2HorizontalPodAutoscalerSpec(scale_target_ref=client.V2CrossVersionObjectReference(kind="Deployment", name="py"), max_replicas=2,
        behavior=client.V2HorizontalPodAutoscalerBehavior(scale_down=client.V2HPAScalingRules(policies=[client.V2HPAScalingPolicy(type="Pods", value=1, period_seconds=0)]))))
try:
    hv2.create_namespaced_horizontal_pod_autoscaler(ns, bad)
    raise SystemExit("a zero policy period was accepted")
except ApiException as e:
    assert e.status == 422, e.status
    causes = json.loads(e.body)["details"]["causes"]
    assert causes[0]["field"] == "spec.behavior.scaleDown.policies[0].periodSeconds", causes
hv2.delete_namespaced_horizontal_pod_autoscaler("py", ns)
assert status_of(lambda: hv1.read_namespaced_horizontal_pod_autoscaler("py", ns)) == 404
print("python client: ok")
"#;

#[test]
fn python_client_crud_pagination_watch_and_errors() {
    let python = venv().join("bin/python");
    if !python.exists() {
        skip(&format!(
            "{} is missing (cargo xtask setup)",
            python.display()
        ));
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let out = Command::new(&python)
        .args(["-c", SCRIPT])
        .env("KUBECONFIG", server.kubeconfig())
        .env("HOME", home.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python client script failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
