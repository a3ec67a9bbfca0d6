//! The store is read as a server starting on it would see it — the log replayed over
//! a file a killed server left — while its files stay byte for byte as they were; a
//! store a server has open is refused.

use std::path::Path;

use super::*;
use crate::store::Store;
use crate::store::redb::RedbStore;

fn digest(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).expect("read")).to_vec()
}

#[tokio::test]
async fn a_killed_servers_store_reads_with_its_logged_writes_and_is_not_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join(STORE_FILE)).expect("open");
    for i in 0..50 {
        store
            .create(
                format!("/registry/core/configmaps/ns/c{i}"),
                vec![b'x'; 100 * i],
                None,
            )
            .await
            .expect("create");
    }
    store
        .delete("/registry/core/configmaps/ns/c7".into(), None)
        .await
        .expect("delete");
    let lease = store
        .grant_lease(Duration::from_secs(600))
        .await
        .expect("lease");
    store
        .create(
            "/registry/core/events/ns/e".into(),
            b"event".to_vec(),
            Some(lease),
        )
        .await
        .expect("create with a lease");

    // While the server has it open, the store is refused.
    let err = read(dir.path()).expect_err("the store is open");
    assert!(matches!(err, ExportError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("stop it first"), "{err}");

    // What `kill -9` leaves: the files as they are now, the last writes only in the
    // log (no checkpoint ran within 30 s).
    let killed = dir.path().join("killed");
    std::fs::create_dir(&killed).expect("mkdir");
    for file in [STORE_FILE, WAL_FILE] {
        std::fs::copy(dir.path().join(file), killed.join(file)).expect("copy");
    }
    let before: Vec<_> = [STORE_FILE, WAL_FILE]
        .iter()
        .map(|f| digest(&killed.join(f)))
        .collect();

    let contents = read(&killed).expect("read the killed store");
    assert_eq!(contents.revision, store.current_revision());
    assert_eq!(contents.kvs.len(), 50, "49 ConfigMaps and the Event");
    let live = store
        .list("/registry/", Default::default())
        .await
        .expect("list");
    assert_eq!(
        contents.kvs, live.kvs,
        "the same keys, values and revisions"
    );
    let event = contents
        .kvs
        .iter()
        .find(|kv| kv.key.ends_with("/e"))
        .expect("the event");
    let lease = contents
        .leases
        .get(&event.lease.expect("the event's lease"))
        .expect("its lease");
    assert_eq!(lease.ttl, Duration::from_secs(600));

    // Locked while read: another reader is refused; released when dropped.
    assert!(matches!(read(&killed), Err(ExportError::InUse { .. })));
    drop(contents);
    drop(read(&killed).expect("read again once released"));
    let after: Vec<_> = [STORE_FILE, WAL_FILE]
        .iter()
        .map(|f| digest(&killed.join(f)))
        .collect();
    assert_eq!(before, after, "the store's files are not changed");
}

#[test]
fn a_dir_without_a_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = read(dir.path()).expect_err("no store");
    assert!(matches!(err, ExportError::NoStore { .. }), "{err}");
}

#[test]
fn copy_on_write_reads_its_writes_over_the_file_and_never_writes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("file");
    let original: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &original).expect("write");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let cow = CopyOnWrite::new(
        FileBackend::new(file).expect("backend"),
        original.len() as u64,
    );
    // The same operations on a plain vector.
    let mut model = original.clone();
    let write = |cow: &CopyOnWrite, model: &mut Vec<u8>, at: usize, data: &[u8]| {
        cow.write(at as u64, data).expect("write");
        if model.len() < at + data.len() {
            model.resize(at + data.len(), 0);
        }
        model[at..at + data.len()].copy_from_slice(data);
    };
    let set_len = |cow: &CopyOnWrite, model: &mut Vec<u8>, len: usize| {
        cow.set_len(len as u64).expect("set_len");
        model.resize(len, 0);
    };
    let check = |cow: &CopyOnWrite, model: &[u8]| {
        assert_eq!(cow.len().expect("len"), model.len() as u64);
        let mut all = vec![0u8; model.len()];
        cow.read(0, &mut all).expect("read");
        assert_eq!(all, model);
        let mut part = vec![0u8; 5000];
        cow.read(4000, &mut part).expect("read");
        assert_eq!(part, model[4000..9000]);
    };
    write(&cow, &mut model, 4090, &[7u8; 20]);
    check(&cow, &model);
    set_len(&cow, &mut model, 4 * BLOCK as usize + 10);
    write(&cow, &mut model, 4 * BLOCK as usize, &[9u8; 10]);
    check(&cow, &model);
    // Shortened, then grown again: what was cut off reads as zeros.
    set_len(&cow, &mut model, 4095);
    set_len(&cow, &mut model, 3 * BLOCK as usize);
    check(&cow, &model);
    let mut past = [0u8; 2];
    assert!(cow.read(3 * BLOCK - 1, &mut past).is_err(), "past the end");
    assert_eq!(std::fs::read(&path).expect("read"), original);
}
