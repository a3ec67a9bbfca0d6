//! `berth-server --config`: a YAML file of the server's flags applies as if given on
//! the command line (camelCase keys too), a flag on the command line wins, and an
//! unknown key stops the server naming it; `--logging-format=json` lines parse.

use std::process::Command;

use berth_testkit::BerthServer;

/// The HTTP status of `GET /api/v1/namespaces/default/pods` as token user alice.
fn alice_lists_pods(server: &BerthServer) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "Authorization: Bearer alice-token"])
        .arg(format!("{}/api/v1/namespaces/default/pods", server.url()))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.yaml");
    // AlwaysAllow from the file: alice, in no group, may list pods.
    std::fs::write(
        &config,
        "authorizationMode: AlwaysAllow\ncontrollers: [serviceaccount]\nnode-monitor-grace-period: 3s\n",
    )
    .expect("write the config");
    let flag = format!("--config={}", config.display());
    let server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        dir.path(),
        &[&flag],
    );
    assert_eq!(alice_lists_pods(&server), "200");
    drop(server);

    // The command line wins over the file: RBAC again, alice is refused.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        dir2.path(),
        &[&flag, "--authorization-mode=RBAC"],
    );
    assert_eq!(alice_lists_pods(&server), "403");

    // An unknown key: the server does not start, and says which.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "secure-port: 16999\nno-such-flag: 1\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_berth-server"))
        .arg(format!("--config={}", bad.display()))
        .args(["--data-dir", &dir.path().join("bad").display().to_string()])
        .output()
        .expect("run berth-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}

/// `--logging-format=json -v 2`: every line berth-server logs is a JSON object with a
/// level, a target and a message, and berth-server's debug lines are among them.
#[test]
fn json_log_lines_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let log = dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-server"))
        .args(["--logging-format=json", "-v", "2"])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("berth-server");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("berth-server serving") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 1, "{text}");
    let mut debug = false;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        debug |=
            v["level"] == "DEBUG" && v["target"].as_str().is_some_and(|t| t.starts_with("berth"));
    }
    assert!(debug, "no berth debug line at -v 2: {text}");
    assert!(text.contains("berth-server serving"), "{text}");
}
