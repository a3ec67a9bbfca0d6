//! Map layouts shared by the kernel programs (`ebpf/programs`) and the user-space
//! loader (`berth-ebpf`). Everything here is `#[repr(C)]` plain data with explicit
//! padding, so both sides agree byte for byte.
//!
//! Service load balancing uses two hash maps:
//! - [`SERVICES_MAP`]: [`ServiceKey`] (virtual IP, port, protocol) → [`ServiceValue`]
//!   (which backend group to use and how many backends it has);
//! - [`BACKENDS_MAP`]: [`BackendKey`] (group, slot) → [`Backend`] (address, port).
//!
//! A service is changed by writing a complete new backend group first and then
//! flipping its `ServiceValue` to that group, so a connect never sees half an update.
#![no_std]

/// Name of the services map in the eBPF object.
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backends map in the eBPF object.
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Name of the per-CPU counters array in the eBPF object; see [`Stat`].
pub const STATS_MAP: &str = "STATS";
/// Name of the node-address set (the addresses NodePorts answer on).
pub const NODE_IPS_MAP: &str = "NODE_IPS";
/// Name of the NodePort connection-tracking LRU map.
pub const CT_MAP: &str = "CT";
/// Capacity of the connection-tracking map (two entries per flow).
pub const MAX_CT: u32 = 262_144;
/// Name of the one-entry array holding the host's network-namespace cookie: in that
/// namespace, a connect to a loopback address at a NodePort is balanced (kube-proxy
/// answers NodePorts on localhost for the host); 0 means none.
pub const HOST_NETNS_MAP: &str = "HOST_NETNS";
/// Name of the set of load-balancer addresses this node answers ARP for
/// (address in network byte order → 1).
pub const ANNOUNCE_MAP: &str = "ANNOUNCE";
/// Name of the map of external interfaces' MAC addresses (ifindex → [`IfMac`]), the
/// hardware address ARP replies give.
pub const IF_MACS_MAP: &str = "IF_MACS";
/// Name of the one-entry array that turns on eBPF host routing: a [`HostRouting`]
/// (the cluster's pod range). The NodePort ingress program then forwards a packet
/// between two of its addresses itself, from one attached interface to another.
pub const HOST_ROUTING_MAP: &str = "HOST_ROUTING";
/// Name of the `loadBalancerSourceRanges` LPM trie: [`SourceRangeKey`] with a prefix
/// of 64 bits of frontend plus the range's own prefix → 1.
pub const SOURCE_RANGES_MAP: &str = "SOURCE_RANGES";
/// Capacity of the source-range trie.
pub const MAX_SOURCE_RANGES: u32 = 16_384;
/// Bits of [`SourceRangeKey`] before the client address: the frontend.
pub const SOURCE_RANGE_FRONTEND_BITS: u32 = 64;
/// NetworkPolicy: the cgroup skb programs of the pods' cgroup, packets in and out.
pub const NETPOL_INGRESS_PROGRAM: &str = "netpol_ingress";
pub const NETPOL_EGRESS_PROGRAM: &str = "netpol_egress";
/// Name of the policy-selected pods map: pod IPv4 (network order) → [`NpPod`].
pub const NP_PODS_MAP: &str = "NP_PODS";
/// Name of the allowed-peers LPM trie: [`NpRuleKey`] with a prefix of
/// [`NP_RULE_FIXED_BITS`] plus the peer prefix → port-set id (in [`NP_PORTS_MAP`]).
pub const NP_RULES_MAP: &str = "NP_RULES";
/// Name of the port sets: id → [`NpPortSet`].
pub const NP_PORTS_MAP: &str = "NP_PORTS";
/// Name of the policy connection-tracking LRU map: [`NpCtKey`] of allowed flows.
pub const NP_CT_MAP: &str = "NP_CT";
/// Name of the node-address set whose traffic to and from pods is always allowed.
pub const NP_HOST_MAP: &str = "NP_HOST";
/// Name of the denied-packet counters: [`NpDeniedKey`] → packets.
pub const NP_DENIED_MAP: &str = "NP_DENIED";
/// [`NpPod::flags`] and [`NpRuleKey::direction`]: into the pod, out of it.
pub const NP_INGRESS: u32 = 1;
pub const NP_EGRESS: u32 = 2;
/// Bits of [`NpRuleKey`] before the peer address (pod address and direction).
pub const NP_RULE_FIXED_BITS: u32 = 64;
/// Port ranges one port set holds.
pub const NP_MAX_RANGES: usize = 16;
/// Capacities.
pub const MAX_NP_PODS: u32 = 16_384;
pub const MAX_NP_RULES: u32 = 262_144;
pub const MAX_NP_PORTS: u32 = 65_536;
pub const MAX_NP_CT: u32 = 262_144;
/// IPPROTO_SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// A pod some NetworkPolicy selects.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NpPod {
    /// [`NP_INGRESS`] and/or [`NP_EGRESS`]: the directions it is isolated in (0: only
    /// its flows are tracked, so replies pass the other side's isolation).
    pub flags: u32,
    pub _pad: u32,
}

/// The data of an [`NP_RULES_MAP`] key: a selected pod, a direction, a peer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NpRuleKey {
    /// The selected pod (network order).
    pub pod: u32,
    /// [`NP_INGRESS`] or [`NP_EGRESS`].
    pub direction: u32,
    /// The peer (network order).
    pub peer: u32,
}

/// One allowed port range: `protocol` 0 means any protocol; ports in host order,
/// `lo..=hi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NpPortRange {
    pub protocol: u8,
    pub _pad: u8,
    pub lo: u16,
    pub hi: u16,
    pub _pad2: u16,
}

/// The ports a peer may use: the first `count` ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NpPortSet {
    pub count: u32,
    pub ranges: [NpPortRange; NP_MAX_RANGES],
}

/// A flow as its first packet carried it (network order), as seen at one pod's side
/// (`pod`): one side's record never lets a packet past the other side's check.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NpCtKey {
    pub pod: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// A denied-packet counter: a pod and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NpDeniedKey {
    pub pod: u32,
    pub direction: u32,
}

/// Name of the tc ingress program of external interfaces (NodePort DNAT).
pub const NODEPORT_INGRESS_PROGRAM: &str = "nodeport_ingress";
/// Name of the tc egress program of external interfaces (reverse NAT of replies).
pub const NODEPORT_EGRESS_PROGRAM: &str = "nodeport_egress";

/// Key of the connection-tracking map: one direction of a translated flow, as the
/// packet carries it (addresses and ports in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// [`CT_FORWARD`] or [`CT_REPLY`].
    pub direction: u8,
    pub _pad: u16,
}

/// Client → NodePort: the value is the backend chosen for the flow.
pub const CT_FORWARD: u8 = 0;
/// Backend → client: the value is the NodePort address to restore as source.
pub const CT_REPLY: u8 = 1;

/// How a flow direction is translated (addresses and ports in network byte order).
/// Forward: to backend `addr:port`, and with [`CT_SNAT`] from `addr2:port2` (the
/// node's address toward the backend) out of interface `ifindex`. Reply: from the
/// frontend `addr:port`, and with [`CT_SNAT`] to the client `addr2:port2` out of
/// `ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    pub addr: u32,
    pub port: u16,
    pub flags: u16,
    pub addr2: u32,
    pub port2: u16,
    pub _pad: u16,
    pub ifindex: u32,
}

/// Flag of [`CtValue`]: the flow is source-NATed and routed by the program.
pub const CT_SNAT: u16 = 1;

/// Name of the session-affinity LRU map in the eBPF object.
pub const AFFINITY_MAP: &str = "AFFINITY";
/// Capacity of the affinity map.
pub const MAX_AFFINITY: u32 = 65_536;
/// Name of the reverse-translation map in the eBPF object.
pub const REVNAT_MAP: &str = "REVNAT";
/// Name of the cgroup/connect4 program: connect() to a frontend → a backend.
pub const CONNECT4_PROGRAM: &str = "connect4";
/// Name of the cgroup/sendmsg4 program: unconnected UDP sendto() to a frontend.
pub const SENDMSG4_PROGRAM: &str = "sendmsg4";
/// Name of the cgroup/recvmsg4 program: UDP recvfrom() shows the frontend.
pub const RECVMSG4_PROGRAM: &str = "recvmsg4";
/// Name of the cgroup/getpeername4 program: getpeername() shows the frontend.
pub const GETPEERNAME4_PROGRAM: &str = "getpeername4";

/// Capacity of the services map.
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of the backends map (all groups together).
pub const MAX_BACKENDS: u32 = 262_144;
/// Capacity of the reverse-translation LRU map (one entry per translated socket
/// and backend).
pub const MAX_REVNAT: u32 = 262_144;

/// IANA protocol number for TCP, as in `bpf_sock_addr.protocol`.
pub const IPPROTO_TCP: u8 = 6;
/// IANA protocol number for UDP, as in `bpf_sock_addr.protocol`.
pub const IPPROTO_UDP: u8 = 17;

/// A service frontend as the kernel sees it in `bpf_sock_addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address in network byte order (as `user_ip4`).
    pub addr: u32,
    /// Port in network byte order (the low 16 bits of `user_port`).
    pub port: u16,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    pub _pad: u8,
}

/// Where a service's backends are: group `group`, slots `0..count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Backend group id, unique among live groups.
    pub group: u32,
    /// Number of backends; 0 means the connect is refused.
    pub count: u32,
    /// ClientIP session affinity timeout in seconds; 0 means no affinity.
    pub affinity_timeout: u32,
    /// [`SERVICE_SNAT`] and future flags.
    pub flags: u32,
}

/// Flag of [`ServiceValue`]: traffic from outside the node (NodePort, external
/// IPs) is masqueraded to the node's address toward the backend, as kube-proxy does
/// for `externalTrafficPolicy: Cluster`.
pub const SERVICE_SNAT: u32 = 1;
/// Flag of [`ServiceValue`]: new flows from outside are accepted only from the
/// frontend's ranges in [`SOURCE_RANGES_MAP`] (`loadBalancerSourceRanges`).
pub const SERVICE_SOURCE_RANGES: u32 = 2;

/// The data of a [`SOURCE_RANGES_MAP`] key: a frontend, then a client address; the
/// trie's prefix covers the frontend whole and the range's prefix of the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// The frontend's address, port and protocol (network byte order).
    pub frontend: ServiceKey,
    /// The client's address (network byte order).
    pub client: u32,
}

/// eBPF host routing's range: packets whose source and destination both satisfy
/// `addr & mask == net` are forwarded by the tc program (network byte order);
/// `mask == 0` turns it off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostRouting {
    pub net: u32,
    pub mask: u32,
}

/// An interface's MAC address, padded to 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of the affinity map: a client and a frontend. The client is its network
/// namespace (`bpf_get_netns_cookie`): one pod, one address, as ClientIP means.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub frontend: ServiceKey,
}

/// The backend a client is pinned to, and when it last used it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    /// The group the pin was made in: a changed service (new group) re-picks.
    pub group: u32,
    pub _pad: u32,
    pub backend: Backend,
    /// `bpf_ktime_get_ns` of the last connect through this pin.
    pub last_used_ns: u64,
}

/// One slot of a backend group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub group: u32,
    pub slot: u32,
}

/// A backend endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 address in network byte order.
    pub addr: u32,
    /// Port in network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Key of the reverse-translation map: a socket (its cookie) and the backend it
/// was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// The frontend a reverse-translation entry restores.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatValue {
    /// Frontend (virtual) IPv4 address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Indexes into the stats array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// connect() calls rewritten to a backend.
    Translated = 0,
    /// connect() calls refused because the service has no backends.
    NoBackends = 1,
    /// A service pointed at a backend slot that was missing (should stay 0).
    MissingBackend = 2,
    /// recvmsg/getpeername results rewritten back to the frontend.
    Reversed = 3,
    /// Connects that followed a live ClientIP affinity pin.
    AffinityHit = 4,
    /// Affinity pins found expired (or made for an older backend set) and re-picked.
    AffinityExpired = 5,
    /// New NodePort flows translated to a backend.
    NodePortNew = 6,
    /// NodePort packets of known flows translated (both directions).
    NodePortTracked = 7,
    /// NodePort packets dropped because the Service has no backends.
    NodePortNoBackends = 8,
    /// Packets forwarded between pods by eBPF host routing (the kernel's forwarding
    /// path skipped).
    HostRouted = 9,
}

/// Number of entries in the stats array.
pub const STATS_LEN: u32 = 10;

/// The most rules one container's device program holds (runc's default list is 11
/// rules; the program is generated in user space, `berth_ebpf::attach_device_filter`).
pub const MAX_DEVICE_RULES: usize = 32;
/// Major or minor that matches any number (the OCI spec's wildcard, -1).
pub const DEVICE_ANY: u32 = u32::MAX;
/// [`DeviceRule::kind`] values: the kernel's `BPF_DEVCG_DEV_*`, 0 for any type.
pub const DEVICE_KIND_ANY: u32 = 0;
pub const DEVICE_KIND_BLOCK: u32 = 1;
pub const DEVICE_KIND_CHAR: u32 = 2;
/// [`DeviceRule::access`] bits: the kernel's `BPF_DEVCG_ACC_*`.
pub const DEVICE_ACC_MKNOD: u32 = 1;
pub const DEVICE_ACC_READ: u32 = 2;
pub const DEVICE_ACC_WRITE: u32 = 4;

/// One OCI `linux.resources.devices` rule. A request (type, major, minor, access bits)
/// matches when type, major and minor match and its access bits are a subset of the
/// rule's; the last matching rule decides, no match denies (runc's device filter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceRule {
    pub kind: u32,
    pub major: u32,
    pub minor: u32,
    pub access: u32,
    /// 1 allow, 0 deny.
    pub allow: u32,
}

impl DeviceRule {
    /// Whether this rule matches a request.
    #[inline(always)]
    pub fn matches(&self, kind: u32, major: u32, minor: u32, access: u32) -> bool {
        (self.kind == DEVICE_KIND_ANY || self.kind == kind)
            && (self.major == DEVICE_ANY || self.major == major)
            && (self.minor == DEVICE_ANY || self.minor == minor)
            && access & self.access == access
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers with explicit padding
    // fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RevNatKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RevNatValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::AffinityKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::AffinityValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostRouting {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::SourceRangeKey {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::IfMac {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::NpPod {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::NpRuleKey {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::NpPortSet {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::NpCtKey {}
    // SAFETY: repr(C) plain data.
    unsafe impl aya::Pod for super::NpDeniedKey {}
}
