//! Crash safety of the state files: a process writing `state.json` in a loop is killed
//! with -9 many times; every time, the file that is there parses and is one of the
//! versions written (never a mix, never empty).

use std::path::Path;
use std::time::Duration;

use berth_runtime::state::{Root, State};

fn state(n: u64) -> State {
    State {
        id: "crash".into(),
        pid: n as i32,
        pid_start: n,
        bundle: "/b".into(),
        rootfs: "/b/rootfs".into(),
        created: format!("version {n} {}", "x".repeat((n % 4000) as usize)),
        cgroup: "berth/crash".into(),
        annotations: Default::default(),
        host_mounts: vec![],
        monitored: false,
        monitor_pid: 0,
    }
}

fn writer(dir: &Path) {
    let root = Root::new(dir);
    let mut n = 1;
    loop {
        root.save(&state(n)).expect("save");
        n += 1;
    }
}

#[test]
fn kill_9_during_state_writes_never_corrupts() {
    if let Ok(dir) = std::env::var("BERTH_STATE_WRITER") {
        writer(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Root::new(dir.path());
    root.reserve("crash").expect("reserve");
    root.save(&state(0)).expect("first save");
    for round in 0..20u64 {
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "kill_9_during_state_writes_never_corrupts",
                "--exact",
                "--nocapture",
            ])
            .env("BERTH_STATE_WRITER", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn writer");
        std::thread::sleep(Duration::from_millis(20 + (round * 7) % 40));
        child.kill().expect("kill -9");
        child.wait().expect("wait");
        let got = root.load("crash").expect("state.json parses after kill -9");
        assert_eq!(
            got,
            state(got.pid_start),
            "round {round}: a mix of versions"
        );
    }
}
