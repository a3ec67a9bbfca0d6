//! NetworkPolicy, checked the way Kubernetes' own e2e suite (test/e2e/network/netpol)
//! checks it: 3 namespaces × 3 pods, and after each policy change the whole 9 × 9
//! reachability matrix is probed from inside the pods (testserver's `/connect`) and
//! compared with the truth table. Cases: no policy, default deny ingress, allow from
//! pods with a label, from a namespace, from namespace AND pod selectors, ipBlock with
//! an except, named ports, an endPort range, egress deny with one UDP port allowed,
//! an update taking effect on new connections within a second, deleting the policy
//! reopening; invalid policies refused with their field paths, denied packets in the
//! agent's metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use berth_testkit::require_root;

mod common;
use common::{Cluster, cluster_full, ready};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// `ns/pod` → its IP.
type Ips = BTreeMap<String, String>;
/// (from, to) pairs that connect.
type Matrix = BTreeSet<(String, String)>;

fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// An HTTP GET to a pod from the node's pod network (the node may always reach its
/// pods); the body.
fn http(c: &Cluster, ip: &str, path: &str) -> Result<String, String> {
    let addr: SocketAddr = format!("{ip}:8080").parse().map_err(|e| format!("{e}"))?;
    let path = path.to_owned();
    c.agent.netns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default())
    })
}

/// Probes every pair at `port` (`udp`: the echo port) from inside each source pod.
fn probe(c: &Cluster, ips: &Ips, port: u16, udp: bool) -> Matrix {
    let targets: Vec<String> = all_pods()
        .iter()
        .map(|p| format!("{}:{port}", ips[p]))
        .collect();
    let by_addr: BTreeMap<String, String> = all_pods()
        .iter()
        .map(|p| (format!("{}:{port}", ips[p]), p.clone()))
        .collect();
    let query = format!(
        "/connect?to={}&timeout_ms=700{}",
        targets.join(","),
        if udp { "&protocol=udp" } else { "" }
    );
    // Every source at once: a denied target costs the probe's timeout.
    let bodies: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = all_pods()
            .into_iter()
            .map(|from| {
                let query = &query;
                s.spawn(move || {
                    let body = http(c, &ips[&from], query).unwrap_or_default();
                    (from, body)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut out = Matrix::new();
    for (from, body) in bodies {
        for line in body.lines() {
            if let Some((addr, "ok")) = line.split_once(' ')
                && let Some(to) = by_addr.get(addr)
            {
                out.insert((from.clone(), to.clone()));
            }
        }
    }
    out
}

/// The truth table `allowed(from, to)` says, self-connections always allowed.
fn expect(allowed: impl Fn(&str, &str) -> bool) -> Matrix {
    let mut out = Matrix::new();
    for from in all_pods() {
        for to in all_pods() {
            if from == to || allowed(&from, &to) {
                out.insert((from.clone(), to));
            }
        }
    }
    out
}

fn show(m: &Matrix) -> String {
    let mut s = String::from("       ");
    for to in all_pods() {
        s.push_str(&format!("{to:>5}"));
    }
    for from in all_pods() {
        s.push_str(&format!("\n{from:>5}  "));
        for to in all_pods() {
            s.push_str(if m.contains(&(from.clone(), to)) {
                "    ."
            } else {
                "    X"
            });
        }
    }
    s
}

/// Waits until the probed matrix is `want`; returns how long that took.
fn until_matrix(
    c: &Cluster,
    ips: &Ips,
    what: &str,
    port: u16,
    udp: bool,
    want: &Matrix,
) -> Duration {
    let start = Instant::now();
    let mut got = Matrix::new();
    while start.elapsed() < Duration::from_secs(30) {
        got = probe(c, ips, port, udp);
        if got == *want {
            return start.elapsed();
        }
    }
    panic!(
        "{what}: reachability on port {port}{}\nwant:\n{}\ngot:\n{}\n{}",
        if udp { "/udp" } else { "" },
        show(want),
        show(&got),
        c.diagnostics()
    );
}

fn ns(p: &str) -> &str {
    p.split_once('/').map_or(p, |(n, _)| n)
}

#[test]
fn network_policies_follow_upstreams_truth_tables() {
    require_root!();
    let _object = berth_testkit::require_ebpf_object!();
    // Maps and links pinned, so policy outlives the agent (dropped after the cluster).
    let bpffs = berth_testkit::BpfFs::new();
    let pins = format!("--bpf-pin-dir={}", bpffs.path().join("berth").display());
    let Some(mut c) = cluster_full(&[], &[&pins]) else {
        return;
    };
    let mut manifest = String::new();
    for n in NAMESPACES {
        manifest.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{n}\", labels: {{ns: \"{n}\"}}}}\n---\n"
        ));
        for p in PODS {
            manifest.push_str(&format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: "{p}", namespace: "{n}", labels: {{pod: "{p}"}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: berth.local/testserver:v1
    ports: [{{name: http, containerPort: 8080}}, {{name: https, containerPort: 8443}}, {{name: echo, containerPort: 9001, protocol: UDP}}]
---
"#
            ));
        }
    }
    c.kubectl.apply(&manifest);
    let mut ips = Ips::new();
    c.wait("9 pods running", Duration::from_secs(180), || {
        let pods = c.kubectl.json(&["get", "pods", "-A", "-l", "pod"]);
        ips = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| ready(p))
            .filter_map(|p| {
                Some((
                    format!(
                        "{}/{}",
                        p["metadata"]["namespace"].as_str()?,
                        p["metadata"]["name"].as_str()?
                    ),
                    p["status"]["podIP"].as_str()?.to_owned(),
                ))
            })
            .collect();
        ips.len() == 9
    });

    // Invalid policies are refused with the field at fault.
    let bad = c.kubectl.run_with_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: "10.0.0.0/33", except: ["10.1.0.0/24"]}}]
    ports: [{port: 90, endPort: 80}, {endPort: 100}]
"#,
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "accepted: {err}");
    for field in [
        "spec.ingress[0].from[0].ipBlock.cidr",
        "spec.ingress[0].ports[0].endPort",
        "spec.ingress[0].ports[1].port",
    ] {
        assert!(err.contains(field), "{field} named in: {err}");
    }

    let everyone = expect(|_, _| true);
    until_matrix(&c, &ips, "no policy", 8080, false, &everyone);

    // Default deny ingress in x.
    c.kubectl.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    let deny_x = |_: &str, to: &str| ns(to) != "x";
    until_matrix(
        &c,
        &ips,
        "default deny ingress in x",
        8080,
        false,
        &expect(deny_x),
    );
    let metrics = c
        .kubectl
        .ok(&["get", "--raw", "/api/v1/nodes/node-e2e/proxy/metrics"]);
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "berth_netpol_denied_packets_total{namespace=\"x\",policy=\"deny-all\",direction=\"ingress\"}"
        )),
        "denied packets counted per policy: {metrics}"
    );

    // The policy holds while the agent is down and after it comes back.
    c.agent.kill();
    until_matrix(
        &c,
        &ips,
        "deny with no agent running",
        8080,
        false,
        &expect(deny_x),
    );
    c.agent.restart();
    until_matrix(
        &c,
        &ips,
        "deny after the agent's restart",
        8080,
        false,
        &expect(deny_x),
    );
    c.wait(
        "the restarted agent enforcing",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(c.agent.log_file())
                .is_ok_and(|log| log.matches("NetworkPolicy enforcing").count() >= 2)
        },
    );
    until_matrix(
        &c,
        &ips,
        "deny once the agent synced",
        8080,
        false,
        &expect(deny_x),
    );

    // Allow x/a from pods labelled pod=b in x.
    let allow = |name: &str, rule: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - {rule}\n"
        )
    };
    c.kubectl.apply(&allow(
        "allow-a",
        "from: [{podSelector: {matchLabels: {pod: b}}}]",
    ));
    until_matrix(
        &c,
        &ips,
        "x/a from pods b of x",
        8080,
        false,
        &expect(|from, to| deny_x(from, to) || (to == "x/a" && from == "x/b")),
    );

    // From namespace y.
    c.kubectl.apply(&allow(
        "allow-a",
        "from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]",
    ));
    until_matrix(
        &c,
        &ips,
        "x/a from namespace y",
        8080,
        false,
        &expect(|from, to| deny_x(from, to) || (to == "x/a" && ns(from) == "y")),
    );

    // From namespace z AND pods c.
    c.kubectl.apply(&allow(
        "allow-a",
        "from: [{namespaceSelector: {matchLabels: {ns: \"z\"}}, podSelector: {matchLabels: {pod: c}}}]",
    ));
    until_matrix(
        &c,
        &ips,
        "x/a from z/c only",
        8080,
        false,
        &expect(|from, to| deny_x(from, to) || (to == "x/a" && from == "z/c")),
    );

    // ipBlock of the pod network except y/b.
    let rule = format!(
        "from: [{{ipBlock: {{cidr: 10.77.0.0/24, except: [{}/32]}}}}]",
        ips["y/b"]
    );
    c.kubectl.apply(&allow("allow-a", &rule));
    until_matrix(
        &c,
        &ips,
        "x/a from the pod network except y/b",
        8080,
        false,
        &expect(|from, to| deny_x(from, to) || (to == "x/a" && from != "y/b")),
    );

    // Named port: only "http" (8080) of x/a, from anywhere.
    c.kubectl.apply(&allow("allow-a", "ports: [{port: http}]"));
    let only_a = |from: &str, to: &str| deny_x(from, to) || to == "x/a";
    until_matrix(
        &c,
        &ips,
        "x/a on its named port",
        8080,
        false,
        &expect(only_a),
    );
    until_matrix(&c, &ips, "x/a not on 8443", 8443, false, &expect(deny_x));

    // endPort: 8000-8100 lets 8080 in, not 8443.
    c.kubectl
        .apply(&allow("allow-a", "ports: [{port: 8000, endPort: 8100}]"));
    until_matrix(&c, &ips, "x/a on 8000-8100", 8080, false, &expect(only_a));
    until_matrix(
        &c,
        &ips,
        "x/a 8443 outside the range",
        8443,
        false,
        &expect(deny_x),
    );

    // Egress deny in y with one UDP port allowed.
    c.kubectl.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress, namespace: \"y\"}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{ports: [{protocol: UDP, port: 9001}]}]\n",
    );
    until_matrix(
        &c,
        &ips,
        "y sends nothing over TCP",
        8080,
        false,
        &expect(|from, to| only_a(from, to) && ns(from) != "y"),
    );
    // UDP to the echo port: y may send; x still refuses all but what allow-a lets in
    // (TCP 8000-8100 only).
    until_matrix(
        &c,
        &ips,
        "y reaches the UDP echo port",
        9001,
        true,
        &expect(|_, to| deny_x("", to)),
    );
    c.kubectl
        .ok(&["delete", "networkpolicy", "-n", "y", "egress"]);

    // An update takes effect on new connections within a second: y/a, shut out,
    // is let in by the next version of the policy.
    until_matrix(&c, &ips, "egress policy gone", 8080, false, &expect(only_a));
    c.kubectl.apply(&allow(
        "allow-a",
        "from: [{podSelector: {matchLabels: {pod: b}}}]",
    ));
    until_matrix(
        &c,
        &ips,
        "x/a from x/b only",
        8080,
        false,
        &expect(|from, to| deny_x(from, to) || (to == "x/a" && from == "x/b")),
    );
    let probe_once = || {
        let body = http(
            &c,
            &ips["y/a"],
            &format!("/connect?to={}:8080&timeout_ms=100", ips["x/a"]),
        )
        .unwrap_or_default();
        body.ends_with(" ok")
    };
    assert!(!probe_once(), "y/a is shut out before the update");
    c.kubectl.apply(&allow(
        "allow-a",
        "from: [{podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: \"y\"}}}]",
    ));
    let applied = Instant::now();
    while !probe_once() {
        assert!(
            applied.elapsed() < Duration::from_secs(10),
            "the update never took effect; {}",
            c.diagnostics()
        );
    }
    let took = applied.elapsed();
    assert!(took < Duration::from_secs(1), "the update took {took:?}");
    until_matrix(
        &c,
        &ips,
        "x/a from x/b and namespace y",
        8080,
        false,
        &expect(|from, to| deny_x(from, to) || (to == "x/a" && (from == "x/b" || ns(from) == "y"))),
    );

    // A policy the dataplane cannot express (more port ranges for one peer than a rule
    // holds) is reported on the policy and fails closed: x/a stays shut to y/a.
    let ports: Vec<String> = (0..20)
        .map(|i| format!("{{port: {}}}", 7000 + 2 * i))
        .collect();
    c.kubectl
        .apply(&allow("allow-a", &format!("ports: [{}]", ports.join(", "))));
    c.wait(
        "the PolicyNotEnforceable event",
        Duration::from_secs(30),
        || {
            c.kubectl
                .ok(&[
                    "get",
                    "events",
                    "-n",
                    "x",
                    "--field-selector",
                    "reason=PolicyNotEnforceable",
                ])
                .contains("allow-a")
        },
    );
    until_matrix(
        &c,
        &ips,
        "the unexpressible policy fails closed",
        8080,
        false,
        &expect(deny_x),
    );

    // Deleting the policies reopens everything.
    c.kubectl
        .ok(&["delete", "networkpolicy", "-n", "x", "--all"]);
    until_matrix(&c, &ips, "policies deleted", 8080, false, &everyone);

    c.kubectl.ok(&[
        "delete",
        "namespace",
        "x",
        "y",
        "z",
        "--wait=true",
        "--timeout=120s",
    ]);
    c.wait_clean();
}

#[test]
fn with_network_policy_off_policies_are_not_enforced() {
    require_root!();
    let _object = berth_testkit::require_ebpf_object!();
    let Some(c) = cluster_full(&[], &["--network-policy=false"]) else {
        return;
    };
    c.kubectl.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: server, labels: {pod: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: s, image: berth.local/testserver:v1}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {pod: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: s, image: berth.local/testserver:v1}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#,
    );
    let ip = |name: &str| {
        let pod = c.pod(name);
        pod["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    c.wait("both pods running", Duration::from_secs(60), || {
        ready(&c.pod("server")) && ready(&c.pod("client"))
    });
    let (server, client) = (ip("server"), ip("client"));
    let body = http(
        &c,
        &client,
        &format!("/connect?to={server}:8080&timeout_ms=1000"),
    )
    .unwrap_or_default();
    assert!(body.ends_with(" ok"), "not enforced on this node: {body:?}");
    c.kubectl.ok(&[
        "delete",
        "pod",
        "server",
        "client",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}
