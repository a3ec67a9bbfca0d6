//! The pod-level library against real kernels: a pause sandbox and testserver/busybox
//! containers in it, logs, exec, stop with grace, exit codes, OOM kills, a library
//! process killed with -9 and a new one re-adopting the containers, and no leftovers.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_runtime::logs::Rotation;
use berth_runtime::pod::{
    ContainerConfig, ContainerState, Resources, Runtime, RuntimeConfig, SandboxConfig,
};

struct Env {
    _dir: tempfile::TempDir,
    rt: Runtime,
    data: PathBuf,
    logs: PathBuf,
    cgroup_parent: String,
}

/// Whatever a test left — after a failed assertion too — is stopped and removed:
/// containers, sandboxes (netns pins), overlay mounts, the test's cgroups.
impl Drop for Env {
    fn drop(&mut self) {
        let sandboxes = self.rt.sandboxes();
        for id in self.rt.containers() {
            if sandboxes.contains(&id) {
                continue;
            }
            let _ = self.rt.stop_container(&id, Duration::ZERO);
            let _ = self.rt.remove_container(&id);
        }
        for id in sandboxes {
            let _ = self.rt.remove_sandbox(&id);
        }
        for dir in common::cgroup_dirs(&self.cgroup_parent) {
            let mut dirs = walk(&dir);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            dirs.push(dir);
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn env() -> Option<Env> {
    if !berth_testkit_is_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    common::store_with_images(&data);
    let rt = Runtime::open(RuntimeConfig {
        state_dir: dir.path().join("state"),
        data_dir: data.clone(),
        runtime_binary: common::runtime_binary(),
        log_rotation: Rotation::default(),
    })
    .expect("open runtime");
    let name = dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().replace('.', ""))
        .unwrap_or_default();
    Some(Env {
        logs: dir.path().join("logs"),
        cgroup_parent: format!("berthtest-{name}"),
        _dir: dir,
        rt,
        data,
    })
}

fn berth_testkit_is_root() -> bool {
    if berth_testkit::is_root() {
        return true;
    }
    berth_testkit::skip("needs root (namespaces, mounts, cgroups)");
    false
}

fn sandbox_config(e: &Env, id: &str, share_pid: bool) -> SandboxConfig {
    SandboxConfig {
        id: id.into(),
        hostname: format!("{id}-host"),
        cgroup_parent: format!("{}/pod{id}", e.cgroup_parent),
        share_process_namespace: share_pid,
        host_network: false,
        host_pid: false,
        host_ipc: false,
        user_namespace: None,
        pause_image: "berth.local/pause:v1".into(),
        nameservers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        dns_options: vec!["ndots:5".into()],
        host_aliases: vec![("10.1.2.3".into(), vec!["foo.example".into()])],
        log_dir: e.logs.join(id),
        sysctls: vec![
            ("net.ipv4.ip_local_port_range".into(), "20000 30000".into()),
            ("kernel.shm_rmid_forced".into(), "1".into()),
        ],
    }
}

fn container(e: &Env, sandbox: &str, name: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        id: format!("{sandbox}-{name}"),
        sandbox_id: sandbox.into(),
        name: name.into(),
        image: image.into(),
        log_path: e.logs.join(sandbox).join(format!("{name}.log")),
        ..Default::default()
    }
}

fn wait_state(rt: &Runtime, id: &str, want: impl Fn(&ContainerState) -> bool) -> ContainerState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = rt.status(id).expect("status").state;
        if want(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{id} stuck in {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec(rt: &Runtime, id: &str, cmd: &[&str]) -> (i32, String) {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let (code, out, err) = rt
        .exec_sync(id, &cmd, Duration::from_secs(10))
        .expect("exec");
    (
        code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        ),
    )
}

fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn assert_clean(e: &Env, ids: &[&str]) {
    assert!(
        common::mounts_under(&e.data).is_empty(),
        "mounts left: {:?}",
        common::mounts_under(&e.data)
    );
    let left = common::cgroup_dirs(&e.cgroup_parent);
    let mut leaked = Vec::new();
    for dir in left {
        for entry in walk(&dir) {
            if ids.iter().any(|id| entry.ends_with(id)) {
                leaked.push(entry);
            }
        }
    }
    assert!(leaked.is_empty(), "cgroups left: {leaked:?}");
    for id in ids {
        assert!(e.rt.root().load(id).is_err(), "state of {id} left");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
            out.extend(walk(&entry.path()));
        }
    }
    out
}

/// Removes the test's cgroup parents (empty once every container is gone; the kernel
/// may report a parent busy for a moment after its last child went).
fn remove_parents(e: &Env) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = Vec::new();
        for dir in common::cgroup_dirs(&e.cgroup_parent) {
            let mut dirs = walk(&dir);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            dirs.push(dir);
            for d in dirs {
                if std::fs::remove_dir(&d).is_err() {
                    left.push(d);
                }
            }
        }
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod cgroups not removable: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sandbox_and_containers_run_log_exec_and_stop() {
    let Some(e) = env() else { return };
    let sb =
        e.rt.run_sandbox(&sandbox_config(&e, "sb1", false))
            .expect("sandbox");
    assert!(common::process_alive(sb.pause_pid));
    assert!(sb.netns.exists());

    let mut ts = container(&e, "sb1", "web", "berth.local/testserver:v1");
    ts.env = vec![("GREETING".into(), "hello".into())];
    ts.resources = Resources {
        cpu_shares: Some(512),
        memory_limit: Some(64 << 20),
        pids_limit: Some(100),
        ..Default::default()
    };
    e.rt.create_container(&ts).expect("create web");
    assert_eq!(
        e.rt.status(&ts.id).expect("status").state,
        ContainerState::Created
    );
    e.rt.start_container(&ts.id).expect("start web");
    wait_state(&e.rt, &ts.id, |s| *s == ContainerState::Running);

    // Same UTS namespace as the sandbox; the init layer's files; env merged.
    let (code, out) = exec(&e.rt, &ts.id, &["hostname"]);
    assert_eq!((code, out.trim()), (0, "sb1-host"));
    let (_, hosts) = exec(&e.rt, &ts.id, &["cat", "/etc/hosts"]);
    assert!(hosts.contains("10.1.2.3\tfoo.example"), "{hosts}");
    let (_, resolv) = exec(&e.rt, &ts.id, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"),
        "{resolv}"
    );
    let (_, envs) = exec(&e.rt, &ts.id, &["env"]);
    assert!(
        envs.contains("GREETING=hello") && envs.contains("PATH=/usr/local/sbin"),
        "{envs}"
    );
    // The pod's sysctls, set by the pause container in the namespaces the pod shares
    // (network and IPC), seen from the app container.
    let (_, range) = exec(
        &e.rt,
        &ts.id,
        &["cat", "/proc/sys/net/ipv4/ip_local_port_range"],
    );
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["20000", "30000"]
    );
    let (_, forced) = exec(&e.rt, &ts.id, &["cat", "/proc/sys/kernel/shm_rmid_forced"]);
    assert_eq!(forced.trim(), "1");
    // Its own cgroup under /sys/fs/cgroup, read-only: the 64Mi limit reads back.
    let limit = if berth_runtime::cgroups::is_v2() {
        "/sys/fs/cgroup/memory.max"
    } else {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    let (_, bytes) = exec(&e.rt, &ts.id, &["cat", limit]);
    assert_eq!(bytes.trim(), "67108864", "{limit}");
    let (code, _) = exec(&e.rt, &ts.id, &["sh", "-c", &format!("echo 1 > {limit}")]);
    assert_ne!(code, 0, "the container's cgroup files are read-only");
    // Exit codes pass through exec.
    assert_eq!(exec(&e.rt, &ts.id, &["sh", "-c", "exit 3"]).0, 3);
    // Its own PID namespace: the testserver is PID 1 there.
    let (_, ps) = exec(&e.rt, &ts.id, &["cat", "/proc/1/cmdline"]);
    assert!(ps.starts_with("/testserver"), "{ps:?}");
    // The HTTP server answers inside the pod's network namespace (loopback up first,
    // as the CNI loopback plugin would).
    let st = std::process::Command::new("nsenter")
        .arg(format!("--net={}", sb.netns.display()))
        .args(["ip", "link", "set", "lo", "up"])
        .status()
        .expect("nsenter");
    assert!(st.success());
    let (code, body) = exec(&e.rt, &ts.id, &["wget", "-qO-", "http://127.0.0.1:8080/"]);
    assert_eq!((code, body.trim()), (0, "sb1-host"));
    // cgroup limits are set in the kubelet-like tree.
    let state = e.rt.root().load(&ts.id).expect("state");
    assert!(state.cgroup.ends_with("podsb1/sb1-web"), "{}", state.cgroup);
    let mem = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/memory.limit_in_bytes",
        state.cgroup
    ))
    .expect("memory limit");
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    let pids = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/{}/pids.max", state.cgroup))
        .expect("pids.max");
    assert_eq!(pids.trim(), "100");

    // containerd's default capability set, and no_new_privs off by default.
    let (_, status) = exec(&e.rt, &ts.id, &["cat", "/proc/1/status"]);
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");
    // A privileged container gets every capability and a writable /sys.
    let mut privileged = container(&e, "sb1", "priv", "berth.local/busybox:1.35");
    privileged.command = vec![
        "sh".into(),
        "-c".into(),
        "grep CapEff /proc/self/status; grep ' /sys ' /proc/self/mounts".into(),
    ];
    privileged.privileged = true;
    e.rt.create_container(&privileged)
        .expect("create privileged");
    e.rt.start_container(&privileged.id)
        .expect("start privileged");
    wait_state(&e.rt, &privileged.id, |s| {
        matches!(s, ContainerState::Exited(_))
    });
    let lines = log_lines(&privileged.log_path).join("\n");
    let ours = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .expect("CapBnd");
    assert!(lines.contains(&format!("CapEff:\t{ours}")), "{lines}");
    assert!(lines.contains("sysfs rw"), "{lines}");
    e.rt.remove_container(&privileged.id)
        .expect("remove privileged");

    // A short-lived container: exit code and CRI logs.
    let mut job = container(&e, "sb1", "job", "berth.local/busybox:1.35");
    job.command = vec![
        "sh".into(),
        "-c".into(),
        "echo out-line; echo err-line >&2; printf partial; exit 7".into(),
    ];
    e.rt.create_container(&job).expect("create job");
    e.rt.start_container(&job.id).expect("start job");
    let st = wait_state(&e.rt, &job.id, |s| matches!(s, ContainerState::Exited(_)));
    let ContainerState::Exited(exit) = st else {
        unreachable!()
    };
    assert_eq!((exit.code, exit.oom_killed), (7, false));
    let lines = log_lines(&job.log_path);
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F out-line")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stderr F err-line")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout P partial")),
        "{lines:?}"
    );

    // Stop: SIGTERM is ignored by the testserver as PID 1 without a handler, so the
    // grace period runs out and SIGKILL ends it: 137, not OOM.
    let started = Instant::now();
    e.rt.stop_container(&ts.id, Duration::from_millis(300))
        .expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let st = wait_state(&e.rt, &ts.id, |s| matches!(s, ContainerState::Exited(_)));
    let ContainerState::Exited(exit) = st else {
        unreachable!()
    };
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (137, Some(9), false)
    );
    let web_log = log_lines(&ts.log_path);
    assert!(
        web_log
            .iter()
            .any(|l| l.contains(" stdout F testserver: http :8080")),
        "{web_log:?}"
    );

    for id in [&job.id, &ts.id] {
        e.rt.remove_container(id).expect("remove");
    }
    // berth-pause exits 0 on SIGTERM.
    e.rt.stop_container("sb1", Duration::from_secs(5))
        .expect("stop pause");
    let st = wait_state(&e.rt, "sb1", |s| matches!(s, ContainerState::Exited(_)));
    assert!(
        matches!(st, ContainerState::Exited(x) if x.code == 0 && x.signal.is_none()),
        "{st:?}"
    );
    e.rt.remove_sandbox("sb1").expect("remove sandbox");
    assert!(!common::process_alive(sb.pause_pid));
    assert!(!sb.netns.exists());
    assert_clean(&e, &["sb1", "sb1-web", "sb1-job"]);
    remove_parents(&e);
}

#[test]
fn memory_hog_is_oom_killed_and_shared_pid_namespace_sees_pause() {
    let Some(e) = env() else { return };
    e.rt.run_sandbox(&sandbox_config(&e, "sb2", true))
        .expect("sandbox");
    let mut hog = container(&e, "sb2", "hog", "berth.local/busybox:1.35");
    hog.command = vec!["sh".into(), "-c".into(), "ps; tail /dev/zero".into()];
    hog.resources.memory_limit = Some(16 << 20);
    e.rt.create_container(&hog).expect("create");
    e.rt.start_container(&hog.id).expect("start");
    let st = wait_state(&e.rt, &hog.id, |s| matches!(s, ContainerState::Exited(_)));
    let ContainerState::Exited(exit) = st else {
        unreachable!()
    };
    assert_eq!((exit.code, exit.oom_killed), (137, true), "{exit:?}");
    // shareProcessNamespace: the pause process is visible (PID 1 of the shared namespace).
    let lines = log_lines(&hog.log_path);
    assert!(lines.iter().any(|l| l.contains("/pause")), "{lines:?}");
    e.rt.remove_container(&hog.id).expect("remove");
    e.rt.remove_sandbox("sb2").expect("remove sandbox");
    assert_clean(&e, &["sb2", "sb2-hog"]);
    remove_parents(&e);
}

#[test]
fn bad_input_leaves_nothing_behind() {
    let Some(e) = env() else { return };
    e.rt.run_sandbox(&sandbox_config(&e, "sb3", false))
        .expect("sandbox");
    // An image that is not there.
    let missing = container(&e, "sb3", "nope", "berth.local/nope:v1");
    let err = e.rt.create_container(&missing).expect_err("missing image");
    assert!(err.to_string().contains("not present"), "{err}");
    // An executable that is not in the image.
    let mut bad = container(&e, "sb3", "badcmd", "berth.local/busybox:1.35");
    bad.command = vec!["/no/such/binary".into()];
    let err = e.rt.create_container(&bad).expect_err("bad command");
    assert!(err.to_string().contains("/no/such/binary"), "{err}");
    // A user the image does not know.
    let mut user = container(&e, "sb3", "baduser", "berth.local/busybox:1.35");
    user.command = vec!["true".into()];
    user.run_as_user = Some(4242);
    user.working_dir = Some("/tmp".into());
    e.rt.create_container(&user)
        .expect("numeric users need no passwd entry");
    e.rt.remove_container(&user.id).expect("remove");
    // A container in a sandbox that does not exist.
    let orphan = container(&e, "nosuch", "x", "berth.local/busybox:1.35");
    assert!(e.rt.create_container(&orphan).is_err());
    e.rt.remove_sandbox("sb3").expect("remove sandbox");
    assert_clean(&e, &["sb3", "sb3-nope", "sb3-badcmd", "sb3-baduser"]);
    assert!(
        std::fs::read_dir(e.data.join("containers"))
            .expect("dir")
            .next()
            .is_none(),
        "container dirs left"
    );
    remove_parents(&e);
}

/// The library's user (the agent) is killed with -9 and a new one opens the same state:
/// the running container was not restarted (same PID, same start time) and a container
/// that exited meanwhile reports its exit code.
#[test]
fn readopt_after_kill_9() {
    if let Ok(dir) = std::env::var("BERTH_READOPT_CHILD") {
        readopt_child(Path::new(&dir));
        return;
    }
    let Some(e) = env() else { return };
    let state_dir = e.rt.root().dir().to_path_buf();
    let ready = state_dir.parent().expect("parent").join("READY");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "readopt_after_kill_9",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERTH_READOPT_CHILD", state_dir.parent().expect("parent"))
        .env("BERTH_READOPT_CGROUP", &e.cgroup_parent)
        .spawn()
        .expect("spawn child");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(
            child.try_wait().expect("wait child").is_none(),
            "child exited before it was ready"
        );
        assert!(Instant::now() < deadline, "child not ready in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let _ = child.wait();

    let long = e.rt.root().load("sb4-long").expect("state of long");
    // The short one exits 1 s after start, while no library process exists.
    let st = wait_state(&e.rt, "sb4-short", |s| {
        matches!(s, ContainerState::Exited(_))
    });
    let ContainerState::Exited(exit) = st else {
        unreachable!()
    };
    assert_eq!(exit.code, 5);
    let status = e.rt.status("sb4-long").expect("status");
    assert_eq!(status.state, ContainerState::Running);
    assert_eq!(status.pid, long.pid);
    assert!(long.alive(), "the long container was restarted or died");
    let (code, out) = exec(&e.rt, "sb4-long", &["cat", "/proc/1/cmdline"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("sleep"), "{out:?}");

    for id in ["sb4-long", "sb4-short"] {
        e.rt.stop_container(id, Duration::from_millis(100))
            .expect("stop");
        e.rt.remove_container(id).expect("remove");
    }
    e.rt.remove_sandbox("sb4").expect("remove sandbox");
    assert_clean(&e, &["sb4", "sb4-long", "sb4-short"]);
    remove_parents(&e);
}

fn readopt_child(dir: &Path) {
    let rt = Runtime::open(RuntimeConfig {
        state_dir: dir.join("state"),
        data_dir: dir.join("data"),
        runtime_binary: common::runtime_binary(),
        log_rotation: Rotation::default(),
    })
    .expect("open runtime");
    let cgroup = std::env::var("BERTH_READOPT_CGROUP").expect("cgroup parent");
    let sandbox = SandboxConfig {
        id: "sb4".into(),
        hostname: "sb4".into(),
        cgroup_parent: format!("{cgroup}/podsb4"),
        pause_image: "berth.local/pause:v1".into(),
        log_dir: dir.join("logs"),
        ..Default::default()
    };
    rt.run_sandbox(&sandbox).expect("sandbox");
    for (name, script) in [("long", "exec sleep 1000"), ("short", "sleep 1; exit 5")] {
        let c = ContainerConfig {
            id: format!("sb4-{name}"),
            sandbox_id: "sb4".into(),
            name: name.into(),
            image: "berth.local/busybox:1.35".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: dir.join("logs").join(format!("{name}.log")),
            ..Default::default()
        };
        rt.create_container(&c).expect("create");
        rt.start_container(&c.id).expect("start");
    }
    std::fs::write(dir.join("READY"), b"ready").expect("write READY");
    // This process plays the dead agent's predecessor: it only has to stay alive until
    // the test kills it, so the sleep decides nothing.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
