//! The eBPF pipeline end to end (root): the connect4 program from `ebpf/programs`,
//! loaded and attached by `berth-ebpf` to a child cgroup, sends connects to a service
//! VIP to a TCP server on 127.0.0.1 in a test netns — for processes in that cgroup
//! only. Never attaches at the host's cgroup root.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    process::{Command, Output},
    sync::mpsc,
    thread,
};

use berth_ebpf::{Frontend, Protocol, SocketLb};
use berth_testkit::{Cgroup2Child, NetNs, require_root};
use nix::sched::{CloneFlags, setns};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_PORT: u16 = 80;
const BODY: &str = "hello from the backend";

/// An HTTP server on 127.0.0.1 inside `ns`, answering every request with [`BODY`].
fn serve_in(ns: &NetNs) -> u16 {
    let ns_path = ns.path();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // setns(2) on this thread only: the listener is created in the test netns.
        let file = File::open(&ns_path).expect("open netns file");
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns into the test netns");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in netns");
        let port = listener.local_addr().expect("local addr").port();
        tx.send(port).expect("send port");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                BODY.len()
            );
        }
    });
    rx.recv().expect("server thread started")
}

/// curl's exit code for "Failed to connect to host" (curl(1), EXIT CODES): a refused
/// or unroutable connect, as opposed to curl missing or failing some other way.
const CURL_COULDNT_CONNECT: i32 = 7;

/// curl to the VIP from inside `ns`, optionally from inside `cgroup` (joined before
/// `ip netns exec`, which remounts /sys).
fn curl_vip(ns: &NetNs, cgroup: Option<&Cgroup2Child>) -> Output {
    let join = cgroup.map_or_else(String::new, |cg| {
        format!("echo $$ > {} && ", cg.procs_file().display())
    });
    let script = format!(
        "{join}exec ip netns exec {} curl -s --max-time 5 http://{VIP}:{VIP_PORT}/",
        ns.name()
    );
    Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh")
}

#[test]
fn connect4_sends_vip_to_backend_only_inside_the_cgroup() {
    require_root!();
    let object = berth_testkit::require_ebpf_object!();
    let ns = NetNs::new("berthe");
    let cgroup = Cgroup2Child::new("berth-test-");
    let port = serve_in(&ns);

    let mut lb = SocketLb::load(&object).expect("load eBPF object");
    lb.attach(cgroup.path())
        .expect("attach connect4 to the child cgroup");
    let frontend = Frontend {
        addr: VIP,
        port: VIP_PORT,
        protocol: Protocol::Tcp,
    };
    lb.set_service(frontend, &[SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)])
        .expect("program the service after attach");

    let inside = curl_vip(&ns, Some(&cgroup));
    assert!(
        inside.status.success() && String::from_utf8_lossy(&inside.stdout) == BODY,
        "a client in the cgroup must reach the backend through the VIP; got {:?}, stdout {:?}, stderr {:?}",
        inside.status,
        String::from_utf8_lossy(&inside.stdout),
        String::from_utf8_lossy(&inside.stderr)
    );

    let outside = curl_vip(&ns, None);
    assert!(
        outside.status.code() == Some(CURL_COULDNT_CONNECT) && outside.stdout.is_empty(),
        "a client outside the cgroup must not be balanced (the netns has no route to the VIP: curl cannot connect); got {:?} {:?} {:?}",
        outside.status,
        String::from_utf8_lossy(&outside.stdout),
        String::from_utf8_lossy(&outside.stderr)
    );

    let stats = lb.stats().expect("read stats");
    assert_eq!(
        stats.translated, 1,
        "exactly the one in-cgroup connect is translated: {stats:?}"
    );

    // A service with no backends refuses the connect instead of leaking it to the VIP.
    lb.set_service(frontend, &[]).expect("empty the service");
    let refused = curl_vip(&ns, Some(&cgroup));
    assert!(
        refused.status.code() == Some(CURL_COULDNT_CONNECT),
        "connect to a service without backends must fail to connect; got {:?} {:?}",
        refused.status,
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(lb.stats().expect("read stats").no_backends, 1);

    assert!(lb.remove_service(frontend).expect("remove service"));
    assert!(lb.table().is_empty());
    drop(lb); // detaches before the cgroup and netns guards remove them
}

/// curl to `addr` from inside `ns` and `cgroup`.
fn curl_in(ns: &NetNs, cgroup: &Cgroup2Child, addr: SocketAddrV4) -> Output {
    let script = format!(
        "echo $$ > {} && exec ip netns exec {} curl -s --max-time 5 http://{addr}/",
        cgroup.procs_file().display(),
        ns.name()
    );
    Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run sh")
}

#[test]
fn loopback_node_ports_balance_in_the_host_namespace_only() {
    require_root!();
    let object = berth_testkit::require_ebpf_object!();
    // "host": the namespace whose cookie is the host's; "pod": any other.
    let (host, pod) = (NetNs::new("berthh"), NetNs::new("berthp"));
    let cgroup = Cgroup2Child::new("berth-test-");
    let port = serve_in(&host);
    let cookie = host
        .run(berth_ebpf::netns_cookie)
        .expect("the host namespace's cookie");
    assert_ne!(cookie, pod.run(berth_ebpf::netns_cookie).expect("cookie"));

    let mut lb = SocketLb::load(&object).expect("load eBPF object");
    lb.attach_host(cgroup.path()).expect("attach for the host");
    lb.set_host_netns(cookie).expect("host netns");
    let node_port = Frontend {
        addr: Ipv4Addr::UNSPECIFIED,
        port: 30080,
        protocol: Protocol::Tcp,
    };
    lb.set_service(node_port, &[SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)])
        .expect("program the NodePort");

    let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 30080);
    let from_host = curl_in(&host, &cgroup, target);
    assert!(
        from_host.status.success() && String::from_utf8_lossy(&from_host.stdout) == BODY,
        "the host reaches the NodePort on 127.0.0.1: {:?} {:?}",
        from_host.status,
        String::from_utf8_lossy(&from_host.stderr)
    );
    let from_pod = curl_in(&pod, &cgroup, target);
    assert_eq!(
        from_pod.status.code(),
        Some(CURL_COULDNT_CONNECT),
        "a pod's own loopback is not a NodePort address"
    );
    assert_eq!(lb.stats().expect("stats").translated, 1);
    drop(lb);
}
