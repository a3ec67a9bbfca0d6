//! The agent as a CSI container orchestrator, for every driver given with
//! `--csi-socket`: it talks to the driver over its unix socket as any kubelet does, so
//! berth-csi or any other CSI driver works.
//!
//! - [`registration`]: the driver's node id and topology go into the node's CSINode
//!   object, its topology labels and the `csi.volume.kubernetes.io/nodeid` annotation
//!   (what node-driver-registrar and the kubelet's plugin manager do upstream).
//! - [`mounts`]: `persistentVolumeClaim` and generic `ephemeral` volumes of pods
//!   are staged (`NodeStageVolume` at the kubelet's global mount path) and published
//!   (`NodePublishVolume` into the pod's volume dir) before the containers start, and
//!   unpublished/unstaged at teardown; what was mounted is recorded on disk
//!   (`vol_data.json`) so a teardown after `kill -9` still finds it.
//! - [`provisioner`]: for a node-local driver the agent is also the provisioner, in
//!   external-provisioner's node-deployment mode: it makes the volumes of claims whose
//!   `volume.kubernetes.io/selected-node` is this node, deletes released volumes it
//!   made whose reclaim policy is Delete, publishes CSIStorageCapacity per class.
//! - [`resizer`]: expands claims bound to this node's volumes (external-resizer's
//!   `ControllerExpandVolume`, then `NodeExpandVolume` when the driver needs it).

pub mod mounts;
pub mod provisioner;
pub mod registration;
pub mod resizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_csi::proto::{
    self, controller_client::ControllerClient, controller_service_capability,
    identity_client::IdentityClient, node_client::NodeClient, node_service_capability,
};
use tonic::transport::Channel;

/// One registered driver: what it said about itself, and a channel to it.
#[derive(Debug, Clone)]
pub struct Driver {
    pub name: String,
    pub socket: PathBuf,
    channel: Channel,
    /// NodeGetInfo's node id, accessible topology and volume limit (0: none).
    pub node_id: String,
    pub topology: BTreeMap<String, String>,
    pub max_volumes: i64,
    pub stage_unstage: bool,
    pub node_expand: bool,
    pub volume_stats: bool,
    /// The driver has a Controller service that creates and deletes volumes.
    pub create_delete: bool,
    pub controller_expand: bool,
    pub get_capacity: bool,
}

impl Driver {
    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    /// Connects to the driver at `socket` and asks it who it is and what it can do.
    pub async fn probe(socket: &Path) -> Result<Self, String> {
        let channel = berth_csi::connect(socket)
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let mut identity = IdentityClient::new(channel.clone());
        let info = identity
            .get_plugin_info(proto::GetPluginInfoRequest {})
            .await
            .map_err(|e| format!("GetPluginInfo: {}", e.message()))?
            .into_inner();
        if info.name.is_empty() {
            return Err("GetPluginInfo returned no driver name".into());
        }
        let plugin_caps = identity
            .get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {})
            .await
            .map_err(|e| format!("GetPluginCapabilities: {}", e.message()))?
            .into_inner();
        let has_controller = plugin_caps.capabilities.iter().any(|c| {
            matches!(
                &c.r#type,
                Some(proto::plugin_capability::Type::Service(s))
                    if s.r#type == proto::plugin_capability::service::Type::ControllerService as i32
            )
        });
        let mut node = NodeClient::new(channel.clone());
        let node_info = node
            .node_get_info(proto::NodeGetInfoRequest {})
            .await
            .map_err(|e| format!("NodeGetInfo: {}", e.message()))?
            .into_inner();
        let node_caps: Vec<i32> = node
            .node_get_capabilities(proto::NodeGetCapabilitiesRequest {})
            .await
            .map_err(|e| format!("NodeGetCapabilities: {}", e.message()))?
            .into_inner()
            .capabilities
            .iter()
            .filter_map(|c| {
                c.r#type
                    .as_ref()
                    .map(|node_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect();
        let controller_caps: Vec<i32> = if has_controller {
            ControllerClient::new(channel.clone())
                .controller_get_capabilities(proto::ControllerGetCapabilitiesRequest {})
                .await
                .map_err(|e| format!("ControllerGetCapabilities: {}", e.message()))?
                .into_inner()
                .capabilities
                .iter()
                .filter_map(|c| {
                    c.r#type
                        .as_ref()
                        .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
                })
                .collect()
        } else {
            Vec::new()
        };
        use controller_service_capability::rpc::Type as C;
        use node_service_capability::rpc::Type as N;
        Ok(Self {
            name: info.name,
            socket: socket.to_path_buf(),
            channel,
            node_id: node_info.node_id,
            topology: node_info
                .accessible_topology
                .map(|t| t.segments.into_iter().collect())
                .unwrap_or_default(),
            max_volumes: node_info.max_volumes_per_node,
            stage_unstage: node_caps.contains(&(N::StageUnstageVolume as i32)),
            node_expand: node_caps.contains(&(N::ExpandVolume as i32)),
            volume_stats: node_caps.contains(&(N::GetVolumeStats as i32)),
            create_delete: controller_caps.contains(&(C::CreateDeleteVolume as i32)),
            controller_expand: controller_caps.contains(&(C::ExpandVolume as i32)),
            get_capacity: controller_caps.contains(&(C::GetCapacity as i32)),
        })
    }
}

/// The registered drivers, by name.
#[derive(Debug, Default, Clone)]
pub struct Drivers(Arc<RwLock<BTreeMap<String, Arc<Driver>>>>);

impl Drivers {
    /// The driver named `name`, or the kubelet's error for an unregistered one.
    pub fn get(&self, name: &str) -> Result<Arc<Driver>, String> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| {
                format!("driver name {name} not found in the list of registered CSI drivers")
            })
    }

    pub fn all(&self) -> Vec<Arc<Driver>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Adds a driver without registering it with the cluster (the agent's
    /// `--remove-all` teardown only unmounts).
    pub fn add(&self, driver: Driver) {
        self.insert(Arc::new(driver));
    }

    fn insert(&self, driver: Arc<Driver>) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(driver.name.clone(), driver);
    }
}

/// Waits for each driver socket to answer, registers the driver and runs its
/// provisioner and resizer. A driver that is not up yet is retried every second, so
/// the agent and its drivers may start in any order.
pub async fn run(ctx: Arc<crate::pods::Ctx>, sockets: Vec<PathBuf>) {
    if sockets.is_empty() {
        return;
    }
    // One watch of claims, volumes and classes for every driver's sidecars.
    let caches = provisioner::Caches::start(&ctx);
    let tasks = sockets.into_iter().map(|socket| {
        let (ctx, caches) = (ctx.clone(), caches.clone());
        async move {
            let mut last_error = String::new();
            let driver = loop {
                match Driver::probe(&socket).await {
                    Ok(d) => break Arc::new(d),
                    Err(e) => {
                        if e != last_error {
                            tracing::warn!(socket = %socket.display(), error = %e, "CSI driver not ready; retrying");
                            last_error = e;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            loop {
                match registration::register(&ctx, &driver).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(driver = %driver.name, error = %e, "registering the CSI driver; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            ctx.csi.insert(driver.clone());
            tracing::info!(driver = %driver.name, node_id = %driver.node_id, socket = %socket.display(), "CSI driver registered");
            let provision = provisioner::run(ctx.clone(), driver.clone(), caches.clone());
            let resize = resizer::run(ctx.clone(), driver.clone(), caches.clone());
            tokio::join!(provision, resize);
        }
    });
    futures_util::future::join_all(tasks).await;
}

/// The CSI access mode for a Kubernetes one (external-provisioner's mapping).
pub fn access_mode(mode: &str) -> proto::volume_capability::access_mode::Mode {
    use proto::volume_capability::access_mode::Mode;
    match mode {
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
        _ => Mode::SingleNodeWriter,
    }
}

/// The capability a volume is used with: block or mount (with fsType and mount flags),
/// in the access mode of the first of `modes`.
pub fn capability(
    block: bool,
    fs_type: &str,
    mount_flags: &[String],
    modes: &[String],
) -> proto::VolumeCapability {
    use proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let mode = modes.first().map_or("ReadWriteOnce", String::as_str);
    proto::VolumeCapability {
        access_type: Some(if block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: fs_type.to_owned(),
                mount_flags: mount_flags.to_vec(),
                volume_mount_group: String::new(),
            })
        }),
        access_mode: Some(AccessMode {
            mode: access_mode(mode) as i32,
        }),
    }
}

/// A gRPC error as the CSI sidecars print it.
pub fn rpc_error(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// Records a core/v1 Event about `object` from the driver's sidecar on this node
/// (component `<driver>_<node>`, as external-provisioner names itself).
pub async fn event<K>(
    ctx: &crate::pods::Ctx,
    driver: &str,
    object: &K,
    warning: bool,
    reason: &str,
    message: &str,
) where
    K: kube::Resource<DynamicType = ()>,
{
    use k8s_openapi::api::core::v1::{Event, EventSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
    let meta = object.meta();
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let now = jiff::Timestamp::now();
    let ev = Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!("{}.", meta.name.as_deref().unwrap_or("object"))),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: object.object_ref(&()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some(format!("{driver}_{}", ctx.node.name)),
            host: Some(ctx.node.name.clone()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        reporting_component: Some(driver.to_owned()),
        reporting_instance: Some(format!("{driver}_{}", ctx.node.name)),
        action: Some(reason.to_owned()),
        ..Default::default()
    };
    let api: kube::Api<Event> = kube::Api::namespaced(ctx.client.clone(), &ns);
    tokio::spawn(async move {
        if let Err(err) = api.create(&Default::default(), &ev).await {
            tracing::debug!(%err, "could not record an event");
        }
    });
}
