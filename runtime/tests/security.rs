//! What a pod container may do to the kernel: seccomp (`RuntimeDefault` = moby's
//! profile, `Localhost` files, `Unconfined`) and the device allow-list (runc's defaults,
//! the cgroup v2 device program or the v1 `devices` controller). Each check is run
//! against a container the restriction does not apply to as well, so a pass means the
//! restriction — not something else on the host — refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_runtime::logs::Rotation;
use berth_runtime::pod::{
    ContainerConfig, ContainerState, Runtime, RuntimeConfig, SandboxConfig, SeccompProfile,
};

const BUSYBOX: &str = "berth.local/busybox:1.35";

struct Env {
    dir: tempfile::TempDir,
    rt: Runtime,
    logs: PathBuf,
    cgroup_parent: String,
}

/// Stops and removes whatever the test made, after a failed assertion too.
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
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in common::cgroup_dirs(&self.cgroup_parent) {
            let mut dirs = walk(&dir);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            dirs.push(dir);
            for d in dirs {
                while std::fs::remove_dir(&d).is_err() && d.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
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

fn env() -> Option<Env> {
    if !berth_testkit::is_root() {
        berth_testkit::skip("needs root (namespaces, mounts, cgroups, seccomp, BPF)");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    common::store_with_images(&data);
    let rt = Runtime::open(RuntimeConfig {
        state_dir: dir.path().join("state"),
        data_dir: data,
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
        dir,
        rt,
    })
}

fn sandbox(e: &Env, id: &str) {
    e.rt.run_sandbox(&SandboxConfig {
        id: id.into(),
        hostname: format!("{id}-host"),
        cgroup_parent: format!("{}/pod{id}", e.cgroup_parent),
        pause_image: "berth.local/pause:v1".into(),
        log_dir: e.logs.join(id),
        ..Default::default()
    })
    .expect("sandbox");
}

/// A `sleep` container in sandbox `sb`, started.
fn sleeper(e: &Env, sb: &str, name: &str, edit: impl FnOnce(&mut ContainerConfig)) -> String {
    let mut c = ContainerConfig {
        id: format!("{sb}-{name}"),
        sandbox_id: sb.into(),
        name: name.into(),
        image: BUSYBOX.into(),
        command: vec!["sleep".into(), "300".into()],
        log_path: e.logs.join(sb).join(format!("{name}.log")),
        ..Default::default()
    };
    edit(&mut c);
    e.rt.create_container(&c)
        .unwrap_or_else(|err| panic!("create {name}: {err}"));
    e.rt.start_container(&c.id)
        .unwrap_or_else(|err| panic!("start {name}: {err}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.rt.status(&c.id).expect("status").state != ContainerState::Running {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.id
}

fn sh(e: &Env, id: &str, script: &str) -> (i32, String) {
    let cmd = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let (code, out, err) =
        e.rt.exec_sync(id, &cmd, Duration::from_secs(10))
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

#[test]
fn runtime_default_confines_the_container_and_its_execs() {
    let Some(e) = env() else { return };
    sandbox(&e, "sc1");
    let confined = sleeper(&e, "sc1", "confined", |c| {
        c.seccomp = SeccompProfile::RuntimeDefault;
    });
    let free = sleeper(&e, "sc1", "free", |_| {});

    // PID 1 (the workload, not only an exec'd shell) is in filter mode.
    let (code, out) = sh(&e, &confined, "grep Seccomp: /proc/1/status");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Seccomp:\t2"), "RuntimeDefault pid 1: {out}");
    let (_, out) = sh(&e, &free, "grep Seccomp: /proc/1/status");
    assert!(out.contains("Seccomp:\t0"), "Unconfined pid 1: {out}");

    // A user namespace is what an unconfined container may make and moby's profile
    // forbids (unshare needs CAP_SYS_ADMIN there).
    let (code, out) = sh(&e, &free, "unshare -U true");
    assert_eq!(code, 0, "unconfined unshare -U should work here: {out}");
    let (code, out) = sh(&e, &confined, "unshare -U true");
    assert_ne!(code, 0, "unshare -U under RuntimeDefault: {out}");
    assert!(out.contains("Operation not permitted"), "{out}");

    // mount(2) is allowed only with CAP_SYS_ADMIN, as in moby's profile (busybox says
    // "permission denied" for EPERM).
    let (code, out) = sh(
        &e,
        &confined,
        "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m",
    );
    assert_ne!(code, 0, "mount under RuntimeDefault: {out}");
    assert!(out.contains("permission denied"), "{out}");

    // What the profile allows still works: threads/forks (clone without namespace
    // flags), sockets of ordinary families, personality queries.
    let (code, out) = sh(
        &e,
        &confined,
        "echo a | cat && wc -l /proc/self/status >/dev/null && nc -h 2>&1 | head -1 >/dev/null; echo ok",
    );
    assert!(code == 0 && out.lines().any(|l| l == "ok"), "{out}");
}

#[test]
fn a_localhost_profile_denying_mkdir_gives_eperm() {
    let Some(e) = env() else { return };
    let profile = e.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write profile");
    sandbox(&e, "sc2");
    let denied = sleeper(&e, "sc2", "denied", |c| {
        c.seccomp = SeccompProfile::Localhost {
            path: profile.clone(),
        };
    });
    let free = sleeper(&e, "sc2", "free", |_| {});
    let (code, out) = sh(&e, &free, "mkdir /tmp/d");
    assert_eq!(code, 0, "mkdir unconfined: {out}");
    let (code, out) = sh(&e, &denied, "mkdir /tmp/d");
    assert_ne!(code, 0, "mkdir under the Localhost profile");
    assert!(out.contains("Operation not permitted"), "EPERM: {out}");
    let (_, out) = sh(&e, &denied, "grep Seccomp: /proc/1/status");
    assert!(out.contains("Seccomp:\t2"), "{out}");
}

#[test]
fn a_profile_berth_cannot_load_fails_the_container() {
    let Some(e) = env() else { return };
    sandbox(&e, "sc3");
    let bad = e.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_SOMETIMES"}"#).expect("write");
    for (name, path, want) in [
        ("missing", e.dir.path().join("nope.json"), "nope.json"),
        ("bad", bad, "SCMP_ACT_SOMETIMES"),
    ] {
        let c = ContainerConfig {
            id: format!("sc3-{name}"),
            sandbox_id: "sc3".into(),
            name: name.into(),
            image: BUSYBOX.into(),
            command: vec!["true".into()],
            log_path: e.logs.join("sc3").join(format!("{name}.log")),
            seccomp: SeccompProfile::Localhost { path },
            ..Default::default()
        };
        let err =
            e.rt.create_container(&c)
                .expect_err("a profile that cannot be loaded must fail the container");
        let text = err.to_string();
        assert!(
            text.contains("seccomp") && text.contains(want),
            "the error names seccomp and the problem: {text}"
        );
        assert!(!e.rt.containers().contains(&c.id), "nothing left of {name}");
    }
}

/// A shell command that makes `c 4:1` (a host tty, which the host itself lets root
/// open) in `dir` and opens it, printing where it got.
fn mknod_and_open(dir: &str) -> String {
    format!("mknod {dir}/t41 c 4 1 && echo made && head -c0 {dir}/t41 && echo opened")
}

#[test]
fn a_default_container_can_make_a_device_node_but_not_open_it() {
    let Some(e) = env() else { return };
    sandbox(&e, "dv1");
    let plain = sleeper(&e, "dv1", "plain", |_| {});
    let privileged = sleeper(&e, "dv1", "priv", |c| c.privileged = true);

    // mknod is allowed (runc's 'm' rules), but /dev is nodev for an ordinary container
    // (its standard nodes are bind mounts of the host's): the node cannot be opened.
    // The device allow-list behind it is checked below (v1) and in the oci tests, where
    // /dev is not nodev and the refusal is the allow-list's EPERM.
    let (_, out) = sh(&e, &plain, &mknod_and_open("/dev"));
    assert!(
        out.contains("made"),
        "mknod (runc's 'm' rules allow it): {out}"
    );
    assert!(!out.contains("opened"), "opened c 4:1: {out}");
    assert!(
        out.contains("Permission denied"),
        "EACCES from nodev: {out}"
    );
    let (code, out) = sh(&e, &privileged, &mknod_and_open("/dev"));
    assert_eq!(
        code, 0,
        "privileged gets all devices and a /dev with devices: {out}"
    );
    assert!(out.contains("opened"), "{out}");

    // On a v1 host the container's devices cgroup holds runc's list, not "a *:* rwm"
    // (on v2 the oci test checks the device program).
    if !berth_runtime::cgroups::is_v2() {
        let (_, cg) = sh(&e, &plain, "cat /proc/self/cgroup");
        let path = cg
            .lines()
            .find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_string()))
            .unwrap_or_else(|| panic!("no devices cgroup in {cg}"));
        let list = std::fs::read_to_string(format!("/sys/fs/cgroup/devices{path}/devices.list"))
            .expect("devices.list");
        assert!(
            list.contains("c 1:3 rwm") && list.contains("c *:* m") && !list.contains("a *:* rwm"),
            "{list}"
        );
    }

    // The default nodes work (bind mounts of the host's), and so do ptys.
    let (code, out) = sh(
        &e,
        &plain,
        "echo x > /dev/null && head -c1 /dev/zero >/dev/null && head -c1 /dev/urandom >/dev/null \
         && head -c1 /dev/random >/dev/null && echo x > /dev/full; test -c /dev/tty && echo ok",
    );
    assert!(out.contains("No space left on device"), "/dev/full: {out}");
    assert!(code == 0 && out.lines().any(|l| l == "ok"), "{out}");

    // The rootfs overlay is nodev: a device node there (as an image layer could carry)
    // cannot be opened even by a privileged container.
    let (_, out) = sh(&e, &privileged, &mknod_and_open("/tmp"));
    assert!(out.contains("made") && !out.contains("opened"), "{out}");
    assert!(
        out.contains("Permission denied"),
        "EACCES from nodev: {out}"
    );
}

#[test]
fn runtime_default_with_no_new_privs_and_a_non_root_user() {
    let Some(e) = env() else { return };
    sandbox(&e, "sc4");
    // no_new_privs set: the filter goes on after the privileges are dropped; without
    // it, before (while CAP_SYS_ADMIN is still held). Both must end confined.
    for (name, nnp) in [("nnp", true), ("escalating", false)] {
        let id = sleeper(&e, "sc4", name, |c| {
            c.seccomp = SeccompProfile::RuntimeDefault;
            c.no_new_privileges = nnp;
            c.run_as_user = Some(1000);
        });
        let (code, out) = sh(
            &e,
            &id,
            "id -u; grep -E 'Seccomp:|NoNewPrivs:' /proc/1/status",
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("1000"), "{name}: {out}");
        assert!(out.contains("Seccomp:\t2"), "{name}: {out}");
        assert!(
            out.contains(&format!("NoNewPrivs:\t{}", u8::from(nnp))),
            "{name}: {out}"
        );
    }
}
