//! The audit log of a real berth-server (`--audit-policy-file`, `--audit-log-path`),
//! driven by the real kubectl and curl: events at the level the policy's first matching
//! rule gives (Metadata for Secrets — their data never reaches the log —,
//! RequestResponse for ConfigMaps, None for a user and for `get` of Events), the
//! policy's omitted stage never written, the `Audit-Id` response header naming the
//! event, a forbidden request recorded with the authorizer's decision and 403, a
//! failed authentication with 401, a watch's ResponseStarted, Pod Security's audit
//! mode; rotation by `--audit-log-maxsize` keeping `--audit-log-maxbackup` files; a
//! bad policy stopping the server with the problem named.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::BerthServer;
use serde_json::Value;

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["dave"]
  - level: None
    verbs: ["get"]
    resources:
      - group: ""
        resources: ["events"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets"]
  - level: RequestResponse
    resources:
      - group: ""
        resources: ["configmaps"]
  - level: Metadata
"#;

/// A server auditing with `policy` into `<home>/logs/audit.log`, plus `extra` flags.
fn start(
    home: &Path,
    policy: &str,
    extra: &[&str],
) -> (BerthServer, PathBuf, Option<berth_testkit::Kubectl>) {
    let policy_path = home.join("audit-policy.yaml");
    std::fs::write(&policy_path, policy).expect("write the policy");
    let log = home.join("logs/audit.log");
    let mut args = vec![
        format!("--audit-policy-file={}", policy_path.display()),
        format!("--audit-log-path={}", log.display()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), home, &args);
    let kubectl = berth_testkit::Kubectl::find(&server.kubeconfig(), home);
    (server, log, kubectl)
}

/// Every event in the log so far; each complete line must be one (the last may be
/// still being written).
fn events(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("an audit line is not JSON ({e}): {line}"))
        })
        .collect()
}

/// Waits (the writer is asynchronous) for events matching `want`.
fn wait_for(log: &Path, what: &str, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found: Vec<Value> = events(log).into_iter().filter(|e| want(e)).collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event for {what} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// curl with a bearer token: status, response headers, body.
fn curl(server: &BerthServer, token: &str, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-D", "-"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--cacert")
        .arg(server.ca())
        .args(["-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("{}{path}", server.url()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap_or(0),
        head.to_owned(),
        body.to_owned(),
    )
}

fn audit_id_header(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("audit-id")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("an Audit-Id header in {head}"))
}

#[test]
fn requests_are_recorded_at_the_policys_level() {
    let home = tempfile::tempdir().expect("temp home");
    let (server, log, kubectl) = start(home.path(), POLICY, &[]);
    let Some(k) = kubectl else { return };

    // Secrets: Metadata — who, what, the name from the body, but never the data.
    k.ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=password=TOPSECRETVALUE",
    ]);
    let created = wait_for(&log, "the secret's create", |e| {
        s(e, "/verb") == "create" && s(e, "/objectRef/resource") == "secrets"
    });
    let ev = &created[0];
    assert_eq!(s(ev, "/level"), "Metadata");
    assert_eq!(s(ev, "/stage"), "ResponseComplete");
    assert_eq!(s(ev, "/kind"), "Event");
    assert_eq!(s(ev, "/apiVersion"), "audit.k8s.io/v1");
    assert_eq!(
        s(ev, "/objectRef/name"),
        "s1",
        "the name comes from the body: {ev}"
    );
    assert_eq!(s(ev, "/objectRef/namespace"), "default");
    assert_eq!(s(ev, "/objectRef/apiVersion"), "v1");
    assert_eq!(s(ev, "/user/username"), "kubernetes-admin");
    assert_eq!(ev.pointer("/responseStatus/code"), Some(&Value::from(201)));
    assert_eq!(
        s(ev, "/annotations/authorization.k8s.io~1decision"),
        "allow"
    );
    assert!(s(ev, "/userAgent").starts_with("kubectl"), "{ev}");
    assert_eq!(
        ev.pointer("/sourceIPs/0").and_then(Value::as_str),
        Some("127.0.0.1")
    );
    assert!(ev.get("requestObject").is_none() && ev.get("responseObject").is_none());
    for key in ["requestReceivedTimestamp", "stageTimestamp"] {
        let t = s(ev, &format!("/{key}"));
        let micros = t
            .strip_suffix('Z')
            .and_then(|t| t.rsplit_once('.'))
            .map(|(_, frac)| frac.len());
        assert_eq!(micros, Some(6), "{key} is a MicroTime: {t}");
    }
    let raw = std::fs::read_to_string(&log).expect("read the log");
    assert!(!raw.contains("TOPSECRETVALUE") && !raw.contains("VE9QU0VDUkVUVkFMVUU"));

    // ConfigMaps: RequestResponse — the body sent and the object answered.
    k.ok(&["create", "configmap", "c1", "--from-literal=k=VISIBLEVALUE"]);
    let created = wait_for(&log, "the configmap's create", |e| {
        s(e, "/verb") == "create" && s(e, "/objectRef/name") == "c1"
    });
    let ev = &created[0];
    assert_eq!(s(ev, "/level"), "RequestResponse");
    assert_eq!(s(ev, "/requestObject/data/k"), "VISIBLEVALUE", "{ev}");
    assert_eq!(s(ev, "/responseObject/data/k"), "VISIBLEVALUE", "{ev}");
    assert!(!s(ev, "/responseObject/metadata/uid").is_empty(), "{ev}");

    // The Audit-Id header names the event; a client's own Audit-ID is kept.
    let (code, head, _) = curl(
        &server,
        "berth-test-token",
        "/api/v1/namespaces/default/configmaps/c1",
        &[],
    );
    assert_eq!(code, 200);
    let id = audit_id_header(&head);
    let got = wait_for(&log, "the curl get", |e| s(e, "/auditID") == id);
    assert_eq!(got.len(), 1, "one event (RequestReceived omitted): {got:?}");
    assert_eq!(s(&got[0], "/verb"), "get");
    assert_eq!(s(&got[0], "/user/username"), "tester");
    assert_eq!(s(&got[0], "/user/uid"), "1001");
    assert_eq!(s(&got[0], "/responseObject/metadata/name"), "c1");
    let (_, head, _) = curl(
        &server,
        "berth-test-token",
        "/api/v1/namespaces/default/configmaps/c1",
        &["Audit-ID: my-own-audit-id"],
    );
    assert_eq!(audit_id_header(&head), "my-own-audit-id");
    wait_for(&log, "the client's audit ID", |e| {
        s(e, "/auditID") == "my-own-audit-id"
    });

    // Forbidden: the decision and the 403 are recorded.
    let (code, head, _) = curl(
        &server,
        "alice-token",
        "/api/v1/namespaces/default/secrets",
        &[],
    );
    assert_eq!(code, 403);
    let id = audit_id_header(&head);
    let got = wait_for(&log, "alice's forbidden list", |e| s(e, "/auditID") == id);
    let ev = &got[0];
    assert_eq!(s(ev, "/verb"), "list");
    assert_eq!(s(ev, "/user/username"), "alice");
    assert_eq!(
        s(ev, "/annotations/authorization.k8s.io~1decision"),
        "forbid"
    );
    assert_eq!(ev.pointer("/responseStatus/code"), Some(&Value::from(403)));
    assert_eq!(s(ev, "/responseStatus/reason"), "Forbidden");
    assert_eq!(s(ev, "/responseStatus/status"), "Failure");
    assert!(s(ev, "/responseStatus/message").contains("cannot list resource \"secrets\""));

    // A bad token: 401, no user, the method tried.
    let (code, head, _) = curl(&server, "not-a-token", "/api/v1/namespaces", &[]);
    assert_eq!(code, 401);
    let id = audit_id_header(&head);
    let got = wait_for(&log, "the failed authentication", |e| {
        s(e, "/auditID") == id
    });
    assert_eq!(s(&got[0], "/stage"), "ResponseStarted");
    assert_eq!(
        got[0].pointer("/responseStatus/code"),
        Some(&Value::from(401))
    );
    assert_eq!(
        s(&got[0], "/responseStatus/message"),
        "Authentication failed, attempted: bearer"
    );
    assert_eq!(got[0].get("user"), Some(&serde_json::json!({})));

    // dave's requests (rule 1) and the get of an Event (rule 2) are not recorded.
    let (code, head, _) = curl(
        &server,
        "dave-token",
        "/api/v1/namespaces/default/pods",
        &[],
    );
    assert_eq!(code, 403);
    let dave = audit_id_header(&head);
    k.apply(
        "apiVersion: v1\nkind: Event\nmetadata: {name: e1, namespace: default}\n\
         involvedObject: {kind: Pod, name: x, namespace: default}\nreason: Test\nmessage: hello\ntype: Normal\n",
    );
    k.ok(&["get", "event", "e1"]);
    // A watch is long-running: ResponseStarted when it starts, ResponseComplete at its end.
    let (code, head, _) = curl(
        &server,
        "berth-test-token",
        "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1",
        &[],
    );
    assert_eq!(code, 200);
    let watch = audit_id_header(&head);
    let got = wait_for(&log, "the watch's end", |e| {
        s(e, "/auditID") == watch && s(e, "/stage") == "ResponseComplete"
    });
    assert_eq!(s(&got[0], "/verb"), "watch");
    let stages: Vec<String> = events(&log)
        .iter()
        .filter(|e| s(e, "/auditID") == watch)
        .map(|e| s(e, "/stage").to_owned())
        .collect();
    assert_eq!(stages, ["ResponseStarted", "ResponseComplete"]);
    wait_for(&log, "the event's create", |e| {
        s(e, "/verb") == "create" && s(e, "/objectRef/resource") == "events"
    });
    let all = events(&log);
    assert!(
        all.iter().all(|e| s(e, "/auditID") != dave),
        "dave is never audited"
    );
    assert!(
        !all.iter()
            .any(|e| s(e, "/verb") == "get" && s(e, "/objectRef/resource") == "events"),
        "a get of an Event is level None"
    );
    assert!(
        all.iter().all(|e| s(e, "/stage") != "RequestReceived"),
        "the policy omits RequestReceived"
    );

    // Pod Security's audit mode annotates the event.
    k.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: psa\n  labels:\n    pod-security.kubernetes.io/audit: restricted\n",
    );
    k.ok(&[
        "run",
        "p1",
        "-n",
        "psa",
        "--image=busybox",
        "--restart=Never",
    ]);
    let got = wait_for(&log, "the pod's create", |e| {
        s(e, "/verb") == "create"
            && s(e, "/objectRef/resource") == "pods"
            && s(e, "/objectRef/name") == "p1"
    });
    let violations = s(
        &got[0],
        "/annotations/pod-security.kubernetes.io~1audit-violations",
    );
    assert!(
        violations.starts_with(
            "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{}",
        got[0]
    );
    assert_eq!(
        s(
            &got[0],
            "/annotations/pod-security.kubernetes.io~1enforce-policy"
        ),
        "privileged:latest"
    );

    // The counters.
    let (_, _, metrics) = curl(&server, "berth-test-token", "/metrics", &[]);
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("apiserver_audit_event_total "))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("apiserver_audit_event_total in {metrics}"));
    assert!(count >= 5.0, "{count}");
}

#[test]
fn the_log_rotates_at_maxsize_and_keeps_maxbackup_files() {
    let home = tempfile::tempdir().expect("temp home");
    let policy = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
                  - level: RequestResponse\n  verbs: [create]\n  resources: [{group: \"\", resources: [configmaps]}]\n";
    let (_server, log, kubectl) = start(
        home.path(),
        policy,
        &["--audit-log-maxsize=1", "--audit-log-maxbackup=2"],
    );
    let Some(k) = kubectl else { return };
    // Each create is logged with its 300 KB body twice (request and response): one
    // event a 1 MB file, so every create after the first rotates.
    let data = home.path().join("data.txt");
    std::fs::write(&data, "x".repeat(300 * 1024)).expect("write the data");
    for i in 0..6 {
        k.ok(&[
            "create",
            "configmap",
            &format!("big-{i}"),
            &format!("--from-file=data={}", data.display()),
        ]);
    }
    let dir = log.parent().expect("log dir");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let last = events(&log);
        if last.iter().any(|e| s(e, "/objectRef/name") == "big-5") {
            break;
        }
        assert!(Instant::now() < deadline, "big-5 reached the live log");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut backups: Vec<String> = std::fs::read_dir(dir)
        .expect("read the log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "audit.log")
        .collect();
    backups.sort();
    assert_eq!(
        backups.len(),
        2,
        "--audit-log-maxbackup=2 keeps two: {backups:?}"
    );
    let mut names = Vec::new();
    for name in &backups {
        assert!(
            name.starts_with("audit-") && name.ends_with(".log"),
            "backups are named audit-<time>.log: {name}"
        );
        let path = dir.join(name);
        assert!(std::fs::metadata(&path).expect("stat").len() <= 1024 * 1024);
        // (The controllers' small kube-root-ca.crt creates may share a file.)
        for ev in events(&path) {
            let name = s(&ev, "/objectRef/name");
            if name.starts_with("big-") {
                names.push(name.to_owned());
            }
        }
    }
    // The newest backups hold the creates just before the live file's.
    assert_eq!(names, ["big-3", "big-4"], "{backups:?}");
}

#[test]
fn a_bad_policy_stops_the_server_naming_the_problem() {
    let home = tempfile::tempdir().expect("temp home");
    let policy = home.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Everything\n",
    )
    .expect("write the policy");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-server"))
        .arg("--data-dir")
        .arg(home.path().join("data"))
        .args(["--bind-address", "127.0.0.1", "--secure-port", "0"])
        .arg(format!("--audit-policy-file={}", policy.display()))
        .arg(format!(
            "--audit-log-path={}",
            home.path().join("audit.log").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth-server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth-server kept running with a bad audit policy");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("rules[0].level: Unsupported value: \"Everything\""),
        "{stderr}"
    );
    assert!(!home.path().join("data/pki").exists(), "nothing was set up");
}
