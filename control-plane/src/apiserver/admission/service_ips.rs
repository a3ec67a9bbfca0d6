//! Service cluster IP and node port allocation, as the apiserver's service REST does:
//! `spec.clusterIP` from the service CIDR (the first address is the `kubernetes`
//! Service's), `nodePort`s from 30000–32767; a requested value must be free (422
//! otherwise), and values are released when the Service goes away.

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
    next_port: u16,
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
                next_port: *NODE_PORTS.start(),
                ..Used::default()
            }),
        }
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
        if kind == "NodePort" || kind == "LoadBalancer" {
            let mut taken = Vec::new();
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
                    let span = NODE_PORTS.end() - NODE_PORTS.start() + 1;
                    let free = (0..span)
                        .map(|s| {
                            NODE_PORTS.start() + (used.next_port - NODE_PORTS.start() + s) % span
                        })
                        .find(|p| !used.ports.contains(p));
                    let Some(p) = free else {
                        return Err(vec![Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            "Internal error: range is full",
                        )]);
                    };
                    used.ports.insert(p);
                    used.next_port = if p == *NODE_PORTS.end() {
                        *NODE_PORTS.start()
                    } else {
                        p + 1
                    };
                    p
                };
                taken.push(port);
                svc["spec"]["ports"][i]["nodePort"] = json!(port);
            }
        }
        Ok(())
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

fn node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .map(|p| p as u16)
                .collect()
        })
        .unwrap_or_default()
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
}
