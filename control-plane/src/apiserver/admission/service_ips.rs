//! Service cluster IP and node port allocation, as the apiserver's service REST does:
//! `spec.clusterIP` from the service CIDR (the first address is the `kubernetes`
//! Service's), `nodePort`s from 30000–32767, picked at random as kube-apiserver's
//! allocator does; a requested value must be free (422 otherwise), and values are
//! released when the Service goes away. An update allocates and releases as the type
//! and ports change ([`Allocator::update`]): node ports appear when a Service becomes
//! NodePort or LoadBalancer (keeping those its ports had), go when it stops being one,
//! and a cluster IP comes and goes with ExternalName.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use serde_json::{Value, json};

use super::super::status::Cause;

/// The default service CIDR.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

#[derive(Debug)]
pub struct Allocator {
    base: u32,
    size: u32,
    inner: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    ips: BTreeSet<u32>,
    ports: BTreeSet<u16>,
    next_ip: u32,
}

/// What an update took and what it frees once written ([`Allocator::commit`]), or gives
/// back if the write fails ([`Allocator::abort`]).
#[derive(Debug, Default)]
pub struct Change {
    taken_ports: Vec<u16>,
    freed_ports: Vec<u16>,
    taken_ip: Option<u32>,
    freed_ip: Option<u32>,
}

impl Change {
    /// The node ports the update gives up once written.
    pub fn freed_ports(&self) -> &[u16] {
        &self.freed_ports
    }

    /// The address the update gives up once written (it became ExternalName).
    pub fn freed_ip(&self) -> Option<u32> {
        self.freed_ip
    }
}

/// A random offset below `span` (kube-apiserver's port allocator picks at random).
fn random_below(span: u32) -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b) % span.max(1)
}

/// Whether a Service of this spec gets node ports.
fn wants_node_ports(svc: &Value) -> bool {
    match svc.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => {
            svc.pointer("/spec/allocateLoadBalancerNodePorts")
                .and_then(Value::as_bool)
                != Some(false)
        }
        _ => false,
    }
}

/// Whether a Service of this spec gets a `healthCheckNodePort`: kube-apiserver gives one
/// to LoadBalancer Services with `externalTrafficPolicy: Local`.
fn wants_health_check(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && svc
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

fn health_check_port(svc: &Value) -> u16 {
    svc.pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

fn is_external_name(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName")
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new(SERVICE_CIDR.0, SERVICE_CIDR.1)
    }
}

impl Allocator {
    pub fn new(network: Ipv4Addr, prefix: u8) -> Self {
        Self {
            base: u32::from(network),
            size: 1u32 << (32 - u32::from(prefix)),
            inner: Mutex::new(Used {
                next_ip: 2,
                ..Used::default()
            }),
        }
    }

    /// An allocator that finds `ips` (addresses) and `ports` taken and looks for a free
    /// address from offset `next_ip` on: one computation over a range's state as the
    /// store holds it ([`super::service_ranges`]).
    pub fn with_used(
        network: Ipv4Addr,
        prefix: u8,
        ips: BTreeSet<u32>,
        ports: BTreeSet<u16>,
        next_ip: u32,
    ) -> Self {
        let alloc = Self::new(network, prefix);
        if let Ok(mut used) = alloc.inner.lock() {
            *used = Used {
                ips,
                ports,
                next_ip: next_ip.clamp(2, alloc.size.saturating_sub(2).max(2)),
            };
        }
        alloc
    }

    /// What is taken now (addresses, node ports) and where the next address search
    /// starts.
    pub fn used(&self) -> (BTreeSet<u32>, BTreeSet<u16>, u32) {
        match self.inner.lock() {
            Ok(used) => (used.ips.clone(), used.ports.clone(), used.next_ip),
            Err(_) => Default::default(),
        }
    }

    /// The range: its network address and how many addresses it has.
    pub fn range(&self) -> (u32, u32) {
        (self.base, self.size)
    }

    /// The `kubernetes` Service's address: the CIDR's first usable one.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The cluster DNS Service's address: the CIDR's tenth (kubeadm's convention,
    /// `10.96.0.10` in the default range).
    pub fn dns(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 10)
    }

    /// Marks what an existing Service holds as used (at start).
    pub fn observe(&self, svc: &Value) {
        let Ok(mut used) = self.inner.lock() else {
            return;
        };
        if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str)
            && let Ok(ip) = ip.parse::<Ipv4Addr>()
        {
            used.ips.insert(u32::from(ip));
        }
        for port in node_ports(svc) {
            used.ports.insert(port);
        }
    }

    /// Gives `svc` a cluster IP and node ports where it needs them. On error nothing
    /// stays allocated.
    pub fn allocate(&self, svc: &mut Value) -> Result<(), Vec<Cause>> {
        let Ok(mut used) = self.inner.lock() else {
            return Err(vec![Cause::invalid(
                "spec.clusterIP",
                "allocator unavailable",
            )]);
        };
        let kind = svc
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        if kind == "ExternalName" {
            return Ok(());
        }
        let mut taken_ip = None;
        let requested = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match requested.as_str() {
            "None" => {}
            "" => {
                let mut found = None;
                for step in 0..self.size.saturating_sub(2) {
                    let offset = 2 + (used.next_ip - 2 + step) % (self.size - 3);
                    if !used.ips.contains(&(self.base + offset)) {
                        found = Some(offset);
                        break;
                    }
                }
                let Some(offset) = found else {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIP",
                        "Internal error: failed to allocate a serviceIP: range is full",
                    )]);
                };
                used.next_ip = offset + 1;
                let ip = self.base + offset;
                used.ips.insert(ip);
                taken_ip = Some(ip);
                let text = Ipv4Addr::from(ip).to_string();
                svc["spec"]["clusterIP"] = json!(text);
                svc["spec"]["clusterIPs"] = json!([text]);
            }
            ip => {
                let Ok(addr) = ip.parse::<Ipv4Addr>() else {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIP",
                        format!("Invalid value: \"{ip}\": must be a valid IP address"),
                    )]);
                };
                let n = u32::from(addr);
                if n < self.base || n >= self.base + self.size {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIP",
                        format!(
                            "Invalid value: \"{ip}\": provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
                        ),
                    )]);
                }
                if !used.ips.insert(n) {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIP",
                        format!("Invalid value: \"{ip}\": provided IP is already allocated"),
                    )]);
                }
                taken_ip = Some(n);
                svc["spec"]["clusterIPs"] = json!([ip]);
            }
        }
        // The node ports this call takes, given back if a later step fails.
        let mut taken = Vec::new();
        if wants_node_ports(svc) {
            let count = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..count {
                let requested = svc["spec"]["ports"][i]
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u16;
                let port = if requested != 0 {
                    if !used.ports.insert(requested) {
                        for p in &taken {
                            used.ports.remove(p);
                        }
                        if let Some(ip) = taken_ip {
                            used.ips.remove(&ip);
                        }
                        return Err(vec![Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            format!(
                                "Invalid value: {requested}: provided port is already allocated"
                            ),
                        )]);
                    }
                    requested
                } else {
                    let Some(p) = free_port(&used.ports) else {
                        for p in &taken {
                            used.ports.remove(p);
                        }
                        if let Some(ip) = taken_ip {
                            used.ips.remove(&ip);
                        }
                        return Err(vec![Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            "Internal error: range is full",
                        )]);
                    };
                    used.ports.insert(p);
                    p
                };
                taken.push(port);
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
        }
        if wants_health_check(svc) {
            let requested = health_check_port(svc);
            let port = if requested != 0 {
                used.ports.insert(requested).then_some(requested)
            } else {
                free_port(&used.ports).inspect(|p| {
                    used.ports.insert(*p);
                })
            };
            let Some(port) = port else {
                for p in &taken {
                    used.ports.remove(p);
                }
                if let Some(ip) = taken_ip {
                    used.ips.remove(&ip);
                }
                return Err(vec![Cause::invalid(
                    "spec.healthCheckNodePort",
                    if requested != 0 {
                        format!("Invalid value: {requested}: provided port is already allocated")
                    } else {
                        "Internal error: range is full".to_owned()
                    },
                )]);
            };
            svc["spec"]["healthCheckNodePort"] = json!(port);
        } else if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("healthCheckNodePort");
        }
        Ok(())
    }

    /// Allocates and frees for an update from `old` to `new` (node ports as the type
    /// and ports change, a cluster IP as ExternalName comes or goes), filling `new`'s
    /// values in. Nothing is freed until [`Allocator::commit`]; on error nothing stays
    /// taken.
    pub fn update(&self, old: &Value, new: &mut Value) -> Result<Change, Vec<Cause>> {
        let Ok(mut used) = self.inner.lock() else {
            return Err(vec![Cause::invalid("spec.ports", "allocator unavailable")]);
        };
        let mut change = Change::default();
        let old_ports = node_ports(old);
        // The cluster IP: given when a Service stops being ExternalName, freed when it
        // becomes one.
        if is_external_name(old) && !is_external_name(new) {
            let requested = new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if requested.is_empty() {
                let found = (0..self.size.saturating_sub(3))
                    .map(|step| 2 + (used.next_ip - 2 + step) % (self.size - 3))
                    .find(|o| !used.ips.contains(&(self.base + o)));
                let Some(offset) = found else {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIP",
                        "Internal error: failed to allocate a serviceIP: range is full",
                    )]);
                };
                used.next_ip = offset + 1;
                used.ips.insert(self.base + offset);
                change.taken_ip = Some(self.base + offset);
                let text = Ipv4Addr::from(self.base + offset).to_string();
                new["spec"]["clusterIP"] = json!(text);
                new["spec"]["clusterIPs"] = json!([text]);
            }
        } else if !is_external_name(old) && is_external_name(new) {
            change.freed_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .map(u32::from);
            if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        }
        let count = new
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let undo = |used: &mut Used, change: &Change| {
            for p in &change.taken_ports {
                used.ports.remove(p);
            }
            if let Some(ip) = change.taken_ip {
                used.ips.remove(&ip);
            }
        };
        let mut kept = Vec::new();
        let node_port_count = if wants_node_ports(new) { count } else { 0 };
        if !wants_node_ports(new) {
            // kube-apiserver drops the node ports of a Service that no longer needs
            // them.
            for i in 0..count {
                if let Some(p) = new["spec"]["ports"][i].as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
        for i in 0..node_port_count {
            let mut requested = new["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u16;
            if requested == 0 && wants_node_ports(old) {
                // An update that leaves a port's nodePort out keeps the one it had
                // (matched by port number and protocol).
                let port = &new["spec"]["ports"][i];
                requested = old
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|o| {
                        o.get("port") == port.get("port")
                            && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                                == port
                                    .get("protocol")
                                    .and_then(Value::as_str)
                                    .unwrap_or("TCP")
                    })
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u16;
            }
            let port = if requested != 0 {
                if old_ports.contains(&requested) && !kept.contains(&requested) {
                    kept.push(requested);
                } else if !used.ports.insert(requested) {
                    undo(&mut used, &change);
                    return Err(vec![Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        format!("Invalid value: {requested}: provided port is already allocated"),
                    )]);
                } else {
                    change.taken_ports.push(requested);
                }
                requested
            } else {
                let Some(p) = free_port(&used.ports) else {
                    undo(&mut used, &change);
                    return Err(vec![Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        "Internal error: range is full",
                    )]);
                };
                used.ports.insert(p);
                change.taken_ports.push(p);
                p
            };
            new["spec"]["ports"][i]["nodePort"] = json!(port);
        }
        if wants_health_check(new) {
            let mut requested = health_check_port(new);
            if requested == 0 && wants_health_check(old) {
                requested = health_check_port(old);
            }
            let port = if requested != 0 {
                if old_ports.contains(&requested) && !kept.contains(&requested) {
                    kept.push(requested);
                } else if !used.ports.insert(requested) {
                    undo(&mut used, &change);
                    return Err(vec![Cause::invalid(
                        "spec.healthCheckNodePort",
                        format!("Invalid value: {requested}: provided port is already allocated"),
                    )]);
                } else {
                    change.taken_ports.push(requested);
                }
                requested
            } else {
                let Some(p) = free_port(&used.ports) else {
                    undo(&mut used, &change);
                    return Err(vec![Cause::invalid(
                        "spec.healthCheckNodePort",
                        "Internal error: range is full",
                    )]);
                };
                used.ports.insert(p);
                change.taken_ports.push(p);
                p
            };
            new["spec"]["healthCheckNodePort"] = json!(port);
        } else if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("healthCheckNodePort");
        }
        change.freed_ports = old_ports
            .into_iter()
            .filter(|p| !kept.contains(p))
            .collect();
        Ok(change)
    }

    /// The update was written: frees what it gave up.
    pub fn commit(&self, change: &Change) {
        let Ok(mut used) = self.inner.lock() else {
            return;
        };
        for p in &change.freed_ports {
            used.ports.remove(p);
        }
        if let Some(ip) = change.freed_ip {
            used.ips.remove(&ip);
        }
    }

    /// The update was not written: gives back what it took.
    pub fn abort(&self, change: &Change) {
        let Ok(mut used) = self.inner.lock() else {
            return;
        };
        for p in &change.taken_ports {
            used.ports.remove(p);
        }
        if let Some(ip) = change.taken_ip {
            used.ips.remove(&ip);
        }
    }

    /// Frees what `svc` held.
    pub fn release(&self, svc: &Value) {
        let Ok(mut used) = self.inner.lock() else {
            return;
        };
        if let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str)
            && let Ok(ip) = ip.parse::<Ipv4Addr>()
        {
            used.ips.remove(&u32::from(ip));
        }
        for port in node_ports(svc) {
            used.ports.remove(&port);
        }
    }
}

/// A free node port, searched from a random place in the range.
fn free_port(used: &BTreeSet<u16>) -> Option<u16> {
    let start = *NODE_PORTS.start();
    let span = u32::from(NODE_PORTS.end() - start) + 1;
    let from = random_below(span);
    (0..span)
        .map(|s| start + ((from + s) % span) as u16)
        .find(|p| !used.contains(p))
}

/// The node ports `svc` holds: its ports' `nodePort`s and its `healthCheckNodePort`.
fn node_ports(svc: &Value) -> Vec<u16> {
    let mut ports: Vec<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .map(|p| p as u16)
                .collect()
        })
        .unwrap_or_default();
    ports.extend(Some(health_check_port(svc)).filter(|p| *p != 0));
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_ips_and_ports_and_rejects_taken_ones() {
        let alloc = Allocator::default();
        let mut a = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        let mut b = json!({"spec": {"ports": [{"port": 80}]}});
        alloc.allocate(&mut a).expect("a");
        alloc.allocate(&mut b).expect("b");
        assert_ne!(a["spec"]["clusterIP"], b["spec"]["clusterIP"]);
        assert!(
            a["spec"]["ports"][0]["nodePort"]
                .as_u64()
                .is_some_and(|p| (30000..=32767).contains(&p))
        );
        let mut c =
            json!({"spec": {"clusterIP": a["spec"]["clusterIP"].clone(), "ports": [{"port": 1}]}});
        assert!(alloc.allocate(&mut c).is_err());
        alloc.release(&a);
        alloc.allocate(&mut c).expect("free again after release");
    }

    #[test]
    fn load_balancers_with_local_policy_get_a_health_check_node_port() {
        let alloc = Allocator::default();
        let mut svc = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]}});
        alloc.allocate(&mut svc).expect("create");
        let hc = svc["spec"]["healthCheckNodePort"]
            .as_u64()
            .expect("a health check port");
        assert_ne!(Some(hc), svc["spec"]["ports"][0]["nodePort"].as_u64());
        // Taken: another Service cannot ask for it.
        let mut other =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": hc}]}});
        assert!(alloc.allocate(&mut other).is_err());
        // An update that leaves it out keeps it; Cluster policy gives it back.
        let mut same = svc.clone();
        same["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("healthCheckNodePort");
        let change = alloc.update(&svc, &mut same).expect("keep");
        alloc.commit(&change);
        assert_eq!(same["spec"]["healthCheckNodePort"].as_u64(), Some(hc));
        let mut cluster = same.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        let change = alloc.update(&same, &mut cluster).expect("to Cluster");
        alloc.commit(&change);
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
        assert!(cluster["spec"]["ports"][0]["nodePort"].as_u64().is_some());
        alloc
            .allocate(&mut other)
            .expect("free after the policy change");
        // allocateLoadBalancerNodePorts: false with Local keeps only the health port.
        let mut no_ports = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80}]}});
        alloc.allocate(&mut no_ports).expect("create");
        assert!(no_ports["spec"]["ports"][0].get("nodePort").is_none());
        assert!(no_ports["spec"]["healthCheckNodePort"].as_u64().is_some());
    }

    #[test]
    fn updates_allocate_and_release_node_ports_as_the_type_changes() {
        let alloc = Allocator::default();
        let mut old = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}});
        alloc.allocate(&mut old).expect("create");
        assert!(old["spec"]["ports"][0].get("nodePort").is_none());
        // ClusterIP → NodePort: every port gets one.
        let mut new = old.clone();
        new["spec"]["type"] = json!("NodePort");
        let change = alloc.update(&old, &mut new).expect("to NodePort");
        alloc.commit(&change);
        let ports: Vec<u64> = (0..2)
            .map(|i| {
                new["spec"]["ports"][i]["nodePort"]
                    .as_u64()
                    .expect("a node port")
            })
            .collect();
        assert_ne!(ports[0], ports[1]);
        // An update that leaves nodePort out keeps it.
        let old = new.clone();
        let mut again = old.clone();
        for p in again["spec"]["ports"].as_array_mut().expect("ports") {
            p.as_object_mut().expect("port").remove("nodePort");
        }
        let change = alloc.update(&old, &mut again).expect("same ports");
        alloc.commit(&change);
        assert_eq!(again["spec"]["ports"][0]["nodePort"], json!(ports[0]));
        assert_eq!(again["spec"]["ports"][1]["nodePort"], json!(ports[1]));
        // Another Service cannot take them.
        let mut other =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": ports[0]}]}});
        assert!(alloc.allocate(&mut other).is_err());
        // NodePort → ClusterIP: the node ports go, and are free again once written.
        let old = again.clone();
        let mut back = old.clone();
        back["spec"]["type"] = json!("ClusterIP");
        let change = alloc.update(&old, &mut back).expect("to ClusterIP");
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
        alloc.commit(&change);
        alloc.allocate(&mut other).expect("the port is free again");
        // A failed write gives back what the update took.
        let mut np = back.clone();
        np["spec"]["type"] = json!("NodePort");
        let change = alloc.update(&back, &mut np).expect("to NodePort again");
        let taken = np["spec"]["ports"][0]["nodePort"].as_u64().expect("port");
        alloc.abort(&change);
        let mut reuse =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 2, "nodePort": taken}]}});
        alloc.allocate(&mut reuse).expect("aborted ports are free");
    }

    #[test]
    fn node_ports_are_picked_at_random() {
        let alloc = Allocator::default();
        let picks: BTreeSet<u64> = (0..8)
            .map(|_| {
                let mut s = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
                alloc.allocate(&mut s).expect("allocate");
                s["spec"]["ports"][0]["nodePort"].as_u64().expect("port")
            })
            .collect();
        // Eight sequential picks would be 30000..30007.
        assert!(picks.iter().any(|p| *p > 30_100), "{picks:?}");
    }
}
