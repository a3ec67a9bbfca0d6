//! certificates.k8s.io/v1 CertificateSigningRequests in a real berth-server, with the
//! real kubectl: validation (a bad PEM is 422 with upstream's message), `kubectl
//! certificate approve|deny` through the `approval` subresource (and its `approve`-on-
//! the-signer check), the signer (a kube-apiserver-client certificate that authenticates
//! as its CN, for `expirationSeconds`; usages it does not allow → the Failed condition),
//! and CertificateSubjectRestriction (no system:masters through that signer); bootstrap
//! tokens filing node CSRs that are approved automatically; and what node credentials
//! obtained that way may do (the Node authorizer and NodeRestriction admission).

use std::time::{Duration, Instant};

use base64::Engine;
use berth_testkit::{BerthServer, Kubectl};
use serde_json::Value;

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh key and a PEM request for `cn` in `orgs`.
fn request(cn: &str, orgs: &[&str]) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, *o);
    }
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, pem)
}

fn csr_manifest(name: &str, request: &[u8], signer: &str, usages: &str, extra: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(request);
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {b64}\n  signerName: {signer}\n  usages: {usages}\n{extra}"
    )
}

fn create(k: &Kubectl, dir: &std::path::Path, manifest: &str) -> std::process::Output {
    let path = dir.join("csr.yaml");
    std::fs::write(&path, manifest).expect("write manifest");
    k.run(&["create", "-f", path.to_str().expect("utf-8 path")])
}

fn condition(csr: &Value, t: &str) -> Option<Value> {
    csr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
}

#[test]
fn csrs_are_validated_approved_denied_and_signed() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let client = "kubernetes.io/kube-apiserver-client";

    // A request that is not PEM: 422 as kube-apiserver words it.
    let out = create(
        &k,
        home.path(),
        &csr_manifest("bad", b"junk", client, "[client auth]", ""),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"The CertificateSigningRequest "bad" is invalid: spec.request: Invalid value: []byte{0x6a, 0x75, 0x6e, 0x6b}: PEM block type must be CERTIFICATE REQUEST"#),
        "{err}"
    );
    // system:masters through the client signer: refused.
    let (_, masters) = request("mallory", &["system:masters"]);
    let out = create(
        &k,
        home.path(),
        &csr_manifest("masters", masters.as_bytes(), client, "[client auth]", ""),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"),
        "{err}"
    );

    // A client certificate for alice, for 10 minutes.
    let (key, pem) = request("alice", &["dev"]);
    let out = create(
        &k,
        home.path(),
        &csr_manifest(
            "alice",
            pem.as_bytes(),
            client,
            "[client auth]",
            "  expirationSeconds: 600\n",
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr = k.json(&["get", "csr", "alice"]);
    assert_eq!(
        csr["spec"]["username"], "kubernetes-admin",
        "the requester is recorded: {csr}"
    );
    let table = k.ok(&["get", "csr", "alice"]);
    assert!(table.contains("Pending"), "{table}");

    // Approval needs `approve` on the signer: alice may update the subresource only.
    k.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-approval-only}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests, certificatesigningrequests/approval], verbs: [get, list, update]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: csr-approval-only}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: csr-approval-only}\nsubjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]\n");
    let err = poll("alice's binding to count", || {
        let out = k.run(&["certificate", "approve", "alice", "--as", "alice"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("signerName")).then_some(err)
    });
    assert!(
        err.contains(r#"certificatesigningrequests.certificates.k8s.io "alice" is forbidden: user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#),
        "{err}"
    );

    let out = k.ok(&["certificate", "approve", "alice"]);
    assert_eq!(
        out.trim(),
        "certificatesigningrequest.certificates.k8s.io/alice approved"
    );
    let csr = poll("alice's certificate", || {
        let csr = k.json(&["get", "csr", "alice"]);
        csr["status"]["certificate"].is_string().then_some(csr)
    });
    let approved = condition(&csr, "Approved").expect("an Approved condition");
    assert_eq!(approved["reason"], "KubectlApprove", "{csr}");
    let cert_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(csr["status"]["certificate"].as_str().expect("certificate"))
            .expect("base64"),
    )
    .expect("PEM text");
    let der = pem_der(&cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("an X.509 certificate");
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        900,
        "expirationSeconds 600, backdated 5 minutes"
    );
    let table = k.ok(&["get", "csr", "alice"]);
    assert!(table.contains("Approved,Issued"), "{table}");

    // The certificate is alice.
    let cert_file = home.path().join("alice.crt");
    let key_file = home.path().join("alice.key");
    std::fs::write(&cert_file, &cert_pem).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let alice = Kubectl {
        kubeconfig: home.path().join("alice.kubeconfig"),
        ..k.clone()
    };
    let ca = server.ca();
    for args in [
        vec![
            "config".to_owned(),
            "set-cluster".into(),
            "berth".into(),
            "--embed-certs".into(),
            format!("--server={}", server.url()),
            format!("--certificate-authority={}", ca.display()),
        ],
        vec![
            "config".into(),
            "set-credentials".into(),
            "alice".into(),
            "--embed-certs".into(),
            format!("--client-certificate={}", cert_file.display()),
            format!("--client-key={}", key_file.display()),
        ],
        vec![
            "config".into(),
            "set-context".into(),
            "alice".into(),
            "--cluster=berth".into(),
            "--user=alice".into(),
        ],
        vec!["config".into(), "use-context".into(), "alice".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        alice.ok(&args);
    }
    let who = alice.ok(&["auth", "whoami"]);
    assert!(
        who.contains("alice") && who.contains("[dev system:authenticated]"),
        "{who}"
    );

    // Denied: a Denied condition, never a certificate.
    let (_, pem) = request("bob", &[]);
    let out = create(
        &k,
        home.path(),
        &csr_manifest("bob", pem.as_bytes(), client, "[client auth]", ""),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = k.ok(&["certificate", "deny", "bob"]);
    assert_eq!(
        out.trim(),
        "certificatesigningrequest.certificates.k8s.io/bob denied"
    );
    let csr = k.json(&["get", "csr", "bob"]);
    assert_eq!(
        condition(&csr, "Denied").expect("Denied")["reason"],
        "KubectlDeny",
        "{csr}"
    );
    // kubectl will not approve it now; the server refuses both conditions at once (422).
    let err = k.fails(&["certificate", "approve", "bob"]);
    assert!(
        err.contains(r#"certificate signing request "bob" is already Denied"#),
        "{err}"
    );
    let err = k.fails(&[
        "patch", "csr", "bob", "--subresource=approval", "--type=json", "-p",
        r#"[{"op":"add","path":"/status/conditions/-","value":{"type":"Approved","status":"True"}}]"#,
    ]);
    assert!(
        err.contains(r#"status.conditions[1].type: Invalid value: "Approved": Approved and Denied conditions are mutually exclusive"#),
        "{err}"
    );

    // Usages the signer does not allow: Failed, with the signer's reason.
    let (_, pem) = request("carol", &[]);
    let out = create(
        &k,
        home.path(),
        &csr_manifest(
            "carol",
            pem.as_bytes(),
            client,
            "[client auth, server auth]",
            "",
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k.ok(&["certificate", "approve", "carol"]);
    let failed = poll("carol's Failed condition", || {
        condition(&k.json(&["get", "csr", "carol"]), "Failed")
    });
    assert_eq!(failed["reason"], "SignerValidationFailure");
    assert_eq!(
        failed["message"],
        "invalid usage for client certificate: server auth"
    );

    k.ok(&["delete", "csr", "alice", "bob", "carol"]);
    k.ok(&[
        "delete",
        "clusterrolebinding,clusterrole",
        "csr-approval-only",
    ]);
}

/// kubectl with its own kubeconfig: the test cluster and `credentials`
/// (`kubectl config set-credentials` flags).
fn kubectl_with(k: &Kubectl, server: &BerthServer, name: &str, credentials: &[String]) -> Kubectl {
    let other = Kubectl {
        kubeconfig: server.dir().join(format!("{name}.kubeconfig")),
        ..k.clone()
    };
    let mut set_credentials = vec!["config".to_owned(), "set-credentials".into(), name.into()];
    if credentials
        .iter()
        .any(|c| c.starts_with("--client-certificate"))
    {
        set_credentials.push("--embed-certs".into());
    }
    set_credentials.extend(credentials.iter().cloned());
    for args in [
        vec![
            "config".to_owned(),
            "set-cluster".into(),
            "berth".into(),
            "--embed-certs".into(),
            format!("--server={}", server.url()),
            format!("--certificate-authority={}", server.ca().display()),
        ],
        set_credentials,
        vec![
            "config".into(),
            "set-context".into(),
            name.into(),
            "--cluster=berth".into(),
            format!("--user={name}"),
        ],
        vec!["config".into(), "use-context".into(), name.into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        other.ok(&args);
    }
    other
}

#[test]
fn bootstrap_tokens_file_node_csrs_that_are_approved_automatically() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth-server"))
        .args(["token", "create", "--ttl", "1h", "--data-dir"])
        .arg(server.dir())
        .output()
        .expect("berth-server token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (id, _) = token.split_once('.').expect("<id>.<secret>");
    assert!(token.len() == 23 && id.len() == 6, "{token}");
    let secret = k.json(&[
        "get",
        "secret",
        &format!("bootstrap-token-{id}"),
        "-n",
        "kube-system",
    ]);
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token", "{secret}");

    let boot = kubectl_with(&k, &server, "boot", &[format!("--token={token}")]);
    let who = poll("the token Secret to count", || {
        let out = boot.run(&["auth", "whoami"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(who.contains(&format!("system:bootstrap:{id}")), "{who}");
    assert!(
        who.contains("[system:bootstrappers system:authenticated]"),
        "{who}"
    );
    let err = boot.fails(&["get", "secrets", "-n", "kube-system"]);
    assert!(
        err.contains(&format!(r#"secrets is forbidden: User "system:bootstrap:{id}" cannot list resource "secrets" in API group "" in the namespace "kube-system""#)),
        "{err}"
    );

    // A node client certificate requested with the token: approved by the approver,
    // signed by the signer, and it is the node.
    let (key, pem) = request("system:node:joiner", &["system:nodes"]);
    let manifest = csr_manifest(
        "node-csr-joiner",
        pem.as_bytes(),
        "kubernetes.io/kube-apiserver-client-kubelet",
        "[digital signature, client auth]",
        "",
    );
    let out = create(&boot, home.path(), &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr = poll("the node certificate", || {
        let csr = k.json(&["get", "csr", "node-csr-joiner"]);
        csr["status"]["certificate"].is_string().then_some(csr)
    });
    let approved = condition(&csr, "Approved").expect("Approved");
    assert_eq!(approved["reason"], "AutoApproved", "{csr}");
    assert_eq!(csr["spec"]["username"], format!("system:bootstrap:{id}"));
    let cert = base64::engine::general_purpose::STANDARD
        .decode(csr["status"]["certificate"].as_str().expect("cert"))
        .expect("base64");
    let cert_file = home.path().join("joiner.crt");
    let key_file = home.path().join("joiner.key");
    std::fs::write(&cert_file, cert).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let node = kubectl_with(
        &k,
        &server,
        "joiner",
        &[
            format!("--client-certificate={}", cert_file.display()),
            format!("--client-key={}", key_file.display()),
        ],
    );
    let who = node.ok(&["auth", "whoami"]);
    assert!(
        who.contains("system:node:joiner") && who.contains("[system:nodes system:authenticated]"),
        "{who}"
    );

    // Expired: 401.
    k.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: bootstrap-token-old123, namespace: kube-system}\ntype: bootstrap.kubernetes.io/token\nstringData: {token-id: old123, token-secret: 0123456789abcdef, usage-bootstrap-authentication: 'true', expiration: '2020-01-01T00:00:00Z'}\n");
    let old = kubectl_with(
        &k,
        &server,
        "old",
        &["--token=old123.0123456789abcdef".to_owned()],
    );
    let err = old.fails(&["auth", "whoami"]);
    assert!(err.contains("Unauthorized"), "{err}");

    k.ok(&["delete", "csr", "node-csr-joiner"]);
    k.ok(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        "bootstrap-token-old123",
        &format!("bootstrap-token-{id}"),
    ]);
}

/// Credentials for node `name`: a kubelet client certificate through a CSR the admin
/// approves.
fn node_kubectl(k: &Kubectl, server: &BerthServer, dir: &std::path::Path, name: &str) -> Kubectl {
    let (key, pem) = request(&format!("system:node:{name}"), &["system:nodes"]);
    let csr = format!("node-csr-{name}");
    let manifest = csr_manifest(
        &csr,
        pem.as_bytes(),
        "kubernetes.io/kube-apiserver-client-kubelet",
        "[digital signature, client auth]",
        "",
    );
    let out = create(k, dir, &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k.ok(&["certificate", "approve", &csr]);
    let cert = poll("the node certificate", || {
        let c = k.json(&["get", "csr", &csr]);
        c["status"]["certificate"].as_str().map(str::to_owned)
    });
    let cert = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .expect("base64");
    let (cert_file, key_file) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_file, cert).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    k.ok(&["delete", "csr", &csr]);
    kubectl_with(
        k,
        server,
        name,
        &[
            format!("--client-certificate={}", cert_file.display()),
            format!("--client-key={}", key_file.display()),
        ],
    )
}

/// Runs `k args` expecting failure with `message` in stderr.
fn refused(k: &Kubectl, args: &[&str], message: &str) {
    let err = k.fails(args);
    assert!(
        err.contains(message),
        "kubectl {args:?}: want {message:?}, got {err}"
    );
}

#[test]
fn node_credentials_reach_only_their_own_node_and_pods() {
    let home = tempfile::tempdir().expect("temp home");
    let server = BerthServer::start(env!("CARGO_BIN_EXE_berth-server").as_ref(), home.path());
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    let a = node_kubectl(&k, &server, home.path(), "node-a");
    let node = |n: &str| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n");
    a.apply(&node("node-a"));
    k.apply(&node("node-b"));
    k.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: used}\nstringData: {k: v}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: unused}\nstringData: {k: v}\n");
    let pod = |name: &str, node: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  automountServiceAccountToken: false\n  containers: [{{name: c, image: registry.local/busybox:1}}]\n{extra}"
        )
    };
    poll("the default ServiceAccount", || {
        k.run(&["get", "serviceaccount", "default"])
            .status
            .success()
            .then_some(())
    });
    k.apply(&pod(
        "pa",
        "node-a",
        "  volumes: [{name: s, secret: {secretName: used}}]\n",
    ));
    k.apply(&pod("pb", "node-b", ""));

    // Its own Node: yes; another's, or a node-restriction label: no.
    a.ok(&["label", "node", "node-a", "tier=edge"]);
    refused(
        &a,
        &["label", "node", "node-b", "tier=edge"],
        r#"nodes "node-b" is forbidden: node "node-a" is not allowed to modify node "node-b""#,
    );
    refused(
        &a,
        &[
            "label",
            "node",
            "node-a",
            "node-restriction.kubernetes.io/pool=x",
        ],
        r#"node "node-a" is not allowed to modify labels: node-restriction.kubernetes.io/pool"#,
    );
    // The Secret its pod mounts: yes; another: no.
    a.ok(&["get", "secret", "used"]);
    refused(
        &a,
        &["get", "secret", "unused"],
        r#"secrets "unused" is forbidden: User "system:node:node-a" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'node-a' and this object"#,
    );
    // Its pods: read, listed by its name; another node's: neither read nor deleted.
    a.ok(&["get", "pod", "pa"]);
    let listed = a.ok(&[
        "get",
        "pods",
        "--field-selector",
        "spec.nodeName=node-a",
        "-o",
        "name",
    ]);
    assert_eq!(listed.trim(), "pod/pa");
    refused(
        &a,
        &["get", "pods"],
        "can only list/watch pods with spec.nodeName field selector",
    );
    refused(
        &a,
        &["get", "pod", "pb"],
        "no relationship found between node 'node-a' and this object",
    );
    refused(
        &a,
        &["delete", "pod", "pb"],
        r#"pods "pb" is forbidden: node "node-a" can only delete pods with spec.nodeName set to itself"#,
    );
    // Only mirror pods of its own.
    let path = home.path().join("own.yaml");
    std::fs::write(&path, pod("own", "node-a", "")).expect("write manifest");
    refused(
        &a,
        &["create", "-f", path.to_str().expect("utf-8")],
        r#"pod does not have "kubernetes.io/config.mirror" annotation, node "node-a" can only create mirror pods"#,
    );
    // Another node's Lease: no.
    k.apply("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: node-b, namespace: kube-node-lease}\nspec: {holderIdentity: node-b}\n");
    refused(
        &a,
        &[
            "annotate",
            "lease",
            "node-b",
            "-n",
            "kube-node-lease",
            "x=y",
        ],
        "can only access node lease with the same name as the requesting node",
    );

    k.ok(&["delete", "pod", "pa", "pb", "--grace-period=0", "--force"]);
    k.ok(&["delete", "secret", "used", "unused"]);
    k.ok(&["delete", "node", "node-a", "node-b"]);
    k.ok(&["delete", "lease", "node-b", "-n", "kube-node-lease"]);
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}
