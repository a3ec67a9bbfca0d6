//! `berth-server migrate --to-etcd`: a cluster made on the embedded store — a
//! Namespace, ConfigMaps, a Secret, a Service, a Deployment, an Event, a CRD and an
//! object of it — is copied into etcd after its server was killed, under
//! kube-apiserver's keys, the Event with a lease and the server's master lease left
//! out; a berth-server on etcd with the same data dir then serves every object as it
//! was (only the resourceVersions are new) and takes new writes. The embedded store's
//! files are not changed. Refused, with a message that says why: a store a server has
//! open, a prefix that holds keys (unless `--force`, which deletes them and says so),
//! and etcd endpoints that do not answer or are no URLs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use berth_testkit::{BerthServer, Etcd, Kubectl};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_berth-server");
/// No scheduler or controllers: nothing changes the objects but the test.
const QUIET: [&str; 2] = ["--scheduler=false", "--controllers=false"];

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mig, labels: {team: blue}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: mig}
data: {colour: blue, size: "3"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: empty, namespace: mig}
---
apiVersion: v1
kind: Secret
metadata: {name: password, namespace: mig}
stringData: {password: hunter2-canary}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mig}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: mig}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: berth.local/testserver:v1}]
---
apiVersion: v1
kind: Event
metadata: {name: web.1, namespace: mig}
involvedObject: {kind: Deployment, name: web, namespace: mig}
reason: Migrating
message: moving to etcd
type: Normal
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: crontabs.stable.example.com}
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const CRONTAB: &str = r#"
apiVersion: stable.example.com/v1
kind: CronTab
metadata: {name: nightly, namespace: mig}
spec: {cronSpec: "0 3 * * *", image: backup:v2}
"#;

/// What the test compares: `kind/namespace/name` → the object without its
/// resourceVersion.
fn objects(k: &Kubectl) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (args, namespaced) in [
        (
            &[
                "get",
                "configmaps,secrets,services,deployments,events,crontabs",
                "-n",
                "mig",
            ][..],
            true,
        ),
        (&["get", "namespace", "mig"][..], false),
        (&["get", "crd", "crontabs.stable.example.com"][..], false),
    ] {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let got = k.json(&args);
        let items = match got["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![got],
        };
        for mut o in items {
            let meta = o["metadata"].as_object_mut().expect("metadata");
            meta.remove("resourceVersion");
            let name = format!(
                "{}/{}/{}",
                o["kind"].as_str().expect("kind"),
                if namespaced { "mig" } else { "" },
                o["metadata"]["name"].as_str().expect("name")
            );
            out.insert(name, o);
        }
    }
    out
}

fn berth_server(dir: &Path, args: &[&str]) -> Output {
    Command::new(SERVER)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run berth-server")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn migrate_fails(dir: &Path, args: &[&str]) -> String {
    let out = berth_server(dir, &[&["migrate", "--to-etcd"][..], args].concat());
    assert!(
        !out.status.success(),
        "migrate {args:?} should have failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn etcd_keys(etcd: &Etcd) -> Vec<String> {
    let out = etcd.etcdctl(&["get", "--prefix", "/registry", "--keys-only"]);
    assert!(out.status.success(), "etcdctl get: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn store_files(dir: &Path) -> Vec<Vec<u8>> {
    ["store.redb", "store.wal"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("read the store's files"))
        .collect()
}

#[test]
fn a_cluster_moves_from_the_embedded_store_to_etcd() {
    if !Etcd::available() || Etcd::etcdctl_binary().is_none() {
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    let mut server = BerthServer::start_with(SERVER.as_ref(), home.path(), &QUIET);
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.apply(MANIFEST);
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/crontabs.stable.example.com",
        "--timeout=30s",
    ]);
    k.apply(CRONTAB);
    let before = objects(&k);
    assert_eq!(before.len(), 9, "{:?}", before.keys());
    let cluster_ip = before["Service/mig/web"]["spec"]["clusterIP"].clone();
    // A field of ConfigMap mig/settings, by JSONPath.
    let settings = |k: &Kubectl, path: &str| {
        k.ok(&[
            "get",
            "configmap",
            "settings",
            "-n",
            "mig",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    let resource_version = |k: &Kubectl| -> i64 {
        settings(k, ".metadata.resourceVersion")
            .parse()
            .expect("a numeric resourceVersion")
    };
    let old_rv = resource_version(&k);
    let etcd = Etcd::start(home.path());
    let servers = format!("--etcd-servers={}", etcd.endpoints_flag());
    let dir = server.dir().to_owned();

    // While the server runs, its store is refused.
    let err = migrate_fails(&dir, &[servers.as_str()]);
    assert!(
        err.contains("a berth-server is running") && err.contains("stop it first"),
        "{err}"
    );
    assert!(etcd_keys(&etcd).is_empty(), "nothing written");

    // Killed: its last writes are only in the store's log.
    server.stop();
    let files = store_files(&dir);

    // etcd that does not answer, or endpoints that are no URLs.
    let err = migrate_fails(&dir, &["--etcd-servers=http://127.0.0.1:1"]);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("nothing was written"),
        "{err}"
    );
    let err = migrate_fails(&dir, &["--etcd-servers=etcd.example:2379"]);
    assert!(err.contains("not an http:// or https:// URL"), "{err}");

    // A prefix that holds keys is refused, and left as it is…
    let stray = etcd.etcdctl(&["put", "/registry/configmaps/default/stray", "{}"]);
    assert!(stray.status.success(), "{}", text(&stray));
    let err = migrate_fails(&dir, &[servers.as_str()]);
    assert!(
        err.contains("already holds 1 keys under /registry/") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(etcd_keys(&etcd), ["/registry/configmaps/default/stray"]);

    // …unless --force, which deletes them first and says so.
    let out = berth_server(&dir, &["migrate", "--to-etcd", &servers, "--force"]);
    let summary = text(&out);
    assert!(out.status.success(), "migrate: {summary}");
    for line in [
        "deleted first (--force): 1 keys under /registry/",
        "configmaps",
        "deployments.apps",
        "crontabs.stable.example.com",
        "customresourcedefinitions.apiextensions.k8s.io",
        "1 etcd leases with the TTL left for 1 keys (Events)",
        "skipped: 1 master leases",
        "clients must re-list",
    ] {
        assert!(summary.contains(line), "{line:?} not in:\n{summary}");
    }
    assert_eq!(
        store_files(&dir),
        files,
        "the embedded store is not changed"
    );

    let keys = etcd_keys(&etcd);
    for key in [
        "/registry/namespaces/mig",
        "/registry/configmaps/mig/settings",
        "/registry/configmaps/mig/empty",
        "/registry/secrets/mig/password",
        "/registry/services/mig/web",
        "/registry/apps/deployments/mig/web",
        "/registry/events/mig/web.1",
        "/registry/apiextensions.k8s.io/customresourcedefinitions/crontabs.stable.example.com",
        "/registry/stable.example.com/crontabs/mig/nightly",
        "/registry/ranges/serviceips",
        "/registry/rbac.authorization.k8s.io/clusterroles/cluster-admin",
    ] {
        assert!(
            keys.iter().any(|k| k == key),
            "{key} not in etcd:\n{keys:#?}"
        );
    }
    assert!(
        !keys.iter().any(|k| k.starts_with("/registry/masterleases/")
            || k.starts_with("/registry/core/")
            || k == "/registry/configmaps/default/stray"),
        "{keys:#?}"
    );
    let event = etcd.etcdctl(&["get", "/registry/events/mig/web.1", "-w", "json"]);
    let event: Value = serde_json::from_slice(&event.stdout).expect("etcdctl json");
    assert_ne!(event["kvs"][0]["lease"].as_i64().unwrap_or(0), 0, "{event}");

    // Without --force, a second run finds the prefix taken.
    let err = migrate_fails(&dir, &[servers.as_str()]);
    assert!(err.contains("--force"), "{err}");

    // A server on etcd with the same data dir serves every object as it was.
    server.set_args(&[&QUIET[..], &[servers.as_str()]].concat());
    server.restart();
    let after = objects(&k);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (name, object) in &before {
        assert_eq!(&after[name], object, "{name} on etcd");
    }
    // New resourceVersions are above every old one; a list at an old one is 410 Gone,
    // not another store's history under the same number.
    assert!(
        summary.contains("etcd's history is compacted at"),
        "{summary}"
    );
    assert!(resource_version(&k) > old_rv);
    let err = k.fails(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/mig/configmaps?resourceVersion={old_rv}&resourceVersionMatch=Exact"
        ),
    ]);
    assert!(err.contains("Expired") || err.contains("too old"), "{err}");

    // New writes: creates, an update of a migrated object, a delete, a Service.
    k.ok(&[
        "create",
        "configmap",
        "new",
        "-n",
        "mig",
        "--from-literal=a=b",
    ]);
    k.ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "mig",
        "-p",
        r#"{"data":{"size":"4"}}"#,
    ]);
    assert_eq!(settings(&k, ".data.size"), "4");
    k.ok(&["delete", "configmap", "empty", "-n", "mig"]);
    k.ok(&[
        "create",
        "service",
        "clusterip",
        "api",
        "-n",
        "mig",
        "--tcp=80:8080",
    ]);
    let ip = k.ok(&[
        "get",
        "service",
        "api",
        "-n",
        "mig",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_ne!(Value::String(ip), cluster_ip, "a new address");
    let keys = etcd_keys(&etcd);
    assert!(
        keys.iter().any(|k| k == "/registry/configmaps/mig/new"),
        "{keys:#?}"
    );
    assert!(
        !keys.iter().any(|k| k == "/registry/configmaps/mig/empty"),
        "{keys:#?}"
    );
}

/// Over TLS, as kube-apiserver reaches etcd: `--etcd-cafile`, `--etcd-certfile` and
/// `--etcd-keyfile` with `https://` endpoints; without the client certificate etcd
/// refuses and nothing is written.
#[test]
fn migrate_reaches_etcd_over_tls_with_a_client_certificate() {
    if !Etcd::available() || Etcd::etcdctl_binary().is_none() {
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    let mut server = BerthServer::start_with(SERVER.as_ref(), home.path(), &QUIET);
    let Some(k) = Kubectl::find(&server.kubeconfig(), home.path()) else {
        return;
    };
    k.ok(&["create", "configmap", "over-tls", "--from-literal=a=b"]);
    let dir = server.dir().to_owned();
    server.stop();

    let tls = berth_testkit::EtcdTls::generate(&home.path().join("etcd-tls"));
    let etcd = Etcd::start_with(home.path(), 1, Some(tls.clone()));
    let servers = format!("--etcd-servers={}", etcd.endpoints_flag());
    assert!(servers.contains("https://"), "{servers}");
    let ca = format!("--etcd-cafile={}", tls.ca.display());

    let err = migrate_fails(&dir, &[servers.as_str(), ca.as_str()]);
    assert!(err.contains("nothing was written"), "{err}");
    assert!(
        etcd_keys(&etcd).is_empty(),
        "nothing written without a client certificate"
    );

    let cert = format!("--etcd-certfile={}", tls.client_cert.display());
    let key = format!("--etcd-keyfile={}", tls.client_key.display());
    let out = berth_server(&dir, &["migrate", "--to-etcd", &servers, &ca, &cert, &key]);
    assert!(out.status.success(), "migrate over TLS: {}", text(&out));
    assert!(
        etcd_keys(&etcd).contains(&"/registry/configmaps/default/over-tls".to_owned()),
        "{:?}",
        etcd_keys(&etcd)
    );
}
