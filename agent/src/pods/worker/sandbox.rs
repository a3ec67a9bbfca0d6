//! A pod's sandbox: the pause container in the namespaces the pod asks for, its
//! network (CNI, or the node's for hostNetwork), DNS configuration, and the teardown of
//! all of it when the pod goes.

use super::*;

/// Removes everything of pod `uid` from the host: containers (after their grace),
/// network, sandbox, volumes, logs. Used for deleted pods and orphans alike.
pub fn teardown(
    ctx: &Ctx,
    uid: &str,
    pod: Option<&Pod>,
    log_dir: Option<&Path>,
) -> Result<(), String> {
    let rt = &ctx.runtime;
    let all = rt.containers_with_prefix(&format!("{uid}-"));
    let ours = pod_containers(&all, uid);
    let grace = pod.map_or(Duration::from_secs(2), grace_of);
    let deadline = Instant::now() + grace;
    // preStop hooks of running containers, within the grace period.
    if let Some(pod) = pod {
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
                continue;
            };
            let Some((_, id)) = instances(&all, uid, &c.name).pop() else {
                continue;
            };
            if !rt
                .status(&id)
                .is_ok_and(|s| s.state == ContainerState::Running)
            {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(exec) = &hook.exec {
                let cmd = exec.command.clone().unwrap_or_default();
                let _ = rt.exec_sync(&id, &cmd, left.max(Duration::from_secs(1)));
            } else if let Some(sleep) = &hook.sleep {
                std::thread::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(left));
            }
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::scope(|s| {
        for id in &ours {
            s.spawn(move || {
                let _ = rt.stop_container(id, left);
            });
        }
    });
    for id in &ours {
        rt.remove_container(id)
            .map_err(|e| format!("remove container {id}: {e}"))?;
    }
    if let Ok(sandbox) = rt.sandbox(uid) {
        let name = pod.map(full_name).unwrap_or_default();
        if !sandbox.config.host_network {
            let started = Instant::now();
            ctx.network.del(uid, &sandbox.netns, &name)?;
            ctx.start_metrics
                .network_op("tear_down_pod", started.elapsed());
        }
        rt.remove_sandbox(uid)
            .map_err(|e| format!("remove sandbox: {e}"))?;
        remove_pod_cgroup(&sandbox.config.cgroup_parent)?;
    }
    crate::pods::userns::release(&ctx.node.root_dir, uid);
    volumes::teardown(&pod_dir(ctx, uid), ctx.csi_mounts())?;
    if let Some(dir) = log_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

pub(super) fn host_resolv() -> (Vec<String>, Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => ns.extend(parts.map(str::to_owned)),
            Some("search") => search.extend(parts.map(str::to_owned)),
            Some("options") => opts.extend(parts.map(str::to_owned)),
            _ => {}
        }
    }
    // A loopback resolver on the host is unreachable from a pod's namespace.
    ns.retain(|n| !n.starts_with("127.") && n != "::1");
    (ns, search, opts)
}

/// nameservers, searches, options per dnsPolicy and dnsConfig.
pub(super) fn dns_for(ctx: &Ctx, pod: &Pod) -> (Vec<String>, Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    // ClusterFirst on the host's network falls back to the node's resolver, as the
    // kubelet's does; ClusterFirstWithHostNet is how such a pod asks for cluster DNS.
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let (mut servers, mut searches, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "ClusterFirst" if host_network => host_resolv(),
        "ClusterFirst" | "ClusterFirstWithHostNet" if !ctx.cluster_dns.is_empty() => {
            let d = &ctx.cluster_domain;
            let (_, host_search, _) = host_resolv();
            let mut s = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            s.extend(host_search);
            (ctx.cluster_dns.clone(), s, vec!["ndots:5".to_owned()])
        }
        _ => host_resolv(),
    };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        searches.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            options.retain(|x: &String| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    // The kubelet's omitDuplicates: the first of each, wherever the repeats are.
    let omit_duplicates = |v: &mut Vec<String>| {
        let mut seen = HashSet::new();
        v.retain(|x| seen.insert(x.clone()));
    };
    omit_duplicates(&mut servers);
    omit_duplicates(&mut searches);
    (servers, searches, options)
}

/// Makes sure the pod has a live sandbox with networking; returns (netns, pod IP).
pub(super) fn ensure_sandbox(ctx: &Ctx, pod: &Pod, qos: &str) -> Result<(PathBuf, String), String> {
    let rt = &ctx.runtime;
    let uid = uid(pod);
    if let Ok(sb) = rt.sandbox(&uid) {
        let alive = rt
            .status(&uid)
            .is_ok_and(|s| s.state == ContainerState::Running);
        if alive && let Some(ip) = &sb.pod_ip {
            return Ok((sb.netns.clone(), ip.clone()));
        }
        // A dead sandbox (or one whose network never came up): start over, as the
        // kubelet does, containers included.
        tracing::info!(pod = %full_name(pod), "sandbox is not running; recreating it");
        teardown_sandbox_only(ctx, pod)?;
    }
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let host_network = spec.host_network == Some(true);
    // hostUsers: false — the pod's own user namespace, with a range of host ids from
    // the node's allocator (kept until the pod is torn down).
    let user_namespace = if spec.host_users == Some(false) {
        if host_network || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
            return Err(
                "Failed to create pod sandbox: `spec.hostUsers: false` cannot be combined with hostNetwork, hostPID or hostIPC"
                    .into(),
            );
        }
        Some(
            crate::pods::userns::allocate(&ctx.node.root_dir, &uid)
                .map_err(|e| format!("Failed to create pod sandbox: {e}"))?,
        )
    } else {
        None
    };
    let (nameservers, searches, dns_options) = dns_for(ctx, pod);
    // A hostNetwork pod is in the node's UTS namespace too: its hostname is the node's.
    let hostname = if host_network {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| format!("Failed to create pod sandbox: the node's hostname: {e}"))?
    } else {
        spec.hostname
            .clone()
            .or_else(|| pod.metadata.name.clone())
            .unwrap_or_default()
    };
    let hostname: String = hostname.chars().take(63).collect();
    let cfg = SandboxConfig {
        id: uid.clone(),
        hostname,
        cgroup_parent: resources::pod_cgroup(&ctx.cgroup_root, qos, &uid),
        share_process_namespace: spec.share_process_namespace == Some(true),
        host_network,
        host_pid: spec.host_pid == Some(true),
        host_ipc: spec.host_ipc == Some(true),
        user_namespace,
        pause_image: ctx.pause_image.clone(),
        nameservers,
        searches,
        dns_options,
        host_aliases: spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect(),
        log_dir: pod_log_dir(ctx, pod),
        sysctls: crate::pods::sysctls::of(pod),
    };
    ensure_image(ctx, &ctx.pause_image, "IfNotPresent", &[], &mut Vec::new())?;
    let started = Instant::now();
    let sandbox = rt
        .run_sandbox(&cfg)
        .map_err(|e| format!("Failed to create pod sandbox: {e}"))?;
    ctx.start_metrics.sandbox_ran(started.elapsed());
    if host_network {
        // No CNI: the pod is on the node's network, and its IP is the node's.
        let ip = ctx.node.node_ip.clone();
        rt.set_pod_ip(&uid, &ip)
            .map_err(|e| format!("recording the pod IP: {e}"))?;
        return Ok((sandbox.netns, ip));
    }
    let started = Instant::now();
    let added = ctx.network.add(&uid, &sandbox.netns, &full_name(pod));
    ctx.start_metrics
        .network_op("set_up_pod", started.elapsed());
    match added {
        Ok(ip) => {
            rt.set_pod_ip(&uid, &ip)
                .map_err(|e| format!("recording the pod IP: {e}"))?;
            Ok((sandbox.netns, ip))
        }
        Err(e) => {
            let _ = ctx.network.del(&uid, &sandbox.netns, &full_name(pod));
            let _ = rt.remove_sandbox(&uid);
            Err(format!("Failed to create pod sandbox: {e}"))
        }
    }
}

pub(super) fn teardown_sandbox_only(ctx: &Ctx, pod: &Pod) -> Result<(), String> {
    let rt = &ctx.runtime;
    let uid = uid(pod);
    for id in pod_containers(&rt.containers_with_prefix(&format!("{uid}-")), &uid) {
        let _ = rt.stop_container(&id, Duration::ZERO);
        rt.remove_container(&id)
            .map_err(|e| format!("remove container {id}: {e}"))?;
    }
    let sandbox = rt.sandbox(&uid).ok();
    if let Some(sb) = &sandbox
        && !sb.config.host_network
    {
        ctx.network.del(&uid, &sb.netns, &full_name(pod))?;
    }
    rt.remove_sandbox(&uid)
        .map_err(|e| format!("remove sandbox: {e}"))?;
    match sandbox {
        Some(sb) => remove_pod_cgroup(&sb.config.cgroup_parent),
        None => Ok(()),
    }
}

/// Removes the pod-level cgroup (its containers' cgroups are gone with them).
pub(super) fn remove_pod_cgroup(path: &str) -> Result<(), String> {
    berth_runtime::cgroups::Cgroup::load(path)
        .remove(Duration::from_secs(2))
        .map_err(|e| format!("remove pod cgroup {path}: {e}"))
}
