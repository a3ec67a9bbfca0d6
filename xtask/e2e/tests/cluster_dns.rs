//! Cluster DNS end to end: berth-server creates the `kube-dns` Service, the agent
//! answers for it on its node, and pods resolve through it with the real kubectl
//! driving. From a busybox pod: a Service by its short and full name, an HTTP request
//! by name, a StatefulSet-style `p-0.sub` name of a headless Service, SRV of a named
//! port, an ExternalName's CNAME (its target from an upstream the test runs itself,
//! on loopback), `kubernetes.default`, a name outside the cluster; a deleted Service
//! stops resolving; after `kill -9` of the agent DNS answers again. With `dig` against
//! the listener over UDP and TCP: every record type, NXDOMAIN vs NODATA, and a stub
//! domain from the `kube-system/berth-dns` ConfigMap (a bad ConfigMap changes
//! nothing).

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::{ChildGuard, DNS_LISTENER, require_root};
use serde_json::Value;

mod common;
use common::{Cluster, cluster_full, ready};

/// A dnsmasq on 127.0.0.1 answering `names` (`/domain/ip`), nothing else; killed by
/// PID on drop.
struct Upstream {
    port: u16,
    _child: ChildGuard,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

impl Upstream {
    /// dnsmasq on a free port of 127.0.0.1. It binds TCP as well as UDP on the port, and
    /// another test may hold the TCP one: dnsmasq then exits, and the next port is tried.
    fn start(names: &[&str]) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(names) {
                Ok(up) => return up,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn try_start(names: &[&str]) -> Result<Self, String> {
        let port = free_udp_port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            &format!("--port={port}"),
        ]);
        for n in names {
            cmd.arg(format!("--address={n}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt package dnsmasq-base, installed by cargo xtask setup)");
        let mut up = Self {
            port,
            _child: ChildGuard(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = up._child.0.try_wait() {
                return Err(format!("dnsmasq on 127.0.0.1:{port} exited: {status}"));
            }
            if dig(
                None,
                &format!("@127.0.0.1 -p {port} probe.invalid +tries=1 +time=1"),
            )
            .contains("status:")
            {
                return Ok(up);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("dnsmasq on 127.0.0.1:{port} did not answer"))
    }
}

/// `dig` with `args` (split on spaces), inside `c`'s node network namespace when
/// given; its whole output. dig's exit 9 ("no reply from server") is an answer of
/// its own (`ask` reports it as "no answer"); any other failure panics.
fn dig(c: Option<&Cluster>, args: &str) -> String {
    let mut cmd = match c {
        Some(c) => c.agent.netns.command("dig"),
        None => Command::new("dig"),
    };
    let out = cmd
        .args(args.split_whitespace())
        .output()
        .expect("dig (apt package bind9-dnsutils, installed by cargo xtask setup)");
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "dig {args} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig` at the agent's listener; the answer section's data column and the status.
fn ask(c: &Cluster, args: &str) -> (String, Vec<String>) {
    let out = dig(Some(c), &format!("@{DNS_LISTENER} +tries=2 +time=2 {args}"));
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_owned();
    let answers = out
        .split(";; ANSWER SECTION:")
        .nth(1)
        .map(|s| {
            s.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
                .collect()
        })
        .unwrap_or_default();
    (status, answers)
}

fn exec(c: &Cluster, pod: &str, cmd: &str) -> (bool, String) {
    let out = c.kubectl.run(&["exec", pod, "--", "sh", "-c", cmd]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `cmd` in `pod` until its output contains `needle` (30 s).
fn eventually_contains(c: &Cluster, pod: &str, cmd: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = exec(c, pod, cmd).1;
        if last.contains(needle) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "`{cmd}` in {pod}: never printed {needle:?}; last output:\n{last}\nagent log:\n{}",
        std::fs::read_to_string(c.agent.log_file()).unwrap_or_default()
    );
}

fn json_str<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: berth.local/testserver:v1, imagePullPolicy: Never}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: sub}
spec:
  clusterIP: None
  selector: {app: member}
  ports: [{name: peer, port: 7000}]
---
apiVersion: v1
kind: Pod
metadata: {name: p-0, labels: {app: member}}
spec:
  hostname: p-0
  subdomain: sub
  containers:
  - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.outside.test}
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sleep, "3600"]}
"#;

#[test]
fn pods_resolve_services_headless_names_srv_externalname_and_outside_names() {
    require_root!();
    let upstream = Upstream::start(&["/outside.test/192.0.2.77"]);
    let dns_upstream = format!("127.0.0.1:{}", upstream.port);
    let Some(c) = cluster_full(&[], &["--dns-upstream", &dns_upstream]) else {
        return;
    };
    let dns = c
        .kubectl
        .json(&["get", "service", "kube-dns", "-n", "kube-system"]);
    assert_eq!(json_str(&dns, "/spec/clusterIP"), "10.96.0.10", "{dns}");
    assert_eq!(
        json_str(&dns, "/metadata/labels/k8s-app"),
        "kube-dns",
        "{dns}"
    );

    c.kubectl.apply(APP);
    for pod in ["client", "p-0"] {
        c.wait_pod(pod, "Ready", ready);
    }
    let svc = c.kubectl.json(&["get", "service", "web"]);
    let web_ip = json_str(&svc, "/spec/clusterIP").to_owned();
    let p0 = c.pod("p-0");
    let p0_ip = json_str(&p0, "/status/podIP").to_owned();
    let resolv = exec(&c, "client", "cat /etc/resolv.conf").1;
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    // A Service by its short name (search list) and its full name.
    eventually_contains(&c, "client", "nslookup web", &web_ip);
    eventually_contains(
        &c,
        "client",
        "nslookup web.default.svc.cluster.local",
        &web_ip,
    );
    // HTTP by name: the answer is the serving pod's hostname.
    eventually_contains(&c, "client", "wget -qO- http://web", "web-");
    // The StatefulSet-style name of a pod behind a headless Service.
    eventually_contains(
        &c,
        "client",
        "nslookup p-0.sub.default.svc.cluster.local",
        &p0_ip,
    );
    eventually_contains(&c, "client", "nslookup sub", &p0_ip);
    // SRV of a named port.
    let srv = eventually_contains(
        &c,
        "client",
        "nslookup -type=srv _http._tcp.web.default.svc.cluster.local",
        "web.default.svc.cluster.local",
    );
    assert!(srv.contains(" 80 "), "{srv}");
    // ExternalName: the CNAME, and its target resolved upstream.
    let ext = eventually_contains(
        &c,
        "client",
        "nslookup ext.default.svc.cluster.local",
        "192.0.2.77",
    );
    assert!(ext.contains("www.outside.test"), "{ext}");
    // The apiserver's Service, and a name outside the cluster.
    eventually_contains(&c, "client", "nslookup kubernetes.default", "10.96.0.1");
    eventually_contains(&c, "client", "nslookup www.outside.test", "192.0.2.77");
    // The pod record of the spec's 2.6.
    let dashed = format!("{}.default.pod.cluster.local", p0_ip.replace('.', "-"));
    eventually_contains(&c, "client", &format!("nslookup {dashed}"), &p0_ip);

    // Every record type over UDP and TCP at the listener itself.
    for transport in ["+notcp", "+tcp"] {
        let (status, a) = ask(&c, &format!("{transport} web.default.svc.cluster.local A"));
        assert_eq!(
            (status.as_str(), a),
            ("NOERROR", vec![format!("A {web_ip}")])
        );
        let (status, a) = ask(
            &c,
            &format!("{transport} web.default.svc.cluster.local AAAA"),
        );
        assert_eq!((status.as_str(), a.len()), ("NOERROR", 0), "NODATA");
        let (status, _) = ask(&c, &format!("{transport} nope.default.svc.cluster.local A"));
        assert_eq!(status, "NXDOMAIN");
        let (_, srv) = ask(
            &c,
            &format!("{transport} _peer._tcp.sub.default.svc.cluster.local SRV"),
        );
        assert_eq!(
            srv,
            vec!["SRV 0 100 7000 p-0.sub.default.svc.cluster.local.".to_owned()]
        );
        let (_, ptr) = ask(&c, &format!("{transport} -x {web_ip}"));
        assert_eq!(ptr, vec!["PTR web.default.svc.cluster.local.".to_owned()]);
        let (_, ptr) = ask(&c, &format!("{transport} -x {p0_ip}"));
        assert_eq!(
            ptr,
            vec!["PTR p-0.sub.default.svc.cluster.local.".to_owned()]
        );
        let (_, txt) = ask(&c, &format!("{transport} dns-version.cluster.local TXT"));
        assert_eq!(txt, vec!["TXT \"1.1.0\"".to_owned()]);
        let (_, cname) = ask(
            &c,
            &format!("{transport} ext.default.svc.cluster.local CNAME"),
        );
        assert_eq!(cname, vec!["CNAME www.outside.test.".to_owned()]);
        let (_, soa) = ask(&c, &format!("{transport} cluster.local SOA"));
        assert!(
            soa.first()
                .is_some_and(|s| s.starts_with("SOA ns.dns.cluster.local.")),
            "{soa:?}"
        );
    }

    // The agent's metrics count what it answered.
    let metrics = c
        .kubectl
        .ok(&["get", "--raw", "/api/v1/nodes/node-e2e/proxy/metrics"]);
    for family in [
        "berth_dns_requests_total{proto=\"udp\",type=\"A\"}",
        "berth_dns_requests_total{proto=\"tcp\",type=\"A\"}",
        "berth_dns_responses_total{rcode=\"NXDOMAIN\"}",
        "berth_dns_cache_misses_total",
        "berth_dns_upstream_duration_seconds_count",
        "berth_dns_zone_services",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }

    // A stub domain from the ConfigMap, applied without a restart; a bad ConfigMap
    // keeps it.
    let stub = Upstream::start(&["/stub.test/192.0.2.88"]);
    c.kubectl.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: berth-dns, namespace: kube-system}}\ndata:\n  stubDomains: '{{\"stub.test\": [\"127.0.0.1:{}\"]}}'\n",
        stub.port
    ));
    let resolved = |c: &Cluster| ask(c, "www.stub.test A").1 == vec!["A 192.0.2.88".to_owned()];
    c.wait("the stub domain to answer", Duration::from_secs(15), || {
        resolved(&c)
    });
    c.kubectl.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: berth-dns, namespace: kube-system}\ndata:\n  upstreamNameservers: 'not json'\n",
    );
    c.wait(
        "the bad ConfigMap to be refused",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(c.agent.log_file())
                .unwrap_or_default()
                .contains("berth-dns refused")
        },
    );
    assert!(resolved(&c), "the configuration in force stays");

    // A deleted Service stops resolving.
    c.kubectl.ok(&["delete", "service", "web"]);
    c.wait("web to stop resolving", Duration::from_secs(10), || {
        ask(&c, "web.default.svc.cluster.local A").0 == "NXDOMAIN"
    });
    eventually_contains(
        &c,
        "client",
        "nslookup web.default.svc.cluster.local",
        "NXDOMAIN",
    );
    c.kubectl
        .ok(&["delete", "pod", "client", "p-0", "--wait=false"]);
}

#[test]
fn dns_answers_again_after_the_agent_is_killed() {
    require_root!();
    let Some(mut c) = cluster_full(&["--controllers=false"], &[]) else {
        return;
    };
    c.kubectl.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: berth.local/busybox:1.35, imagePullPolicy: Never, command: [sleep, \"3600\"]}\n",
    );
    c.wait_pod("client", "Ready", ready);
    eventually_contains(&c, "client", "nslookup kubernetes.default", "10.96.0.1");
    c.agent.kill();
    c.agent.restart();
    let started = Instant::now();
    c.wait(
        "the agent to answer DNS again",
        Duration::from_secs(30),
        || ask(&c, "kubernetes.default.svc.cluster.local A").1 == vec!["A 10.96.0.1".to_owned()],
    );
    eprintln!("DNS answered {:?} after the restart", started.elapsed());
    eventually_contains(&c, "client", "nslookup kubernetes.default", "10.96.0.1");
    c.kubectl.ok(&["delete", "pod", "client", "--wait=false"]);
}
