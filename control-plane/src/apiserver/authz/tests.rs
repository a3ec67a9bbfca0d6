//! Unit tests of request attributes, rule matching, the RBAC authorizer over fixed
//! objects, and the escalation arithmetic.

use axum::http::Method;
use serde_json::{Value, json};

use super::rbac::Rbac;
use super::rules::{Rule, uncovered};
use super::*;
use crate::apiserver::request::parse_path;

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..UserInfo::default()
    }
}

fn attrs(u: &UserInfo, method: Method, uri: &str) -> Attributes {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    Attributes::from_request(
        u.clone(),
        &method,
        path,
        parse_path(path).as_ref(),
        Some(query),
    )
}

#[test]
fn attributes_follow_request_info() {
    let alice = user("alice", &["system:authenticated"]);
    let a = attrs(&alice, Method::GET, "/api/v1/namespaces/default/pods");
    assert_eq!(
        (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
        ("list", "pods", "default")
    );
    let a = attrs(
        &alice,
        Method::GET,
        "/api/v1/namespaces/default/pods?watch=true",
    );
    assert_eq!(a.verb, "watch");
    let a = attrs(&alice, Method::GET, "/api/v1/watch/namespaces/default/pods");
    assert_eq!(a.verb, "watch");
    let a = attrs(
        &alice,
        Method::GET,
        "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dweb",
    );
    assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "web"));
    let a = attrs(
        &alice,
        Method::GET,
        "/api/v1/namespaces/default/pods/web/log",
    );
    assert_eq!(
        (a.verb.as_str(), a.subresource.as_str(), a.name.as_str()),
        ("get", "log", "web")
    );
    let a = attrs(
        &alice,
        Method::DELETE,
        "/apis/apps/v1/namespaces/x/deployments",
    );
    assert_eq!(
        (a.verb.as_str(), a.api_group.as_str()),
        ("deletecollection", "apps")
    );
    let a = attrs(
        &alice,
        Method::PATCH,
        "/apis/apps/v1/namespaces/x/deployments/d/scale",
    );
    assert_eq!(
        (a.verb.as_str(), a.subresource.as_str()),
        ("patch", "scale")
    );
    // A namespace is in itself.
    let a = attrs(&alice, Method::GET, "/api/v1/namespaces/kube-system");
    assert_eq!(
        (a.resource.as_str(), a.namespace.as_str(), a.name.as_str()),
        ("namespaces", "kube-system", "kube-system")
    );
    // Discovery and other paths are non-resource requests.
    for path in [
        "/api",
        "/api/v1",
        "/apis/apps/v1",
        "/apis/apps",
        "/healthz",
        "/metrics",
    ] {
        let a = attrs(&alice, Method::GET, path);
        assert!(!a.resource_request, "{path}");
        assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", path));
    }
    assert_eq!(attrs(&alice, Method::POST, "/apis/x").verb, "post");
}

#[test]
fn forbidden_messages_are_kube_apiservers() {
    let alice = user("alice", &[]);
    let a = attrs(&alice, Method::GET, "/api/v1/namespaces/default/pods");
    let e = a.forbidden("");
    assert_eq!(e.code, 403);
    assert_eq!(e.reason, "Forbidden");
    assert_eq!(
        e.message,
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    let a = attrs(&alice, Method::GET, "/apis/apps/v1/deployments");
    assert_eq!(
        a.forbidden("").message,
        "deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
    );
    let a = attrs(&alice, Method::GET, "/api/v1/namespaces/ns/pods/web/exec");
    assert_eq!(
        a.forbidden("").message,
        "pods \"web\" is forbidden: User \"alice\" cannot get resource \"pods/exec\" in API group \"\" in the namespace \"ns\""
    );
    let a = attrs(&alice, Method::GET, "/metrics");
    assert_eq!(
        a.forbidden("").message,
        "forbidden: User \"alice\" cannot get path \"/metrics\""
    );
    assert_eq!(
        a.forbidden("RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found")
            .message,
        "forbidden: User \"alice\" cannot get path \"/metrics\": RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found"
    );
}

fn rule(v: Value) -> Rule {
    serde_json::from_value(v).expect("rule")
}

#[test]
fn rules_match_verbs_groups_resources_names_and_urls() {
    let alice = user("alice", &[]);
    let get_pod = attrs(&alice, Method::GET, "/api/v1/namespaces/d/pods/web");
    let logs = attrs(&alice, Method::GET, "/api/v1/namespaces/d/pods/web/log");
    let scale = attrs(
        &alice,
        Method::GET,
        "/apis/apps/v1/namespaces/d/deployments/x/scale",
    );
    let pods = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
    assert!(pods.allows(&get_pod));
    assert!(!pods.allows(&logs), "pods does not cover pods/log");
    assert!(
        rule(json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods/log"]})).allows(&logs)
    );
    assert!(
        rule(json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*/scale"]}))
            .allows(&scale)
    );
    assert!(
        !rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["*/scale"]}))
            .allows(&scale)
    );
    assert!(
        !rule(json!({"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}))
            .allows(&get_pod)
    );
    let named = rule(
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["web"]}),
    );
    assert!(named.allows(&get_pod));
    assert!(!named.allows(&attrs(
        &alice,
        Method::GET,
        "/api/v1/namespaces/d/pods/other"
    )));
    assert!(!named.allows(&attrs(&alice, Method::GET, "/api/v1/namespaces/d/pods")));
    let health = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz/*", "/version"]}));
    assert!(health.allows(&attrs(&alice, Method::GET, "/healthz/etcd")));
    assert!(health.allows(&attrs(&alice, Method::GET, "/version")));
    assert!(!health.allows(&attrs(&alice, Method::GET, "/versions")));
    assert!(!health.allows(&get_pod), "URL rules never match resources");
}

fn objects() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/registry/rbac.authorization.k8s.io/clusterroles/view",
            json!({"rules": [{"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"]}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/clusterroles/discovery",
            json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/clusterrolebindings/discovery",
            json!({"roleRef": {"kind": "ClusterRole", "name": "discovery"},
                   "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/rolebindings/dev/alice-view",
            json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/roles/dev/deployer",
            json!({"rules": [{"verbs": ["create"], "apiGroups": ["apps"], "resources": ["deployments"]}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/rolebindings/dev/robots",
            json!({"roleRef": {"kind": "Role", "name": "deployer"},
                   "subjects": [{"kind": "ServiceAccount", "name": "robot"},
                                {"kind": "Group", "name": "system:serviceaccounts:ci"}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/rolebindings/dev/dangling",
            json!({"roleRef": {"kind": "ClusterRole", "name": "gone"},
                   "subjects": [{"kind": "User", "name": "bob"}]}),
        ),
    ]
}

#[test]
fn rbac_grants_through_bindings_only_where_bound() {
    let rbac = Rbac::from_objects(&objects());
    let alice = user("alice", &["system:authenticated"]);
    let d = rbac.authorize(&attrs(&alice, Method::GET, "/api/v1/namespaces/dev/pods"));
    assert!(d.allowed);
    assert_eq!(
        d.reason,
        "RBAC: allowed by RoleBinding \"alice-view/dev\" of ClusterRole \"view\" to User \"alice\""
    );
    assert!(
        !rbac
            .authorize(&attrs(&alice, Method::GET, "/api/v1/namespaces/prod/pods"))
            .allowed
    );
    assert!(
        !rbac
            .authorize(&attrs(
                &alice,
                Method::DELETE,
                "/api/v1/namespaces/dev/pods/x"
            ))
            .allowed
    );
    assert!(
        !rbac
            .authorize(&attrs(&alice, Method::GET, "/api/v1/pods"))
            .allowed,
        "not cluster-wide"
    );
    assert!(
        rbac.authorize(&attrs(&alice, Method::GET, "/api/v1"))
            .allowed,
        "discovery via group"
    );
    // ServiceAccounts: by name in the binding's namespace, and by group.
    let robot = user("system:serviceaccount:dev:robot", &[]);
    let create = "/apis/apps/v1/namespaces/dev/deployments";
    assert!(rbac.authorize(&attrs(&robot, Method::POST, create)).allowed);
    let elsewhere = user("system:serviceaccount:other:robot", &[]);
    assert!(
        !rbac
            .authorize(&attrs(&elsewhere, Method::POST, create))
            .allowed
    );
    let ci = user(
        "system:serviceaccount:ci:builder",
        &["system:serviceaccounts:ci"],
    );
    assert!(rbac.authorize(&attrs(&ci, Method::POST, create)).allowed);
    // A binding to a missing role: denied, and the reason says why.
    let bob = user("bob", &[]);
    let d = rbac.authorize(&attrs(&bob, Method::GET, "/api/v1/namespaces/dev/pods"));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
    );
    // Rules for a namespace: cluster bindings' and the namespace's.
    let set = rbac.rules_for(&alice, "dev");
    assert_eq!(set.rules.len(), 2);
    assert!(set.errors.is_empty());
}

#[test]
fn bindings_are_found_by_subject_and_follow_changes() {
    let rbac = Rbac::from_objects(&objects());
    let key = |n: usize| format!("/registry/rbac.authorization.k8s.io/rolebindings/dev/other-{n}");
    for n in 0..500 {
        rbac.apply(
            &key(n),
            Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                         "subjects": [{"kind": "User", "name": format!("user-{n}")}]})),
        );
    }
    let pods = "/api/v1/namespaces/dev/pods";
    let carol = user("carol", &[]);
    let user_7 = user("user-7", &[]);
    assert!(!rbac.authorize(&attrs(&carol, Method::GET, pods)).allowed);
    let d = rbac.authorize(&attrs(&user_7, Method::GET, pods));
    assert!(d.allowed);
    assert!(d.reason.contains("\"other-7/dev\""), "{}", d.reason);
    // The binding now names carol instead: user-7 loses it, carol gains it.
    rbac.apply(
        &key(7),
        Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                     "subjects": [{"kind": "User", "name": "carol"}]})),
    );
    assert!(!rbac.authorize(&attrs(&user_7, Method::GET, pods)).allowed);
    assert!(rbac.authorize(&attrs(&carol, Method::GET, pods)).allowed);
    // Two subjects of one binding that both apply: the binding counts once.
    rbac.apply(
        &key(8),
        Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                     "subjects": [{"kind": "User", "name": "carol"},
                                  {"kind": "Group", "name": "readers"}]})),
    );
    let carol_reader = user("carol", &["readers"]);
    assert_eq!(rbac.rules_for(&carol_reader, "dev").rules.len(), 2);
    // Deleted: carol keeps only what other-8 gives her.
    rbac.apply(&key(7), None);
    let d = rbac.authorize(&attrs(&carol, Method::GET, pods));
    assert!(d.reason.contains("\"other-8/dev\""), "{}", d.reason);
    rbac.apply(&key(8), None);
    assert!(!rbac.authorize(&attrs(&carol, Method::GET, pods)).allowed);
    // A ServiceAccount subject without a namespace is in the binding's namespace; in a
    // cluster binding it names no one.
    rbac.apply(
        "/registry/rbac.authorization.k8s.io/clusterrolebindings/sa-no-ns",
        Some(&json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                     "subjects": [{"kind": "ServiceAccount", "name": "robot"}]})),
    );
    let robot = user("system:serviceaccount:dev:robot", &[]);
    assert!(
        !rbac
            .authorize(&attrs(&robot, Method::GET, "/api/v1/namespaces/prod/pods"))
            .allowed
    );
}

#[test]
fn masters_bypass_rbac() {
    let mode = RbacMode(std::sync::Arc::new(Rbac::from_objects(&[])), None);
    let admin = user("kubernetes-admin", &[MASTERS]);
    assert!(
        mode.authorize(&attrs(&admin, Method::DELETE, "/api/v1/nodes/x"))
            .allowed
    );
    let nobody = user("nobody", &["system:authenticated"]);
    assert!(
        !mode
            .authorize(&attrs(&nobody, Method::GET, "/api/v1/nodes"))
            .allowed
    );
}

#[test]
fn escalation_names_the_missing_rules_compactly() {
    let owner = vec![rule(
        json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/log"]}),
    )];
    let wanted = vec![rule(
        json!({"verbs": ["get", "list", "delete", "patch"], "apiGroups": [""], "resources": ["pods", "secrets"]}),
    )];
    assert_eq!(
        uncovered(&owner, &wanted),
        vec![
            "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\" \"patch\"]}",
            "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\" \"delete\" \"patch\"]}",
        ]
    );
    let wanted = vec![rule(
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}),
    )];
    assert!(
        uncovered(&owner, &wanted).is_empty(),
        "*/log covers pods/log"
    );
    let admin = vec![Rule::all_resources(), Rule::all_non_resource()];
    assert!(uncovered(&admin, &admin).is_empty());
    assert_eq!(
        uncovered(&owner, &admin),
        vec![
            "{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}",
            "{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}",
        ]
    );
    let names = vec![rule(
        json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]}),
    )];
    assert!(
        uncovered(&owner, &names).is_empty(),
        "all names cover one name"
    );
    assert_eq!(
        uncovered(&names, &owner),
        vec![
            "{APIGroups:[\"\"], Resources:[\"*/log\"], Verbs:[\"get\" \"list\"]}",
            "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"get\" \"list\"]}",
        ]
    );
    let urls = vec![rule(
        json!({"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]}),
    )];
    let want = vec![rule(
        json!({"verbs": ["get"], "nonResourceURLs": ["/healthz/etcd", "/metrics"]}),
    )];
    assert_eq!(
        uncovered(&urls, &want),
        vec!["{NonResourceURLs:[\"/metrics\"], Verbs:[\"get\"]}"]
    );
}

#[test]
fn bootstrap_policy_reconciles_without_removing() {
    use super::bootstrap::{cluster_role_binding_objects, cluster_role_objects, reconciled};
    let roles = cluster_role_objects();
    let view = roles
        .iter()
        .find(|r| r["metadata"]["name"] == "system:aggregate-to-view")
        .expect("aggregate-to-view");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert!(reconciled(view, view).is_none(), "nothing missing");
    // A rule removed by hand comes back; an added one stays.
    let mut edited = view.clone();
    let rules = edited["rules"].as_array_mut().expect("rules");
    rules.remove(0);
    rules.push(json!({"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["things"]}));
    let fixed = reconciled(&edited, view).expect("repaired");
    let fixed_rules = Rule::list(fixed.get("rules"));
    assert!(uncovered(&fixed_rules, &Rule::list(view.get("rules"))).is_empty());
    assert!(fixed_rules.iter().any(|r| r.api_groups == ["example.com"]));
    // autoupdate: "false" leaves it alone.
    edited["metadata"]["annotations"][bootstrap::AUTOUPDATE] = json!("false");
    assert!(reconciled(&edited, view).is_none());
    // Bindings get back missing subjects.
    let bindings = cluster_role_binding_objects();
    let admin = bindings
        .iter()
        .find(|b| b["metadata"]["name"] == "cluster-admin")
        .expect("cluster-admin binding");
    assert_eq!(admin["subjects"][0]["name"], MASTERS);
    let mut emptied = admin.clone();
    emptied["subjects"] = json!([]);
    assert_eq!(
        reconciled(&emptied, admin).expect("repaired")["subjects"],
        admin["subjects"]
    );
}

#[test]
fn impersonation_needs_the_impersonate_verb_on_each_part() {
    use axum::http::{HeaderMap, HeaderValue};
    let rbac = Rbac::from_objects(&[
        (
            "/registry/rbac.authorization.k8s.io/clusterroles/impersonate-ci",
            json!({"rules": [{"verbs": ["impersonate"], "apiGroups": [""], "resources": ["serviceaccounts"]}]}),
        ),
        (
            "/registry/rbac.authorization.k8s.io/rolebindings/ci/alice",
            json!({"roleRef": {"kind": "ClusterRole", "name": "impersonate-ci"},
                   "subjects": [{"kind": "User", "name": "alice"}]}),
        ),
    ]);
    let mode = RbacMode(std::sync::Arc::new(rbac), None);
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    };
    let alice = user("alice", &["system:authenticated"]);
    // No headers: the requester.
    let same = impersonation::apply(&mode, alice.clone(), &HeaderMap::new()).expect("no headers");
    assert_eq!(same, alice);
    // A ServiceAccount in the namespace alice may impersonate in, with its groups.
    let sa = impersonation::apply(
        &mode,
        alice.clone(),
        &headers(&[("impersonate-user", "system:serviceaccount:ci:builder")]),
    )
    .expect("allowed");
    assert_eq!(sa.name, "system:serviceaccount:ci:builder");
    assert_eq!(
        sa.groups,
        [
            "system:serviceaccounts",
            "system:serviceaccounts:ci",
            "system:authenticated"
        ]
    );
    let err = impersonation::apply(
        &mode,
        alice.clone(),
        &headers(&[("impersonate-user", "system:serviceaccount:prod:builder")]),
    )
    .expect_err("another namespace");
    assert_eq!(
        err.message,
        "serviceaccounts \"builder\" is forbidden: User \"alice\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"prod\""
    );
    let err = impersonation::apply(&mode, alice, &headers(&[("impersonate-user", "bob")]))
        .expect_err("users");
    assert_eq!(err.code, 403);
    // system:masters may be anyone, with groups and extras.
    let admin = user("admin", &[MASTERS]);
    let who = impersonation::apply(
        &mode,
        admin.clone(),
        &headers(&[
            ("impersonate-user", "bob"),
            ("impersonate-group", "devs"),
            ("impersonate-group", "ops"),
            ("impersonate-extra-scopes", "view"),
        ]),
    )
    .expect("masters impersonate");
    assert_eq!(who.name, "bob");
    assert_eq!(who.groups, ["devs", "ops", "system:authenticated"]);
    assert_eq!(who.extra["scopes"], ["view"]);
    // Groups without a user are an error.
    assert!(
        impersonation::apply(&mode, admin, &headers(&[("impersonate-group", "devs")])).is_err()
    );
}
