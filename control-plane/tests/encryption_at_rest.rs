//! `--encryption-provider-config`: a Secret created with the real kubectl is not in
//! the store file in plaintext but as `k8s:enc:aescbc:v1:key1:…`, reads back, survives
//! a key rotation (new key added, moved first, every Secret rewritten with
//! `kubectl get secrets -A -o json | kubectl replace -f -`) and ends up under the new
//! key; a ConfigMap the config does not list stays plain; a malformed config stops
//! the server naming the field.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use berth_control_plane::store::Store;
use berth_control_plane::store::redb::RedbStore;
use berth_testkit::BerthServer;

const SECRET_VALUE: &str = "correct-horse-battery-staple-canary";
const CONFIGMAP_VALUE: &str = "configmap-plain-canary-value";
const SECRET_KEY: &str = "/registry/core/secrets/default/db-password";
const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY2: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn write_config(path: &Path, keys: &[(&str, &str)]) {
    let mut text = String::from(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n",
    );
    for (name, secret) in keys {
        text.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
    }
    // Values stored before encryption was turned on stay readable.
    text.push_str("  - identity: {}\n");
    std::fs::write(path, text).expect("write the encryption config");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Every byte the store keeps on disk (the redb file and its write-ahead log).
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for file in ["store.redb", "store.wal"] {
        if let Ok(b) = std::fs::read(dir.join(file)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The raw stored value of `key`, read with the store API from a copy of the store
/// files (the server is stopped; the copy keeps the store's lock out of the way of the
/// next start).
fn raw_value(dir: &Path, key: &str) -> Vec<u8> {
    let copy = tempfile::tempdir().expect("temp dir");
    for file in ["store.redb", "store.wal"] {
        if dir.join(file).exists() {
            std::fs::copy(dir.join(file), copy.path().join(file)).expect("copy the store");
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store = RedbStore::open(&copy.path().join("store.redb")).expect("the store opens");
        store
            .get(key, None)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("{key} is stored"))
            .value
            .to_vec()
    })
}

fn secret_value(k: &berth_testkit::Kubectl) -> String {
    let encoded = k.ok(&[
        "get",
        "secret",
        "db-password",
        "-o",
        "jsonpath={.data.password}",
    ]);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("base64 data");
    String::from_utf8(decoded).expect("utf-8")
}

#[test]
fn secrets_are_stored_encrypted_and_survive_a_key_rotation() {
    let home = tempfile::tempdir().expect("temp home");
    let config = home.path().join("encryption.yaml");
    write_config(&config, &[("key1", KEY1)]);
    let flag = format!("--encryption-provider-config={}", config.display());
    let mut server = BerthServer::start_with(
        env!("CARGO_BIN_EXE_berth-server").as_ref(),
        home.path(),
        &[&flag, "--controllers=false", "--scheduler=false"],
    );
    let Some(k) = berth_testkit::Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.ok(&[
        "create",
        "secret",
        "generic",
        "db-password",
        &format!("--from-literal=password={SECRET_VALUE}"),
    ]);
    k.ok(&[
        "create",
        "configmap",
        "settings",
        &format!("--from-literal=value={CONFIGMAP_VALUE}"),
    ]);
    assert_eq!(secret_value(&k), SECRET_VALUE);
    let metrics = k.ok(&["get", "--raw", "/metrics"]);
    assert!(
        metrics.contains("apiserver_storage_transformation_operations_total{transformation_type=\"to_storage\",transformer_prefix=\"k8s:enc:aescbc:v1:\",status=\"OK\"}"),
        "the transformation counter is served:\n{metrics}"
    );

    server.stop();
    let bytes = store_bytes(server.dir());
    let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE);
    assert!(
        !contains(&bytes, SECRET_VALUE) && !contains(&bytes, &encoded),
        "the Secret's value is not in the store files in plaintext"
    );
    assert!(
        contains(&bytes, CONFIGMAP_VALUE),
        "the ConfigMap (not listed in the config) is stored plain — and the search works"
    );
    let raw = raw_value(server.dir(), SECRET_KEY);
    assert!(
        raw.starts_with(b"k8s:enc:aescbc:v1:key1:"),
        "stored as {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(40)])
    );

    // Rotation, step 1: key2 added second; still reads, still writes key1.
    write_config(&config, &[("key1", KEY1), ("key2", KEY2)]);
    server.restart();
    assert_eq!(secret_value(&k), SECRET_VALUE);
    // Step 2: key2 first, then every Secret rewritten — unchanged objects included.
    server.stop();
    write_config(&config, &[("key2", KEY2), ("key1", KEY1)]);
    server.restart();
    assert_eq!(secret_value(&k), SECRET_VALUE);
    let rv = |k: &berth_testkit::Kubectl| {
        k.ok(&[
            "get",
            "secret",
            "db-password",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = rv(&k);
    let all = k.ok(&["get", "secrets", "-A", "-o", "json"]);
    // `--validate=false`: kubectl validates a List against /openapi/v2, which berth
    // does not serve (single objects validate against v3).
    let out = k.run_with_stdin(&["replace", "--validate=false", "-f", "-"], &all);
    assert!(
        out.status.success(),
        "kubectl replace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        rv(&k),
        before,
        "the unchanged Secret was rewritten: its stored value was stale"
    );
    server.stop();
    let raw = raw_value(server.dir(), SECRET_KEY);
    assert!(
        raw.starts_with(b"k8s:enc:aescbc:v1:key2:"),
        "rewritten under key2: {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(40)])
    );

    // Step 3: key1 removed; everything still reads.
    write_config(&config, &[("key2", KEY2)]);
    server.restart();
    assert_eq!(secret_value(&k), SECRET_VALUE);
    let value = k.ok(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.value}",
    ]);
    assert_eq!(value, CONFIGMAP_VALUE);
}

#[test]
fn a_malformed_encryption_config_stops_the_server_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (body, want) in [
        (
            "  - aescbc:\n      keys:\n      - name: key1\n        secret: c2hvcnQ=\n",
            "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 5",
        ),
        (
            "  - kms:\n      name: vault\n      endpoint: unix:///kms.sock\n",
            "resources[0].providers[0].kms: Unsupported value",
        ),
    ] {
        let config = dir.path().join("bad.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{body}"
            ),
        )
        .expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_berth-server"))
            .arg(format!("--encryption-provider-config={}", config.display()))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--bind-address", "127.0.0.1", "--secure-port", "1"])
            .output()
            .expect("run berth-server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused to start: {err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(
            !dir.path().join("data/store.redb").exists(),
            "refused before opening the store"
        );
    }
}
