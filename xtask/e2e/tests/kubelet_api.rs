//! The agent's kubelet API as the kubelet's webhook authorization mode has it: its
//! serving certificate comes from the cluster CA (curl verifies it against the CA for
//! the node's address), a client certificate of the cluster CA without `nodes/proxy`
//! is refused container logs and exec (403 in the kubelet's words), the same caller
//! bound to `system:kubelet-api-admin` gets them, and `kubectl logs`/`exec` through the
//! apiserver (whose kubelet client is only bound to that role) keep working.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_testkit::require_root;

mod common;
use common::{cluster, ready};

/// A key and a client certificate for `user` from the cluster CA (openssl request,
/// the kube-apiserver-client signer, approved by the admin).
fn client_certificate(c: &common::Cluster, dir: &Path, user: &str) -> (String, String) {
    let key = dir.join(format!("{user}.key"));
    let csr = dir.join(format!("{user}.csr"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-subj", &format!("/CN={user}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b64 = Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(&csr)
        .output()
        .expect("run openssl base64");
    assert!(
        b64.status.success(),
        "openssl base64: {}",
        String::from_utf8_lossy(&b64.stderr)
    );
    let request = String::from_utf8_lossy(&b64.stdout).trim().to_owned();
    c.kubectl.apply(&format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {user}}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n"
    ));
    c.kubectl.ok(&["certificate", "approve", user]);
    let mut cert = String::new();
    c.wait("the client certificate", Duration::from_secs(30), || {
        cert = c
            .kubectl
            .ok(&["get", "csr", user, "-o", "jsonpath={.status.certificate}"]);
        !cert.trim().is_empty()
    });
    let pem = Command::new("sh")
        .args([
            "-c",
            &format!("echo '{}' | openssl base64 -d -A", cert.trim()),
        ])
        .output()
        .expect("decode the certificate");
    assert!(
        pem.status.success() && !pem.stdout.is_empty(),
        "decoding the certificate: {}",
        String::from_utf8_lossy(&pem.stderr)
    );
    let cert_file = dir.join(format!("{user}.crt"));
    std::fs::write(&cert_file, &pem.stdout).expect("write the certificate");
    c.kubectl.ok(&["delete", "csr", user]);
    (cert_file.display().to_string(), key.display().to_string())
}

/// `curl` against the kubelet API with the cluster CA and `cert`/`key`: (HTTP code, body).
fn curl(
    c: &common::Cluster,
    cert: &(String, String),
    method: &str,
    path: &str,
) -> (String, String) {
    let url = format!("https://127.0.0.1:{}{path}", c.agent.port);
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "-w", "\n%{http_code}", "--cacert"])
        .arg(c.server.ca())
        .args(["--cert", &cert.0, "--key", &cert.1, &url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url}: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

#[test]
fn kubelet_api_needs_nodes_proxy_and_has_a_ca_signed_certificate() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  containers:\n  - {name: c, image: berth.local/busybox:1.35, command: [sh, -c, 'echo hello-from-talker; sleep 3600']}\n",
    );
    c.wait_pod("talker", "Ready", ready);
    let mallory = client_certificate(&c, c.dir.path(), "mallory");
    // The serving certificate verifies against the cluster CA (curl checks it; the
    // agent swaps the signed one in shortly after start).
    let logs = "/containerLogs/default/talker/c";
    c.wait(
        "a CA-signed kubelet serving certificate",
        Duration::from_secs(60),
        || {
            let url = format!("https://127.0.0.1:{}/healthz", c.agent.port);
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--cacert"])
                .arg(c.server.ca())
                .args(["--cert", &mallory.0, "--key", &mallory.1, &url])
                .status()
                .is_ok_and(|s| s.success())
        },
    );
    let (code, body) = curl(&c, &mallory, "GET", logs);
    assert_eq!(code, "403", "{body}");
    assert_eq!(
        body.trim(),
        "Forbidden (user=mallory, verb=get, resource=nodes, subresource=proxy)"
    );
    let (code, body) = curl(
        &c,
        &mallory,
        "POST",
        "/exec/default/talker/c?command=true&output=1",
    );
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("verb=create, resource=nodes, subresource=proxy"),
        "{body}"
    );
    // Bound to system:kubelet-api-admin, the same certificate reads the logs (after the
    // kubelet's 30 s cache of the denial).
    c.kubectl.ok(&[
        "create",
        "clusterrolebinding",
        "mallory-kubelet",
        "--clusterrole=system:kubelet-api-admin",
        "--user=mallory",
    ]);
    c.wait(
        "the binding to count at the kubelet",
        Duration::from_secs(60),
        || {
            let (code, body) = curl(&c, &mallory, "GET", logs);
            code == "200" && body.contains("hello-from-talker")
        },
    );
    // Through the apiserver, whose kubelet client is no longer system:masters.
    let out = c.kubectl.ok(&["logs", "talker"]);
    assert!(out.contains("hello-from-talker"), "{out}");
    let out = c.kubectl.ok(&["exec", "talker", "--", "echo", "exec-ok"]);
    assert_eq!(out.trim(), "exec-ok");
    c.kubectl
        .ok(&["delete", "clusterrolebinding", "mallory-kubelet"]);
    c.kubectl
        .ok(&["delete", "pod", "talker", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}
