//! NetworkPolicy on the node, enforced by the eBPF dataplane's cgroup skb programs at
//! the pods' cgroup (the same cgroup the socket LB is attached to): one attachment
//! for every pod of the node, nothing per pod at start-up, and it sees each packet
//! with the pod's own addresses, after Service translation. [`model`] turns the
//! policies, namespaces and pods into the maps' content; [`run`] watches the three
//! (every pod of the cluster: peers may run anywhere), recomputes on change and
//! writes only the difference, reports policies it cannot express as Warning events,
//! and keeps the denied-packet counters for `/metrics`. The maps and links are pinned
//! with the LB's: a restarted agent reads them back and changes nothing until its
//! first full view of the cluster, so policy never lapses across a restart.

pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_ebpf::{NP_EGRESS, SocketLb};
use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::service_lb::ServiceSync;

/// How long changes are gathered before one recomputation.
const SETTLE: Duration = Duration::from_millis(20);

/// What `/metrics` shows of NetworkPolicy.
#[derive(Debug, Default, Clone)]
pub struct PolicyMetrics {
    /// The local pods (and directions) each policy (`namespace/name`) isolates: a
    /// pod's denied packets count for every policy isolating it that way.
    pub selected: BTreeMap<String, Vec<(Ipv4Addr, u32)>>,
    pub policies: usize,
    pub selected_pods: usize,
    pub rules: usize,
    pub syncs: u64,
    pub last_sync_seconds: f64,
    pub errors: u64,
}

impl PolicyMetrics {
    /// The OpenMetrics text of these metrics, with the kernel's denied counters
    /// (pod, direction, packets).
    pub fn encode(&self, counters: &[(Ipv4Addr, u32, u64)]) -> String {
        let mut denied: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (pod, direction, n) in counters {
            let dir = if *direction == NP_EGRESS {
                "egress"
            } else {
                "ingress"
            };
            for (policy, selected) in &self.selected {
                if selected.contains(&(*pod, *direction)) {
                    *denied.entry((policy.as_str(), dir)).or_insert(0) += n;
                }
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP berth_netpol_denied_packets Packets NetworkPolicy dropped, by a policy isolating the pod.\n# TYPE berth_netpol_denied_packets counter"
        );
        for ((policy, direction), n) in &denied {
            let (ns, name) = policy.split_once('/').unwrap_or(("", policy));
            let _ = writeln!(
                out,
                "berth_netpol_denied_packets_total{{namespace=\"{ns}\",policy=\"{name}\",direction=\"{direction}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_netpol_policies NetworkPolicies selecting pods of this node.\n# TYPE berth_netpol_policies gauge\nberth_netpol_policies {}",
            self.policies
        );
        let _ = writeln!(
            out,
            "# HELP berth_netpol_selected_pods Pods of this node some NetworkPolicy selects.\n# TYPE berth_netpol_selected_pods gauge\nberth_netpol_selected_pods {}",
            self.selected_pods
        );
        let _ = writeln!(
            out,
            "# HELP berth_netpol_rules Peer prefixes programmed.\n# TYPE berth_netpol_rules gauge\nberth_netpol_rules {}",
            self.rules
        );
        let _ = writeln!(
            out,
            "# HELP berth_netpol_syncs Recomputations of the policy maps.\n# TYPE berth_netpol_syncs counter\nberth_netpol_syncs_total {}",
            self.syncs
        );
        let _ = writeln!(
            out,
            "# HELP berth_netpol_sync_seconds How long the last recomputation took.\n# TYPE berth_netpol_sync_seconds gauge\nberth_netpol_sync_seconds {}",
            self.last_sync_seconds
        );
        let _ = writeln!(
            out,
            "# HELP berth_netpol_errors Failed writes of the policy maps.\n# TYPE berth_netpol_errors counter\nberth_netpol_errors_total {}",
            self.errors
        );
        out
    }
}

/// Where NetworkPolicy runs on this node.
pub struct Enforcer {
    pub sync: Arc<Mutex<ServiceSync<SocketLb>>>,
    pub metrics: Arc<Mutex<PolicyMetrics>>,
    pub node: String,
    /// The node's addresses: their traffic to and from its pods is always allowed.
    pub hosts: Vec<Ipv4Addr>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("node", &self.node)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// Recomputes and writes the maps from the stores; returns the policies that could
/// not be expressed.
fn sync(
    e: &Enforcer,
    policies: &reflector::Store<NetworkPolicy>,
    namespaces: &reflector::Store<Namespace>,
    pods: &reflector::Store<Pod>,
) -> Vec<model::Unexpressible> {
    let started = Instant::now();
    let all: Vec<Arc<Pod>> = pods.state();
    let mut world = model::World {
        policies: policies.state().iter().map(|p| (**p).clone()).collect(),
        namespaces: namespaces
            .state()
            .iter()
            .map(|n| model::World::namespace_labels(n))
            .collect(),
        ..model::World::default()
    };
    for pod in &all {
        let Some(view) = model::PodView::of(pod) else {
            continue;
        };
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(e.node.as_str()) {
            world.local.push(view.clone());
        }
        world.pods.push(view);
    }
    let computed = model::compute(&world);
    let written = {
        let Ok(mut sync) = e.sync.lock() else {
            return computed.unexpressible;
        };
        sync.target_mut().apply_policy(&computed.state)
    };
    let Ok(mut m) = e.metrics.lock() else {
        return computed.unexpressible;
    };
    match written {
        Ok(w) => tracing::debug!(
            pods = w.pods,
            rules = w.rules,
            port_sets = w.port_sets,
            "policy maps written"
        ),
        Err(error) => {
            m.errors += 1;
            tracing::error!(%error, "writing the policy maps failed");
        }
    }
    m.policies = computed.selected.len();
    m.selected_pods = computed.state.pods.len();
    m.rules = computed.state.rules.len();
    m.syncs += 1;
    m.last_sync_seconds = started.elapsed().as_secs_f64();
    m.selected = computed.selected;
    computed.unexpressible
}

/// Warns once per policy and reason.
async fn report(
    client: &Client,
    node: &str,
    found: Vec<model::Unexpressible>,
    told: &mut BTreeSet<String>,
) {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    for u in found {
        let key = format!("{}/{}: {}", u.namespace, u.name, u.reason);
        if !told.insert(key) {
            continue;
        }
        tracing::warn!(policy = %format!("{}/{}", u.namespace, u.name), reason = %u.reason, "NetworkPolicy not fully enforceable; failing closed");
        let now = Time(jiff::Timestamp::now());
        let ev = Event {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{}.", u.name)),
                namespace: Some(u.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("NetworkPolicy".into()),
                name: Some(u.name.clone()),
                namespace: Some(u.namespace.clone()),
                ..Default::default()
            },
            reason: Some("PolicyNotEnforceable".into()),
            message: Some(u.reason.clone()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("berth-agent".into()),
                host: Some(node.to_owned()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("berth-agent".into()),
            reporting_instance: Some(node.to_owned()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(client.clone(), &u.namespace);
        if let Err(error) = api.create(&Default::default(), &ev).await {
            tracing::debug!(%error, "could not record the policy event");
        }
    }
}

/// The ServiceAccount (kube-system) the watch of policies, namespaces and every pod
/// runs as: the node identity may list only its own pods.
pub const ACCOUNT: &str = "berth-network-policy";
/// Lifetime of the account's tokens; renewed at a third of it.
const TOKEN_SECONDS: i64 = 3600;

/// Requests a token of [`ACCOUNT`] with the node's client and writes it to `file`
/// (0600).
async fn refresh_token(node: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let api: Api<ServiceAccount> = Api::namespaced(node.clone(), "kube-system");
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = api
        .create_token_request(ACCOUNT, &Default::default(), &req)
        .await?
        .status
        .and_then(|s| s.token)
        .unwrap_or_default();
    anyhow::ensure!(!token.is_empty(), "the TokenRequest returned no token");
    let tmp = file.with_extension("tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
    }
    std::fs::rename(&tmp, file)?;
    Ok(())
}

/// A client acting as [`ACCOUNT`] (the cluster and CA of `base`, the node's), with its
/// token kept fresh in `dir` by a task for as long as the process runs.
pub async fn client(
    node: &Client,
    base: &kube::Config,
    dir: &std::path::Path,
) -> anyhow::Result<Client> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("network-policy.token");
    refresh_token(node, &file).await?;
    let (n, f) = (node.clone(), file.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(TOKEN_SECONDS as u64 / 3)).await;
            while let Err(error) = refresh_token(&n, &f).await {
                tracing::warn!(%error, "renewing the NetworkPolicy token");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    });
    let mut cfg = base.clone();
    // kube re-reads a token file as it nears expiry.
    cfg.auth_info = kube::config::AuthInfo {
        token_file: Some(file.display().to_string()),
        ..Default::default()
    };
    Ok(Client::try_from(cfg)?)
}

/// Enforces NetworkPolicy until the task is dropped.
pub async fn run(client: Client, e: Arc<Enforcer>) {
    {
        let Ok(mut sync) = e.sync.lock() else { return };
        let lb = sync.target_mut();
        if let Err(error) = lb.adopt_policy() {
            tracing::warn!(%error, "reading back the pinned policy maps");
        }
        if let Err(error) = lb.set_policy_hosts(&e.hosts) {
            tracing::error!(%error, "writing the node addresses to the policy maps");
        }
    }
    let (policies, pw) = reflector::store();
    let (namespaces, nw) = reflector::store();
    let (pods, podw) = reflector::store();
    let cfg = watcher::Config::default;
    let changes = stream::select_all([
        reflector(
            pw,
            watcher(Api::<NetworkPolicy>::all(client.clone()), cfg()),
        )
        .default_backoff()
        .map(|_| ())
        .boxed(),
        reflector(nw, watcher(Api::<Namespace>::all(client.clone()), cfg()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
        reflector(podw, watcher(Api::<Pod>::all(client.clone()), cfg()))
            .default_backoff()
            .map(|_| ())
            .boxed(),
    ]);
    let mut changes = Box::pin(changes);
    let mut told = BTreeSet::new();
    let mut ready = false;
    while changes.next().await.is_some() {
        // Gather what arrives together, then recompute once.
        while let Ok(Some(())) = tokio::time::timeout(SETTLE, changes.next()).await {}
        if !ready {
            // Until every list is in, the maps keep what they hold (an earlier
            // agent's state included): nothing is opened on a partial view.
            ready = policies.wait_until_ready().now_or_never_ready()
                && namespaces.wait_until_ready().now_or_never_ready()
                && pods.wait_until_ready().now_or_never_ready();
            if !ready {
                continue;
            }
            tracing::info!("NetworkPolicy enforcing");
        }
        let found = sync(&e, &policies, &namespaces, &pods);
        report(&client, &e.node, found, &mut told).await;
    }
}

/// Whether a readiness future is already done.
trait NowOrNever {
    fn now_or_never_ready(self) -> bool;
}

impl<F: std::future::Future> NowOrNever for F {
    fn now_or_never_ready(self) -> bool {
        futures_util::FutureExt::now_or_never(self).is_some()
    }
}

impl Enforcer {
    /// The metrics text, with the kernel's counters read now.
    pub fn encode_metrics(&self) -> String {
        let counters = match self.sync.lock() {
            Ok(sync) => sync.target().policy_denied(),
            Err(_) => Vec::new(),
        };
        self.metrics
            .lock()
            .map(|m| m.encode(&counters))
            .unwrap_or_default()
    }
}
