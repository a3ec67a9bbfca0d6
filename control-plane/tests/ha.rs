//! A highly available control plane: a three-member etcd cluster and two or three
//! berth-servers on it (127.0.0.1, .2 and .3, one port), started with one cluster CA
//! and service-account key (`--client-ca-file`, `--client-ca-key-file`,
//! `--service-account-signing-key-file`) made before any of them. The servers start at
//! once (their bootstraps race) and serve the same objects: kubectl against either sees
//! them, a watch through one sees writes through another, a watch resumed on another
//! server from the last resourceVersion goes on without 410, and Service addresses and
//! node ports allocated through all three at once never repeat. The `kubernetes`
//! Endpoints list every live server; a server killed with SIGKILL drops out when its
//! master lease expires, one stopped with SIGTERM at once. When the server whose
//! scheduler and controllers lead is killed during a Deployment rollout (hollow node
//! and kubelet, tests/hollow), the other takes their Leases over within the lease time
//! and the rollout completes. A GET or LIST without resourceVersion through one server
//! right after a write through another sees the write (kube-apiserver's consistent
//! reads, KEP-2340), also after a write outside `--etcd-prefix`.

mod hollow;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Etcd, Kubectl};
use futures_util::{StreamExt, TryStreamExt};
use hollow::{Kubelet, eventually, image, node, ready};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, GetParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

/// The master lease TTL (apiserver::endpoint_reconciler::TTL).
const LEASE_TTL: Duration = Duration::from_secs(15);

/// A cluster CA and a service-account signing key, made before any server starts (as
/// an operator makes them, or copies them from the first server's `pki/`).
fn shared_pki(home: &Path) -> PathBuf {
    let dir = home.join("shared-pki");
    std::fs::create_dir_all(&dir).expect("the shared PKI dir");
    let (cert, key) =
        berth_control_plane::apiserver::pki::self_signed_ca("berth-ca").expect("a CA");
    std::fs::write(dir.join("ca.crt"), cert).expect("ca.crt");
    std::fs::write(dir.join("ca.key"), key).expect("ca.key");
    let sa = rcgen::KeyPair::generate().expect("a P-256 key");
    std::fs::write(dir.join("sa.key"), sa.serialize_pem()).expect("sa.key");
    dir
}

fn flags(etcd: &Etcd, pki: &Path, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        format!("--etcd-servers={}", etcd.endpoints_flag()),
        format!("--client-ca-file={}", pki.join("ca.crt").display()),
        format!("--client-ca-key-file={}", pki.join("ca.key").display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.join("sa.key").display()
        ),
    ];
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    flags
}

/// Servers on 127.0.0.1, .2, … (one port), prepared, not started.
fn servers(home: &Path, count: usize, flags: &[String]) -> Vec<BerthServer> {
    let port = BerthServer::free_port();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    (1..=count)
        .map(|i| {
            BerthServer::prepare_at(
                env!("CARGO_BIN_EXE_berth-server").as_ref(),
                home,
                &format!("127.0.0.{i}"),
                port,
                &flags,
            )
        })
        .collect()
}

/// `/readyz` through curl: the status code.
fn readyz(server: &BerthServer) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(server.ca())
        .arg(format!("{}/readyz", server.url()))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn wait_ready(server: &BerthServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(server) != 200 {
        assert!(
            Instant::now() < deadline,
            "{} not ready within 60 s: {}",
            server.url(),
            std::fs::read_to_string(server.dir().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The addresses the `kubernetes` Endpoints list, and their port(s).
async fn endpoint_addresses(client: &kube::Client) -> (BTreeSet<String>, BTreeSet<i32>) {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let Ok(Some(ep)) = api.get_opt("kubernetes").await else {
        return Default::default();
    };
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for subset in ep.subsets.unwrap_or_default() {
        ips.extend(
            subset
                .addresses
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.ip),
        );
        ports.extend(subset.ports.unwrap_or_default().into_iter().map(|p| p.port));
    }
    (ips, ports)
}

async fn slice_addresses(client: &kube::Client) -> BTreeSet<String> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let Ok(Some(slice)) = api.get_opt("kubernetes").await else {
        return BTreeSet::new();
    };
    slice
        .endpoints
        .into_iter()
        .flatten()
        .flat_map(|e| e.addresses)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": name}}))
        .expect("configmap")
}

#[test]
fn servers_on_one_etcd_serve_the_same_objects_watches_allocations_and_endpoints() {
    if !Etcd::available() {
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    let etcd = Etcd::cluster(home.path(), 3);
    let pki = shared_pki(home.path());
    let flags = flags(&etcd, &pki, &["--scheduler=false", "--controllers=false"]);
    let mut servers = servers(home.path(), 3, &flags);
    // All three at once: their bootstraps (namespaces, RBAC, the kubernetes Service,
    // flow control, the service ranges) race on one etcd.
    for s in &mut servers {
        s.spawn();
    }
    for s in &mut servers {
        s.wait_ready();
    }
    for s in &servers {
        wait_ready(s);
    }
    let port = i32::from(servers[0].port());
    let Some(kubectl_a) = Kubectl::find(&servers[0].kubeconfig(), home.path()) else {
        return;
    };
    let kubectl_b = Kubectl::find(&servers[1].kubeconfig(), home.path()).expect("kubectl");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let mut clients = Vec::new();
        for s in &servers {
            clients.push(
                from_kubeconfig(&s.kubeconfig(), "e2e.test")
                    .await
                    .expect("client"),
            );
        }
        let (a, b, c) = (clients[0].clone(), clients[1].clone(), clients[2].clone());

        // One of each bootstrap object, whoever made it.
        for client in &clients {
            let svc = Api::<Service>::namespaced(client.clone(), "default")
                .get("kubernetes")
                .await
                .expect("the kubernetes Service");
            let spec = svc.spec.expect("spec");
            assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                Api::<Namespace>::all(client.clone())
                    .get(ns)
                    .await
                    .expect("a bootstrap namespace");
            }
        }

        // The kubernetes Endpoints and EndpointSlice list all three servers.
        let all = set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        eventually(
            "the kubernetes endpoints to list three servers",
            LEASE_TTL,
            || {
                let (b, all) = (b.clone(), all.clone());
                async move {
                    let (ips, ports) = endpoint_addresses(&b).await;
                    (ips == all
                        && ports == BTreeSet::from([port])
                        && slice_addresses(&b).await == all)
                        .then_some(())
                }
            },
        )
        .await;

        // A watch through A sees a write through B; kubectl against either sees it.
        let cms_a: Api<ConfigMap> = Api::namespaced(a.clone(), "default");
        let cms_b: Api<ConfigMap> = Api::namespaced(b.clone(), "default");
        let cms_c: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
        let listed = cms_a
            .list(&ListParams::default())
            .await
            .expect("list through A");
        let rv = listed.metadata.resource_version.expect("a list RV");
        let mut watch_a = cms_a
            .watch(&WatchParams::default().timeout(60), &rv)
            .await
            .expect("watch through A")
            .boxed();
        cms_b
            .create(&PostParams::default(), &configmap("from-b"))
            .await
            .expect("create through B");
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match watch_a.try_next().await.expect("the watch through A") {
                    Some(WatchEvent::Added(cm)) => return cm,
                    Some(WatchEvent::Error(e)) => panic!("the watch through A failed: {e:?}"),
                    Some(_) => {}
                    None => panic!("the watch through A ended"),
                }
            }
        })
        .await
        .expect("the watch through A sees the write through B within 10 s");
        assert_eq!(seen.metadata.name.as_deref(), Some("from-b"));
        let last_rv = seen.metadata.resource_version.expect("an RV");
        for kubectl in [&kubectl_a, &kubectl_b] {
            assert_eq!(
                kubectl.ok(&["get", "configmap", "from-b", "-o", "jsonpath={.data.a}"]),
                "from-b"
            );
        }

        // Services made through all three servers at once never share an address or
        // a node port: the allocation bitmaps are in etcd.
        let creates = (0..24).map(|i| {
            let client = clients[i % 3].clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i}")},
                    "spec": {"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": "x"}},
                }))
                .expect("service");
                Api::<Service>::namespaced(client, "default")
                    .create(&PostParams::default(), &svc)
                    .await
                    .expect("create a Service")
            }
        });
        let made = futures_util::future::join_all(creates).await;
        let ips: BTreeSet<String> = made
            .iter()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        let node_ports: BTreeSet<i32> = made
            .iter()
            .filter_map(|s| s.spec.as_ref()?.ports.as_ref()?.first()?.node_port)
            .collect();
        assert_eq!(ips.len(), 24, "distinct cluster IPs: {ips:?}");
        assert_eq!(node_ports.len(), 24, "distinct node ports: {node_ports:?}");
        assert!(
            !ips.contains("10.96.0.1"),
            "the kubernetes Service's address stays its own"
        );
        let keys = etcd.etcdctl(&["get", "--prefix", "/registry/ranges", "--keys-only"]);
        let keys = String::from_utf8_lossy(&keys.stdout);
        assert!(keys.contains("/registry/ranges/serviceips"), "{keys}");
        assert!(keys.contains("/registry/ranges/servicenodeports"), "{keys}");
        // A requested address another server handed out is refused.
        let taken = ips.iter().next().expect("an address").clone();
        let dup: Service = serde_json::from_value(json!({
            "metadata": {"name": "dup"},
            "spec": {"clusterIP": taken, "ports": [{"port": 80}]},
        }))
        .expect("service");
        let err = Api::<Service>::namespaced(c.clone(), "default")
            .create(&PostParams::default(), &dup)
            .await
            .expect_err("an address already allocated");
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422),
            "{err:?}"
        );

        // SIGKILL of A: the watch resumes on B from the last resourceVersion A sent,
        // without 410, and sees what was written meanwhile through C.
        drop(watch_a);
        servers[0].stop();
        let killed = Instant::now();
        cms_c
            .create(&PostParams::default(), &configmap("from-c"))
            .await
            .expect("create through C");
        let mut watch_b = cms_b
            .watch(&WatchParams::default().timeout(60), &last_rv)
            .await
            .expect("watch through B")
            .boxed();
        let resumed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match watch_b.try_next().await.expect("the watch through B") {
                    Some(WatchEvent::Added(cm)) => return cm,
                    Some(WatchEvent::Error(e)) => {
                        panic!("the watch resumed on B failed (410?): {e:?}")
                    }
                    Some(_) => {}
                    None => panic!("the watch through B ended"),
                }
            }
        })
        .await
        .expect("the resumed watch sees the write through C");
        assert_eq!(resumed.metadata.name.as_deref(), Some("from-c"));

        // A's address leaves the endpoints when its master lease expires.
        let two = set(&["127.0.0.2", "127.0.0.3"]);
        eventually(
            "the killed server to leave the kubernetes endpoints",
            LEASE_TTL + Duration::from_secs(5),
            || {
                let (b, two) = (b.clone(), two.clone());
                async move {
                    (endpoint_addresses(&b).await.0 == two && slice_addresses(&b).await == two)
                        .then_some(())
                }
            },
        )
        .await;
        let took = killed.elapsed();
        assert!(
            took <= LEASE_TTL + Duration::from_secs(3),
            "dropped after {took:?}, more than the lease TTL"
        );

        // SIGTERM of C: it takes itself out at once.
        assert!(
            servers[2].terminate(Duration::from_secs(10)),
            "berth-server exits on SIGTERM"
        );
        let stopped = Instant::now();
        eventually(
            "the stopped server to leave the kubernetes endpoints at once",
            Duration::from_secs(3),
            || {
                let b = b.clone();
                async move { (endpoint_addresses(&b).await.0 == set(&["127.0.0.2"])).then_some(()) }
            },
        )
        .await;
        assert!(stopped.elapsed() < Duration::from_secs(3));
    });
}

/// The Lease `name` in kube-system: its holder.
async fn holder(client: &kube::Client, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// A resourceVersion as a number.
fn rv_of(meta: Option<&String>) -> i64 {
    meta.and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("a numeric resourceVersion, not {meta:?}"))
}

#[test]
fn a_read_through_one_server_sees_a_write_just_acknowledged_by_another() {
    if !Etcd::available() {
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    let etcd = Etcd::cluster(home.path(), 3);
    let pki = shared_pki(home.path());
    let flags = flags(&etcd, &pki, &["--scheduler=false", "--controllers=false"]);
    let mut servers = servers(home.path(), 3, &flags);
    for s in &mut servers {
        s.spawn();
    }
    for s in &mut servers {
        s.wait_ready();
    }
    for s in &servers {
        wait_ready(s);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let mut clients = Vec::new();
        for s in &servers {
            clients.push(from_kubeconfig(&s.kubeconfig(), "e2e.test").await.expect("client"));
        }
        let cms_a: Api<ConfigMap> = Api::namespaced(clients[0].clone(), "default");
        let cms_b: Api<ConfigMap> = Api::namespaced(clients[1].clone(), "default");
        let counter = cms_a
            .create(&PostParams::default(), &configmap("counter"))
            .await
            .expect("create the counter through A");
        let mut counter_rv = counter.metadata.resource_version.clone();
        for i in 0..200 {
            // A create through A, then at once a GET and a LIST through B.
            let name = format!("raw-{i}");
            let made = cms_a
                .create(&PostParams::default(), &configmap(&name))
                .await
                .unwrap_or_else(|e| panic!("create {name} through A: {e}"));
            let got = cms_b.get(&name).await.unwrap_or_else(|e| {
                panic!("GET {name} through B right after A acknowledged it: {e}")
            });
            assert_eq!(
                got.metadata.resource_version, made.metadata.resource_version,
                "GET {name} through B"
            );
            let listed = cms_b
                .list(&ListParams::default())
                .await
                .expect("LIST through B");
            assert!(
                listed
                    .items
                    .iter()
                    .any(|cm| cm.metadata.name.as_deref() == Some(name.as_str())),
                "LIST through B right after A created {name} lacks it (list at {:?}, {name} at {:?})",
                listed.metadata.resource_version,
                made.metadata.resource_version
            );
            assert!(
                rv_of(listed.metadata.resource_version.as_ref())
                    >= rv_of(made.metadata.resource_version.as_ref()),
                "the LIST's resourceVersion is at or after the write"
            );

            // An update through A, likewise.
            let value = format!("v{i}");
            let patch = json!({"metadata": {"resourceVersion": counter_rv}, "data": {"a": value}});
            let updated = cms_a
                .patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("update the counter to {value} through A: {e}"));
            counter_rv = updated.metadata.resource_version.clone();
            let data = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get("a")).cloned();
            // At once an update through B pinned at the resourceVersion A returned,
            // before anything makes B's watch cache catch up: B starts updates from
            // its cached copy, and one behind must neither refuse the pin (409) nor
            // lose A's change.
            let patch = json!({"metadata": {"resourceVersion": counter_rv}, "data": {"b": format!("b{i}")}});
            let updated = cms_b
                .patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("update the counter through B right after A: {e}"));
            assert_eq!(
                data(&updated).as_deref(),
                Some(value.as_str()),
                "B's update right after A's kept A's change"
            );
            // And one without a pin, through A right after B's.
            let patch = json!({"data": {"c": format!("c{i}")}});
            let updated = cms_a
                .patch("counter", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap_or_else(|e| panic!("update the counter through A right after B: {e}"));
            let b = updated.data.as_ref().and_then(|d| d.get("b")).cloned();
            assert_eq!(b, Some(format!("b{i}")), "A's update right after B's kept B's change");
            counter_rv = updated.metadata.resource_version.clone();
            let got = cms_b.get("counter").await.expect("GET the counter through B");
            assert_eq!(
                data(&got).as_deref(),
                Some(value.as_str()),
                "GET through B right after A's update"
            );
            let listed = cms_b
                .list(&ListParams::default())
                .await
                .expect("LIST through B");
            let seen = listed
                .items
                .iter()
                .find(|cm| cm.metadata.name.as_deref() == Some("counter"))
                .and_then(data);
            assert_eq!(
                seen.as_deref(),
                Some(value.as_str()),
                "LIST through B right after A's update"
            );
        }

        // resourceVersion=0 may be served from B's cache as it is: it answers.
        cms_b
            .list(&ListParams::default().match_any())
            .await
            .expect("LIST with resourceVersion=0 through B");
        cms_b
            .get_with("counter", &GetParams::any())
            .await
            .expect("GET with resourceVersion=0 through B");

        // A write outside --etcd-prefix moves etcd's revision past anything B's watch
        // cache is sent; a consistent read through B still answers, with the objects.
        let out = etcd.etcdctl(&["put", "/elsewhere/key", "value"]);
        assert!(
            out.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let asked = Instant::now();
        let listed = cms_b
            .list(&ListParams::default())
            .await
            .expect("LIST through B after a write outside the prefix");
        assert!(
            listed
                .items
                .iter()
                .any(|cm| cm.metadata.name.as_deref() == Some("raw-199")),
            "LIST through B after a write outside the prefix"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the LIST took {:?}",
            asked.elapsed()
        );
    });
}

#[test]
fn the_other_server_takes_over_a_rollout_when_the_leading_one_is_killed() {
    if !Etcd::available() {
        return;
    }
    let home = tempfile::tempdir().expect("temp home");
    let etcd = Etcd::cluster(home.path(), 3);
    let pki = shared_pki(home.path());
    let flags = flags(&etcd, &pki, &[]);
    let mut servers = servers(home.path(), 2, &flags);
    // A alone first, so its scheduler and controllers lead; then B.
    servers[0].restart();
    wait_ready(&servers[0]);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let a = rt.block_on(async {
        from_kubeconfig(&servers[0].kubeconfig(), "e2e.test")
            .await
            .expect("client A")
    });
    let leaders = rt.block_on(eventually(
        "A's scheduler and controllers to lead",
        Duration::from_secs(60),
        || {
            let a = a.clone();
            async move {
                Some((
                    holder(&a, "kube-scheduler").await?,
                    holder(&a, "kube-controller-manager").await?,
                ))
            }
        },
    ));
    servers[1].restart();
    wait_ready(&servers[1]);
    let kubectl_b = Kubectl::find(&servers[1].kubeconfig(), home.path());
    rt.block_on(async {
        // Everything from here on goes through B, the server that stays.
        let b = from_kubeconfig(&servers[1].kubeconfig(), "e2e.test")
            .await
            .expect("client B");
        node(&b, "hollow-1", "8", json!({}), json!([])).await;
        let _kubelet = Kubelet::start(b.clone(), &["hollow-1"]);
        let deployments: Api<Deployment> = Api::namespaced(b.clone(), "default");
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:v1"}]},
                },
            },
        }))
        .expect("deployment");
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create the Deployment");
        let pods: Api<Pod> = Api::namespaced(b.clone(), "default");
        eventually("three ready v1 pods", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .ok()?;
                (list
                    .items
                    .iter()
                    .filter(|p| ready(p) && image(p) == "web:v1")
                    .count()
                    == 3)
                    .then_some(())
            }
        })
        .await;

        // The rollout starts; A — leading both — is killed at once.
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "web", "image": "web:v2"}]}}}})),
            )
            .await
            .expect("update the Deployment");
        servers[0].stop();
        let killed = Instant::now();

        // B takes both Leases within the lease time (15 s, and a 2 s retry period).
        let takeover = Duration::from_secs(15 + 2 + 5);
        eventually("B's scheduler and controllers to lead", takeover, || {
            let (b, leaders) = (b.clone(), leaders.clone());
            async move {
                let scheduler = holder(&b, "kube-scheduler").await?;
                let controllers = holder(&b, "kube-controller-manager").await?;
                (scheduler != leaders.0 && controllers != leaders.1).then_some(())
            }
        })
        .await;
        assert!(killed.elapsed() <= takeover);

        // The rollout completes: three ready v2 pods, the new ReplicaSet at its count.
        eventually(
            "the rollout to complete on B",
            Duration::from_secs(90),
            || {
                let (deployments, pods) = (deployments.clone(), pods.clone());
                async move {
                    let d = deployments.get("web").await.ok()?;
                    let status = d.status?;
                    let done = status.updated_replicas == Some(3)
                        && status.available_replicas == Some(3)
                        && status.replicas == Some(3);
                    let list = pods
                        .list(&ListParams::default().labels("app=web"))
                        .await
                        .ok()?;
                    let v2 = list
                        .items
                        .iter()
                        .filter(|p| {
                            ready(p)
                                && image(p) == "web:v2"
                                && p.metadata.deletion_timestamp.is_none()
                        })
                        .count();
                    (done && v2 == 3).then_some(())
                }
            },
        )
        .await;
        let sets: Api<ReplicaSet> = Api::namespaced(b.clone(), "default");
        let list = sets
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("ReplicaSets");
        let new = list
            .items
            .iter()
            .find(|rs| {
                rs.spec
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref()?.containers.first()?.image.clone())
                    .as_deref()
                    == Some("web:v2")
            })
            .expect("the new ReplicaSet");
        assert_eq!(new.status.as_ref().and_then(|s| s.ready_replicas), Some(3));
        if let Some(kubectl) = kubectl_b {
            let out = kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
            assert!(out.contains("successfully rolled out"), "{out}");
        }
    });
}
