//! Snapshots round-trip every table (keys, versions, the change log, leases,
//! revisions), and a damaged file or an occupied data dir is refused with a clear error
//! before anything is changed.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::store::redb::RedbStore;
use crate::store::{EventKind, ListOptions, Store};

async fn save(store: &RedbStore, file: &Path) -> Revision {
    let out = File::create(file).expect("create the snapshot file");
    store.snapshot(Box::new(out)).await.expect("snapshot")
}

/// A store with creates, updates, deletes, a lease and a compaction behind it.
async fn populated(dir: &Path) -> RedbStore {
    let store = RedbStore::open(&dir.join(STORE_FILE)).expect("open");
    for i in 0..20 {
        store
            .create(
                format!("/registry/pods/default/p{i}"),
                format!("v{i}").into_bytes(),
                None,
            )
            .await
            .expect("create");
    }
    let kv = store
        .update("/registry/pods/default/p3".into(), b"v3b".to_vec(), 4)
        .await
        .expect("update");
    assert_eq!(kv.mod_revision, 21);
    store
        .delete("/registry/pods/default/p5".into(), None)
        .await
        .expect("delete");
    let lease = store
        .grant_lease(Duration::from_secs(3600))
        .await
        .expect("lease");
    store
        .create(
            "/registry/events/default/e".into(),
            b"event".to_vec(),
            Some(lease),
        )
        .await
        .expect("create with a lease");
    store.compact(10).await.expect("compact");
    store
        .update("/registry/pods/default/p3".into(), b"v3c".to_vec(), 21)
        .await
        .expect("update");
    store
}

#[tokio::test]
async fn a_restored_store_has_every_key_version_and_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = populated(dir.path()).await;
    let file = dir.path().join("snap.db");
    let revision = save(&store, &file).await;
    assert_eq!(revision, store.current_revision());

    let status = status(&file).expect("status");
    assert_eq!(status.revision, revision);
    assert_eq!(status.compacted, 10);
    assert_eq!(status.keys, 20, "19 pods and one event are live");
    assert!(status.records > status.keys, "{status:?}");
    assert_eq!(status.size, std::fs::metadata(&file).expect("stat").len());
    assert_eq!(status.sha256.len(), 64);

    let restored_dir = dir.path().join("restored");
    assert_eq!(
        restore(&file, &restored_dir, false).expect("restore"),
        status
    );
    let restored =
        RedbStore::open(&restored_dir.join(STORE_FILE)).expect("open the restored store");
    assert_eq!(restored.current_revision(), revision);
    assert_eq!(restored.compacted_revision(), 10);
    let now = |s: &RedbStore| {
        let s = s.clone();
        async move {
            s.list("/registry/", ListOptions::default())
                .await
                .expect("list")
                .kvs
        }
    };
    assert_eq!(now(&restored).await, now(&store).await);
    // Reads at a past revision and watches from one see the same history.
    let past = ListOptions {
        revision: Some(15),
        ..ListOptions::default()
    };
    assert_eq!(
        restored
            .list("/registry/", past.clone())
            .await
            .expect("list at 15")
            .kvs,
        store
            .list("/registry/", past)
            .await
            .expect("list at 15")
            .kvs
    );
    let mut watch = restored
        .watch("/registry/pods/".into(), 20)
        .await
        .expect("watch from 20");
    let first = watch.next().await.expect("an event").expect("not an error");
    assert_eq!((first.kind, first.revision()), (EventKind::Put, 21));
    let second = watch.next().await.expect("an event").expect("not an error");
    assert_eq!((second.kind, second.revision()), (EventKind::Delete, 22));
    // The lease came along: its key is still attached to it.
    let event = restored
        .get("/registry/events/default/e", None)
        .await
        .expect("get")
        .expect("the event is there");
    assert!(event.lease.is_some());
    // And the restored store goes on from the same revision.
    let next = restored
        .create("/registry/pods/default/new".into(), b"n".to_vec(), None)
        .await
        .expect("create after restore");
    assert_eq!(next.mod_revision, revision + 1);
}

#[tokio::test]
async fn damaged_files_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = populated(dir.path()).await;
    let file = dir.path().join("snap.db");
    save(&store, &file).await;
    let good = std::fs::read(&file).expect("read");

    let flipped = dir.path().join("flipped.db");
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&flipped, &bytes).expect("write");
    let err = status(&flipped).expect_err("a flipped byte");
    assert!(
        matches!(
            err,
            SnapshotError::Checksum { .. }
                | SnapshotError::Corrupt { .. }
                | SnapshotError::Truncated { .. }
        ),
        "{err}"
    );

    // A byte flipped in a value (the records stay well-formed) fails the checksum.
    let value = good
        .windows(3)
        .position(|w| w == b"v19")
        .expect("a value in the file");
    let mut bytes = good.clone();
    bytes[value + 1] = b'X';
    std::fs::write(&flipped, &bytes).expect("write");
    let err = status(&flipped).expect_err("a changed value");
    assert!(matches!(err, SnapshotError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &good[..good.len() - 40]).expect("write");
    let err = status(&truncated).expect_err("truncated");
    assert!(matches!(err, SnapshotError::Truncated { .. }), "{err}");

    let other = dir.path().join("other.db");
    std::fs::write(&other, b"{\"kind\": \"not a snapshot\"}").expect("write");
    let err = status(&other).expect_err("not a snapshot");
    assert!(matches!(err, SnapshotError::NotASnapshot { .. }), "{err}");
    std::fs::write(&other, b"").expect("write");
    assert!(matches!(
        status(&other),
        Err(SnapshotError::NotASnapshot { .. })
    ));

    let mut bytes = good.clone();
    bytes[8] = 9;
    std::fs::write(&other, &bytes).expect("write");
    let err = status(&other).expect_err("another version");
    assert!(
        matches!(err, SnapshotError::Version { found: 9, .. }),
        "{err}"
    );

    // A failed restore leaves nothing behind.
    let target = dir.path().join("target");
    let err = restore(&flipped, &target, false).expect_err("restore of a damaged file");
    assert!(matches!(err, SnapshotError::Checksum { .. }), "{err}");
    assert!(!target.join(STORE_FILE).exists());
    assert!(!target.join(format!("{STORE_FILE}.restoring")).exists());
}

#[tokio::test]
async fn an_existing_store_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = populated(dir.path()).await;
    let file = dir.path().join("snap.db");
    let revision = save(&store, &file).await;

    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(target.join(STORE_FILE), b"an old store").expect("write");
    std::fs::write(target.join(WAL_FILE), b"its log").expect("write");
    let err = restore(&file, &target, false).expect_err("an existing store");
    assert!(matches!(err, SnapshotError::StoreExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(target.join(STORE_FILE)).expect("read"),
        b"an old store"
    );

    // A damaged snapshot does not replace it even with --force.
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, b"BERTHSNP").expect("write");
    assert!(restore(&bad, &target, true).is_err());
    assert_eq!(
        std::fs::read(target.join(STORE_FILE)).expect("read"),
        b"an old store"
    );

    restore(&file, &target, true).expect("restore with --force");
    assert!(!target.join(WAL_FILE).exists(), "the old log is gone");
    let restored = RedbStore::open(&target.join(STORE_FILE)).expect("open");
    assert_eq!(restored.current_revision(), revision);
}
