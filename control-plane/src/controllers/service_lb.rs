//! The load-balancer controller: berth's built-in answer to `type: LoadBalancer`, in the
//! role a cloud provider's service controller (or k3s' ServiceLB, MetalLB's L2 mode)
//! plays. It gives each LoadBalancer Service an address from the pool of
//! `berth-server --lb-pool` and writes it to `status.loadBalancer.ingress`; the node
//! agents' eBPF dataplane answers on that address (ARP and the Service's ports) on
//! their external interfaces. Services that name another `loadBalancerClass` are left
//! to their own controller; a Service that stops being a LoadBalancer (or is deleted)
//! gives its address back and its status is cleared. A requested
//! `spec.loadBalancerIP` is honoured when it is in the pool and free. [`start`] runs
//! it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::queue::{Queue, key_of, split_key};
use crate::client::{Informers, Involved, record_event};

/// The `loadBalancerClass` this controller answers for besides none.
pub const CLASS: &str = "berth.dev/load-balancer";
const COMPONENT: &str = "service-lb-controller";

/// A pool of addresses: CIDRs (`10.0.0.0/24`, network and broadcast left out below a
/// /31) and ranges (`10.0.0.10-10.0.0.20`), comma-separated, as `--lb-pool` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pool {
    ranges: Vec<(u32, u32)>,
    text: String,
}

impl std::str::FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let range = if let Some((a, b)) = item.split_once('-') {
                let (a, b) = (ip(a.trim(), item)?, ip(b.trim(), item)?);
                if a > b {
                    return Err(format!("{item:?}: the range ends before it starts"));
                }
                (a, b)
            } else if let Some((addr, prefix)) = item.split_once('/') {
                let addr = ip(addr, item)?;
                let prefix: u32 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be 0-32"))?;
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                let (first, last) = (addr & mask, addr | !mask);
                if prefix < 31 {
                    (first + 1, last - 1)
                } else {
                    (first, last)
                }
            } else {
                let a = ip(item, item)?;
                (a, a)
            };
            ranges.push(range);
        }
        if ranges.is_empty() {
            return Err("an empty pool".into());
        }
        Ok(Pool {
            ranges,
            text: s.to_owned(),
        })
    }
}

fn ip(s: &str, item: &str) -> Result<u32, String> {
    s.parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| format!("{item:?}: {s:?} is not an IPv4 address"))
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Pool {
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        self.ranges.iter().any(|(s, e)| (*s..=*e).contains(&a))
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(s, e)| (*s..=*e).map(Ipv4Addr::from))
    }
}

/// Which address each Service holds.
#[derive(Debug, Default)]
pub struct Allocations {
    by_ip: BTreeMap<Ipv4Addr, String>,
    by_key: BTreeMap<String, Ipv4Addr>,
}

/// Why a Service got no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `spec.loadBalancerIP` names an address outside the pool.
    NotInPool(Ipv4Addr),
    /// `spec.loadBalancerIP` names an address another Service holds.
    Taken(Ipv4Addr, String),
    /// Every address of the pool is taken.
    Exhausted,
}

impl Allocations {
    /// The address of `key`: the one it holds, else `requested` (if in the pool and
    /// free), else the first free one.
    pub fn assign(
        &mut self,
        pool: &Pool,
        key: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, Refused> {
        let held = self.by_key.get(key).copied();
        if let Some(held) = held
            && requested.is_none_or(|r| r == held)
            && pool.contains(held)
        {
            return Ok(held);
        }
        // Decide before giving anything back: a refused move keeps the address held.
        let addr = match requested {
            Some(r) if !pool.contains(r) => return Err(Refused::NotInPool(r)),
            Some(r) => match self.by_ip.get(&r) {
                Some(owner) if owner != key => return Err(Refused::Taken(r, owner.clone())),
                _ => r,
            },
            None => pool
                .addresses()
                .find(|a| !self.by_ip.contains_key(a))
                .ok_or(Refused::Exhausted)?,
        };
        if held.is_some() {
            self.release(key);
        }
        self.by_ip.insert(addr, key.to_owned());
        self.by_key.insert(key.to_owned(), addr);
        Ok(addr)
    }

    /// Records that `key` holds `addr` (from its status, at start); false if another
    /// Service holds it already.
    pub fn adopt(&mut self, key: &str, addr: Ipv4Addr) -> bool {
        match self.by_ip.get(&addr) {
            Some(owner) => owner == key,
            None => {
                self.by_ip.insert(addr, key.to_owned());
                self.by_key.insert(key.to_owned(), addr);
                true
            }
        }
    }

    pub fn release(&mut self, key: &str) -> Option<Ipv4Addr> {
        let addr = self.by_key.remove(key)?;
        self.by_ip.remove(&addr);
        Some(addr)
    }
}

/// Whether this controller provides `svc`'s load balancer.
pub fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer")
            && s.load_balancer_class.as_deref().is_none_or(|c| c == CLASS)
    })
}

/// The IPv4 ingress addresses in `svc`'s status.
fn status_ips(svc: &Service) -> Vec<Ipv4Addr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

struct Controller {
    client: Client,
    services: Store<Service>,
    pool: Pool,
    allocations: Mutex<Allocations>,
}

/// Runs the controller over `pool`.
pub fn start(
    client: Client,
    pool: Pool,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let services = informers.add(Api::<Service>::all(client.clone()), {
        let q = queue.clone();
        move |svc: &Service| {
            if is_ours(svc) || !status_ips(svc).is_empty() {
                q.add(key_of(&svc.metadata));
            }
        }
    });
    async move {
        let _ = services.wait_until_ready().await;
        // Adopt what the Services hold already, so a restart moves nothing.
        let mut allocations = Allocations::default();
        for svc in services.state() {
            if is_ours(&svc) {
                let key = key_of(&svc.metadata);
                for addr in status_ips(&svc).into_iter().filter(|a| pool.contains(*a)) {
                    allocations.adopt(&key, addr);
                }
            }
        }
        let ctl = Arc::new(Controller {
            client,
            services,
            pool,
            allocations: Mutex::new(allocations),
        });
        queue
            .work(COMPONENT, move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

impl Controller {
    fn allocations(&self) -> std::sync::MutexGuard<'_, Allocations> {
        self.allocations.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(ns)) else {
            self.allocations().release(key);
            return Ok(None);
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let held = status_ips(&svc);
        if !is_ours(&svc) {
            // No longer a LoadBalancer of ours: give the address back and clear the
            // status this controller wrote.
            let released = self.allocations().release(key);
            let is_lb_elsewhere = svc
                .spec
                .as_ref()
                .is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer"));
            // Ours if it held (or, after a restart, shows) addresses of the pool.
            let ours = released.is_some() || held.iter().all(|a| self.pool.contains(*a));
            if !held.is_empty() && !is_lb_elsewhere && ours {
                // A merge patch removes a key only by null (an empty object merges nothing).
                let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                self.event(
                    &svc,
                    "Normal",
                    "DeletedLoadBalancer",
                    "Deleted load balancer",
                )
                .await;
            }
            return Ok(None);
        }
        let requested = match svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
        {
            None | Some("") => None,
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = format!(
                        "Error syncing load balancer: failed to ensure load balancer: spec.loadBalancerIP {text:?} is not an IPv4 address"
                    );
                    self.event(&svc, "Warning", "SyncLoadBalancerFailed", &msg)
                        .await;
                    return Ok(None);
                }
            },
        };
        let assigned = self.allocations().assign(&self.pool, key, requested);
        let addr = match assigned {
            Ok(a) => a,
            Err(refused) => {
                let why = match refused {
                    Refused::NotInPool(a) => format!(
                        "spec.loadBalancerIP {a} is not in the load-balancer pool {}",
                        self.pool
                    ),
                    Refused::Taken(a, owner) => {
                        format!("spec.loadBalancerIP {a} is already used by Service {owner}")
                    }
                    Refused::Exhausted => format!(
                        "no free address left in the load-balancer pool {}",
                        self.pool
                    ),
                };
                let msg =
                    format!("Error syncing load balancer: failed to ensure load balancer: {why}");
                self.event(&svc, "Warning", "SyncLoadBalancerFailed", &msg)
                    .await;
                // Addresses come free as Services go; try again later.
                return Ok(Some(Duration::from_secs(30)));
            }
        };
        if held == [addr] {
            return Ok(None);
        }
        self.event(
            &svc,
            "Normal",
            "EnsuringLoadBalancer",
            "Ensuring load balancer",
        )
        .await;
        let patch = json!({"status": {"loadBalancer": {"ingress": [
            {"ip": addr.to_string(), "ipMode": "VIP"}
        ]}}});
        if let Err(err) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            if matches!(&err, kube::Error::Api(s) if s.code == 404) {
                self.allocations().release(key);
                return Ok(None);
            }
            return Err(err);
        }
        self.event(
            &svc,
            "Normal",
            "EnsuredLoadBalancer",
            "Ensured load balancer",
        )
        .await;
        Ok(None)
    }

    async fn event(&self, svc: &Service, type_: &str, reason: &str, message: &str) {
        let about = Involved {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            namespace: svc.metadata.namespace.clone(),
            uid: svc.metadata.uid.clone(),
        };
        record_event(&self.client, COMPONENT, &about, type_, reason, message).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    #[test]
    fn pools_parse_cidrs_ranges_and_single_addresses() {
        let pool: Pool = "10.0.0.0/30, 10.1.0.5-10.1.0.6,10.2.0.9"
            .parse()
            .expect("pool");
        let all: Vec<Ipv4Addr> = pool.addresses().collect();
        assert_eq!(
            all,
            ["10.0.0.1", "10.0.0.2", "10.1.0.5", "10.1.0.6", "10.2.0.9"].map(a)
        );
        let single: Pool = "192.168.1.7/32".parse().expect("a /32");
        assert!(single.contains(a("192.168.1.7")));
        for bad in ["", "10.0.0.0/33", "10.0.0.9-10.0.0.1", "ten", "10.0.0.0/x"] {
            assert!(bad.parse::<Pool>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn services_keep_their_address_and_requests_are_checked() {
        let pool: Pool = "10.0.0.1-10.0.0.2".parse().expect("pool");
        let mut al = Allocations::default();
        assert_eq!(al.assign(&pool, "ns/a", None), Ok(a("10.0.0.1")));
        assert_eq!(al.assign(&pool, "ns/a", None), Ok(a("10.0.0.1")));
        assert_eq!(
            al.assign(&pool, "ns/b", Some(a("10.0.0.1"))),
            Err(Refused::Taken(a("10.0.0.1"), "ns/a".into()))
        );
        assert_eq!(
            al.assign(&pool, "ns/b", Some(a("10.9.0.1"))),
            Err(Refused::NotInPool(a("10.9.0.1")))
        );
        assert_eq!(al.assign(&pool, "ns/b", None), Ok(a("10.0.0.2")));
        assert_eq!(al.assign(&pool, "ns/c", None), Err(Refused::Exhausted));
        assert_eq!(al.release("ns/a"), Some(a("10.0.0.1")));
        assert_eq!(al.assign(&pool, "ns/c", None), Ok(a("10.0.0.1")));
        // A changed request moves the Service to the requested address.
        al.release("ns/b");
        assert_eq!(
            al.assign(&pool, "ns/c", Some(a("10.0.0.2"))),
            Ok(a("10.0.0.2"))
        );
        assert!(al.adopt("ns/d", a("10.0.0.1")));
        assert!(!al.adopt("ns/e", a("10.0.0.2")));
    }

    #[test]
    fn only_load_balancers_without_another_class_are_ours() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec}))
                .expect("service")
        };
        assert!(is_ours(&svc(json!({"type": "LoadBalancer"}))));
        assert!(is_ours(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": CLASS})
        )));
        assert!(!is_ours(&svc(
            json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/other"})
        )));
        assert!(!is_ours(&svc(json!({"type": "NodePort"}))));
    }
}
