//! The `kubernetes` Service's endpoints: every live berth-server, as kube-apiserver's
//! lease endpoint reconciler (`--endpoint-reconciler-type=lease`, its default) keeps
//! them. Each server holds a *master lease*, a key `/registry/masterleases/<ip>` (in
//! etcd's layout) attached to a store lease of [`TTL`] that it renews every
//! [`INTERVAL`]; the `default/kubernetes` Endpoints and EndpointSlice list exactly the
//! addresses with a lease, on the port each server serves on. A server that stops
//! renewing drops out when its lease expires — every other server sees the key go
//! (through its watch cache) and rewrites the endpoints at once; a server that shuts
//! down cleanly ([`Reconciler::remove`]) deletes its key and rewrites them first.
//!
//! `--endpoint-reconciler-type=none` turns this off, as upstream's `none`: the
//! endpoints are then the administrator's — berth-server only creates them once with
//! its own address ([`write_once`]) so that the Service works on a one-server cluster.
//!
//! Entry points: [`Reconciler::start`], [`write_once`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::Api;
use super::rest::{self, Ctx, Part};
use super::status::ApiResult;
use crate::store::StoreError;

/// Where the master leases live (etcd: `/registry/masterleases/`).
pub const LEASES: &str = "/registry/core/masterleases/";
/// How long a master lease lives without renewal (kube-apiserver's
/// `masterEndpointReconcileTTL`).
pub const TTL: Duration = Duration::from_secs(15);
/// How often a server renews its lease and checks the endpoints (kube-apiserver's
/// `DefaultEndpointReconcilerInterval`).
pub const INTERVAL: Duration = Duration::from_secs(10);
/// The Service, its Endpoints and its EndpointSlice.
const NAME: &str = "kubernetes";
const NAMESPACE: &str = "default";
const ENDPOINTS: &str = "/registry/core/endpoints/default/kubernetes";
const SLICE: &str = "/registry/discovery.k8s.io/endpointslices/default/kubernetes";

/// `--endpoint-reconciler-type` (kube-apiserver's flag; its `master-count` is not
/// supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Type {
    #[default]
    Lease,
    None,
}

impl std::str::FromStr for Type {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lease" => Ok(Type::Lease),
            "none" => Ok(Type::None),
            other => Err(format!(
                "{other:?}: supported endpoint reconcilers are \"lease\" and \"none\""
            )),
        }
    }
}

/// The endpoints of a cluster of this one server, created if they do not exist and
/// otherwise left as they are (`--endpoint-reconciler-type=none`).
pub async fn write_once(api: &Arc<Api>, ip: IpAddr, port: u16) {
    let servers = BTreeMap::from([(ip, port)]);
    if let Err(err) = write(api, &servers, ip, port, true).await {
        tracing::warn!(error = %err.message, "creating the kubernetes endpoints failed");
    }
}

/// One server's master lease and the endpoints it keeps (see the module docs).
#[derive(Debug)]
pub struct Reconciler {
    api: Arc<Api>,
    ip: IpAddr,
    port: u16,
    /// Held while the lease is renewed, so a shutdown never races a renewal that
    /// would take the lease again.
    busy: tokio::sync::Mutex<()>,
    stopping: AtomicBool,
}

impl Reconciler {
    /// Takes this server's master lease, writes the endpoints once, and keeps both
    /// current in the background.
    pub async fn start(api: Arc<Api>, ip: IpAddr, port: u16) -> Arc<Self> {
        let this = Arc::new(Self {
            api,
            ip,
            port,
            busy: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
        });
        this.tick().await;
        tokio::spawn(this.clone().run());
        this
    }

    fn key(&self) -> String {
        format!("{LEASES}{}", self.ip)
    }

    /// Renews the lease, then reconciles; logs what fails (the next round retries).
    async fn tick(&self) {
        let _busy = self.busy.lock().await;
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if let Err(err) = self.renew().await {
            // As upstream: without a lease of its own the server leaves the endpoints
            // as they are.
            tracing::warn!(%err, ip = %self.ip, "renewing the master lease failed");
            return;
        }
        self.reconcile_logged().await;
    }

    async fn reconcile_logged(&self) {
        if let Err(err) = self.reconcile().await {
            tracing::warn!(error = %err.message, "reconciling the kubernetes endpoints failed");
        }
    }

    async fn run(self: Arc<Self>) {
        let mut changes = self.api.cache.watch(self.api.cache.revision()).ok();
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let relevant = match &mut changes {
                Some(watch) => tokio::select! {
                    _ = ticker.tick() => None,
                    change = watch.live.recv() => Some(change),
                },
                None => {
                    ticker.tick().await;
                    None
                }
            };
            match relevant {
                None => self.tick().await,
                Some(Ok(change)) => {
                    let key = change.object.key.as_str();
                    if key.starts_with(LEASES) || key == ENDPOINTS || key == SLICE {
                        self.reconcile_logged().await;
                    }
                }
                Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    self.reconcile_logged().await;
                }
                Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => changes = None,
            }
        }
    }

    /// The value of this server's lease key: an Endpoints object, as upstream's (with
    /// the port, so servers on different ports are listed right).
    fn lease_value(&self) -> Vec<u8> {
        let object = json!({
            "kind": "Endpoints",
            "apiVersion": "v1",
            "metadata": {"name": self.ip.to_string(), "creationTimestamp": null},
            "subsets": [{"addresses": [{"ip": self.ip.to_string()}], "ports": [{"port": self.port}]}],
        });
        serde_json::to_vec(&object).unwrap_or_default()
    }

    /// Keeps the lease key alive, taking it (again) when it is gone.
    async fn renew(&self) -> Result<(), StoreError> {
        let store = &self.api.store;
        let key = self.key();
        if let Some(kv) = store.get(&key, None).await? {
            // Ours, or left by an earlier run of this server on the same address:
            // kept alive, it is ours now.
            if let Some(id) = kv.lease {
                match store.keep_alive(id).await {
                    Ok(()) => {
                        if *kv.value != *self.lease_value() {
                            store
                                .update(key.clone(), self.lease_value(), kv.mod_revision)
                                .await?;
                        }
                        return Ok(());
                    }
                    Err(StoreError::LeaseNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            // A key whose lease is gone (or that has none) is about to go: replace it.
            match store.delete(key.clone(), Some(kv.mod_revision)).await {
                Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let id = store.grant_lease(TTL).await?;
        store.create(key, self.lease_value(), Some(id)).await?;
        Ok(())
    }

    /// The live servers: address → port, from the lease keys.
    async fn servers(&self) -> ApiResult<BTreeMap<IpAddr, u16>> {
        let listed = self
            .api
            .store
            .list(LEASES, Default::default())
            .await
            .map_err(|e| super::status::ApiError::from_store(e, "", "endpoints", NAME))?;
        let mut servers = BTreeMap::new();
        for kv in listed.kvs {
            let Some(ip) = kv
                .key
                .strip_prefix(LEASES)
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let port = serde_json::from_slice::<Value>(&kv.value)
                .ok()
                .and_then(|v| v.pointer("/subsets/0/ports/0/port").and_then(Value::as_u64))
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(self.port);
            servers.insert(ip, port);
        }
        Ok(servers)
    }

    /// Writes the endpoints the leases call for.
    async fn reconcile(&self) -> ApiResult<()> {
        let servers = self.servers().await?;
        write(&self.api, &servers, self.ip, self.port, false).await
    }

    /// A clean shutdown: stops renewing, deletes this server's lease key and takes
    /// its address out of the endpoints, within a few seconds at most.
    pub async fn remove(&self) {
        let done = async {
            let _busy = self.busy.lock().await;
            self.stopping.store(true, Ordering::Release);
            match self.api.store.delete(self.key(), None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(err) => tracing::warn!(%err, "deleting the master lease failed"),
            }
            self.reconcile_logged().await;
        };
        if tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .is_err()
        {
            tracing::warn!("taking this server out of the kubernetes endpoints timed out");
        }
        tracing::info!(ip = %self.ip, "removed from the kubernetes endpoints");
    }
}

/// Writes the `kubernetes` Endpoints and EndpointSlice for `servers` (address → port);
/// `own_ip` and `own_port` are this server's. `create_only`: leave existing ones alone.
async fn write(
    api: &Arc<Api>,
    servers: &BTreeMap<IpAddr, u16>,
    own_ip: IpAddr,
    own_port: u16,
    create_only: bool,
) -> ApiResult<()> {
    // Endpoints: one subset per port, addresses sorted.
    let mut by_port: BTreeMap<u16, Vec<IpAddr>> = BTreeMap::new();
    for (ip, port) in servers {
        by_port.entry(*port).or_default().push(*ip);
    }
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            json!({
                "addresses": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            })
        })
        .collect();
    if let Some(ctx) = api.internal("", "endpoints", Some(NAMESPACE)) {
        let labels = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
        let desired = json!({
            "metadata": {"name": NAME, "labels": labels},
            "subsets": subsets,
        });
        converge(&ctx, desired, &["subsets"], create_only).await?;
    }
    // The EndpointSlice: one port, so the addresses on the most common one (every
    // server's, when they all use the same --secure-port as they should).
    let family = if own_ip.is_ipv6() { "IPv6" } else { "IPv4" };
    let port = by_port
        .iter()
        .max_by_key(|(port, ips)| (ips.len(), std::cmp::Reverse(**port)))
        .map_or(own_port, |(port, _)| *port);
    let endpoints: Vec<Value> = by_port
        .get(&port)
        .into_iter()
        .flatten()
        .filter(|ip| ip.is_ipv6() == own_ip.is_ipv6())
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
        .collect();
    if let Some(ctx) = api.internal("discovery.k8s.io", "endpointslices", Some(NAMESPACE)) {
        let desired = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": NAME, "labels": {
                "kubernetes.io/service-name": NAME,
                "endpointslice.kubernetes.io/managed-by": "berth-server",
            }},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        converge(&ctx, desired, &["endpoints", "ports"], create_only).await?;
    }
    Ok(())
}

/// Creates `desired` or (unless `create_only`) brings the live object's `fields` (and
/// labels) to it.
async fn converge(ctx: &Ctx, desired: Value, fields: &[&str], create_only: bool) -> ApiResult<()> {
    let same = |current: &Value| {
        fields.iter().all(|f| current.get(*f) == desired.get(*f))
            && desired
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .all(|(k, v)| current.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
    };
    match ctx.current(NAME).await? {
        None => match rest::create_object(ctx, desired.clone()).await {
            Ok(_) => Ok(()),
            // Another server made it meanwhile; the next round compares again.
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
        Some((current, _)) if create_only || same(&current) => Ok(()),
        Some(_) => {
            rest::update_live(ctx, NAME, Part::Main, |current| {
                let mut next = current.clone();
                for f in fields {
                    match desired.get(*f) {
                        Some(v) => next[*f] = v.clone(),
                        None => {
                            if let Some(o) = next.as_object_mut() {
                                o.remove(*f);
                            }
                        }
                    }
                }
                if let Some(labels) = desired
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                {
                    for (k, v) in labels {
                        next["metadata"]["labels"][k] = v.clone();
                    }
                }
                Ok(next)
            })
            .await?;
            Ok(())
        }
    }
}
