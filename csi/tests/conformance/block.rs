//! Block volumes (access type `block`): an image file on a loop device, staged as the
//! device and published as a bind mount of its node on a file target path.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use berth_csi::proto::{
    self, volume_capability::AccessMode, volume_capability::AccessType,
    volume_capability::BlockVolume, volume_capability::access_mode::Mode, volume_content_source,
};
use berth_testkit::{require_root, skip};
use tonic::Code;

use crate::harness::{Sut, assert_code, create_request, delete_volume, is_mounted, name};

const MIB: i64 = 1 << 20;

fn block_cap(mode: Mode) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_request(name: &str, bytes: i64) -> proto::CreateVolumeRequest {
    let mut req = create_request(name, bytes);
    req.volume_capabilities = vec![block_cap(Mode::SingleNodeWriter)];
    req
}

async fn stage(sut: &Sut, id: &str, staging: &Path) -> Result<(), tonic::Status> {
    sut.node()
        .node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(block_cap(Mode::SingleNodeMultiWriter)),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn publish(sut: &Sut, id: &str, staging: &Path, target: &Path, readonly: bool) {
    sut.node()
        .node_publish_volume(proto::NodePublishVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(block_cap(Mode::SingleNodeMultiWriter)),
            readonly,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| {
            panic!(
                "NodePublishVolume {id} (block) at {}: {s}",
                target.display()
            )
        });
}

async fn unpublish(sut: &Sut, id: &str, target: &Path) {
    sut.node()
        .node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
            volume_id: id.to_owned(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeUnpublishVolume {id}: {s}"));
}

async fn unstage(sut: &Sut, id: &str, staging: &Path) {
    sut.node()
        .node_unstage_volume(proto::NodeUnstageVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeUnstageVolume {id}: {s}"));
}

/// The size of the block device at `path` (lseek to its end).
fn device_size(path: &Path) -> u64 {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.seek(SeekFrom::End(0))
        .expect("seek to the end of the device")
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)?;
    f.sync_all()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(path).expect("open the device");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read");
    buf
}

#[tokio::test]
async fn block_volumes_are_loop_devices() {
    require_root!();
    if !Path::new("/dev/loop-control").exists() {
        skip("no /dev/loop-control: the kernel has no loop devices");
        return;
    }
    let sut = Sut::start().await;
    let mut c = sut.controller();
    let n = name("blk");
    let vol = c
        .create_volume(block_request(&n, 16 * MIB))
        .await
        .expect("CreateVolume (block)")
        .into_inner()
        .volume
        .expect("a volume");
    let id = &vol.volume_id;
    assert_code(
        c.create_volume(create_request(&n, 16 * MIB)).await,
        Code::AlreadyExists,
        "the same name as a filesystem volume",
    );
    let mut mixed = block_request(&name("mixed"), MIB);
    mixed.volume_capabilities.push(crate::harness::mount_cap());
    assert_code(
        c.create_volume(mixed).await,
        Code::InvalidArgument,
        "block and mount together",
    );
    let validate = |caps| proto::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let as_mount = c
        .validate_volume_capabilities(validate(vec![crate::harness::mount_cap()]))
        .await
        .expect("Validate mount")
        .into_inner();
    assert!(
        as_mount.confirmed.is_none(),
        "a block volume is not a filesystem: {as_mount:?}"
    );
    let as_block = c
        .validate_volume_capabilities(validate(vec![block_cap(Mode::SingleNodeWriter)]))
        .await
        .expect("Validate block")
        .into_inner();
    assert!(as_block.confirmed.is_some(), "{as_block:?}");

    let staging = sut.staging_dir();
    stage(&sut, id, &staging)
        .await
        .expect("NodeStageVolume (block)");
    stage(&sut, id, &staging)
        .await
        .expect("NodeStageVolume (block) again");
    assert_code(
        sut.node()
            .node_stage_volume(proto::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(crate::harness::mount_cap()),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "staging a block volume with mount access",
    );
    let (rw, ro) = (sut.path("blk-rw"), sut.path("blk-ro"));
    publish(&sut, id, &staging, &rw, false).await;
    publish(&sut, id, &staging, &rw, false).await;
    publish(&sut, id, &staging, &ro, true).await;
    assert!(
        is_mounted(&rw) && is_mounted(&ro),
        "published at both targets"
    );
    assert_eq!(
        device_size(&rw),
        16 << 20,
        "the device has the volume's size"
    );
    write_at(&rw, 1 << 20, b"hello block").expect("write to the device");
    assert_eq!(read_at(&ro, 1 << 20, 11), b"hello block");
    let err = write_at(&ro, 0, b"x").expect_err("a readonly block publish refuses writes");
    let refused = [
        nix::errno::Errno::EROFS,
        nix::errno::Errno::EACCES,
        nix::errno::Errno::EPERM,
    ];
    assert!(
        refused
            .iter()
            .any(|e| err.raw_os_error() == Some(*e as i32)),
        "EROFS, EACCES or EPERM, got {err}"
    );

    let stats = sut
        .node()
        .node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: rw.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("NodeGetVolumeStats (block)")
        .into_inner();
    assert_eq!(
        stats.usage.first().map(|u| u.total),
        Some(16 * MIB),
        "{stats:?}"
    );

    let grown = c
        .controller_expand_volume(proto::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(proto::CapacityRange {
                required_bytes: 32 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume (block)")
        .into_inner();
    assert!(
        grown.node_expansion_required,
        "the loop device must re-read the size"
    );
    sut.node()
        .node_expand_volume(proto::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: rw.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("NodeExpandVolume (block)");
    assert_eq!(device_size(&rw), 32 << 20, "the device grew");
    assert_eq!(
        read_at(&rw, 1 << 20, 11),
        b"hello block",
        "data survives the growth"
    );

    assert_code(
        c.delete_volume(proto::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "deleting a staged block volume",
    );

    // A snapshot is a (sparse) copy of the image; a restore is a block volume with the data.
    let snap = c
        .create_snapshot(proto::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: name("blksnap"),
            ..Default::default()
        })
        .await
        .expect("CreateSnapshot (block)")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    assert_eq!(
        snap.size_bytes,
        32 * MIB,
        "a block snapshot's size is its image's"
    );
    let source = proto::VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    };
    let mut as_fs = create_request(&name("blk-as-fs"), 32 * MIB);
    as_fs.volume_content_source = Some(source.clone());
    assert_code(
        c.create_volume(as_fs).await,
        Code::InvalidArgument,
        "a filesystem volume from a block snapshot",
    );
    // Asking for less than the snapshot's size still gets the whole image.
    let mut restore = block_request(&name("blk-restored"), 8 * MIB);
    restore.volume_content_source = Some(source);
    let restored = c
        .create_volume(restore)
        .await
        .expect("CreateVolume (block) from a snapshot")
        .into_inner()
        .volume
        .expect("a volume");
    let staging2 = sut.staging_dir();
    let target2 = sut.path("blk-restored");
    stage(&sut, &restored.volume_id, &staging2)
        .await
        .expect("stage the restored volume");
    assert_eq!(restored.capacity_bytes, 32 * MIB, "{restored:?}");
    publish(&sut, &restored.volume_id, &staging2, &target2, false).await;
    assert_eq!(device_size(&target2), 32 << 20);
    assert_eq!(
        read_at(&target2, 1 << 20, 11),
        b"hello block",
        "the restored device has the data"
    );

    for (vid, staging, targets) in [
        (id, &staging, vec![&rw, &ro]),
        (&restored.volume_id, &staging2, vec![&target2]),
    ] {
        for t in targets {
            unpublish(&sut, vid, t).await;
            unpublish(&sut, vid, t).await;
            assert!(!t.exists() && !is_mounted(t), "{} removed", t.display());
        }
        unstage(&sut, vid, staging).await;
        unstage(&sut, vid, staging).await;
    }
    assert_eq!(
        crate::harness::loop_devices_under(&sut.root()),
        Vec::<std::path::PathBuf>::new(),
        "every loop device is detached"
    );
    sut.controller()
        .delete_snapshot(proto::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("DeleteSnapshot");
    delete_volume(&sut, id).await;
    delete_volume(&sut, &restored.volume_id).await;
}
