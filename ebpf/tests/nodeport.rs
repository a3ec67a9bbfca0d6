//! NodePort through the tc programs (root): a "node" netns with an external link to
//! an "external host" netns and a link to a "pod" netns. The external host reaches
//! the pod's server at node-address:NodePort over TCP and UDP; replies come back
//! from the NodePort address (reverse NAT), and the pod sees the client's own
//! address (no SNAT for a local backend).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread,
    time::Duration,
};

use berth_ebpf::{Frontend, Protocol, ServiceOptions, SocketLb};
use berth_testkit::{NetNs, require_root};

const NODE_EXT: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
const NODE_POD: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 2);

/// A veth pair: `dev` in `a`, `eth0` in `b`.
fn wire(a: &NetNs, dev: &str, b: &NetNs) {
    a.ip_ok(&[
        "link",
        "add",
        dev,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ]);
}

/// `addr` on `dev` in `ns`, and `dev` up.
fn address(ns: &NetNs, addr: &str, dev: &str) {
    ns.ip_ok(&["addr", "add", addr, "dev", dev]);
    ns.ip_ok(&["link", "set", dev, "up"]);
}

/// IPv4 forwarding on in `ns` (a netns of the test's own).
fn forwarding(ns: &NetNs) {
    let status = ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.ip_forward=1"])
        .status()
        .expect("sysctl");
    assert!(status.success(), "enable forwarding in {}", ns.name());
}

/// node <-> pod and node <-> external host, forwarding on in the node.
fn topology() -> (NetNs, NetNs, NetNs) {
    let (node, pod, ext) = (
        NetNs::new("bnpnode"),
        NetNs::new("bnppod"),
        NetNs::new("bnpext"),
    );
    wire(&node, "np0", &pod);
    wire(&node, "ext0", &ext);
    address(&node, &format!("{NODE_POD}/24"), "np0");
    address(&node, &format!("{NODE_EXT}/24"), "ext0");
    address(&pod, &format!("{POD}/24"), "eth0");
    address(&ext, &format!("{CLIENT}/24"), "eth0");
    pod.ip_ok(&["route", "add", "default", "via", &NODE_POD.to_string()]);
    forwarding(&node);
    (node, pod, ext)
}

#[test]
fn nodeport_reaches_a_pod_from_an_external_host_and_replies_are_reverse_natted() {
    require_root!();
    let object = berth_testkit::require_ebpf_object!();
    let (node, pod, ext) = topology();
    let mut lb = SocketLb::load(&object).expect("load");
    node.run(|| lb.attach_external("ext0"))
        .expect("attach tc programs to ext0");
    lb.set_node_ips(&[NODE_EXT]).expect("node addresses");
    let tcp = Frontend {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30080,
        protocol: Protocol::Tcp,
    };
    let udp = Frontend {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30081,
        protocol: Protocol::Udp,
    };
    lb.set_service(tcp, &[SocketAddrV4::new(POD, 8080)])
        .expect("TCP NodePort");
    lb.set_service(udp, &[SocketAddrV4::new(POD, 8081)])
        .expect("UDP NodePort");

    // The pod's servers; the TCP one reports who connected.
    let (seen_tx, seen_rx) = mpsc::channel();
    let listener = pod.run(|| TcpListener::bind((POD, 8080)).expect("bind tcp"));
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let _ = seen_tx.send(s.peer_addr().ok());
            let _ = s.write_all(b"hello from the pod");
        }
    });
    let udp_server = pod.run(|| UdpSocket::bind((POD, 8081)).expect("bind udp"));
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp_server.recv_from(&mut buf) {
            let _ = udp_server.send_to(b"udp pod", from);
        }
    });

    for _ in 0..3 {
        let (body, peer) = ext.run(|| {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((NODE_EXT, 30080)),
                Duration::from_secs(3),
            )
            .expect("external host connects to the NodePort");
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("read");
            (body, s.peer_addr().expect("peer"))
        });
        assert_eq!(body, "hello from the pod");
        assert_eq!(
            peer,
            SocketAddr::from((NODE_EXT, 30080)),
            "the client talks to the NodePort"
        );
        let seen = seen_rx
            .recv_timeout(Duration::from_secs(3))
            .expect("pod saw a connection");
        assert_eq!(
            seen.map(|a| a.ip()),
            Some(CLIENT.into()),
            "the pod sees the client's own address"
        );
    }

    let (reply, from) = ext.run(|| {
        let s = UdpSocket::bind((CLIENT, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.send_to(b"ping", (NODE_EXT, 30081)).expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_from(&mut buf)
            .expect("UDP reply through the NodePort");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert_eq!(
        (reply.as_str(), from),
        ("udp pod", SocketAddr::from((NODE_EXT, 30081))),
        "reply from the NodePort"
    );

    // An external IP routed to the node: same path, exact frontend match.
    let external_ip = Ipv4Addr::new(10, 212, 0, 100);
    ext.ip_ok(&[
        "route",
        "add",
        &format!("{external_ip}/32"),
        "via",
        &NODE_EXT.to_string(),
    ]);
    let eip = Frontend {
        addr: external_ip,
        port: 80,
        protocol: Protocol::Tcp,
    };
    lb.set_service(eip, &[SocketAddrV4::new(POD, 8080)])
        .expect("external IP");
    let (body, peer) = ext.run(|| {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((external_ip, 80)),
            Duration::from_secs(3),
        )
        .expect("external host connects to the external IP");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        (body, s.peer_addr().expect("peer"))
    });
    assert_eq!(
        (body.as_str(), peer),
        ("hello from the pod", SocketAddr::from((external_ip, 80)))
    );
    seen_rx
        .recv_timeout(Duration::from_secs(3))
        .expect("pod saw the external-IP connection");

    let stats = lb.stats().expect("stats");
    assert_eq!(
        stats.nodeport_new, 5,
        "three TCP NodePort flows, one UDP, one external IP: {stats:?}"
    );
    assert!(
        stats.nodeport_tracked > 8,
        "later packets of each flow, both ways: {stats:?}"
    );

    // No endpoints: the SYN is answered with a RST, as kube-proxy's REJECT does.
    lb.set_service(tcp, &[]).expect("empty");
    let started = std::time::Instant::now();
    let refused = ext.run(|| {
        TcpStream::connect_timeout(&SocketAddr::from((NODE_EXT, 30080)), Duration::from_secs(3))
    });
    let error = refused.expect_err("no backend, no connection");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "refused, not timed out: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "at once: {:?}",
        started.elapsed()
    );

    // And a UDP datagram gets an ICMP port unreachable: a connected socket sees
    // ECONNREFUSED instead of waiting for a reply that never comes.
    lb.set_service(udp, &[]).expect("empty UDP");
    let udp_error = ext.run(|| {
        let s = UdpSocket::bind((CLIENT, 0)).expect("bind");
        s.connect((NODE_EXT, 30081)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.send(b"ping").expect("send");
        let mut buf = [0u8; 16];
        s.recv(&mut buf).expect_err("no backend, no reply")
    });
    assert_eq!(
        udp_error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "ICMP port unreachable: {udp_error}"
    );
    assert!(lb.stats().expect("stats").nodeport_no_backends > 0);
    drop(lb);
    drop((node, pod, ext));
}

#[test]
fn pinned_nodeport_attachments_survive_an_agent_restart() {
    require_root!();
    let object = berth_testkit::require_ebpf_object!();
    let bpffs = berth_testkit::BpfFs::new();
    let (node, pod, ext) = topology();
    let listener = pod.run(|| TcpListener::bind((POD, 8080)).expect("bind tcp"));
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let _ = s.write_all(b"pod");
        }
    });
    let fetch = || {
        ext.run(|| {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((NODE_EXT, 30090)),
                Duration::from_millis(800),
            )?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok::<String, std::io::Error>(body)
        })
    };

    let mut first = SocketLb::open(&object, Some(bpffs.path())).expect("open with pins");
    node.run(|| first.attach_external("ext0"))
        .expect("attach and pin");
    first.set_node_ips(&[NODE_EXT]).expect("node addresses");
    let np = Frontend {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30090,
        protocol: Protocol::Tcp,
    };
    first
        .set_service(np, &[SocketAddrV4::new(POD, 8080)])
        .expect("NodePort");
    assert_eq!(fetch().expect("before the restart"), "pod");

    drop(first); // the agent is gone
    assert_eq!(fetch().expect("while no agent runs"), "pod");

    let mut second = SocketLb::open(&object, Some(bpffs.path())).expect("reopen");
    node.run(|| second.attach_external("ext0"))
        .expect("keeps the pinned tc links");
    assert_eq!(second.frontends(), [np], "NodePort adopted");
    assert_eq!(fetch().expect("after the restart"), "pod");

    second.unpin().expect("unpin");
    drop(second);
    assert!(
        fetch().is_err(),
        "unpinned and dropped: the NodePort is gone"
    );
}

#[test]
fn cluster_policy_masquerades_to_a_backend_on_another_node() {
    require_root!();
    let object = berth_testkit::require_ebpf_object!();
    // external host — node A — node B — pod; node B has no route to the external
    // host, so only a masqueraded flow can be answered.
    let (a, b, pod, ext) = (
        NetNs::new("bsnata"),
        NetNs::new("bsnatb"),
        NetNs::new("bsnatpod"),
        NetNs::new("bsnatext"),
    );
    wire(&a, "ext0", &ext);
    wire(&a, "link0", &b);
    wire(&b, "np0", &pod);
    address(&a, "10.211.0.1/24", "ext0");
    address(&ext, "10.211.0.2/24", "eth0");
    address(&a, "10.230.0.1/24", "link0");
    address(&b, "10.230.0.2/24", "eth0");
    address(&b, "10.220.0.1/24", "np0");
    address(&pod, "10.220.0.2/24", "eth0");
    a.ip_ok(&["route", "add", "10.220.0.0/24", "via", "10.230.0.2"]);
    pod.ip_ok(&["route", "add", "default", "via", "10.220.0.1"]);
    forwarding(&a);
    forwarding(&b);
    let (seen_tx, seen_rx) = mpsc::channel();
    let listener =
        pod.run(|| TcpListener::bind((Ipv4Addr::new(10, 220, 0, 2), 8080)).expect("bind"));
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            let _ = seen_tx.send(s.peer_addr().ok());
            let _ = s.write_all(b"remote pod");
        }
    });

    let mut lb = SocketLb::load(&object).expect("load");
    a.run(|| lb.attach_external("ext0"))
        .expect("attach on the external side");
    a.run(|| lb.attach_external("link0"))
        .expect("attach on the side toward node B");
    lb.set_node_ips(&[NODE_EXT]).expect("node addresses");
    let np = Frontend {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30100,
        protocol: Protocol::Tcp,
    };
    let backend = [SocketAddrV4::new(Ipv4Addr::new(10, 220, 0, 2), 8080)];
    let connect = |timeout| {
        ext.run(|| {
            let mut s = TcpStream::connect_timeout(&SocketAddr::from((NODE_EXT, 30100)), timeout)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok::<(String, SocketAddr), std::io::Error>((body, s.peer_addr()?))
        })
    };

    // Without masquerading (externalTrafficPolicy: Local semantics) node B cannot answer.
    lb.set_service(np, &backend).expect("NodePort without SNAT");
    assert!(
        connect(Duration::from_millis(700)).is_err(),
        "no route back without SNAT"
    );
    while seen_rx.try_recv().is_ok() {}

    lb.set_service_with(
        np,
        &backend,
        ServiceOptions {
            snat: true,
            ..ServiceOptions::default()
        },
    )
    .expect("SNAT");
    for _ in 0..3 {
        let (body, peer) =
            connect(Duration::from_secs(3)).expect("masqueraded NodePort connection");
        assert_eq!(
            (body.as_str(), peer),
            ("remote pod", SocketAddr::from((NODE_EXT, 30100)))
        );
        let seen = seen_rx
            .recv_timeout(Duration::from_secs(3))
            .expect("pod saw it");
        assert_eq!(
            seen.map(|s| s.ip()),
            Some(Ipv4Addr::new(10, 230, 0, 1).into()),
            "source is node A toward node B"
        );
    }
    drop(lb);
    drop((a, b, pod, ext));
}
