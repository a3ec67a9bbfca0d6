//! Socket-level load balancing end to end (root): TCP and UDP (connected and
//! unconnected) to a service VIP spread over its backends, the application sees the
//! VIP as its peer, a service without endpoints refuses at once with ECONNREFUSED,
//! and re-programming a service while clients connect drops nothing. Servers run on
//! 127.0.0.1 in a test netns; clients (Python, joined to a child cgroup) in the same
//! netns. Never attaches at the host's cgroup root.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    process::{Command, Output},
    thread,
    time::Duration,
};

use berth_ebpf::{Frontend, Protocol, SocketLb};
use berth_testkit::{Cgroup2Child, ChildGuard, NetNs, require_root};
use serde_json::Value;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);
const PORT: u16 = 53;

/// The test client. Modes: `tcp N` (N connects; reply and getpeername of each),
/// `udp N` (N unconnected sendto/recvfrom; reply and source), `udpc N` (connected
/// UDP), `loop SECONDS` (TCP connects in a loop; counts failures). Prints JSON.
const CLIENT: &str = r#"
import json, socket, sys, time, errno
mode, n = sys.argv[1], float(sys.argv[2])
vip = (sys.argv[3], int(sys.argv[4]))
out = {"replies": [], "peers": [], "errors": []}
def note(e):
    out["errors"].append(errno.errorcode.get(e.errno, str(e)) if isinstance(e, OSError) and e.errno else str(e))
if mode == "tcp":
    for _ in range(int(n)):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(vip)
            out["peers"].append("%s:%d" % s.getpeername())
            out["replies"].append(s.recv(64).decode())
        except OSError as e:
            note(e)
        s.close()
elif mode in ("udp", "udpc"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    if mode == "udpc":
        s.connect(vip)
        out["peers"].append("%s:%d" % s.getpeername())
    for _ in range(int(n)):
        try:
            if mode == "udpc":
                s.send(b"ping")
                data, src = s.recv(64), s.getpeername()
            else:
                s.sendto(b"ping", vip)
                data, src = s.recvfrom(64)
            out["replies"].append(data.decode())
            out["peers"].append("%s:%d" % src)
        except OSError as e:
            note(e)
elif mode == "loop":
    end, ok = time.time() + n, 0
    while time.time() < end:
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(vip)
            s.recv(64)
            ok += 1
        except OSError as e:
            note(e)
        s.close()
    out["ok"] = ok
print(json.dumps(out))
"#;

/// The netns, cgroup and loaded balancer of one test.
struct Setup {
    ns: NetNs,
    cgroup: Cgroup2Child,
    lb: SocketLb,
}

fn setup() -> Option<Setup> {
    let object = berth_testkit::require_ebpf_object!(None);
    let ns = NetNs::new("berthlb");
    let cgroup = Cgroup2Child::new("berth-test-");
    let mut lb = SocketLb::load(&object).expect("load eBPF object");
    lb.attach(cgroup.path())
        .expect("attach to the child cgroup");
    Some(Setup { ns, cgroup, lb })
}

/// `n` TCP servers on 127.0.0.1 in `ns`, each answering its own name.
fn tcp_backends(ns: &NetNs, n: usize) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| {
            let listener = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"));
            let port = listener.local_addr().expect("addr").port();
            thread::spawn(move || {
                for s in listener.incoming() {
                    let Ok(mut s) = s else { break };
                    let _ = s.write_all(format!("backend-{i}").as_bytes());
                }
            });
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
        })
        .collect()
}

/// `n` UDP echo servers on 127.0.0.1 in `ns`, each answering its own name.
fn udp_backends(ns: &NetNs, n: usize) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|i| {
            let socket = ns.run(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"));
            let port = socket.local_addr().expect("addr").port();
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(format!("backend-{i}").as_bytes(), from);
                }
            });
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
        })
        .collect()
}

fn client_command(s: &Setup, args: &[String]) -> Command {
    let mut script = format!(
        "echo $$ > {} && exec ip netns exec {} python3 -c \"$0\"",
        s.cgroup.procs_file().display(),
        s.ns.name()
    );
    for a in args {
        script.push(' ');
        script.push_str(a);
    }
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script, CLIENT]);
    cmd
}

fn client(s: &Setup, mode: &str, n: &str) -> Value {
    let args = [
        mode.to_string(),
        n.to_string(),
        VIP.to_string(),
        PORT.to_string(),
    ];
    let out: Output = client_command(s, &args).output().expect("run client");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output {e}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn tally(v: &Value, field: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in v[field].as_array().into_iter().flatten() {
        *m.entry(x.as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    m
}

#[test]
fn tcp_spreads_over_three_backends_and_getpeername_shows_the_vip() {
    require_root!();
    let Some(mut s) = setup() else { return };
    let backends = tcp_backends(&s.ns, 3);
    s.lb.set_service(
        Frontend {
            addr: VIP,
            port: PORT,
            protocol: Protocol::Tcp,
        },
        &backends,
    )
    .expect("program");
    let out = client(&s, "tcp", "60");
    assert_eq!(out["errors"].as_array().map(Vec::len), Some(0), "{out}");
    let replies = tally(&out, "replies");
    assert_eq!(replies.len(), 3, "all three backends answered: {replies:?}");
    assert!(
        replies.values().all(|&n| n >= 5),
        "roughly even spread: {replies:?}"
    );
    assert_eq!(
        tally(&out, "peers").into_keys().collect::<Vec<_>>(),
        [format!("{VIP}:{PORT}")],
        "peer is the VIP"
    );
}

#[test]
fn udp_unconnected_and_connected_see_the_vip_as_source() {
    require_root!();
    let Some(mut s) = setup() else { return };
    let backends = udp_backends(&s.ns, 3);
    s.lb.set_service(
        Frontend {
            addr: VIP,
            port: PORT,
            protocol: Protocol::Udp,
        },
        &backends,
    )
    .expect("program");

    let out = client(&s, "udp", "60");
    assert_eq!(out["errors"].as_array().map(Vec::len), Some(0), "{out}");
    let replies = tally(&out, "replies");
    assert_eq!(
        replies.len(),
        3,
        "sendto() spread over all three backends: {replies:?}"
    );
    assert_eq!(
        tally(&out, "peers").into_keys().collect::<Vec<_>>(),
        [format!("{VIP}:{PORT}")],
        "recvfrom() shows the VIP"
    );

    let out = client(&s, "udpc", "5");
    assert_eq!(out["errors"].as_array().map(Vec::len), Some(0), "{out}");
    assert_eq!(
        tally(&out, "replies").len(),
        1,
        "a connected socket keeps its backend: {out}"
    );
    assert_eq!(
        tally(&out, "peers").into_keys().collect::<Vec<_>>(),
        [format!("{VIP}:{PORT}")]
    );
    assert!(s.lb.stats().expect("stats").reversed > 0);
}

#[test]
fn a_service_without_endpoints_refuses_immediately() {
    require_root!();
    let Some(mut s) = setup() else { return };
    s.lb.set_service(
        Frontend {
            addr: VIP,
            port: PORT,
            protocol: Protocol::Tcp,
        },
        &[],
    )
    .expect("program");
    let started = std::time::Instant::now();
    let out = client(&s, "tcp", "3");
    assert_eq!(
        tally(&out, "errors"),
        BTreeMap::from([("ECONNREFUSED".to_string(), 3)]),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not timed out"
    );
    assert_eq!(s.lb.stats().expect("stats").no_backends, 3);
}

#[test]
fn scaling_three_to_one_to_three_during_a_connect_loop_drops_nothing() {
    require_root!();
    let Some(mut s) = setup() else { return };
    let backends = tcp_backends(&s.ns, 3);
    let frontend = Frontend {
        addr: VIP,
        port: PORT,
        protocol: Protocol::Tcp,
    };
    s.lb.set_service(frontend, &backends).expect("program");
    let args = [
        "loop".to_string(),
        "2".to_string(),
        VIP.to_string(),
        PORT.to_string(),
    ];
    let mut child = ChildGuard(
        client_command(&s, &args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start client"),
    );
    let mut flips = 0;
    let deadline = std::time::Instant::now() + Duration::from_millis(1800);
    while std::time::Instant::now() < deadline {
        s.lb.set_service(frontend, &backends[..1])
            .expect("scale to 1");
        thread::sleep(Duration::from_millis(5));
        s.lb.set_service(frontend, &backends).expect("scale to 3");
        thread::sleep(Duration::from_millis(5));
        flips += 2;
    }
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    let status = child.0.wait().expect("wait");
    assert!(status.success());
    let out: Value = serde_json::from_str(&stdout).expect("json");
    assert!(
        out["ok"].as_u64().unwrap_or(0) > 50,
        "the loop made progress: {out}"
    );
    assert_eq!(
        out["errors"].as_array().map(Vec::len),
        Some(0),
        "no failed connect over {flips} updates: {out}"
    );
    assert_eq!(
        s.lb.stats().expect("stats").missing_backend,
        0,
        "no connect saw half an update"
    );
}

#[test]
fn client_ip_affinity_pins_a_client_until_the_timeout() {
    require_root!();
    let Some(mut s) = setup() else { return };
    let backends = tcp_backends(&s.ns, 3);
    let frontend = Frontend {
        addr: VIP,
        port: PORT,
        protocol: Protocol::Tcp,
    };
    s.lb.set_service_with_affinity(frontend, &backends, Some(1))
        .expect("program with 1 s affinity");

    let out = client(&s, "tcp", "30");
    assert_eq!(out["errors"].as_array().map(Vec::len), Some(0), "{out}");
    assert_eq!(
        tally(&out, "replies").len(),
        1,
        "one client (netns), one backend: {out}"
    );
    let stats = s.lb.stats().expect("stats");
    assert_eq!(
        (stats.affinity_hit, stats.affinity_expired),
        (29, 0),
        "{stats:?}"
    );

    thread::sleep(Duration::from_millis(1300));
    let out = client(&s, "tcp", "5");
    assert_eq!(
        tally(&out, "replies").len(),
        1,
        "re-pinned after expiry: {out}"
    );
    let stats = s.lb.stats().expect("stats");
    assert_eq!(
        (stats.affinity_hit, stats.affinity_expired),
        (33, 1),
        "the pin expired once: {stats:?}"
    );

    // A changed Service (a new backend set) re-picks at once.
    s.lb.set_service_with_affinity(frontend, &backends[..2], Some(1))
        .expect("update");
    client(&s, "tcp", "1");
    assert_eq!(s.lb.stats().expect("stats").affinity_expired, 2);
}

#[test]
fn an_agent_restart_during_a_connect_loop_drops_nothing_and_adopts_the_maps() {
    require_root!();
    let object = berth_testkit::require_ebpf_object!();
    let bpffs = berth_testkit::BpfFs::new();
    let ns = NetNs::new("berthlb");
    let cgroup = Cgroup2Child::new("berth-test-");
    let backends = tcp_backends(&ns, 3);
    let frontend = Frontend {
        addr: VIP,
        port: PORT,
        protocol: Protocol::Tcp,
    };
    let stale = Frontend {
        addr: Ipv4Addr::new(10, 96, 9, 9),
        port: 80,
        protocol: Protocol::Tcp,
    };

    let mut first = SocketLb::open(&object, Some(bpffs.path())).expect("first agent opens");
    first.attach(cgroup.path()).expect("attach and pin links");
    first.set_service(frontend, &backends).expect("program");
    first
        .set_service(stale, &backends[..1])
        .expect("a service the next agent will not want");

    let s = Setup {
        ns,
        cgroup,
        lb: first,
    };
    let args = [
        "loop".to_string(),
        "2".to_string(),
        VIP.to_string(),
        PORT.to_string(),
    ];
    let mut child = ChildGuard(
        client_command(&s, &args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("client"),
    );
    let Setup {
        ns,
        cgroup,
        lb: first,
    } = s;
    thread::sleep(Duration::from_millis(400));
    drop(first); // the agent dies; pins keep programs attached and maps full
    thread::sleep(Duration::from_millis(400));

    let mut second =
        SocketLb::open(&object, Some(bpffs.path())).expect("second agent opens the pins");
    let mut adopted = second.frontends();
    adopted.sort_by_key(|f| f.addr);
    assert_eq!(adopted, [frontend, stale], "the maps' services are adopted");
    second
        .attach(cgroup.path())
        .expect("keeps the pinned links");
    second
        .set_service(frontend, &backends[1..])
        .expect("re-program after restart");
    assert!(
        second
            .remove_service(stale)
            .expect("remove the stale service")
    );

    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    assert!(child.0.wait().expect("wait").success());
    let out: Value = serde_json::from_str(&stdout).expect("json");
    assert!(
        out["ok"].as_u64().unwrap_or(0) > 50,
        "the loop made progress: {out}"
    );
    assert_eq!(
        out["errors"].as_array().map(Vec::len),
        Some(0),
        "no failed connect across the restart: {out}"
    );

    second.unpin().expect("unpin");
    drop(second);
    drop(cgroup);
    drop(ns);
    // bpffs shows the kernel's own maps.debug and progs.debug in every instance.
    let left: Vec<String> = std::fs::read_dir(bpffs.path())
        .expect("read bpffs")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.ends_with(".debug"))
        .collect();
    assert!(left.is_empty(), "nothing left pinned: {left:?}");
}
