//! The `system:controller:*` roles (upstream's `bootstrappolicy/controller_policy.go`,
//! `testdata/controller-roles.yaml`) of the controllers berth runs.

use super::super::Rule;
use super::roles::{GROUP, READ, events, r};

/// The `system:controller:*` roles of the controllers berth runs (upstream's names).
pub(super) fn controller_roles() -> Vec<(&'static str, Vec<Rule>)> {
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
