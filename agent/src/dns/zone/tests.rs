use super::*;
use serde_json::json;

pub(crate) fn service(ns: &str, name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("service")
}

/// A slice of `svc` with endpoints `(ip, hostname, ready)` and ports `(name, port)`.
pub(crate) fn slice(
    ns: &str,
    svc: &str,
    endpoints: &[(&str, Option<&str>, bool)],
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, host, ready)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {crate::services::SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
    .expect("slice")
}

fn a(zone: &Zone, name: &str) -> Vec<Ipv4Addr> {
    match zone.lookup(name) {
        Lookup::Node(n) => n.a.clone(),
        other => panic!("{name}: expected records, got {other:?}"),
    }
}

fn srv(zone: &Zone, name: &str) -> Vec<Srv> {
    match zone.lookup(name) {
        Lookup::Node(n) => n.srv.clone(),
        other => panic!("{name}: expected records, got {other:?}"),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

#[test]
fn cluster_ip_service_a_srv_and_ptr() {
    let mut zone = Zone::new("cluster.local");
    let svc = service(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"], "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"port": 9000},
        ]}),
    );
    zone.set_service("default", "web", Some(&svc), &[]);
    assert_eq!(
        a(&zone, "web.default.svc.cluster.local"),
        vec![ip("10.96.0.50")]
    );
    assert_eq!(
        srv(&zone, "_http._tcp.web.default.svc.cluster.local"),
        vec![Srv {
            priority: 0,
            weight: 100,
            port: 80,
            target: "web.default.svc.cluster.local".into()
        }]
    );
    assert_eq!(
        srv(&zone, "_dns._udp.web.default.svc.cluster.local")[0].port,
        53
    );
    assert_eq!(
        zone.lookup("_dns._tcp.web.default.svc.cluster.local"),
        Lookup::NxDomain,
        "the port is UDP only"
    );
    assert_eq!(
        zone.lookup("_tcp.web.default.svc.cluster.local"),
        Lookup::Empty
    );
    assert_eq!(zone.lookup("default.svc.cluster.local"), Lookup::Empty);
    assert_eq!(zone.lookup("svc.cluster.local"), Lookup::Empty);
    assert_eq!(zone.lookup("cluster.local"), Lookup::Apex);
    assert_eq!(
        zone.lookup("nope.default.svc.cluster.local"),
        Lookup::NxDomain
    );
    assert_eq!(zone.lookup("web.other.svc.cluster.local"), Lookup::NxDomain);
    assert_eq!(zone.lookup("other.svc.cluster.local"), Lookup::NxDomain);
    assert_eq!(
        zone.reverse(ip("10.96.0.50")),
        ["web.default.svc.cluster.local"]
    );

    zone.set_service("default", "web", None, &[]);
    assert_eq!(
        zone.lookup("web.default.svc.cluster.local"),
        Lookup::NxDomain
    );
    assert_eq!(
        zone.lookup("default.svc.cluster.local"),
        Lookup::NxDomain,
        "the namespace name goes with its last Service"
    );
    assert!(zone.reverse(ip("10.96.0.50")).is_empty());
    assert_eq!(zone.services(), 0);
}

#[test]
fn headless_service_with_hostnames_like_a_statefulset() {
    let mut zone = Zone::new("cluster.local");
    let svc = service(
        "db",
        "pg",
        json!({"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}),
    );
    let s = slice(
        "db",
        "pg",
        &[
            ("10.77.0.10", Some("pg-0"), true),
            ("10.77.0.11", Some("pg-1"), true),
            ("10.77.0.12", None, true),
            ("10.77.0.13", Some("pg-3"), false),
        ],
        &[("sql", 15432)],
    );
    zone.set_service("db", "pg", Some(&svc), &[&s]);
    assert_eq!(
        a(&zone, "pg.db.svc.cluster.local"),
        vec![ip("10.77.0.10"), ip("10.77.0.11"), ip("10.77.0.12")],
        "ready endpoints only"
    );
    assert_eq!(
        a(&zone, "pg-0.pg.db.svc.cluster.local"),
        vec![ip("10.77.0.10")]
    );
    assert_eq!(
        a(&zone, "10-77-0-12.pg.db.svc.cluster.local"),
        vec![ip("10.77.0.12")],
        "no hostname: the dashed IP"
    );
    assert_eq!(
        zone.lookup("pg-3.pg.db.svc.cluster.local"),
        Lookup::NxDomain
    );
    let records = srv(&zone, "_sql._tcp.pg.db.svc.cluster.local");
    assert_eq!(records.len(), 3);
    assert!(
        records.iter().all(|r| r.port == 15432 && r.weight == 33),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.target == "pg-1.pg.db.svc.cluster.local")
    );
    assert_eq!(
        zone.reverse(ip("10.77.0.11")),
        ["pg-1.pg.db.svc.cluster.local"]
    );

    // publishNotReadyAddresses: every endpoint answers.
    let svc = service(
        "db",
        "pg",
        json!({"clusterIP": "None", "publishNotReadyAddresses": true, "ports": [{"name": "sql", "port": 5432}]}),
    );
    zone.set_service("db", "pg", Some(&svc), &[&s]);
    assert_eq!(
        a(&zone, "pg-3.pg.db.svc.cluster.local"),
        vec![ip("10.77.0.13")]
    );

    // No ready endpoint at all: the name does not exist (spec 2.4.1).
    let none_ready = slice("db", "pg", &[("10.77.0.10", Some("pg-0"), false)], &[]);
    let svc = service("db", "pg", json!({"clusterIP": "None"}));
    zone.set_service("db", "pg", Some(&svc), &[&none_ready]);
    assert_eq!(zone.lookup("pg.db.svc.cluster.local"), Lookup::NxDomain);
    assert_eq!(
        zone.lookup("pg-0.pg.db.svc.cluster.local"),
        Lookup::NxDomain
    );
    assert!(zone.reverse(ip("10.77.0.10")).is_empty());
}

#[test]
fn slices_of_other_services_and_ipv6_are_ignored() {
    let mut zone = Zone::new("cluster.local");
    let svc = service("ns", "a", json!({"clusterIP": "None"}));
    let other = slice("ns", "b", &[("10.77.0.20", None, true)], &[]);
    zone.set_service("ns", "a", Some(&svc), &[&other]);
    assert_eq!(zone.lookup("a.ns.svc.cluster.local"), Lookup::NxDomain);
}

#[test]
fn external_name_is_a_cname() {
    let mut zone = Zone::new("cluster.local");
    let svc = service(
        "default",
        "ext",
        json!({"type": "ExternalName", "externalName": "Www.Example.COM."}),
    );
    zone.set_service("default", "ext", Some(&svc), &[]);
    match zone.lookup("ext.default.svc.cluster.local") {
        Lookup::Node(n) => assert_eq!(n.cname.as_deref(), Some("www.example.com")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn version_and_pod_records() {
    let zone = Zone::new("Cluster.Local.");
    assert_eq!(zone.domain(), "cluster.local");
    match zone.lookup("dns-version.cluster.local") {
        Lookup::Node(n) => assert_eq!(n.txt, vec![SCHEMA_VERSION.to_owned()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a(&zone, "10-77-0-5.default.pod.cluster.local"),
        vec![ip("10.77.0.5")]
    );
    assert_eq!(zone.lookup("default.pod.cluster.local"), Lookup::Empty);
    assert_eq!(zone.lookup("pod.cluster.local"), Lookup::Empty);
    assert_eq!(
        zone.lookup("10-77-0-500.default.pod.cluster.local"),
        Lookup::NxDomain
    );
    assert_eq!(
        zone.lookup("x.10-77-0-5.default.pod.cluster.local"),
        Lookup::NxDomain
    );
    assert!(zone.contains("cluster.local"));
    assert!(zone.contains("a.cluster.local"));
    assert!(!zone.contains("xcluster.local"));
    assert!(!zone.contains("example.com"));
}

#[test]
fn unchanged_service_keeps_the_serial() {
    let mut zone = Zone::new("cluster.local");
    let svc = service("default", "web", json!({"clusterIP": "10.96.0.50"}));
    zone.set_service("default", "web", Some(&svc), &[]);
    let serial = zone.serial();
    zone.set_service("default", "web", Some(&svc), &[]);
    assert_eq!(zone.serial(), serial);
    let moved = service("default", "web", json!({"clusterIP": "10.96.0.51"}));
    zone.set_service("default", "web", Some(&moved), &[]);
    assert_ne!(zone.serial(), serial);
    assert_eq!(
        a(&zone, "web.default.svc.cluster.local"),
        vec![ip("10.96.0.51")]
    );
    assert!(zone.reverse(ip("10.96.0.50")).is_empty());
}
