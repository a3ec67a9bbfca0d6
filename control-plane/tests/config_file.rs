//! `berth-server --config`: a YAML file of the server's flags applies as if given on
//! the command line (camelCase keys too), a flag on the command line wins, and an
//! unknown key stops the server naming it.

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
