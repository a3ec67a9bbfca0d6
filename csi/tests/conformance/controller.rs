//! Controller service: CreateVolume/DeleteVolume idempotency and capacity, the
//! INVALID_ARGUMENT rows of the error tables, ValidateVolumeCapabilities, ListVolumes
//! pagination, GetCapacity and ControllerExpandVolume.

use std::collections::BTreeSet;

use berth_csi::proto::{self, volume_capability::access_mode::Mode};
use tonic::Code;

use crate::harness::{
    CAPACITY, NODE_ID, Sut, assert_code, create_request, create_volume, delete_volume, mount_cap,
    mount_cap_mode, name,
};

const MIB: i64 = 1 << 20;

#[tokio::test]
async fn create_and_delete_are_idempotent_by_name() {
    let sut = Sut::start().await;
    let n = name("idem");
    let first = create_volume(&sut, &n, 10 * MIB).await;
    assert!(
        first.capacity_bytes >= 10 * MIB,
        "capacity {} < required",
        first.capacity_bytes
    );
    assert!(!first.volume_id.is_empty());
    let second = create_volume(&sut, &n, 10 * MIB).await;
    assert_eq!(
        first.volume_id, second.volume_id,
        "the same name is the same volume"
    );
    assert_eq!(first.capacity_bytes, second.capacity_bytes);
    delete_volume(&sut, &first.volume_id).await;
    delete_volume(&sut, &first.volume_id).await; // a deleted volume deletes again
    if sut.own() {
        assert_eq!(
            std::fs::read_dir(sut.root().join("volumes"))
                .expect("volumes dir")
                .count(),
            0,
            "no directory is left"
        );
    }
}

#[tokio::test]
async fn same_name_with_incompatible_capacity_is_already_exists() {
    let sut = Sut::start().await;
    let n = name("mismatch");
    let vol = create_volume(&sut, &n, 10 * MIB).await;
    let mut bigger = create_request(&n, 0);
    bigger.capacity_range = Some(proto::CapacityRange {
        required_bytes: vol.capacity_bytes + 10 * MIB,
        limit_bytes: 0,
    });
    assert_code(
        sut.controller().create_volume(bigger).await,
        Code::AlreadyExists,
        "a larger required_bytes",
    );
    let mut smaller = create_request(&n, 0);
    smaller.capacity_range = Some(proto::CapacityRange {
        required_bytes: MIB,
        limit_bytes: vol.capacity_bytes - 1,
    });
    assert_code(
        sut.controller().create_volume(smaller).await,
        Code::AlreadyExists,
        "a limit below the capacity",
    );
    delete_volume(&sut, &vol.volume_id).await;
}

#[tokio::test]
async fn missing_fields_are_invalid_argument() {
    let sut = Sut::start().await;
    let mut c = sut.controller();
    assert_code(
        c.create_volume(create_request("", MIB)).await,
        Code::InvalidArgument,
        "CreateVolume without name",
    );
    let mut no_caps = create_request(&name("nocaps"), MIB);
    no_caps.volume_capabilities.clear();
    assert_code(
        c.create_volume(no_caps).await,
        Code::InvalidArgument,
        "CreateVolume without capabilities",
    );
    let mut no_type = create_request(&name("notype"), MIB);
    no_type.volume_capabilities[0].access_type = None;
    assert_code(
        c.create_volume(no_type).await,
        Code::InvalidArgument,
        "CreateVolume without access type",
    );
    let mut no_mode = create_request(&name("nomode"), MIB);
    no_mode.volume_capabilities[0].access_mode = None;
    assert_code(
        c.create_volume(no_mode).await,
        Code::InvalidArgument,
        "CreateVolume without access mode",
    );
    assert_code(
        c.delete_volume(proto::DeleteVolumeRequest::default()).await,
        Code::InvalidArgument,
        "DeleteVolume without volume_id",
    );
    assert_code(
        c.validate_volume_capabilities(proto::ValidateVolumeCapabilitiesRequest {
            volume_capabilities: vec![mount_cap()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "ValidateVolumeCapabilities without volume_id",
    );
    assert_code(
        c.controller_expand_volume(proto::ControllerExpandVolumeRequest {
            capacity_range: Some(proto::CapacityRange {
                required_bytes: MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "ControllerExpandVolume without volume_id",
    );
    assert_code(
        c.create_snapshot(proto::CreateSnapshotRequest {
            name: name("s"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "CreateSnapshot without source_volume_id",
    );
    assert_code(
        c.delete_snapshot(proto::DeleteSnapshotRequest::default())
            .await,
        Code::InvalidArgument,
        "DeleteSnapshot without snapshot_id",
    );
}

#[tokio::test]
async fn validate_volume_capabilities() {
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("validate"), MIB).await;
    let mut c = sut.controller();
    let req =
        |id: &str, caps: Vec<proto::VolumeCapability>| proto::ValidateVolumeCapabilitiesRequest {
            volume_id: id.to_owned(),
            volume_capabilities: caps,
            ..Default::default()
        };
    let ok = c
        .validate_volume_capabilities(req(&vol.volume_id, vec![mount_cap()]))
        .await
        .expect("Validate")
        .into_inner();
    let confirmed = ok
        .confirmed
        .unwrap_or_else(|| panic!("mount/single-node-writer confirmed: {}", ok.message));
    assert_eq!(confirmed.volume_capabilities, vec![mount_cap()]);
    assert_code(
        c.validate_volume_capabilities(req(&vol.volume_id, vec![]))
            .await,
        Code::InvalidArgument,
        "no capabilities",
    );
    assert_code(
        c.validate_volume_capabilities(req(
            "vol-00000000000000000000000000000000",
            vec![mount_cap()],
        ))
        .await,
        Code::NotFound,
        "an unknown volume",
    );
    if sut.own() {
        let multi = c
            .validate_volume_capabilities(req(
                &vol.volume_id,
                vec![mount_cap_mode(Mode::MultiNodeMultiWriter)],
            ))
            .await
            .expect("Validate multi-node")
            .into_inner();
        assert!(
            multi.confirmed.is_none() && !multi.message.is_empty(),
            "a local volume is not multi-node: {multi:?}"
        );
    }
    delete_volume(&sut, &vol.volume_id).await;
}

#[tokio::test]
async fn list_volumes_paginates_and_aborts_on_a_bad_token() {
    let sut = Sut::start().await;
    let mut created = BTreeSet::new();
    for _ in 0..5 {
        created.insert(create_volume(&sut, &name("list"), MIB).await.volume_id);
    }
    let mut c = sut.controller();
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_volumes(proto::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        assert!(
            page.entries.len() <= 2,
            "max_entries 2, got {}",
            page.entries.len()
        );
        for e in page.entries {
            let id = e.volume.expect("an entry has its volume").volume_id;
            assert!(seen.insert(id.clone()), "{id} listed twice");
        }
        pages += 1;
        assert!(pages < 100, "pagination does not end");
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert!(
        created.is_subset(&seen),
        "every created volume is listed: {created:?} vs {seen:?}"
    );
    assert!(
        pages >= 3,
        "5 volumes in pages of 2 take 3 pages, took {pages}"
    );
    assert_code(
        c.list_volumes(proto::ListVolumesRequest {
            max_entries: 0,
            starting_token: "no-such-token".into(),
        })
        .await,
        Code::Aborted,
        "ListVolumes with a token the driver never returned",
    );
    for id in created {
        delete_volume(&sut, &id).await;
    }
}

#[tokio::test]
async fn capacity_is_accounted_and_enforced() {
    let sut = Sut::start().await;
    let mut c = sut.controller();
    let capacity = |c: &mut proto::controller_client::ControllerClient<_>| {
        let mut c = c.clone();
        async move {
            c.get_capacity(proto::GetCapacityRequest::default())
                .await
                .expect("GetCapacity")
                .into_inner()
        }
    };
    let before = capacity(&mut c).await;
    let vol = create_volume(&sut, &name("cap"), 100 * MIB).await;
    let after = capacity(&mut c).await;
    assert!(
        after.available_capacity <= before.available_capacity,
        "{before:?} then {after:?}"
    );
    if sut.own() {
        assert_eq!(before.available_capacity, CAPACITY);
        assert_eq!(after.available_capacity, CAPACITY - vol.capacity_bytes);
        assert_code(
            c.create_volume(create_request(&name("huge"), CAPACITY + 1))
                .await,
            Code::OutOfRange,
            "a volume larger than the node",
        );
        assert_code(
            c.create_volume(create_request(
                &name("rest"),
                CAPACITY - vol.capacity_bytes + 1,
            ))
            .await,
            Code::ResourceExhausted,
            "a volume larger than what is left",
        );
        let elsewhere = proto::Topology {
            segments: [(berth_csi::TOPOLOGY_KEY.to_owned(), "other-node".to_owned())].into(),
        };
        let mut req = create_request(&name("topo"), MIB);
        req.accessibility_requirements = Some(proto::TopologyRequirement {
            requisite: vec![elsewhere.clone()],
            preferred: vec![],
        });
        assert_code(
            c.create_volume(req).await,
            Code::ResourceExhausted,
            "a requisite topology without this node",
        );
        let there = c
            .get_capacity(proto::GetCapacityRequest {
                accessible_topology: Some(elsewhere),
                ..Default::default()
            })
            .await
            .expect("GetCapacity elsewhere")
            .into_inner();
        assert_eq!(there.available_capacity, 0, "no capacity on another node");
        let dirs = std::fs::read_dir(sut.root().join("volumes"))
            .expect("volumes dir")
            .count();
        assert_eq!(dirs, 1, "refused CreateVolumes leave no directory");
        assert_eq!(
            vol.accessible_topology,
            vec![proto::Topology {
                segments: [(berth_csi::TOPOLOGY_KEY.to_owned(), NODE_ID.to_owned())].into()
            }]
        );
    }
    delete_volume(&sut, &vol.volume_id).await;
    let freed = capacity(&mut c).await;
    assert!(
        freed.available_capacity >= after.available_capacity,
        "{after:?} then {freed:?}"
    );
}

#[tokio::test]
async fn controller_expand_grows_and_never_shrinks() {
    let sut = Sut::start().await;
    let vol = create_volume(&sut, &name("expand"), 10 * MIB).await;
    let mut c = sut.controller();
    let expand = |id: &str, required: i64| proto::ControllerExpandVolumeRequest {
        volume_id: id.to_owned(),
        capacity_range: Some(proto::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let grown = c
        .controller_expand_volume(expand(&vol.volume_id, 20 * MIB))
        .await
        .expect("expand")
        .into_inner();
    assert!(grown.capacity_bytes >= 20 * MIB, "{grown:?}");
    let again = c
        .controller_expand_volume(expand(&vol.volume_id, 20 * MIB))
        .await
        .expect("expand again")
        .into_inner();
    assert_eq!(
        again.capacity_bytes, grown.capacity_bytes,
        "expanding to the same size is idempotent"
    );
    let listed = c
        .list_volumes(proto::ListVolumesRequest::default())
        .await
        .expect("ListVolumes")
        .into_inner()
        .entries
        .into_iter()
        .filter_map(|e| e.volume)
        .find(|v| v.volume_id == vol.volume_id)
        .expect("the volume is listed");
    assert_eq!(
        listed.capacity_bytes, grown.capacity_bytes,
        "the new capacity is recorded"
    );
    if sut.own() {
        let smaller = c
            .controller_expand_volume(expand(&vol.volume_id, MIB))
            .await
            .expect("shrink request")
            .into_inner();
        assert_eq!(
            smaller.capacity_bytes, grown.capacity_bytes,
            "volumes do not shrink"
        );
        assert_code(
            c.controller_expand_volume(expand(&vol.volume_id, CAPACITY * 2))
                .await,
            Code::OutOfRange,
            "growing past the node's capacity",
        );
    }
    assert_code(
        c.controller_expand_volume(expand("vol-00000000000000000000000000000000", 20 * MIB))
            .await,
        Code::NotFound,
        "expanding an unknown volume",
    );
    assert_code(
        c.controller_expand_volume(proto::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "expanding without capacity_range",
    );
    delete_volume(&sut, &vol.volume_id).await;
}

#[tokio::test]
async fn a_restart_keeps_names_and_capacity() {
    let mut sut = Sut::start().await;
    if !sut.own() {
        return; // restarting needs a driver the suite started
    }
    let n = name("restart");
    let vol = create_volume(&sut, &n, 10 * MIB).await;
    // What a crash between mkdir and the metadata write would leave behind.
    let stray = sut.root().join("volumes/vol-0000000000000000000000000000");
    std::fs::create_dir(&stray).expect("a stray volume directory");
    std::fs::write(sut.root().join("tmp/half-copied"), b"x").expect("a stray copy");
    sut.restart().await;
    assert!(
        !stray.exists(),
        "a directory without metadata is removed at start"
    );
    assert!(
        !sut.root().join("tmp/half-copied").exists(),
        "an unfinished copy is removed at start"
    );
    let again = create_volume(&sut, &n, 10 * MIB).await;
    assert_eq!(
        again.volume_id, vol.volume_id,
        "CreateVolume stays idempotent across a restart"
    );
    let mut bigger = create_request(&n, 0);
    bigger.capacity_range = Some(proto::CapacityRange {
        required_bytes: 20 * MIB,
        limit_bytes: 0,
    });
    assert_code(
        sut.controller().create_volume(bigger).await,
        Code::AlreadyExists,
        "capacity remembered across a restart",
    );
    delete_volume(&sut, &vol.volume_id).await;
}

#[tokio::test]
async fn concurrent_creates_of_one_name_make_one_volume() {
    let sut = Sut::start().await;
    let n = name("race");
    let creates = (0..8).map(|_| {
        let mut c = sut.controller();
        let req = create_request(&n, 10 * MIB);
        tokio::spawn(async move { c.create_volume(req).await })
    });
    let mut ids = BTreeSet::new();
    for task in creates {
        let resp = task.await.expect("the task").expect("CreateVolume");
        ids.insert(resp.into_inner().volume.expect("a volume").volume_id);
    }
    assert_eq!(ids.len(), 1, "8 concurrent creates of one name: {ids:?}");
    let listed = sut
        .controller()
        .list_volumes(proto::ListVolumesRequest::default())
        .await
        .expect("ListVolumes")
        .into_inner()
        .entries
        .len();
    if sut.own() {
        assert_eq!(listed, 1, "one volume exists");
    }
    for id in ids {
        delete_volume(&sut, &id).await;
    }
}

#[tokio::test]
async fn sigterm_stops_the_driver_and_removes_its_socket() {
    let mut sut = Sut::start().await;
    if !sut.own() {
        return; // only a driver the suite started can be stopped
    }
    let status = sut.terminate();
    assert!(
        status.success(),
        "berth-csi exits 0 on SIGTERM, got {status}"
    );
    assert!(
        !sut.socket().exists(),
        "the socket is removed on the way out"
    );
}
