//! The bootstrap ClusterRoles' rules, as upstream's `bootstrappolicy/policy.go` (its
//! `testdata/cluster-roles.yaml`), for the resources berth serves.

use super::super::Rule;
use super::controllers::controller_roles;

pub(super) const GROUP: &str = "rbac.authorization.k8s.io";

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
pub(super) const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const EVENTS: &[&str] = &["create", "patch", "update"];

/// A resource rule.
pub(super) fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
    let s = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    Rule {
        verbs: s(verbs),
        api_groups: s(groups),
        resources: s(resources),
        ..Rule::default()
    }
}

/// A resource rule limited to names.
pub(super) fn named(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
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

pub(super) fn events() -> Rule {
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
            "system:node-bootstrapper",
            vec![r(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![r(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:kube-apiserver-client-approver",
            vec![approve("kubernetes.io/kube-apiserver-client")],
        ),
        role(
            "system:certificates.k8s.io:kube-apiserver-client-kubelet-approver",
            vec![approve("kubernetes.io/kube-apiserver-client-kubelet")],
        ),
        role(
            "system:certificates.k8s.io:kubelet-serving-approver",
            vec![approve("kubernetes.io/kubelet-serving")],
        ),
        role(
            "system:certificates.k8s.io:legacy-unknown-approver",
            vec![approve("kubernetes.io/legacy-unknown")],
        ),
        role(
            "system:kubelet-api-admin",
            vec![
                r(READ, &[""], &["nodes"]),
                r(&["proxy"], &[""], &["nodes"]),
                r(
                    &["*"],
                    &[""],
                    &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats"],
                ),
            ],
        ),
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
        // What berth's agent reads to serve cluster DNS besides Services and
        // EndpointSlices: its configuration.
        role(
            "system:berth:node-dns",
            vec![named(READ, &[""], &["configmaps"], &["berth-dns"])],
        ),
        // berth's agent enforces NetworkPolicy for its node's pods (as a policy
        // agent such as Calico's does): the policies, namespaces and every pod (the
        // peers), and events about policies it cannot enforce. Bound to the
        // `kube-system/berth-network-policy` ServiceAccount, whose tokens nodes may
        // request (like k3s' separate `system:k3s-controller` identity).
        role(
            "system:berth:node-network-policy",
            vec![
                r(&["list", "watch"], &[""], &["pods", "namespaces"]),
                r(
                    &["list", "watch"],
                    &["networking.k8s.io"],
                    &["networkpolicies"],
                ),
                events(),
            ],
        ),
        // berth's agent provisions, deletes and expands the volumes of its node's CSI
        // drivers (external-provisioner's node-deployment mode and external-resizer
        // run inside it): their roles, for the nodes.
        role(
            "system:berth:node-volumes",
            vec![
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(
                    &["patch", "update"],
                    &[""],
                    &["persistentvolumeclaims/status"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["storage.k8s.io"],
                    &["csistoragecapacities"],
                ),
                events(),
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

/// `approve` on one signer (the `system:certificates.k8s.io:*-approver` roles).
fn approve(signer: &str) -> Rule {
    named(
        &["approve"],
        &["certificates.k8s.io"],
        &["signers"],
        &[signer],
    )
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
