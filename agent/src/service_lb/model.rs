//! Services + EndpointSlices → what the socket LB must do, following kube-proxy:
//!
//! - ExternalName and headless (`clusterIP: None`) Services are left alone;
//! - one frontend per IPv4 cluster IP and Service port (TCP and UDP; SCTP is not
//!   balanced);
//! - backends come from the EndpointSlices labelled `kubernetes.io/service-name`,
//!   the port matched by name; only `ready` endpoints, or — when none is ready — the
//!   `serving` and `terminating` ones (KEP-1669); `internalTrafficPolicy: Local`
//!   keeps only this node's endpoints;
//! - `sessionAffinity: ClientIP` carries its timeout (default 10 800 s);
//! - NodePort and LoadBalancer Services also get `0.0.0.0:nodePort` (any node
//!   address), external IPs and load-balancer ingress IPs get their own frontends;
//!   these follow `externalTrafficPolicy` (Local: this node's endpoints only);
//! - load-balancer ingress IPs (`ipMode: VIP`, the default) are announced — the node
//!   answers ARP for them — unless the policy is Local and this node has no endpoint
//!   (MetalLB's layer-2 rule), and accept new flows only from
//!   `loadBalancerSourceRanges` when it is set.
//!
//! A Service that cannot be programmed correctly (no spec, a port 0, the same
//! port/protocol twice, an unparsable cluster IP) is rejected whole, with the
//! reason, so the maps never hold a half-right Service.

use std::{
    collections::{BTreeSet, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use berth_ebpf::{Frontend, Protocol};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
pub use crate::services::SERVICE_NAME_LABEL;

/// One frontend and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbEntry {
    pub frontend: Frontend,
    /// Sorted and unique.
    pub backends: Vec<SocketAddrV4>,
    /// Seconds of ClientIP affinity, if the Service asks for it.
    pub affinity_timeout: Option<u32>,
    /// Masquerade traffic from outside the node to the backends: NodePorts and
    /// external IPs with `externalTrafficPolicy: Cluster`, as kube-proxy does.
    pub snat: bool,
    /// Clients new flows are accepted from (address, prefix length); empty: any.
    /// Load-balancer IPs with `loadBalancerSourceRanges` only.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// Answer ARP for the frontend's address (a load-balancer IP this node serves).
    pub announce: bool,
}

/// Why a Service is not programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("service has no spec")]
    NoSpec,
    #[error("port {name:?} is 0")]
    PortZero { name: String },
    #[error("port {port}/{protocol} appears twice")]
    DuplicatePort { port: i32, protocol: String },
    #[error("port {port} is outside 1-65535")]
    PortRange { port: i32 },
    #[error("cluster IP {0:?} is not an IP address")]
    BadClusterIp(String),
    #[error("loadBalancerSourceRanges entry {0:?} is not an IPv4 CIDR")]
    BadSourceRange(String),
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// The entries for `svc` given all EndpointSlices (those of other Services are
/// ignored), as seen from node `node`. `Ok(vec![])` for Services berth leaves alone.
pub fn entries(
    svc: &Service,
    slices: &[EndpointSlice],
    node: &str,
) -> Result<Vec<LbEntry>, Rejected> {
    let spec = svc.spec.as_ref().ok_or(Rejected::NoSpec)?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(Vec::new());
    }
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.clone());
    }
    if ips.iter().any(|ip| ip == "None") || ips.is_empty() {
        return Ok(Vec::new()); // headless, or not allocated yet
    }
    let mut v4 = Vec::new();
    for ip in &ips {
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => v4.push(a),
            Ok(std::net::IpAddr::V6(_)) => {} // IPv6 is not balanced yet
            Err(_) => return Err(Rejected::BadClusterIp(ip.clone())),
        }
    }
    let ports = spec.ports.clone().unwrap_or_default();
    let mut seen = HashSet::new();
    for p in &ports {
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        if p.port == 0 {
            return Err(Rejected::PortZero {
                name: p.name.clone().unwrap_or_default(),
            });
        }
        if !(1..=65535).contains(&p.port) {
            return Err(Rejected::PortRange { port: p.port });
        }
        if !seen.insert((p.port, proto.clone())) {
            return Err(Rejected::DuplicatePort {
                port: p.port,
                protocol: proto,
            });
        }
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let local_only = spec.internal_traffic_policy.as_deref() == Some("Local");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let namespace = svc.metadata.namespace.as_deref();
    let ours: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == namespace)
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str)
                == Some(name)
        })
        .filter(|s| s.address_type == "IPv4")
        .collect();

    // Traffic from outside (NodePort, external and load-balancer IPs) follows
    // externalTrafficPolicy; in-cluster traffic to the cluster IP internalTrafficPolicy.
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let node_port_type = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    // Load-balancer addresses: only while the Service is a LoadBalancer, and not
    // those of `ipMode: Proxy` (the load balancer forwards to the nodes itself).
    let lb_ips: Vec<Ipv4Addr> = if spec.type_.as_deref() == Some("LoadBalancer") {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()?.parse::<Ipv4Addr>().ok())
            .collect()
    } else {
        Vec::new()
    };
    // IPv6 ranges admit no IPv4 client; when only those are given, no IPv4 client
    // at all (0.0.0.0/32 is never a source).
    let given: Vec<&String> = spec.load_balancer_source_ranges.iter().flatten().collect();
    let mut source_ranges = Vec::new();
    for r in &given {
        if r.contains(':') {
            continue;
        }
        source_ranges.push(parse_cidr(r).ok_or_else(|| Rejected::BadSourceRange((*r).clone()))?);
    }
    if !given.is_empty() && source_ranges.is_empty() {
        source_ranges.push((Ipv4Addr::UNSPECIFIED, 32));
    }

    let mut out = Vec::new();
    for p in &ports {
        let Some(proto) = protocol(p.protocol.as_deref()) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        let proto_name = p.protocol.as_deref().unwrap_or("TCP");
        let internal = backends_for(&ours, &port_name, proto_name, local_only, node);
        let external = backends_for(&ours, &port_name, proto_name, external_local, node);
        let service_port =
            u16::try_from(p.port).map_err(|_| Rejected::PortRange { port: p.port })?;
        let entry = |addr: Ipv4Addr, port: u16, backends: &Vec<SocketAddrV4>, snat: bool| LbEntry {
            frontend: Frontend {
                addr,
                port,
                protocol: proto,
            },
            backends: backends.clone(),
            affinity_timeout: affinity,
            snat,
            source_ranges: Vec::new(),
            announce: false,
        };
        for addr in &v4 {
            out.push(entry(*addr, service_port, &internal, false));
        }
        for addr in &external_ips {
            out.push(entry(*addr, service_port, &external, !external_local));
        }
        for addr in &lb_ips {
            out.push(LbEntry {
                source_ranges: source_ranges.clone(),
                announce: !external_local || !external.is_empty(),
                ..entry(*addr, service_port, &external, !external_local)
            });
        }
        if node_port_type
            && let Some(node_port) = p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
        {
            // A NodePort is the frontend 0.0.0.0:nodePort: any node address.
            out.push(entry(
                Ipv4Addr::UNSPECIFIED,
                node_port,
                &external,
                !external_local,
            ));
        }
    }
    Ok(out)
}

/// An IPv4 CIDR (`10.0.0.0/8`, or a bare address as a /32).
fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = match text.trim().split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
        None => (text.trim(), 32),
    };
    Some((addr.parse().ok()?, prefix))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Ready,
    ServingTerminating,
}

fn backends_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: &str,
    local_only: bool,
    node: &str,
) -> Vec<SocketAddrV4> {
    let mut ready = BTreeSet::new();
    let mut fallback = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|sp| {
            sp.name.as_deref().unwrap_or_default() == port_name
                && sp.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            if local_only && ep.node_name.as_deref() != Some(node) {
                continue;
            }
            let c = ep.conditions.as_ref();
            let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let class = if is_ready {
                Use::Ready
            } else if serving && terminating {
                Use::ServingTerminating
            } else {
                continue;
            };
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else {
                    continue;
                };
                let addr = SocketAddrV4::new(ip, port);
                if class == Use::Ready {
                    ready.insert(addr);
                } else {
                    fallback.insert(addr);
                }
            }
        }
    }
    if ready.is_empty() {
        fallback.into_iter().collect()
    } else {
        ready.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn svc(spec: Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec}),
        )
        .expect("valid Service")
    }

    fn slice(name: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .expect("valid EndpointSlice")
    }

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool, node: &str) -> Value {
        json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}, "nodeName": node})
    }

    fn addrs(e: &LbEntry) -> Vec<String> {
        e.backends.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn named_ports_map_to_slice_ports_and_only_ready_endpoints_count() {
        let s = svc(
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
            {"name": "http", "port": 80, "targetPort": "web"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        );
        let slices = [slice(
            "web-1",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([
                ep("10.244.0.5", true, true, false, "n1"),
                ep("10.244.0.6", false, false, false, "n1"),
                ep("10.244.0.7", true, true, false, "n2")
            ]),
        )];
        let e = entries(&s, &slices, "n1").expect("valid");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].frontend.port, e[0].frontend.protocol),
            (80, Protocol::Tcp)
        );
        assert_eq!(addrs(&e[0]), ["10.244.0.5:8080", "10.244.0.7:8080"]);
        assert_eq!(
            (e[1].frontend.port, e[1].frontend.protocol),
            (53, Protocol::Udp)
        );
        assert_eq!(addrs(&e[1]), ["10.244.0.5:5353", "10.244.0.7:5353"]);
        assert_eq!(e[0].affinity_timeout, None);
    }

    #[test]
    fn terminating_but_serving_endpoints_only_when_none_is_ready() {
        let s = svc(json!({"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}));
        let p = json!([{"port": 8080}]);
        let only_terminating = [slice(
            "a",
            p.clone(),
            json!([
                ep("10.244.1.1", false, true, true, "n1"),
                ep("10.244.1.2", false, false, true, "n1")
            ]),
        )];
        assert_eq!(
            addrs(&entries(&s, &only_terminating, "n1").expect("valid")[0]),
            ["10.244.1.1:8080"]
        );
        let with_ready = [slice(
            "a",
            p,
            json!([
                ep("10.244.1.1", false, true, true, "n1"),
                ep("10.244.1.3", true, true, false, "n1")
            ]),
        )];
        assert_eq!(
            addrs(&entries(&s, &with_ready, "n1").expect("valid")[0]),
            ["10.244.1.3:8080"]
        );
    }

    #[test]
    fn internal_traffic_policy_local_keeps_this_nodes_endpoints() {
        let s = svc(
            json!({"clusterIP": "10.96.0.12", "internalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        );
        let slices = [slice(
            "a",
            json!([{"port": 8080}]),
            json!([
                ep("10.244.2.1", true, true, false, "n1"),
                ep("10.244.2.2", true, true, false, "n2")
            ]),
        )];
        assert_eq!(
            addrs(&entries(&s, &slices, "n2").expect("valid")[0]),
            ["10.244.2.2:8080"]
        );
        assert!(
            entries(&s, &slices, "n3").expect("valid")[0]
                .backends
                .is_empty(),
            "no local endpoint: refuse"
        );
    }

    #[test]
    fn headless_external_name_and_other_services_slices_are_ignored() {
        let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(entries(&headless, &[], "n1").expect("valid").is_empty());
        let external = svc(json!({"type": "ExternalName", "externalName": "example.org"}));
        assert!(entries(&external, &[], "n1").expect("valid").is_empty());
        let s = svc(json!({"clusterIP": "10.96.0.13", "ports": [{"port": 80}]}));
        let mut other: EndpointSlice = slice(
            "x",
            json!([{"port": 1}]),
            json!([ep("10.244.3.1", true, true, false, "n1")]),
        );
        other.metadata.labels =
            Some([(SERVICE_NAME_LABEL.to_string(), "other".to_string())].into());
        assert!(
            entries(&s, &[other], "n1").expect("valid")[0]
                .backends
                .is_empty()
        );
    }

    #[test]
    fn client_ip_affinity_carries_its_timeout() {
        let s = svc(
            json!({"clusterIP": "10.96.0.14", "ports": [{"port": 80}], "sessionAffinity": "ClientIP"}),
        );
        assert_eq!(
            entries(&s, &[], "n1").expect("valid")[0].affinity_timeout,
            Some(DEFAULT_AFFINITY_TIMEOUT)
        );
        let s = svc(
            json!({"clusterIP": "10.96.0.14", "ports": [{"port": 80}], "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}),
        );
        assert_eq!(
            entries(&s, &[], "n1").expect("valid")[0].affinity_timeout,
            Some(30)
        );
    }

    #[test]
    fn node_ports_and_external_ips_follow_external_traffic_policy() {
        let s = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.16", "externalIPs": ["203.0.113.7"],
            "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]}),
        );
        let slices = [slice(
            "a",
            json!([{"port": 8080}]),
            json!([
                ep("10.244.4.1", true, true, false, "n1"),
                ep("10.244.4.2", true, true, false, "n2")
            ]),
        )];
        let e = entries(&s, &slices, "n1").expect("valid");
        let by_addr = |a: &str| {
            e.iter()
                .find(|x| x.frontend.addr.to_string() == a)
                .expect(a)
        };
        assert_eq!(
            addrs(by_addr("10.96.0.16")),
            ["10.244.4.1:8080", "10.244.4.2:8080"],
            "cluster IP: all"
        );
        assert!(
            e.iter().all(|x| !x.snat),
            "Local keeps the client address: {e:?}"
        );
        assert_eq!(
            addrs(by_addr("203.0.113.7")),
            ["10.244.4.1:8080"],
            "external IP: local only"
        );
        let np = by_addr("0.0.0.0");
        assert_eq!(
            (np.frontend.port, addrs(np)),
            (30080, vec!["10.244.4.1:8080".to_string()]),
            "NodePort: local only"
        );
        let cluster_ip_only =
            svc(json!({"clusterIP": "10.96.0.17", "ports": [{"port": 80, "nodePort": 30081}]}));
        assert_eq!(
            entries(&cluster_ip_only, &[], "n1").expect("valid").len(),
            1,
            "a ClusterIP Service has no NodePort"
        );
    }

    #[test]
    fn cluster_policy_masquerades_outside_traffic_only() {
        let s = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.18", "externalIPs": ["203.0.113.8"],
            "ports": [{"port": 80, "nodePort": 30082}]}),
        );
        let e = entries(&s, &[], "n1").expect("valid");
        let snat: Vec<(String, bool)> = e
            .iter()
            .map(|x| (x.frontend.addr.to_string(), x.snat))
            .collect();
        assert_eq!(
            snat,
            [
                ("10.96.0.18".into(), false),
                ("203.0.113.8".into(), true),
                ("0.0.0.0".into(), true)
            ]
        );
    }

    #[test]
    fn bad_services_are_rejected_whole() {
        let zero = svc(
            json!({"clusterIP": "10.96.0.15", "ports": [{"port": 80}, {"name": "x", "port": 0}]}),
        );
        assert_eq!(
            entries(&zero, &[], "n1"),
            Err(Rejected::PortZero { name: "x".into() })
        );
        let dup = svc(
            json!({"clusterIP": "10.96.0.15", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
        );
        assert_eq!(
            entries(&dup, &[], "n1"),
            Err(Rejected::DuplicatePort {
                port: 80,
                protocol: "TCP".into()
            })
        );
        let same_port_two_protocols = svc(json!({"clusterIP": "10.96.0.15", "ports": [
            {"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]}));
        assert_eq!(
            entries(&same_port_two_protocols, &[], "n1").map(|e| e.len()),
            Ok(2)
        );
        let bad_ip = svc(json!({"clusterIP": "10.96.0.x", "ports": [{"port": 80}]}));
        assert!(matches!(
            entries(&bad_ip, &[], "n1"),
            Err(Rejected::BadClusterIp(_))
        ));
        let no_spec: Service =
            serde_json::from_value(json!({"metadata": {"name": "web"}})).expect("valid");
        assert_eq!(entries(&no_spec, &[], "n1"), Err(Rejected::NoSpec));
    }
}

/// The hostPort mappings of a running pod (`containers[].ports[].hostPort`), as
/// frontends: `hostIP` (or any node address, 0.0.0.0) and the hostPort, to the pod's
/// IP and containerPort. Programmed like NodePorts, they replace CNI portmap rules.
pub fn host_port_entries(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<LbEntry> {
    // A hostNetwork pod listens on the node's ports itself: nothing to forward. A
    // finished pod serves nothing any more.
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
        || matches!(phase, Some("Succeeded" | "Failed"))
    {
        return Vec::new();
    }
    let Some(pod_ip) = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return Vec::new();
    };
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = u16::try_from(p.host_port?).ok().filter(|h| *h != 0)?;
            let container_port = u16::try_from(p.container_port).ok().filter(|c| *c != 0)?;
            let protocol = protocol(p.protocol.as_deref())?;
            let addr = p
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            Some(LbEntry {
                frontend: Frontend {
                    addr,
                    port: host_port,
                    protocol,
                },
                backends: vec![SocketAddrV4::new(pod_ip, container_port)],
                affinity_timeout: None,
                // As CNI portmap does, hostPorts keep the client's address.
                snat: false,
                source_ranges: Vec::new(),
                announce: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod host_port_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn host_ports_map_to_the_pod_ip_and_container_port() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [
                {"containerPort": 8080, "hostPort": 18080},
                {"containerPort": 53, "hostPort": 1053, "protocol": "UDP", "hostIP": "10.0.0.5"},
                {"containerPort": 9090}]}]},
            "status": {"podIP": "10.244.0.9"}
        }))
        .expect("valid pod");
        let e = host_port_entries(&pod);
        assert_eq!(e.len(), 2, "only ports with a hostPort");
        assert_eq!(
            e[0].frontend,
            Frontend {
                addr: Ipv4Addr::UNSPECIFIED,
                port: 18080,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            e[0].backends,
            [SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 9), 8080)]
        );
        assert_eq!(
            e[1].frontend,
            Frontend {
                addr: Ipv4Addr::new(10, 0, 0, 5),
                port: 1053,
                protocol: Protocol::Udp
            }
        );
        let pending: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
                .expect("valid");
        assert!(
            host_port_entries(&pending).is_empty(),
            "no pod IP yet, nothing to map"
        );
    }
}
