//! CreateSnapshot/DeleteSnapshot/ListSnapshots and volumes created from a snapshot.

use std::fs;

use berth_csi::proto::{self, volume_content_source};
use berth_testkit::require_root;
use tonic::Code;

use crate::harness::{Sut, assert_code, create_request, create_volume, delete_volume, name};
use crate::node::{publish, stage, unpublish, unstage};

const MIB: i64 = 1 << 20;

fn snapshot_request(source: &str, name: &str) -> proto::CreateSnapshotRequest {
    proto::CreateSnapshotRequest {
        source_volume_id: source.to_owned(),
        name: name.to_owned(),
        ..Default::default()
    }
}

async fn delete_snapshot(sut: &Sut, id: &str) {
    sut.controller()
        .delete_snapshot(proto::DeleteSnapshotRequest {
            snapshot_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("DeleteSnapshot {id}: {s}"));
}

#[tokio::test]
async fn snapshots_are_idempotent_listed_and_deleted() {
    let sut = Sut::start().await;
    let a = create_volume(&sut, &name("snapsrc"), MIB).await;
    let b = create_volume(&sut, &name("snapother"), MIB).await;
    let mut c = sut.controller();
    let n = name("snap");
    let snap = c
        .create_snapshot(snapshot_request(&a.volume_id, &n))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    assert_eq!(snap.source_volume_id, a.volume_id);
    assert!(
        snap.ready_to_use && snap.creation_time.is_some(),
        "{snap:?}"
    );
    let again = c
        .create_snapshot(snapshot_request(&a.volume_id, &n))
        .await
        .expect("CreateSnapshot again")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    assert_eq!(
        again.snapshot_id, snap.snapshot_id,
        "the same name is the same snapshot"
    );
    assert_code(
        c.create_snapshot(snapshot_request(&b.volume_id, &n)).await,
        Code::AlreadyExists,
        "the same name for another volume",
    );
    assert_code(
        c.create_snapshot(snapshot_request(&a.volume_id, "")).await,
        Code::InvalidArgument,
        "CreateSnapshot without name",
    );
    assert_code(
        c.create_snapshot(snapshot_request(
            "vol-00000000000000000000000000000000",
            &name("snap"),
        ))
        .await,
        Code::NotFound,
        "a snapshot of an unknown volume",
    );

    let by_id = c
        .list_snapshots(proto::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListSnapshots by id")
        .into_inner();
    assert_eq!(by_id.entries.len(), 1, "{by_id:?}");
    let by_source = c
        .list_snapshots(proto::ListSnapshotsRequest {
            source_volume_id: b.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListSnapshots by source")
        .into_inner();
    assert!(
        by_source.entries.is_empty(),
        "volume b has no snapshot: {by_source:?}"
    );
    assert_code(
        c.list_snapshots(proto::ListSnapshotsRequest {
            starting_token: "bogus".into(),
            ..Default::default()
        })
        .await,
        Code::Aborted,
        "ListSnapshots with a bad token",
    );

    delete_snapshot(&sut, &snap.snapshot_id).await;
    delete_snapshot(&sut, &snap.snapshot_id).await;
    let gone = c
        .list_snapshots(proto::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListSnapshots after delete")
        .into_inner();
    assert!(
        gone.entries.is_empty(),
        "a deleted snapshot is not listed: {gone:?}"
    );
    delete_volume(&sut, &a.volume_id).await;
    delete_volume(&sut, &b.volume_id).await;
    if sut.own() {
        assert_eq!(
            fs::read_dir(sut.root().join("snapshots"))
                .expect("snapshots dir")
                .count(),
            0,
            "no copy is left"
        );
    }
}

#[tokio::test]
async fn a_volume_from_a_snapshot_has_its_data() {
    require_root!();
    let sut = Sut::start().await;
    let src = create_volume(&sut, &name("restore-src"), 10 * MIB).await;
    let staging = sut.staging_dir();
    let target = sut.path("target");
    stage(&sut, &src.volume_id, &staging).await;
    publish(&sut, &src.volume_id, &staging, &target, false).await;
    fs::create_dir(target.join("dir")).expect("mkdir in the volume");
    fs::write(target.join("dir/data"), b"kept by the snapshot").expect("write in the volume");

    let mut c = sut.controller();
    let snap = c
        .create_snapshot(snapshot_request(&src.volume_id, &name("restore")))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    fs::write(target.join("dir/data"), b"changed after").expect("write after the snapshot");

    let mut req = create_request(&name("restored"), 10 * MIB);
    req.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = c
        .create_volume(req.clone())
        .await
        .expect("CreateVolume from a snapshot")
        .into_inner()
        .volume
        .expect("a volume");
    assert!(
        restored.content_source.is_some(),
        "the response names its source"
    );
    let staging2 = sut.staging_dir();
    let target2 = sut.path("target");
    stage(&sut, &restored.volume_id, &staging2).await;
    publish(&sut, &restored.volume_id, &staging2, &target2, false).await;
    assert_eq!(
        fs::read(target2.join("dir/data")).expect("read the restored file"),
        b"kept by the snapshot"
    );

    // A clone (volume_content_source.volume) is a copy of the volume as it is now.
    let mut clone = req.clone();
    clone.name = name("clone");
    clone.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: src.volume_id.clone(),
            },
        )),
    });
    let cloned = c
        .create_volume(clone)
        .await
        .expect("CreateVolume from a volume")
        .into_inner()
        .volume
        .expect("a volume");
    let staging3 = sut.staging_dir();
    let target3 = sut.path("target");
    stage(&sut, &cloned.volume_id, &staging3).await;
    publish(&sut, &cloned.volume_id, &staging3, &target3, false).await;
    assert_eq!(
        fs::read(target3.join("dir/data")).expect("read the cloned file"),
        b"changed after"
    );

    let mut missing = req;
    missing.name = name("nosnap");
    missing.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "snap-00000000000000000000000000000000".into(),
            },
        )),
    });
    assert_code(
        c.create_volume(missing).await,
        Code::NotFound,
        "a volume from an unknown snapshot",
    );

    for (id, staging, target) in [
        (&src.volume_id, &staging, &target),
        (&restored.volume_id, &staging2, &target2),
        (&cloned.volume_id, &staging3, &target3),
    ] {
        unpublish(&sut, id, target).await;
        unstage(&sut, id, staging).await;
        delete_volume(&sut, id).await;
    }
    delete_snapshot(&sut, &snap.snapshot_id).await;
}

#[tokio::test]
async fn a_failed_restore_leaves_nothing_behind() {
    let sut = Sut::start().await;
    if !sut.own() {
        return; // breaking a snapshot on disk needs the driver's root
    }
    let src = create_volume(&sut, &name("broken-src"), MIB).await;
    let mut c = sut.controller();
    let snap = c
        .create_snapshot(snapshot_request(&src.volume_id, &name("broken")))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    // The snapshot's copy vanishes behind the driver's back: the restore must fail
    // and leave no volume directory and no volume.
    fs::remove_dir_all(sut.root().join("snapshots").join(&snap.snapshot_id))
        .expect("remove the snapshot's copy");
    let mut req = create_request(&name("broken-restore"), MIB);
    req.volume_content_source = Some(proto::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let err = c
        .create_volume(req)
        .await
        .expect_err("restoring a broken snapshot fails");
    assert_eq!(err.code(), Code::Internal, "{err}");
    let volumes: Vec<String> = fs::read_dir(sut.root().join("volumes"))
        .expect("volumes dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        volumes,
        vec![src.volume_id.clone()],
        "only the source's directory is left"
    );
    let listed = c
        .list_volumes(proto::ListVolumesRequest::default())
        .await
        .expect("ListVolumes")
        .into_inner()
        .entries
        .len();
    assert_eq!(listed, 1, "the failed volume is not recorded");
    delete_snapshot(&sut, &snap.snapshot_id).await;
    delete_volume(&sut, &src.volume_id).await;
}
