//! The `system:controller:*` roles (upstream's `bootstrappolicy/controller_policy.go`,
//! `testdata/controller-roles.yaml`) of the controllers berth runs.

use super::super::Rule;
use super::roles::{GROUP, READ, events, named, r};

/// The `system:controller:*` roles of the controllers berth runs (upstream's names).
pub(super) fn controller_roles() -> Vec<(&'static str, Vec<Rule>)> {
    let apps = &["apps", "extensions"];
    vec![
        (
            // berth's approver also approves kubelet-serving requests a node makes for
            // itself (upstream leaves those to an external approver), so its role
            // approves that signer too.
            "system:controller:certificate-controller",
            vec![
                r(
                    &["delete", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                r(
                    &["update"],
                    &["certificates.k8s.io"],
                    &[
                        "certificatesigningrequests/approval",
                        "certificatesigningrequests/status",
                    ],
                ),
                named(
                    &["approve"],
                    &["certificates.k8s.io"],
                    &["signers"],
                    &[
                        "kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving",
                    ],
                ),
                named(
                    &["sign"],
                    &["certificates.k8s.io"],
                    &["signers"],
                    &[
                        "kubernetes.io/kube-apiserver-client",
                        "kubernetes.io/kube-apiserver-client-kubelet",
                        "kubernetes.io/kubelet-serving",
                        "kubernetes.io/legacy-unknown",
                    ],
                ),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                events(),
            ],
        ),
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
            "system:controller:ephemeral-volume-controller",
            vec![
                r(&["get", "list", "watch"], &[""], &["pods"]),
                r(&["update"], &[""], &["pods/finalizers"]),
                r(
                    &["create", "get", "list", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
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
            "system:controller:horizontal-pod-autoscaler",
            vec![
                r(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(
                    &["update"],
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                ),
                r(&["get", "update"], &["*"], &["*/scale"]),
                r(&["list", "watch"], &[""], &["pods"]),
                r(&["list", "watch"], &["metrics.k8s.io"], &["pods"]),
                r(READ, &["custom.metrics.k8s.io"], &["*"]),
                r(READ, &["external.metrics.k8s.io"], &["*"]),
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
            "system:controller:persistent-volume-binder",
            vec![
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(&["update"], &[""], &["persistentvolumes/status"]),
                r(
                    &["get", "list", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(&["update"], &[""], &["persistentvolumeclaims/status"]),
                r(
                    &["create", "delete", "get", "list", "watch"],
                    &[""],
                    &["pods"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &["create", "delete", "get", "update"],
                    &[""],
                    &["endpoints"],
                ),
                r(&["create", "delete", "get"], &[""], &["services"]),
                r(&["get"], &[""], &["secrets"]),
                r(&["get", "list"], &[""], &["nodes"]),
                r(&["watch"], &[""], &["events"]),
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
            "system:controller:pv-protection-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                events(),
            ],
        ),
        (
            "system:controller:pvc-protection-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(&["update"], &[""], &["persistentvolumeclaims/status"]),
                r(&["get", "list", "watch"], &[""], &["pods"]),
                events(),
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
            "system:controller:replication-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[""],
                    &["replicationcontrollers"],
                ),
                r(&["update"], &[""], &["replicationcontrollers/status"]),
                r(&["update"], &[""], &["replicationcontrollers/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        (
            // Quota counts anything, so it may list and watch everything.
            "system:controller:resourcequota-controller",
            vec![
                r(&["list", "watch"], &["*"], &["*"]),
                r(&["update"], &[""], &["resourcequotas/status"]),
                events(),
            ],
        ),
        (
            "system:controller:root-ca-cert-publisher",
            vec![r(&["create", "update"], &[""], &["configmaps"]), events()],
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
            "system:controller:service-controller",
            vec![
                r(&["get", "list", "watch"], &[""], &["services"]),
                r(&["patch", "update"], &[""], &["services/status"]),
                r(&["list", "watch"], &[""], &["nodes"]),
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
