//! Reaching Services from outside the node, as a client on another host would: a
//! network namespace of the test's ("outside") is wired to the node's pod network
//! namespace by a veth on 10.251.0.0/24, and the agent answers on it
//! (`--nodeport-addresses=10.251.0.0/24`): a NodePort, a LoadBalancer address from
//! berth-server's `--lb-pool` (ARP answered by the eBPF program), its
//! `loadBalancerSourceRanges`, `externalTrafficPolicy: Local` with its
//! `healthCheckNodePort`, a pod's hostPort — and the address and health check go when
//! the Service turns back into a NodePort, and nothing answers once the Service and the
//! pod are gone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use berth_testkit::{NetNs, require_root, unique_name};
use serde_json::Value;

mod common;
use common::{Cluster, cluster_full, ready};

const NODE_ADDR: &str = "10.251.0.1";
const CLIENT_ADDR: &str = "10.251.0.2";
const POOL: &str = "10.251.0.100-10.251.0.109";

/// An HTTP/1.0 GET from the outside namespace: the status line and the body.
fn get(outside: &NetNs, addr: &str, port: u16) -> Result<(String, String), String> {
    let target: SocketAddr = format!("{addr}:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    outside.run(move || {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .map_err(|e| format!("connect {target}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read {target}: {e}"))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Ok((
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        ))
    })
}

/// Waits until a GET gives an answer `ok` accepts; returns it.
fn until(
    c: &Cluster,
    outside: &NetNs,
    what: &str,
    addr: &str,
    port: u16,
    ok: impl Fn(&Result<(String, String), String>) -> bool,
) -> Result<(String, String), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = get(outside, addr, port);
        if ok(&answer) {
            return answer;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what} ({addr}:{port}, last {answer:?}); {}",
                c.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn service(c: &Cluster) -> Value {
    c.kubectl.json(&["get", "service", "web"])
}

fn node_port(svc: &Value) -> u16 {
    svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("a nodePort")
}

/// The veth between the node's network and the outside host, addressed and up.
fn wire(node_ns: &NetNs, outside: &NetNs, node_end: &str, client_end: &str) {
    node_ns.ip_ok(&[
        "link", "add", node_end, "type", "veth", "peer", "name", client_end,
    ]);
    node_ns.ip_ok(&["link", "set", client_end, "netns", outside.name()]);
    node_ns.ip_ok(&["addr", "add", &format!("{NODE_ADDR}/24"), "dev", node_end]);
    node_ns.ip_ok(&["link", "set", node_end, "up"]);
    outside.ip_ok(&[
        "addr",
        "add",
        &format!("{CLIENT_ADDR}/24"),
        "dev",
        client_end,
    ]);
    outside.ip_ok(&["link", "set", client_end, "up"]);
}

#[test]
fn node_ports_load_balancers_and_host_ports_answer_from_outside() {
    require_root!();
    let _object = berth_testkit::require_ebpf_object!();
    let lb_pool = format!("--lb-pool={POOL}");
    let Some(c) = cluster_full(&[&lb_pool], &["--nodeport-addresses=10.251.0.0/24"]) else {
        return;
    };
    // The outside host and its link to the node's network.
    let outside = NetNs::new("outside");
    // Interface names: at most 15 bytes ("ext" + a pid and a counter fit).
    let (node_end, client_end) = (unique_name("ext"), unique_name("cli"));
    let (node_end, client_end) = (node_end.as_str(), client_end.as_str());
    let node_ns = &c.agent.netns;
    wire(node_ns, &outside, node_end, client_end);
    let forward = node_ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status()
        .expect("sysctl");
    assert!(forward.success());

    c.kubectl.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: server
        image: berth.local/testserver:v1
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    c.wait("a ready replica", Duration::from_secs(120), || {
        c.kubectl.json(&["get", "deployment", "web"])["status"]["readyReplicas"] == 1
    });
    let pods = c.kubectl.json(&["get", "pods", "-l", "app=web"]);
    let pod_name = pods["items"][0]["metadata"]["name"]
        .as_str()
        .expect("the replica")
        .to_owned();

    // NodePort (externalTrafficPolicy: Cluster, masqueraded) on the node's address.
    let np = node_port(&service(&c));
    let (status, body) = until(&c, &outside, "the NodePort", NODE_ADDR, np, |a| {
        a.as_ref().is_ok_and(|(s, _)| s.contains(" 200 "))
    })
    .expect("answered");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains(&pod_name), "answered by {pod_name}: {body:?}");
    // The interface goes and comes back (a new ifindex): the agent attaches again.
    node_ns.ip_ok(&["link", "del", node_end]);
    wire(node_ns, &outside, node_end, client_end);
    let _ = until(
        &c,
        &outside,
        "the NodePort on the re-created interface",
        NODE_ADDR,
        np,
        |a| a.as_ref().is_ok_and(|(_, b)| b.contains(&pod_name)),
    );

    // LoadBalancer: an address from the pool, answered (ARP and the port).
    c.kubectl.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"LoadBalancer"}}"#,
    ]);
    let mut lb_ip = String::new();
    c.wait("a load-balancer address", Duration::from_secs(30), || {
        lb_ip = service(&c)["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !lb_ip.is_empty()
    });
    assert!(lb_ip.starts_with("10.251.0.10"), "{lb_ip} from {POOL}");
    assert_eq!(node_port(&service(&c)), np, "the nodePort is kept");
    until(&c, &outside, "the load-balancer address", &lb_ip, 80, |a| {
        a.as_ref().is_ok_and(|(_, b)| b.contains(&pod_name))
    })
    .expect("answered");
    let events = c.kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web,reason=EnsuredLoadBalancer",
    ]);
    assert!(events.contains("EnsuredLoadBalancer"), "{events}");

    // loadBalancerSourceRanges: a range without the client drops it; with it, served.
    c.kubectl.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"loadBalancerSourceRanges":["10.99.0.0/16"]}}"#,
    ]);
    let _ = until(
        &c,
        &outside,
        "the source range to shut the client out",
        &lb_ip,
        80,
        |a| a.is_err(),
    );
    // NodePorts are not fenced by it (kube-proxy's firewall covers the LB address).
    assert!(get(&outside, NODE_ADDR, np).is_ok());
    c.kubectl.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"loadBalancerSourceRanges":["10.251.0.0/28"]}}"#,
    ]);
    until(
        &c,
        &outside,
        "the source range to let the client in",
        &lb_ip,
        80,
        |a| a.is_ok(),
    )
    .expect("answered");

    // externalTrafficPolicy: Local, with kube-proxy's health check on its port.
    c.kubectl.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Local","loadBalancerSourceRanges":null}}"#,
    ]);
    let hc = service(&c)["spec"]["healthCheckNodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("a healthCheckNodePort");
    let (status, body) = until(&c, &outside, "the health check", NODE_ADDR, hc, |a| {
        a.as_ref().is_ok_and(|(s, _)| s.contains(" 200 "))
    })
    .expect("answered");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["localEndpoints"], 1, "{status} {body}");
    assert_eq!(health["service"]["name"], "web");
    assert_eq!(health["serviceProxyHealthy"], true);
    until(&c, &outside, "the Local NodePort", NODE_ADDR, np, |a| {
        a.as_ref().is_ok_and(|(_, b)| b.contains(&pod_name))
    })
    .expect("answered");
    // No endpoint left on the node: the check says 503 and the NodePort refuses.
    c.kubectl
        .ok(&["scale", "deployment", "web", "--replicas=0"]);
    let (status, body) = until(
        &c,
        &outside,
        "the health check to fail",
        NODE_ADDR,
        hc,
        |a| a.as_ref().is_ok_and(|(s, _)| s.contains(" 503 ")),
    )
    .expect("answered");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["localEndpoints"], 0, "{status} {body}");
    until(&c, &outside, "the NodePort to refuse", NODE_ADDR, np, |a| {
        a.as_ref().is_err_and(|e| e.contains("refused"))
    })
    .expect_err("refused");

    // A pod's hostPort.
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hostport}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: berth.local/testserver:v1
    ports: [{containerPort: 8080, hostPort: 18080}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
"#,
    );
    c.wait("the hostPort pod", Duration::from_secs(60), || {
        ready(&c.pod("hostport"))
    });
    until(&c, &outside, "the hostPort", NODE_ADDR, 18080, |a| {
        a.as_ref().is_ok_and(|(_, b)| b.contains("hostport"))
    })
    .expect("answered");

    // Everything goes with its object.
    c.kubectl
        .ok(&["delete", "pod", "hostport", "--wait=true", "--timeout=60s"]);
    let _ = until(&c, &outside, "the hostPort to go", NODE_ADDR, 18080, |a| {
        a.is_err()
    });
    // Back to NodePort: the address is given back and the status cleared; the
    // health check goes with the Local LoadBalancer.
    c.kubectl.ok(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    c.wait(
        "the load-balancer status cleared",
        Duration::from_secs(30),
        || {
            service(&c)["status"]["loadBalancer"]
                .get("ingress")
                .is_none_or(|i| i.as_array().is_none_or(Vec::is_empty))
        },
    );
    assert!(service(&c)["spec"].get("healthCheckNodePort").is_none());
    let _ = until(&c, &outside, "the health check to go", NODE_ADDR, hc, |a| {
        a.is_err()
    });
    let _ = until(
        &c,
        &outside,
        "the load-balancer address to go",
        &lb_ip,
        80,
        |a| a.is_err(),
    );
    c.kubectl.ok(&["delete", "service", "web"]);
    let _ = until(&c, &outside, "the NodePort to go", NODE_ADDR, np, |a| {
        a.is_err()
    });
    // The address is no longer announced: the outside host's ARP gets no answer.
    let arp = outside
        .command("ip")
        .args(["neigh", "flush", "dev", client_end])
        .status()
        .expect("ip neigh flush");
    assert!(arp.success());
    assert!(get(&outside, &lb_ip, 80).is_err());
    let neigh = outside.ip(&["neigh", "show", &lb_ip]);
    assert!(
        !neigh.contains("REACHABLE") && !neigh.contains("STALE"),
        "{lb_ip} still answers ARP: {neigh}"
    );
    c.kubectl.ok(&[
        "delete",
        "deployment",
        "web",
        "--wait=true",
        "--timeout=60s",
    ]);
    node_ns.ip_ok(&["link", "del", node_end]);
    c.wait_clean();
}
