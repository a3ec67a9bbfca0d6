//! A pod's status from what the host has: container statuses, conditions, phase.

use super::*;

pub(super) fn terminated_json(st: &ContainerStatus, id: &str) -> Value {
    let (code, signal, oom, finished) = match &st.state {
        ContainerState::Exited(e) => (e.code, e.signal, e.oom_killed, e.finished_at_ns),
        _ => (255, None, false, 0),
    };
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else if matches!(st.state, ContainerState::Unknown) {
        "ContainerStatusUnknown"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": code,
        "reason": reason,
        "containerID": format!("berth://{id}"),
    });
    if let Some(s) = signal {
        t["signal"] = json!(s);
    }
    if let Some(s) = st.started_at_ns {
        t["startedAt"] = json!(rfc3339_ns(s));
    }
    if finished > 0 {
        t["finishedAt"] = json!(rfc3339_ns(finished));
    }
    t
}

/// The status of container `c` from what the host has of it.
pub(super) fn container_status(
    ctx: &Ctx,
    c: &Container,
    all: &[String],
    uid: &str,
    mem: &Memory,
    is_init: bool,
) -> (Value, bool, bool, Option<i32>) {
    let rt = &ctx.runtime;
    let mut inst = instances(all, uid, &c.name);
    let latest = inst.pop();
    let previous = inst.pop();
    let image = c.image.clone().unwrap_or_default();
    let mut s = json!({
        "name": c.name,
        "image": image,
        "imageID": "",
        "ready": false,
        "restartCount": latest.as_ref().map_or(0, |(n, _)| *n),
        "started": false,
    });
    let waiting = mem.waiting.get(&c.name);
    let mut running = false;
    let mut exit_code = None;
    if let Some((_, pid)) = &previous
        && let Ok(st) = rt.status(pid)
        && exit_of(&st.state).is_some()
    {
        s["lastState"] = json!({"terminated": terminated_json(&st, pid)});
    }
    match latest
        .as_ref()
        .and_then(|(_, id)| rt.status(id).ok().map(|st| (id.clone(), st)))
    {
        Some((id, st)) => {
            s["containerID"] = json!(format!("berth://{id}"));
            s["imageID"] = json!(st.image_id);
            match &st.state {
                ContainerState::Running => {
                    running = true;
                    let started_ok = c.startup_probe.is_none()
                        || mem
                            .probes
                            .get(&(id.clone(), ProbeKind::Startup))
                            .is_some_and(|p| p.verdict == Some(true));
                    let ready = started_ok
                        && match &c.readiness_probe {
                            None => true,
                            Some(_) => mem
                                .probes
                                .get(&(id.clone(), ProbeKind::Readiness))
                                .is_some_and(|p| p.verdict == Some(true)),
                        };
                    s["state"] = json!({"running": {"startedAt": st.started_at_ns.map(rfc3339_ns).unwrap_or_else(now_rfc3339)}});
                    s["started"] = json!(started_ok);
                    s["ready"] = json!(ready && !is_init);
                }
                ContainerState::Created => {
                    s["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
                }
                state => {
                    exit_code = exit_of(state).map(|(c, _)| c);
                    match waiting {
                        Some((reason, message)) if reason == "CrashLoopBackOff" => {
                            s["state"] = json!({"waiting": {"reason": reason, "message": message}});
                            s["lastState"] = json!({"terminated": terminated_json(&st, &id)});
                        }
                        _ => {
                            s["state"] = json!({"terminated": terminated_json(&st, &id)});
                            if is_init && exit_code == Some(0) {
                                s["ready"] = json!(true);
                            }
                        }
                    }
                }
            }
        }
        None => {
            let (reason, message) = waiting.cloned().unwrap_or_else(|| {
                (
                    if is_init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    }
                    .into(),
                    String::new(),
                )
            });
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            s["state"] = json!({"waiting": w});
        }
    }
    let ready = s["ready"].as_bool().unwrap_or(false);
    (s, running, ready, exit_code)
}

pub(super) fn condition(type_: &str, ok: bool, reason: Option<&str>, old: Option<&Value>) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = old
        .and_then(|conds| conds.as_array())
        .and_then(|conds| conds.iter().find(|c| c["type"] == type_))
        .filter(|c| c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now_rfc3339()));
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// The pod's status from the host's state.
pub(super) fn status(
    ctx: &Ctx,
    pod: &Pod,
    _inputs: &Inputs,
    mem: &Memory,
    all: &[String],
    pod_ip: &str,
    qos: &str,
) -> Value {
    let uid = uid(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.as_ref();
    let old_conds = old
        .and_then(|s| serde_json::to_value(&s.conditions).ok())
        .filter(|v| !v.is_null());
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut init_statuses = Vec::new();
    let mut init_done = true;
    let mut init_failed = false;
    for c in spec.init_containers.iter().flatten() {
        let (s, _, _, code) = container_status(ctx, c, all, &uid, mem, true);
        if code != Some(0) {
            init_done = false;
            if code.is_some() && policy == "Never" {
                init_failed = true;
            }
        }
        init_statuses.push(s);
    }
    let mut statuses = Vec::new();
    let (mut running, mut all_ready, mut exited, mut failed) = (0, true, 0, 0);
    for c in &spec.containers {
        let (s, r, ready, code) = container_status(ctx, c, all, &uid, mem, false);
        if r {
            running += 1;
        }
        if !ready {
            all_ready = false;
        }
        if let Some(code) = code {
            exited += 1;
            if code != 0 {
                failed += 1;
            }
        }
        statuses.push(s);
    }
    let n = spec.containers.len();
    let phase = if init_failed {
        "Failed"
    } else if !init_done {
        "Pending"
    } else if exited == n && n > 0 && (policy == "Never" || (policy == "OnFailure" && failed == 0))
    {
        if failed > 0 { "Failed" } else { "Succeeded" }
    } else if running > 0 || exited > 0 {
        "Running"
    } else {
        "Pending"
    };
    // The kubelet never takes a pod out of a terminal phase.
    let old_phase = old.and_then(|s| s.phase.as_deref());
    let phase = match old_phase {
        Some(p @ ("Succeeded" | "Failed")) => p,
        _ => phase,
    };
    let sandbox_ok = !pod_ip.is_empty();
    let ready = init_done && all_ready && n > 0 && phase == "Running";
    let ready_reason = if ready {
        None
    } else if phase == "Succeeded" || phase == "Failed" {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ok,
            None,
            old_conds.as_ref(),
        ),
        condition(
            "Initialized",
            init_done,
            (!init_done).then_some("ContainersNotInitialized"),
            old_conds.as_ref(),
        ),
        condition("Ready", ready, ready_reason, old_conds.as_ref()),
        condition("ContainersReady", ready, ready_reason, old_conds.as_ref()),
    ];
    conditions.push(condition("PodScheduled", true, None, old_conds.as_ref()));
    let start_time = old
        .and_then(|s| s.start_time.as_ref())
        .map(|t| json!(t))
        .unwrap_or_else(|| json!(now_rfc3339()));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": ctx.node.node_ip,
        "hostIPs": [{"ip": ctx.node.node_ip}],
        "startTime": start_time,
        "qosClass": qos,
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    let ephemeral: Vec<Value> = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(ephemeral_as_container)
        .map(|c| {
            let (mut s, _, _, _) = container_status(ctx, &c, all, &uid, mem, false);
            // Never Ready: an ephemeral container takes no part in the pod's readiness.
            s["ready"] = json!(false);
            s
        })
        .collect();
    if !ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(ephemeral);
    }
    if !pod_ip.is_empty() {
        status["podIP"] = json!(pod_ip);
        status["podIPs"] = json!([{"ip": pod_ip}]);
    }
    if let Some(e) = &mem.sandbox_error {
        status["message"] = json!(e);
    }
    if matches!(old_phase, Some("Succeeded" | "Failed")) {
        for key in ["reason", "message"] {
            if let Some(v) = old
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.get(key).cloned())
            {
                status[key] = v;
            }
        }
    }
    status
}
