//! The embedded MVCC store: compare-and-swap, reads at past revisions, gap-free
//! watches, compaction (→ `Compacted`), leases, group commit, reopening, and that no
//! acknowledged write is lost to `kill -9`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use berth_control_plane::store::redb::RedbStore;
use berth_control_plane::store::{EventKind, ListOptions, Store, StoreError};

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("store.redb")).expect("the store opens")
}

fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).expect("utf-8 value")
}

#[tokio::test]
async fn create_update_delete_are_compare_and_swap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    let a = store
        .create("/r/pods/a".into(), b"v1".to_vec(), None)
        .await
        .expect("create");
    assert_eq!(a.mod_revision, 1);
    assert_eq!(a.create_revision, 1);
    assert_eq!(
        store.create("/r/pods/a".into(), b"x".to_vec(), None).await,
        Err(StoreError::AlreadyExists {
            key: "/r/pods/a".into()
        })
    );
    let a2 = store
        .update("/r/pods/a".into(), b"v2".to_vec(), 1)
        .await
        .expect("update at the right revision");
    assert_eq!((a2.mod_revision, a2.create_revision), (2, 1));
    // A stale revision is a conflict and changes nothing.
    let stale = store.update("/r/pods/a".into(), b"v3".to_vec(), 1).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { actual: 2, .. })),
        "{stale:?}"
    );
    assert_eq!(store.current_revision(), 2);
    assert!(matches!(
        store.delete("/r/pods/a".into(), Some(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    let gone = store
        .delete("/r/pods/a".into(), Some(2))
        .await
        .expect("delete");
    assert_eq!(gone.mod_revision, 3);
    assert_eq!(text(&gone.value), "v2");
    assert_eq!(store.get("/r/pods/a", None).await.expect("get"), None);
    assert!(matches!(
        store.update("/r/pods/a".into(), b"v".to_vec(), 3).await,
        Err(StoreError::NotFound { .. })
    ));
    // Past revisions stay readable.
    let at1 = store.get("/r/pods/a", Some(1)).await.expect("get at 1");
    assert_eq!(at1.map(|kv| text(&kv.value).to_owned()), Some("v1".into()));
    let at2 = store.get("/r/pods/a", Some(2)).await.expect("get at 2");
    assert_eq!(at2.map(|kv| text(&kv.value).to_owned()), Some("v2".into()));
    assert!(matches!(
        store.get("/r/pods/a", Some(9)).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

#[tokio::test]
async fn list_pages_by_prefix_now_and_at_a_past_revision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    for i in 0..10 {
        store
            .create(
                format!("/r/pods/ns/p{i}"),
                format!("{i}").into_bytes(),
                None,
            )
            .await
            .expect("create");
    }
    store
        .create("/r/pods2/x".into(), b"other prefix".to_vec(), None)
        .await
        .expect("create");
    let at = store.current_revision();
    store
        .delete("/r/pods/ns/p3".into(), None)
        .await
        .expect("delete");
    store
        .create("/r/pods/ns/p99".into(), b"new".to_vec(), None)
        .await
        .expect("create");

    // Now: p3 gone, p99 there; pages of 4 chained by start_after.
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                "/r/pods/",
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
    assert!(!keys.contains(&"/r/pods/ns/p3".to_owned()));
    assert!(keys.contains(&"/r/pods/ns/p99".to_owned()));
    assert!(!keys.iter().any(|k| k.starts_with("/r/pods2/")));

    // At the earlier revision, in pages too: p3 there, p99 not.
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                "/r/pods/",
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
    let want: Vec<String> = (0..10).map(|i| format!("/r/pods/ns/p{i}")).collect();
    assert_eq!(keys, want);
}

#[tokio::test]
async fn watch_replays_then_follows_in_order_without_gaps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(&dir));
    for i in 0..5 {
        store
            .create(format!("/r/a/{i}"), b"x".to_vec(), None)
            .await
            .expect("create");
    }
    // From revision 2: replays 3, 4, 5, then follows 200 concurrent writes.
    let mut watch = store.watch("/r/a/".into(), 2).await.expect("watch");
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .create(format!("/r/a/w{w}-{i}"), b"y".to_vec(), None)
                    .await
                    .expect("create");
                // Another prefix, which the watch must not see.
                store
                    .create(format!("/r/b/w{w}-{i}"), b"z".to_vec(), None)
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
        assert!(event.kv.key.starts_with("/r/a/"), "{}", event.kv.key);
        assert_eq!(event.kind, EventKind::Put);
        revisions.push(event.revision());
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(&revisions[..3], &[3, 4, 5]);
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions increase"
    );
    // Delete events carry the last value at the delete's revision.
    let deleted = store.delete("/r/a/0".into(), None).await.expect("delete");
    let event = watch.next().await.expect("open").expect("no error");
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.mod_revision, deleted.mod_revision);
    assert_eq!(event.prev.map(|p| p.mod_revision), Some(1));
}

#[tokio::test]
async fn compaction_discards_history_and_expires_old_watches() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    for v in 0..5 {
        if v == 0 {
            store
                .create("/r/k".into(), b"0".to_vec(), None)
                .await
                .expect("create");
        } else {
            store
                .update("/r/k".into(), format!("{v}").into_bytes(), v)
                .await
                .expect("update");
        }
    }
    store.compact(4).await.expect("compact");
    assert_eq!(store.compacted_revision(), 4);
    assert!(matches!(
        store.get("/r/k", Some(2)).await,
        Err(StoreError::Compacted {
            requested: 2,
            compacted: 4
        })
    ));
    let at4 = store
        .get("/r/k", Some(4))
        .await
        .expect("revision 4 is kept");
    assert_eq!(at4.map(|kv| text(&kv.value).to_owned()), Some("3".into()));
    assert!(matches!(
        store.watch("/r/".into(), 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/r/".into(), 4).await.expect("watch after 4");
    let event = watch.next().await.expect("open").expect("event 5");
    assert_eq!(event.revision(), 5);
    assert!(matches!(
        store.compact(99).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

#[tokio::test]
async fn a_lease_deletes_its_keys_when_it_expires() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    let lease = store
        .grant_lease(Duration::from_millis(300))
        .await
        .expect("lease");
    store
        .create("/r/events/e1".into(), b"e".to_vec(), Some(lease))
        .await
        .expect("create with lease");
    store
        .create("/r/events/keep".into(), b"k".to_vec(), None)
        .await
        .expect("create");
    assert!(matches!(
        store
            .create("/r/x".into(), b"x".to_vec(), Some(424242))
            .await,
        Err(StoreError::LeaseNotFound(424242))
    ));
    let mut watch = store
        .watch("/r/events/".into(), store.current_revision())
        .await
        .expect("watch");
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the lease expires within 5 s")
        .expect("open")
        .expect("event");
    assert_eq!(event.kind, EventKind::Delete);
    assert_eq!(event.kv.key, "/r/events/e1");
    assert!(
        store
            .get("/r/events/keep", None)
            .await
            .expect("get")
            .is_some()
    );
}

#[tokio::test]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(open(&dir));
    let before = store.commits();
    let mut tasks = Vec::new();
    for i in 0..256 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create(format!("/r/c/{i}"), b"x".to_vec(), None)
                .await
                .expect("create")
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let commits = store.commits() - before;
    assert_eq!(store.current_revision(), 256);
    assert!(
        commits < 256,
        "256 concurrent creates took {commits} commits: no grouping"
    );
}

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
