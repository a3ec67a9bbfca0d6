//! The MVCC store's contract, run against both backends from one set of tests
//! ([`on_both_backends!`]): the embedded store (redb in a temp dir) and etcd (a real
//! `etcd` started for the test, [`berth_testkit::Etcd`]) — compare-and-swap, reads at
//! past revisions, gap-free watches, compaction (→ `Compacted`), leases, concurrent
//! writers, the revision a consistent read must reflect. Revisions are counted from the
//! store's revision at the start (a fresh etcd is at 1, the embedded store at 0). Then
//! what only one backend has: reopening the embedded store and `kill -9` of its writer;
//! etcd's kube-apiserver key layout as `etcdctl` sees it, progress notifications past a
//! write outside the prefix, a store's own writes (which reach its watches ahead of
//! etcd's) interleaved with another server's, TLS with client certificates, a watch that
//! outlives an etcd restart, and `kill -9` of one of three members during a write loop.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_control_plane::store::etcd::{EtcdStore, Options};
use berth_control_plane::store::redb::RedbStore;
use berth_control_plane::store::{
    Event, EventKind, ListOptions, Store, StoreError, WatchStream, Watched,
};
use berth_testkit::{Etcd, EtcdTls};

/// A store under test and what it lives on. Fields drop in order: the store first.
struct Backend {
    store: Arc<dyn Store>,
    /// The embedded store itself, for what only it has (its commit counter).
    redb: Option<Arc<RedbStore>>,
    _dir: tempfile::TempDir,
    _etcd: Option<Etcd>,
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).expect("the store opens")
}

fn redb_backend() -> Backend {
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = Arc::new(open(&dir));
    Backend {
        store: redb.clone(),
        redb: Some(redb),
        _dir: dir,
        _etcd: None,
    }
}

fn etcd_options(etcd: &Etcd) -> Options {
    Options {
        endpoints: etcd.endpoints(),
        ..Options::default()
    }
}

/// A one-member etcd and the store on it; `None` (recorded as skipped) without etcd.
async fn etcd_backend() -> Option<Backend> {
    if !Etcd::available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start(dir.path());
    let store = EtcdStore::connect(&etcd_options(&etcd))
        .await
        .expect("the etcd store connects");
    Some(Backend {
        store: Arc::new(store),
        redb: None,
        _dir: dir,
        _etcd: Some(etcd),
    })
}

/// Instantiates each named test body (an `async fn(Backend)`) once per backend:
/// `<name>::redb` and `<name>::etcd`.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn redb() {
                super::$test(super::redb_backend()).await;
            }

            #[tokio::test]
            async fn etcd() {
                if let Some(backend) = super::etcd_backend().await {
                    super::$test(backend).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    create_update_delete_are_compare_and_swap,
    list_pages_by_prefix_now_and_at_a_past_revision,
    watch_replays_then_follows_in_order_without_gaps,
    compaction_discards_history_and_expires_old_watches,
    a_lease_deletes_its_keys_when_it_expires,
    a_kept_alive_lease_keeps_its_keys_until_it_stops,
    concurrent_writers_get_one_revision_each,
    a_long_list_comes_whole,
    a_consistent_revision_covers_every_acknowledged_write,
    a_watch_without_prev_follows_and_keeps_the_revision_current,
);

fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).expect("utf-8 value")
}

async fn create_update_delete_are_compare_and_swap(b: Backend) {
    let store = b.store;
    let base = store.current_revision();
    let key = "/registry/core/pods/ns/a";
    let a = store
        .create(key.into(), b"v1".to_vec(), None)
        .await
        .expect("create");
    assert_eq!((a.mod_revision, a.create_revision), (base + 1, base + 1));
    assert_eq!(
        store.create(key.into(), b"x".to_vec(), None).await,
        Err(StoreError::AlreadyExists { key: key.into() })
    );
    let a2 = store
        .update(key.into(), b"v2".to_vec(), base + 1)
        .await
        .expect("update at the right revision");
    assert_eq!((a2.mod_revision, a2.create_revision), (base + 2, base + 1));
    // A stale revision is a conflict and changes nothing.
    let stale = store.update(key.into(), b"v3".to_vec(), base + 1).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { actual, .. }) if actual == base + 2),
        "{stale:?}"
    );
    assert_eq!(store.current_revision(), base + 2);
    assert!(matches!(
        store.delete(key.into(), Some(base + 1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = store
        .delete(key.into(), Some(base + 2))
        .await
        .expect("delete");
    assert_eq!(gone.mod_revision, base + 3);
    assert_eq!(text(&gone.value), "v2");
    assert_eq!(store.get(key, None).await.expect("get"), None);
    assert!(matches!(
        store.update(key.into(), b"v".to_vec(), base + 3).await,
        Err(StoreError::NotFound { .. })
    ));
    // Expecting revision 0 of an absent key is no way to create it.
    assert!(matches!(
        store.update(key.into(), b"v".to_vec(), 0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(key.into(), None).await,
        Err(StoreError::NotFound { .. })
    ));
    // Past revisions stay readable.
    let at1 = store.get(key, Some(base + 1)).await.expect("get at 1");
    assert_eq!(at1.map(|kv| text(&kv.value).to_owned()), Some("v1".into()));
    let at2 = store.get(key, Some(base + 2)).await.expect("get at 2");
    assert_eq!(at2.map(|kv| text(&kv.value).to_owned()), Some("v2".into()));
    assert!(matches!(
        store.get(key, Some(base + 9)).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn list_pages_by_prefix_now_and_at_a_past_revision(b: Backend) {
    let store = b.store;
    for i in 0..10 {
        store
            .create(
                format!("/registry/core/pods/ns/p{i}"),
                format!("{i}").into_bytes(),
                None,
            )
            .await
            .expect("create");
    }
    for other in ["/registry/core/pods2/x", "/registry/apps/pods/ns/x"] {
        store
            .create(other.into(), b"other prefix".to_vec(), None)
            .await
            .expect("create");
    }
    let at = store.current_revision();
    store
        .delete("/registry/core/pods/ns/p3".into(), None)
        .await
        .expect("delete");
    store
        .create("/registry/core/pods/ns/p99".into(), b"new".to_vec(), None)
        .await
        .expect("create");

    // Now: p3 gone, p99 there; pages of 4 chained by start_after.
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                "/registry/core/pods/",
                ListOptions {
                    revision: None,
                    start_after: after.clone(),
                    limit: Some(4),
                },
            )
            .await
            .expect("list");
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = page.kvs.last().map(|kv| kv.key.clone());
    }
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(!keys.contains(&"/registry/core/pods/ns/p3".to_owned()));
    assert!(keys.contains(&"/registry/core/pods/ns/p99".to_owned()));
    assert!(
        keys.iter()
            .all(|k| k.starts_with("/registry/core/pods/ns/")),
        "{keys:?}"
    );

    // At the earlier revision, in pages too: p3 there, p99 not.
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                "/registry/core/pods/",
                ListOptions {
                    revision: Some(at),
                    start_after: after.clone(),
                    limit: Some(3),
                },
            )
            .await
            .expect("list at a revision");
        assert_eq!(page.revision, at);
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = page.kvs.last().map(|kv| kv.key.clone());
    }
    let want: Vec<String> = (0..10)
        .map(|i| format!("/registry/core/pods/ns/p{i}"))
        .collect();
    assert_eq!(keys, want);

    // A prefix that ends inside the core/group segment still finds only its keys.
    let core = store
        .list("/registry/core/", ListOptions::default())
        .await
        .expect("list core");
    assert_eq!(core.kvs.len(), 11, "{:?}", core.kvs);
    assert!(
        core.kvs
            .iter()
            .all(|kv| kv.key.starts_with("/registry/core/"))
    );
    let all = store
        .list("/registry/", ListOptions::default())
        .await
        .expect("list all");
    assert_eq!(all.kvs.len(), 12);
}

async fn watch_replays_then_follows_in_order_without_gaps(b: Backend) {
    let store = b.store;
    let base = store.current_revision();
    for i in 0..5 {
        store
            .create(format!("/registry/core/a/{i}"), b"x".to_vec(), None)
            .await
            .expect("create");
    }
    // From revision 2: replays 3, 4, 5, then follows 200 concurrent writes.
    let mut watch = store
        .watch("/registry/core/a/".into(), base + 2)
        .await
        .expect("watch");
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .create(format!("/registry/core/a/w{w}-{i}"), b"y".to_vec(), None)
                    .await
                    .expect("create");
                // Another prefix, which the watch must not see.
                store
                    .create(format!("/registry/core/b/w{w}-{i}"), b"z".to_vec(), None)
                    .await
                    .expect("create");
            }
        }));
    }
    let mut revisions = Vec::new();
    while revisions.len() < 203 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("events keep coming")
            .expect("the stream is open")
            .expect("no error");
        assert!(
            event.kv.key.starts_with("/registry/core/a/"),
            "{}",
            event.kv.key
        );
        assert_eq!(event.kind, EventKind::Put);
        revisions.push(event.revision());
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(&revisions[..3], &[base + 3, base + 4, base + 5]);
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions increase"
    );
    // Delete events carry the last value at the delete's revision.
    let deleted = store
        .delete("/registry/core/a/0".into(), None)
        .await
        .expect("delete");
    let event = watch.next().await.expect("open").expect("no error");
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.mod_revision, deleted.mod_revision);
    assert_eq!(text(&event.kv.value), "x");
    assert_eq!(event.prev.map(|p| p.mod_revision), Some(base + 1));
}

async fn compaction_discards_history_and_expires_old_watches(b: Backend) {
    let store = b.store;
    let base = store.current_revision();
    let key = "/registry/core/things/k";
    for v in 0..5 {
        if v == 0 {
            store
                .create(key.into(), b"0".to_vec(), None)
                .await
                .expect("create");
        } else {
            store
                .update(key.into(), format!("{v}").into_bytes(), base + v)
                .await
                .expect("update");
        }
    }
    store.compact(base + 4).await.expect("compact");
    assert_eq!(store.compacted_revision(), base + 4);
    let old = store.get(key, Some(base + 2)).await;
    assert!(
        matches!(old, Err(StoreError::Compacted { requested, compacted })
            if requested == base + 2 && compacted == base + 4),
        "{old:?}"
    );
    let at4 = store
        .get(key, Some(base + 4))
        .await
        .expect("revision 4 is kept");
    assert_eq!(at4.map(|kv| text(&kv.value).to_owned()), Some("3".into()));
    assert!(matches!(
        store.watch("/registry/".into(), base + 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store
        .watch("/registry/".into(), base + 4)
        .await
        .expect("watch after 4");
    let event = watch.next().await.expect("open").expect("event 5");
    assert_eq!(event.revision(), base + 5);
    // Compacting again to where it is, or before, changes nothing.
    store.compact(base + 3).await.expect("an older compaction");
    assert!(matches!(
        store.compact(base + 99).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn a_lease_deletes_its_keys_when_it_expires(b: Backend) {
    let store = b.store;
    let lease = store
        .grant_lease(Duration::from_millis(300))
        .await
        .expect("lease");
    store
        .create(
            "/registry/core/events/ns/e1".into(),
            b"e".to_vec(),
            Some(lease),
        )
        .await
        .expect("create with lease");
    store
        .create("/registry/core/events/ns/keep".into(), b"k".to_vec(), None)
        .await
        .expect("create");
    assert!(matches!(
        store
            .create("/registry/core/x/y".into(), b"x".to_vec(), Some(424242))
            .await,
        Err(StoreError::LeaseNotFound(424242))
    ));
    let mut watch = store
        .watch("/registry/core/events/".into(), store.current_revision())
        .await
        .expect("watch");
    // etcd's leases are whole seconds, at least its minimum TTL (2 s here).
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the lease expires within 10 s")
        .expect("open")
        .expect("event");
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, "/registry/core/events/ns/e1");
    assert!(
        store
            .get("/registry/core/events/ns/keep", None)
            .await
            .expect("get")
            .is_some()
    );
}

/// What a berth-server's master lease does (`apiserver::endpoint_reconciler`): renewed
/// within its TTL the key stays; not renewed it goes, and renewing then fails.
async fn a_kept_alive_lease_keeps_its_keys_until_it_stops(b: Backend) {
    let store = b.store;
    assert!(matches!(
        store.keep_alive(424242).await,
        Err(StoreError::LeaseNotFound(424242))
    ));
    let ttl = Duration::from_secs(2);
    let lease = store.grant_lease(ttl).await.expect("lease");
    let key = "/registry/core/masterleases/10.0.0.1";
    store
        .create(key.into(), b"m".to_vec(), Some(lease))
        .await
        .expect("create with lease");
    let mut watch = store
        .watch(
            "/registry/core/masterleases/".into(),
            store.current_revision(),
        )
        .await
        .expect("watch");
    // Kept alive for twice its TTL: still there.
    let until = tokio::time::Instant::now() + ttl * 2;
    while tokio::time::Instant::now() < until {
        store.keep_alive(lease).await.expect("keep alive");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let kv = store
        .get(key, None)
        .await
        .expect("get")
        .expect("the key stays");
    assert_eq!(kv.lease, Some(lease));
    // No longer renewed: it goes.
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the lease expires within 10 s")
        .expect("open")
        .expect("event");
    assert_eq!(
        (event.kind, event.kv.key.as_str()),
        (EventKind::Delete, key)
    );
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

async fn concurrent_writers_get_one_revision_each(b: Backend) {
    let store = b.store;
    let base = store.current_revision();
    let before = b.redb.as_ref().map(|r| r.commits());
    let mut tasks = Vec::new();
    for i in 0..256 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create(format!("/registry/core/c/{i}"), b"x".to_vec(), None)
                .await
                .expect("create")
                .mod_revision
        }));
    }
    let mut revisions = HashSet::new();
    for t in tasks {
        revisions.insert(t.await.expect("task"));
    }
    assert_eq!(revisions.len(), 256, "one revision per write");
    assert_eq!(store.current_revision(), base + 256);
    // The embedded store groups them into fewer commits (each one fsync).
    if let (Some(redb), Some(before)) = (&b.redb, before) {
        let commits = redb.commits() - before;
        assert!(
            commits < 256,
            "256 concurrent creates took {commits} commits: no grouping"
        );
    }
}

/// More keys than one etcd range request reads (the etcd store pages by 1000).
async fn a_long_list_comes_whole(b: Backend) {
    let store = b.store;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                store
                    .create(
                        format!("/registry/core/l/ns/{w:02}-{i:03}"),
                        b"x".to_vec(),
                        None,
                    )
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let all = store
        .list("/registry/core/l/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(all.kvs.len(), 2400);
    assert!(!all.more);
    assert!(
        all.kvs.windows(2).all(|w| w[0].key < w[1].key),
        "in key order"
    );
    let page = store
        .list(
            "/registry/core/l/",
            ListOptions {
                limit: Some(1500),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list a page");
    assert_eq!((page.kvs.len(), page.more), (1500, true));
    let rest = store
        .list(
            "/registry/core/l/",
            ListOptions {
                start_after: page.kvs.last().map(|kv| kv.key.clone()),
                limit: Some(900),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list the rest");
    assert_eq!((rest.kvs.len(), rest.more), (900, false));
}

/// The revision a consistent read must reflect (KEP-2340) is at or after every
/// acknowledged write: on etcd also one through another server's store, which this
/// store's own revision does not know of.
async fn a_consistent_revision_covers_every_acknowledged_write(b: Backend) {
    let store = b.store;
    let mine = store
        .create("/registry/core/c/ns/mine".into(), b"x".to_vec(), None)
        .await
        .expect("create");
    let now = store
        .consistent_revision()
        .await
        .expect("consistent revision");
    assert!(
        now >= mine.mod_revision,
        "consistent revision {now} is before the write at {}",
        mine.mod_revision
    );
    assert_eq!(
        store.shared(),
        b._etcd.is_some(),
        "only etcd is written by other servers"
    );
    let Some(etcd) = &b._etcd else {
        return;
    };
    let other = EtcdStore::connect(&etcd_options(etcd))
        .await
        .expect("another server's store");
    for i in 0..20 {
        let theirs = other
            .create(
                format!("/registry/core/c/ns/theirs-{i}"),
                b"y".to_vec(),
                None,
            )
            .await
            .expect("create through the other store");
        let now = store
            .consistent_revision()
            .await
            .expect("consistent revision");
        assert!(
            now >= theirs.mod_revision,
            "consistent revision {now} is before the other store's write at {}",
            theirs.mod_revision
        );
    }
}

/// How many watchers etcd has (its `etcd_debugging_mvcc_watcher_total` gauge).
fn etcd_watchers(etcd: &Etcd) -> Option<u64> {
    let url = format!("{}/metrics", etcd.endpoints().first()?);
    let out = Command::new("curl").args(["-sf", &url]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The watch cache's watch: the whole prefix, events without `prev` (a delete may
/// come without its last value). Over etcd it stands in for the store's own watch of
/// the prefix while it lives, so another server's writes still raise the store's
/// current revision, and once it is dropped the store follows etcd again.
async fn a_watch_without_prev_follows_and_keeps_the_revision_current(b: Backend) {
    let store = b.store;
    let base = store.current_revision();
    let mut watch = store
        .watch_without_prev("/registry/".into(), base)
        .await
        .expect("watch");
    let created = store
        .create("/registry/core/p/ns/a".into(), b"1".to_vec(), None)
        .await
        .expect("create");
    let updated = store
        .update(
            "/registry/core/p/ns/a".into(),
            b"2".to_vec(),
            created.mod_revision,
        )
        .await
        .expect("update");
    let deleted = store
        .delete("/registry/core/p/ns/a".into(), None)
        .await
        .expect("delete");
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("events keep coming")
            .expect("the stream is open")
            .expect("no error");
        got.push((event.kind, event.revision()));
        if event.kind == EventKind::Put {
            assert_eq!(
                text(&event.kv.value),
                if got.len() == 1 { "1" } else { "2" }
            );
        }
    }
    assert_eq!(
        got,
        vec![
            (EventKind::Put, created.mod_revision),
            (EventKind::Put, updated.mod_revision),
            (EventKind::Delete, deleted.mod_revision),
        ]
    );
    let Some(etcd) = &b._etcd else {
        return;
    };
    // etcd sends each event once: the store's own watch of the prefix rests.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let watchers = etcd_watchers(etcd);
        if watchers == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd has {watchers:?} watchers, not just the one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = EtcdStore::connect(&etcd_options(etcd))
        .await
        .expect("another server's store");
    let caught_up = |store: Arc<dyn Store>, revision: i64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.current_revision() < revision {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the current revision {} stays before another server's write at {revision}",
                store.current_revision()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let theirs = other
        .create("/registry/core/p/ns/theirs".into(), b"t".to_vec(), None)
        .await
        .expect("create through the other store");
    caught_up(store.clone(), theirs.mod_revision).await;
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the other server's write comes")
        .expect("open")
        .expect("no error");
    assert_eq!(event.revision(), theirs.mod_revision);
    // Without the watch, the store follows etcd on its own again.
    drop(watch);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = other
        .create("/registry/core/p/ns/later".into(), b"t".to_vec(), None)
        .await
        .expect("create through the other store");
    caught_up(store.clone(), later.mod_revision).await;
}

// --- The embedded store only ---

#[tokio::test]
async fn reopening_keeps_objects_and_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(&dir);
        store
            .create("/r/a".into(), b"1".to_vec(), None)
            .await
            .expect("create");
        store
            .update("/r/a".into(), b"2".to_vec(), 1)
            .await
            .expect("update");
    }
    // The writer thread exits when the last handle is dropped; wait for the file lock.
    let store = {
        let mut tries = 0;
        loop {
            match RedbStore::open(&dir.path().join("store.redb")) {
                Ok(store) => break store,
                Err(err) if tries < 50 => {
                    tries += 1;
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("reopen failed: {err}"),
            }
        }
    };
    assert_eq!(store.current_revision(), 2);
    let kv = store
        .get("/r/a", None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!((text(&kv.value), kv.mod_revision), ("2", 2));
    let mut watch = store.watch("/r/".into(), 0).await.expect("watch from 0");
    let first = watch.next().await.expect("open").expect("event");
    assert_eq!(first.revision(), 1);
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write() {
    if let Ok(path) = std::env::var("BERTH_STORE_CHILD") {
        child_write_loop(path).await;
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.redb");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "kill_9_loses_no_acknowledged_write",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERTH_STORE_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read");
        if line.starts_with("/r/k/") {
            acked.push(line);
        }
        if acked.len() >= 2000 {
            break;
        }
    }
    // SIGKILL in the middle of the write loop.
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(
        acked.len() >= 2000,
        "the writer acknowledged {}",
        acked.len()
    );
    let store = RedbStore::open(&path).expect("reopen after kill -9");
    for key in &acked {
        assert!(
            store.get(key, None).await.expect("get").is_some(),
            "acknowledged write {key} lost"
        );
    }
    assert!(store.current_revision() >= acked.len() as i64);
    // History replayed from the log too: reads at a past revision and a watch from the
    // start see every value (the log holds each value once; history copies it).
    let first = store
        .get(&acked[0], Some(1))
        .await
        .expect("get at revision 1");
    assert!(first.is_none_or(|kv| kv.value.len() == 512));
    let mut watch = store.watch("/r/k/".into(), 0).await.expect("watch from 0");
    for _ in 0..acked.len() {
        let event = watch.next().await.expect("an event").expect("not an error");
        assert_eq!(event.kv.value.len(), 512, "{}", event.kv.key);
    }
}

/// The child side of `kill_9_loses_no_acknowledged_write` (the same test, re-run with
/// `BERTH_STORE_CHILD` set): writes keys forever and prints each one after the store
/// acknowledged it.
async fn child_write_loop(path: String) {
    let store = Arc::new(RedbStore::open(std::path::Path::new(&path)).expect("open"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for w in 0..8 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/r/k/{w}-{i}");
                store
                    .create(key.clone(), vec![b'x'; 512], None)
                    .await
                    .expect("create");
                if tx.send(key).is_err() {
                    return;
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    while let Some(key) = rx.recv().await {
        writeln!(out, "{key}").expect("stdout");
        out.flush().expect("flush");
    }
}

// --- etcd only ---

/// Lines of `etcdctl`'s stdout, after checking it succeeded.
fn etcdctl_lines(etcd: &Etcd, args: &[&str]) -> Vec<String> {
    let out = etcd.etcdctl(args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn etcdctl_reads_the_objects_under_kube_apiservers_keys() {
    if !Etcd::available() || Etcd::etcdctl_binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start(dir.path());
    let store = EtcdStore::connect(&etcd_options(&etcd))
        .await
        .expect("connect");
    let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"}}"#;
    for (key, value) in [
        ("/registry/core/pods/default/web", &pod[..]),
        ("/registry/core/namespaces/default", b"{}"),
        ("/registry/apps/deployments/default/web", b"{}"),
        ("/registry/stable.example.com/crontabs/default/c", b"{}"),
    ] {
        store
            .create(key.into(), value.to_vec(), None)
            .await
            .expect("create");
    }
    let keys = etcdctl_lines(&etcd, &["get", "--prefix", "/registry", "--keys-only"]);
    let keys: HashSet<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from([
            "/registry/pods/default/web",
            "/registry/namespaces/default",
            "/registry/apps/deployments/default/web",
            "/registry/stable.example.com/crontabs/default/c",
        ])
    );
    // Values are stored as they are: the JSON.
    let value = etcdctl_lines(
        &etcd,
        &["get", "/registry/pods/default/web", "--print-value-only"],
    );
    assert_eq!(value, vec![String::from_utf8_lossy(pod).into_owned()]);
    // And what etcdctl writes there, the store reads.
    etcdctl_lines(
        &etcd,
        &[
            "put",
            "/registry/configmaps/ns/cm",
            "{\"kind\":\"ConfigMap\"}",
        ],
    );
    let cm = store
        .get("/registry/core/configmaps/ns/cm", None)
        .await
        .expect("get")
        .expect("the configmap etcdctl put");
    assert_eq!(text(&cm.value), "{\"kind\":\"ConfigMap\"}");

    // Another --etcd-prefix: a second cluster in the same etcd, apart from the first.
    let other = EtcdStore::connect(&Options {
        prefix: "/cluster-b".into(),
        ..etcd_options(&etcd)
    })
    .await
    .expect("connect with another prefix");
    other
        .create(
            "/registry/core/pods/default/web".into(),
            b"{}".to_vec(),
            None,
        )
        .await
        .expect("the same name in the other cluster");
    let keys = etcdctl_lines(&etcd, &["get", "--prefix", "/cluster-b", "--keys-only"]);
    assert_eq!(keys, vec!["/cluster-b/pods/default/web".to_owned()]);
    let listed = other
        .list("/registry/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.kvs.len(), 1);
}

/// With progress notifications on, a watch reports etcd's progress past a write outside
/// the prefix — no event tells of it — when asked (what the watch cache waits on for a
/// consistent read); with them off it has nothing to ask.
#[tokio::test]
async fn a_watch_reports_progress_past_a_write_outside_the_prefix() {
    if !Etcd::available() || Etcd::etcdctl_binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start(dir.path());
    let store = EtcdStore::connect(&Options {
        watch_progress: Some(true),
        ..etcd_options(&etcd)
    })
    .await
    .expect("connect");
    let created = store
        .create("/registry/core/p/ns/a".into(), b"x".to_vec(), None)
        .await
        .expect("create");
    let mut watch = store
        .watch("/registry/".into(), created.mod_revision)
        .await
        .expect("watch");
    let progress = watch
        .progress_request()
        .expect("a watch that asks etcd for progress");
    etcdctl_lines(&etcd, &["put", "/elsewhere/key", "value"]);
    let target = store
        .consistent_revision()
        .await
        .expect("consistent revision");
    assert!(
        target > store.current_revision(),
        "the write outside the prefix moved etcd's revision ({target}) past what the \
         store saw ({})",
        store.current_revision()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        progress.request();
        match tokio::time::timeout(Duration::from_millis(100), watch.next_watched()).await {
            Ok(Some(Ok(Watched::Progress(r)))) if r >= target => break,
            Ok(Some(Ok(Watched::Progress(_)))) | Err(_) => {}
            other => panic!("only progress was expected on the watch, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no progress notification at or after {target} within 5 s"
        );
    }
    // An event still comes as one, before any later progress.
    let next = store
        .create("/registry/core/p/ns/b".into(), b"x".to_vec(), None)
        .await
        .expect("create");
    progress.request();
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(Ok(event))) => assert_eq!(event.revision(), next.mod_revision),
        other => panic!("the create's event was expected, got {other:?}"),
    }

    let plain = EtcdStore::connect(&Options {
        watch_progress: Some(false),
        ..etcd_options(&etcd)
    })
    .await
    .expect("connect");
    let watch = plain
        .watch("/registry/".into(), next.mod_revision)
        .await
        .expect("watch");
    assert!(watch.progress_request().is_none());
}

/// The etcd store passes its own creates, updates and deletes to its watches as soon as
/// etcd answers them, ahead of etcd's watch; another server's writes (the same etcd)
/// only come through etcd's. With both writing concurrently, each watch — on a prefix, on
/// a narrower one, one opened midway after a revision, and the other server's — gets
/// every write in its range exactly once, in revision order, as etcd's watch would
/// (previous values included), and nothing at or before the revision it was opened after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_and_another_servers_writes_reach_a_watch_once_each_in_order() {
    if !Etcd::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start(dir.path());
    let mine = Arc::new(
        EtcdStore::connect(&etcd_options(&etcd))
            .await
            .expect("connect"),
    );
    let theirs = Arc::new(
        EtcdStore::connect(&etcd_options(&etcd))
            .await
            .expect("another server's store"),
    );
    let (wide, narrow) = (
        "/registry/core/configmaps/",
        "/registry/core/configmaps/ns1/",
    );
    let base = mine.current_revision();
    let mut all = mine.watch(wide.into(), base).await.expect("watch");
    let mut ns1 = mine.watch(narrow.into(), base).await.expect("watch");
    let mut their_view = theirs.watch(wide.into(), base).await.expect("watch");

    // Acknowledged writes, as the events a watch must deliver for them.
    let log = Arc::new(Mutex::new(Vec::<Event>::new()));
    let record = |log: &Mutex<Vec<Event>>, event: Event| {
        log.lock().expect("log").push(event);
    };
    let mut writers = Vec::new();
    for w in 0..10 {
        // Eight writers here, two on the other server.
        let store = if w < 8 { mine.clone() } else { theirs.clone() };
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                let key = format!("{wide}ns{}/w{w}-{i}", (w + i) % 3);
                let created = store
                    .create(key.clone(), format!("{w}-{i}-0").into_bytes(), None)
                    .await
                    .expect("create");
                record(
                    &log,
                    Event {
                        kind: EventKind::Put,
                        kv: created.clone(),
                        prev: None,
                    },
                );
                let mut prev = created;
                for v in 1..3 {
                    let updated = store
                        .update(
                            key.clone(),
                            format!("{w}-{i}-{v}").into_bytes(),
                            prev.mod_revision,
                        )
                        .await
                        .expect("update");
                    record(
                        &log,
                        Event {
                            kind: EventKind::Put,
                            kv: updated.clone(),
                            prev: Some(prev),
                        },
                    );
                    prev = updated;
                }
                let expected = (i % 2 == 0).then_some(prev.mod_revision);
                let deleted = store.delete(key, expected).await.expect("delete");
                record(
                    &log,
                    Event {
                        kind: EventKind::Delete,
                        kv: deleted,
                        prev: Some(prev),
                    },
                );
                // Outside the watched prefixes: revisions no watch here gets.
                let elsewhere = store
                    .create(
                        format!("/registry/core/secrets/ns/w{w}-{i}"),
                        b"s".to_vec(),
                        None,
                    )
                    .await
                    .expect("create elsewhere");
                record(
                    &log,
                    Event {
                        kind: EventKind::Put,
                        kv: elsewhere,
                        prev: None,
                    },
                );
            }
        }));
    }
    // Midway: a watch from the newest revision this store knows of.
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.lock().expect("log").len() < 400 {
        assert!(Instant::now() < deadline, "400 writes within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = mine.current_revision();
    let mut late = mine.watch(wide.into(), after).await.expect("watch");
    for w in writers {
        w.await.expect("writer");
    }

    let mut log = std::mem::take(&mut *log.lock().expect("log"));
    log.sort_by_key(Event::revision);
    assert!(
        log.windows(2).all(|w| w[0].revision() < w[1].revision()),
        "one revision per write"
    );
    let under = |prefix: &str, after: i64| -> Vec<Event> {
        log.iter()
            .filter(|e| e.kv.key.starts_with(prefix) && e.revision() > after)
            .cloned()
            .collect()
    };
    for (what, watch, expected) in [
        ("the wide watch", &mut all, under(wide, base)),
        ("the narrow watch", &mut ns1, under(narrow, base)),
        ("the watch opened midway", &mut late, under(wide, after)),
        (
            "the other server's watch",
            &mut their_view,
            under(wide, base),
        ),
    ] {
        let got = events(watch, expected.len(), what).await;
        assert!(
            got.iter()
                .all(|e| e.revision() > after || what != "the watch opened midway"),
            "{what} got an event at or before {after}"
        );
        assert!(
            got.windows(2).all(|w| w[0].revision() < w[1].revision()),
            "{what}: revisions out of order or repeated: {:?}",
            got.iter().map(Event::revision).collect::<Vec<_>>()
        );
        if got != expected {
            let revisions =
                |events: &[Event]| events.iter().map(Event::revision).collect::<Vec<_>>();
            let first = got.iter().zip(&expected).position(|(g, e)| g != e);
            panic!(
                "{what}: not the events written (first difference at {first:?}: {:?} vs {:?})\n\
                 got {:?}\nwanted {:?}",
                first.and_then(|i| got.get(i)),
                first.and_then(|i| expected.get(i)),
                revisions(&got),
                revisions(&expected),
            );
        }
        // And nothing more: no event came twice.
        let more = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
        assert!(
            more.is_err(),
            "{what}: more than every write once: {more:?}"
        );
    }
}

/// The next `n` events of `watch`, each within 10 s.
async fn events(watch: &mut WatchStream, n: usize, what: &str) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Ok(event))) => got.push(event),
            other => panic!("{what}: after {} of {n} events: {other:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn etcd_over_tls_with_a_client_certificate() {
    if !Etcd::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = EtcdTls::generate(&dir.path().join("tls"));
    let etcd = Etcd::start_with(dir.path(), 1, Some(tls.clone()));
    assert!(etcd.endpoints_flag().starts_with("https://"));
    let options = Options {
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        ..etcd_options(&etcd)
    };
    let store = EtcdStore::connect(&options)
        .await
        .expect("connects over TLS with the client certificate");
    let mut watch = store
        .watch("/registry/core/secrets/".into(), store.current_revision())
        .await
        .expect("watch");
    store
        .create("/registry/core/secrets/ns/s".into(), b"{}".to_vec(), None)
        .await
        .expect("create over TLS");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the event arrives")
        .expect("open")
        .expect("no error");
    assert_eq!(event.kv.key, "/registry/core/secrets/ns/s");
    // etcd asks for a client certificate: without one, no connection.
    let anonymous = EtcdStore::connect(&Options {
        cert_file: None,
        key_file: None,
        ..options.clone()
    })
    .await;
    assert!(anonymous.is_err(), "connected without a client certificate");
    // TLS files with http:// endpoints are a configuration error, named.
    let wrong = EtcdStore::connect(&Options {
        endpoints: vec!["http://127.0.0.1:1".into()],
        ..options.clone()
    })
    .await;
    assert!(
        matches!(&wrong, Err(StoreError::Backend(why)) if why.contains("https://")),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_watch_outlives_an_etcd_restart_and_writes_fail_while_it_is_down() {
    if !Etcd::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = Etcd::start(dir.path());
    let store = EtcdStore::connect(&etcd_options(&etcd))
        .await
        .expect("connect");
    let first = store
        .create("/registry/core/pods/ns/before".into(), b"1".to_vec(), None)
        .await
        .expect("create");
    let mut watch = store
        .watch("/registry/core/pods/".into(), first.mod_revision)
        .await
        .expect("watch");

    etcd.kill_member(0);
    let down = store
        .create("/registry/core/pods/ns/during".into(), b"2".to_vec(), None)
        .await;
    assert!(
        matches!(
            down,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        ),
        "a write with etcd down: {down:?}"
    );
    assert!(store.health().await.is_err(), "healthy with etcd down");

    etcd.start_member(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match store
            .create("/registry/core/pods/ns/after".into(), b"3".to_vec(), None)
            .await
        {
            Ok(kv) => break kv,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no write within 30 s of etcd's restart: {err}"),
        }
    };
    store.health().await.expect("healthy again");
    // The watch was re-created from where it was: the next event is the first write
    // after the restart, nothing repeated, nothing missing.
    let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch delivers again")
        .expect("open")
        .expect("no error");
    assert_eq!(event.kv.key, "/registry/core/pods/ns/after");
    assert_eq!(event.revision(), after.mod_revision);
    assert_eq!(store.current_revision(), after.mod_revision);
}

/// The member that leads the cluster now (`etcdctl endpoint status`).
fn leader(etcd: &Etcd) -> usize {
    let lines = etcdctl_lines(etcd, &["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value =
        serde_json::from_str(&lines.join("")).expect("etcdctl endpoint status JSON");
    let endpoints = etcd.endpoints();
    status
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|s| {
            let member = s.pointer("/Status/header/member_id")?.as_u64()?;
            let leader = s.pointer("/Status/leader")?.as_u64()?;
            let endpoint = s.get("Endpoint")?.as_str()?;
            (member == leader).then(|| endpoints.iter().position(|e| e == endpoint))?
        })
        .expect("a leader among the endpoints")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_three_etcd_members_loses_no_acknowledged_write() {
    if !Etcd::available() || Etcd::etcdctl_binary().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut etcd = Etcd::cluster(dir.path(), 3);
    let store = Arc::new(
        EtcdStore::connect(&etcd_options(&etcd))
            .await
            .expect("connect to the three members"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (store, stop, tx) = (store.clone(), stop.clone(), tx.clone());
        writers.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("/registry/core/configmaps/load/{w}-{i}");
                match store.create(key.clone(), vec![b'x'; 512], None).await {
                    Ok(kv) => {
                        let _ = tx.send((key, kv.mod_revision));
                    }
                    // Not acknowledged: may or may not be there; never counted.
                    Err(StoreError::Unavailable(_) | StoreError::Timeout(_)) => failed += 1,
                    Err(err) => panic!("write {key}: {err}"),
                }
            }
            failed
        }));
    }
    drop(tx);
    let mut acked = Vec::new();
    wait_acked(&mut rx, &mut acked, 300, "before the kill").await;
    // kill -9 the leader in the middle of the write loop.
    let victim = leader(&etcd);
    etcd.kill_member(victim);
    let at_kill = acked.len();
    wait_acked(&mut rx, &mut acked, at_kill + 600, "after the kill").await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for w in writers {
        failed += w.await.expect("writer");
    }
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }
    eprintln!(
        "{} writes acknowledged ({} after killing member {victim}), {failed} failed",
        acked.len(),
        acked.len() - at_kill
    );
    let revisions: HashSet<i64> = acked.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "duplicate revisions acknowledged"
    );
    // Read back through the members that are left.
    for (key, revision) in &acked {
        let kv = store
            .get(key, None)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("acknowledged write {key} lost"));
        assert_eq!(kv.mod_revision, *revision, "{key}");
    }
    // And the killed member, back, has them too (a linearizable read from it alone).
    etcd.start_member(victim);
    let endpoint = format!("--endpoints={}", etcd.endpoints()[victim]);
    let keys = etcdctl_lines(
        &etcd,
        &[
            &endpoint,
            "get",
            "--prefix",
            "/registry/configmaps/load/",
            "--keys-only",
        ],
    );
    let keys: HashSet<&str> = keys.iter().map(String::as_str).collect();
    for (key, _) in &acked {
        let etcd_key = key.replace("/registry/core/", "/registry/");
        assert!(
            keys.contains(etcd_key.as_str()),
            "{etcd_key} not on the restarted member"
        );
    }
}

/// Collects acknowledged writes until there are `n` (at most a minute).
async fn wait_acked(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, i64)>,
    acked: &mut Vec<(String, i64)>,
    n: usize,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(a)) => acked.push(a),
            Ok(None) | Err(_) => panic!("{what}: only {} writes acknowledged", acked.len()),
        }
    }
}
