//! Node service: NodeGetInfo/NodeGetCapabilities, the INVALID_ARGUMENT rows, the
//! stage → publish → unpublish → unstage lifecycle (each call twice), readonly publish,
//! NodeGetVolumeStats and NodeExpandVolume. Mounting needs root.

use std::fs;
use std::io::Write;
use std::path::Path;

use berth_csi::proto::{self, node_service_capability, volume_capability::access_mode::Mode};
use berth_testkit::{require_root, skip};
use tonic::Code;

use crate::harness::{
    NODE_ID, Sut, assert_code, create_volume, delete_volume, is_mounted, mount_cap, mount_cap_mode,
    name,
};

const MIB: i64 = 1 << 20;

pub async fn stage(sut: &Sut, id: &str, staging: &Path) {
    sut.node()
        .node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("NodeStageVolume {id}: {s}"));
}

pub async fn unstage(sut: &Sut, id: &str, staging: &Path) {
    sut.node()
        .node_unstage_volume(proto::NodeUnstageVolumeRequest {
            volume_id: id.to_owned(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeUnstageVolume {id}: {s}"));
}

fn publish_request(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> proto::NodePublishVolumeRequest {
    publish_request_mode(id, staging, target, readonly, Mode::SingleNodeWriter)
}

fn publish_request_mode(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
    mode: Mode,
) -> proto::NodePublishVolumeRequest {
    proto::NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap_mode(mode)),
        readonly,
        ..Default::default()
    }
}

pub async fn publish(sut: &Sut, id: &str, staging: &Path, target: &Path, readonly: bool) {
    sut.node()
        .node_publish_volume(publish_request(id, staging, target, readonly))
        .await
        .unwrap_or_else(|s| panic!("NodePublishVolume {id} at {}: {s}", target.display()));
}

/// Publishes with SINGLE_NODE_MULTI_WRITER, the mode that may publish at several
/// targets on one node (spec.md, NodePublishVolume's second table).
pub async fn publish_multi(sut: &Sut, id: &str, staging: &Path, target: &Path, readonly: bool) {
    sut.node()
        .node_publish_volume(publish_request_mode(
            id,
            staging,
            target,
            readonly,
            Mode::SingleNodeMultiWriter,
        ))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "NodePublishVolume {id} at {} (multi-writer): {s}",
                target.display()
            )
        });
}

pub async fn unpublish(sut: &Sut, id: &str, target: &Path) {
    sut.node()
        .node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
            volume_id: id.to_owned(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap_or_else(|s| panic!("NodeUnpublishVolume {id} at {}: {s}", target.display()));
}

async fn stats(
    sut: &Sut,
    id: &str,
    path: &Path,
) -> Result<proto::NodeGetVolumeStatsResponse, tonic::Status> {
    sut.node()
        .node_get_volume_stats(proto::NodeGetVolumeStatsRequest {
            volume_id: id.to_owned(),
            volume_path: path.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn usage(
    resp: &proto::NodeGetVolumeStatsResponse,
    unit: proto::volume_usage::Unit,
) -> proto::VolumeUsage {
    resp.usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .copied()
        .unwrap_or_else(|| panic!("no {unit:?} usage in {resp:?}"))
}

#[tokio::test]
async fn node_info_and_capabilities() {
    let sut = Sut::start().await;
    let info = sut
        .node()
        .node_get_info(proto::NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo")
        .into_inner();
    assert!(!info.node_id.is_empty(), "node_id is required");
    let caps: Vec<i32> = sut
        .node()
        .node_get_capabilities(proto::NodeGetCapabilitiesRequest {})
        .await
        .expect("NodeGetCapabilities")
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| {
            c.r#type
                .map(|node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    if sut.own() {
        use node_service_capability::rpc::Type;
        assert_eq!(info.node_id, NODE_ID);
        assert_eq!(info.max_volumes_per_node, 64);
        let topology = info.accessible_topology.expect("a topology");
        assert_eq!(
            topology
                .segments
                .get(berth_csi::TOPOLOGY_KEY)
                .map(String::as_str),
            Some(NODE_ID)
        );
        for cap in [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
        ] {
            assert!(caps.contains(&(cap as i32)), "{cap:?} in {caps:?}");
        }
    }
}

#[tokio::test]
async fn missing_fields_are_invalid_argument() {
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("nodeargs"), MIB).await;
    let staging = sut.staging_dir();
    let target = sut.path("target");
    let mut n = sut.node();
    let id = vol.volume_id.clone();
    let stage_req = |id: &str, path: &Path, cap: bool| proto::NodeStageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: path.display().to_string(),
        volume_capability: cap.then(mount_cap),
        ..Default::default()
    };
    assert_code(
        n.node_stage_volume(stage_req(&id, Path::new("relative/staging"), true))
            .await,
        Code::InvalidArgument,
        "stage at a relative path",
    );
    assert_code(
        n.node_stage_volume(stage_req("", &staging, true)).await,
        Code::InvalidArgument,
        "stage without volume_id",
    );
    assert_code(
        n.node_stage_volume(stage_req(&id, Path::new(""), true))
            .await,
        Code::InvalidArgument,
        "stage without staging path",
    );
    assert_code(
        n.node_stage_volume(stage_req(&id, &staging, false)).await,
        Code::InvalidArgument,
        "stage without capability",
    );
    let mut p = publish_request(&id, &staging, &target, false);
    p.volume_id.clear();
    assert_code(
        n.node_publish_volume(p).await,
        Code::InvalidArgument,
        "publish without volume_id",
    );
    let mut p = publish_request(&id, &staging, &target, false);
    p.target_path.clear();
    assert_code(
        n.node_publish_volume(p).await,
        Code::InvalidArgument,
        "publish without target_path",
    );
    let mut p = publish_request(&id, &staging, &target, false);
    p.volume_capability = None;
    assert_code(
        n.node_publish_volume(p).await,
        Code::InvalidArgument,
        "publish without capability",
    );
    assert_code(
        n.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
            volume_id: String::new(),
            target_path: target.display().to_string(),
        })
        .await,
        Code::InvalidArgument,
        "unpublish without volume_id",
    );
    assert_code(
        n.node_unpublish_volume(proto::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "unpublish without target_path",
    );
    assert_code(
        n.node_unstage_volume(proto::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "unstage without staging path",
    );
    assert_code(
        stats(&sut, "", &target).await,
        Code::InvalidArgument,
        "stats without volume_id",
    );
    assert_code(
        stats(&sut, &id, Path::new("")).await,
        Code::InvalidArgument,
        "stats without volume_path",
    );
    assert_code(
        n.node_stage_volume(stage_req(
            "vol-00000000000000000000000000000000",
            &staging,
            true,
        ))
        .await,
        Code::NotFound,
        "staging an unknown volume",
    );
    if sut.own() {
        assert_code(
            n.node_publish_volume(publish_request(&id, &staging, &target, false))
                .await,
            Code::FailedPrecondition,
            "publish before stage",
        );
        assert!(
            !target.exists(),
            "a failed publish leaves no target directory"
        );
        let mut p = publish_request(&id, &staging, &target, false);
        p.staging_target_path.clear();
        assert_code(
            n.node_publish_volume(p).await,
            Code::FailedPrecondition,
            "publish without staging_target_path (\"Staging target path not set\")",
        );
        let mut block = stage_req(&id, &staging, true);
        block.volume_capability = Some(proto::VolumeCapability {
            access_type: Some(proto::volume_capability::AccessType::Block(
                proto::volume_capability::BlockVolume {},
            )),
            access_mode: mount_cap().access_mode,
        });
        assert_code(
            n.node_stage_volume(block).await,
            Code::FailedPrecondition,
            "staging with a capability the volume does not have (\"Exceeds capabilities\")",
        );
    }
    delete_volume(&sut, &id).await;
}

#[tokio::test]
async fn stage_publish_unpublish_unstage_each_twice() {
    require_root!();
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("life"), 10 * MIB).await;
    let id = &vol.volume_id;
    let staging = sut.staging_dir();
    let (t1, t2) = (sut.path("target"), sut.path("target"));
    stage(&sut, id, &staging).await;
    stage(&sut, id, &staging).await;
    assert!(is_mounted(&staging), "staged at {}", staging.display());
    publish_multi(&sut, id, &staging, &t1, false).await;
    publish_multi(&sut, id, &staging, &t1, false).await;
    publish_multi(&sut, id, &staging, &t2, false).await;
    assert!(
        is_mounted(&t1) && is_mounted(&t2),
        "published at both targets"
    );
    fs::write(t1.join("hello"), b"world").expect("write through the first target");
    assert_eq!(
        fs::read(t2.join("hello")).expect("read through the second"),
        b"world"
    );

    if sut.own() {
        let other = create_volume(&sut, &name("other"), MIB).await;
        assert_code(
            sut.node()
                .node_stage_volume(proto::NodeStageVolumeRequest {
                    volume_id: other.volume_id.clone(),
                    staging_target_path: staging.display().to_string(),
                    volume_capability: Some(mount_cap()),
                    ..Default::default()
                })
                .await,
            Code::AlreadyExists,
            "staging another volume on a staged path",
        );
        assert_code(
            sut.controller()
                .delete_volume(proto::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
                .await,
            Code::FailedPrecondition,
            "deleting a published volume",
        );
        delete_volume(&sut, &other.volume_id).await;
    }

    for t in [&t1, &t2] {
        unpublish(&sut, id, t).await;
        unpublish(&sut, id, t).await;
        assert!(!is_mounted(t), "{} unmounted", t.display());
        assert!(!t.exists(), "NodeUnpublishVolume removes {}", t.display());
    }
    unstage(&sut, id, &staging).await;
    unstage(&sut, id, &staging).await;
    assert!(!is_mounted(&staging), "unstaged");
    delete_volume(&sut, id).await;
}

#[tokio::test]
async fn readonly_publish_refuses_writes() {
    require_root!();
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("ro"), 10 * MIB).await;
    let id = &vol.volume_id;
    let staging = sut.staging_dir();
    let (rw, ro) = (sut.path("rw"), sut.path("ro"));
    stage(&sut, id, &staging).await;
    publish_multi(&sut, id, &staging, &rw, false).await;
    publish_multi(&sut, id, &staging, &ro, true).await;
    publish_multi(&sut, id, &staging, &ro, true).await;
    fs::write(rw.join("file"), b"from the writer").expect("write through the read-write target");
    assert_eq!(
        fs::read(ro.join("file")).expect("read through the readonly target"),
        b"from the writer"
    );
    let err = fs::write(ro.join("other"), b"x").expect_err("a readonly publish refuses writes");
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "EROFS, got {err}");
    assert_code(
        sut.node()
            .node_publish_volume(publish_request_mode(
                id,
                &staging,
                &ro,
                false,
                Mode::SingleNodeMultiWriter,
            ))
            .await,
        Code::AlreadyExists,
        "publishing read-write where it is published readonly",
    );
    unpublish(&sut, id, &ro).await;
    unpublish(&sut, id, &rw).await;
    unstage(&sut, id, &staging).await;
    delete_volume(&sut, id).await;
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[tokio::test]
async fn volume_stats_and_node_expansion() {
    require_root!();
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("stats"), 10 * MIB).await;
    let id = &vol.volume_id;
    let staging = sut.staging_dir();
    let target = sut.path("target");
    stage(&sut, id, &staging).await;
    publish(&sut, id, &staging, &target, false).await;
    let mut f = fs::File::create(target.join("data")).expect("create a file");
    f.write_all(&vec![1u8; MIB as usize]).expect("write 1 MiB");
    f.sync_all().expect("fsync");
    drop(f);

    let s = stats(&sut, id, &target).await.expect("NodeGetVolumeStats");
    let bytes = usage(&s, proto::volume_usage::Unit::Bytes);
    let inodes = usage(&s, proto::volume_usage::Unit::Inodes);
    assert!(bytes.used >= MIB, "1 MiB written, {bytes:?}");
    assert!(
        bytes.available >= 0 && inodes.used >= 2,
        "{bytes:?} {inodes:?}"
    );
    if sut.own() {
        assert_eq!(
            bytes.total, vol.capacity_bytes,
            "total is the volume's capacity"
        );
        assert!(
            bytes.available <= vol.capacity_bytes - bytes.used,
            "{bytes:?}"
        );
    }
    assert_code(
        stats(&sut, "vol-00000000000000000000000000000000", &target).await,
        Code::NotFound,
        "stats of an unknown volume",
    );
    assert_code(
        stats(&sut, id, &sut.path("nowhere")).await,
        Code::NotFound,
        "stats at a path without the volume",
    );

    let grown = sut
        .controller()
        .controller_expand_volume(proto::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(proto::CapacityRange {
                required_bytes: 20 * MIB,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .expect("ControllerExpandVolume while published (online)")
        .into_inner();
    let node = sut
        .node()
        .node_expand_volume(proto::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(proto::CapacityRange {
                required_bytes: 20 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("NodeExpandVolume")
        .into_inner();
    assert!(node.capacity_bytes >= 20 * MIB, "{node:?}");
    if sut.own() {
        assert_eq!(node.capacity_bytes, grown.capacity_bytes);
        let s = stats(&sut, id, &target)
            .await
            .expect("stats after expansion");
        assert_eq!(
            usage(&s, proto::volume_usage::Unit::Bytes).total,
            grown.capacity_bytes,
            "stats show the new size"
        );
    }
    assert_code(
        sut.node()
            .node_expand_volume(proto::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "NodeExpandVolume without volume_path",
    );
    unpublish(&sut, id, &target).await;
    unstage(&sut, id, &staging).await;
    delete_volume(&sut, id).await;
}

#[tokio::test]
async fn writes_past_the_capacity_fail_or_show_in_stats() {
    require_root!();
    let sut = Sut::start().await;
    if !sut.own() {
        skip("how an external driver limits sizes is its own business");
        return;
    }
    let info = sut
        .identity()
        .get_plugin_info(proto::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    let quota = info.manifest.get("quota").cloned().unwrap_or_default();
    let vol = create_volume(&sut, &name("quota"), 4 * MIB).await;
    let id = &vol.volume_id;
    let staging = sut.staging_dir();
    let target = sut.path("target");
    stage(&sut, id, &staging).await;
    publish(&sut, id, &staging, &target, false).await;
    let written = fs::File::create(target.join("big")).and_then(|mut f| {
        f.write_all(&vec![1u8; 8 * MIB as usize])?;
        f.sync_all()
    });
    if quota == "none" {
        // Not enforced (docs/storage.md): the write lands, and stats say so.
        written.expect("without quotas nothing stops the write");
        let s = stats(&sut, id, &target).await.expect("NodeGetVolumeStats");
        let bytes = usage(&s, proto::volume_usage::Unit::Bytes);
        assert!(
            bytes.used >= 8 * MIB && bytes.used > bytes.total,
            "{bytes:?}"
        );
        assert_eq!(bytes.available, 0, "{bytes:?}");
        let condition = s.volume_condition.expect("a volume condition");
        assert!(
            condition.abnormal && condition.message.contains("not enforced"),
            "{condition:?}"
        );
    } else {
        let err = written.expect_err("8 MiB do not fit a 4 MiB volume with quotas");
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::EDQUOT as i32),
            "EDQUOT ({quota}), got {err}"
        );
    }
    unpublish(&sut, id, &target).await;
    unstage(&sut, id, &staging).await;
    delete_volume(&sut, id).await;
}

#[tokio::test]
async fn a_second_target_follows_the_access_mode_table() {
    require_root!();
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("modes"), MIB).await;
    let id = &vol.volume_id;
    let staging = sut.staging_dir();
    let (t1, t2) = (sut.path("target"), sut.path("target"));
    stage(&sut, id, &staging).await;
    let mut n = sut.node();
    let req = |t: &Path, mode| publish_request_mode(id, &staging, t, false, mode);
    n.node_publish_volume(req(&t1, Mode::SingleNodeSingleWriter))
        .await
        .expect("the first publish");
    n.node_publish_volume(req(&t1, Mode::SingleNodeSingleWriter))
        .await
        .expect("T1=T2, P1=P2 is OK");
    assert_code(
        n.node_publish_volume(req(&t1, Mode::SingleNodeMultiWriter))
            .await,
        Code::AlreadyExists,
        "T1=T2, P1!=P2",
    );
    assert_code(
        n.node_publish_volume(req(&t2, Mode::SingleNodeSingleWriter))
            .await,
        Code::FailedPrecondition,
        "T1!=T2 for SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod)",
    );
    assert!(!t2.exists(), "a refused publish leaves no target directory");
    unpublish(&sut, id, &t1).await;
    n.node_publish_volume(req(&t2, Mode::SingleNodeSingleWriter))
        .await
        .expect("once unpublished at T1, T2 is free");
    unpublish(&sut, id, &t2).await;
    unstage(&sut, id, &staging).await;
    delete_volume(&sut, id).await;
}

#[tokio::test]
async fn failed_stage_and_publish_leave_nothing_behind() {
    require_root!();
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("nohalf"), MIB).await;
    let id = &vol.volume_id;
    let mut n = sut.node();
    // A staging path whose parent does not exist cannot be staged.
    let orphan = sut.path("missing-parent").join("staging");
    let err = n
        .node_stage_volume(proto::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: orphan.display().to_string(),
            volume_capability: Some(mount_cap()),
            ..Default::default()
        })
        .await
        .expect_err("staging under a missing parent fails");
    assert!(
        !orphan.exists() && !is_mounted(&orphan),
        "{err}: nothing is left at {}",
        orphan.display()
    );
    // Nor can a target whose parent does not exist be published.
    let staging = sut.staging_dir();
    stage(&sut, id, &staging).await;
    let target = sut.path("missing-parent").join("target");
    let err = n
        .node_publish_volume(publish_request(id, &staging, &target, false))
        .await
        .expect_err("publishing under a missing parent fails");
    assert!(
        !target.exists() && !is_mounted(&target),
        "{err}: nothing is left at {}",
        target.display()
    );
    unstage(&sut, id, &staging).await;
    assert!(!is_mounted(&staging));
    delete_volume(&sut, id).await;
}
