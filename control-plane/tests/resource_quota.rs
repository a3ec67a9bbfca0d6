//! ResourceQuota with the real kubectl against a berth-server: the quota controller
//! counts what a namespace already holds into `status.used`; admission charges new
//! objects with a compare-and-swap on the quota, so ten concurrent creates against
//! `pods: 2` let exactly two through and refuse the rest with kube-apiserver's
//! message; compute quotas need every container's limits and sum requests; object
//! counts (`count/deployments.apps`), scopes (BestEffort) and dry runs; and a
//! deleted object's usage is given back by the controller.

use berth_testkit::{BerthServer, Kubectl};

fn create(k: &Kubectl, manifest: &str) -> (bool, String) {
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

fn pod(name: &str, ns: &str, resources: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  containers:\n  - name: c\n    image: berth.local/busybox:1.35\n    resources: {resources}\n"
    )
}

fn quota(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

/// Waits (kubectl's own `wait`) until the quota's `status.used[resource]` is `value`.
fn wait_used(k: &Kubectl, ns: &str, name: &str, resource: &str, value: &str) {
    let path = resource.replace('.', "\\.");
    let cond = format!("--for=jsonpath={{.status.used.{path}}}={value}");
    let target = format!("resourcequota/{name}");
    let out = k.run(&["wait", &cond, &target, "-n", ns, "--timeout=60s"]);
    assert!(
        out.status.success(),
        "{ns}/{name}: status.used[{resource}] never became {value}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        k.ok(&["get", &target, "-n", ns, "-o", "yaml"])
    );
}

fn used(k: &Kubectl, ns: &str, name: &str) -> serde_json::Value {
    k.json(&["get", "resourcequota", name, "-n", ns])["status"]["used"].clone()
}

#[test]
fn resource_quotas_count_charge_and_refuse() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    for ns in ["burst", "compute", "counted", "scoped"] {
        k.ok(&["create", "namespace", ns]);
    }

    // The controller counts what is already there.
    for (name, res) in [
        ("a", "{requests: {cpu: 500m, memory: 64Mi}}"),
        ("b", "{requests: {cpu: '1'}}"),
    ] {
        let (ok, out) = create(&k, &pod(name, "counted", res));
        assert!(ok, "{out}");
    }
    let (ok, out) = create(
        &k,
        &quota(
            "usage",
            "counted",
            "{hard: {pods: '10', count/pods: '10', requests.cpu: '4', requests.memory: 1Gi, services: '5', count/deployments.apps: '3'}}",
        ),
    );
    assert!(ok, "{out}");
    wait_used(&k, "counted", "usage", "requests.cpu", "1500m");
    let q = k.json(&["get", "resourcequota", "usage", "-n", "counted"]);
    assert_eq!(q["status"]["hard"]["requests.memory"], "1Gi", "{q}");
    let u = &q["status"]["used"];
    assert_eq!(u["pods"], "2", "{q}");
    assert_eq!(u["count/pods"], "2", "{q}");
    assert_eq!(u["requests.memory"], "64Mi", "{q}");
    assert_eq!(u["services"], "0", "{q}");
    assert_eq!(u["count/deployments.apps"], "0", "{q}");

    // Ten concurrent creates against `pods: 2`: exactly two get through.
    let (ok, out) = create(&k, &quota("q", "burst", "{hard: {pods: '2'}}"));
    assert!(ok, "{out}");
    wait_used(&k, "burst", "q", "pods", "0");
    // A dry run is measured but charges nothing.
    let dry = k.run_with_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &pod("dry", "burst", "{}"),
    );
    assert!(dry.status.success(), "{dry:?}");
    assert_eq!(used(&k, "burst", "q")["pods"], "0");
    let outcomes: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let k = &k;
                s.spawn(move || create(k, &pod(&format!("p{i}"), "burst", "{}")))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("create thread"))
            .collect()
    });
    let admitted: Vec<&String> = outcomes.iter().filter(|o| o.0).map(|o| &o.1).collect();
    assert_eq!(admitted.len(), 2, "exactly two of ten: {outcomes:#?}");
    for (i, (ok, out)) in outcomes.iter().enumerate() {
        if !ok {
            assert!(
                out.contains(&format!(
                    "pods \"p{i}\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
                )),
                "{out}"
            );
        }
    }
    let pods = k.json(&["get", "pods", "-n", "burst"]);
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(2), "{pods}");
    assert_eq!(used(&k, "burst", "q")["pods"], "2");
    // Full: a dry run is refused too.
    let dry = k.run_with_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &pod("dry", "burst", "{}"),
    );
    assert!(!dry.status.success(), "refused: {dry:?}");

    // A pod deleted: the controller gives its unit back, and there is room again.
    let first = pods["items"][0]["metadata"]["name"]
        .as_str()
        .expect("a pod name")
        .to_owned();
    k.ok(&[
        "delete",
        "pod",
        &first,
        "-n",
        "burst",
        "--grace-period=0",
        "--force",
    ]);
    wait_used(&k, "burst", "q", "pods", "1");
    let (ok, out) = create(&k, &pod("again", "burst", "{}"));
    assert!(ok, "{out}");
    assert_eq!(used(&k, "burst", "q")["pods"], "2");

    // Compute quotas: limits must be stated; requests are summed.
    let (ok, out) = create(
        &k,
        &quota(
            "compute",
            "compute",
            "{hard: {requests.cpu: '1', limits.cpu: '2', limits.memory: 1Gi}}",
        ),
    );
    assert!(ok, "{out}");
    wait_used(&k, "compute", "compute", "requests.cpu", "0");
    let (ok, out) = create(&k, &pod("nolimits", "compute", "{requests: {cpu: 100m}}"));
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("pods \"nolimits\" is forbidden: failed quota: compute: must specify limits.cpu for: c; limits.memory for: c"),
        "{out}"
    );
    let sized = |name: &str, cpu: &str| {
        pod(
            name,
            "compute",
            &format!("{{requests: {{cpu: {cpu}}}, limits: {{cpu: '1', memory: 256Mi}}}}"),
        )
    };
    let (ok, out) = create(&k, &sized("first", "600m"));
    assert!(ok, "{out}");
    let (ok, out) = create(&k, &sized("second", "600m"));
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("pods \"second\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"),
        "{out}"
    );
    let (ok, out) = create(&k, &sized("third", "400m"));
    assert!(ok, "{out}");
    let u = used(&k, "compute", "compute");
    assert_eq!(u["requests.cpu"], "1", "{u}");
    assert_eq!(u["limits.cpu"], "2", "{u}");
    assert_eq!(u["limits.memory"], "512Mi", "{u}");

    // Object counts of any resource, given back on delete.
    let (ok, out) = create(
        &k,
        &quota("apps", "counted", "{hard: {count/deployments.apps: '1'}}"),
    );
    assert!(ok, "{out}");
    wait_used(&k, "counted", "apps", "count/deployments.apps", "0");
    let image = "--image=berth.local/busybox:1.35";
    k.ok(&["create", "deployment", "d1", image, "-n", "counted"]);
    let out = k.fails(&["create", "deployment", "d2", image, "-n", "counted"]);
    assert!(
        out.contains("deployments.apps \"d2\" is forbidden: exceeded quota: apps, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"),
        "{out}"
    );
    k.ok(&["delete", "deployment", "d1", "-n", "counted"]);
    wait_used(&k, "counted", "apps", "count/deployments.apps", "0");
    k.ok(&["create", "deployment", "d2", image, "-n", "counted"]);

    // A BestEffort quota counts only pods without requests or limits.
    let (ok, out) = create(
        &k,
        &quota(
            "besteffort",
            "scoped",
            "{hard: {pods: '1'}, scopes: [BestEffort]}",
        ),
    );
    assert!(ok, "{out}");
    wait_used(&k, "scoped", "besteffort", "pods", "0");
    let (ok, out) = create(&k, &pod("be1", "scoped", "{}"));
    assert!(ok, "{out}");
    let (ok, out) = create(&k, &pod("be2", "scoped", "{}"));
    assert!(!ok, "refused: {out}");
    assert!(out.contains("exceeded quota: besteffort"), "{out}");
    let (ok, out) = create(&k, &pod("burstable", "scoped", "{requests: {cpu: 100m}}"));
    assert!(ok, "not in the scope: {out}");
    assert_eq!(used(&k, "scoped", "besteffort")["pods"], "1");

    // A quota's own spec is validated.
    let (ok, out) = create(
        &k,
        &quota(
            "bad",
            "scoped",
            "{hard: {requests.cpu: '1'}, scopes: [BestEffort]}",
        ),
    );
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("unsupported scope applied to resource"),
        "{out}"
    );
}
