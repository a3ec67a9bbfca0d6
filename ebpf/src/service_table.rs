//! The service table: what services are programmed and in which backend groups, and
//! the order of map writes that keeps every update atomic from the kernel's view.
//!
//! An update writes the complete new backend group, then flips the service entry to
//! it (one map update, atomic for readers), and retires the old group: its slots are
//! deleted only after a grace period, because a connect that read the old service
//! entry just before the flip may still be about to read one of them. A failure
//! before the flip removes what was written and leaves the old entry serving.
//! Map access goes through [`LbMaps`] so the ordering is unit-tested without a kernel.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use berth_ebpf_common::{
    Backend, BackendKey, IPPROTO_TCP, IPPROTO_UDP, MAX_BACKENDS, MAX_SERVICES, SERVICE_SNAT,
    SERVICE_SOURCE_RANGES, ServiceKey, ServiceValue,
};

use crate::Error;

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A service frontend: virtual IP, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Frontend {
    /// The kernel-side key for this frontend.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: u32::from_ne_bytes(self.addr.octets()),
            port: self.port.to_be(),
            protocol: match self.protocol {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
            },
            _pad: 0,
        }
    }
}

fn backend_value(addr: SocketAddrV4) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        _pad: 0,
    }
}

/// How a frontend balances, beyond its backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// ClientIP session affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Masquerade traffic from outside the node (externalTrafficPolicy: Cluster).
    pub snat: bool,
    /// Accept new flows from outside only from the frontend's source ranges
    /// (`loadBalancerSourceRanges`, written with `SocketLb::set_source_ranges`).
    pub source_ranges: bool,
}

/// The four map operations the table needs.
pub trait LbMaps {
    fn put_backend(&mut self, key: BackendKey, value: Backend) -> Result<(), Error>;
    fn delete_backend(&mut self, key: BackendKey) -> Result<(), Error>;
    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), Error>;
}

/// How long a replaced backend group stays readable. A program reads the service
/// entry and then the slot within one run, but under preemptible RCU that run can be
/// delayed; a second is far beyond any such delay.
pub const RETIRE_GRACE: Duration = Duration::from_secs(1);

/// The services programmed into the maps, and their backend groups.
#[derive(Debug)]
pub struct ServiceTable {
    services: HashMap<ServiceKey, ServiceValue>,
    groups_in_use: HashSet<u32>,
    next_group: u32,
    backends_in_use: u32,
    /// Replaced groups waiting out their grace period: (when, group, slots).
    retired: VecDeque<(Instant, u32, u32)>,
    grace: Duration,
}

impl Default for ServiceTable {
    fn default() -> Self {
        Self::with_grace(RETIRE_GRACE)
    }
}

impl ServiceTable {
    /// A table whose replaced groups are deleted `grace` after replacement.
    pub fn with_grace(grace: Duration) -> Self {
        Self {
            services: HashMap::new(),
            groups_in_use: HashSet::new(),
            next_group: 0,
            backends_in_use: 0,
            retired: VecDeque::new(),
            grace,
        }
    }

    /// Takes over what (pinned) maps already hold: `services` as programmed, and
    /// every backend slot in `backends`; slots of groups no service points at are
    /// retired (deleted after the grace period).
    pub fn adopt(&mut self, services: Vec<(ServiceKey, ServiceValue)>, backends: Vec<BackendKey>) {
        for (key, value) in services {
            self.groups_in_use.insert(value.group);
            self.backends_in_use += value.count;
            self.next_group = self.next_group.max(value.group.wrapping_add(1));
            self.services.insert(key, value);
        }
        let mut orphans: HashMap<u32, u32> = HashMap::new();
        for slot in backends {
            if !self.services.values().any(|v| v.group == slot.group) {
                let n = orphans.entry(slot.group).or_default();
                *n = (*n).max(slot.slot + 1);
            }
        }
        let now = Instant::now();
        for (group, count) in orphans {
            self.groups_in_use.insert(group);
            self.backends_in_use += count;
            self.next_group = self.next_group.max(group.wrapping_add(1));
            self.retired.push_back((now, group, count));
        }
    }

    /// The programmed frontends' keys.
    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// Deletes the slots of groups retired longer than the grace period ago. Runs
    /// on every change; call it periodically too so an idle table frees them.
    pub fn reap(&mut self, maps: &mut impl LbMaps) {
        let now = Instant::now();
        while let Some(&(at, group, count)) = self.retired.front() {
            if now.duration_since(at) < self.grace {
                break;
            }
            self.retired.pop_front();
            // A slot that cannot be deleted is unreachable (no service points at
            // its group), so the table stays correct; it only costs map room.
            remove_group(maps, group, count);
            self.groups_in_use.remove(&group);
            self.backends_in_use -= count;
        }
    }
    /// Number of services programmed.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// True when no service is programmed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Number of backend slots in use.
    pub fn backends(&self) -> u32 {
        self.backends_in_use
    }

    /// Programs `frontend` to balance over `backends` (an empty list makes connects
    /// to it fail), with ClientIP affinity of `affinity_timeout` seconds if given.
    /// Either the whole change is applied or none of it.
    pub fn set(
        &mut self,
        maps: &mut impl LbMaps,
        frontend: Frontend,
        backends: &[SocketAddrV4],
        options: ServiceOptions,
    ) -> Result<(), Error> {
        self.reap(maps);
        let key = frontend.key();
        let old = self.services.get(&key).copied();
        if old.is_none() && self.services.len() >= MAX_SERVICES as usize {
            return Err(Error::ServicesFull { max: MAX_SERVICES });
        }
        let wanted = u32::try_from(backends.len()).unwrap_or(u32::MAX);
        // The old group still exists while the new one is written.
        let free = MAX_BACKENDS - self.backends_in_use;
        if wanted > free {
            return Err(Error::BackendsFull { wanted, free });
        }
        let group = self.allocate_group();
        for (slot, addr) in (0u32..).zip(backends) {
            let written = maps.put_backend(BackendKey { group, slot }, backend_value(*addr));
            if let Err(err) = written {
                remove_group(maps, group, slot);
                self.groups_in_use.remove(&group);
                return Err(err);
            }
        }
        let value = ServiceValue {
            group,
            count: wanted,
            affinity_timeout: options.affinity_timeout.unwrap_or(0),
            flags: if options.snat { SERVICE_SNAT } else { 0 }
                | if options.source_ranges {
                    SERVICE_SOURCE_RANGES
                } else {
                    0
                },
        };
        if let Err(err) = maps.put_service(key, value) {
            remove_group(maps, group, wanted);
            self.groups_in_use.remove(&group);
            return Err(err);
        }
        self.services.insert(key, value);
        self.backends_in_use += wanted;
        if let Some(old) = old {
            self.release(maps, old);
        }
        Ok(())
    }

    /// Removes `frontend`; returns whether it was programmed.
    pub fn remove(&mut self, maps: &mut impl LbMaps, frontend: Frontend) -> Result<bool, Error> {
        self.reap(maps);
        let key = frontend.key();
        let Some(old) = self.services.get(&key).copied() else {
            return Ok(false);
        };
        maps.delete_service(key)?;
        self.services.remove(&key);
        self.release(maps, old);
        Ok(true)
    }

    fn allocate_group(&mut self) -> u32 {
        // Ids are not reused at once, so a connect that read the old service entry
        // just before a flip still finds that group's slots or none at all.
        loop {
            let group = self.next_group;
            self.next_group = self.next_group.wrapping_add(1);
            if self.groups_in_use.insert(group) {
                return group;
            }
        }
    }

    fn release(&mut self, maps: &mut impl LbMaps, old: ServiceValue) {
        self.retired
            .push_back((Instant::now(), old.group, old.count));
        self.reap(maps);
    }
}

fn remove_group(maps: &mut impl LbMaps, group: u32, count: u32) {
    for slot in 0..count {
        let _ = maps.delete_backend(BackendKey { group, slot });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every map operation; can be told to fail the n-th backend write.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        services: HashMap<ServiceKey, ServiceValue>,
        backends: HashMap<BackendKey, Backend>,
        fail_backend_write: Option<usize>,
        backend_writes: usize,
    }

    impl LbMaps for Recorder {
        fn put_backend(&mut self, key: BackendKey, value: Backend) -> Result<(), Error> {
            self.backend_writes += 1;
            if self.fail_backend_write == Some(self.backend_writes) {
                return Err(Error::BackendsFull { wanted: 1, free: 0 });
            }
            self.log
                .push(format!("put_backend {}/{}", key.group, key.slot));
            self.backends.insert(key, value);
            Ok(())
        }
        fn delete_backend(&mut self, key: BackendKey) -> Result<(), Error> {
            self.log
                .push(format!("delete_backend {}/{}", key.group, key.slot));
            self.backends.remove(&key);
            Ok(())
        }
        fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error> {
            self.log.push(format!(
                "put_service -> group {} count {}",
                value.group, value.count
            ));
            self.services.insert(key, value);
            Ok(())
        }
        fn delete_service(&mut self, key: ServiceKey) -> Result<(), Error> {
            self.log.push("delete_service".into());
            self.services.remove(&key);
            Ok(())
        }
    }

    fn frontend() -> Frontend {
        Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn addrs(n: u8) -> Vec<SocketAddrV4> {
        (1..=n)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 8080))
            .collect()
    }

    #[test]
    fn key_is_in_network_byte_order() {
        let key = frontend().key();
        assert_eq!(key.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.protocol, IPPROTO_TCP);
    }

    #[test]
    fn update_writes_new_group_then_flips_then_deletes_old() {
        let mut maps = Recorder::default();
        let mut table = ServiceTable::with_grace(Duration::ZERO);
        table
            .set(&mut maps, frontend(), &addrs(2), ServiceOptions::default())
            .expect("first set");
        maps.log.clear();
        table
            .set(&mut maps, frontend(), &addrs(3), ServiceOptions::default())
            .expect("second set");
        assert_eq!(
            maps.log,
            [
                "put_backend 1/0",
                "put_backend 1/1",
                "put_backend 1/2",
                "put_service -> group 1 count 3",
                "delete_backend 0/0",
                "delete_backend 0/1",
            ]
        );
        assert_eq!(maps.backends.len(), 3, "old group's slots must be gone");
        assert_eq!(table.backends(), 3);
    }

    #[test]
    fn failed_backend_write_leaves_old_service_untouched() {
        let mut maps = Recorder::default();
        let mut table = ServiceTable::default();
        table
            .set(&mut maps, frontend(), &addrs(2), ServiceOptions::default())
            .expect("first set");
        let before = maps.services.clone();
        maps.fail_backend_write = Some(maps.backend_writes + 2);
        let err = table.set(&mut maps, frontend(), &addrs(3), ServiceOptions::default());
        assert!(err.is_err(), "the injected failure must surface");
        assert_eq!(
            maps.services, before,
            "service entry must still point at the old group"
        );
        assert_eq!(
            maps.backends.len(),
            2,
            "partially written new group must be removed"
        );
        assert_eq!(table.backends(), 2);
    }

    #[test]
    fn empty_backends_program_a_refusing_service_and_remove_cleans_up() {
        let mut maps = Recorder::default();
        let mut table = ServiceTable::with_grace(Duration::ZERO);
        table
            .set(&mut maps, frontend(), &[], ServiceOptions::default())
            .expect("set empty");
        assert_eq!(maps.services.values().next().map(|v| v.count), Some(0));
        assert!(table.remove(&mut maps, frontend()).expect("remove"));
        assert!(!table.remove(&mut maps, frontend()).expect("second remove"));
        assert!(maps.services.is_empty() && maps.backends.is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn a_replaced_group_stays_readable_for_the_grace_period() {
        let mut maps = Recorder::default();
        let mut table = ServiceTable::with_grace(Duration::from_millis(50));
        table
            .set(&mut maps, frontend(), &addrs(2), ServiceOptions::default())
            .expect("first");
        table
            .set(&mut maps, frontend(), &addrs(1), ServiceOptions::default())
            .expect("second");
        assert_eq!(
            maps.backends.len(),
            3,
            "old slots kept during the grace period"
        );
        assert_eq!(table.backends(), 3, "and counted against capacity");
        std::thread::sleep(Duration::from_millis(60));
        table.reap(&mut maps);
        assert_eq!(maps.backends.len(), 1, "reaped after it");
        assert_eq!(table.backends(), 1);
    }

    #[test]
    fn adopting_pinned_maps_keeps_services_and_retires_orphan_slots() {
        let mut maps = Recorder::default();
        let mut before = ServiceTable::with_grace(Duration::from_secs(60));
        before
            .set(&mut maps, frontend(), &addrs(2), ServiceOptions::default())
            .expect("set");
        before
            .set(&mut maps, frontend(), &addrs(3), ServiceOptions::default())
            .expect("replace: group 0 retired, not deleted");
        let services: Vec<_> = maps.services.iter().map(|(k, v)| (*k, *v)).collect();
        let slots: Vec<_> = maps.backends.keys().copied().collect();
        assert_eq!(slots.len(), 5);

        let mut after = ServiceTable::with_grace(Duration::ZERO);
        after.adopt(services, slots);
        assert_eq!(after.len(), 1);
        assert_eq!(after.backends(), 5, "live group and orphan both counted");
        after.reap(&mut maps);
        assert_eq!(maps.backends.len(), 3, "orphan group 0 deleted");
        after
            .set(&mut maps, frontend(), &addrs(1), ServiceOptions::default())
            .expect("next group id is fresh");
        assert!(
            maps.services.values().all(|v| v.group == 2),
            "{:?}",
            maps.services
        );
    }

    #[test]
    fn too_many_backends_is_refused_before_any_write() {
        let mut maps = Recorder::default();
        let mut table = ServiceTable::default();
        let many = vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1); MAX_BACKENDS as usize + 1];
        let err = table.set(&mut maps, frontend(), &many, ServiceOptions::default());
        assert!(
            matches!(err, Err(Error::BackendsFull { .. })),
            "got {err:?}"
        );
        assert!(
            maps.log.is_empty(),
            "nothing may be written: {:?}",
            maps.log
        );
    }
}
