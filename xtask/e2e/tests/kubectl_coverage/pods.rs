//! The commands that reach into a running pod through the node's agent: `run`,
//! `logs`, `exec`, `cp`, `attach`, `port-forward`.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_testkit::ChildGuard;

use crate::common::{Cluster, ready};
use crate::{BUSYBOX, Coverage, contains, first_line, http_get, until};

/// The commands that reach into a running pod through the node's agent.
pub fn pod_cases(cov: &mut Coverage, c: &Cluster) {
    let k = &c.kubectl;
    cov.case("run", || {
        contains(
            &k.ok(&[
                "run",
                "shell",
                &format!("--image={BUSYBOX}"),
                "--image-pull-policy=Never",
                "--",
                "sh",
                "-c",
                "echo shell-started; exec sleep 3600",
            ]),
            "pod/shell created",
        );
        c.wait_pod("shell", "Ready", ready);
    });
    cov.case("logs", || {
        until("the shell pod's log", 20, || {
            k.ok(&["logs", "shell"]).contains("shell-started")
        });
        contains(&k.ok(&["logs", "job/once"]), "job-done");
    });
    cov.case("exec", || {
        assert_eq!(k.ok(&["exec", "shell", "--", "hostname"]).trim(), "shell");
        let out = k.run(&["exec", "shell", "--", "sh", "-c", "exit 4"]);
        assert_eq!(out.status.code(), Some(4), "the exit code comes back");
    });
    cov.case("cp", || {
        let local = c.dir.path().join("to-pod.txt");
        std::fs::write(&local, "copied through kubectl cp\n").expect("write");
        k.ok(&["cp", local.to_str().expect("utf-8"), "shell:/tmp/in.txt"]);
        assert_eq!(
            k.ok(&["exec", "shell", "--", "cat", "/tmp/in.txt"]),
            "copied through kubectl cp\n"
        );
        let back = c.dir.path().join("from-pod.txt");
        k.ok(&["cp", "shell:/tmp/in.txt", back.to_str().expect("utf-8")]);
        assert_eq!(
            std::fs::read_to_string(&back).expect("copied back"),
            "copied through kubectl cp\n"
        );
    });
    cov.case("attach", || {
        k.ok(&[
            "run",
            "echo",
            &format!("--image={BUSYBOX}"),
            "--image-pull-policy=Never",
            "--stdin",
            "--attach=false",
            "--",
            "sh",
            "-c",
            "while read l; do echo got:$l; done",
        ]);
        c.wait_pod("echo", "Ready", ready);
        let mut child = k
            .cmd(&["attach", "-i", "echo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl attach");
        let mut input = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let _guard = ChildGuard(child);
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // Output reaches attach once the session is up: write until the echo comes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l == "got:hello") {
            assert!(
                Instant::now() < deadline,
                "no echo through attach: {seen:?}"
            );
            input.write_all(b"hello\n").expect("write stdin");
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
                seen.push(line);
            }
        }
    });
    cov.case("port-forward", || {
        let pod = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        let pod = pod.lines().next().expect("a web pod").to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = k
            .cmd(&["port-forward", &pod, &format!("{port}:8080")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl port-forward");
        let mut child = ChildGuard(child);
        contains(&first_line(&mut child), "Forwarding from 127.0.0.1");
        contains(&http_get(port, "/healthz"), "200");
    });
}
