//! The plan copies objects and live Events under kube-apiserver's keys, skips master
//! leases and expired Events, and refuses the whole migration for a key etcd cannot
//! hold.

use std::sync::Arc;

use super::*;

fn kv(key: &str, value: &str, lease: Option<LeaseId>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Arc::from(value.as_bytes()),
        create_revision: 1,
        mod_revision: 1,
        lease,
    }
}

fn lease(expires_unix_ms: u64) -> Lease {
    Lease {
        ttl: Duration::from_secs(3660),
        expires_unix_ms,
    }
}

#[test]
fn objects_and_live_events_are_copied_master_leases_and_expired_events_skipped() {
    let layout = Layout::new("/registry").expect("prefix");
    let kvs = [
        kv("/registry/apps/deployments/ns/web", "d", None),
        kv("/registry/core/configmaps/ns/a", "aa", None),
        kv(
            "/registry/core/configmaps/ns/b",
            "k8s:enc:aescbc:v1:key:xx",
            None,
        ),
        kv("/registry/core/events/ns/new", "e", Some(2)),
        kv("/registry/core/events/ns/old", "e", Some(1)),
        kv("/registry/core/events/ns/gone", "e", Some(9)),
        kv("/registry/core/masterleases/127.0.0.1", "m", Some(3)),
        kv("/registry/core/ranges/serviceips", "r", None),
        kv("/registry/stable.example.com/crontabs/ns/c", "c", None),
    ];
    let leases = BTreeMap::from([(1, lease(1_000)), (2, lease(5_000)), (3, lease(5_000))]);
    let plan = plan(&kvs, &leases, &layout, 2_000).expect("plan");
    let keys: Vec<_> = plan
        .copy
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "/registry/apps/deployments/ns/web",
            "/registry/configmaps/ns/a",
            "/registry/configmaps/ns/b",
            "/registry/events/ns/new",
            "/registry/ranges/serviceips",
            "/registry/stable.example.com/crontabs/ns/c",
        ]
    );
    assert_eq!(
        plan.resources.get("configmaps"),
        Some(&Tally {
            keys: 2,
            bytes: 2 + 24
        })
    );
    assert!(plan.resources.contains_key("deployments.apps"));
    assert!(plan.resources.contains_key("crontabs.stable.example.com"));
    assert_eq!(plan.leases, BTreeMap::from([(2, 5_000)]));
    assert_eq!(
        (
            plan.leased_keys,
            plan.master_leases,
            plan.expired,
            plan.encrypted
        ),
        (1, 1, 2, 1)
    );
}

#[test]
fn a_key_etcd_cannot_hold_stops_the_migration() {
    let layout = Layout::new("/registry").expect("prefix");
    let kvs = [
        kv("/registry/core/configmaps/ns/a", "a", None),
        kv("/registry/nodot/things/x", "x", None),
    ];
    let err = plan(&kvs, &BTreeMap::new(), &layout, 0).expect_err("refused");
    assert!(matches!(err, MigrateError::Key(_)), "{err}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
}

#[test]
fn master_leases_are_where_the_endpoint_reconciler_keeps_them() {
    assert_eq!(MASTER_LEASES, crate::apiserver::endpoint_reconciler::LEASES);
}
