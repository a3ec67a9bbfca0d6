//! The node's provisioner for its driver — external-provisioner in node-deployment
//! mode, inside the agent. A volume of a node-local driver can only be made on its
//! node, so each node's agent makes the volumes of the claims that the scheduler
//! placed there:
//!
//! - a claim handed to this driver (`volume.kubernetes.io/storage-provisioner`, set by
//!   the PV binder) whose `volume.kubernetes.io/selected-node` is this node gets
//!   `CreateVolume` (name `pvc-<claim uid>`, the request as capacity, the class's
//!   parameters, this node's topology as requisite) and a PersistentVolume pre-bound to
//!   it, pinned by node affinity to the node's topology; the binder then binds.
//!   A claim of an `Immediate` class is taken by the first node to set its
//!   selected-node annotation (a compare-and-swap on the claim).
//! - a failure is a `ProvisioningFailed` event naming it, retried with back-off (1 s
//!   doubling to 5 min); when the node has no room (`RESOURCE_EXHAUSTED`) the
//!   selected-node annotation is removed so the scheduler picks again.
//! - a Released volume this driver made on this node whose reclaim policy is Delete
//!   gets `DeleteVolume`, then its PersistentVolume is deleted.
//! - with `GET_CAPACITY`, the node's free space per class is published as a
//!   CSIStorageCapacity (namespace `kube-system`), read by the scheduler.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::{CSIStorageCapacity, StorageClass};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::{reflector, watcher};

use super::{Driver, capability, event, rpc_error};
use crate::pods::Ctx;

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const CAPACITY_NAMESPACE: &str = "kube-system";
const CAPACITY_PERIOD: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn claim_key(c: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap_or_default(),
        c.metadata.name.as_deref().unwrap_or_default()
    )
}

fn claim_class(c: &PersistentVolumeClaim) -> String {
    annotation(&c.metadata, "volume.beta.kubernetes.io/storage-class")
        .map(str::to_owned)
        .or_else(|| c.spec.as_ref().and_then(|s| s.storage_class_name.clone()))
        .unwrap_or_default()
}

/// A quantity in bytes, by the agent's one quantity parser.
pub fn bytes(q: &Quantity) -> Option<i64> {
    crate::pods::resources::units(q)
}

/// Bytes as a Quantity, in the largest binary unit that divides them (as the
/// sidecars format capacities), else plain bytes.
pub fn quantity(bytes: i64) -> Quantity {
    for (suffix, unit) in [
        ("Ti", 1i64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes != 0 && bytes % unit == 0 {
            return Quantity(format!("{}{suffix}", bytes / unit));
        }
    }
    Quantity(bytes.to_string())
}

#[derive(Default)]
struct Work {
    in_flight: HashSet<String>,
    /// key → (when to try again, last delay).
    backoff: HashMap<String, (Instant, Duration)>,
}

impl Work {
    fn ready(&mut self, key: &str) -> bool {
        if self.in_flight.contains(key) {
            return false;
        }
        if self
            .backoff
            .get(key)
            .is_some_and(|(at, _)| *at > Instant::now())
        {
            return false;
        }
        self.in_flight.insert(key.to_owned());
        true
    }

    fn done(&mut self, key: &str, ok: bool) {
        self.in_flight.remove(key);
        if ok {
            self.backoff.remove(key);
        } else {
            let delay = self
                .backoff
                .get(key)
                .map_or(Duration::from_secs(1), |(_, d)| (*d * 2).min(MAX_BACKOFF));
            self.backoff
                .insert(key.to_owned(), (Instant::now() + delay, delay));
        }
    }
}

/// The claims, volumes and classes the provisioner and the resizer of the node's
/// drivers follow: one watch of each for all of them, waking each on every change.
#[derive(Clone, Debug)]
pub struct Caches {
    pub claims: reflector::Store<PersistentVolumeClaim>,
    pub volumes: reflector::Store<PersistentVolume>,
    pub classes: reflector::Store<StorageClass>,
    provisioner: Arc<tokio::sync::Notify>,
    resizer: Arc<tokio::sync::Notify>,
}

impl Caches {
    /// Starts the three watches.
    pub fn start(ctx: &Ctx) -> Self {
        let provisioner = Arc::new(tokio::sync::Notify::new());
        let resizer = Arc::new(tokio::sync::Notify::new());
        let wake = vec![provisioner.clone(), resizer.clone()];
        Self {
            claims: store(ctx, wake.clone()),
            volumes: store(ctx, wake.clone()),
            classes: store(ctx, wake),
            provisioner,
            resizer,
        }
    }

    pub async fn ready(&self) {
        let _ = self.claims.wait_until_ready().await;
        let _ = self.volumes.wait_until_ready().await;
        let _ = self.classes.wait_until_ready().await;
    }

    /// What wakes the resizer.
    pub fn resizer_wake(&self) -> Arc<tokio::sync::Notify> {
        self.resizer.clone()
    }
}

/// Watches claims, volumes and classes and acts on those for this driver and node.
pub async fn run(ctx: Arc<Ctx>, driver: Arc<Driver>, caches: Caches) {
    if !driver.create_delete {
        return;
    }
    caches.ready().await;
    let wake = caches.provisioner.clone();
    let (claims, volumes, classes) = (caches.claims, caches.volumes, caches.classes);
    let work = Arc::new(Mutex::new(Work::default()));
    let capacity_due = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut last_capacity = Instant::now();
    loop {
        for claim in claims.state() {
            if !wanted(&ctx, &driver, &claim, &classes) {
                continue;
            }
            let key = format!("claim/{}", claim_key(&claim));
            if !work.lock().unwrap_or_else(|e| e.into_inner()).ready(&key) {
                continue;
            }
            let (ctx, driver, classes, known, work, wake, due) = (
                ctx.clone(),
                driver.clone(),
                classes.clone(),
                volumes.clone(),
                work.clone(),
                wake.clone(),
                capacity_due.clone(),
            );
            tokio::spawn(async move {
                let ok = provision(&ctx, &driver, &claim, &classes, &known).await;
                work.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .done(&key, ok);
                due.store(true, std::sync::atomic::Ordering::Relaxed);
                wake.notify_one();
            });
        }
        for volume in volumes.state() {
            if !deletable(&driver, &volume) {
                continue;
            }
            let key = format!(
                "volume/{}",
                volume.metadata.name.as_deref().unwrap_or_default()
            );
            if !work.lock().unwrap_or_else(|e| e.into_inner()).ready(&key) {
                continue;
            }
            let (ctx, driver, work, wake, due) = (
                ctx.clone(),
                driver.clone(),
                work.clone(),
                wake.clone(),
                capacity_due.clone(),
            );
            tokio::spawn(async move {
                let ok = delete(&ctx, &driver, &volume).await;
                work.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .done(&key, ok);
                due.store(true, std::sync::atomic::Ordering::Relaxed);
                wake.notify_one();
            });
        }
        if driver.get_capacity
            && (capacity_due.swap(false, std::sync::atomic::Ordering::Relaxed)
                || last_capacity.elapsed() >= CAPACITY_PERIOD)
        {
            last_capacity = Instant::now();
            let (ctx, driver, classes) = (ctx.clone(), driver.clone(), classes.state());
            tokio::spawn(async move { publish_capacity(&ctx, &driver, &classes).await });
        }
        // Woken by any change; failures wait out their back-off on the timer.
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
    }
}

/// A reflector store of all `K`, waking each of `wake` on every change.
fn store<K>(ctx: &Ctx, wake: Vec<Arc<tokio::sync::Notify>>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(ctx.client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => wake.iter().for_each(|w| w.notify_one()),
                Err(err) => {
                    tracing::debug!(%err, "CSI provisioner watch");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    reader
}

/// Whether `claim` waits for this node's driver to make its volume.
fn wanted(
    ctx: &Ctx,
    driver: &Driver,
    claim: &PersistentVolumeClaim,
    classes: &reflector::Store<StorageClass>,
) -> bool {
    let meta = &claim.metadata;
    if meta.deletion_timestamp.is_some()
        || claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    {
        return false;
    }
    let class = classes.get(&reflector::ObjectRef::new(&claim_class(claim)));
    let provisioner = annotation(meta, STORAGE_PROVISIONER)
        .or_else(|| annotation(meta, BETA_STORAGE_PROVISIONER));
    match annotation(meta, SELECTED_NODE) {
        // The scheduler sets selected-node only on claims it wants provisioned (a
        // static volume it picked gets the claimRef instead), so a claim of this
        // driver's class is taken at once, without waiting for the binder's
        // storage-provisioner annotation (one write and one watch hop fewer).
        Some(node) => {
            node == ctx.node.name
                && (provisioner == Some(driver.name.as_str())
                    || class.is_some_and(|c| c.provisioner == driver.name))
        }
        None => {
            provisioner == Some(driver.name.as_str())
                && class.is_some_and(|c| {
                    c.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer")
                })
        }
    }
}

/// Whether `volume` is a Released volume of this driver on this node to delete.
fn deletable(driver: &Driver, volume: &PersistentVolume) -> bool {
    let Some(spec) = &volume.spec else {
        return false;
    };
    let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    released
        && volume.metadata.deletion_timestamp.is_none()
        && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete")
        && annotation(&volume.metadata, PROVISIONED_BY) == Some(driver.name.as_str())
        && spec.csi.as_ref().is_some_and(|c| c.driver == driver.name)
        && on_this_node(driver, volume)
}

/// Whether the volume's node affinity names this node's topology.
pub fn on_this_node(driver: &Driver, volume: &PersistentVolume) -> bool {
    let terms = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default();
    terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or_default();
        !exprs.is_empty()
            && exprs.iter().all(|e| {
                e.operator == "In"
                    && driver
                        .topology
                        .get(&e.key)
                        .is_some_and(|v| e.values.as_deref().unwrap_or_default().contains(v))
            })
    })
}

/// Makes the claim's volume and its PersistentVolume; true when done (or nothing to do).
async fn provision(
    ctx: &Ctx,
    driver: &Driver,
    claim: &PersistentVolumeClaim,
    classes: &reflector::Store<StorageClass>,
    known_volumes: &reflector::Store<PersistentVolume>,
) -> bool {
    let key = claim_key(claim);
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let class_name = claim_class(claim);
    let Some(class) = classes.get(&reflector::ObjectRef::new(&class_name)) else {
        event(
            ctx,
            &driver.name,
            claim,
            true,
            "ProvisioningFailed",
            &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        )
        .await;
        return false;
    };
    // An Immediate claim: take it for this node first.
    let mut claim = claim.clone();
    if annotation(&claim.metadata, SELECTED_NODE).is_none() {
        claim
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SELECTED_NODE.into(), ctx.node.name.clone());
        let name = claim.metadata.name.clone().unwrap_or_default();
        match claims.replace(&name, &PostParams::default(), &claim).await {
            Ok(c) => claim = c,
            // Another node took it, or it changed: the next event decides again.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return true,
            Err(err) => {
                tracing::warn!(claim = %key, %err, "taking the claim for this node");
                return false;
            }
        }
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    // Made already (the binder binds it); a PV the cache has not shown yet makes the
    // create below answer 409, which is as good.
    if known_volumes
        .get(&reflector::ObjectRef::new(&pv_name))
        .is_some()
    {
        return true;
    }
    let spec = claim.spec.clone().unwrap_or_default();
    let requested = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(bytes)
        .unwrap_or(0);
    let limit = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(bytes)
        .unwrap_or(0);
    let modes = spec.access_modes.clone().unwrap_or_default();
    let block = spec.volume_mode.as_deref() == Some("Block");
    let parameters: BTreeMap<String, String> = class.parameters.clone().unwrap_or_default();
    let fs_type = parameters
        .get("csi.storage.k8s.io/fstype")
        .cloned()
        .unwrap_or_default();
    // The sidecars' own keys are not passed to the driver.
    let driver_parameters: std::collections::HashMap<String, String> = parameters
        .iter()
        .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mount_options = class.mount_options.clone().unwrap_or_default();
    let topology = berth_csi::proto::Topology {
        segments: driver.topology.clone().into_iter().collect(),
    };
    event(
        ctx,
        &driver.name,
        &claim,
        false,
        "Provisioning",
        &format!("External provisioner is provisioning volume for claim \"{key}\""),
    )
    .await;
    let req = berth_csi::proto::CreateVolumeRequest {
        name: pv_name.clone(),
        capacity_range: Some(berth_csi::proto::CapacityRange {
            required_bytes: requested,
            limit_bytes: limit,
        }),
        volume_capabilities: vec![capability(block, &fs_type, &mount_options, &modes)],
        parameters: driver_parameters,
        accessibility_requirements: Some(berth_csi::proto::TopologyRequirement {
            requisite: vec![topology.clone()],
            preferred: vec![topology],
        }),
        ..Default::default()
    };
    let created = match driver.controller().create_volume(req).await {
        Ok(r) => r.into_inner().volume.unwrap_or_default(),
        Err(status) => {
            event(
                ctx,
                &driver.name,
                &claim,
                true,
                "ProvisioningFailed",
                &format!(
                    "failed to provision volume with StorageClass \"{class_name}\": {}",
                    rpc_error(&status)
                ),
            )
            .await;
            if status.code() == tonic::Code::ResourceExhausted {
                reschedule(ctx, &claims, &claim).await;
            }
            return false;
        }
    };
    let segments: Vec<(String, String)> = created
        .accessible_topology
        .first()
        .map(|t| t.segments.clone().into_iter().collect())
        .unwrap_or_else(|| driver.topology.clone().into_iter().collect());
    let mut segments = segments;
    segments.sort();
    let owner_ref = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(ns.clone()),
        name: claim.metadata.name.clone(),
        uid: Some(uid.clone()),
        resource_version: claim.metadata.resource_version.clone(),
        ..Default::default()
    };
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_owned(),
                driver.name.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(modes.clone()),
            capacity: Some(BTreeMap::from([(
                "storage".to_owned(),
                quantity(if created.capacity_bytes > 0 {
                    created.capacity_bytes
                } else {
                    requested
                }),
            )])),
            claim_ref: Some(owner_ref),
            csi: Some(CSIPersistentVolumeSource {
                driver: driver.name.clone(),
                volume_handle: created.volume_id.clone(),
                fs_type: (!fs_type.is_empty()).then(|| fs_type.clone()),
                volume_attributes: (!created.volume_context.is_empty())
                    .then(|| created.volume_context.clone().into_iter().collect()),
                ..Default::default()
            }),
            mount_options: class.mount_options.clone(),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(
                            segments
                                .iter()
                                .map(|(k, v)| NodeSelectorRequirement {
                                    key: k.clone(),
                                    operator: "In".into(),
                                    values: Some(vec![v.clone()]),
                                })
                                .collect(),
                        ),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: Some(class_name.clone()),
            volume_mode: Some(if block { "Block" } else { "Filesystem" }.into()),
            ..Default::default()
        }),
        status: None,
    };
    match volumes.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(err) => {
            // The volume exists in the driver; the next try finds it by name
            // (CreateVolume is idempotent) and creates the object again.
            event(
                ctx,
                &driver.name,
                &claim,
                true,
                "ProvisioningFailed",
                &format!("failed to create the PersistentVolume {pv_name}: {err}"),
            )
            .await;
            return false;
        }
    }
    event(
        ctx,
        &driver.name,
        &claim,
        false,
        "ProvisioningSucceeded",
        &format!("Successfully provisioned volume {pv_name}"),
    )
    .await;
    true
}

/// Gives a claim back to the scheduler: without its selected-node annotation it is
/// placed again (external-provisioner's ProvisioningReschedule).
async fn reschedule(ctx: &Ctx, claims: &Api<PersistentVolumeClaim>, claim: &PersistentVolumeClaim) {
    let mut c = claim.clone();
    if let Some(a) = c.metadata.annotations.as_mut() {
        a.remove(SELECTED_NODE);
    }
    let name = c.metadata.name.clone().unwrap_or_default();
    if let Err(err) = claims.replace(&name, &PostParams::default(), &c).await {
        tracing::debug!(claim = %name, node = %ctx.node.name, %err, "removing selected-node");
    }
}

/// Deletes a released volume in the driver, then its PersistentVolume.
async fn delete(ctx: &Ctx, driver: &Driver, volume: &PersistentVolume) -> bool {
    let name = volume.metadata.name.clone().unwrap_or_default();
    let Some(csi) = volume.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
        return true;
    };
    if let Err(status) = driver
        .controller()
        .delete_volume(berth_csi::proto::DeleteVolumeRequest {
            volume_id: csi.volume_handle.clone(),
            secrets: Default::default(),
        })
        .await
    {
        event(
            ctx,
            &driver.name,
            volume,
            true,
            "VolumeFailedDelete",
            &rpc_error(&status),
        )
        .await;
        return false;
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: volume.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => true,
        Err(err) => {
            tracing::warn!(volume = %name, %err, "deleting the PersistentVolume");
            false
        }
    }
}

/// Publishes the node's capacity for each class of this driver.
async fn publish_capacity(ctx: &Ctx, driver: &Driver, classes: &[Arc<StorageClass>]) {
    let api: Api<CSIStorageCapacity> = Api::namespaced(ctx.client.clone(), CAPACITY_NAMESPACE);
    let topology = berth_csi::proto::Topology {
        segments: driver.topology.clone().into_iter().collect(),
    };
    for class in classes.iter().filter(|c| c.provisioner == driver.name) {
        let class_name = class.metadata.name.clone().unwrap_or_default();
        let parameters = class
            .parameters
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
            .collect();
        let resp = match driver
            .controller()
            .get_capacity(berth_csi::proto::GetCapacityRequest {
                volume_capabilities: Vec::new(),
                parameters,
                accessible_topology: Some(topology.clone()),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(class = %class_name, error = %rpc_error(&status), "GetCapacity");
                continue;
            }
        };
        let name = format!("{}-{class_name}", ctx.node.name)
            .to_lowercase()
            .replace(['.', '_'], "-");
        let object = CSIStorageCapacity {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(CAPACITY_NAMESPACE.into()),
                labels: Some(BTreeMap::from([
                    (
                        "csi.storage.k8s.io/drivername".to_owned(),
                        driver.name.clone(),
                    ),
                    (
                        "csi.storage.k8s.io/managed-by".to_owned(),
                        format!("external-provisioner-{}", ctx.node.name),
                    ),
                ])),
                owner_references: (!ctx.node_uid.is_empty()).then(|| {
                    vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: ctx.node.name.clone(),
                        uid: ctx.node_uid.clone(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            capacity: Some(quantity(resp.available_capacity)),
            maximum_volume_size: resp.maximum_volume_size.map(quantity),
            node_topology: Some(LabelSelector {
                match_labels: Some(driver.topology.clone()),
                match_expressions: None,
            }),
            storage_class_name: class_name.clone(),
        };
        let result = match api.get_opt(&name).await {
            Ok(Some(existing)) => {
                if existing.capacity == object.capacity
                    && existing.maximum_volume_size == object.maximum_volume_size
                {
                    continue;
                }
                let mut updated = object.clone();
                updated.metadata.resource_version = existing.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &updated)
                    .await
                    .map(drop)
            }
            Ok(None) => api.create(&PostParams::default(), &object).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(err) = result {
            tracing::debug!(class = %class_name, %err, "publishing CSIStorageCapacity");
        }
    }
}
