//! A pod's containers: their runtime configuration from the Pod, creation and start,
//! init containers in order, restarts with back-off, probes, ephemeral containers.

use super::*;

pub(super) struct PodView<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) pod: &'a Pod,
    pub(super) uid: String,
    pub(super) all: Vec<String>,
    pub(super) netns: PathBuf,
    pub(super) pod_ip: String,
    pub(super) volumes: BTreeMap<String, PathBuf>,
    pub(super) env_rt: EnvRuntime,
    pub(super) qos: &'static str,
    pub(super) policy: String,
}

impl PodView<'_> {
    pub(super) fn config(
        &self,
        c: &Container,
        attempt: u32,
        inputs: &Inputs,
    ) -> Result<ContainerConfig, String> {
        let env = env::container_env(self.pod, c, inputs, &self.env_rt)?;
        let vars: BTreeMap<String, String> = env.iter().cloned().collect();
        let expand = |v: &Option<Vec<String>>| -> Vec<String> {
            v.iter().flatten().map(|s| env::expand(s, &vars)).collect()
        };
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let sc = c.security_context.as_ref();
        // The image's user is read only when runAsNonRoot asks for it.
        let image_user = || {
            self.ctx
                .runtime
                .images()
                .find(c.image.as_deref().unwrap_or_default())
                .ok()
                .and_then(|i| i.config.config().as_ref().and_then(|cc| cc.user().clone()))
                .unwrap_or_default()
        };
        crate::pods::security::verify_run_as_non_root(self.pod, &c.name, pod_sc, sc, image_user)?;
        let mut mounts = Vec::new();
        for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
            let host = self.volumes.get(&m.name).ok_or_else(|| {
                format!(
                    "volume {:?} referenced by {} is not defined",
                    m.name, c.name
                )
            })?;
            let mut host = host.clone();
            // subPathExpr: the container's environment expanded into it, as the kubelet.
            let sub = match m.sub_path_expr.as_deref().filter(|s| !s.is_empty()) {
                Some(expr) => Some(env::expand(expr, &vars)),
                None => m.sub_path.clone().filter(|s| !s.is_empty()),
            };
            if let Some(sub) = sub {
                let sub = Path::new(&sub);
                if sub.is_absolute()
                    || sub
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "unable to provision SubPath `{}`: must be a relative path without '..'",
                        sub.display()
                    ));
                }
                host = crate::pods::subpath::prepare(
                    &pod_dir(self.ctx, &self.uid),
                    &m.name,
                    &host,
                    sub,
                    &c.name,
                    index,
                )
                .map_err(|f| f.message(&m.name, &c.name))?;
            }
            mounts.push(Mount {
                host_path: host,
                container_path: PathBuf::from(&m.mount_path),
                read_only: m.read_only == Some(true),
            });
        }
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        let seccomp = crate::pods::security::seccomp_profile(
            pod_sc,
            sc,
            &self.ctx.node.root_dir,
            self.ctx.seccomp_default,
        )?;
        Ok(ContainerConfig {
            id: container_id(&self.uid, &c.name, attempt),
            sandbox_id: self.uid.clone(),
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            command: expand(&c.command),
            args: expand(&c.args),
            env,
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .or(pod_sc.and_then(|s| s.run_as_user))
                .map(|u| u as u32),
            run_as_group: sc
                .and_then(|s| s.run_as_group)
                .or(pod_sc.and_then(|s| s.run_as_group))
                .map(|g| g as u32),
            supplemental_groups: pod_sc
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(pod_sc.and_then(|s| s.fs_group))
                .map(|g| g as u32)
                .collect(),
            privileged: sc.and_then(|s| s.privileged) == Some(true),
            read_only_rootfs: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
            no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
            add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
            mounts,
            resources: resources::container_resources(c),
            oom_score_adj: Some(
                resources::oom_score_adj(
                    self.qos,
                    c,
                    crate::node::meminfo("MemTotal:").unwrap_or(0),
                )
                .max(self.ctx.oom_score_floor),
            ),
            tty: c.tty == Some(true),
            stdin: c.stdin == Some(true),
            log_path: pod_log_dir(self.ctx, self.pod)
                .join(&c.name)
                .join(format!("{attempt}.log")),
            seccomp,
            hostname: String::new(),
            // The pod's sysctls are set once, by its pause container, in the namespaces
            // the containers join.
            sysctls: Vec::new(),
            pid_namespace_of: None,
            unmasked_proc: sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked")
                && self.pod.spec.as_ref().and_then(|s| s.host_users) == Some(false),
        })
    }

    /// Creates and starts instance `attempt` of `c`; removes instances older than the
    /// one before it (kept for `lastState` and `--previous` logs).
    pub(super) fn start(
        &mut self,
        c: &Container,
        attempt: u32,
        inputs: &Inputs,
        mem: &mut Memory,
    ) -> Result<(), (String, String)> {
        self.start_in(c, attempt, None, inputs, mem)
    }

    /// [`Self::start`], in the PID namespace of container instance `pid_of` when given
    /// (an ephemeral container's target).
    pub(super) fn start_in(
        &mut self,
        c: &Container,
        attempt: u32,
        pid_of: Option<String>,
        inputs: &Inputs,
        mem: &mut Memory,
    ) -> Result<(), (String, String)> {
        let result = self.create_and_start(c, attempt, pid_of, inputs, mem);
        // The kubelet's Warning "Failed" event for a container that cannot be created
        // (a seccomp profile it cannot load, a bad config, an image it cannot pull).
        // Once per distinct error: the retries every few seconds would flood the namespace.
        if let Err(err) = &result
            && mem.waiting.get(&c.name) != Some(err)
            && let (reason, message) = err
        {
            // Image errors read "Error: ErrImagePull" (their detail is in their own
            // event); the others carry their message.
            let text = match reason.as_str() {
                "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError" => {
                    Some(message.as_str())
                }
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" => Some(reason.as_str()),
                _ => None,
            };
            if let Some(text) = text {
                mem.events.push(Event {
                    warning: true,
                    reason: "Failed".into(),
                    message: format!("Error: {text}"),
                });
            }
        }
        result
    }

    pub(super) fn create_and_start(
        &mut self,
        c: &Container,
        attempt: u32,
        pid_of: Option<String>,
        inputs: &Inputs,
        mem: &mut Memory,
    ) -> Result<(), (String, String)> {
        let rt = &self.ctx.runtime;
        let image = c.image.clone().unwrap_or_default();
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let secrets = pull_secrets(self.pod, inputs, &image);
        // Within the back-off of a failed pull, no pull: ImagePullBackOff, as the
        // kubelet, naming the last error.
        let now = Instant::now();
        if let Some((until, _, last)) = mem.pull_backoff.get(&image)
            && now < *until
        {
            mem.events.push(Event {
                warning: false,
                reason: "BackOff".into(),
                message: format!("Back-off pulling image {image:?}"),
            });
            return Err((
                "ImagePullBackOff".to_owned(),
                format!("Back-off pulling image {image:?}: {last}"),
            ));
        }
        match ensure_image(self.ctx, &image, &policy, &secrets, &mut mem.events) {
            Ok(()) => {
                mem.pull_backoff.remove(&image);
            }
            Err(e) => {
                let reason = e.split(':').next().unwrap_or("ErrImagePull").to_owned();
                if reason == "ErrImagePull" {
                    let delay = next_pull_backoff(mem.pull_backoff.get(&image).map(|b| b.1));
                    mem.pull_backoff
                        .insert(image.clone(), (now + delay, delay, e.clone()));
                }
                return Err((reason, e));
            }
        }
        let mut cfg = self
            .config(c, attempt, inputs)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e))?;
        cfg.pid_namespace_of = pid_of;
        std::fs::create_dir_all(cfg.log_path.parent().unwrap_or(Path::new("/")))
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        let t = Instant::now();
        rt.create_container(&cfg)
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        let metrics = &self.ctx.start_metrics;
        metrics.runtime_op("create_container", t.elapsed());
        mem.events.push(Event {
            warning: false,
            reason: "Created".into(),
            message: format!("Created container: {}", c.name),
        });
        let t = Instant::now();
        if let Err(e) = rt.start_container(&cfg.id) {
            let _ = rt.remove_container(&cfg.id);
            return Err(("RunContainerError".to_owned(), e.to_string()));
        }
        metrics.runtime_op("start_container", t.elapsed());
        self.all.push(cfg.id.clone());
        mem.events.push(Event {
            warning: false,
            reason: "Started".into(),
            message: format!("Started container {}", c.name),
        });
        // postStart runs right after start; if it fails the container is killed.
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Some(exec) = &hook.exec
        {
            let cmd = exec.command.clone().unwrap_or_default();
            let ok = matches!(
                rt.exec_sync(&cfg.id, &cmd, Duration::from_secs(30)),
                Ok((0, _, _))
            );
            mem.post_start_done.insert(cfg.id.clone());
            if !ok {
                mem.events.push(Event {
                    warning: true,
                    reason: "FailedPostStartHook".into(),
                    message: "PostStartHook failed".into(),
                });
                let _ = rt.stop_container(&cfg.id, grace_of(self.pod));
            }
        }
        // Container GC: the newest `--maximum-dead-containers-per-container` dead
        // instances stay (default 1: `lastState` and `logs --previous` read it).
        // Its log goes with it (`<n>.log` and its rotated `<n>.log.<i>`), as the kubelet
        // removes a collected container's log: a crash loop must not fill the disk.
        if let Some(keep) = self.ctx.max_dead_per_container {
            let log_dir = pod_log_dir(self.ctx, self.pod).join(&c.name);
            for (n, id) in instances(&self.all, &self.uid, &c.name) {
                if n.saturating_add(keep) < attempt && rt.remove_container(&id).is_ok() {
                    remove_logs(&log_dir, n);
                }
            }
        }
        Ok(())
    }

    pub(super) fn should_restart(&self, exit_code: i32) -> bool {
        match self.policy.as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        }
    }
}

/// An ephemeral container as the container the runtime starts: the same fields, without
/// its target (ephemeral containers have no ports, probes, lifecycle or resources —
/// the apiserver refuses them).
pub(super) fn ephemeral_as_container(ec: &EphemeralContainer) -> Option<Container> {
    let mut v = serde_json::to_value(ec).ok()?;
    if let Some(m) = v.as_object_mut() {
        m.remove("targetContainerName");
    }
    serde_json::from_value(v).ok()
}

/// Starts an ephemeral container once, after the pod's containers: in the PID namespace
/// of its `targetContainerName` (that container's running instance) when it names one.
/// It is never restarted, whatever its exit, as the kubelet's.
pub(super) fn step_ephemeral(
    view: &mut PodView<'_>,
    ec: &EphemeralContainer,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) {
    if instances(&view.all, &view.uid, &ec.name).last().is_some() {
        return;
    }
    let Some(c) = ephemeral_as_container(ec) else {
        return;
    };
    let target = match ec
        .target_container_name
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        None => None,
        Some(t) => {
            let running = instances(&view.all, &view.uid, t)
                .pop()
                .map(|(_, id)| id)
                .filter(|id| {
                    view.ctx
                        .runtime
                        .status(id)
                        .is_ok_and(|s| s.state == ContainerState::Running)
                });
            match running {
                Some(id) => Some(id),
                None => {
                    mem.waiting.insert(
                        ec.name.clone(),
                        (
                            "ContainerCreating".into(),
                            format!("waiting for the target container {t} to run"),
                        ),
                    );
                    *wake = (*wake).min(Duration::from_secs(1));
                    return;
                }
            }
        }
    };
    let started = view.start_in(&c, 0, target, inputs, mem);
    record_start(&c, started, mem, wake);
}

/// Records how a first start went: the container's waiting reason on failure, retried
/// after a short wait.
fn record_start(
    c: &Container,
    started: Result<(), (String, String)>,
    mem: &mut Memory,
    wake: &mut Duration,
) {
    match started {
        Ok(()) => {
            mem.waiting.remove(&c.name);
        }
        Err(w) => {
            mem.waiting.insert(c.name.clone(), w);
            *wake = (*wake).max(Duration::from_secs(2));
        }
    }
}

/// Init containers in order; true once all completed.
pub(super) fn step_init(
    view: &mut PodView<'_>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) -> bool {
    let rt = view.ctx.runtime.clone();
    for c in spec.init_containers.iter().flatten() {
        let latest = instances(&view.all, &view.uid, &c.name).pop();
        let Some((n, id)) = latest else {
            let started = view.start(c, 0, inputs, mem);
            record_start(c, started, mem, wake);
            return false;
        };
        let Ok(st) = rt.status(&id) else { return false };
        match &st.state {
            ContainerState::Created => {
                let _ = rt.start_container(&id);
                return false;
            }
            ContainerState::Running => return false,
            state => {
                let Some((code, finished)) = exit_of(state) else {
                    return false;
                };
                if code == 0 {
                    continue;
                }
                if view.policy == "Never" {
                    return false;
                }
                if !restart_after_backoff(view, c, n, st.started_at_ns, finished, inputs, mem, wake)
                {
                    return false;
                }
                return false;
            }
        }
    }
    true
}

/// Restarts instance `n` of `c` once its back-off has passed; true if it did.
#[allow(
    clippy::too_many_arguments,
    reason = "the worker's per-container state"
)]
pub(super) fn restart_after_backoff(
    view: &mut PodView<'_>,
    c: &Container,
    n: u32,
    started_ns: Option<i128>,
    finished_ns: i128,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) -> bool {
    let count = backoff_count(&mut mem.backoff_reset, &c.name, n, started_ns, finished_ns);
    if let Some((delay, left)) = backoff_left(count, finished_ns, now_ns()) {
        mem.waiting.insert(
            c.name.clone(),
            (
                "CrashLoopBackOff".into(),
                format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    go_duration(delay),
                    c.name,
                    view.pod.metadata.name.as_deref().unwrap_or(""),
                    view.pod.metadata.namespace.as_deref().unwrap_or(""),
                    view.uid
                ),
            ),
        );
        if !mem.events.iter().any(|e| e.reason == "BackOff") {
            mem.events.push(Event {
                warning: true,
                reason: "BackOff".into(),
                message: format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    full_name(view.pod)
                ),
            });
        }
        *wake = (*wake).min(left.max(Duration::from_millis(100)));
        return false;
    }
    match view.start(c, n + 1, inputs, mem) {
        Ok(()) => {
            mem.waiting.remove(&c.name);
            true
        }
        Err(w) => {
            mem.waiting.insert(c.name.clone(), w);
            false
        }
    }
}

pub(super) fn step_container(
    view: &mut PodView<'_>,
    c: &Container,
    inputs: &Inputs,
    mem: &mut Memory,
    wake: &mut Duration,
) {
    let rt = view.ctx.runtime.clone();
    let latest = instances(&view.all, &view.uid, &c.name).pop();
    let Some((n, id)) = latest else {
        let started = view.start(c, 0, inputs, mem);
        record_start(c, started, mem, wake);
        return;
    };
    let Ok(st) = rt.status(&id) else { return };
    match &st.state {
        ContainerState::Created => {
            let _ = rt.start_container(&id);
        }
        ContainerState::Running => {
            // A changed image restarts the container (the only mutable container field
            // that needs it).
            if c.image.as_deref().is_some_and(|i| i != st.image) {
                mem.events.push(Event {
                    warning: false,
                    reason: "Killing".into(),
                    message: format!("Container {} definition changed, will be restarted", c.name),
                });
                let _ = rt.stop_container(&id, grace_of(view.pod));
                let _ = view.start(c, n + 1, inputs, mem);
                return;
            }
            let started = *mem
                .seen_running
                .entry(id.clone())
                .or_insert_with(Instant::now);
            let target = Target {
                runtime: &rt,
                container_id: &id,
                netns: &view.netns,
                pod_ip: &view.pod_ip,
            };
            let mut startup_ok = true;
            if let Some(p) = &c.startup_probe {
                let s = mem
                    .probes
                    .entry((id.clone(), ProbeKind::Startup))
                    .or_default();
                if s.verdict != Some(true) {
                    if let Some(msg) = s.tick(p, c, started, target) {
                        mem.events.push(unhealthy("Startup", &msg));
                    }
                    startup_ok = s.verdict == Some(true);
                    if s.verdict == Some(false) {
                        kill_unhealthy(view, c, &id, "Startup", mem);
                        return;
                    }
                    *wake = (*wake).min(
                        s.next_due(p, started)
                            .saturating_duration_since(Instant::now()),
                    );
                }
            }
            if !startup_ok {
                return;
            }
            if let Some(p) = &c.liveness_probe {
                let s = mem
                    .probes
                    .entry((id.clone(), ProbeKind::Liveness))
                    .or_default();
                if let Some(msg) = s.tick(p, c, started, target) {
                    mem.events.push(unhealthy("Liveness", &msg));
                }
                if s.verdict == Some(false) {
                    kill_unhealthy(view, c, &id, "Liveness", mem);
                    return;
                }
                *wake = (*wake).min(
                    s.next_due(p, started)
                        .saturating_duration_since(Instant::now()),
                );
            }
            if let Some(p) = &c.readiness_probe {
                let s = mem
                    .probes
                    .entry((id.clone(), ProbeKind::Readiness))
                    .or_default();
                if let Some(msg) = s.tick(p, c, started, target) {
                    mem.events.push(unhealthy("Readiness", &msg));
                }
                *wake = (*wake).min(
                    s.next_due(p, started)
                        .saturating_duration_since(Instant::now()),
                );
            }
        }
        state => {
            let Some((code, finished)) = exit_of(state) else {
                return;
            };
            mem.probes.retain(|(cid, _), _| cid != &id);
            if view.should_restart(code) {
                restart_after_backoff(view, c, n, st.started_at_ns, finished, inputs, mem, wake);
            }
        }
    }
}

/// The kubelet's event for one failed probe run (repeats are counted on one Event).
pub(super) fn unhealthy(kind: &str, msg: &str) -> Event {
    Event {
        warning: true,
        reason: "Unhealthy".into(),
        message: format!("{kind} probe failed: {msg}"),
    }
}

pub(super) fn kill_unhealthy(
    view: &PodView<'_>,
    c: &Container,
    id: &str,
    kind: &str,
    mem: &mut Memory,
) {
    mem.events.push(Event {
        warning: false,
        reason: "Killing".into(),
        message: format!(
            "Container {} failed {} probe, will be restarted",
            c.name,
            kind.to_lowercase()
        ),
    });
    let grace = c
        .liveness_probe
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or_else(|| grace_of(view.pod));
    let _ = view.ctx.runtime.stop_container(id, grace);
    mem.probes.retain(|(cid, _), _| cid != id);
}
