//! The maps shared with user space. Names must match the `*_MAP` constants in
//! `berth-ebpf-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray},
};
use berth_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CtKey, CtValue, HostRouting, IfMac,
    MAX_AFFINITY, MAX_BACKENDS, MAX_CT, MAX_NP_CT, MAX_NP_PODS, MAX_NP_PORTS, MAX_NP_RULES,
    MAX_REVNAT, MAX_SERVICES, MAX_SOURCE_RANGES, NpCtKey, NpDeniedKey, NpPod, NpPortSet, NpRuleKey,
    RevNatKey, RevNatValue, STATS_LEN, ServiceKey, ServiceValue, SourceRangeKey,
};

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Socket + backend → frontend, written by connect4/sendmsg4, read by
/// recvmsg4/getpeername4. LRU: entries of closed sockets age out.
#[map(name = "REVNAT")]
pub static REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::with_max_entries(MAX_REVNAT, 0);

/// Client (netns) + frontend → pinned backend, for ClientIP session affinity.
#[map(name = "AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(MAX_AFFINITY, 0);

/// The node's addresses (network byte order) that NodePorts answer on.
#[map(name = "NODE_IPS")]
pub static NODE_IPS: HashMap<u32, u8> = HashMap::with_max_entries(64, 0);

/// NodePort flows: client → NodePort maps to the chosen backend, backend → client
/// to the NodePort address replies must carry. LRU: idle flows age out.
#[map(name = "CT")]
pub static CT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(MAX_CT, 0);

/// The host's network-namespace cookie (index 0): there, loopback NodePorts balance.
#[map(name = "HOST_NETNS")]
pub static HOST_NETNS: Array<u64> = Array::with_max_entries(1, 0);

/// Load-balancer addresses this node answers ARP for on its external interfaces.
#[map(name = "ANNOUNCE")]
pub static ANNOUNCE: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// The external interfaces' MAC addresses, by ifindex.
#[map(name = "IF_MACS")]
pub static IF_MACS: HashMap<u32, IfMac> = HashMap::with_max_entries(64, 0);

/// eBPF host routing's range (index 0); a zero mask leaves forwarding to the kernel.
#[map(name = "HOST_ROUTING")]
pub static HOST_ROUTING: Array<HostRouting> = Array::with_max_entries(1, 0);

/// `loadBalancerSourceRanges`: frontend + client prefix → 1.
#[map(name = "SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

/// NetworkPolicy: the pods some policy selects.
#[map(name = "NP_PODS")]
pub static NP_PODS: HashMap<u32, NpPod> = HashMap::with_max_entries(MAX_NP_PODS, 0);

/// NetworkPolicy: selected pod + direction + peer prefix → port-set id.
#[map(name = "NP_RULES")]
pub static NP_RULES: LpmTrie<NpRuleKey, u32> = LpmTrie::with_max_entries(MAX_NP_RULES, 0);

/// NetworkPolicy: port sets by id.
#[map(name = "NP_PORTS")]
pub static NP_PORTS: HashMap<u32, NpPortSet> = HashMap::with_max_entries(MAX_NP_PORTS, 0);

/// NetworkPolicy: allowed flows, so their packets and replies pass.
#[map(name = "NP_CT")]
pub static NP_CT: LruHashMap<NpCtKey, u8> = LruHashMap::with_max_entries(MAX_NP_CT, 0);

/// NetworkPolicy: the node's addresses (its traffic to its pods is always allowed).
#[map(name = "NP_HOST")]
pub static NP_HOST: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

/// NetworkPolicy: denied packets per pod and direction.
#[map(name = "NP_DENIED")]
pub static NP_DENIED: LruPerCpuHashMap<NpDeniedKey, u64> =
    LruPerCpuHashMap::with_max_entries(65_536, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);
