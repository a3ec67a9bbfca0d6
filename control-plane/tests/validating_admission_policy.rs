//! ValidatingAdmissionPolicy with the real kubectl against a berth-server: a CEL
//! policy bound to Deployments refuses 6 replicas with kube-apiserver's message and
//! admits 5; a binding's namespaceSelector limits it to labelled namespaces; a
//! `messageExpression` and a `reason` shape the refusal; a `Warn` binding gives a
//! kubectl warning and admits; a DELETE sees `oldObject`; parameters come from a
//! ConfigMap (and their absence refuses under `parameterNotFoundAction: Deny`); CEL
//! that does not compile is refused at create with the field named.

use std::time::{Duration, Instant};

use berth_testkit::{BerthServer, Kubectl};

fn run(k: &Kubectl, args: &[&str], manifest: &str) -> (bool, String) {
    let out = k.run_with_stdin(args, manifest);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn create(k: &Kubectl, manifest: &str) -> (bool, String) {
    run(k, &["create", "-f", "-"], manifest)
}

/// Waits until a server-side dry run of `manifest` is refused (a new policy reaches
/// the apiserver's watch cache a moment after it is stored); returns the refusal.
fn refused_once_in_force(k: &Kubectl, manifest: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = run(k, &["create", "--dry-run=server", "-f", "-"], manifest);
        if !ok {
            return out;
        }
        assert!(Instant::now() < deadline, "never refused: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn deployment(name: &str, ns: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n      - {{name: c, image: \"{image}\"}}\n"
    )
}

const MAX_REPLICAS: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: max-replicas}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE, UPDATE]
      resources: [deployments]
  validations:
  - expression: object.spec.replicas <= 5
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: max-replicas-binding}
spec:
  policyName: max-replicas
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {policy: enforced}
"#;

const CONFIGMAP_RULES: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: configmap-keys}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  validations:
  - expression: "!has(object.data) || object.data.all(k, k.startsWith('app-'))"
    messageExpression: "'key ' + object.data.filter(k, !k.startsWith('app-'))[0] + ' lacks the app- prefix'"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: configmap-keys-binding}
spec:
  policyName: configmap-keys
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {policy: enforced}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: keep-protected}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [DELETE]
      resources: [configmaps]
  validations:
  - expression: "object == null && oldObject.metadata.name != 'app-protected'"
    message: this ConfigMap is protected
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: keep-protected-binding}
spec:
  policyName: keep-protected
  validationActions: [Deny]
"#;

const AUTHZ: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: authz-check}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [configmaps]
  matchConditions:
  - name: only-authz
    expression: object.metadata.name.startsWith('app-authz')
  validations:
  - expression: authorizer.group('').resource('secrets').namespace(object.metadata.namespace).check('list').allowed()
    message: the requester may not list secrets
  - expression: authorizer.serviceAccount('enforced', 'nobody').group('').resource('pods').namespace('enforced').check('delete').allowed()
    message: the nobody service account may not delete pods
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: authz-check-binding}
spec:
  policyName: authz-check
  validationActions: [Deny]
"#;

const NO_LATEST: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: no-latest}
spec:
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [deployments]
  validations:
  - expression: "object.spec.template.spec.containers.all(c, !c.image.endsWith(':latest'))"
    message: images must be pinned
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: no-latest-warn}
spec:
  policyName: no-latest
  validationActions: [Warn]
"#;

const REPLICA_LIMIT: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replica-limit}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - apiGroups: [apps]
      apiVersions: [v1]
      operations: [CREATE]
      resources: [deployments]
  variables:
  - name: limit
    expression: int(params.data.maxReplicas)
  validations:
  - expression: object.spec.replicas <= variables.limit
    messageExpression: "'at most ' + string(variables.limit) + ' replicas in ' + namespaceObject.metadata.name"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replica-limit-binding}
spec:
  policyName: replica-limit
  validationActions: [Deny]
  paramRef: {name: limits, parameterNotFoundAction: Deny}
  matchResources:
    namespaceSelector:
      matchLabels: {policy: params}
"#;

#[test]
fn validating_admission_policies_with_kubectl() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.ok(&["create", "namespace", "enforced"]);
    k.ok(&["label", "namespace", "enforced", "policy=enforced"]);
    k.ok(&["create", "namespace", "free"]);
    k.ok(&["create", "namespace", "tuned"]);
    k.ok(&["label", "namespace", "tuned", "policy=params"]);

    // The policy and binding, with upstream's defaults.
    let (ok, out) = create(&k, MAX_REPLICAS);
    assert!(ok, "{out}");
    let p = k.json(&["get", "validatingadmissionpolicy", "max-replicas"]);
    assert_eq!(p["spec"]["failurePolicy"], "Fail", "{p}");
    assert_eq!(
        p["spec"]["matchConstraints"]["matchPolicy"], "Equivalent",
        "{p}"
    );
    assert_eq!(
        p["spec"]["matchConstraints"]["namespaceSelector"],
        serde_json::json!({}),
        "{p}"
    );
    assert_eq!(
        p["spec"]["matchConstraints"]["resourceRules"][0]["scope"], "*",
        "{p}"
    );
    let b = k.json(&[
        "get",
        "validatingadmissionpolicybinding",
        "max-replicas-binding",
    ]);
    assert_eq!(
        b["spec"]["matchResources"]["matchPolicy"], "Equivalent",
        "{b}"
    );

    // 6 replicas in a labelled namespace: refused with kube-apiserver's message.
    let six = deployment("big", "enforced", 6, "berth.local/busybox:1.35");
    let out = refused_once_in_force(&k, &six);
    let (ok, out2) = create(&k, &six);
    assert!(!ok, "refused: {out2}");
    for out in [&out, &out2] {
        // kubectl's rendering of upstream's 422 (its one cause has no field).
        assert!(
            out.contains("The deployments \"big\" is invalid: : ValidatingAdmissionPolicy 'max-replicas' with binding 'max-replicas-binding' denied request: failed expression: object.spec.replicas <= 5"),
            "{out}"
        );
    }
    assert!(
        !k.run(&["get", "deployment", "big", "-n", "enforced"])
            .status
            .success(),
        "nothing stored for a refused create"
    );
    // 5 is fine; an update to 7 is refused too (UPDATE is in the rule).
    let (ok, out) = create(
        &k,
        &deployment("ok", "enforced", 5, "berth.local/busybox:1.35"),
    );
    assert!(ok, "{out}");
    let out = k.fails(&[
        "patch",
        "deployment",
        "ok",
        "-n",
        "enforced",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":7}}"#,
    ]);
    assert!(
        out.contains("ValidatingAdmissionPolicy 'max-replicas' with binding 'max-replicas-binding' denied request"),
        "{out}"
    );
    // The binding's namespaceSelector: an unlabelled namespace is not checked.
    let (ok, out) = create(
        &k,
        &deployment("big", "free", 6, "berth.local/busybox:1.35"),
    );
    assert!(ok, "{out}");

    // messageExpression and reason Forbidden (403); a DELETE sees oldObject.
    let (ok, out) = create(&k, CONFIGMAP_RULES);
    assert!(ok, "{out}");
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, namespace: enforced}\ndata: {app-a: '1', other: '2'}\n";
    let out = refused_once_in_force(&k, bad);
    assert!(out.contains("Forbidden"), "403: {out}");
    assert!(
        out.contains("configmaps \"bad\" is forbidden: ValidatingAdmissionPolicy 'configmap-keys' with binding 'configmap-keys-binding' denied request: key other lacks the app- prefix"),
        "{out}"
    );
    k.ok(&[
        "create",
        "configmap",
        "app-protected",
        "-n",
        "enforced",
        "--from-literal=app-x=1",
    ]);
    let out = loop_until_refused(
        &k,
        &[
            "delete",
            "configmap",
            "app-protected",
            "-n",
            "enforced",
            "--dry-run=server",
        ],
    );
    assert!(
        out.contains("ValidatingAdmissionPolicy 'keep-protected' with binding 'keep-protected-binding' denied request: this ConfigMap is protected"),
        "{out}"
    );
    k.ok(&["create", "configmap", "app-other", "-n", "enforced"]);
    k.ok(&["delete", "configmap", "app-other", "-n", "enforced"]);

    // The authorizer library, as the requester (an admin) and as a service account;
    // matchConditions keep the policy to its own ConfigMaps.
    let (ok, out) = create(&k, AUTHZ);
    assert!(ok, "{out}");
    let authz =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-authz, namespace: enforced}\n";
    let out = refused_once_in_force(&k, authz);
    assert!(
        out.contains("ValidatingAdmissionPolicy 'authz-check' with binding 'authz-check-binding' denied request: the nobody service account may not delete pods"),
        "{out}"
    );
    k.ok(&["create", "configmap", "app-unrelated", "-n", "enforced"]);

    // Warn: admitted, with kubectl's `Warning:` line.
    let (ok, out) = create(&k, NO_LATEST);
    assert!(ok, "{out}");
    let latest = deployment("floating", "free", 1, "berth.local/busybox:latest");
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let (ok, out) = run(&k, &["create", "--dry-run=server", "-f", "-"], &latest);
        assert!(ok, "Warn admits: {out}");
        if out.contains("Warning") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.contains("Warning: Validation failed for ValidatingAdmissionPolicy 'no-latest' with binding 'no-latest-warn': images must be pinned"),
        "{out}"
    );
    let (ok, out) = create(&k, &latest);
    assert!(ok && out.contains("Warning: Validation failed"), "{out}");

    // Each failed validation counted per binding action, as kube-apiserver's metrics.
    for series in [
        r#"apiserver_validating_admission_policy_check_total{enforcement_action="deny",error_type="invalid_error",policy="max-replicas",policy_binding="max-replicas-binding"}"#,
        r#"apiserver_validating_admission_policy_check_total{enforcement_action="warn",error_type="invalid_error",policy="no-latest",policy_binding="no-latest-warn"}"#,
        r#"apiserver_validating_admission_policy_check_duration_seconds_count{enforcement_action="deny",error_type="invalid_error",policy="max-replicas",policy_binding="max-replicas-binding"}"#,
    ] {
        let count = k.metric(series);
        assert!(count.is_some_and(|c| c >= 1.0), "{series}: {count:?}");
    }

    // Parameters from a ConfigMap in the request's namespace.
    let (ok, out) = create(&k, REPLICA_LIMIT);
    assert!(ok, "{out}");
    let three = deployment("three", "tuned", 3, "berth.local/busybox:1.35");
    let out = refused_once_in_force(&k, &three);
    assert!(
        out.contains("ValidatingAdmissionPolicy 'replica-limit' with binding 'replica-limit-binding' denied request: failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{out}"
    );
    k.ok(&[
        "create",
        "configmap",
        "limits",
        "-n",
        "tuned",
        "--from-literal=maxReplicas=2",
    ]);
    let (ok, out) = create(&k, &three);
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("denied request: at most 2 replicas in tuned"),
        "{out}"
    );
    let (ok, out) = create(
        &k,
        &deployment("two", "tuned", 2, "berth.local/busybox:1.35"),
    );
    assert!(ok, "{out}");
    // kubectl get: upstream's columns.
    let table = k.ok(&["get", "validatingadmissionpolicies"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        row("replica-limit")[..3],
        ["replica-limit", "1", "v1/ConfigMap"],
        "{table}"
    );
    assert_eq!(
        row("max-replicas")[..3],
        ["max-replicas", "1", "<unset>"],
        "{table}"
    );
    let table = k.ok(&["get", "validatingadmissionpolicybindings"]);
    assert!(
        table.lines().any(|l| l.split_whitespace().take(3).eq([
            "replica-limit-binding",
            "replica-limit",
            "*/limits"
        ])),
        "{table}"
    );

    // CEL that does not compile: refused at create, the field named.
    let broken = MAX_REPLICAS
        .replace("name: max-replicas}", "name: broken}")
        .replace("object.spec.replicas <= 5", "object.spec.replicas <=");
    let broken = broken.split("---").next().expect("the policy");
    let (ok, out) = create(&k, broken);
    assert!(!ok, "refused: {out}");
    assert!(
        out.contains("spec.validations[0].expression: Invalid value: \"object.spec.replicas <=\": compilation failed: ERROR: <input>:1:"),
        "{out}"
    );
    let undeclared = broken.replace("object.spec.replicas <=", "replicas <= 5");
    let (ok, out) = create(&k, &undeclared);
    assert!(!ok, "refused: {out}");
    assert!(out.contains("undeclared reference to 'replicas'"), "{out}");

    // The policy objects themselves are never subject to policies; deleting the
    // binding lifts the policy.
    k.ok(&[
        "delete",
        "validatingadmissionpolicybinding",
        "max-replicas-binding",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = run(&k, &["create", "--dry-run=server", "-f", "-"], &six);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `args` until it fails (a policy just created may not be in force yet).
fn loop_until_refused(k: &Kubectl, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = k.run(args);
        if !out.status.success() {
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(Instant::now() < deadline, "never refused: {args:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
