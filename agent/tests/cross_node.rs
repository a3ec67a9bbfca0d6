//! Cross-node pod routing (root): two network-namespace "hosts", each with a pod
//! attached by berth-cni (ipMasq, with the cluster CIDR exempt) in its own podCIDR,
//! and a [`Router`] per host synced against Node objects made up for the test.
//! On one segment pods reach each other over TCP in routed and in VXLAN mode, without
//! masquerade, while traffic leaving the cluster CIDR is masqueraded; across two
//! segments joined by a router, `auto` tunnels. A removed node's route goes, a
//! repeated sync changes nothing, and teardown leaves no route or device. With eBPF
//! host routing attached, pod traffic is forwarded by the tc programs (TTL
//! decremented as the kernel does), frames for other hosts are not, and traffic
//! leaving the cluster CIDR stays with the kernel.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_agent::routes::{Config, Mode, Router, VTEP_MAC_ANNOTATION, VXLAN_DEVICE};
use berth_agent::service_lb::external::{self, Cidr};
use berth_cni::exec::{Attach, ConfList, Runner};
use berth_ebpf::SocketLb;
use berth_testkit::{NetNs, Segment, forwarding_host, require_root, skip, workspace_bin};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

const CLUSTER: &str = "10.202.0.0/16";
const PORT: u16 = 7070;

/// berth-cni from this build, or `None` (the test is then skipped).
fn berth_cni_dir() -> Option<PathBuf> {
    let bin = workspace_bin("berth-cni");
    if !bin.exists() {
        skip(&format!(
            "{} is not built (cargo build -p berth-cni)",
            bin.display()
        ));
        return None;
    }
    bin.parent().map(Path::to_path_buf)
}

/// A pod: its namespace, its attachment and its address.
struct Pod {
    ns: NetNs,
    attach: Attach,
    ip: Ipv4Addr,
}

/// One host: its namespace, its pod network and the IPAM's directory.
struct Host {
    ns: NetNs,
    name: &'static str,
    ip: Ipv4Addr,
    pod_cidr: &'static str,
    list: ConfList,
    data: PathBuf,
}

impl Host {
    fn new(name: &'static str, ip: &str, pod_cidr: &'static str) -> Self {
        let ns = forwarding_host(&format!("xn{name}"));
        let data = std::env::temp_dir().join(berth_testkit::unique_name("berth-xn-"));
        let conf = berth_agent::network::default_conflist(pod_cidr, "berth0", &data, Some(CLUSTER));
        let list = ConfList::parse(conf.to_string().as_bytes()).expect("the agent's conflist");
        Self {
            ns,
            name,
            ip: ip.parse().expect("host IP"),
            pod_cidr,
            list,
            data,
        }
    }

    fn pod(&self, runner: &Runner) -> Pod {
        let ns = NetNs::new("xnpod");
        let attach = Attach {
            container_id: format!("xn-{}", ns.name()),
            netns: ns.path(),
            ifname: "eth0".into(),
            args: String::new(),
            capability_args: serde_json::Map::new(),
        };
        let result: Value = self
            .ns
            .run(|| runner.add(&self.list, &attach))
            .unwrap_or_else(|e| panic!("CNI ADD on {}: {e:?}", self.name));
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address in {result}"));
        Pod { ns, attach, ip }
    }

    fn router(&self, mode: Mode) -> Router {
        Router::new(Config {
            node_name: self.name.into(),
            node_ip: self.ip,
            mode,
            netns: Some(self.ns.path()),
        })
        .expect("router")
    }

    fn node(&self, created: &str, mac: [u8; 6]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": self.name, "creationTimestamp": created,
                "annotations": {VTEP_MAC_ANNOTATION: berth_agent::routes::plan::format_mac(mac)}},
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": self.ip.to_string()}]},
        }))
        .expect("node")
    }

    /// berth's routes here, as `ip route` prints them.
    fn routes(&self) -> String {
        self.ns.ip(&["route", "show", "proto", "98"])
    }

    fn vxlan_tx_packets(&self) -> u64 {
        let out = self
            .ns
            .ip(&["-s", "-j", "link", "show", "dev", VXLAN_DEVICE]);
        let v: Value = serde_json::from_str(&out).expect("ip -j prints JSON");
        v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0)
    }

    fn del(&self, runner: &Runner, pod: &Pod) {
        self.ns
            .run(|| runner.del(&self.list, &pod.attach, None))
            .unwrap_or_else(|e| panic!("CNI DEL on {}: {e:?}", self.name));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Connects from `client` to `to` (listening in `server`) and returns the source
/// address the server saw, or why it failed.
fn seen_from(client: &NetNs, server: &NetNs, to: SocketAddr) -> Result<Ipv4Addr, String> {
    let listener = server
        .run(|| TcpListener::bind(to))
        .map_err(|e| format!("bind {to}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::scope(|s| {
        let served = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let answer = client.run(|| -> Result<String, String> {
            let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .map_err(|e| format!("connect {to}: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            let mut text = String::new();
            conn.read_to_string(&mut text)
                .map_err(|e| format!("read from {to}: {e}"))?;
            Ok(text)
        });
        let _ = served.join();
        answer?
            .parse()
            .map_err(|e| format!("the server's answer: {e}"))
    })
}

/// Panics unless a connection from `client` to `to` (served in `server`) arrives
/// from `want`, showing the hosts' network state when it does not.
fn expect_seen(
    (client, server, to): (&NetNs, &NetNs, SocketAddr),
    want: Ipv4Addr,
    what: &str,
    hosts: &[&Host],
) {
    let seen = seen_from(client, server, to);
    if seen == Ok(want) {
        return;
    }
    let mut state = String::new();
    for h in hosts {
        for args in [
            &["-d", "link", "show", "dev", VXLAN_DEVICE][..],
            &["addr"],
            &["route"],
            &["neigh"],
        ] {
            let out = h.ns.ip_on_device(args).unwrap_or_default();
            state.push_str(&format!("{} ip {}:\n{out}\n", h.name, args.join(" ")));
        }
        if let Ok(fdb) =
            h.ns.command("bridge")
                .args(["fdb", "show", "dev", VXLAN_DEVICE])
                .output()
        {
            state.push_str(&format!(
                "{} fdb:\n{}\n",
                h.name,
                String::from_utf8_lossy(&fdb.stdout)
            ));
        }
    }
    panic!("{what}: expected a connection from {want}, got {seen:?}\n{state}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn pods_on_one_segment_talk_routed_and_over_vxlan_without_masquerade() {
    require_root!();
    let Some(cni) = berth_cni_dir() else {
        return;
    };
    let runner = Runner::new(vec![cni]);
    let segment = Segment::new("xnseg");
    let a = Host::new("a", "192.168.201.1", "10.202.0.0/24");
    let b = Host::new("b", "192.168.201.2", "10.202.1.0/24");
    segment.attach(&a.ns, "eth0", "192.168.201.1/24");
    segment.attach(&b.ns, "eth0", "192.168.201.2/24");
    let (pa, pb) = (a.pod(&runner), b.pod(&runner));
    let rt = runtime();
    let to_b = SocketAddr::from((pb.ip, PORT));
    let to_a = SocketAddr::from((pa.ip, PORT));
    assert!(
        seen_from(&pa.ns, &pb.ns, to_b).is_err(),
        "no route to the other host's pods before a sync"
    );
    rt.block_on(async {
        let nodes = |ra: &Router, rb: &Router| {
            vec![
                a.node("2030-01-01T00:00:01Z", ra.vtep_mac()),
                b.node("2030-01-01T00:00:02Z", rb.vtep_mac()),
            ]
        };
        for mode in [Mode::Routed, Mode::Vxlan, Mode::Routed] {
            let (ra, rb) = (a.router(mode), b.router(mode));
            let all = nodes(&ra, &rb);
            for (h, r) in [(&a, &ra), (&b, &rb)] {
                let plan = r.sync(&all).await.expect("sync");
                assert_eq!(plan.routes.len(), 1, "{mode}: {plan:?}");
                assert!(plan.skipped.is_empty(), "{mode}: {:?}", plan.skipped);
                let again = h.routes();
                r.sync(&all).await.expect("a second sync");
                assert_eq!(h.routes(), again, "{mode}: a repeated sync changes nothing");
            }
            let (want_a, want_b) = match mode {
                Mode::Vxlan => (
                    "10.202.1.0/24 via 10.202.1.0 dev berth.vxlan",
                    "10.202.0.0/24 via 10.202.0.0 dev berth.vxlan",
                ),
                _ => (
                    "10.202.1.0/24 via 192.168.201.2 dev eth0",
                    "10.202.0.0/24 via 192.168.201.1 dev eth0",
                ),
            };
            assert!(a.routes().contains(want_a), "{mode} on a: {}", a.routes());
            assert!(b.routes().contains(want_b), "{mode} on b: {}", b.routes());
            assert_eq!(
                a.ns.link_exists(VXLAN_DEVICE),
                mode == Mode::Vxlan,
                "{mode}: the VXLAN device is there only in VXLAN mode"
            );
            let tx_before = if mode == Mode::Vxlan {
                a.vxlan_tx_packets()
            } else {
                0
            };
            expect_seen(
                (&pa.ns, &pb.ns, to_b),
                pa.ip,
                &format!("{mode}: pod a -> pod b, not masqueraded"),
                &[&a, &b],
            );
            expect_seen(
                (&pb.ns, &pa.ns, to_a),
                pb.ip,
                &format!("{mode}: pod b -> pod a, not masqueraded"),
                &[&a, &b],
            );
            if mode == Mode::Vxlan {
                assert!(
                    a.vxlan_tx_packets() > tx_before,
                    "the traffic went through {VXLAN_DEVICE}"
                );
                let fdb =
                    a.ns.command("bridge")
                        .args(["fdb", "show", "dev", VXLAN_DEVICE])
                        .output()
                        .expect("bridge fdb");
                let fdb = String::from_utf8_lossy(&fdb.stdout);
                assert!(
                    fdb.contains("dst 192.168.201.2") && fdb.contains("permanent"),
                    "fdb of a: {fdb}"
                );
            }
        }
        // Leaving the cluster CIDR is masqueraded: pod a -> host b's own address.
        let to_host_b = SocketAddr::from((b.ip, PORT));
        expect_seen(
            (&pa.ns, &b.ns, to_host_b),
            a.ip,
            "pod a -> host b leaves the cluster CIDR: masqueraded to host a",
            &[&a, &b],
        );
        // Node b goes: its route on a goes.
        let (ra, rb) = (a.router(Mode::Vxlan), b.router(Mode::Vxlan));
        ra.sync(&nodes(&ra, &rb)).await.expect("sync");
        assert!(a.ns.link_exists(VXLAN_DEVICE));
        let plan = ra
            .sync(&[a.node("2030-01-01T00:00:01Z", ra.vtep_mac())])
            .await
            .expect("sync without b");
        assert!(plan.routes.is_empty());
        assert_eq!(a.routes(), "", "the route to b's pods is gone");
        ra.teardown().await.expect("teardown a");
        rb.teardown().await.expect("teardown b");
        ra.teardown().await.expect("a second teardown is fine");
    });
    for h in [&a, &b] {
        assert_eq!(h.routes(), "", "no route left on {}", h.name);
        assert!(
            !h.ns.link_exists(VXLAN_DEVICE),
            "no VXLAN device left on {}",
            h.name
        );
    }
    a.del(&runner, &pa);
    b.del(&runner, &pb);
}

#[test]
fn auto_mode_tunnels_between_hosts_on_two_segments() {
    require_root!();
    let Some(cni) = berth_cni_dir() else {
        return;
    };
    let runner = Runner::new(vec![cni]);
    let (left, right) = (Segment::new("xnl"), Segment::new("xnr"));
    let router = forwarding_host("xnrt");
    left.attach(&router, "eth0", "192.168.211.254/24");
    right.attach(&router, "eth1", "192.168.212.254/24");
    let a = Host::new("a", "192.168.211.1", "10.202.4.0/24");
    let b = Host::new("b", "192.168.212.1", "10.202.5.0/24");
    left.attach(&a.ns, "eth0", "192.168.211.1/24");
    right.attach(&b.ns, "eth0", "192.168.212.1/24");
    a.ns.ip_ok(&["route", "add", "default", "via", "192.168.211.254"]);
    b.ns.ip_ok(&["route", "add", "default", "via", "192.168.212.254"]);
    let (pa, pb) = (a.pod(&runner), b.pod(&runner));
    let to_b = SocketAddr::from((pb.ip, PORT));
    assert!(
        seen_from(&pa.ns, &pb.ns, to_b).is_err(),
        "the router between the segments knows no pod range"
    );
    runtime().block_on(async {
        let (ra, rb) = (a.router(Mode::Auto), b.router(Mode::Auto));
        let all = vec![
            a.node("2030-01-01T00:00:01Z", ra.vtep_mac()),
            b.node("2030-01-01T00:00:02Z", rb.vtep_mac()),
        ];
        for r in [&ra, &rb] {
            let plan = r.sync(&all).await.expect("sync");
            assert!(plan.vtep.is_some(), "auto chose VXLAN: {plan:?}");
        }
        assert!(
            a.routes()
                .contains("10.202.5.0/24 via 10.202.5.0 dev berth.vxlan"),
            "{}",
            a.routes()
        );
        expect_seen(
            (&pa.ns, &pb.ns, to_b),
            pa.ip,
            "pod a -> pod b through the tunnel, across the router",
            &[&a, &b],
        );
        ra.teardown().await.expect("teardown a");
        rb.teardown().await.expect("teardown b");
    });
    for h in [&a, &b] {
        assert_eq!(h.routes(), "", "no route left on {}", h.name);
        assert!(!h.ns.link_exists(VXLAN_DEVICE));
    }
    a.del(&runner, &pa);
    b.del(&runner, &pb);
}

/// The TTL a UDP datagram from `client` arrives with at `to` (bound in `server`).
fn udp_ttl(client: &NetNs, server: &NetNs, to: SocketAddr) -> u8 {
    let sock = server
        .run(|| std::net::UdpSocket::bind(to))
        .unwrap_or_else(|e| panic!("bind {to}: {e}"));
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4RecvTtl, &true)
        .expect("IP_RECVTTL");
    client.run(|| {
        let out = std::net::UdpSocket::bind("0.0.0.0:0").expect("client socket");
        out.send_to(b"ttl?", to).expect("send");
    });
    let mut buf = [0u8; 16];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(libc::c_int);
    let msg = nix::sys::socket::recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("a datagram");
    for c in msg.cmsgs().expect("control messages") {
        if let nix::sys::socket::ControlMessageOwned::Ipv4Ttl(ttl) = c {
            return u8::try_from(ttl).expect("a TTL fits a byte");
        }
    }
    panic!("no IP_TTL control message");
}

#[test]
fn ebpf_host_routing_forwards_pod_traffic_between_attached_interfaces() {
    require_root!();
    let Some(cni) = berth_cni_dir() else {
        return;
    };
    let object = berth_testkit::tools::ebpf_object();
    if !object.exists() {
        skip(&format!(
            "{} is not built (cargo xtask build-ebpf)",
            object.display()
        ));
        return;
    }
    let runner = Runner::new(vec![cni]);
    let segment = Segment::new("xnhr");
    // A hub, not a switch: every frame reaches every host, so host c sees a's and
    // b's unicast frames (PACKET_OTHERHOST) and must not forward them.
    segment
        .ns()
        .ip_ok(&["link", "set", "br0", "type", "bridge", "ageing_time", "0"]);
    let a = Host::new("a", "192.168.203.1", "10.202.8.0/24");
    let b = Host::new("b", "192.168.203.2", "10.202.9.0/24");
    let c = Host::new("c", "192.168.203.3", "10.202.10.0/24");
    for (h, addr) in [
        (&a, "192.168.203.1/24"),
        (&b, "192.168.203.2/24"),
        (&c, "192.168.203.3/24"),
    ] {
        segment.attach(&h.ns, "eth0", addr);
    }
    let (pa, pb, pc) = (a.pod(&runner), b.pod(&runner), c.pod(&runner));
    let rt = runtime();
    let _in_runtime = rt.enter();
    let routers = [
        a.router(Mode::Routed),
        b.router(Mode::Routed),
        c.router(Mode::Routed),
    ];
    rt.block_on(async {
        let nodes = vec![
            a.node("2030-01-01T00:00:01Z", routers[0].vtep_mac()),
            b.node("2030-01-01T00:00:02Z", routers[1].vtep_mac()),
            c.node("2030-01-01T00:00:03Z", routers[2].vtep_mac()),
        ];
        for r in &routers {
            r.sync(&nodes).await.expect("sync");
        }
    });
    let cluster: Cidr = CLUSTER.parse().expect("cluster CIDR");
    let mut lbs: Vec<SocketLb> = [&a, &b, &c]
        .iter()
        .map(|h| {
            let mut lb = SocketLb::load(&object).expect("load the eBPF object");
            let cfg = external::Config {
                node_ip: Some(h.ip),
                nodeport_addresses: Vec::new(),
                pod_bridge: "berth0".into(),
                netns: None,
                host_routing: Some(cluster),
            };
            h.ns.run(|| external::attach(&cfg, &mut lb, &mut Default::default(), true))
                .unwrap_or_else(|e| panic!("attach on {}: {e}", h.name));
            lb
        })
        .collect();
    let routed = |lbs: &[SocketLb]| -> Vec<u64> {
        lbs.iter()
            .map(|lb| lb.stats().expect("stats").host_routed)
            .collect()
    };
    let (to_b, to_a) = (
        SocketAddr::from((pb.ip, PORT)),
        SocketAddr::from((pa.ip, PORT)),
    );
    expect_seen((&pa.ns, &pb.ns, to_b), pa.ip, "pod a -> pod b", &[&a, &b]);
    expect_seen((&pb.ns, &pa.ns, to_a), pb.ip, "pod b -> pod a", &[&a, &b]);
    let after = routed(&lbs);
    assert!(
        after[0] > 0 && after[1] > 0,
        "a and b forwarded in eBPF: {after:?}"
    );
    assert_eq!(
        after[2], 0,
        "c forwarded frames that were not for it: {after:?}"
    );
    // Two hops, as the kernel's forwarding counts them.
    assert_eq!(
        udp_ttl(&pa.ns, &pb.ns, SocketAddr::from((pb.ip, PORT + 1))),
        62
    );
    assert!(
        routed(&lbs)[0] > after[0],
        "the datagram took the eBPF path"
    );
    // Leaving the cluster CIDR stays with the kernel, which masquerades it.
    expect_seen(
        (&pa.ns, &b.ns, SocketAddr::from((b.ip, PORT))),
        a.ip,
        "pod a -> host b: masqueraded by the kernel",
        &[&a, &b],
    );
    // Off: the same traffic is forwarded by the kernel, and still arrives.
    for lb in &mut lbs {
        lb.set_host_routing(None).expect("off");
    }
    let before = routed(&lbs);
    expect_seen(
        (&pa.ns, &pc.ns, SocketAddr::from((pc.ip, PORT))),
        pa.ip,
        "pod a -> pod c, kernel",
        &[&a, &c],
    );
    assert_eq!(routed(&lbs), before, "no eBPF forwarding once turned off");
    drop(lbs);
    rt.block_on(async {
        for r in &routers {
            r.teardown().await.expect("teardown");
        }
    });
    a.del(&runner, &pa);
    b.del(&runner, &pb);
    c.del(&runner, &pc);
}
