//! Control groups through `cgroups-rs`: one cgroup per container (or per pod, as the
//! agent's `kubepods/<qos>/pod<uid>/<container>` tree), CPU shares/quota, memory and pids
//! limits, OOM-kill detection, teardown.
//!
//! Works on both layouts this project meets: cgroup v1 controllers (including the hybrid
//! layout where a cgroup2 mount at `/sys/fs/cgroup/unified` holds only `hugetlb`, which
//! crun 1.8 refuses) and pure cgroup v2. On the hybrid layout the v2 mount is ignored:
//! every resource controller lives on v1, as runc's cgroupfs driver does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::Controller;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::devices::DevicesController;
use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup as FsCgroup, MaxValue};
use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup {path}: {op}: {source}")]
    Cgroups {
        path: String,
        op: &'static str,
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
    #[error("cgroup path {0:?} must not contain '..'")]
    BadPath(String),
    #[error("cgroup {path}: device rules: {reason}")]
    Devices { path: String, reason: String },
    #[error("cgroup {path}: processes still present after {waited:?}")]
    Busy { path: String, waited: Duration },
}

/// A container's (or pod's) cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: String,
    inner: FsCgroup,
}

/// Where containers without a `cgroupsPath` get their cgroup: `berth/<id>`.
const DEFAULT_PARENT: &str = "berth";

/// The cgroup path for a container: the spec's `cgroupsPath` (relative to each
/// hierarchy's root) or `berth/<id>`.
pub fn path_for(spec_path: Option<&Path>, id: &str) -> Result<String, Error> {
    let path = match spec_path {
        Some(p) => p.to_string_lossy().trim_start_matches('/').to_string(),
        None => format!("{DEFAULT_PARENT}/{id}"),
    };
    if path.split('/').any(|c| c == "..") {
        return Err(Error::BadPath(path));
    }
    Ok(path)
}

/// True when `/sys/fs/cgroup` is a pure cgroup2 mount.
pub fn is_v2() -> bool {
    hierarchies::is_cgroup2_unified_mode()
}

/// The variable through which the agent hands its v1 cgroup mount table to the
/// monitors it starts (`<mount point>\t<root>\t<superblock options>` lines), so they need
/// not read `/proc/self/mountinfo` themselves.
pub const V1_MOUNTS_ENV: &str = "BERTH_CGROUP_V1_MOUNTS";

/// The host's hierarchy. On a v1 or hybrid host cgroups-rs' `hierarchies::auto()` parses
/// `/proc/self/mountinfo` on every call, and the kernel's cost of writing that file grows
/// with every pod's mounts (a tenth of the CPU of a 100-pod burst went there); the
/// controllers' mount points do not move while berth runs, so they are read once per
/// process — or not at all in a monitor given [`V1_MOUNTS_ENV`].
fn hierarchy() -> Box<dyn cgroups_rs::fs::Hierarchy> {
    if is_v2() {
        Box::new(hierarchies::V2::new())
    } else {
        Box::new(HostV1(v1_mounts().clone()))
    }
}

/// The v1 cgroup mounts of this process's mount namespace, read once.
fn v1_mounts() -> &'static std::sync::Arc<Vec<hierarchies::Mountinfo>> {
    static MOUNTS: std::sync::OnceLock<std::sync::Arc<Vec<hierarchies::Mountinfo>>> =
        std::sync::OnceLock::new();
    MOUNTS.get_or_init(|| {
        let given = std::env::var(V1_MOUNTS_ENV)
            .ok()
            .and_then(|v| parse_v1_mounts(&v));
        std::sync::Arc::new(given.unwrap_or_else(|| {
            hierarchies::mountinfo_self()
                .into_iter()
                .filter(|m| m.fs_type.0 == "cgroup")
                .collect()
        }))
    })
}

/// The value of [`V1_MOUNTS_ENV`] for a child of this process; None on a v2 host.
pub fn v1_mounts_env() -> Option<String> {
    if is_v2() {
        return None;
    }
    let lines: Vec<String> = v1_mounts()
        .iter()
        .map(|m| {
            format!(
                "{}\t{}\t{}",
                m.mount_point.display(),
                m.mount_root.display(),
                m.super_opts.join(",")
            )
        })
        .collect();
    Some(lines.join("\n"))
}

/// For each v1 hierarchy this process is in (`/proc/self/cgroup` text): its mount point
/// and this process's cgroup path in it.
pub fn v1_own_paths(proc_self_cgroup: &str) -> Vec<(PathBuf, String)> {
    let mounts = v1_mounts();
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(first) = controllers.split(',').next().filter(|c| !c.is_empty()) else {
            continue;
        };
        if let Some(m) = mounts
            .iter()
            .find(|m| m.super_opts.iter().any(|o| o == first))
            && !out.iter().any(|(p, _)| *p == m.mount_point)
        {
            out.push((m.mount_point.clone(), path.to_owned()));
        }
    }
    out
}

fn parse_v1_mounts(value: &str) -> Option<Vec<hierarchies::Mountinfo>> {
    let mounts: Option<Vec<_>> = value
        .lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let (point, root, opts) = (fields.next()?, fields.next()?, fields.next()?);
            Some(hierarchies::Mountinfo {
                mount_point: PathBuf::from(point),
                mount_root: PathBuf::from(root),
                fs_type: ("cgroup".to_owned(), None),
                super_opts: opts.split(',').map(str::to_owned).collect(),
            })
        })
        .collect();
    mounts.filter(|m| !m.is_empty())
}

/// cgroups-rs' v1 hierarchy over a mount table read once ([`v1_mounts`]): the same
/// controllers, in the same order (blkio before memory, for writeback), found the same
/// way — the first cgroup mount whose superblock options name the controller.
#[derive(Debug, Clone)]
struct HostV1(std::sync::Arc<Vec<hierarchies::Mountinfo>>);

impl HostV1 {
    fn mount_point(&self, controller: cgroups_rs::fs::Controllers) -> Option<(PathBuf, PathBuf)> {
        let name = controller.to_string();
        self.0
            .iter()
            .find(|m| m.super_opts.contains(&name))
            .map(|m| (m.mount_point.clone(), m.mount_root.clone()))
    }
}

impl cgroups_rs::fs::Hierarchy for HostV1 {
    fn subsystems(&self) -> Vec<cgroups_rs::fs::Subsystem> {
        use cgroups_rs::fs::{Controllers as C, Subsystem as S, *};
        let mut subs = Vec::new();
        let mut add = |c: C, make: &dyn Fn(PathBuf, PathBuf) -> S| {
            if let Some((point, root)) = self.mount_point(c) {
                subs.push(make(point, root));
            }
        };
        add(C::BlkIo, &|p, r| {
            S::BlkIo(blkio::BlkIoController::new(p, r, false))
        });
        add(C::Mem, &|p, r| S::Mem(MemController::new(p, r, false)));
        add(C::Pids, &|p, r| S::Pid(PidController::new(p, r, false)));
        add(C::CpuSet, &|p, r| {
            S::CpuSet(cpuset::CpuSetController::new(p, r, false))
        });
        add(C::CpuAcct, &|p, r| {
            S::CpuAcct(cpuacct::CpuAcctController::new(p, r))
        });
        add(C::Cpu, &|p, r| S::Cpu(CpuController::new(p, r, false)));
        add(C::Devices, &|p, r| S::Devices(DevicesController::new(p, r)));
        add(C::Freezer, &|p, r| {
            S::Freezer(freezer::FreezerController::new(p, r, false))
        });
        add(C::NetCls, &|p, r| {
            S::NetCls(net_cls::NetClsController::new(p, r))
        });
        add(C::PerfEvent, &|p, r| {
            S::PerfEvent(perf_event::PerfEventController::new(p, r))
        });
        add(C::NetPrio, &|p, r| {
            S::NetPrio(net_prio::NetPrioController::new(p, r))
        });
        add(C::HugeTlb, &|p, r| {
            S::HugeTlb(hugetlb::HugeTlbController::new(p, r, false))
        });
        add(C::Rdma, &|p, r| S::Rdma(rdma::RdmaController::new(p, r)));
        add(C::Systemd, &|p, r| {
            S::Systemd(systemd::SystemdController::new(p, r, false))
        });
        subs
    }

    fn root(&self) -> PathBuf {
        self.0
            .first()
            .and_then(|m| m.mount_point.parent())
            .map_or_else(
                || PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT),
                Path::to_path_buf,
            )
    }

    fn root_control_group(&self) -> FsCgroup {
        FsCgroup::load(Box::new(self.clone()), "")
    }

    fn parent_control_group(&self, path: &str) -> FsCgroup {
        let parent = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        FsCgroup::load(Box::new(self.clone()), parent)
    }

    fn v2(&self) -> bool {
        false
    }
}

impl Cgroup {
    /// Creates (or opens, when it exists) the cgroup at `path` in every hierarchy.
    pub fn create(path: &str) -> Result<Self, Error> {
        let inner = FsCgroup::new(hierarchy(), path).map_err(|source| Error::Cgroups {
            path: path.to_string(),
            op: "create",
            source,
        })?;
        Ok(Self {
            path: path.to_string(),
            inner,
        })
    }

    /// A handle on an existing cgroup (nothing is created).
    pub fn load(path: &str) -> Self {
        Self {
            path: path.to_string(),
            inner: FsCgroup::load(hierarchy(), path),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, op: &'static str) -> impl FnOnce(cgroups_rs::fs::error::Error) -> Error + '_ {
        move |source| Error::Cgroups {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Applies the OCI resources: cpu shares/quota/period, memory limit (and swap), pids limit.
    pub fn apply(&self, res: &LinuxResources) -> Result<(), Error> {
        if let Some(cpu) = res.cpu()
            && let Some(ctl) = self.inner.controller_of::<CpuController>()
        {
            if let Some(shares) = cpu.shares() {
                // cgroup v2 takes a weight (1–10000); the conversion is the one runc and
                // the kubelet use for cpu.shares (2–262144).
                let value = if self.inner.v2() {
                    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
                } else {
                    shares
                };
                ctl.set_shares(value).map_err(self.err("cpu shares"))?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                ctl.set_cfs_quota_and_period(cpu.quota(), cpu.period())
                    .map_err(self.err("cpu quota"))?;
            }
        }
        if let Some(mem) = res.memory()
            && let Some(ctl) = self.inner.controller_of::<MemController>()
            && let Some(limit) = mem.limit()
        {
            ctl.set_limit(limit).map_err(self.err("memory limit"))?;
            // Without swap accounting set, v1 lets the limit spill into swap.
            let swap = mem.swap().unwrap_or(limit);
            // memsw exists only when the kernel accounts swap; ignore its absence.
            let _ = ctl.set_memswap_limit(swap);
        }
        if let Some(pids) = res.pids()
            && let Some(ctl) = self.inner.controller_of::<PidController>()
        {
            let max = if pids.limit() > 0 {
                MaxValue::Value(pids.limit())
            } else {
                MaxValue::Max
            };
            ctl.set_pid_max(max).map_err(self.err("pids limit"))?;
        }
        Ok(())
    }

    /// Enforces device `rules` (see [`crate::devices`]): on v2 by attaching a device
    /// program generated from them to this cgroup, on v1 by the `devices` controller
    /// (deny everything, then each rule in order).
    pub fn apply_devices(&self, rules: &[crate::devices::Rule]) -> Result<(), Error> {
        let fail = |reason: String| Error::Devices {
            path: self.path.clone(),
            reason,
        };
        if self.inner.v2() {
            let dir = PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT).join(&self.path);
            let table: Vec<_> = rules.iter().map(crate::devices::Rule::bpf).collect();
            return berth_ebpf::attach_device_filter(&table, &dir).map_err(|e| fail(e.to_string()));
        }
        let ctl = self
            .inner
            .controller_of::<DevicesController>()
            .ok_or_else(|| fail("this cgroup v1 host has no devices controller".into()))?;
        let dir = ctl.path();
        let write = |file: &str, line: &str| {
            std::fs::write(dir.join(file), line).map_err(|e| fail(format!("{file} {line:?}: {e}")))
        };
        write("devices.deny", "a")?;
        for r in rules {
            write(
                if r.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                },
                &r.v1_line(),
            )?;
        }
        Ok(())
    }

    /// Moves the calling process into this cgroup. It must be single-threaded: on v1 it
    /// writes "0" to each hierarchy's `tasks` file, which migrates the calling thread
    /// without the kernel's global threadgroup lock — so without waiting for an RCU grace
    /// period, which a `cgroup.procs` write does (milliseconds on a busy machine).
    pub fn join_self(&self) -> Result<(), Error> {
        let me = CgroupPid::from(0u64);
        if self.inner.v2() {
            self.inner.add_task_by_tgid(me)
        } else {
            self.inner.add_task(me)
        }
        .map_err(self.err("join"))
    }

    /// Processes in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        self.inner.procs().iter().map(|p| p.pid as i32).collect()
    }

    /// How many times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        if self.inner.v2() {
            let file = PathBuf::from(hierarchies::UNIFIED_MOUNTPOINT)
                .join(&self.path)
                .join("memory.events");
            return std::fs::read_to_string(file)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
                })
                .unwrap_or(0);
        }
        self.inner
            .controller_of::<MemController>()
            .map(|m| m.memory_stat().oom_control.oom_kill)
            .unwrap_or(0)
    }

    /// Current memory usage in bytes (0 when the controller is absent).
    pub fn memory_usage(&self) -> u64 {
        self.inner
            .controller_of::<MemController>()
            .map(|m| m.memory_stat().usage_in_bytes)
            .unwrap_or(0)
    }

    /// Tasks in the cgroup and every cgroup below it (`pids.current`; 0 when the
    /// controller is absent).
    pub fn pids_current(&self) -> u64 {
        self.inner
            .controller_of::<PidController>()
            .and_then(|p| p.get_pid_current().ok())
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the cgroup.
    pub fn kill_all(&self) {
        for pid in self.procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// When this is a default path (`berth/<id>`), removes the `berth` parent too from
    /// every hierarchy where nothing is left under it, so the runtime leaves no cgroup
    /// behind. A plain `rmdir`, which the kernel refuses while the parent holds any
    /// cgroup, so other containers' cgroups are never touched.
    fn remove_default_parent(&self) {
        let is_default = self
            .path
            .strip_prefix(DEFAULT_PARENT)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|id| !id.contains('/'));
        if !is_default {
            return;
        }
        let parent = FsCgroup::load(hierarchy(), DEFAULT_PARENT);
        let mut dirs: Vec<&Path> = parent
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path())
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Removes the cgroup, waiting up to `timeout` for its processes to be gone (and the
    /// default parent with it, see [`Cgroup::remove_default_parent`]).
    pub fn remove(&self, timeout: Duration) -> Result<(), Error> {
        self.remove_own(timeout)?;
        self.remove_default_parent();
        Ok(())
    }

    fn remove_own(&self, timeout: Duration) -> Result<(), Error> {
        if !self.inner.exists() {
            return Ok(());
        }
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match self.inner.delete() {
                Ok(()) => return Ok(()),
                Err(source) => {
                    if start.elapsed() >= timeout {
                        if !self.procs().is_empty() {
                            return Err(Error::Busy {
                                path: self.path.clone(),
                                waited: start.elapsed(),
                            });
                        }
                        return Err(Error::Cgroups {
                            path: self.path.clone(),
                            op: "remove",
                            source,
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cgroups_rs::fs::Hierarchy;

    #[test]
    fn the_mount_table_handed_to_monitors_reads_back_the_same() {
        let value = "/sys/fs/cgroup/cpu,cpuacct\t/\trw,cpu,cpuacct\n/sys/fs/cgroup/systemd\t/\trw,name=systemd";
        let mounts = parse_v1_mounts(value).expect("parses");
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[0].mount_point,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[0].super_opts, ["rw", "cpu", "cpuacct"]);
        let h = HostV1(std::sync::Arc::new(mounts));
        // cpuacct, cpu and the named systemd hierarchy; no memory mount, no memory controller.
        assert_eq!(h.subsystems().len(), 3);
        assert_eq!(h.root(), PathBuf::from("/sys/fs/cgroup"));
        assert!(parse_v1_mounts("").is_none());
        assert!(parse_v1_mounts("/only/a/path").is_none());
    }

    #[test]
    fn the_host_table_equals_cgroups_rs_own() {
        if is_v2() {
            return;
        }
        let ours = HostV1(v1_mounts().clone()).subsystems();
        let theirs = hierarchies::V1::new().subsystems();
        let paths = |s: &[cgroups_rs::fs::Subsystem]| -> Vec<String> {
            s.iter()
                .map(|x| format!("{:?}", x.to_controller().path()))
                .collect()
        };
        assert_eq!(paths(&ours), paths(&theirs));
        let env = v1_mounts_env().expect("a v1 host");
        assert_eq!(
            parse_v1_mounts(&env).as_deref(),
            Some(v1_mounts().as_slice())
        );
    }
}
