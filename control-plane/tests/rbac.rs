//! RBAC against a berth-server started by the test, driven by the real kubectl and the
//! Python `kubernetes` client as token users of the test token file (`alice`, `bob`,
//! `carol`, `dave`: in no group, so holding only what bindings give them): kube-apiserver's
//! 403 wording, `view`/`edit`/`admin` bound in one namespace, the escalation check,
//! ClusterRole aggregation, `kubectl auth can-i` (`--list`, `--as`) and `auth whoami`,
//! and RBAC object validation. Bindings count a moment after their write (the
//! authorizer follows the watch cache), so the tests poll for them.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::{BerthServer, Kubectl, skip, tools::venv};

struct Cluster {
    admin: Kubectl,
    server: BerthServer,
    home: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Option<Self> {
        let home = tempfile::tempdir().expect("temp home");
        let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
        let admin = Kubectl::find(&server.kubeconfig(), home.path())?;
        Some(Self {
            admin,
            server,
            home,
        })
    }

    /// kubectl as a token user: its own kubeconfig with only the cluster and the token.
    fn user(&self, name: &str) -> Kubectl {
        let kubeconfig = self.home.path().join(format!("{name}.kubeconfig"));
        let k = Kubectl {
            kubeconfig: kubeconfig.clone(),
            ..self.admin.clone()
        };
        let ca = self.server.ca();
        let ca = ca.to_str().expect("utf-8 path");
        for args in [
            vec![
                "config",
                "set-cluster",
                "berth",
                "--embed-certs",
                &format!("--server={}", self.server.url()),
                &format!("--certificate-authority={ca}"),
            ],
            vec![
                "config",
                "set-credentials",
                name,
                &format!("--token={name}-token"),
            ],
            vec![
                "config",
                "set-context",
                name,
                "--cluster=berth",
                &format!("--user={name}"),
            ],
            vec!["config", "use-context", name],
        ] {
            k.ok(&args);
        }
        k
    }
}

/// Polls `f` every 100 ms until it is true; panics naming `what` after 20 s.
fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn succeeds(k: &Kubectl, args: &[&str]) -> bool {
    k.run(args).status.success()
}

#[test]
fn a_user_without_bindings_is_forbidden_in_kube_apiservers_words() {
    let Some(c) = Cluster::start() else { return };
    let alice = c.user("alice");
    assert_eq!(
        alice.fails(&["get", "pods"]).trim(),
        "Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    assert!(
        alice.fails(&["get", "nodes"]).contains(
            "nodes is forbidden: User \"alice\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
        )
    );
    assert!(
        alice
            .fails(&["get", "deploy", "web"])
            .contains("deployments.apps \"web\" is forbidden: User \"alice\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"default\"")
    );
    assert!(
        alice
            .fails(&["get", "--raw", "/metrics"])
            .contains("forbidden: User \"alice\" cannot get path \"/metrics\"")
    );
    // Discovery and the public paths are every authenticated user's.
    assert!(
        alice
            .ok(&["api-versions"])
            .contains("rbac.authorization.k8s.io/v1")
    );
    assert!(
        alice
            .ok(&["get", "--raw", "/version"])
            .contains("gitVersion")
    );
    // The admin kubeconfig is system:masters.
    c.admin.ok(&["get", "pods", "-A"]);
}

#[test]
fn view_edit_and_admin_in_one_namespace_and_the_escalation_check() {
    let Some(c) = Cluster::start() else { return };
    let k = &c.admin;
    k.ok(&["create", "namespace", "dev"]);
    k.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "dev",
        "--from-literal=a=1",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "dev",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "bob-edit",
        "--clusterrole=edit",
        "--user=bob",
        "-n",
        "dev",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "carol-admin",
        "--clusterrole=admin",
        "--user=carol",
        "-n",
        "dev",
    ]);

    // view: reads in dev only.
    let alice = c.user("alice");
    poll("alice to read configmaps in dev", || {
        succeeds(&alice, &["get", "cm", "cfg", "-n", "dev"])
    });
    alice.ok(&["get", "pods", "-n", "dev"]);
    assert!(alice.fails(&["get", "cm", "-n", "default"]).contains(
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    ));
    assert!(alice.fails(&["create", "cm", "new", "-n", "dev"]).contains(
        "configmaps is forbidden: User \"alice\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"dev\""
    ));
    // view does not read Secrets.
    assert!(
        alice
            .fails(&["get", "secrets", "-n", "dev"])
            .contains("cannot list resource \"secrets\"")
    );

    // edit: writes, but no RBAC objects.
    let bob = c.user("bob");
    poll("bob to write configmaps in dev", || {
        succeeds(
            &bob,
            &["create", "cm", "by-bob", "-n", "dev", "--from-literal=b=2"],
        )
    });
    bob.ok(&["delete", "cm", "cfg", "-n", "dev"]);
    assert!(
        bob.fails(&["create", "rolebinding", "bob-admin", "--clusterrole=admin", "--user=bob", "-n", "dev"])
            .contains("rolebindings.rbac.authorization.k8s.io is forbidden: User \"bob\" cannot create resource \"rolebindings\" in API group \"rbac.authorization.k8s.io\" in the namespace \"dev\"")
    );

    // admin: may bind what it holds (view), not cluster-admin (escalation).
    let carol = c.user("carol");
    poll("carol to manage rolebindings in dev", || {
        succeeds(&carol, &["get", "rolebindings", "-n", "dev"])
    });
    // (admin's rules come through two aggregations, edit's and view's: poll.)
    poll("carol to bind view", || {
        succeeds(
            &carol,
            &[
                "create",
                "rolebinding",
                "dave-view",
                "--clusterrole=view",
                "--user=dave",
                "-n",
                "dev",
            ],
        )
    });
    let refused = carol.fails(&[
        "create",
        "rolebinding",
        "carol-root",
        "--clusterrole=cluster-admin",
        "--user=carol",
        "-n",
        "dev",
    ]);
    assert!(
        refused.contains(
            "rolebindings.rbac.authorization.k8s.io \"carol-root\" is forbidden: user \"carol\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}\n{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}"
        ),
        "{refused}"
    );
    // A Role granting more than carol holds, too.
    let role = carol.fails(&[
        "create",
        "role",
        "nodes-reader",
        "--verb=get",
        "--resource=nodes",
        "-n",
        "dev",
    ]);
    assert!(
        role.contains("roles.rbac.authorization.k8s.io \"nodes-reader\" is forbidden: user \"carol\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}"),
        "{role}"
    );
    carol.ok(&[
        "create",
        "role",
        "cm-reader",
        "--verb=get",
        "--resource=configmaps",
        "-n",
        "dev",
    ]);
    // The admin (system:masters) may bind anything.
    k.ok(&[
        "create",
        "rolebinding",
        "carol-root",
        "--clusterrole=cluster-admin",
        "--user=carol",
        "-n",
        "dev",
    ]);
}

#[test]
fn aggregation_can_i_whoami_and_impersonation() {
    let Some(c) = Cluster::start() else { return };
    let k = &c.admin;
    k.ok(&["create", "namespace", "dev"]);
    k.ok(&[
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
        "-n",
        "dev",
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "sa-view",
        "--clusterrole=view",
        "--serviceaccount=dev:default",
        "-n",
        "dev",
    ]);
    // A ClusterRole labelled aggregate-to-view adds its rules to view.
    k.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
         metadata: {name: lease-viewer, labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}}\n\
         rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, list, watch]}]\n",
    );
    let rule = serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch"]});
    let has_rule = |role: &str| {
        k.json(&["get", "clusterrole", role])["rules"]
            .as_array()
            .is_some_and(|rules| rules.contains(&rule))
    };
    poll("view to aggregate lease-viewer's rule", || has_rule("view"));
    // ... and edit and admin, which aggregate view (and edit).
    poll("admin to aggregate it too", || {
        has_rule("edit") && has_rule("admin")
    });

    let alice = c.user("alice");
    poll("alice's binding to count", || {
        alice
            .ok(&["auth", "can-i", "list", "pods", "-n", "dev"])
            .trim()
            == "yes"
    });
    assert_eq!(
        alice
            .ok(&[
                "auth",
                "can-i",
                "get",
                "leases.coordination.k8s.io",
                "-n",
                "dev"
            ])
            .trim(),
        "yes"
    );
    let no = alice.run(&["auth", "can-i", "delete", "pods", "-n", "dev"]);
    assert!(!no.status.success(), "can-i answers no with exit code 1");
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    assert_eq!(
        String::from_utf8_lossy(
            &alice
                .run(&["auth", "can-i", "list", "pods", "-n", "default"])
                .stdout
        )
        .trim(),
        "no"
    );
    let list = alice.ok(&["auth", "can-i", "--list", "-n", "dev"]);
    let pods = list
        .lines()
        .find(|l| l.starts_with("pods "))
        .unwrap_or_else(|| panic!("pods in {list}"));
    assert!(pods.contains("[get list watch]"), "{list}");
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    assert!(list.contains("[/api/*]"), "{list}");
    let whoami = alice.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("Username") && whoami.contains("alice"),
        "{whoami}"
    );
    assert!(whoami.contains("[system:authenticated]"), "{whoami}");
    let admin = k.ok(&["auth", "whoami", "-o", "json"]);
    let admin: serde_json::Value = serde_json::from_str(&admin).expect("json");
    assert_eq!(admin["status"]["userInfo"]["username"], "kubernetes-admin");
    assert_eq!(
        admin["status"]["userInfo"]["groups"],
        serde_json::json!(["system:masters", "system:authenticated"])
    );

    // --as: the admin may impersonate; alice may not.
    assert_eq!(
        k.ok(&[
            "auth", "can-i", "list", "pods", "-n", "dev", "--as", "alice"
        ])
        .trim(),
        "yes"
    );
    assert!(
        k.ok(&["auth", "whoami", "--as", "dave", "--as-group", "devs"])
            .contains("[devs system:authenticated]")
    );
    assert!(alice.fails(&["get", "pods", "-n", "dev", "--as", "bob"]).contains(
        "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    ));
    poll("the ServiceAccount's binding to count", || {
        succeeds(
            k,
            &[
                "get",
                "pods",
                "-n",
                "dev",
                "--as",
                "system:serviceaccount:dev:default",
            ],
        )
    });
    assert!(
        k.fails(&["get", "secrets", "-n", "dev", "--as", "system:serviceaccount:dev:default"]).contains(
            "secrets is forbidden: User \"system:serviceaccount:dev:default\" cannot list resource \"secrets\" in API group \"\" in the namespace \"dev\""
        )
    );
}

#[test]
fn malformed_roles_are_422_with_field_paths() {
    let Some(c) = Cluster::start() else { return };
    let bad = |manifest: &str| -> String {
        let file = c.home.path().join("bad.yaml");
        std::fs::write(&file, manifest).expect("write manifest");
        c.admin
            .fails(&["create", "-f", file.to_str().expect("utf-8")])
    };
    let err = bad(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: bad}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], verbs: []}]\n",
    );
    assert!(
        err.contains("The Role \"bad\" is invalid: rules[0].verbs: Required value: verbs must contain at least one value"),
        "{err}"
    );
    let err = bad(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: bad}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], nonResourceURLs: [/healthz], verbs: [get]}]\n",
    );
    assert!(err.contains("rules[0].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs"), "{err}");
    assert!(err.contains("rules[0].nonResourceURLs: Invalid value: []string{\"/healthz\"}: rules cannot apply to both regular resources and non-resource URLs"), "{err}");
    let err = bad(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: bad}\n\
         rules: [{resources: [pods], verbs: [get]}]\n",
    );
    assert!(
        err.contains("The ClusterRole \"bad\" is invalid: rules[0].apiGroups: Required value: resource rules must supply at least one api group"),
        "{err}"
    );
    let err = bad(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bad}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Deployment, name: x}\n\
         subjects: [{kind: User, name: alice}]\n",
    );
    assert!(
        err.contains("roleRef.kind: Unsupported value: \"Deployment\": supported values: \"Role\", \"ClusterRole\""),
        "{err}"
    );
}

const PYTHON: &str = r#"
import json
from kubernetes import client
from kubernetes.client.rest import ApiException

cfg = client.Configuration()
cfg.host = HOST
cfg.ssl_ca_cert = CA
cfg.api_key = {"authorization": "alice-token"}
cfg.api_key_prefix = {"authorization": "Bearer"}
api = client.ApiClient(cfg)
v1 = client.CoreV1Api(api)
try:
    v1.list_namespaced_pod("default")
    raise SystemExit("listing pods should be forbidden")
except ApiException as e:
    body = json.loads(e.body)
    assert e.status == 403 and body["reason"] == "Forbidden", (e.status, body)
    assert body["message"] == 'pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default"', body
    assert body["details"] == {"kind": "pods"}, body

authz = client.AuthorizationV1Api(api)
review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
    spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
        namespace="default", verb="list", resource="pods"))))
assert review.status.allowed is False, review.status
review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
    spec=client.V1SelfSubjectAccessReviewSpec(non_resource_attributes=client.V1NonResourceAttributes(
        path="/version", verb="get"))))
assert review.status.allowed is True, review.status
who = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
assert who.status.user_info.username == "alice", who.status

# As the admin (the test token user `tester` is in system:masters): reviews about others.
adm = client.Configuration()
adm.host = HOST
adm.ssl_ca_cert = CA
adm.api_key = {"authorization": "berth-test-token"}
adm.api_key_prefix = {"authorization": "Bearer"}
admin = client.ApiClient(adm)
az = client.AuthorizationV1Api(admin)
def sar(user, groups, namespace, verb, resource):
    spec = client.V1SubjectAccessReviewSpec(user=user, groups=groups,
        resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb=verb, resource=resource))
    return az.create_subject_access_review(client.V1SubjectAccessReview(spec=spec)).status
assert sar("alice", None, "default", "get", "pods").allowed is False
masters = sar("someone", ["system:masters"], "default", "delete", "pods")
assert masters.allowed is True, masters
basic = az.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
    user="alice", groups=["system:authenticated"],
    resource_attributes=client.V1ResourceAttributes(verb="create", group="authorization.k8s.io", resource="selfsubjectaccessreviews")))).status
assert basic.allowed and basic.reason == 'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole "system:basic-user" to Group "system:authenticated"', basic
local = client.V1LocalSubjectAccessReview(metadata=client.V1ObjectMeta(namespace="default"),
    spec=client.V1SubjectAccessReviewSpec(user="alice",
        resource_attributes=client.V1ResourceAttributes(namespace="other", verb="get", resource="pods")))
try:
    az.create_namespaced_local_subject_access_review("default", local)
    raise SystemExit("a LocalSubjectAccessReview about another namespace should be invalid")
except ApiException as e:
    assert e.status == 422 and "must match metadata.namespace" in json.loads(e.body)["message"], e.body
local.spec.resource_attributes.namespace = "default"
assert az.create_namespaced_local_subject_access_review("default", local).status.allowed is False
authn = client.AuthenticationV1Api(admin)
tr = authn.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="alice-token")))
assert tr.status.authenticated is True and tr.status.user.username == "alice", tr.status
assert "system:authenticated" in tr.status.user.groups, tr.status
tr = authn.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="no-such-token")))
assert not tr.status.authenticated, tr.status
# alice may not review others.
try:
    client.AuthorizationV1Api(api).create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(user="bob", non_resource_attributes=client.V1NonResourceAttributes(path="/", verb="get"))))
    raise SystemExit("alice should not create SubjectAccessReviews")
except ApiException as e:
    assert e.status == 403, e.status
print("python rbac: ok")
"#;

#[test]
fn python_client_sees_403_and_every_review_api() {
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
    let script = format!(
        "HOST = {:?}\nCA = {:?}\n{PYTHON}",
        server.url(),
        server.ca().display().to_string()
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .env("HOME", home.path())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python script failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python rbac: ok"));
}

/// The controllers are not `system:masters`: each acts as its own ServiceAccount in
/// kube-system bound to its `system:controller:*` role, and the informers list and watch
/// as `system:kube-controller-manager` (`--use-service-account-credentials`, the
/// default). Taking `create pods` out of the ReplicaSet controller's role stops it
/// creating pods, with a FailedCreate event naming its account in kube-apiserver's
/// words; putting the rule back lets it go on.
#[test]
fn controllers_act_as_their_own_service_accounts() {
    let Some(c) = Cluster::start() else { return };
    let k = &c.admin;
    let rs_account = "system:serviceaccount:kube-system:replicaset-controller";
    poll("the controllers' ServiceAccounts", || {
        succeeds(
            k,
            &["get", "sa", "-n", "kube-system", "replicaset-controller"],
        )
    });
    for account in [
        "deployment-controller",
        "job-controller",
        "namespace-controller",
        "generic-garbage-collector",
        "endpointslice-controller",
        "root-ca-cert-publisher",
        "certificate-controller",
    ] {
        k.ok(&["get", "sa", "-n", "kube-system", account]);
    }
    let can = |args: &[&str]| k.ok(&[&["auth", "can-i"], args].concat()).trim().to_owned();
    assert_eq!(
        can(&["create", "pods", &format!("--as={rs_account}")]),
        "yes"
    );
    let no = k.run(&[
        "auth",
        "can-i",
        "get",
        "secrets",
        &format!("--as={rs_account}"),
    ]);
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");
    assert_eq!(
        can(&["list", "pods", "-A", "--as=system:kube-controller-manager"]),
        "yes"
    );
    let no = k.run(&[
        "auth",
        "can-i",
        "create",
        "pods",
        "--as=system:kube-controller-manager",
    ]);
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");

    // The ReplicaSet controller without `create pods`.
    let role = k.json(&[
        "get",
        "clusterrole",
        "system:controller:replicaset-controller",
    ]);
    let mut narrowed = role.clone();
    for rule in narrowed["rules"].as_array_mut().expect("rules") {
        if rule["resources"] == serde_json::json!(["pods"]) {
            rule["verbs"] = serde_json::json!(["delete", "list", "patch", "watch"]);
        }
    }
    narrowed["metadata"] = serde_json::json!({"name": "system:controller:replicaset-controller"});
    k.apply(&narrowed.to_string());
    poll("the narrowed role to count", || {
        String::from_utf8_lossy(
            &k.run(&[
                "auth",
                "can-i",
                "create",
                "pods",
                &format!("--as={rs_account}"),
            ])
            .stdout,
        )
        .trim()
            == "no"
    });
    k.apply(
        r#"{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "fenced", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "fenced"}},
                     "template": {"metadata": {"labels": {"app": "fenced"}},
                                  "spec": {"containers": [{"name": "c", "image": "berth.local/busybox:1.35"}]}}}}"#,
    );
    let want = format!(
        "is forbidden: User \"{rs_account}\" cannot create resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    poll(
        "a FailedCreate event naming the controller's account",
        || {
            let events = k.json(&[
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                "reason=FailedCreate,involvedObject.name=fenced",
            ]);
            events["items"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|e| e["message"].as_str().is_some_and(|m| m.contains(&want)))
            })
        },
    );
    let pods = k.json(&["get", "pods", "-n", "default", "-l", "app=fenced"]);
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "{pods}");

    // The rule back: the controller creates the pods.
    let mut restored = role;
    restored["metadata"] = serde_json::json!({"name": "system:controller:replicaset-controller"});
    k.apply(&restored.to_string());
    poll("the ReplicaSet's two pods", || {
        let pods = k.json(&["get", "pods", "-n", "default", "-l", "app=fenced"]);
        pods["items"].as_array().map(Vec::len) == Some(2)
    });
}
