//! The maps shared with user space. Names must match the `*_MAP` constants in
//! `berth-ebpf-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use berth_ebpf_common::{
    Backend, BackendKey, MAX_BACKENDS, MAX_SERVICES, STATS_LEN, ServiceKey, ServiceValue,
};

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);
