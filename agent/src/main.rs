//! `berth-agent`: the node agent. Registers this host as a Node of the cluster named
//! by `--kubeconfig`, runs the pods bound to it and serves the kubelet API.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use clap::Parser;

use berth_agent::dns::{self, Dns, Upstreams, ZoneConsumer};
use berth_agent::network::Network;
use berth_agent::node::{self, NodeConfig};
use berth_agent::pods::{self, Ctx};
use berth_agent::service_lb::watch::LbConsumer;
use berth_agent::services::ServiceConsumer;
use berth_runtime::logs::Rotation;
use berth_runtime::pod::{Runtime, RuntimeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "berth's node agent (a kubelet)"
)]
struct Args {
    /// Log lines as text or as JSON objects (the kubelet's `--logging-format`).
    #[arg(long, value_enum, default_value_t = LoggingFormat::Text)]
    logging_format: LoggingFormat,
    /// Log verbosity as the kubelet's `-v`: 0–1 info, 2–3 the agent's debug lines, 4–5
    /// all debug, 6 and above trace. `RUST_LOG`, when set, wins.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
    /// A KubeletConfiguration file (kubelet.config.k8s.io/v1beta1): the fields
    /// berth-agent supports (address, port, staticPodPath, clusterDNS, clusterDomain,
    /// maxPods, podCIDR, cgroupRoot, seccompDefault, evictionHard, evictionSoft,
    /// evictionSoftGracePeriod, evictionMaxPodGracePeriod, serializeImagePulls,
    /// maxParallelImagePulls,
    /// imageGCHigh/LowThresholdPercent, imageMinimumGCAge,
    /// authentication.x509.clientCAFile) set their flags; flags on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster to join and the credentials (a client certificate) to use; with
    /// `--bootstrap-kubeconfig`, where the agent writes the kubeconfig of its own
    /// certificate.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// A kubeconfig with a bootstrap token: when `--kubeconfig` holds no valid client
    /// certificate, the agent requests one for `system:node:<name>` with it (TLS
    /// bootstrap) and renews it before it expires.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// More berth-servers of the cluster (`https://` URLs, comma-separated), tried in
    /// order when the kubeconfig's server refuses connections, does not connect in time
    /// or answers 503; the servers the `kubernetes` Endpoints list are added on their
    /// own.
    #[arg(long, value_delimiter = ',')]
    api_servers: Vec<String>,
    /// Where the node's certificates and keys are kept (default: <root-dir>/pki).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// The Node's name (default: the hostname).
    #[arg(long)]
    hostname_override: Option<String>,
    /// The node's InternalIP (default: the address that routes to the apiserver).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Images, container layers and pod volumes.
    #[arg(long, default_value = "/var/lib/berth")]
    root_dir: PathBuf,
    /// Run every container that names no seccomp profile under RuntimeDefault (the
    /// kubelet's --seccomp-default); Localhost profiles are read from <root-dir>/seccomp/.
    #[arg(long)]
    seccomp_default: bool,
    /// Unsafe sysctls (names or `prefix*` patterns) pods may set beside the safe set, as
    /// the kubelet's flag; each must be namespaced by the kernel (`kernel.shm*`,
    /// `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`, `net.*`).
    #[arg(long, value_delimiter = ',')]
    allowed_unsafe_sysctls: Vec<String>,
    /// Registry mirrors and per-registry credentials and TLS, in k3s' `registries.yaml`
    /// shape (`mirrors.<host>.endpoint`/`rewrite`, `configs.<host>.auth`/`tls`); read
    /// at start and whenever it changes. A missing file configures nothing.
    #[arg(long, default_value = "/etc/berth/registries.yaml")]
    registry_config: PathBuf,
    /// Runtime state (container records, netns pins).
    #[arg(long, default_value = "/run/berth")]
    run_dir: PathBuf,
    /// Container logs, `<ns>_<pod>_<uid>/<container>/<n>.log`.
    #[arg(long, default_value = "/var/log/pods")]
    pod_log_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Directories holding CNI plugins (comma-separated); the agent's own directory
    /// (where berth-cni is installed with it) is always searched too.
    #[arg(
        long,
        default_value = "/opt/cni/bin,/usr/lib/cni",
        value_delimiter = ','
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// The node's pod range; with no conflist in --cni-conf-dir the agent writes one
    /// for berth-cni on it.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The bridge of the conflist the agent writes for --pod-cidr (berth-cni's default).
    #[arg(long, default_value = "berth0")]
    pod_bridge: String,
    /// The network namespace holding the node's pod network when it is not the
    /// agent's own (nested nodes, tests).
    #[arg(long)]
    pod_network_netns: Option<PathBuf>,
    /// The cluster's pod range (berth-server's --cluster-cidr): pod traffic leaving it
    /// is masqueraded, traffic to pods on other nodes keeps the pod's address.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// How traffic reaches the pods of other nodes: `routed` (a route to each node's
    /// podCIDR via its InternalIP: one L2 segment), `vxlan` (an overlay: device
    /// berth.vxlan, VNI 1, UDP 8472), or `auto` (routed to nodes on this node's
    /// segment, VXLAN to the others).
    #[arg(long, default_value = "auto")]
    pod_network_mode: berth_agent::routes::Mode,
    /// eBPF host routing: with --cluster-cidr, the tc programs on the node's uplink
    /// and pod bridge forward pod-to-pod packets between them themselves (a FIB
    /// lookup and `bpf_redirect_neigh`), skipping the kernel's forwarding path and
    /// netfilter; traffic leaving the cluster CIDR, VXLAN and anything unusual stay
    /// with the kernel. `false` leaves all forwarding to the kernel.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ebpf_host_routing: bool,
    /// The cgroup all pods go under (`<root>/<qos>/pod<uid>/<container>`).
    #[arg(long, default_value = "kubepods")]
    cgroup_root: String,
    #[arg(long, default_value = "berth.local/pause:v1")]
    pod_infra_container_image: String,
    /// OCI image layouts (directories) to import into the image store at start.
    #[arg(long, value_delimiter = ',')]
    preload_images: Vec<PathBuf>,
    /// Cluster DNS server addresses (ClusterFirst pods use them).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Answer cluster DNS on this node (the `kube-dns` Service's IP is sent to it);
    /// `--dns=false` leaves DNS to an external server, as with a kubelet.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dns: bool,
    /// Where the DNS server listens (default: the pod network's gateway, inside the
    /// pod network's namespace).
    #[arg(long)]
    dns_bind_address: Option<IpAddr>,
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// Servers for names outside the cluster, `ip[:port]` (default: the nameservers
    /// of this host's /etc/resolv.conf); the `kube-system/berth-dns` ConfigMap
    /// overrides them.
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
    #[arg(long, default_value = "0.0.0.0")]
    address: IpAddr,
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// CA whose client certificates may use the kubelet API (default: the kubeconfig's CA).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// The `berth-runtime` binary (default: next to this one).
    #[arg(long)]
    runtime_binary: Option<PathBuf>,
    /// Remove every pod of this node from the host (containers, network, sandboxes,
    /// volumes, cgroups) and exit, without contacting the apiserver
    /// (`cargo xtask down` uses it).
    #[arg(long)]
    remove_all_pods: bool,
    /// Hard eviction thresholds (`memory.available<100Mi,nodefs.available<10%`, signals
    /// memory.available, nodefs.available, nodefs.inodesFree, imagefs.available,
    /// imagefs.inodesFree, pid.available): below one the node reports Memory-, Disk- or
    /// PIDPressure and evicts pods. Unset: the kubelet's defaults; set: only the
    /// signals given.
    #[arg(long, default_value = "")]
    eviction_hard: String,
    /// Soft eviction thresholds (same signals): the node reports pressure at once, but
    /// pods are evicted only once a threshold has stayed crossed for its grace period.
    #[arg(long, default_value = "")]
    eviction_soft: String,
    /// How long each soft threshold must stay crossed (`memory.available=1m30s,…`,
    /// one per soft threshold).
    #[arg(long, default_value = "")]
    eviction_soft_grace_period: String,
    /// The longest (seconds) a pod evicted for a soft threshold is given to stop; its
    /// own terminationGracePeriodSeconds when shorter.
    #[arg(long, default_value_t = 0)]
    eviction_max_pod_grace_period: u64,
    /// How far past its threshold a signal must recover before its pressure counts as
    /// resolved (`signal=quantity|percent,…`, e.g. `nodefs.available=500Mi`); eviction
    /// goes on until then. Empty: none, as the kubelet's default.
    #[arg(long, default_value = "")]
    eviction_minimum_reclaim: String,
    /// Pull one image at a time (the kubelet's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    serialize_image_pulls: bool,
    /// With `--serialize-image-pulls=false`, at most this many pulls at once (unset: no
    /// limit).
    #[arg(long)]
    max_parallel_image_pulls: Option<u32>,
    /// Image filesystem usage (percent) from which unused images are deleted (100: never).
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Image filesystem usage (percent) image garbage collection frees down to.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// Images are kept at least this long after they were first seen (a Go duration).
    #[arg(long, default_value = "2m0s", value_parser = berth_agent::config::go_duration)]
    image_minimum_gc_age: std::time::Duration,
    /// Dead instances of each container kept on the node (for `lastState` and
    /// `kubectl logs --previous`), the newest first; the kubelet's flag and default (1).
    /// A negative value keeps them all.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    maximum_dead_containers_per_container: i32,
    /// A directory of static pod manifests (the kubelet's staticPodPath).
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// The eBPF object with the socket-LB programs (`cargo xtask build-ebpf`); without
    /// it Services are not load-balanced on this node.
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
    /// A bpffs directory to pin the socket-LB maps and links in, so they outlive an
    /// agent restart.
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Besides the interface of --node-ip, the interfaces with an address in these
    /// CIDRs (comma-separated, kube-proxy's flag) answer NodePorts, external and
    /// load-balancer IPs and hostPorts; their addresses are the NodePort addresses.
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<berth_agent::service_lb::external::Cidr>,
    /// Also balance the host's own processes under this cgroup2 path (`/`: all of
    /// them), as kube-proxy does for the host: ClusterIPs, and NodePorts on the node's
    /// addresses and on 127.0.0.1. Unset: only pods are balanced.
    #[arg(long)]
    host_services_cgroup: Option<String>,
    /// Enforce NetworkPolicies for this node's pods (eBPF at the pods' cgroup);
    /// `--network-policy=false` leaves policies unenforced here.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    network_policy: bool,
    /// The unix socket of a CSI driver on this node (repeatable): the agent registers
    /// it (CSINode), provisions and expands its volumes for this node, and mounts
    /// claims of pods through it.
    #[arg(long = "csi-socket")]
    csi_sockets: Vec<PathBuf>,
}

fn own_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The kubeconfig's cluster CA (PEM).
fn kubeconfig_ca(kc: &kube::config::Kubeconfig) -> anyhow::Result<String> {
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .context("the kubeconfig names no cluster")?;
    if let Some(data) = &cluster.certificate_authority_data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .context("certificate-authority-data is not base64")?;
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    if let Some(file) = &cluster.certificate_authority {
        return std::fs::read_to_string(file).with_context(|| format!("reading {file}"));
    }
    anyhow::bail!("the kubeconfig has no cluster CA; pass --client-ca-file")
}

/// The local address that routes to the apiserver.
fn route_to(server: &str) -> Option<IpAddr> {
    let url: http_host::Host = http_host::parse(server)?;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect((url.host.as_str(), url.port)).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

mod http_host {
    pub struct Host {
        pub host: String,
        pub port: u16,
    }
    /// `https://host:port/...` → host and port.
    pub fn parse(url: &str) -> Option<Host> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let authority = rest.split('/').next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (authority, 443),
        };
        Some(Host {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
        })
    }
}

/// Starts the node's DNS server: listeners bound, ConfigMap followed. Returns it and
/// the address the socket LB may send the `kube-dns` Service to (the pod network's
/// gateway; none for a loopback or IPv6 `--dns-bind-address`).
fn start_dns(
    args: &Args,
    network: &Network,
    node_ip: &str,
    client: &kube::Client,
) -> anyhow::Result<(Arc<Dns>, Option<std::net::SocketAddrV4>)> {
    let gateway = network.pod_gateway();
    let (addr, netns) = match (args.dns_bind_address, gateway) {
        (Some(ip), _) => (SocketAddr::new(ip, args.dns_port), None),
        (None, Some((gw, _))) => (
            SocketAddr::new(gw.into(), args.dns_port),
            network.node_netns(),
        ),
        (None, None) => anyhow::bail!(
            "no pod network gateway to serve DNS on; pass --dns-bind-address or --dns=false"
        ),
    };
    let servers = if args.dns_upstream.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        dns::config::resolv_conf_servers(&text)
    } else {
        args.dns_upstream
            .iter()
            .map(|s| {
                dns::config::parse_server(s).map_err(|e| anyhow::anyhow!("--dns-upstream: {e}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut recursion = Vec::new();
    if let Ok(ip) = node_ip.parse::<IpAddr>() {
        recursion.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    if let Some((gw, len)) = gateway {
        recursion.push((IpAddr::V4(gw), len));
    }
    let server = Arc::new(Dns::new(
        &args.cluster_domain,
        Upstreams {
            servers,
            stubs: Vec::new(),
        },
        recursion,
    ));
    let (udp, tcp) = dns::server::bind_sockets(addr, netns)
        .map_err(|e| anyhow::anyhow!("binding the DNS listeners: {e}"))?;
    tracing::info!(%addr, upstreams = ?server.upstreams().servers, "cluster DNS listening");
    let serving = server.clone();
    tokio::spawn(async move {
        if let Err(error) = dns::server::serve(serving, udp, tcp).await {
            tracing::error!(%error, "the DNS server stopped");
        }
    });
    tokio::spawn(dns::watch_config(server.clone(), client.clone()));
    let local = match addr {
        SocketAddr::V4(v4) if !v4.ip().is_loopback() && !v4.ip().is_unspecified() => Some(v4),
        _ => None,
    };
    Ok((server, local))
}

/// The routing settings of this node, when its IP is an IPv4 address other nodes can
/// reach (not a loopback one, as test nodes have).
fn routes_config(args: &Args, node: &NodeConfig) -> Option<berth_agent::routes::Config> {
    Some(berth_agent::routes::Config {
        node_name: node.name.clone(),
        node_ip: node
            .node_ip
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .filter(|ip| !ip.is_loopback())?,
        mode: args.pod_network_mode,
        netns: args.pod_network_netns.clone(),
    })
}

/// Routes pod traffic to the other nodes' podCIDRs, when the pod network is berth's
/// (another CNI network routes for itself).
fn start_routes(
    args: &Args,
    network: &Network,
    node: &NodeConfig,
    client: &kube::Client,
) -> Option<tokio::task::JoinHandle<()>> {
    if !network.is_berth_cni() {
        tracing::info!("the pod network is not berth-cni's: cross-node routing is left to it");
        return None;
    }
    let Some(cfg) = routes_config(args, node) else {
        tracing::warn!(ip = %node.node_ip, "the node IP is not a routable IPv4 address: no cross-node pod routing");
        return None;
    };
    match berth_agent::routes::Router::new(cfg) {
        Ok(router) => Some(tokio::spawn(berth_agent::routes::watch::run(
            client.clone(),
            router,
        ))),
        Err(error) => {
            tracing::error!(%error, "cross-node pod routing could not start");
            None
        }
    }
}

/// Removes the routes to other nodes' pods and the VXLAN device (the node is being
/// taken down).
async fn remove_routes(args: &Args, node: &NodeConfig) {
    let Some(cfg) = routes_config(args, node) else {
        return;
    };
    let removed = match berth_agent::routes::Router::new(cfg) {
        Ok(router) => router.teardown().await,
        Err(error) => Err(error),
    };
    match removed {
        Ok(()) => tracing::info!("removed the routes to other nodes' pods"),
        Err(error) => tracing::warn!(%error, "removing the routes to other nodes' pods"),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LoggingFormat {
    Text,
    Json,
}

/// Logs to stderr as `format` says, at the level `-v` gives (or `RUST_LOG`).
fn init_logging(format: LoggingFormat, verbosity: u8) {
    let level = match verbosity {
        0 | 1 => "info,kube=warn",
        2 | 3 => "info,kube=warn,berth_agent=debug,berth_runtime=debug",
        4 | 5 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LoggingFormat::Json => builder.json().init(),
        LoggingFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // glibc gives each thread that meets contention an arena of its own (up to 8 per
    // core), and freed memory stays in them: a burst of pods, synced on many blocking
    // threads at once, would leave the agent's RSS high for good. Two arenas are
    // enough for its allocation rate. (glibc only: musl's allocator has no arenas and
    // no mallopt.)
    // SAFETY: mallopt only sets an allocator parameter; no memory is touched.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (argv, config_warnings) = match berth_agent::config::config_path(&argv) {
        Some(path) => berth_agent::config::expand(argv, std::path::Path::new(&path))
            .map_err(|e| anyhow::anyhow!("--config {e}"))?,
        None => (argv, Vec::new()),
    };
    let args = Args::parse_from(argv);
    init_logging(args.logging_format, args.verbosity);
    for warning in config_warnings {
        tracing::warn!("{warning}");
    }
    let sysctls = berth_agent::pods::sysctls::Allowlist::new(&args.allowed_unsafe_sysctls)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hard = berth_agent::pods::eviction::signals::Thresholds::parse(&args.eviction_hard)
        .map_err(|e| anyhow::anyhow!("--eviction-hard: {e}"))?;
    let soft = berth_agent::pods::eviction::signals::Soft::parse(
        &args.eviction_soft,
        &args.eviction_soft_grace_period,
    )
    .map_err(|e| anyhow::anyhow!("--eviction-soft: {e}"))?;
    // The node's pressure conditions follow hard and soft thresholds alike.
    let thresholds = berth_agent::pods::eviction::signals::Thresholds(
        hard.0.iter().chain(&soft.thresholds.0).cloned().collect(),
    );
    let eviction = berth_agent::pods::eviction::Settings {
        hard,
        soft,
        max_pod_grace: std::time::Duration::from_secs(args.eviction_max_pod_grace_period),
        minimum_reclaim: berth_agent::pods::eviction::signals::MinimumReclaim::parse(
            &args.eviction_minimum_reclaim,
        )
        .map_err(|e| anyhow::anyhow!("--eviction-minimum-reclaim: {e}"))?,
    };
    let gc_policy = berth_agent::pods::image_gc::Policy::new(
        args.image_gc_high_threshold,
        args.image_gc_low_threshold,
        args.image_minimum_gc_age,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let pull_slots = pods::pull_slots(args.serialize_image_pulls, args.max_parallel_image_pulls)
        .map_err(|e| anyhow::anyhow!(e))?;
    let registries = std::sync::Arc::new(
        berth_agent::pods::registries::RegistryConfig::load(&args.registry_config)
            .map_err(|e| anyhow::anyhow!("--registry-config: {e}"))?,
    );
    let name = match &args.hostname_override {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()?.to_string_lossy().to_lowercase(),
    };
    let cert_dir = args
        .cert_dir
        .clone()
        .unwrap_or_else(|| args.root_dir.join("pki"));
    // (`--remove-all-pods` contacts no apiserver, so it needs no identity.)
    if let Some(boot) = &args.bootstrap_kubeconfig
        && !args.remove_all_pods
    {
        berth_agent::certificates::bootstrap(boot, &args.kubeconfig, &cert_dir, &name)
            .await
            .context("TLS bootstrap")?;
    }
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    // A kubeconfig naming a certificate file (as TLS bootstrap writes it): the
    // certificate is read into a slot the rotation replaces under a running client.
    let rotating = match berth_agent::certificates::certificate_file(&kc) {
        Some(file) => {
            let pem =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            Some(Arc::new(berth_agent::certificates::Rotating::new(&pem)?))
        }
        None => None,
    };
    let server = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    let client_ca = match &args.client_ca_file {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => kubeconfig_ca(&kc)?,
    };
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("loading the kubeconfig")?;
    berth_agent::identify(&mut config)?;
    let base_config = config.clone();
    // One client over every server of the cluster (berth_agent::failover).
    let connect: berth_agent::failover::Connect = match &rotating {
        Some(identity) => {
            let identity = identity.clone();
            Arc::new(move |c: &kube::Config| berth_agent::certificates::client(c, identity.clone()))
        }
        None => Arc::new(|c: &kube::Config| Ok(kube::Client::try_from(c.clone())?)),
    };
    let (client, servers) = berth_agent::failover::client(config, &args.api_servers, connect)?;
    if !args.remove_all_pods {
        tokio::spawn(servers.follow_endpoints(client.clone()));
    }
    if let Some(identity) = &rotating {
        tokio::spawn(berth_agent::certificates::rotate(
            client.clone(),
            identity.clone(),
            name.clone(),
            cert_dir.clone(),
        ));
    }
    let node_ip = args
        .node_ip
        .or_else(|| route_to(&server))
        .map(|ip| ip.to_string())
        .context("cannot tell the node's IP; pass --node-ip")?;
    let runtime_binary = args
        .runtime_binary
        .clone()
        .unwrap_or_else(|| own_dir().join("berth-runtime"));
    let runtime = Runtime::open(RuntimeConfig {
        state_dir: args.run_dir.join("containers"),
        data_dir: args.root_dir.clone(),
        runtime_binary,
        log_rotation: Rotation::default(),
    })
    .context("opening the runtime")?;
    for dir in &args.preload_images {
        runtime
            .images()
            .import_layout(dir, None)
            .with_context(|| format!("importing {}", dir.display()))?;
    }
    let mut bin_dirs = args.cni_bin_dir.clone();
    bin_dirs.push(own_dir());
    let network_settings = berth_agent::network::Settings {
        conf_dir: args.cni_conf_dir.clone(),
        bin_dirs,
        bridge: args.pod_bridge.clone(),
        ipam_dir: args.root_dir.join("ipam"),
        node_netns: args.pod_network_netns.clone(),
        cluster_cidr: args.cluster_cidr.clone(),
    };
    // Without --pod-cidr or a conflist of another's, the pod network is templated from
    // the Node's podCIDR once the node is registered.
    let from_node = args.pod_cidr.is_none()
        && !args.remove_all_pods
        && berth_agent::network::templated_from_node(&args.cni_conf_dir);
    let network = if from_node {
        None
    } else {
        Some(Network::load(
            &network_settings,
            args.pod_cidr.as_deref(),
            false,
        )?)
    };
    if args.remove_all_pods {
        let ctx = Ctx {
            client,
            runtime: Arc::new(runtime),
            network: network.context("no pod network")?,
            node: NodeConfig {
                name,
                node_ip,
                kubelet_port: args.port,
                pod_cidr: None,
                max_pods: args.max_pods,
                root_dir: args.root_dir.clone(),
                labels: Default::default(),
                image_dir: args.root_dir.clone(),
                thresholds: thresholds.clone(),
            },
            pods_dir: args.root_dir.join("pods"),
            logs_dir: args.pod_log_dir.clone(),
            pause_image: args.pod_infra_container_image.clone(),
            cgroup_root: args.cgroup_root.clone(),
            cluster_dns: Vec::new(),
            cluster_domain: args.cluster_domain.clone(),
            oom_score_floor: 0,
            static_pod_dir: None,
            node_uid: String::new(),
            stats_rates: Default::default(),
            lb_metrics: None,
            netpol: None,
            dns: None,
            seccomp_default: args.seccomp_default,
            sysctls: sysctls.clone(),
            max_dead_per_container: u32::try_from(args.maximum_dead_containers_per_container).ok(),
            registries: Default::default(),
            pull_slots: None,
            start_metrics: Default::default(),
            csi: berth_agent::csi::Drivers::default(),
        };
        for socket in &args.csi_sockets {
            match berth_agent::csi::Driver::probe(socket).await {
                Ok(d) => ctx.csi.add(d),
                Err(e) => {
                    tracing::warn!(error = %e, "CSI driver unreachable: its volumes stay mounted")
                }
            }
        }
        let n = pods::remove_all(&ctx);
        tracing::info!(pods = n, "removed every pod from the host");
        remove_routes(&args, &ctx.node).await;
        return Ok(());
    }
    let node_cfg = NodeConfig {
        name: name.clone(),
        node_ip,
        kubelet_port: args.port,
        pod_cidr: args.pod_cidr.clone(),
        max_pods: args.max_pods,
        root_dir: args.root_dir.clone(),
        labels: Default::default(),
        image_dir: args.root_dir.clone(),
        thresholds: thresholds.clone(),
    };
    let node = node::register(&client, &node_cfg)
        .await
        .context("registering the node")?;
    tracing::info!(node = %name, ip = %node_cfg.node_ip, "node registered");
    let network = match network {
        Some(n) => n,
        None => {
            let cidr = berth_agent::network::pod_cidr_from_node(&client, &name).await?;
            tracing::info!(pod_cidr = %cidr, "the pod network takes the node's podCIDR");
            Network::load(&network_settings, Some(&cidr), true)?
        }
    };
    let routes_task = start_routes(&args, &network, &node_cfg, &client);
    let lb = match &args.ebpf_object {
        Some(object) => Some(
            berth_agent::service_lb::node::start(
                object,
                args.bpf_pin_dir.as_deref(),
                &args.cgroup_root,
                args.host_services_cgroup.as_deref(),
                &name,
            )
            .context("starting the Service load balancer")?,
        ),
        None => {
            tracing::warn!("no --ebpf-object: Services are not load-balanced on this node");
            None
        }
    };
    let dns = if args.dns {
        Some(start_dns(&args, &network, &node_cfg.node_ip, &client)?)
    } else {
        tracing::info!("--dns=false: this node answers no cluster DNS");
        None
    };
    let mut consumers: Vec<Box<dyn ServiceConsumer>> = Vec::new();
    if let Some(l) = &lb {
        consumers.push(Box::new(LbConsumer {
            sync: l.sync.clone(),
            metrics: l.metrics.clone(),
            local_dns: dns.as_ref().and_then(|(_, a)| *a),
        }));
    }
    if let Some((d, _)) = &dns {
        consumers.push(Box::new(ZoneConsumer(d.clone())));
    }
    if lb.is_some() {
        consumers.push(Box::new(
            berth_agent::service_lb::health::HealthConsumer::new(
                &name,
                network.node_netns().map(Path::to_path_buf),
            ),
        ));
    }
    // NetworkPolicy: the cgroup skb programs beside the socket LB.
    let netpol = match (&lb, args.network_policy) {
        (Some(l), true) => {
            l.sync
                .lock()
                .map_err(|_| anyhow::anyhow!("the LB lock is poisoned"))?
                .target_mut()
                .attach_network_policy(&l.cgroup)
                .context("attaching the NetworkPolicy programs")?;
            let mut hosts: Vec<std::net::Ipv4Addr> =
                node_cfg.node_ip.parse().ok().into_iter().collect();
            hosts.extend(network.pod_gateway().map(|(gw, _)| gw));
            Some(Arc::new(berth_agent::netpol::Enforcer {
                sync: l.sync.clone(),
                metrics: Arc::default(),
                node: name.clone(),
                hosts,
            }))
        }
        (Some(l), false) => {
            l.sync
                .lock()
                .map_err(|_| anyhow::anyhow!("the LB lock is poisoned"))?
                .target_mut()
                .detach_network_policy()
                .context("removing an earlier NetworkPolicy attachment")?;
            tracing::info!("--network-policy=false: NetworkPolicies are not enforced on this node");
            None
        }
        (None, _) => None,
    };
    let netpol_task = netpol.clone().map(|e| {
        let (node_client, base, dir) = (client.clone(), base_config.clone(), cert_dir.clone());
        tokio::spawn(async move {
            // The policy identity's token; until it comes, the pinned maps hold.
            let account = loop {
                match berth_agent::netpol::client(&node_client, &base, &dir).await {
                    Ok(c) => break c,
                    Err(error) => {
                        tracing::warn!(error = %format!("{error:#}"), "no NetworkPolicy identity yet; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    }
                }
            };
            berth_agent::netpol::run(account, e).await;
        })
    });
    // Outside access: the NodePort programs on the node's external interfaces.
    let external_task = lb.as_ref().map(|l| {
        let cfg = berth_agent::service_lb::external::Config {
            node_ip: node_cfg
                .node_ip
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .filter(|ip| !ip.is_loopback()),
            nodeport_addresses: args.nodeport_addresses.clone(),
            pod_bridge: args.pod_bridge.clone(),
            netns: network.node_netns().map(Path::to_path_buf),
            // The IPv4 prefix of a (dual-stack) --cluster-cidr.
            host_routing: args
                .cluster_cidr
                .as_deref()
                .filter(|_| args.ebpf_host_routing)
                .and_then(|c| c.split(',').find_map(|c| c.trim().parse().ok())),
        };
        tokio::spawn(berth_agent::service_lb::external::run(
            cfg,
            l.sync.clone(),
            l.metrics.clone(),
        ))
    });
    let watch_task = (!consumers.is_empty())
        .then(|| tokio::spawn(berth_agent::services::run(client.clone(), consumers)));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        runtime: Arc::new(runtime),
        network,
        node: node_cfg.clone(),
        pods_dir: args.root_dir.join("pods"),
        logs_dir: args.pod_log_dir.clone(),
        pause_image: args.pod_infra_container_image.clone(),
        cgroup_root: args.cgroup_root.clone(),
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        oom_score_floor: pods::oom_score_floor(),
        static_pod_dir: args.pod_manifest_path.clone(),
        node_uid: node.metadata.uid.clone().unwrap_or_default(),
        stats_rates: Default::default(),
        lb_metrics: lb.as_ref().map(|l| l.metrics.clone()),
        netpol: netpol.clone(),
        dns: dns.as_ref().map(|(d, _)| d.clone()),
        seccomp_default: args.seccomp_default,
        sysctls,
        max_dead_per_container: u32::try_from(args.maximum_dead_containers_per_container).ok(),
        registries: registries.clone(),
        pull_slots: pull_slots.clone(),
        start_metrics: Default::default(),
        csi: berth_agent::csi::Drivers::default(),
    });
    let csi_task = tokio::spawn(berth_agent::csi::run(ctx.clone(), args.csi_sockets.clone()));
    if ctx.oom_score_floor > -1000 {
        tracing::warn!(
            floor = ctx.oom_score_floor,
            "no CAP_SYS_RESOURCE: containers cannot get an oom_score_adj below the agent's own"
        );
    }
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let (pod_store, pod_writer) = kube::runtime::reflector::store();
    let host_ports_task = lb.as_ref().map(|l| {
        tokio::spawn(berth_agent::service_lb::host_ports::run(
            pod_store.clone(),
            l.sync.clone(),
        ))
    });
    let addr = SocketAddr::new(args.address, args.port);
    // The kubelet API: self-signed until the kubelet-serving signer's certificate
    // arrives; callers authorized through SubjectAccessReviews (webhook mode).
    let names = berth_agent::kubelet_api::serving_names(&ctx);
    let serving = Arc::new(berth_agent::certificates::Rotating::new(
        &berth_agent::kubelet_api::self_signed(names.clone())?,
    )?);
    tokio::spawn(berth_agent::certificates::keep_serving(
        client.clone(),
        serving.clone(),
        name.clone(),
        names,
        cert_dir.clone(),
    ));
    let kubelet_authz = Arc::new(berth_agent::kubelet_api::auth::Authorizer::new(
        client.clone(),
        name.clone(),
    ));
    let image_gc = Arc::new(berth_agent::pods::image_gc::ImageGc::new(
        gc_policy,
        &args.pod_infra_container_image,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = node::heartbeat(client, node_cfg, uid) => {}
        () = pods::run(ctx.clone(), pod_writer) => {}
        () = pods::eviction::run(ctx.clone(), eviction, image_gc.clone(), pod_store) => {}
        () = pods::image_gc::run(image_gc, ctx.runtime.clone(), pods::image_gc::PERIOD) => {}
        r = berth_agent::kubelet_api::serve(ctx, addr, client_ca, serving, kubelet_authz) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; pods keep running"),
        _ = term.recv() => tracing::info!("terminated; pods keep running"),
    }
    for t in [
        watch_task,
        external_task,
        host_ports_task,
        netpol_task,
        routes_task,
    ]
    .into_iter()
    .flatten()
    {
        t.abort();
    }
    csi_task.abort();
    Ok(())
}
