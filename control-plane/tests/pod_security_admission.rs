//! Pod Security admission with the real kubectl against a berth-server: a `restricted`
//! namespace refuses a pod that sets none of the restricted fields with kube-apiserver's
//! message and admits one that sets them; `baseline` refuses hostPath and privileged;
//! `warn` admits with a `Warning:` that kubectl prints, also for a Deployment's pod
//! template; an invalid level label is refused on the namespace with the field named.

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

const BARE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: bare, namespace: NS}
spec:
  containers:
  - {name: c, image: berth.local/busybox:1.35}
"#;

const RESTRICTED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: locked, namespace: NS}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: c
    image: berth.local/busybox:1.35
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
"#;

const HOST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: NS}
spec:
  containers:
  - name: c
    image: berth.local/busybox:1.35
    securityContext: {privileged: true}
  volumes:
  - {name: root, hostPath: {path: /}}
"#;

#[test]
fn levels_enforce_and_warn_with_kube_apiservers_messages() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = berth_testkit::Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    for ns in ["strict", "base", "warned"] {
        k.ok(&["create", "namespace", ns]);
    }
    k.ok(&[
        "label",
        "ns",
        "strict",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    k.ok(&[
        "label",
        "ns",
        "base",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    k.ok(&[
        "label",
        "ns",
        "warned",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=v1.30",
    ]);

    // restricted: refused with every missing setting, in upstream's words and order.
    let (ok, out) = create(&k, &BARE.replace("NS", "strict"));
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"Error from server (Forbidden): error when creating "STDIN": pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{out}"
    );
    let (ok, out) = create(&k, &RESTRICTED.replace("NS", "strict"));
    assert!(ok, "{out}");
    assert!(!out.contains("Warning"), "{out}");

    // baseline: hostPath and privileged refused; the bare pod admitted.
    let (ok, out) = create(&k, &HOST.replace("NS", "base"));
    assert!(!ok, "{out}");
    assert!(
        out.contains(r#"pods "host" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "root"), privileged (container "c" must not set securityContext.privileged=true)"#),
        "{out}"
    );
    let (ok, out) = create(&k, &BARE.replace("NS", "base"));
    assert!(ok, "{out}");

    // warn: admitted, with the warning kubectl prints; the version shown as labelled.
    let (ok, out) = create(&k, &BARE.replace("NS", "warned"));
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"Warning: would violate PodSecurity "restricted:v1.30": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#),
        "{out}"
    );
    // A workload's pod template: warned, never refused (even where enforce would).
    let (ok, out) = create(
        &k,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: strict}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: berth.local/busybox:1.35}]
"#,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{out}"
    );

    // An invalid level is refused on the namespace, naming the label.
    let out = k.fails(&[
        "label",
        "ns",
        "base",
        "--overwrite",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert!(
        out.contains(r#"metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be one of privileged, baseline, restricted"#),
        "{out}"
    );
    // No labels: privileged, anything goes.
    let (ok, out) = create(&k, &HOST.replace("NS", "default"));
    assert!(ok, "{out}");
}
