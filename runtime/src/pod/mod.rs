//! Pods for the agent: sandboxes (a `berth-pause` container holding the pod's network,
//! IPC and UTS namespaces) and containers joining them, each with an overlay rootfs of
//! its image layers plus an init layer (`/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname`) and a writable upper, run under a monitor that writes CRI logs and
//! records the exit. Entry point: [`Runtime`].
//!
//! The library never forks the caller (the agent is multi-threaded): containers are
//! created by `berth-runtime monitor` processes, exec runs `berth-runtime exec`.

mod overlay;
pub mod spec;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::container::{self, Status};
use crate::image::{Image, ImageStore};
use crate::logs::Rotation;
use crate::monitor::{self, MonitorArgs};
use crate::state::{Exit, Root};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Container(#[from] crate::container::Error),
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image {0:?} is not present (pull or import it first)")]
    ImageNotPresent(String),
    #[error("sandbox {0:?} does not exist or is not running")]
    NoSandbox(String),
    #[error("creating container {id}: {message}")]
    Create { id: String, message: String },
    #[error("exec in {id} timed out after {timeout:?}")]
    ExecTimeout { id: String, timeout: Duration },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where the runtime keeps things.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Container state (`state.json`, `exit.json`): tmpfs-backed is fine, e.g.
    /// `/run/berth/containers`.
    pub state_dir: PathBuf,
    /// Images and container layers, e.g. `/var/lib/berth`.
    pub data_dir: PathBuf,
    /// The `berth-runtime` binary (monitor and exec).
    pub runtime_binary: PathBuf,
    pub log_rotation: Rotation,
}

/// A bind mount into a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub read_only: bool,
}

/// cgroup settings of one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// The seccomp profile a container runs under (`securityContext.seccompProfile`, the
/// container's overriding the pod's; the kubelet's `--seccomp-default` picks
/// `RuntimeDefault` when neither names one). Privileged containers run unconfined, as
/// containerd does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SeccompProfile {
    #[default]
    Unconfined,
    /// moby's default profile (`crate::seccomp::DEFAULT_PROFILE`).
    RuntimeDefault,
    /// A profile file on the node (`<agent root-dir>/seccomp/<localhostProfile>`).
    Localhost { path: PathBuf },
}

/// The pod-level description of a container (what the agent derives from a Pod).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub privileged: bool,
    pub read_only_rootfs: bool,
    pub no_new_privileges: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub oom_score_adj: Option<i32>,
    pub tty: bool,
    /// Keep a stdin open for the container (`stdin: true`; `kubectl attach -i`).
    #[serde(default)]
    pub stdin: bool,
    pub log_path: PathBuf,
    #[serde(default)]
    pub seccomp: SeccompProfile,
    /// Filled from the sandbox.
    #[serde(default)]
    pub hostname: String,
    /// Namespaced sysctls written in the container's namespaces before it starts (the
    /// pod's `securityContext.sysctls`, given to the sandbox's pause container: its
    /// network, IPC and UTS namespaces are the pod's).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Join the PID namespace of this (running) container of the same sandbox instead of
    /// the pod's: an ephemeral container's `targetContainerName`.
    #[serde(default)]
    pub pid_namespace_of: Option<String>,
    /// `procMount: Unmasked`: no masked or read-only /proc paths (only in a pod with its
    /// own user namespace).
    #[serde(default)]
    pub unmasked_proc: bool,
}

/// Lets anyone search `dir` and each directory above it (adds `o+x` where missing, as
/// containerd keeps its root 0711): a pod's user-namespaced root is nobody to the host's
/// directories, and its init must reach its rootfs by path to mount on it.
fn traversable(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    for d in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(d) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.is_dir() && mode & 0o001 == 0 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode((mode | 0o001) & 0o7777))
                .map_err(io(format!("make {} searchable", d.display())))?;
        }
    }
    Ok(())
}

/// A range of host uids and gids given to a pod's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub host_id: u32,
    pub size: u32,
}

/// The pod-level description of a sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub id: String,
    pub hostname: String,
    /// The pod's cgroup, e.g. `kubepods/burstable/pod<uid>`.
    pub cgroup_parent: String,
    pub share_process_namespace: bool,
    /// The host's network (and UTS) namespace instead of the pod's own (`hostNetwork`).
    #[serde(default)]
    pub host_network: bool,
    /// The host's PID namespace (`hostPID`).
    #[serde(default)]
    pub host_pid: bool,
    /// The host's IPC namespace and /dev/shm (`hostIPC`).
    #[serde(default)]
    pub host_ipc: bool,
    /// The pod's own user namespace (`hostUsers: false`): container ids 0.. map to host
    /// ids `host_id`.. (`size` of them).
    #[serde(default)]
    pub user_namespace: Option<IdRange>,
    pub pause_image: String,
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub dns_options: Vec<String>,
    /// Extra /etc/hosts entries (hostAliases): IP and names.
    pub host_aliases: Vec<(String, Vec<String>)>,
    pub log_dir: PathBuf,
    /// The pod's sysctls (dotted names), set in its namespaces by the pause container.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// A running sandbox, as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub config: SandboxConfig,
    /// The pause container's id (`<sandbox id>-pause`... the sandbox id itself).
    pub pause_pid: i32,
    /// A bind mount of the sandbox's network namespace, for CNI.
    pub netns: PathBuf,
    /// The pod IP, once networking is set up (goes into /etc/hosts).
    #[serde(default)]
    pub pod_ip: Option<String>,
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited(Exit),
    /// Stopped with no exit record (its monitor died).
    Unknown,
}

#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub id: String,
    pub state: ContainerState,
    pub pid: i32,
    pub created: String,
    pub started_at_ns: Option<i128>,
    pub image: String,
    pub image_id: String,
    pub log_path: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct ContainerRecord {
    config: ContainerConfig,
    image_id: String,
}

#[derive(Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    root: Root,
    images: ImageStore,
}

impl Runtime {
    pub fn open(cfg: RuntimeConfig) -> Result<Self, Error> {
        let images = ImageStore::open(&cfg.data_dir)?;
        for dir in [
            cfg.data_dir.join("containers"),
            cfg.data_dir.join("sandboxes"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(io("create state dir"))?;
        Ok(Self {
            root: Root::new(&cfg.state_dir),
            images,
            cfg,
        })
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("containers").join(id)
    }

    fn sandbox_file(&self, id: &str) -> PathBuf {
        self.cfg
            .data_dir
            .join("sandboxes")
            .join(format!("{id}.json"))
    }

    /// Starts the pause container of a new sandbox and pins its network namespace.
    pub fn run_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox, Error> {
        let pause = ContainerConfig {
            id: cfg.id.clone(),
            sandbox_id: cfg.id.clone(),
            name: "POD".into(),
            image: cfg.pause_image.clone(),
            read_only_rootfs: true,
            no_new_privileges: true,
            drop_capabilities: vec!["ALL".into()],
            log_path: cfg.log_dir.join("pause.log"),
            hostname: cfg.hostname.clone(),
            sysctls: cfg.sysctls.clone(),
            ..Default::default()
        };
        let cgroup = format!("{}/pause", cfg.cgroup_parent.trim_end_matches('/'));
        self.create_inner(&pause, None, None, &cgroup, cfg, None)?;
        self.start_container(&cfg.id)?;
        let state = self.root.load(&cfg.id)?;
        let netns = self.cfg.state_dir.join("netns").join(&cfg.id);
        let pin = (|| -> Result<(), Error> {
            std::fs::create_dir_all(netns.parent().unwrap_or(Path::new("/")))
                .map_err(io("create netns dir"))?;
            std::fs::File::create(&netns).map_err(io(format!("create {}", netns.display())))?;
            nix::mount::mount(
                Some(Path::new(&format!("/proc/{}/ns/net", state.pid))),
                &netns,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::Io {
                what: format!("pin netns at {}", netns.display()),
                source: e.into(),
            })
        })();
        if let Err(err) = pin {
            let _ = self.remove_container(&cfg.id);
            let _ = std::fs::remove_file(&netns);
            return Err(err);
        }
        let sandbox = Sandbox {
            config: cfg.clone(),
            pause_pid: state.pid,
            netns,
            pod_ip: None,
        };
        self.save_sandbox(&sandbox)?;
        Ok(sandbox)
    }

    fn save_sandbox(&self, sandbox: &Sandbox) -> Result<(), Error> {
        let bytes = serde_json::to_vec(sandbox).map_err(|e| io("encode sandbox")(e.into()))?;
        // Not synced to disk: a sandbox record describes live processes and a netns pin,
        // which a power loss ends; after one, `sandboxes()` lists records by name and
        // `remove_sandbox` tolerates a torn one.
        crate::state::write_replace(&self.sandbox_file(&sandbox.config.id), &bytes)?;
        Ok(())
    }

    pub fn sandbox(&self, id: &str) -> Result<Sandbox, Error> {
        let bytes =
            std::fs::read(self.sandbox_file(id)).map_err(|_| Error::NoSandbox(id.into()))?;
        serde_json::from_slice(&bytes).map_err(|e| io("decode sandbox")(e.into()))
    }

    /// Records the pod IP (written into the /etc/hosts of containers created later).
    pub fn set_pod_ip(&self, id: &str, ip: &str) -> Result<(), Error> {
        let mut sandbox = self.sandbox(id)?;
        sandbox.pod_ip = Some(ip.to_string());
        self.save_sandbox(&sandbox)
    }

    /// Ids of every sandbox on disk.
    pub fn sandboxes(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.cfg.data_dir.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        ids
    }

    /// Stops and removes the sandbox's pause container and its netns pin. Containers of
    /// the sandbox must have been removed first.
    pub fn remove_sandbox(&self, id: &str) -> Result<(), Error> {
        let sandbox = self.sandbox(id).ok();
        if self.root.load(id).is_ok() {
            self.stop_container(id, Duration::from_secs(2))?;
            self.remove_container(id)?;
        }
        if let Some(s) = sandbox {
            match nix::mount::umount2(&s.netns, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    return Err(Error::Io {
                        what: format!("unmount {}", s.netns.display()),
                        source: e.into(),
                    });
                }
            }
            let _ = std::fs::remove_file(&s.netns);
        }
        match std::fs::remove_file(self.sandbox_file(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove sandbox record")(e)),
        }
    }

    /// Creates a container in a sandbox; it waits for `start_container`.
    pub fn create_container(&self, cfg: &ContainerConfig) -> Result<(), Error> {
        let sandbox = self.sandbox(&cfg.sandbox_id)?;
        let pause = self
            .root
            .load(&cfg.sandbox_id)
            .map_err(|_| Error::NoSandbox(cfg.sandbox_id.clone()))?;
        if !pause.alive() {
            return Err(Error::NoSandbox(cfg.sandbox_id.clone()));
        }
        let mut cfg = cfg.clone();
        cfg.hostname = sandbox.config.hostname.clone();
        let target_pid = match &cfg.pid_namespace_of {
            Some(target) => {
                let state = self.root.load(target).ok().filter(|s| s.alive());
                Some(state.map(|s| s.pid).ok_or_else(|| Error::Create {
                    id: cfg.id.clone(),
                    message: format!("the target container {target} is not running"),
                })?)
            }
            None => None,
        };
        let cgroup = format!(
            "{}/{}",
            sandbox.config.cgroup_parent.trim_end_matches('/'),
            cfg.id
        );
        self.create_inner(
            &cfg,
            Some(pause.pid),
            target_pid,
            &cgroup,
            &sandbox.config,
            sandbox.pod_ip.as_deref(),
        )
    }

    fn create_inner(
        &self,
        cfg: &ContainerConfig,
        sandbox_pid: Option<i32>,
        target_pid: Option<i32>,
        cgroup: &str,
        sandbox: &SandboxConfig,
        pod_ip: Option<&str>,
    ) -> Result<(), Error> {
        crate::state::validate_id(&cfg.id)?;
        let image: Image = self
            .images
            .find(&cfg.image)
            .map_err(|_| Error::ImageNotPresent(cfg.image.clone()))?;
        let mut layers = Vec::new();
        for digest in image.layers.iter().rev() {
            layers.push(self.images.layer_dir(digest)?);
        }
        let dir = self.container_dir(&cfg.id);
        if dir.exists() || self.root.load(&cfg.id).is_ok() {
            return Err(Error::Create {
                id: cfg.id.clone(),
                message: "a container with this id exists".into(),
            });
        }
        let result = (|| -> Result<(), Error> {
            if sandbox.user_namespace.is_some() {
                traversable(&dir)?;
            }
            let init = overlay::write_init_layer(&dir, sandbox, pod_ip)?;
            let mut lower = vec![init];
            lower.extend(layers.iter().cloned());
            // In the pod's user namespace (its containers, not the pause: that one's
            // rootfs is read-only and world-readable) the layers and volumes are seen
            // through idmapped mounts.
            let userns = match (&sandbox.user_namespace, sandbox_pid) {
                (Some(range), Some(pid)) => {
                    let path = PathBuf::from(format!("/proc/{pid}/ns/user"));
                    let fd = crate::sys::open_raw(&path, libc::O_RDONLY)
                        .map_err(io(format!("open {}", path.display())))?;
                    Some((fd, range.host_id))
                }
                _ => None,
            };
            let mut cfg = cfg.clone();
            let rootfs = match &userns {
                Some((fd, root)) => {
                    use std::os::fd::AsRawFd;
                    let lower = overlay::idmapped(&dir, "l", &lower, fd.as_raw_fd())?;
                    let rootfs = overlay::mount(&dir, &lower, Some(*root))?;
                    // The overlay holds its own references to its layers.
                    overlay::unmount_idmapped(&dir, "l");
                    let sources: Vec<PathBuf> =
                        cfg.mounts.iter().map(|m| m.host_path.clone()).collect();
                    let mapped = overlay::idmapped(&dir, "v", &sources, fd.as_raw_fd())?;
                    for (m, p) in cfg.mounts.iter_mut().zip(mapped) {
                        m.host_path = p;
                    }
                    rootfs
                }
                // The pause: its layers as they are, but its root directory the user
                // namespace's root's, which makes the mount points it lacks (/proc…).
                None => overlay::mount(&dir, &lower, sandbox.user_namespace.map(|r| r.host_id))?,
            };
            let cfg = &cfg;
            let bundle = dir.join("bundle");
            std::fs::create_dir_all(&bundle).map_err(io("create bundle"))?;
            let ns = spec::Namespaces {
                sandbox_pid,
                target_pid,
                sandbox,
            };
            let spec = spec::build(cfg, &image, &layers, &rootfs, ns, cgroup)?;
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec_pretty(&spec).map_err(|e| io("encode spec")(e.into()))?,
            )
            .map_err(io("write config.json"))?;
            let record = ContainerRecord {
                config: cfg.clone(),
                image_id: image.digest.clone(),
            };
            // Not synced, like the sandbox record; readers take a torn one as absent.
            crate::state::write_replace(
                &dir.join("container.json"),
                &serde_json::to_vec(&record).map_err(|e| io("encode record")(e.into()))?,
            )?;
            self.spawn_monitor(cfg, &bundle, &rootfs)
        })();
        if let Err(err) = result {
            if overlay::unmount(&dir) {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(err);
        }
        Ok(())
    }

    fn spawn_monitor(
        &self,
        cfg: &ContainerConfig,
        bundle: &Path,
        rootfs: &Path,
    ) -> Result<(), Error> {
        let args = MonitorArgs {
            root: self.cfg.state_dir.clone(),
            id: cfg.id.clone(),
            bundle: bundle.to_path_buf(),
            log_path: cfg.log_path.clone(),
            rotation: self.cfg.log_rotation,
            host_mounts: vec![rootfs.to_path_buf()],
            stdin_fifo: cfg.stdin.then(|| self.stdin_path(&cfg.id)),
        };
        let mut command = Command::new(&self.cfg.runtime_binary);
        if let Some(mounts) = crate::cgroups::v1_mounts_env() {
            command.env(crate::cgroups::V1_MOUNTS_ENV, mounts);
        }
        let mut child = command
            .args(monitor::command_args(&args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io(format!("start {}", self.cfg.runtime_binary.display())))?;
        let Some(stdout) = child.stdout.take() else {
            return Err(Error::Create {
                id: cfg.id.clone(),
                message: "monitor has no stdout".into(),
            });
        };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let line = line.trim();
        if line.starts_with("created ") {
            // The monitor lives on; reap it from a thread so it never lingers as a zombie.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(());
        }
        let _ = child.wait();
        Err(Error::Create {
            id: cfg.id.clone(),
            message: line
                .strip_prefix("error: ")
                .unwrap_or(if line.is_empty() {
                    "the monitor exited"
                } else {
                    line
                })
                .to_string(),
        })
    }

    pub fn start_container(&self, id: &str) -> Result<(), Error> {
        container::start(&self.root, id)?;
        let now = jiff::Timestamp::now().as_nanosecond().to_string();
        crate::state::write_replace(&self.root.container_dir(id).join("started"), now.as_bytes())?;
        Ok(())
    }

    /// The writable layer of container `id`'s rootfs, when it has one.
    pub fn upper_dir(&self, id: &str) -> Option<PathBuf> {
        Some(self.container_dir(id).join("upper")).filter(|d| d.is_dir())
    }

    /// The image (manifest digest) container `id` was made from, without waiting on it
    /// (image garbage collection keeps these).
    pub fn image_id(&self, id: &str) -> Option<String> {
        let record: ContainerRecord = serde_json::from_slice(
            &std::fs::read(self.container_dir(id).join("container.json")).ok()?,
        )
        .ok()?;
        Some(record.image_id)
    }

    pub fn status(&self, id: &str) -> Result<ContainerStatus, Error> {
        let state = self.root.load(id)?;
        let status = container::status(&self.root, &state);
        let state_kind = match status {
            Status::Created | Status::Creating => ContainerState::Created,
            Status::Running => ContainerState::Running,
            Status::Stopped => match self.wait_exit(id, Duration::from_millis(500)) {
                Some(exit) => ContainerState::Exited(exit),
                None => ContainerState::Unknown,
            },
        };
        let record: Option<ContainerRecord> =
            std::fs::read(self.container_dir(id).join("container.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let started_at_ns = std::fs::read_to_string(self.root.container_dir(id).join("started"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Ok(ContainerStatus {
            id: id.to_string(),
            state: state_kind,
            pid: state.pid,
            created: state.created,
            started_at_ns,
            image: record
                .as_ref()
                .map(|r| r.config.image.clone())
                .unwrap_or_default(),
            image_id: record
                .as_ref()
                .map(|r| r.image_id.clone())
                .unwrap_or_default(),
            log_path: record.map(|r| r.config.log_path).unwrap_or_default(),
        })
    }

    /// The exit record, waiting up to `timeout` for the monitor to write it.
    fn wait_exit(&self, id: &str, timeout: Duration) -> Option<Exit> {
        let start = Instant::now();
        loop {
            if let Some(exit) = self.root.load_exit(id) {
                return Some(exit);
            }
            let monitor_alive = self
                .root
                .load(id)
                .map(|s| s.monitor_pid > 0 && crate::state::pid_start_time(s.monitor_pid).is_some())
                .unwrap_or(false);
            if !monitor_alive || start.elapsed() >= timeout {
                return self.root.load_exit(id);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then SIGKILL to every process of the container after `grace`.
    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let state = self.root.load(id)?;
        if !state.alive() {
            return Ok(());
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(state.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + grace;
        while state.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if state.alive() {
            crate::cgroups::Cgroup::load(&state.cgroup).kill_all();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(state.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let until = Instant::now() + Duration::from_secs(5);
            while state.alive() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.wait_exit(id, Duration::from_secs(2));
        Ok(())
    }

    /// Removes a container (killing it if it still runs) and its layer directory.
    pub fn remove_container(&self, id: &str) -> Result<(), Error> {
        if self.root.load(id).is_ok() {
            container::delete(&self.root, id, true)?;
        }
        let dir = self.container_dir(id);
        if !overlay::unmount(&dir) {
            return Err(Error::Create {
                id: id.into(),
                message: format!(
                    "{} still has mounts; not removing it",
                    dir.join("idmap").display()
                ),
            });
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("remove {}", dir.display()))(e)),
        }
    }

    /// The FIFO feeding a container's stdin (when it was created with `stdin`).
    pub fn stdin_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("stdin")
    }

    /// Every container id with state on disk (sandboxes included).
    pub fn containers(&self) -> Vec<String> {
        self.root.ids()
    }

    /// The container ids (sandboxes included) starting with `prefix`.
    pub fn containers_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.root.ids_with_prefix(prefix)
    }

    /// The command that runs `cmd` in container `id` (the agent gives it stdio, a pty
    /// for `-t`, and waits).
    /// With `tty`, `resize_fifo` (a FIFO the caller made) carries `<columns> <rows>`
    /// lines that resize the terminal.
    pub fn exec_command(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
        resize_fifo: Option<&Path>,
    ) -> Command {
        let mut c = Command::new(&self.cfg.runtime_binary);
        c.arg("--root").arg(&self.cfg.state_dir).arg("exec");
        if tty {
            c.arg("--tty");
            if let Some(f) = resize_fifo {
                c.arg("--resize-fifo").arg(f);
            }
        }
        c.arg(id).arg("--").args(cmd);
        c
    }

    /// Runs `cmd` in the container and collects its exit code and output (probes).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), Error> {
        let mut child = self
            .exec_command(id, cmd, false, None)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("start exec"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(io("wait exec"))? {
                let out = child.wait_with_output().map_err(io("exec output"))?;
                return Ok((status.code().unwrap_or(255), out.stdout, out.stderr));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::ExecTimeout {
                    id: id.to_string(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
