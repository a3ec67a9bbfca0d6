//! berth-server on etcd (`--etcd-servers`), driven by the real kubectl: objects kubectl
//! creates are read back, and `etcdctl` finds them under kube-apiserver's keys. With
//! etcd unreachable at start the server answers but is not ready (`/readyz` 500, API
//! requests 503) and its log names the endpoints; once etcd is up it serves. With etcd
//! stopped while serving, a write fails with 503 or 504 — never acknowledged — and
//! `/readyz` fails, while reads are served from the watch cache; when etcd is back the same process recovers: writes succeed and
//! consistent reads (which wait for the watch cache) see them, so the cache's watch
//! was re-created from where it stopped.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_testkit::{BerthServer, Etcd, Kubectl};

/// curl as the test's cluster admin: status code and body.
fn curl(server: &BerthServer, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "30", "-X", method])
        .args(["-H", "Authorization: Bearer berth-test-token"])
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

/// Polls `check` every 200 ms until it holds, for at most `secs` seconds.
fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn configmap(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"a":"b"}}}}"#
    )
}

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn berth_server_on_etcd_waits_for_it_fails_writes_while_it_is_down_and_recovers() {
    if !Etcd::available() || Etcd::etcdctl_binary().is_none() {
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    // Endpoints handed out before etcd runs: unreachable at the server's start.
    let mut etcd = Etcd::prepare(home.path(), 1, None);
    let servers = format!("--etcd-servers={}", etcd.endpoints_flag());
    let server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        home.path(),
        &[&servers, "--scheduler=false", "--controllers=false"],
    );
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };

    // Live, not ready, and saying why.
    assert_eq!(curl(&server, "GET", "/livez", None).0, 200);
    let (code, body) = curl(&server, "GET", "/readyz", None);
    assert_eq!(code, 500, "readyz before etcd answers: {body}");
    assert!(body.contains("[-]etcd failed"), "{body}");
    let (code, body) = curl(&server, "GET", CONFIGMAPS, None);
    assert_eq!(code, 503, "{body}");
    let log = server.dir().join("server.log");
    eventually(20, "the log names the etcd endpoints", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("etcd is unreachable") && l.contains(&etcd.endpoints()[0]))
    });

    etcd.start_all();
    eventually(60, "ready once etcd answers", || {
        curl(&server, "GET", "/readyz", None).0 == 200
    });
    let pid = server.pid().expect("the server runs");

    // kubectl works; etcdctl sees kube-apiserver's keys and the JSON.
    kubectl.ok(&["create", "configmap", "one", "--from-literal=a=b"]);
    assert_eq!(
        kubectl.ok(&["get", "configmap", "one", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    let out = etcd.etcdctl(&["get", "--prefix", "/registry", "--keys-only"]);
    let keys = String::from_utf8_lossy(&out.stdout);
    for key in [
        "/registry/configmaps/default/one",
        "/registry/namespaces/default",
        "/registry/services/default/kubernetes",
        "/registry/rbac.authorization.k8s.io/clusterroles/cluster-admin",
    ] {
        assert!(keys.lines().any(|k| k == key), "{key} not in etcd:\n{keys}");
    }
    let out = etcd.etcdctl(&[
        "get",
        "/registry/configmaps/default/one",
        "--print-value-only",
    ]);
    let stored: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the value is the object's JSON");
    assert_eq!(stored["data"]["a"], "b");

    // etcd down: a write is refused (503/504), /readyz fails.
    etcd.kill_all();
    let (code, body) = curl(&server, "POST", CONFIGMAPS, Some(&configmap("two")));
    assert!(
        code == 503 || code == 504,
        "a write with etcd down answered {code}: {body}"
    );
    eprintln!("a write with etcd down: {code}");
    assert_eq!(curl(&server, "GET", "/readyz", None).0, 500);
    // Reads are served from the watch cache meanwhile.
    assert_eq!(
        kubectl.ok(&["get", "configmap", "one", "-o", "jsonpath={.data.a}"]),
        "b"
    );

    // etcd back: the same process recovers.
    etcd.start_all();
    eventually(60, "ready again after etcd's restart", || {
        curl(&server, "GET", "/readyz", None).0 == 200
    });
    eventually(30, "a write succeeds again", || {
        curl(&server, "POST", CONFIGMAPS, Some(&configmap("three"))).0 == 201
    });
    // A consistent read waits for the watch cache: it has followed etcd again.
    assert_eq!(
        kubectl.ok(&["get", "configmap", "three", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    assert_eq!(
        kubectl.ok(&["get", "configmap", "one", "-o", "jsonpath={.metadata.name}"]),
        "one"
    );
    // The refused write was not applied behind the client's back, or if etcd took it
    // before it went away, it is there whole; either way no error reads it.
    let two = kubectl.run(&["get", "configmap", "two", "-o", "jsonpath={.data.a}"]);
    if two.status.success() {
        assert_eq!(String::from_utf8_lossy(&two.stdout), "b");
    }
    assert_eq!(server.pid(), Some(pid));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "berth-server exited"
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log.contains("watch cache lost the store watch"),
        "the watch cache gave up:\n{log}"
    );
}
