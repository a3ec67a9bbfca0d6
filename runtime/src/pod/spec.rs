//! The OCI spec for a pod container: process from the image config merged with the pod's
//! command/args/env/workingDir/user (Kubernetes' rules), containerd's default
//! capabilities (plus add, minus drop; all when privileged), containerd's masked and
//! read-only paths, the seccomp profile, the sandbox's namespaces to join, cgroup path and resources.

use std::path::Path;

use serde_json::{Value, json};

use super::{ContainerConfig, Resources, SandboxConfig, SeccompProfile};
use crate::image::config::{ImageUser, merge_command, merge_env, working_dir};
use crate::image::{Error, Image};
use crate::process::{CAPABILITY_NAMES, DEFAULT_CAPABILITIES};
use crate::rootfs::{DEFAULT_READONLY, default_masked};

fn cap_name(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// Every capability this process may hand on (its bounding set), as containerd's
/// "all current capabilities" for privileged containers: a capability the host withholds
/// from us cannot be granted.
fn all_current() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    CAPABILITY_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1u64 << i) != 0)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// The capability set: containerd's defaults + add − drop ("ALL" honoured), or all
/// current capabilities when privileged.
pub fn capabilities(cfg: &ContainerConfig) -> Vec<String> {
    if cfg.privileged {
        return all_current();
    }
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    for add in &cfg.add_capabilities {
        if add.eq_ignore_ascii_case("ALL") {
            caps = all_current();
        } else if !caps.contains(&cap_name(add)) {
            caps.push(cap_name(add));
        }
    }
    for drop in &cfg.drop_capabilities {
        if drop.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            let name = cap_name(drop);
            caps.retain(|c| *c != name);
        }
    }
    caps.retain(|c| CAPABILITY_NAMES.contains(&c.as_str()));
    caps
}

/// The OCI seccomp section for the container, resolved against its capabilities as
/// containerd does; none for `Unconfined` and for privileged containers (containerd's
/// CRI plugin sets no profile on privileged containers).
fn seccomp(
    cfg: &ContainerConfig,
    caps: &[String],
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, Error> {
    if cfg.privileged {
        return Ok(None);
    }
    Ok(match &cfg.seccomp {
        SeccompProfile::Unconfined => None,
        SeccompProfile::RuntimeDefault => Some(crate::seccomp::runtime_default(caps)?),
        SeccompProfile::Localhost { path } => Some(crate::seccomp::localhost(path, caps)?),
    })
}

/// cgroup resources, with the device rules containerd's CRI plugin sets: deny
/// everything (the runtime appends runc's default allow-list), or allow everything for
/// a privileged container.
fn resources(r: &Resources, privileged: bool) -> Value {
    let mut res = json!({
        "devices": [{"allow": privileged, "access": "rwm"}],
    });
    let mut cpu = serde_json::Map::new();
    if let Some(s) = r.cpu_shares {
        cpu.insert("shares".into(), s.into());
    }
    if let Some(q) = r.cpu_quota {
        cpu.insert("quota".into(), q.into());
        cpu.insert("period".into(), r.cpu_period.unwrap_or(100_000).into());
    }
    if !cpu.is_empty() {
        res["cpu"] = Value::Object(cpu);
    }
    if let Some(m) = r.memory_limit {
        res["memory"] = json!({"limit": m});
    }
    if let Some(p) = r.pids_limit {
        res["pids"] = json!({"limit": p});
    }
    res
}

/// Builds config.json for a container whose rootfs is `rootfs` (the overlay mount).
/// The processes whose namespaces a container joins, and which are the host's.
#[derive(Debug)]
pub struct Namespaces<'a> {
    /// The pause process (None for the sandbox itself).
    pub sandbox_pid: Option<i32>,
    /// A container whose PID namespace this one joins (an ephemeral container's target).
    pub target_pid: Option<i32>,
    pub sandbox: &'a SandboxConfig,
}

/// `layers_top_first` are used to look up user names.
pub fn build(
    cfg: &ContainerConfig,
    image: &Image,
    layers_top_first: &[std::path::PathBuf],
    rootfs: &Path,
    ns: Namespaces<'_>,
    cgroups_path: &str,
) -> Result<Value, Error> {
    let sandbox = ns.sandbox;
    let ic = image.config.config().clone().unwrap_or_default();
    let entrypoint = ic.entrypoint().clone().unwrap_or_default();
    let cmd = ic.cmd().clone().unwrap_or_default();
    let args = merge_command(&entrypoint, &cmd, &cfg.command, &cfg.args);
    if args.is_empty() {
        return Err(Error::Unsupported(format!(
            "container {}: no command: the image {} has no Entrypoint or Cmd and the pod gives none",
            cfg.name, image.reference
        )));
    }
    let mut env = merge_env(&ic.env().clone().unwrap_or_default(), &cfg.env);
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.insert(0, format!("HOSTNAME={}", cfg.hostname));
    }
    let cwd = working_dir(ic.working_dir().as_deref(), cfg.working_dir.as_deref());

    let image_user = ic.user().clone().unwrap_or_default();
    let mut user = ImageUser::resolve(&image_user, layers_top_first)?;
    if let Some(uid) = cfg.run_as_user {
        // runAsUser replaces the image's user; its primary group comes from the image's
        // passwd when the uid is listed there, else 0 (as containerd does).
        user = ImageUser::resolve(&uid.to_string(), layers_top_first)?;
    }
    if let Some(gid) = cfg.run_as_group {
        user.gid = gid;
    }
    let mut groups = user.additional_gids.clone();
    groups.extend(cfg.supplemental_groups.iter().copied());
    groups.sort_unstable();
    groups.dedup();

    let caps = capabilities(cfg);
    let seccomp = seccomp(cfg, &caps)?;
    let namespaces = namespaces(&ns);
    let host_uts = sandbox.host_network;

    let mut dev_options = vec!["nosuid", "strictatime", "mode=755", "size=65536k"];
    if !cfg.privileged {
        dev_options.push("nodev");
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        // nodev for ordinary containers: the standard nodes are bind mounts of the
        // host's (see rootfs::create_devices), so a node the container makes is unusable.
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": dev_options}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        if sandbox.host_ipc {
            // hostIPC: the host's shared memory, as containerd gives it.
            json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "rprivate", "rw", "nosuid", "noexec", "nodev"]})
        } else {
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
        },
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if cfg.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &cfg.mounts {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if m.read_only { "ro" } else { "rw" }.to_string());
        // A device node in a volume (an emptyDir the container wrote, a hostPath)
        // cannot be opened through it; privileged containers keep them.
        if !cfg.privileged {
            options.push("nodev".to_string());
        }
        mounts.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": m.host_path,
            "options": options,
        }));
    }

    let masked: Vec<String> = if cfg.privileged || cfg.unmasked_proc {
        vec![]
    } else {
        default_masked()
    };
    let readonly: Vec<&str> = if cfg.privileged || cfg.unmasked_proc {
        vec![]
    } else {
        DEFAULT_READONLY.to_vec()
    };
    let mut process = json!({
        "terminal": cfg.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": groups},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
        "noNewPrivileges": cfg.no_new_privileges,
    });
    if let Some(adj) = cfg.oom_score_adj {
        process["oomScoreAdj"] = adj.into();
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "resources": resources(&cfg.resources, cfg.privileged),
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    });
    if let (Some(range), None) = (&sandbox.user_namespace, ns.sandbox_pid) {
        let map = json!([{"containerID": 0, "hostID": range.host_id, "size": range.size}]);
        linux["uidMappings"] = map.clone();
        linux["gidMappings"] = map;
    }
    if !cfg.sysctls.is_empty() {
        linux["sysctl"] = cfg
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some(profile) = seccomp {
        linux["seccomp"] = serde_json::to_value(profile).map_err(|source| Error::Json {
            what: "seccomp profile".into(),
            source,
        })?;
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": cfg.read_only_rootfs},
        "mounts": mounts,
        "annotations": {
            "io.kubernetes.cri.container-name": cfg.name,
            "io.kubernetes.cri.sandbox-id": cfg.sandbox_id,
            "io.kubernetes.cri.image-name": image.reference,
        },
        "linux": linux,
    });
    // In the host's UTS namespace the host's name stays: setting one would rename the
    // node.
    if !host_uts {
        spec["hostname"] = cfg.hostname.clone().into();
    }
    Ok(spec)
}

/// The OCI namespaces of a container: the pause container (`sandbox_pid` None) makes the
/// pod's own, except those the pod takes from the host; the pod's containers join the
/// pause's, and keep the host's where the pod asked for them (no entry: the runtime's
/// own, which is the host's). The PID namespace is the container's own unless the pod
/// shares one (`shareProcessNamespace`), takes the host's, or the container targets
/// another container's (an ephemeral container).
fn namespaces(ns: &Namespaces<'_>) -> Vec<Value> {
    let (sandbox_pid, sandbox) = (ns.sandbox_pid, ns.sandbox);
    let mut out = vec![json!({"type": "mount"})];
    // The pod's user namespace: made by the pause (mapped by `id_mappings`), joined by
    // its containers.
    if sandbox.user_namespace.is_some() {
        out.push(match sandbox_pid {
            Some(pid) => json!({"type": "user", "path": format!("/proc/{pid}/ns/user")}),
            None => json!({"type": "user"}),
        });
    }
    let own = [
        ("network", "net", sandbox.host_network),
        ("ipc", "ipc", sandbox.host_ipc),
        ("uts", "uts", sandbox.host_network),
    ];
    for (kind, file, host) in own {
        match (host, sandbox_pid) {
            (true, _) => {}
            (false, Some(pid)) => {
                out.push(json!({"type": kind, "path": format!("/proc/{pid}/ns/{file}")}))
            }
            (false, None) => out.push(json!({"type": kind})),
        }
    }
    match (sandbox.host_pid, sandbox_pid, ns.target_pid) {
        (true, _, _) => {}
        (false, Some(_), Some(pid)) => {
            out.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}))
        }
        (false, Some(pid), None) if sandbox.share_process_namespace => {
            out.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}))
        }
        (false, _, _) => out.push(json!({"type": "pid"})),
    }
    if crate::cgroups::is_v2() {
        out.push(json!({"type": "cgroup"}));
    }
    out
}
