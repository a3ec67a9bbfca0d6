//! Keeps the socket-LB maps equal to what the Services and EndpointSlices say,
//! touching only the frontends that changed. A Service that is rejected keeps its
//! last good programming (and the rejection is logged), so a bad update never
//! leaves the maps half-right.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use berth_ebpf::{Frontend, ServiceOptions, SocketLb};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::model::{LbEntry, Rejected, entries};

/// Where entries are programmed: the real [`SocketLb`], or a recorder in tests.
pub trait LbTarget {
    fn set(&mut self, entry: &LbEntry) -> Result<(), String>;
    fn remove(&mut self, frontend: Frontend) -> Result<(), String>;
    /// Every frontend programmed now, including ones adopted from pinned maps.
    fn frontends(&self) -> Vec<Frontend>;
    /// Backend slots in use in the map (for the fill metric).
    fn slots(&self) -> u32;
    /// Answers ARP for a load-balancer address on the external interfaces, or stops.
    fn announce(&mut self, addr: Ipv4Addr, on: bool) -> Result<(), String>;
    /// The addresses announced now, including ones adopted from pinned maps.
    fn announced(&self) -> Vec<Ipv4Addr>;
}

impl LbTarget for SocketLb {
    fn set(&mut self, entry: &LbEntry) -> Result<(), String> {
        let options = ServiceOptions {
            affinity_timeout: entry.affinity_timeout,
            snat: entry.snat,
            source_ranges: !entry.source_ranges.is_empty(),
        };
        // Ranges in place before the flag says to check them; the flag cleared before
        // they go.
        if options.source_ranges {
            self.set_source_ranges(entry.frontend, &entry.source_ranges)
                .map_err(|e| e.to_string())?;
        }
        self.set_service_with(entry.frontend, &entry.backends, options)
            .map_err(|e| e.to_string())?;
        if !options.source_ranges {
            self.set_source_ranges(entry.frontend, &[])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn remove(&mut self, frontend: Frontend) -> Result<(), String> {
        self.remove_service(frontend)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn frontends(&self) -> Vec<Frontend> {
        SocketLb::frontends(self)
    }

    fn slots(&self) -> u32 {
        self.table().backends()
    }

    fn announce(&mut self, addr: Ipv4Addr, on: bool) -> Result<(), String> {
        SocketLb::announce(self, addr, on).map_err(|e| e.to_string())
    }

    fn announced(&self) -> Vec<Ipv4Addr> {
        SocketLb::announced(self)
    }
}

/// The load-balancer addresses `entries` ask to be announced.
fn announcements(entries: &[LbEntry]) -> BTreeSet<Ipv4Addr> {
    entries
        .iter()
        .filter(|e| e.announce)
        .map(|e| e.frontend.addr)
        .collect()
}

/// Why a sync step did not fully apply.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("service {service} rejected: {reason}")]
    Rejected { service: String, reason: Rejected },
    #[error("service {service}: programming the maps failed: {message}")]
    Target { service: String, message: String },
}

/// Counters for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    pub rejected: u64,
    pub errors: u64,
}

/// The programmed state, by Service (`namespace/name`).
#[derive(Debug)]
pub struct ServiceSync<T> {
    target: T,
    node: String,
    programmed: HashMap<String, Vec<LbEntry>>,
    /// How many owners announce each load-balancer address.
    announced: BTreeMap<Ipv4Addr, usize>,
    rejected: u64,
    errors: u64,
}

fn key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

impl<T: LbTarget> ServiceSync<T> {
    /// Syncs into `target` as node `node` (for `internalTrafficPolicy: Local`).
    pub fn new(target: T, node: impl Into<String>) -> Self {
        Self {
            target,
            node: node.into(),
            programmed: HashMap::new(),
            announced: BTreeMap::new(),
            rejected: 0,
            errors: 0,
        }
    }

    /// Brings `svc`'s frontends in line with `svc` and `slices`.
    pub fn apply(&mut self, svc: &Service, slices: &[EndpointSlice]) -> Result<(), SyncError> {
        let service = key(svc);
        let wanted = match entries(svc, slices, &self.node) {
            Ok(w) => w,
            Err(reason) => {
                self.rejected += 1;
                tracing::warn!(%service, %reason, "service not programmed; keeping its last good state");
                return Err(SyncError::Rejected { service, reason });
            }
        };
        self.apply_entries(service, wanted)
    }

    /// Brings the frontends owned by `owner` in line with `wanted` — for entries
    /// that do not come from a Service, such as a pod's hostPorts
    /// ([`super::host_port_entries`]), under an owner key like `pod:ns/name`.
    pub fn apply_entries(&mut self, owner: String, wanted: Vec<LbEntry>) -> Result<(), SyncError> {
        let old = self.programmed.remove(&owner).unwrap_or_default();
        let result = self.reconcile(&owner, &old, &wanted);
        let now = if result.is_ok() { wanted } else { old.clone() };
        let announced = self.announce(&owner, &old, &now);
        if !now.is_empty() {
            self.programmed.insert(owner, now);
        }
        result.and(announced)
    }

    /// Moves the ARP announcements of `owner` from `old` to `now`, counting owners
    /// per address.
    fn announce(&mut self, owner: &str, old: &[LbEntry], now: &[LbEntry]) -> Result<(), SyncError> {
        let (before, after) = (announcements(old), announcements(now));
        let mut result = Ok(());
        for addr in after.difference(&before) {
            let first = !self.announced.contains_key(addr);
            if first && let Err(message) = self.target.announce(*addr, true) {
                // Not counted, so the books stay right when the owner lets go of it.
                self.errors += 1;
                result = Err(SyncError::Target {
                    service: owner.to_owned(),
                    message,
                });
                continue;
            }
            *self.announced.entry(*addr).or_default() += 1;
        }
        for addr in before.difference(&after) {
            let Some(n) = self.announced.get_mut(addr) else {
                continue;
            };
            *n -= 1;
            if *n == 0 {
                self.announced.remove(addr);
                if let Err(message) = self.target.announce(*addr, false) {
                    self.errors += 1;
                    result = Err(SyncError::Target {
                        service: owner.to_owned(),
                        message,
                    });
                }
            }
        }
        result
    }

    /// Removes every frontend of Service `namespace/name`.
    pub fn delete(&mut self, namespace: &str, name: &str) -> Result<(), SyncError> {
        self.delete_owner(format!("{namespace}/{name}"))
    }

    /// Removes every frontend owned by `owner` (see [`ServiceSync::apply_entries`]).
    pub fn delete_owner(&mut self, service: String) -> Result<(), SyncError> {
        let old = self.programmed.remove(&service).unwrap_or_default();
        let result = self.reconcile(&service, &old, &[]);
        if result.is_err() {
            self.programmed.insert(service, old);
            return result;
        }
        self.announce(&service, &old, &[])
    }

    fn reconcile(
        &mut self,
        service: &str,
        old: &[LbEntry],
        wanted: &[LbEntry],
    ) -> Result<(), SyncError> {
        let fail = |this: &mut Self, message: String| {
            this.errors += 1;
            tracing::error!(%service, %message, "socket-LB map update failed");
            SyncError::Target {
                service: service.to_string(),
                message,
            }
        };
        for entry in wanted {
            if !old.contains(entry) {
                self.target.set(entry).map_err(|m| fail(self, m))?;
            }
        }
        for entry in old {
            if !wanted.iter().any(|w| w.frontend == entry.frontend) {
                self.target
                    .remove(entry.frontend)
                    .map_err(|m| fail(self, m))?;
            }
        }
        Ok(())
    }

    /// Removes every frontend in the target that no applied Service claims: run it
    /// once the initial list of Services has been applied, after a restart that
    /// adopted pinned maps, so Services deleted while the agent was away go too.
    pub fn prune_unclaimed(&mut self) -> Result<usize, SyncError> {
        let claimed: Vec<Frontend> = self
            .programmed
            .values()
            .flatten()
            .map(|e| e.frontend)
            .collect();
        let mut removed = 0;
        for frontend in self.target.frontends() {
            if !claimed.contains(&frontend) {
                self.target.remove(frontend).map_err(|message| {
                    self.errors += 1;
                    SyncError::Target {
                        service: format!("{}:{}", frontend.addr, frontend.port),
                        message,
                    }
                })?;
                removed += 1;
            }
        }
        for addr in self.target.announced() {
            if !self.announced.contains_key(&addr) {
                self.target.announce(addr, false).map_err(|message| {
                    self.errors += 1;
                    SyncError::Target {
                        service: addr.to_string(),
                        message,
                    }
                })?;
            }
        }
        Ok(removed)
    }

    /// What is programmed now.
    pub fn stats(&self) -> SyncStats {
        let entries = self.programmed.values().flatten();
        SyncStats {
            services: self.programmed.len(),
            frontends: entries.clone().count(),
            backends: entries.map(|e| e.backends.len()).sum(),
            rejected: self.rejected,
            errors: self.errors,
        }
    }

    /// Backend slots the target's map holds.
    pub fn target_slots(&self) -> u32 {
        self.target.slots()
    }

    /// The target, for inspection.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// The target, for what is not per Service (interfaces, node addresses).
    pub fn target_mut(&mut self) -> &mut T {
        &mut self.target
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        live: Vec<Frontend>,
    }

    impl LbTarget for Recorder {
        fn set(&mut self, e: &LbEntry) -> Result<(), String> {
            self.log.push(format!(
                "set {}:{} -> {}",
                e.frontend.addr,
                e.frontend.port,
                e.backends.len()
            ));
            if !self.live.contains(&e.frontend) {
                self.live.push(e.frontend);
            }
            Ok(())
        }
        fn remove(&mut self, f: Frontend) -> Result<(), String> {
            self.log.push(format!("remove {}:{}", f.addr, f.port));
            self.live.retain(|x| *x != f);
            Ok(())
        }
        fn frontends(&self) -> Vec<Frontend> {
            self.live.clone()
        }
        fn slots(&self) -> u32 {
            0
        }
        fn announce(&mut self, addr: Ipv4Addr, on: bool) -> Result<(), String> {
            self.log.push(format!("announce {addr} {on}"));
            Ok(())
        }
        fn announced(&self) -> Vec<Ipv4Addr> {
            Vec::new()
        }
    }

    fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "ports": ports}}))
        .expect("valid")
    }

    fn slice(n: usize) -> EndpointSlice {
        let eps: Vec<_> = (0..n)
            .map(|i| json!({"addresses": [format!("10.244.0.{}", i + 1)]}))
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "web-x", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
            "ports": [{"name": "", "port": 8080}], "endpoints": eps}))
        .expect("valid")
    }

    #[test]
    fn only_changes_are_written_and_deletes_clean_up() {
        let mut sync = ServiceSync::new(Recorder::default(), "n1");
        sync.apply(
            &svc(json!([{"port": 80}, {"name": "b", "port": 81}])),
            &[slice(2)],
        )
        .expect("apply");
        assert_eq!(
            sync.target().log,
            ["set 10.96.0.20:80 -> 2", "set 10.96.0.20:81 -> 0"]
        );
        sync.apply(
            &svc(json!([{"port": 80}, {"name": "b", "port": 81}])),
            &[slice(2)],
        )
        .expect("same again");
        assert_eq!(
            sync.target().log.len(),
            2,
            "nothing changed, nothing written"
        );
        sync.apply(&svc(json!([{"port": 80}])), &[slice(3)])
            .expect("scale and drop a port");
        assert_eq!(
            &sync.target().log[2..],
            ["set 10.96.0.20:80 -> 3", "remove 10.96.0.20:81"]
        );
        assert_eq!(
            sync.stats(),
            SyncStats {
                services: 1,
                frontends: 1,
                backends: 3,
                rejected: 0,
                errors: 0
            }
        );
        sync.delete("default", "web").expect("delete");
        assert_eq!(
            sync.target().log.last().map(String::as_str),
            Some("remove 10.96.0.20:80")
        );
        assert_eq!(sync.stats().services, 0);
    }

    #[test]
    fn after_a_restart_unclaimed_adopted_frontends_are_pruned() {
        let adopted = Frontend {
            addr: std::net::Ipv4Addr::new(10, 96, 9, 9),
            port: 80,
            protocol: berth_ebpf::Protocol::Tcp,
        };
        let mut sync = ServiceSync::new(
            Recorder {
                log: vec![],
                live: vec![adopted],
            },
            "n1",
        );
        sync.apply(&svc(json!([{"port": 80}])), &[slice(1)])
            .expect("apply");
        assert_eq!(sync.prune_unclaimed().expect("prune"), 1);
        assert_eq!(
            sync.target().log.last().map(String::as_str),
            Some("remove 10.96.9.9:80")
        );
        assert_eq!(
            sync.prune_unclaimed().expect("again"),
            0,
            "the Service's own frontend stays"
        );
    }

    #[test]
    fn a_rejected_update_keeps_the_last_good_state() {
        let mut sync = ServiceSync::new(Recorder::default(), "n1");
        sync.apply(&svc(json!([{"port": 80}])), &[slice(2)])
            .expect("apply");
        let err = sync.apply(
            &svc(json!([{"port": 80}, {"name": "dup", "port": 80}])),
            &[slice(2)],
        );
        assert!(matches!(err, Err(SyncError::Rejected { .. })), "{err:?}");
        assert_eq!(
            sync.target().log.len(),
            1,
            "no map write for a rejected Service"
        );
        assert_eq!(sync.stats().frontends, 1, "still programmed as before");
        assert_eq!(sync.stats().rejected, 1);
    }
}
