//! berth-server under abuse, as the security review found it could be taken down
//! before authentication: a client that opens a connection and says nothing is
//! dropped after the TLS handshake timeout; requests beyond `--max-*-requests-inflight`
//! are answered 429 TooManyRequests with Retry-After (watches and `system:masters` not
//! counted); a watch with a huge `timeoutSeconds` and a delete with a huge grace
//! period are served without bringing the server down. The data dir is its owner's
//! only: the dir and the pki dir 0700, the store files, keys and kubeconfigs 0600.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::BerthServer;

fn start(args: &[&str]) -> (BerthServer, tempfile::TempDir) {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        home.path(),
        args,
    );
    (server, home)
}

/// curl as the test token user `alice` (no groups): status code and body.
fn curl(server: &BerthServer, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-X", method])
        .args(["-H", "Authorization: Bearer alice-token"])
        .args(["-H", "Content-Type: application/json"])
        .arg("--cacert")
        .arg(server.ca())
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let (server, _home) = start(&[]);
    let mut conn = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    // Nothing sent: the server closes (EOF or reset) once the handshake times out.
    let closed = matches!(conn.read(&mut buf), Ok(0) | Err(_));
    let took = started.elapsed();
    assert!(closed, "the connection was closed");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(16),
        "closed after {took:?} (TLS handshake timeout 10 s)"
    );
    // The server still serves.
    assert_eq!(curl(&server, "GET", "/version", None).0, 200);
}

#[test]
fn requests_beyond_the_in_flight_limit_get_429_with_retry_after() {
    let (server, _home) = start(&["--max-mutating-requests-inflight=1"]);
    // A POST whose body never finishes holds the one mutating slot: one alice may
    // make (every authenticated user may create a SelfSubjectAccessReview), so it gets
    // past authorization to reading its body.
    let mut stalled = Command::new("curl")
        .args(["-s", "--max-time", "30", "-X", "POST"])
        .args(["-H", "Authorization: Bearer alice-token"])
        .args(["-H", "Content-Type: application/json"])
        .arg("--cacert")
        .arg(server.ca())
        // `-T -` streams stdin as it comes (`--data-binary @-` reads it all first).
        .args(["-T", "-"])
        .arg(format!(
            "{}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            server.url()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    let mut stdin = stalled.stdin.take().expect("stdin");
    stdin.write_all(b"{\"metadata\":").expect("part of a body");
    stdin.flush().expect("flush");
    let body = r#"{"metadata":{"name":"second"}}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, text) = loop {
        let (code, text) = curl(
            &server,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(body),
        );
        if code == 429 || Instant::now() > deadline {
            break (code, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 429, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).expect("a Status");
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(
        status["message"],
        "Too many requests, please try again later."
    );
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    // Reads have their own budget, and watches are not counted.
    assert_ne!(
        curl(
            &server,
            "GET",
            "/api/v1/namespaces/default/configmaps",
            None
        )
        .0,
        429
    );
    drop(stdin);
    let _ = stalled.kill();
    let _ = stalled.wait();
}

#[test]
fn huge_timeouts_and_grace_periods_do_not_bring_the_server_down() {
    let (server, home) = start(&[]);
    let kubeconfig = server.kubeconfig();
    let admin = berth_testkit::Kubectl::find(&kubeconfig, home.path());
    let Some(admin) = admin else { return };
    // A watch asking for an absurd timeout is served (the client gives up after 2 s).
    let watch = admin.run(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=9223372036854775807",
        "--request-timeout=2s",
    ]);
    let err = String::from_utf8_lossy(&watch.stderr);
    assert!(
        !err.contains("connection refused") && !err.contains("EOF"),
        "the watch was served: {err}"
    );
    // A pod on a node, deleted with the largest grace period there is.
    admin.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: busybox}]\n",
    );
    let out = admin.run(&[
        "delete",
        "pod",
        "p",
        "--wait=false",
        "--grace-period=9223372036854775807",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still up.
    assert_eq!(curl(&server, "GET", "/version", None).0, 200);
    let pod = admin.json(&["get", "pod", "p"]);
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
}

#[test]
fn the_data_dir_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (server, _home) = start(&[]);
    let dir = server.dir().to_path_buf();
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("pki")), 0o700);
    assert_eq!(mode(&dir.join("store.redb")), 0o600);
    assert_eq!(mode(&dir.join("admin.kubeconfig")), 0o600);
    for entry in std::fs::read_dir(dir.join("pki"))
        .expect("pki dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains("key") {
            assert_eq!(mode(&entry.path()), 0o600, "{name}");
        }
    }
}
