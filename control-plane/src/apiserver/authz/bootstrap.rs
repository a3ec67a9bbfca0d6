//! The bootstrap RBAC policy kube-apiserver creates at start
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`): the user-facing roles
//! (`cluster-admin`, and `admin`/`edit`/`view` aggregated from the
//! `system:aggregate-to-*` roles), the roles of the system's components
//! (`system:basic-user`, `system:discovery`, `system:public-info-viewer`,
//! `system:node`, `system:kube-scheduler`, `system:kube-controller-manager`, …) and
//! one `system:controller:<name>` role for each of berth's controllers, with
//! upstream's bindings. The rule lists are upstream's (its `testdata/*.yaml`), for the
//! resources berth serves.
//!
//! [`reconcile`] runs at every start, as upstream's `PostStartHook`: missing objects
//! are created; existing ones annotated `rbac.authorization.kubernetes.io/autoupdate:
//! "true"` (or not annotated) get back missing rules, selectors, labels and subjects;
//! `"false"` leaves an object alone. Extra permissions are never removed.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Rule;
use super::rules::uncovered;
use crate::apiserver::Api;
use crate::apiserver::rest::{self, Part};
use crate::apiserver::status::ApiResult;

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const GROUP: &str = "rbac.authorization.k8s.io";

const RW: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const EVENTS: &[&str] = &["create", "patch", "update"];

/// A resource rule.
fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
    let s = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    Rule {
        verbs: s(verbs),
        api_groups: s(groups),
        resources: s(resources),
        ..Rule::default()
    }
}

/// A resource rule limited to names.
fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
    Rule {
        resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
        ..r(verbs, groups, resources)
    }
}

/// A non-resource rule.
fn urls(verbs: &[&str], paths: &[&str]) -> Rule {
    let s = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    Rule {
        verbs: s(verbs),
        non_resource_urls: s(paths),
        ..Rule::default()
    }
}

fn events() -> Rule {
    r(EVENTS, &["", "events.k8s.io"], &["events"])
}

/// One bootstrap ClusterRole.
#[derive(Debug, Clone)]
pub struct ClusterRole {
    pub name: &'static str,
    pub rules: Vec<Rule>,
    /// `rbac.authorization.k8s.io/aggregate-to-*` labels it carries.
    pub aggregate_to: &'static [&'static str],
    /// The label its aggregationRule selects (`admin` → `aggregate-to-admin`).
    pub aggregates: Option<&'static str>,
}

fn role(name: &'static str, rules: Vec<Rule>) -> ClusterRole {
    ClusterRole {
        name,
        rules,
        aggregate_to: &[],
        aggregates: None,
    }
}

/// The bootstrap ClusterRoles.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let mut roles = vec![
        role(
            "cluster-admin",
            vec![r(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        ClusterRole {
            aggregates: Some("admin"),
            ..role("admin", Vec::new())
        },
        ClusterRole {
            aggregates: Some("edit"),
            aggregate_to: &["admin"],
            ..role("edit", Vec::new())
        },
        ClusterRole {
            aggregates: Some("view"),
            aggregate_to: &["edit"],
            ..role("view", Vec::new())
        },
        ClusterRole {
            aggregate_to: &["admin"],
            ..role(
                "system:aggregate-to-admin",
                vec![
                    r(
                        &["create"],
                        &["authorization.k8s.io"],
                        &["localsubjectaccessreviews"],
                    ),
                    r(RW, &[GROUP], &["rolebindings", "roles"]),
                ],
            )
        },
        ClusterRole {
            aggregate_to: &["edit"],
            ..role("system:aggregate-to-edit", aggregate_to_edit())
        },
        ClusterRole {
            aggregate_to: &["view"],
            ..role("system:aggregate-to-view", aggregate_to_view())
        },
        role(
            "system:auth-delegator",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:basic-user",
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:discovery",
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:monitoring",
            vec![urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![urls(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
        ),
        role("system:node", node()),
        role(
            "system:node-proxier",
            vec![
                r(&["list", "watch"], &[""], &["endpoints", "services"]),
                r(READ, &[""], &["nodes"]),
                events(),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:kube-dns",
            vec![r(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        role("system:kube-scheduler", scheduler()),
        role(
            "system:volume-scheduler",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        role("system:kube-controller-manager", controller_manager()),
    ];
    roles.extend(
        controller_roles()
            .into_iter()
            .map(|(name, rules)| role(name, rules)),
    );
    roles
}

fn aggregate_to_edit() -> Vec<Rule> {
    vec![
        r(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        r(&["impersonate"], &[""], &["serviceaccounts"]),
        r(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        r(&["create"], &[""], &["pods/eviction"]),
        r(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        r(WRITE, &["batch"], &["cronjobs", "jobs"]),
        r(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "ingresses",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
            ],
        ),
        r(WRITE, &["policy"], &["poddisruptionbudgets"]),
        r(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        r(RW, &["coordination.k8s.io"], &["leases"]),
    ]
}

fn aggregate_to_view() -> Vec<Rule> {
    vec![
        r(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        r(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        r(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        r(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        r(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "networkpolicies",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
            ],
        ),
        r(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        r(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn node() -> Vec<Rule> {
    vec![
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        r(READ, &[""], &["services"]),
        r(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        r(&["patch", "update"], &[""], &["nodes/status"]),
        r(&["patch", "update"], &[""], &["nodes"]),
        r(EVENTS, &[""], &["events"]),
        r(READ, &[""], &["pods"]),
        r(&["create", "delete"], &[""], &["pods"]),
        r(&["patch", "update"], &[""], &["pods/status"]),
        r(&["create"], &[""], &["pods/eviction"]),
        r(READ, &[""], &["configmaps", "secrets"]),
        r(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["get"], &[""], &["endpoints"]),
        r(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        r(
            &["create", "delete", "get", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        r(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            &["get", "patch", "update"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        r(READ, &["storage.k8s.io"], &["csidrivers"]),
        r(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        r(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

fn scheduler() -> Vec<Rule> {
    vec![
        events(),
        r(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler"],
        ),
        r(READ, &[""], &["nodes"]),
        r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
        r(&["create"], &[""], &["bindings", "pods/binding"]),
        r(&["patch", "update"], &[""], &["pods/status"]),
        r(READ, &[""], &["replicationcontrollers", "services"]),
        r(READ, &["apps", "extensions"], &["replicasets"]),
        r(READ, &["apps"], &["statefulsets"]),
        r(READ, &["policy"], &["poddisruptionbudgets"]),
        r(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        r(READ, &["storage.k8s.io"], &["csinodes"]),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["storage.k8s.io"], &["csidrivers"]),
        r(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
    ]
}

fn controller_manager() -> Vec<Rule> {
    vec![
        events(),
        r(&["create"], &["coordination.k8s.io"], &["leases"]),
        named(
            &["get", "update"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager"],
        ),
        r(&["create"], &[""], &["secrets", "serviceaccounts"]),
        r(&["delete"], &[""], &["secrets"]),
        r(
            &["get"],
            &[""],
            &["configmaps", "namespaces", "secrets", "serviceaccounts"],
        ),
        r(&["update"], &[""], &["secrets", "serviceaccounts"]),
        r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        r(&["list", "watch"], &["*"], &["*"]),
        r(&["create"], &[""], &["serviceaccounts/token"]),
    ]
}

/// The `system:controller:*` roles of the controllers berth runs (upstream's names).
fn controller_roles() -> Vec<(&'static str, Vec<Rule>)> {
    let apps = &["apps", "extensions"];
    vec![
        (
            "system:controller:clusterrole-aggregation-controller",
            vec![r(
                &["escalate", "get", "list", "patch", "update", "watch"],
                &[GROUP],
                &["clusterroles"],
            )],
        ),
        (
            "system:controller:cronjob-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &["batch"],
                    &["cronjobs"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["batch"],
                    &["jobs"],
                ),
                r(&["update"], &["batch"], &["cronjobs/status"]),
                r(&["update"], &["batch"], &["cronjobs/finalizers"]),
                r(&["delete", "list", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "system:controller:daemon-set-controller",
            vec![
                r(READ, apps, &["daemonsets"]),
                r(&["update"], apps, &["daemonsets/status"]),
                r(&["update"], apps, &["daemonsets/finalizers"]),
                r(&["list", "watch"], &[""], &["nodes"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                r(&["create"], &[""], &["pods/binding"]),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        (
            "system:controller:deployment-controller",
            vec![
                r(&["get", "list", "update", "watch"], apps, &["deployments"]),
                r(&["update"], apps, &["deployments/status"]),
                r(&["update"], apps, &["deployments/finalizers"]),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    apps,
                    &["replicasets"],
                ),
                r(&["get", "list", "update", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "system:controller:disruption-controller",
            vec![
                r(READ, apps, &["deployments"]),
                r(READ, apps, &["replicasets"]),
                r(READ, &[""], &["replicationcontrollers"]),
                r(READ, &["policy"], &["poddisruptionbudgets"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(&["update"], &["policy"], &["poddisruptionbudgets/status"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(&["get"], &["*"], &["*/scale"]),
                events(),
            ],
        ),
        (
            "system:controller:endpoint-controller",
            vec![
                r(READ, &[""], &["pods", "services"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &[""],
                    &["endpoints"],
                ),
                r(&["create"], &[""], &["endpoints/restricted"]),
                events(),
            ],
        ),
        (
            "system:controller:endpointslice-controller",
            vec![
                r(READ, &[""], &["nodes", "pods", "services"]),
                r(&["update"], &[""], &["services/finalizers"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        (
            "system:controller:generic-garbage-collector",
            vec![
                r(
                    &["delete", "get", "list", "patch", "update", "watch"],
                    &["*"],
                    &["*"],
                ),
                events(),
            ],
        ),
        (
            "system:controller:job-controller",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &["batch"],
                    &["jobs"],
                ),
                r(&["update"], &["batch"], &["jobs/status"]),
                r(&["update"], &["batch"], &["jobs/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "system:controller:namespace-controller",
            vec![
                r(&["delete", "get", "list", "watch"], &[""], &["namespaces"]),
                r(
                    &["update"],
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                ),
                r(
                    &["delete", "deletecollection", "get", "list", "watch"],
                    &["*"],
                    &["*"],
                ),
            ],
        ),
        (
            "system:controller:node-controller",
            vec![
                r(
                    &["delete", "get", "list", "patch", "update", "watch"],
                    &[""],
                    &["nodes"],
                ),
                r(&["patch", "update"], &[""], &["nodes/status"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        (
            "system:controller:pod-garbage-collector",
            vec![
                r(&["delete", "list", "watch"], &[""], &["pods"]),
                r(READ, &[""], &["nodes"]),
                r(&["patch"], &[""], &["pods/status"]),
            ],
        ),
        (
            "system:controller:replicaset-controller",
            vec![
                r(&["get", "list", "update", "watch"], apps, &["replicasets"]),
                r(&["update"], apps, &["replicasets/status"]),
                r(&["update"], apps, &["replicasets/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            "system:controller:service-account-controller",
            vec![r(&["create"], &[""], &["serviceaccounts"]), events()],
        ),
        (
            "system:controller:statefulset-controller",
            vec![
                r(&["list", "watch"], &[""], &["pods"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(&["update"], &["apps"], &["statefulsets/status"]),
                r(&["update"], &["apps"], &["statefulsets/finalizers"]),
                r(
                    &["create", "delete", "get", "patch", "update"],
                    &[""],
                    &["pods"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                r(
                    &["create", "get", "list", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(&["delete", "update"], &[""], &["persistentvolumeclaims"]),
                r(&["update"], &[""], &["pods/finalizers"]),
                events(),
            ],
        ),
        (
            "system:controller:ttl-after-finished-controller",
            vec![
                r(&["delete", "get", "list", "watch"], &["batch"], &["jobs"]),
                events(),
            ],
        ),
    ]
}

/// One bootstrap ClusterRoleBinding: (name, role, subjects as (kind, name, namespace)).
pub fn cluster_role_bindings() -> Vec<(String, String, Vec<(&'static str, String, String)>)> {
    let group = |g: &str| ("Group", g.to_owned(), String::new());
    let user = |u: &str| ("User", u.to_owned(), String::new());
    let mut out = vec![
        (
            "cluster-admin".into(),
            "cluster-admin".into(),
            vec![group(super::MASTERS)],
        ),
        (
            "system:basic-user".into(),
            "system:basic-user".into(),
            vec![group("system:authenticated")],
        ),
        (
            "system:discovery".into(),
            "system:discovery".into(),
            vec![group("system:authenticated")],
        ),
        (
            "system:public-info-viewer".into(),
            "system:public-info-viewer".into(),
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        (
            "system:monitoring".into(),
            "system:monitoring".into(),
            vec![group("system:monitoring")],
        ),
        (
            "system:service-account-issuer-discovery".into(),
            "system:service-account-issuer-discovery".into(),
            vec![group("system:serviceaccounts")],
        ),
        ("system:node".into(), "system:node".into(), Vec::new()),
        (
            "system:node-proxier".into(),
            "system:node-proxier".into(),
            vec![user("system:kube-proxy")],
        ),
        (
            "system:kube-dns".into(),
            "system:kube-dns".into(),
            vec![("ServiceAccount", "kube-dns".into(), "kube-system".into())],
        ),
        (
            "system:kube-scheduler".into(),
            "system:kube-scheduler".into(),
            vec![user("system:kube-scheduler")],
        ),
        (
            "system:volume-scheduler".into(),
            "system:volume-scheduler".into(),
            vec![user("system:kube-scheduler")],
        ),
        (
            "system:kube-controller-manager".into(),
            "system:kube-controller-manager".into(),
            vec![user("system:kube-controller-manager")],
        ),
    ];
    // Each controller's role to the ServiceAccount of its name in kube-system.
    for (name, _) in controller_roles() {
        let account = name.trim_start_matches("system:controller:");
        out.push((
            name.into(),
            name.into(),
            vec![("ServiceAccount", account.into(), "kube-system".into())],
        ));
    }
    out
}

fn bootstrap_meta(name: &str, extra_labels: &[(String, String)]) -> Value {
    let mut labels = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for (k, v) in extra_labels {
        labels[k] = json!(v);
    }
    json!({"name": name, "labels": labels, "annotations": {AUTOUPDATE: "true"}})
}

/// The ClusterRole objects of the bootstrap policy.
pub fn cluster_role_objects() -> Vec<Value> {
    cluster_roles()
        .into_iter()
        .map(|role| {
            let labels: Vec<(String, String)> = role
                .aggregate_to
                .iter()
                .map(|t| (format!("rbac.authorization.k8s.io/aggregate-to-{t}"), "true".into()))
                .collect();
            let mut obj = json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": bootstrap_meta(role.name, &labels),
                "rules": role.rules,
            });
            if let Some(target) = role.aggregates {
                obj["aggregationRule"] = json!({"clusterRoleSelectors": [
                    {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{target}"): "true"}}
                ]});
            }
            obj
        })
        .collect()
}

/// The ClusterRoleBinding objects of the bootstrap policy.
pub fn cluster_role_binding_objects() -> Vec<Value> {
    cluster_role_bindings()
        .into_iter()
        .map(|(name, role, subjects)| {
            let subjects: Vec<Value> = subjects
                .into_iter()
                .map(|(kind, name, namespace)| {
                    if kind == "ServiceAccount" {
                        json!({"kind": kind, "name": name, "namespace": namespace})
                    } else {
                        json!({"kind": kind, "apiGroup": GROUP, "name": name})
                    }
                })
                .collect();
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": bootstrap_meta(&name, &[]),
                "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
                "subjects": subjects,
            })
        })
        .collect()
}

fn autoupdate(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(AUTOUPDATE))
        .and_then(Value::as_str)
        != Some("false")
}

/// Adds to `existing` what `expected` has and it lacks: labels, annotations, rules
/// not covered, aggregation selectors, subjects. `None` when nothing is missing.
pub fn reconciled(existing: &Value, expected: &Value) -> Option<Value> {
    if !autoupdate(existing) {
        return None;
    }
    let mut out = existing.clone();
    for field in ["labels", "annotations"] {
        if let Some(want) = expected
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
        {
            for (k, v) in want {
                if out.pointer(&format!(
                    "/metadata/{field}/{}",
                    k.replace('~', "~0").replace('/', "~1")
                )) != Some(v)
                {
                    if !out["metadata"][field].is_object() {
                        out["metadata"][field] = json!({});
                    }
                    out["metadata"][field][k] = v.clone();
                }
            }
        }
    }
    if expected.get("rules").is_some() && expected.get("aggregationRule").is_none() {
        let have = Rule::list(existing.get("rules"));
        let want = Rule::list(expected.get("rules"));
        let covered = |rule: &Rule| uncovered(&have, std::slice::from_ref(rule)).is_empty();
        let missing: Vec<&Rule> = want.iter().filter(|r| !covered(r)).collect();
        if !missing.is_empty() {
            let mut rules = existing
                .get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            rules.extend(missing.into_iter().map(|r| json!(r)));
            out["rules"] = Value::Array(rules);
        }
    }
    if let Some(selectors) = expected
        .pointer("/aggregationRule/clusterRoleSelectors")
        .and_then(Value::as_array)
    {
        let mut have = out
            .pointer("/aggregationRule/clusterRoleSelectors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let before = have.len();
        for s in selectors {
            if !have.contains(s) {
                have.push(s.clone());
            }
        }
        if have.len() != before || out.get("aggregationRule").is_none() {
            out["aggregationRule"] = json!({"clusterRoleSelectors": have});
        }
    }
    if let Some(subjects) = expected.get("subjects").and_then(Value::as_array) {
        let mut have = out
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let before = have.len();
        for s in subjects {
            let same = |h: &Value| {
                h.get("kind") == s.get("kind")
                    && h.get("name") == s.get("name")
                    && h.get("namespace") == s.get("namespace")
            };
            if !have.iter().any(same) {
                have.push(s.clone());
            }
        }
        if have.len() != before {
            out["subjects"] = Value::Array(have);
        }
    }
    (out != *existing).then_some(out)
}

/// Creates or repairs the bootstrap policy (see the module docs).
pub async fn reconcile(api: &Arc<Api>) -> ApiResult<()> {
    for (plural, objects) in [
        ("clusterroles", cluster_role_objects()),
        ("clusterrolebindings", cluster_role_binding_objects()),
    ] {
        let Some(ctx) = api.internal(GROUP, plural, None) else {
            continue;
        };
        for expected in objects {
            let name = crate::apiserver::object::name(&expected).to_owned();
            match ctx.current(&name).await? {
                None => match rest::create_object(&ctx, expected).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                },
                Some((existing, _)) => {
                    // A binding whose roleRef changed cannot be updated: upstream
                    // deletes and recreates it; berth leaves a changed roleRef to its owner.
                    if plural == "clusterrolebindings"
                        && existing.get("roleRef") != expected.get("roleRef")
                    {
                        tracing::warn!(binding = %name, "bootstrap binding has another roleRef; left alone");
                        continue;
                    }
                    if reconciled(&existing, &expected).is_none() {
                        continue;
                    }
                    rest::update_loop(&ctx, &name, Part::Main, |current| {
                        Ok(reconciled(current, &expected).unwrap_or_else(|| current.clone()))
                    })
                    .await?;
                    tracing::info!(object = %name, kind = plural, "bootstrap RBAC policy reconciled");
                }
            }
        }
    }
    Ok(())
}
