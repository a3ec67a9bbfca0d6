//! `create`: validate the spec, reserve the id, make the cgroup, clone the init with its
//! new namespaces and wait until it reports ready (parked at the start gate) or failed.
//! On failure nothing is left behind: the init is killed, the cgroup and the state
//! directory removed.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{Error, fifo_path, io_err};
use crate::cgroups::{self, Cgroup};
use crate::init::{self, msg};
use crate::state::{Root, State, pid_start_time};
use crate::sys;

/// How `start` will release the init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// A FIFO in the state directory, opened by a later `start` (the OCI two-step flow).
    Fifo,
    /// A pipe whose write end the caller keeps (`run`, monitors).
    Pipe,
}

/// Where the container's stdio goes.
#[derive(Debug, Clone, Copy)]
pub enum Stdio {
    Inherit,
    Fds([RawFd; 3]),
    /// A terminal slave: controlling terminal and stdin/stdout/stderr.
    Tty(RawFd),
}

#[derive(Debug)]
pub struct CreateOptions<'a> {
    pub root: &'a Root,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub spec: &'a Spec,
    pub gate: Gate,
    pub stdio: Stdio,
    /// Host mounts made for this container (its overlay rootfs), undone on delete.
    pub host_mounts: Vec<PathBuf>,
    pub monitored: bool,
}

#[derive(Debug)]
pub struct Created {
    pub state: State,
    /// Write one byte here to start the container (`Gate::Pipe`).
    pub gate: Option<OwnedFd>,
}

/// Loads and checks `config.json` from a bundle.
pub fn load_spec(bundle: &Path) -> Result<Spec, Error> {
    let path = bundle.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Spec(format!("{} does not exist", path.display())));
        }
        Err(e) => return Err(Error::Spec(format!("{}: {e}", path.display()))),
    };
    // From a slice, not a reader: a spec carrying a seccomp profile is ~30 kB, which
    // serde_json parses several times faster from memory.
    serde_json::from_slice(&bytes).map_err(|e| Error::Spec(format!("{}: {e}", path.display())))
}

/// The rootfs directory named by the spec, relative to the bundle.
pub fn rootfs_of(spec: &Spec, bundle: &Path) -> Result<PathBuf, Error> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::Spec("root.path is missing".into()))?;
    let path = bundle.join(root.path());
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(Error::Spec(format!(
            "rootfs {} is not a directory",
            path.display()
        ))),
        Err(_) => Err(Error::Spec(format!(
            "rootfs {} does not exist",
            path.display()
        ))),
    }
}

struct Namespaces {
    clone: CloneFlags,
    join: Vec<(CloneFlags, OwnedFd)>,
    join_pid: bool,
    new_cgroup: bool,
    new_mount: bool,
    new_uts: bool,
    user: Option<init::UserNs>,
    /// New namespaces the init makes with `unshare` after entering its user namespace
    /// (so they belong to it), instead of at `clone`.
    unshare: CloneFlags,
}

fn namespaces(spec: &Spec) -> Result<Namespaces, Error> {
    let mut ns = Namespaces {
        clone: CloneFlags::empty(),
        join: Vec::new(),
        join_pid: false,
        new_cgroup: false,
        new_mount: false,
        new_uts: false,
        user: None,
        unshare: CloneFlags::empty(),
    };
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for n in list {
        let flag = match n.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            LinuxNamespaceType::User => {
                ns.user = Some(match n.path() {
                    Some(path) => init::UserNs::Join(
                        sys::open_raw(path, libc::O_RDONLY)
                            .map_err(io_err(format!("namespace path {}", path.display())))?,
                    ),
                    None => init::UserNs::New(id_maps(spec)?),
                });
                continue;
            }
            other => {
                return Err(Error::Spec(format!("namespace {other} is not supported")));
            }
        };
        match n.path() {
            Some(path) => {
                if flag == CloneFlags::CLONE_NEWNS {
                    return Err(Error::Spec(
                        "joining an existing mount namespace is not supported".into(),
                    ));
                }
                let fd = sys::open_raw(path, libc::O_RDONLY)
                    .map_err(io_err(format!("namespace path {}", path.display())))?;
                if flag == CloneFlags::CLONE_NEWPID {
                    ns.join_pid = true;
                }
                ns.join.push((flag, fd));
            }
            None => {
                if flag == CloneFlags::CLONE_NEWCGROUP {
                    ns.new_cgroup = true;
                } else {
                    ns.clone |= flag;
                }
                ns.new_mount |= flag == CloneFlags::CLONE_NEWNS;
                ns.new_uts |= flag == CloneFlags::CLONE_NEWUTS;
            }
        }
    }
    // Join the network namespace before creating the others, so a new user of it
    // (sysfs) sees the right one; the order of setns for the rest does not matter.
    ns.join.sort_by_key(|(f, _)| *f != CloneFlags::CLONE_NEWNET);
    if ns.user.is_some() {
        // Namespaces a user namespace should own are made inside it, after it is
        // entered: the init clones without them and unshares them there; a new PID
        // namespace then needs one more fork, as a joined one does.
        ns.unshare = ns.clone;
        ns.clone = CloneFlags::empty();
        ns.join_pid |= ns.unshare.contains(CloneFlags::CLONE_NEWPID);
    }
    Ok(ns)
}

/// The uid_map and gid_map lines of a new user namespace (`linux.uidMappings` and
/// `gidMappings`), both required.
fn id_maps(spec: &Spec) -> Result<init::IdMaps, Error> {
    let linux = spec.linux().as_ref();
    let lines = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>, what: &str| {
        let maps = maps
            .filter(|m| !m.is_empty())
            .ok_or_else(|| Error::Spec(format!("a new user namespace needs linux.{what}")))?;
        Ok::<String, Error>(
            maps.iter()
                .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
                .collect(),
        )
    };
    Ok(init::IdMaps {
        uid: lines(linux.and_then(|l| l.uid_mappings().as_ref()), "uidMappings")?,
        gid: lines(linux.and_then(|l| l.gid_mappings().as_ref()), "gidMappings")?,
    })
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Undoes a partial create.
struct Cleanup<'a> {
    root: &'a Root,
    id: &'a str,
    cgroup: Option<Cgroup>,
    pid: Option<i32>,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
            let _ = cg.remove(Duration::from_secs(5));
        }
        let _ = self.root.remove(self.id);
    }
}

/// Creates the container; on return it is parked at its start gate.
///
/// The calling process must be single-threaded (the init is a `fork` of it).
pub fn create(opts: CreateOptions<'_>) -> Result<Created, Error> {
    let spec = opts.spec;
    if spec.process().is_none() {
        return Err(Error::Spec("process is missing".into()));
    }
    let rootfs = rootfs_of(spec, opts.bundle)?;
    let ns = namespaces(spec)?;
    let linux = spec.linux().as_ref();
    let cgroup_path = cgroups::path_for(linux.and_then(|l| l.cgroups_path().as_deref()), opts.id)?;
    let dir = opts.root.reserve(opts.id)?;
    let mut cleanup = Cleanup {
        root: opts.root,
        id: opts.id,
        cgroup: None,
        pid: None,
        armed: true,
    };
    // Compiled here, so a profile that cannot be compiled fails before any process
    // exists; kept with the state for `exec` (the bundle may be gone by then).
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => {
            let filters =
                crate::seccomp::compile(profile).map_err(|e| Error::Spec(e.to_string()))?;
            let json = serde_json::to_vec(profile).map_err(|e| Error::Spec(e.to_string()))?;
            crate::state::write_replace(&dir.join(crate::seccomp::STATE_FILE), &json)?;
            filters
        }
        None => Vec::new(),
    };

    let cgroup = Cgroup::create(&cgroup_path)?;
    cleanup.cgroup = Some(Cgroup::load(&cgroup_path));
    if let Some(res) = linux.and_then(|l| l.resources().as_ref()) {
        cgroup.apply(res)?;
    }
    // Before the init exists: nothing of the container runs unrestricted.
    if let Some(rules) = crate::devices::rules(spec).map_err(Error::Spec)? {
        cgroup.apply_devices(&rules)?;
    }

    let (gate_read, gate_write) = match opts.gate {
        Gate::Fifo => {
            let path = fifo_path(opts.root, opts.id);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
                |e| Error::Io {
                    what: format!("mkfifo {}", path.display()),
                    source: e.into(),
                },
            )?;
            // O_RDWR: the init's reads block until `start` writes, and opening never blocks.
            let fd = sys::open_raw(&path, libc::O_RDWR).map_err(io_err("open exec fifo"))?;
            (fd, None)
        }
        Gate::Pipe => {
            let (r, w) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io {
                    what: "pipe".into(),
                    source: e.into(),
                })?;
            (r, Some(w))
        }
    };
    let (parent_sock, child_sock) = init::sync_pair().map_err(io_err("socketpair"))?;

    let (stdio, tty) = match opts.stdio {
        Stdio::Inherit => (None, None),
        Stdio::Fds(fds) => (Some(fds), None),
        Stdio::Tty(fd) => (None, Some(fd)),
    };
    let ctx = init::Context {
        spec,
        rootfs: &rootfs,
        cgroup: Some(&cgroup),
        join: ns.join,
        join_pid: ns.join_pid,
        user: ns.user.as_ref(),
        unshare: ns.unshare,
        new_cgroup_ns: ns.new_cgroup,
        new_mount_ns: ns.new_mount,
        new_uts_ns: ns.new_uts,
        sync: child_sock.as_raw_fd(),
        gate: gate_read.as_raw_fd(),
        stdio,
        tty,
        seccomp: &seccomp,
    };
    let child = sys::clone_fork(ns.clone.bits()).map_err(io_err("clone"))?;
    if child == 0 {
        drop(parent_sock);
        init::child(ctx);
    }
    drop(ctx);
    drop(child_sock);
    drop(gate_read);
    let mut pid = child;
    cleanup.pid = Some(pid);
    let annotations: HashMap<String, String> = spec.annotations().clone().unwrap_or_default();
    let created_at = now_rfc3339();
    let make_state = |pid: i32| -> Result<State, Error> {
        Ok(State {
            id: opts.id.to_string(),
            pid,
            pid_start: pid_start_time(pid)
                .ok_or_else(|| Error::Init("the container's init exited during setup".into()))?,
            bundle: opts.bundle.to_path_buf(),
            rootfs: rootfs.clone(),
            created: created_at.clone(),
            cgroup: cgroup_path.clone(),
            annotations: annotations.clone(),
            host_mounts: opts.host_mounts.clone(),
            monitored: opts.monitored,
            monitor_pid: 0,
        })
    };
    // Persisting the state (two fsyncs) overlaps with the init's setup; a failed setup
    // removes the directory again.
    let mut state = None;
    if !ns.join_pid {
        // An init that already failed has said why: that beats "exited during setup".
        let saved =
            make_state(pid).and_then(|s| opts.root.save(&s).map(|()| s).map_err(Error::from));
        match saved {
            Ok(s) => state = Some(s),
            Err(err) => {
                if let Ok(Some((msg::ERROR, payload))) = init::read_message(&parent_sock) {
                    return Err(Error::Init(String::from_utf8_lossy(&payload).into_owned()));
                }
                return Err(err);
            }
        }
    }

    loop {
        match init::read_message(&parent_sock).map_err(io_err("read from container init"))? {
            Some((msg::READY, _)) => break,
            Some((msg::USERNS, _)) => {
                // The init is in its new user namespace: map it, then let it go on.
                let Some(init::UserNs::New(maps)) = &ns.user else {
                    return Err(Error::Init("unexpected user namespace message".into()));
                };
                for (file, text) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
                    std::fs::write(format!("/proc/{pid}/{file}"), text)
                        .map_err(io_err(format!("write {file} of the container's init")))?;
                }
                nix::sys::socket::send(
                    parent_sock.as_raw_fd(),
                    &[msg::MAPPED],
                    nix::sys::socket::MsgFlags::empty(),
                )
                .map_err(|e| Error::Io {
                    what: "tell the init its user namespace is mapped".into(),
                    source: e.into(),
                })?;
            }
            Some((msg::PID, payload)) if payload.len() == 4 => {
                // The first child forked the real init into the joined PID namespace.
                let _ = waitpid(Pid::from_raw(pid), None);
                pid = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                cleanup.pid = Some(pid);
            }
            Some((msg::ERROR, payload)) => {
                return Err(Error::Init(String::from_utf8_lossy(&payload).into_owned()));
            }
            Some((tag, _)) => {
                return Err(Error::Init(format!(
                    "unexpected message {tag:#x} from init"
                )));
            }
            None => {
                return Err(Error::Init(
                    "the container's init exited during setup".into(),
                ));
            }
        }
    }

    let state = match state {
        Some(s) => s,
        None => {
            let s = make_state(pid)?;
            opts.root.save(&s)?;
            s
        }
    };
    let _ = dir;
    cleanup.armed = false;
    Ok(Created {
        state,
        gate: gate_write,
    })
}
