//! The NetworkPolicy maps, written from a wanted [`PolicyState`]: the selected pods
//! with the directions they are isolated in, and for each (pod, direction, peer
//! prefix) the port ranges allowed (none: denied, so an `except` carves its range out
//! of a shorter prefix). Port-range lists are stored once each, by id, and shared.
//! [`SocketLb::apply_policy`] writes only the difference from what the maps hold —
//! new port sets, then rules, then pods; removals the other way round — so a change
//! never opens or closes more than it says, and after an agent restart the pinned
//! maps are read back ([`SocketLb::adopt_policy`]) and the first apply is a diff too.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::net::Ipv4Addr;

use aya::maps::{
    HashMap, MapData, PerCpuHashMap,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use berth_ebpf_common::{
    NP_DENIED_MAP, NP_HOST_MAP, NP_MAX_RANGES, NP_PODS_MAP, NP_PORTS_MAP, NP_RULE_FIXED_BITS,
    NP_RULES_MAP, NpDeniedKey, NpPod, NpPortRange, NpPortSet, NpRuleKey,
};

use crate::{Error, SocketLb};

/// One LPM entry: a selected pod, a direction ([`crate::NP_INGRESS`] or
/// [`crate::NP_EGRESS`]) and a peer prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRule {
    pub pod: Ipv4Addr,
    pub direction: u32,
    pub peer: Ipv4Addr,
    pub prefix: u8,
}

/// What the policy maps hold (or should).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// Selected pods → the directions they are isolated in (0: tracked only).
    pub pods: BTreeMap<Ipv4Addr, u32>,
    /// Allowed port ranges per rule (at most [`NP_MAX_RANGES`]; empty: denied).
    pub rules: BTreeMap<PolicyRule, Vec<NpPortRange>>,
}

/// What an apply wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyWrites {
    pub pods: usize,
    pub rules: usize,
    pub port_sets: usize,
}

/// Port sets in the map: ranges → (id, users).
#[derive(Debug, Default)]
pub(crate) struct PortSets {
    by_ranges: StdHashMap<Vec<NpPortRange>, (u32, usize)>,
    next: u32,
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn addr(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

fn lpm_key(rule: &PolicyRule) -> LpmKey<NpRuleKey> {
    let prefix = rule.prefix.min(32);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    LpmKey::new(
        NP_RULE_FIXED_BITS + u32::from(prefix),
        NpRuleKey {
            pod: be(rule.pod),
            direction: rule.direction,
            peer: be(Ipv4Addr::from(u32::from(rule.peer) & mask)),
        },
    )
}

impl SocketLb {
    fn np_rules(&mut self) -> Result<LpmTrie<&mut MapData, NpRuleKey, u32>, Error> {
        let map = self.ebpf.map_mut(NP_RULES_MAP).ok_or(Error::Missing {
            kind: "map",
            name: NP_RULES_MAP,
        })?;
        LpmTrie::try_from(map).map_err(map_error(NP_RULES_MAP))
    }

    fn np_hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, Error> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(Error::Missing { kind: "map", name })?;
        HashMap::try_from(map).map_err(map_error(name))
    }

    /// Reads what the (pinned) policy maps hold, so the next apply writes only the
    /// difference; call once after [`SocketLb::open`].
    pub fn adopt_policy(&mut self) -> Result<(), Error> {
        let pods: Vec<(u32, NpPod)> = self
            .np_hash::<u32, NpPod>(NP_PODS_MAP)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(NP_PODS_MAP))?;
        let sets: Vec<(u32, NpPortSet)> = self
            .np_hash::<u32, NpPortSet>(NP_PORTS_MAP)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(NP_PORTS_MAP))?;
        let rules: Vec<(LpmKey<NpRuleKey>, u32)> = self
            .np_rules()?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_error(NP_RULES_MAP))?;
        let ranges_of: StdHashMap<u32, Vec<NpPortRange>> = sets
            .iter()
            .map(|(id, set)| {
                let n = (set.count as usize).min(NP_MAX_RANGES);
                (*id, set.ranges[..n].to_vec())
            })
            .collect();
        let mut state = PolicyState::default();
        for (ip, pod) in pods {
            state.pods.insert(addr(ip), pod.flags);
        }
        let mut port_sets = PortSets::default();
        for (id, ranges) in &ranges_of {
            port_sets.by_ranges.insert(ranges.clone(), (*id, 0));
            port_sets.next = port_sets.next.max(id + 1);
        }
        for (key, id) in rules {
            let data = key.data();
            let rule = PolicyRule {
                pod: addr(data.pod),
                direction: data.direction,
                peer: addr(data.peer),
                prefix: key.prefix_len().saturating_sub(NP_RULE_FIXED_BITS) as u8,
            };
            let ranges = ranges_of.get(&id).cloned().unwrap_or_default();
            if let Some(entry) = port_sets.by_ranges.get_mut(&ranges) {
                entry.1 += 1;
            }
            state.rules.insert(rule, ranges);
        }
        // Sets no rule uses (an earlier agent stopped between writes) are deleted.
        let unused: Vec<u32> = port_sets
            .by_ranges
            .iter()
            .filter(|(_, (_, users))| *users == 0)
            .map(|(_, (id, _))| *id)
            .collect();
        port_sets.by_ranges.retain(|_, (_, users)| *users > 0);
        for id in unused {
            let _ = self.np_hash::<u32, NpPortSet>(NP_PORTS_MAP)?.remove(&id);
        }
        self.policy = state;
        self.port_sets = port_sets;
        Ok(())
    }

    /// The policy state the maps hold now.
    pub fn policy(&self) -> &PolicyState {
        &self.policy
    }

    /// The id of the port set `ranges`, written if new (0: the empty set, denied).
    fn take_port_set(
        &mut self,
        ranges: &[NpPortRange],
        writes: &mut PolicyWrites,
    ) -> Result<u32, Error> {
        if ranges.is_empty() {
            return Ok(0);
        }
        if let Some(entry) = self.port_sets.by_ranges.get_mut(ranges) {
            entry.1 += 1;
            return Ok(entry.0);
        }
        if ranges.len() > NP_MAX_RANGES {
            return Err(Error::TooManyPortRanges {
                count: ranges.len(),
                max: NP_MAX_RANGES,
            });
        }
        self.port_sets.next = self.port_sets.next.max(1);
        let id = self.port_sets.next;
        self.port_sets.next += 1;
        let mut set = NpPortSet {
            count: ranges.len() as u32,
            ranges: [NpPortRange::default(); NP_MAX_RANGES],
        };
        set.ranges[..ranges.len()].copy_from_slice(ranges);
        self.np_hash::<u32, NpPortSet>(NP_PORTS_MAP)?
            .insert(id, set, 0)
            .map_err(map_error(NP_PORTS_MAP))?;
        writes.port_sets += 1;
        self.port_sets.by_ranges.insert(ranges.to_vec(), (id, 1));
        Ok(id)
    }

    /// One user of the port set `ranges` fewer; deleted when it has none.
    fn drop_port_set(&mut self, ranges: &[NpPortRange]) -> Result<(), Error> {
        let Some(entry) = self.port_sets.by_ranges.get_mut(ranges) else {
            return Ok(());
        };
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 > 0 {
            return Ok(());
        }
        let id = entry.0;
        self.port_sets.by_ranges.remove(ranges);
        match self.np_hash::<u32, NpPortSet>(NP_PORTS_MAP)?.remove(&id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_error(NP_PORTS_MAP)(e)),
        }
    }

    /// Makes the maps hold `want`, writing only what differs.
    pub fn apply_policy(&mut self, want: &PolicyState) -> Result<PolicyWrites, Error> {
        let mut writes = PolicyWrites::default();
        let have = std::mem::take(&mut self.policy);
        let mut now = have.clone();
        let result = self.apply_diff(&have, want, &mut now, &mut writes);
        self.policy = now;
        result.map(|()| writes)
    }

    fn apply_diff(
        &mut self,
        have: &PolicyState,
        want: &PolicyState,
        now: &mut PolicyState,
        writes: &mut PolicyWrites,
    ) -> Result<(), Error> {
        // New and changed rules (their port sets first), before pods are isolated;
        // longer prefixes first, so an except is in place before the block around it.
        let mut changed: Vec<(&PolicyRule, &Vec<NpPortRange>)> = want
            .rules
            .iter()
            .filter(|(rule, ranges)| have.rules.get(rule) != Some(ranges))
            .collect();
        changed.sort_by_key(|(rule, _)| std::cmp::Reverse(rule.prefix));
        for (rule, ranges) in changed {
            let id = self.take_port_set(ranges, writes)?;
            if let Err(e) = self.np_rules()?.insert(&lpm_key(rule), id, 0) {
                self.drop_port_set(ranges)?;
                return Err(map_error(NP_RULES_MAP)(e));
            }
            writes.rules += 1;
            if let Some(old) = now.rules.insert(*rule, ranges.clone()) {
                self.drop_port_set(&old)?;
            }
        }
        // Pods: isolate, change, release.
        for (ip, flags) in &want.pods {
            if have.pods.get(ip) == Some(flags) {
                continue;
            }
            self.np_hash::<u32, NpPod>(NP_PODS_MAP)?
                .insert(
                    be(*ip),
                    NpPod {
                        flags: *flags,
                        _pad: 0,
                    },
                    0,
                )
                .map_err(map_error(NP_PODS_MAP))?;
            writes.pods += 1;
            now.pods.insert(*ip, *flags);
        }
        for ip in have.pods.keys().filter(|ip| !want.pods.contains_key(ip)) {
            match self.np_hash::<u32, NpPod>(NP_PODS_MAP)?.remove(&be(*ip)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(NP_PODS_MAP)(e)),
            }
            writes.pods += 1;
            now.pods.remove(ip);
        }
        // Rules no longer wanted (blocks before the excepts inside them), then their
        // port sets.
        let mut gone: Vec<&PolicyRule> = have
            .rules
            .keys()
            .filter(|r| !want.rules.contains_key(r))
            .collect();
        gone.sort_by_key(|rule| rule.prefix);
        for rule in gone {
            match self.np_rules()?.remove(&lpm_key(rule)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error(NP_RULES_MAP)(e)),
            }
            writes.rules += 1;
            if let Some(old) = now.rules.remove(rule) {
                self.drop_port_set(&old)?;
            }
        }
        Ok(())
    }

    /// Sets the node addresses whose traffic to and from pods is always allowed.
    pub fn set_policy_hosts(&mut self, ips: &[Ipv4Addr]) -> Result<(), Error> {
        let mut map = self.np_hash::<u32, u8>(NP_HOST_MAP)?;
        let wanted: Vec<u32> = ips.iter().map(|ip| be(*ip)).collect();
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            map.remove(&key).map_err(map_error(NP_HOST_MAP))?;
        }
        for key in wanted {
            map.insert(key, 1, 0).map_err(map_error(NP_HOST_MAP))?;
        }
        Ok(())
    }

    /// Packets denied so far: (pod, direction, count summed over CPUs).
    pub fn policy_denied(&self) -> Vec<(Ipv4Addr, u32, u64)> {
        let Some(map) = self.ebpf.map(NP_DENIED_MAP) else {
            return Vec::new();
        };
        let Ok(counters) = PerCpuHashMap::<_, NpDeniedKey, u64>::try_from(map) else {
            return Vec::new();
        };
        counters
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (addr(k.pod), k.direction, per_cpu.iter().sum()))
            .collect()
    }
}
