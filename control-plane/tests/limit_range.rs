//! The LimitRanger admission plugin with the real kubectl against a berth-server: a
//! LimitRange gets upstream's defaults; a pod without resources gets the namespace's
//! default limits and requests and the `kubernetes.io/limit-ranger` annotation; pods
//! and claims outside the bounds are refused with kube-apiserver's wording; another
//! namespace is untouched.

use berth_testkit::BerthServer;

fn create(k: &berth_testkit::Kubectl, manifest: &str) -> (bool, String) {
    let out = k.run_with_stdin(&["create", "-f", "-"], manifest);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const RANGE: &str = r#"
apiVersion: v1
kind: LimitRange
metadata: {name: bounds, namespace: limited}
spec:
  limits:
  - type: Container
    max: {cpu: "1", memory: 512Mi}
    min: {cpu: 50m}
    defaultRequest: {cpu: 100m, memory: 64Mi}
    maxLimitRequestRatio: {cpu: "10"}
  - type: Pod
    max: {cpu: 1500m}
  - type: PersistentVolumeClaim
    min: {storage: 1Gi}
    max: {storage: 5Gi}
"#;

fn pod(name: &str, ns: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  containers:\n  - name: c\n    image: berth.local/busybox:1.35\n    resources: {resources}\n"
    )
}

fn claim(name: &str, size: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: limited}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n"
    )
}

#[test]
fn limit_ranges_default_and_bound_pods_and_claims() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = berth_testkit::Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    for ns in ["limited", "free"] {
        k.ok(&["create", "namespace", ns]);
    }
    let (ok, out) = create(&k, RANGE);
    assert!(ok, "{out}");
    // The LimitRange's own defaults: default from max.
    let lr = k.json(&["get", "limitrange", "bounds", "-n", "limited", "-o", "json"]);
    let c = &lr["spec"]["limits"][0];
    assert_eq!(c["default"]["cpu"], "1", "{lr}");
    assert_eq!(c["default"]["memory"], "512Mi", "{lr}");
    assert_eq!(c["defaultRequest"]["cpu"], "100m", "{lr}");

    // No resources: the defaults, and the annotation saying so.
    let (ok, out) = create(&k, &pod("plain", "limited", "{}"));
    assert!(ok, "{out}");
    let p = k.json(&["get", "pod", "plain", "-n", "limited", "-o", "json"]);
    let r = &p["spec"]["containers"][0]["resources"];
    assert_eq!(r["limits"]["cpu"], "1", "{p}");
    assert_eq!(r["limits"]["memory"], "512Mi", "{p}");
    assert_eq!(r["requests"]["cpu"], "100m", "{p}");
    assert_eq!(r["requests"]["memory"], "64Mi", "{p}");
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c",
        "{p}"
    );
    assert_eq!(p["status"]["qosClass"], "Burstable", "{p}");

    // Over the max and under the min at once: both, in one message.
    let (ok, out) = create(
        &k,
        &pod(
            "greedy",
            "limited",
            "{requests: {cpu: 10m}, limits: {cpu: '2'}}",
        ),
    );
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("pods \"greedy\" is forbidden: [minimum cpu usage per Container is 50m, but request is 10m, maximum cpu usage per Container is 1, but limit is 2"),
        "{out}"
    );
    // The ratio.
    let (ok, out) = create(
        &k,
        &pod(
            "spiky",
            "limited",
            "{requests: {cpu: 60m}, limits: {cpu: '1'}}",
        ),
    );
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains(
            "cpu max limit to request ratio per Container is 10, but provided ratio is 16.666667"
        ),
        "{out}"
    );
    // The Pod item: two containers of 800m each are over 1500m together.
    let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: pair, namespace: limited}\nspec:\n  containers:\n  - {name: a, image: berth.local/busybox:1.35, resources: {limits: {cpu: 800m}}}\n  - {name: b, image: berth.local/busybox:1.35, resources: {limits: {cpu: 800m}}}\n";
    let (ok, out) = create(&k, two);
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("maximum cpu usage per Pod is 1500m, but limit is 1600m"),
        "{out}"
    );
    assert!(
        k.run(&["get", "pod", "pair", "-n", "limited"])
            .status
            .code()
            != Some(0),
        "nothing stored for a refused pod"
    );

    // Claims: storage within min and max.
    let (ok, out) = create(&k, &claim("small", "500Mi"));
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("persistentvolumeclaims \"small\" is forbidden: minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"),
        "{out}"
    );
    let (ok, out) = create(&k, &claim("big", "10Gi"));
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("maximum storage usage per PersistentVolumeClaim is 5Gi, but request is 10Gi"),
        "{out}"
    );
    let (ok, out) = create(&k, &claim("fits", "2Gi"));
    assert!(ok, "{out}");

    // Another namespace: nothing set, nothing refused.
    let (ok, out) = create(&k, &pod("plain", "free", "{}"));
    assert!(ok, "{out}");
    let p = k.json(&["get", "pod", "plain", "-n", "free", "-o", "json"]);
    assert!(
        p["spec"]["containers"][0]["resources"]
            .as_object()
            .is_none_or(|r| r.get("limits").is_none()),
        "{p}"
    );
    assert!(p["metadata"]["annotations"]["kubernetes.io/limit-ranger"].is_null());
    assert_eq!(p["status"]["qosClass"], "BestEffort", "{p}");
}
