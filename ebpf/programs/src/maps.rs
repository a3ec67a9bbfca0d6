//! The maps shared with user space. Names must match the `*_MAP` constants in
//! `berth-ebpf-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use berth_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CtKey, CtValue, MAX_AFFINITY, MAX_BACKENDS,
    MAX_CT, MAX_REVNAT, MAX_SERVICES, RevNatKey, RevNatValue, STATS_LEN, ServiceKey, ServiceValue,
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

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);
