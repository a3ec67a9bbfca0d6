//! `berth-server`: the control plane binary: the apiserver, the scheduler and the
//! controllers, each of which can run alone (`--apiserver=false` runs the others
//! against the cluster named by `--kubeconfig`, like kube-scheduler and
//! kube-controller-manager), leader-elected through Leases.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "berth-server",
    version,
    about = "berth's Kubernetes-compatible control plane"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines as text or as JSON objects (kube-apiserver's `--logging-format`).
    #[arg(long, value_enum, default_value_t = LoggingFormat::Text)]
    logging_format: LoggingFormat,
    /// Log verbosity as kube-apiserver's `-v`: 0–1 info, 2–3 berth-server's debug
    /// lines, 4–5 all debug, 6 and above trace. `RUST_LOG`, when set, wins.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
    /// A YAML file of these flags (`secure-port: 6443`, `controllers: "*,-podgc"`;
    /// camelCase keys too), read as if given first on the command line: a flag given on
    /// the command line wins, an unknown key stops the server naming it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the store, the PKI and the admin kubeconfig live.
    #[arg(
        long,
        default_value = "/var/lib/berth/server",
        env = "BERTH_DATA_DIR",
        global = true
    )]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Address clients use to reach this server (kubeconfig, `kubernetes` endpoints).
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: IpAddr,
    /// Static bearer tokens (`token,user,uid,"group1,group2"` per line).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Where to write the admin kubeconfig (default: <data-dir>/admin.kubeconfig); with
    /// `--apiserver=false`, the kubeconfig of the cluster to schedule for.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Serve the API.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    apiserver: bool,
    /// Run the scheduler (kube-scheduler's default profile).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scheduler: bool,
    /// Which controllers run (kube-controller-manager's core set): `true` (all),
    /// `false` (none), or kube-controller-manager's list form (`*,-nodelifecycle`,
    /// `csrapproving,csrsigning`).
    #[arg(long, default_value = "true")]
    controllers: berth_control_plane::controllers::Selection,
    /// Run the scheduler and the controllers only while holding their Lease in
    /// kube-system, so several berth-servers never both act.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a node may go without renewing its Lease before it is Unknown and
    /// tainted (a Go duration).
    #[arg(long, default_value = "40s", value_parser = duration)]
    node_monitor_grace_period: Duration,
    /// Where the scheduler and the HPA controller serve their Prometheus `/metrics`
    /// over plain HTTP (off when unset; with the apiserver, they are also part of its
    /// `/metrics`).
    #[arg(long)]
    metrics_bind_address: Option<SocketAddr>,
    /// How requests are authorized: `Node,RBAC` (nodes by the Node authorizer, then
    /// Roles, ClusterRoles and their bindings; `system:masters` may do everything),
    /// `RBAC` alone, or `AlwaysAllow` (every authenticated request).
    #[arg(long, default_value = "Node,RBAC")]
    authorization_mode: berth_control_plane::apiserver::authz::Mode,
    /// The CA certificate (PEM) the controllers publish as every namespace's
    /// `kube-root-ca.crt` ConfigMap (default: the CA of the controllers' kubeconfig).
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
    /// The CA certificate (PEM) CertificateSigningRequests for the `kubernetes.io`
    /// signers are signed with (default: `<data-dir>/pki/ca.crt` beside the apiserver).
    #[arg(long)]
    cluster_signing_cert_file: Option<PathBuf>,
    /// Its key (default: `<data-dir>/pki/ca.key` beside the apiserver).
    #[arg(long)]
    cluster_signing_key_file: Option<PathBuf>,
    /// How long signed certificates last unless a request asks for less (Go duration).
    #[arg(long, default_value = "8760h")]
    cluster_signing_duration: String,
    /// Each controller acts as its own ServiceAccount (`kube-system/<name>`, bound to
    /// its `system:controller:*` role) with tokens from the TokenRequest API, while the
    /// informers list and watch as the controller manager (kube-controller-manager's
    /// flag, which kubeadm sets). `false`: every controller acts as the controllers'
    /// kubeconfig — beside the apiserver, the admin's.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    use_service_account_credentials: bool,
    /// The addresses `type: LoadBalancer` Services get, written to their
    /// `status.loadBalancer.ingress` and answered by the agents' dataplane: CIDRs and
    /// ranges, comma-separated (`192.168.1.240/28,10.0.0.5-10.0.0.9`). Without it such
    /// Services stay pending, as on a cluster without a load-balancer provider.
    #[arg(long)]
    lb_pool: Option<berth_control_plane::controllers::service_lb::Pool>,
    /// Give each Node a podCIDR from --cluster-cidr (kube-controller-manager's flag;
    /// the nodeipam controller's range allocator).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allocate_node_cidrs: bool,
    /// The pods' address range (`10.244.0.0/16`; dual-stack: one IPv4 and one IPv6
    /// prefix, comma-separated) the node CIDRs are cut from.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The size of each node's CIDR (single-stack; default 24 for IPv4, 64 for IPv6).
    #[arg(long)]
    node_cidr_mask_size: Option<u8>,
    /// The size of each node's IPv4 CIDR (dual-stack; default 24).
    #[arg(long)]
    node_cidr_mask_size_ipv4: Option<u8>,
    /// The size of each node's IPv6 CIDR (dual-stack; default 64).
    #[arg(long)]
    node_cidr_mask_size_ipv6: Option<u8>,
    /// Read-only requests served at once (kube-apiserver's flag; 0: no limit); one more
    /// is answered 429 with Retry-After. Watches and other long-running requests are
    /// not counted.
    #[arg(long, default_value_t = berth_control_plane::apiserver::MAX_REQUESTS_INFLIGHT)]
    max_requests_inflight: usize,
    /// Mutating requests served at once (kube-apiserver's flag; 0: no limit).
    #[arg(long, default_value_t = berth_control_plane::apiserver::MAX_MUTATING_REQUESTS_INFLIGHT)]
    max_mutating_requests_inflight: usize,
    /// Encryption at rest: an `EncryptionConfiguration` file (YAML or JSON) naming the
    /// resources stored encrypted and their providers (aesgcm, aescbc, secretbox,
    /// identity). A config that is not valid stops the server, naming the field.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// etcd servers to keep the objects in instead of the embedded store in the data
    /// dir (kube-apiserver's flag): `http://` or `https://` URLs, comma-separated.
    #[arg(long, value_delimiter = ',', global = true)]
    etcd_servers: Vec<String>,
    /// The CA certificate (PEM) that signed the etcd servers' certificates.
    #[arg(long, global = true)]
    etcd_cafile: Option<PathBuf>,
    /// The client certificate (PEM) berth-server presents to etcd.
    #[arg(long, global = true)]
    etcd_certfile: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, global = true)]
    etcd_keyfile: Option<PathBuf>,
    /// Where in etcd's keyspace the objects live (`/registry/pods/<ns>/<name>`, …).
    #[arg(long, default_value = "/registry", global = true)]
    etcd_prefix: String,
    /// The cluster CA certificate (PEM): client certificates are verified with it and
    /// berth-server's own certificates are issued from it (kube-apiserver's flag;
    /// default `<data-dir>/pki/ca.crt`, made on first start). Every server of one
    /// cluster uses the same one; it is copied into `<data-dir>/pki`.
    #[arg(long, requires = "client_ca_key_file")]
    client_ca_file: Option<PathBuf>,
    /// The CA's key (PEM). Unlike kube-apiserver, berth-server issues its serving
    /// certificate and its components' kubeconfigs itself, so it needs the key.
    #[arg(long, requires = "client_ca_file")]
    client_ca_key_file: Option<PathBuf>,
    /// The serving certificate (PEM; default `<data-dir>/pki/apiserver.crt`, issued from
    /// the CA for localhost, the host name, the `kubernetes` Service's names and IP, the
    /// advertised address and `--tls-san`, and issued again when those change).
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The serving certificate's key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// More names and addresses for the serving certificate berth-server makes — a load
    /// balancer's or a virtual IP in front of several servers (k3s' flag; repeatable or
    /// comma-separated).
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// The key ServiceAccount tokens are signed with (PEM, ECDSA P-256; default
    /// `<data-dir>/pki/sa.key`, made on first start). Every server of one cluster uses
    /// the same one, so each accepts the others' tokens.
    #[arg(long)]
    service_account_signing_key_file: Option<PathBuf>,
    /// More keys that verify ServiceAccount tokens (PEM, P-256 public or private keys;
    /// repeatable), e.g. a retired signing key.
    #[arg(long)]
    service_account_key_file: Vec<PathBuf>,
    /// How the `kubernetes` Service's endpoints are kept: `lease` (every live server,
    /// each holding a master lease; for several servers on one etcd) or `none` (made
    /// once with this server's address, then the administrator's).
    #[arg(long, default_value = "lease")]
    endpoint_reconciler_type: berth_control_plane::apiserver::endpoint_reconciler::Type,
    /// The audit policy (`audit.k8s.io/v1` Policy, YAML or JSON); without it nothing is
    /// audited. A policy that is not valid stops the server, naming the problem.
    #[arg(long)]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events are written, one JSON object a line (`-`: stdout).
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// The size in megabytes past which the audit log is rotated (0: 100).
    #[arg(long, default_value_t = 0)]
    audit_log_maxsize: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long, default_value_t = 0)]
    audit_log_maxbackup: usize,
    /// Days a rotated audit log is kept (0: no limit).
    #[arg(long, default_value_t = 0)]
    audit_log_maxage: u64,
    /// The audit log's format: `json` (kube-apiserver's `legacy` is not supported).
    #[arg(long, default_value = "json")]
    audit_log_format: String,
    /// Terminated pods kept before the oldest are garbage collected.
    #[arg(long, default_value_t = 12_500)]
    terminated_pod_gc_threshold: usize,
    /// How often the built-in metrics server scrapes each node's kubelet
    /// (metrics-server's flag; a Go duration).
    #[arg(long, default_value = "15s", value_parser = duration)]
    metric_resolution: Duration,
    /// How often each HorizontalPodAutoscaler is synced.
    #[arg(long, default_value = "15s", value_parser = duration)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// How far back an HPA looks for a higher recommendation before scaling down.
    #[arg(long, default_value = "5m0s", value_parser = duration)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
    /// The usage/target ratio within which an HPA does not scale (either way).
    #[arg(long, default_value_t = 0.1)]
    horizontal_pod_autoscaler_tolerance: f64,
    /// How long after a pod starts its CPU samples may be skipped while it turns Ready.
    #[arg(long, default_value = "5m0s", value_parser = duration)]
    horizontal_pod_autoscaler_cpu_initialization_period: Duration,
    /// How long after a pod starts a not-Ready pod is taken as still starting.
    #[arg(long, default_value = "30s", value_parser = duration)]
    horizontal_pod_autoscaler_initial_readiness_delay: Duration,
}

/// `argv` with the flags of `--config`'s file (if any) put first, leaving out the ones
/// `argv` gives itself.
fn with_config_file(argv: Vec<std::ffi::OsString>) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let mut path = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            path = it.next().cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.into());
        }
    }
    let Some(path) = path else {
        return Ok(argv);
    };
    let path = PathBuf::from(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", path.display()))?;
    let Some(map) = doc.as_object() else {
        anyhow::bail!("--config {}: not a map of flags", path.display());
    };
    let given = |flag: &str| {
        argv.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    let mut out: Vec<std::ffi::OsString> = argv.iter().take(1).cloned().collect();
    for (key, value) in map {
        // camelCase → kebab-case, as the flags are spelled.
        let mut flag = String::from("--");
        for ch in key.chars() {
            if ch.is_ascii_uppercase() {
                flag.push('-');
                flag.push(ch.to_ascii_lowercase());
            } else {
                flag.push(ch);
            }
        }
        if flag == "--config" || given(&flag) {
            continue;
        }
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            other => anyhow::bail!(
                "--config {}: {key}: want a string, number, boolean or list, got {other}",
                path.display()
            ),
        };
        out.push(format!("{flag}={text}").into());
    }
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

/// A Go duration flag (`15s`, `5m0s`, `1h`).
fn duration(text: &str) -> Result<Duration, String> {
    berth_control_plane::apiserver::protobuf::parse_duration(text)
        .and_then(|ns| u64::try_from(ns).ok())
        .map(Duration::from_nanos)
        .ok_or_else(|| {
            format!("invalid duration {text:?} (want a Go duration such as 15s or 5m0s)")
        })
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Bootstrap tokens, with which new nodes join (`berth-agent --bootstrap-kubeconfig`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Backups of the embedded store: a consistent copy taken while the server serves,
    /// and a data dir restored from one (with etcd, use `etcdctl snapshot`).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Copies the embedded store of `--data-dir` into etcd (`--etcd-servers`, under
    /// `--etcd-prefix`), to run the cluster on etcd from then on. The server must be
    /// stopped; the embedded store is left as it is.
    Migrate {
        /// Into etcd (the only target).
        #[arg(long, required = true)]
        to_etcd: bool,
        /// Delete what etcd holds under the prefix first (without it, a prefix that
        /// holds keys is refused).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
enum SnapshotCommand {
    /// Copies the running server's store into FILE (through the admin kubeconfig,
    /// `--kubeconfig`, default `<data-dir>/admin.kubeconfig`; cluster-admin only).
    Save { file: PathBuf },
    /// Makes `--data-dir` a store restored from FILE, every object at its revision;
    /// refuses a data dir that already holds a store unless `--force`.
    Restore {
        file: PathBuf,
        /// Replace the store already in `--data-dir`.
        #[arg(long)]
        force: bool,
    },
    /// Verifies FILE and prints its revision, key count and size.
    Status { file: PathBuf },
}

/// `berth-server snapshot save|restore|status`.
fn snapshot(
    command: &SnapshotCommand,
    args: &Args,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use berth_control_plane::store::redb::snapshot;
    match command {
        SnapshotCommand::Save { file } => {
            let kubeconfig = args
                .kubeconfig
                .clone()
                .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
            let status = runtime.block_on(async {
                let client =
                    berth_control_plane::client::from_kubeconfig(&kubeconfig, "berth-server")
                        .await?;
                berth_control_plane::apiserver::snapshot::save(client, file).await
            })?;
            println!("saved {}\n{status}", file.display());
        }
        SnapshotCommand::Restore { file, force } => {
            let status = snapshot::restore(file, &args.data_dir, *force)?;
            println!(
                "restored {} into {}\n{status}",
                file.display(),
                args.data_dir.display()
            );
        }
        SnapshotCommand::Status { file } => println!("{}", snapshot::status(file)?),
    }
    Ok(())
}

/// `berth-server migrate --to-etcd`.
fn migrate(force: bool, args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    use berth_control_plane::store::{etcd, migrate};
    if args.etcd_servers.is_empty() {
        anyhow::bail!("migrate --to-etcd needs --etcd-servers");
    }
    let options = etcd::Options {
        endpoints: args.etcd_servers.clone(),
        ca_file: args.etcd_cafile.clone(),
        cert_file: args.etcd_certfile.clone(),
        key_file: args.etcd_keyfile.clone(),
        prefix: args.etcd_prefix.clone(),
        ..etcd::Options::default()
    };
    let migration = migrate::prepare(&args.data_dir, options)?;
    let summary = runtime.block_on(migration.run(force))?;
    println!("{summary}");
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Creates a bootstrap token (a `kube-system/bootstrap-token-<id>` Secret) through
    /// the admin kubeconfig (`--kubeconfig`, default `<data-dir>/admin.kubeconfig`)
    /// and prints it.
    Create {
        /// How long the token is valid (Go duration; 0 = forever).
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(
            long,
            default_value = "a node bootstrap token made by berth-server token create"
        )]
        description: String,
    },
}

/// Runs a client component (the scheduler, the controllers) once the kubeconfig exists
/// and the apiserver answers — while this process holds `lease` when `elect` — and
/// starts it again if it ever stops. Its requests carry `lease`, the component's name,
/// as their User-Agent product.
async fn component<F, Fut>(kubeconfig: PathBuf, lease: &'static str, elect: bool, work: F)
where
    F: Fn(kube::Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use berth_control_plane::{client, controllers::leader};
    let identity = leader::identity();
    loop {
        match client::from_kubeconfig(&kubeconfig, lease).await {
            Ok(c) if c.apiserver_version().await.is_ok() => {
                if elect {
                    leader::Election::new(lease, &identity)
                        .run(c.clone(), || work(c.clone()))
                        .await;
                } else {
                    work(c).await;
                }
                tracing::warn!(component = lease, "stopped; restarting");
            }
            Ok(_) => tracing::debug!(component = lease, "waiting for the apiserver"),
            Err(err) => tracing::debug!(%err, component = lease, "waiting for the apiserver"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// jemalloc, not glibc's malloc: after a burst of deletes glibc keeps the freed chunks
/// of its per-thread arenas resident, where jemalloc hands them back to the OS within a
/// second (decay set in .cargo/config.toml). Measured by `cargo xtask bench apiserver`:
/// RSS with 10 000 pods after 60 000 were created and deleted, 230–295 MB → 180–195 MB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LoggingFormat {
    Text,
    Json,
}

/// Logs to stderr as `format` says, at the level `-v` gives (or `RUST_LOG`).
fn init_logging(format: LoggingFormat, verbosity: u8) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "info,berth_server=debug,berth_control_plane=debug",
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(with_config_file(std::env::args_os().collect())?);
    init_logging(args.logging_format, args.verbosity);
    // Store reads and writes are short; a small blocking pool keeps thread (and malloc
    // arena) count — and so memory — down.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    if let Some(Command::Snapshot { command }) = &args.command {
        return snapshot(command, &args, &runtime);
    }
    if let Some(Command::Migrate { to_etcd: _, force }) = &args.command {
        return migrate(*force, &args, &runtime);
    }
    if let Some(Command::Token {
        command: TokenCommand::Create { ttl, description },
    }) = &args.command
    {
        let kubeconfig = args
            .kubeconfig
            .clone()
            .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
        let ttl = berth_control_plane::apiserver::protobuf::parse_duration(ttl)
            .filter(|ns| *ns >= 0)
            .ok_or_else(|| anyhow::anyhow!("--ttl: not a duration: {ttl}"))?;
        let ttl = (ttl > 0).then(|| std::time::Duration::from_nanos(ttl.unsigned_abs()));
        return runtime.block_on(async move {
            let client =
                berth_control_plane::client::from_kubeconfig(&kubeconfig, "berth-server").await?;
            let token =
                berth_control_plane::apiserver::bootstrap_token::create(client, ttl, description)
                    .await?;
            println!("{token}");
            Ok(())
        });
    }
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    runtime.block_on(async move {
        use berth_control_plane::{controllers, scheduler};
        if let Some(addr) = args.metrics_bind_address {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(|| async {
                    // The scheduler's families, then the HPA controller's: one `# EOF`.
                    let scheduler = berth_control_plane::scheduler::metrics::render();
                    let body = scheduler
                        .strip_suffix("# EOF\n")
                        .unwrap_or(&scheduler)
                        .to_owned()
                        + &berth_control_plane::controllers::podautoscaler::metrics::render();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            berth_control_plane::apiserver::metrics::OPENMETRICS,
                        )],
                        body,
                    )
                }),
            );
            tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, app).await {
                    tracing::warn!(%err, "metrics server stopped");
                }
            });
        }
        // Beside the apiserver, the scheduler acts as `system:kube-scheduler` (bound to
        // the bootstrap policy's role) through the kubeconfig the apiserver writes;
        // alone (`--apiserver=false`) it uses `--kubeconfig`.
        let scheduler_kubeconfig = if args.apiserver {
            args.data_dir
                .join(berth_control_plane::apiserver::SCHEDULER_KUBECONFIG)
        } else {
            kubeconfig.clone()
        };
        if args.scheduler {
            tokio::spawn(component(
                scheduler_kubeconfig,
                "kube-scheduler",
                args.leader_elect,
                |c| {
                    Box::pin(scheduler::run::run(
                        c,
                        scheduler::framework::Profile::default(),
                    ))
                },
            ));
        }
        if args.controllers.any() {
            let options = controllers::Options {
                node_monitor_grace_period: args.node_monitor_grace_period,
                terminated_pod_gc_threshold: args.terminated_pod_gc_threshold,
                autoscaling: controllers::podautoscaler::Options {
                    sync_period: args.horizontal_pod_autoscaler_sync_period,
                    settings: controllers::podautoscaler::reconcile::Settings {
                        tolerance: args.horizontal_pod_autoscaler_tolerance,
                        downscale_stabilization: args
                            .horizontal_pod_autoscaler_downscale_stabilization,
                        calculator: controllers::podautoscaler::replicas::Calculator {
                            cpu_initialization_period: args
                                .horizontal_pod_autoscaler_cpu_initialization_period,
                            initial_readiness_delay: args
                                .horizontal_pod_autoscaler_initial_readiness_delay,
                        },
                    },
                },
                root_ca: None,
                signing: None,
                lb_pool: args.lb_pool.clone(),
                node_ipam: match (args.allocate_node_cidrs, &args.cluster_cidr) {
                    (false, _) => None,
                    (true, cidr) => Some(
                        controllers::node_ipam::Config::new(
                            cidr.as_deref().unwrap_or_default(),
                            args.node_cidr_mask_size,
                            args.node_cidr_mask_size_ipv4,
                            args.node_cidr_mask_size_ipv6,
                        )
                        .map_err(|e| anyhow::anyhow!(e))?,
                    ),
                },
                controllers: args.controllers.clone(),
            };
            let (root_ca_file, ca_kubeconfig) = (args.root_ca_file.clone(), kubeconfig.clone());
            let pki = args.data_dir.join("pki");
            let beside = args.apiserver;
            let signing_files = match (
                args.cluster_signing_cert_file.clone(),
                args.cluster_signing_key_file.clone(),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) if beside => Some((pki.join("ca.crt"), pki.join("ca.key"))),
                (None, None) => None,
                _ => anyhow::bail!(
                    "--cluster-signing-cert-file and --cluster-signing-key-file go together"
                ),
            };
            let signing_duration = berth_control_plane::apiserver::protobuf::parse_duration(
                &args.cluster_signing_duration,
            )
            .filter(|ns| *ns > 0)
            .map(|ns| std::time::Duration::from_nanos(ns.unsigned_abs()))
            .ok_or_else(|| anyhow::anyhow!("--cluster-signing-duration: not a duration"))?;
            // Beside the apiserver, the controller manager is `system:kube-controller-manager`
            // (the kubeconfig the apiserver writes) and each controller its own account;
            // alone, `--kubeconfig` is both.
            let (manager_kubeconfig, accounts) = match (args.apiserver, args.use_service_account_credentials) {
                (true, true) => (
                    args.data_dir
                        .join(berth_control_plane::apiserver::CONTROLLER_MANAGER_KUBECONFIG),
                    Some(args.data_dir.join("controllers")),
                ),
                (false, true) => (kubeconfig.clone(), Some(args.data_dir.join("controllers"))),
                (_, false) => (kubeconfig.clone(), None),
            };
            tokio::spawn(component(
                manager_kubeconfig.clone(),
                controllers::LEASE,
                args.leader_elect,
                move |c| {
                    let (accounts, manager_kubeconfig) = (accounts.clone(), manager_kubeconfig.clone());
                    // Read when the controllers start: the apiserver writes the
                    // kubeconfig (and its CA) on its first start.
                    let ca = match &root_ca_file {
                        Some(f) => std::fs::read_to_string(f).map_err(anyhow::Error::from),
                        None => controllers::root_ca_publisher::ca_from_kubeconfig(&ca_kubeconfig),
                    };
                    let root_ca = ca
                        .inspect_err(|err| tracing::warn!(%err, "no root CA to publish"))
                        .ok();
                    let signing = signing_files.as_ref().and_then(|(cert, key)| {
                        let read = |p: &PathBuf| {
                            std::fs::read_to_string(p)
                                .inspect_err(|err| tracing::warn!(%err, path = %p.display(), "no signing CA"))
                                .ok()
                        };
                        Some(controllers::certificates::signer::Ca {
                            cert_pem: read(cert)?,
                            key_pem: read(key)?,
                            duration: signing_duration,
                        })
                    });
                    let options = controllers::Options {
                        root_ca,
                        signing,
                        ..options.clone()
                    };
                    Box::pin(async move {
                        let credentials = match accounts {
                            None => controllers::credentials::Credentials::Shared(c),
                            Some(token_dir) => {
                                match berth_control_plane::client::config_from_kubeconfig(&manager_kubeconfig, controllers::LEASE).await {
                                    Ok(config) => controllers::credentials::Credentials::ServiceAccounts {
                                        manager: c,
                                        config: Box::new(config),
                                        token_dir,
                                    },
                                    Err(err) => {
                                        tracing::error!(%err, "the controllers' kubeconfig");
                                        return;
                                    }
                                }
                            }
                        };
                        controllers::run(credentials, options).await
                    })
                },
            ));
        }
        if !args.apiserver {
            if !args.scheduler && !args.controllers.any() {
                anyhow::bail!(
                    "nothing to run: --apiserver, --scheduler and --controllers are all false"
                );
            }
            return std::future::pending().await;
        }
        berth_control_plane::apiserver::run(berth_control_plane::apiserver::Config {
            data_dir: args.data_dir,
            bind: SocketAddr::new(args.bind_address, args.secure_port),
            advertise: args.advertise_address,
            token_file: args.token_auth_file,
            kubeconfig: args.kubeconfig,
            authorization_mode: args.authorization_mode,
            metric_resolution: args.metric_resolution,
            max_requests_inflight: args.max_requests_inflight,
            max_mutating_requests_inflight: args.max_mutating_requests_inflight,
            encryption_provider_config: args.encryption_provider_config,
            audit: berth_control_plane::apiserver::audit::Options {
                policy_file: args.audit_policy_file,
                log_path: args.audit_log_path,
                max_size_mb: args.audit_log_maxsize,
                max_backups: args.audit_log_maxbackup,
                max_age_days: args.audit_log_maxage,
                format: args.audit_log_format,
            },
            etcd: (!args.etcd_servers.is_empty()).then_some(
                berth_control_plane::store::etcd::Options {
                    endpoints: args.etcd_servers,
                    ca_file: args.etcd_cafile,
                    cert_file: args.etcd_certfile,
                    key_file: args.etcd_keyfile,
                    prefix: args.etcd_prefix,
                    watch_progress: None,
                },
            ),
            pki: berth_control_plane::apiserver::pki::Sources {
                ca: args.client_ca_file.zip(args.client_ca_key_file),
                serving: args.tls_cert_file.zip(args.tls_private_key_file),
            },
            tls_sans: args.tls_san,
            service_account_signing_key: args.service_account_signing_key_file,
            service_account_keys: args.service_account_key_file,
            endpoint_reconciler: args.endpoint_reconciler_type,
        })
        .await
    })
}
