//! The cluster zone: the records of the Kubernetes DNS-Based Service Discovery
//! specification (kubernetes/dns `docs/specification.md`, schema 1.1.0) built from
//! Services and their EndpointSlices, one Service at a time.
//!
//! - a ClusterIP Service: `A <svc>.<ns>.svc.<zone>` → its IPv4 cluster IPs, `SRV
//!   _<port>._<proto>.<svc>.<ns>.svc.<zone>` per named port (target: the Service
//!   name), `PTR` of each cluster IP;
//! - a headless Service: one `A` per *ready* endpoint (every endpoint with
//!   `publishNotReadyAddresses`), `A <hostname>.<svc>.<ns>.svc.<zone>` per endpoint
//!   (its `hostname`, else the dashed IP — the spec's "system-assigned identifier",
//!   as CoreDNS does), `SRV` per named port and endpoint (target: the endpoint's name,
//!   port: the endpoint's port of that name), `PTR` of each endpoint IP; no ready
//!   endpoint → the name does not exist (NXDOMAIN, spec 2.4.1);
//! - an ExternalName Service: `CNAME <svc>.<ns>.svc.<zone>` → `externalName`;
//! - `TXT dns-version.<zone>` = the schema version; the deprecated pod records
//!   `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` → `a.b.c.d` for any address (spec 2.6, CoreDNS'
//!   `pods insecure`).
//!
//! Names that hold no record but have names below them (`svc.<zone>`,
//! `<ns>.svc.<zone>`, `_tcp.<svc>.<ns>.svc.<zone>`) exist: a query for them is
//! answered NODATA, not NXDOMAIN (RFC 8020). Every name is kept lower-case; queries
//! are compared case-insensitively, as the spec requires.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// The schema version served as `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// One SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lower-case, without the trailing dot.
    pub target: String,
}

/// The records one name holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub a: Vec<Ipv4Addr>,
    /// Lower-case, without the trailing dot.
    pub cname: Option<String>,
    pub srv: Vec<Srv>,
    pub txt: Vec<String>,
}

/// What a name is in the zone.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The name holds records (maybe none of the type asked: NODATA).
    Node(Cow<'a, Node>),
    /// The name exists but holds no record (an empty non-terminal): NODATA.
    Empty,
    /// The zone's apex: SOA and NS live here.
    Apex,
    NxDomain,
}

/// A Service port with a name (unnamed ports have no SRV record).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Port {
    name: Box<str>,
    /// `tcp`, `udp`, `sctp`.
    proto: Box<str>,
    port: u16,
}

/// A ready endpoint of a headless Service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    /// Its `hostname`, else the dashed IP.
    host: Box<str>,
    ip: Ipv4Addr,
    /// The named ports of its EndpointSlice.
    ports: Arc<[Port]>,
}

/// What the zone keeps of one Service: enough to answer every name below it. The
/// records themselves are made when asked for, so 10 000 Services cost a few MB.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    ClusterIp {
        ips: Box<[Ipv4Addr]>,
        ports: Box<[Port]>,
    },
    /// Never empty: a headless Service without ready endpoints has no entry.
    Headless {
        endpoints: Box<[Endpoint]>,
        /// The Service's named ports (name, proto).
        ports: Box<[(Box<str>, Box<str>)]>,
    },
    ExternalName(Box<str>),
}

/// The cluster zone.
#[derive(Debug)]
pub struct Zone {
    domain: String,
    /// Namespace → Service name → entry.
    namespaces: HashMap<Box<str>, HashMap<Box<str>, Entry>>,
    ptrs: HashMap<Ipv4Addr, Vec<String>>,
    services: usize,
    /// Bumped on every change: the SOA serial.
    serial: u32,
}

impl Zone {
    /// An empty zone for `domain` (e.g. `cluster.local`).
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            namespaces: HashMap::new(),
            ptrs: HashMap::new(),
            services: 0,
            serial: 1,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Services the zone holds records of.
    pub fn services(&self) -> usize {
        self.services
    }

    /// Addresses with PTR records (for metrics).
    pub fn ptr_addresses(&self) -> usize {
        self.ptrs.len()
    }

    /// True for `name` (lower-case, no trailing dot) at or below the zone's apex.
    pub fn contains(&self, name: &str) -> bool {
        name == self.domain
            || name
                .strip_suffix(self.domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    fn base(&self, namespace: &str, name: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.domain)
    }

    fn ptr_targets(&self, namespace: &str, name: &str, entry: &Entry) -> Vec<(Ipv4Addr, String)> {
        let base = self.base(namespace, name);
        match entry {
            Entry::ClusterIp { ips, .. } => ips.iter().map(|ip| (*ip, base.clone())).collect(),
            Entry::Headless { endpoints, .. } => endpoints
                .iter()
                .map(|e| (e.ip, format!("{}.{base}", e.host)))
                .collect(),
            Entry::ExternalName(_) => Vec::new(),
        }
    }

    /// Replaces what Service `namespace/name` contributes with the records of
    /// `service` over `slices` (slices of other Services are ignored); `None` removes
    /// the Service's records.
    pub fn set_service(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    ) {
        let namespace = namespace.to_ascii_lowercase();
        let name = name.to_ascii_lowercase();
        let new = service.and_then(|s| entry(s, &name, slices));
        let old = self
            .namespaces
            .get(namespace.as_str())
            .and_then(|n| n.get(name.as_str()));
        if old == new.as_ref() {
            return;
        }
        if let Some(old) = old.cloned() {
            for (ip, target) in self.ptr_targets(&namespace, &name, &old) {
                if let Some(targets) = self.ptrs.get_mut(&ip) {
                    targets.retain(|t| *t != target);
                    if targets.is_empty() {
                        self.ptrs.remove(&ip);
                    }
                }
            }
            if let Some(services) = self.namespaces.get_mut(namespace.as_str()) {
                services.remove(name.as_str());
                if services.is_empty() {
                    self.namespaces.remove(namespace.as_str());
                }
            }
            self.services -= 1;
        }
        if let Some(new) = new {
            for (ip, target) in self.ptr_targets(&namespace, &name, &new) {
                self.ptrs.entry(ip).or_default().push(target);
            }
            self.namespaces
                .entry(namespace.into_boxed_str())
                .or_default()
                .insert(name.into_boxed_str(), new);
            self.services += 1;
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// What `name` (lower-case, no trailing dot, inside the zone) is.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        if name == self.domain {
            return Lookup::Apex;
        }
        let Some(rest) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|r| r.strip_suffix('.'))
        else {
            return Lookup::NxDomain;
        };
        if rest == "dns-version" {
            return Lookup::Node(Cow::Owned(Node {
                txt: vec![SCHEMA_VERSION.to_owned()],
                ..Node::default()
            }));
        }
        if rest == "svc" || rest == "pod" || rest == "dns" {
            return Lookup::Empty;
        }
        if rest == "ns.dns" {
            // The SOA's and NS's server: the cluster DNS Service's address.
            return match self
                .namespaces
                .get("kube-system")
                .and_then(|n| n.get("kube-dns"))
            {
                Some(Entry::ClusterIp { ips, .. }) => Lookup::Node(Cow::Owned(Node {
                    a: ips.to_vec(),
                    ..Node::default()
                })),
                _ => Lookup::NxDomain,
            };
        }
        if let Some(pods) = rest.strip_suffix(".pod") {
            return match pods.split_once('.') {
                None if is_label(pods) => Lookup::Empty, // `<ns>.pod.<zone>`
                Some((dashed, namespace)) if is_label(namespace) => {
                    match dashed.replace('-', ".").parse::<Ipv4Addr>() {
                        Ok(ip) => Lookup::Node(Cow::Owned(Node {
                            a: vec![ip],
                            ..Node::default()
                        })),
                        Err(_) => Lookup::NxDomain,
                    }
                }
                _ => Lookup::NxDomain,
            };
        }
        let Some(services) = rest.strip_suffix(".svc") else {
            return Lookup::NxDomain;
        };
        // Right to left: namespace, service, then a hostname or `_proto`, then `_port`.
        let mut labels = services.rsplit('.');
        let ns_name = labels.next().unwrap_or_default();
        let Some(namespace) = self.namespaces.get(ns_name) else {
            return Lookup::NxDomain;
        };
        let Some(svc_name) = labels.next() else {
            return Lookup::Empty; // `<ns>.svc.<zone>`
        };
        let Some(entry) = namespace.get(svc_name) else {
            return Lookup::NxDomain;
        };
        let below: Vec<&str> = labels.collect();
        let base = || self.base(ns_name, svc_name);
        match (entry, below.as_slice()) {
            (Entry::ClusterIp { ips, .. }, []) => Lookup::Node(Cow::Owned(Node {
                a: ips.to_vec(),
                ..Node::default()
            })),
            (Entry::Headless { endpoints, .. }, []) => {
                let mut a: Vec<Ipv4Addr> = endpoints.iter().map(|e| e.ip).collect();
                a.sort();
                a.dedup();
                Lookup::Node(Cow::Owned(Node {
                    a,
                    ..Node::default()
                }))
            }
            (Entry::ExternalName(target), []) => Lookup::Node(Cow::Owned(Node {
                cname: Some(target.to_string()),
                ..Node::default()
            })),
            (Entry::ClusterIp { ports, .. }, [proto]) => {
                if proto
                    .strip_prefix('_')
                    .is_some_and(|p| ports.iter().any(|x| &*x.proto == p))
                {
                    Lookup::Empty
                } else {
                    Lookup::NxDomain
                }
            }
            (Entry::Headless { endpoints, ports }, [label]) => {
                if let Some(p) = label.strip_prefix('_')
                    && ports.iter().any(|(_, proto)| &**proto == p)
                {
                    return Lookup::Empty;
                }
                let a: Vec<Ipv4Addr> = endpoints
                    .iter()
                    .filter(|e| &*e.host == *label)
                    .map(|e| e.ip)
                    .collect();
                if a.is_empty() {
                    Lookup::NxDomain
                } else {
                    Lookup::Node(Cow::Owned(Node {
                        a,
                        ..Node::default()
                    }))
                }
            }
            (Entry::ClusterIp { ports, .. }, [proto, port]) => {
                let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_'))
                else {
                    return Lookup::NxDomain;
                };
                let srv: Vec<Srv> = ports
                    .iter()
                    .filter(|p| &*p.proto == proto && &*p.name == port)
                    .map(|p| Srv {
                        priority: 0,
                        weight: 100,
                        port: p.port,
                        target: base(),
                    })
                    .collect();
                if srv.is_empty() {
                    Lookup::NxDomain
                } else {
                    Lookup::Node(Cow::Owned(Node {
                        srv,
                        ..Node::default()
                    }))
                }
            }
            (Entry::Headless { endpoints, .. }, [proto, port]) => {
                let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_'))
                else {
                    return Lookup::NxDomain;
                };
                let base = base();
                let mut srv: Vec<Srv> = endpoints
                    .iter()
                    .filter_map(|e| {
                        let p = e
                            .ports
                            .iter()
                            .find(|p| &*p.proto == proto && &*p.name == port)?;
                        Some(Srv {
                            priority: 0,
                            weight: 0,
                            port: p.port,
                            target: format!("{}.{base}", e.host),
                        })
                    })
                    .collect();
                if srv.is_empty() {
                    return Lookup::NxDomain;
                }
                srv.sort();
                srv.dedup();
                // CoreDNS' weights: the SRV set shares 100.
                let weight = u16::try_from(100 / srv.len()).unwrap_or(1).max(1);
                for s in &mut srv {
                    s.weight = weight;
                }
                Lookup::Node(Cow::Owned(Node {
                    srv,
                    ..Node::default()
                }))
            }
            _ => Lookup::NxDomain,
        }
    }

    /// The names `ip` points back to (PTR).
    pub fn reverse(&self, ip: Ipv4Addr) -> &[String] {
        self.ptrs.get(&ip).map_or(&[], Vec::as_slice)
    }
}

/// A single DNS label of letters, digits and dashes.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn proto(protocol: Option<&str>) -> Box<str> {
    protocol
        .unwrap_or("TCP")
        .to_ascii_lowercase()
        .into_boxed_str()
}

fn named_ports<'a>(
    ports: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, i32)>,
) -> Vec<Port> {
    ports
        .filter_map(|(name, protocol, port)| {
            Some(Port {
                name: name
                    .filter(|n| !n.is_empty())?
                    .to_ascii_lowercase()
                    .into_boxed_str(),
                proto: proto(protocol),
                port: u16::try_from(port).ok().filter(|p| *p > 0)?,
            })
        })
        .collect()
}

/// The ready endpoints of headless Service `service` (every endpoint with
/// `publishNotReadyAddresses`), one per address.
fn ready_endpoints(
    service: &str,
    slices: &[&EndpointSlice],
    publish_not_ready: bool,
) -> Vec<Endpoint> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for slice in slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::services::SERVICE_NAME_LABEL));
        if owner.map(String::as_str) != Some(service) || slice.address_type != "IPv4" {
            continue;
        }
        let ports: Arc<[Port]> = named_ports(
            slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.as_deref(), p.protocol.as_deref(), p.port?))),
        )
        .into();
        for ep in slice.endpoints.iter().flatten() {
            // EndpointConditions: a nil `ready` means ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish_not_ready {
                continue;
            }
            for address in &ep.addresses {
                let Ok(ip) = address.parse::<Ipv4Addr>() else {
                    continue;
                };
                if !seen.insert(ip) {
                    continue;
                }
                let host = ep
                    .hostname
                    .as_deref()
                    .filter(|h| is_label(h))
                    .map_or_else(|| address.replace('.', "-"), |h| h.to_ascii_lowercase());
                out.push(Endpoint {
                    host: host.into_boxed_str(),
                    ip,
                    ports: ports.clone(),
                });
            }
        }
    }
    out.sort_by_key(|e| e.ip);
    out
}

/// What the zone keeps of `svc` (named `name`) over `slices`; `None` when it has no
/// records (not allocated yet, a headless Service without ready endpoints).
fn entry(svc: &Service, name: &str, slices: &[&EndpointSlice]) -> Option<Entry> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec
            .external_name
            .as_deref()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        return (!target.is_empty()).then(|| Entry::ExternalName(target.into_boxed_str()));
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if spec.cluster_ip.as_deref() == Some("None") {
        let endpoints =
            ready_endpoints(name, slices, spec.publish_not_ready_addresses == Some(true));
        if endpoints.is_empty() {
            return None; // spec 2.4.1: no ready endpoint → NXDOMAIN
        }
        let ports = named_ports(
            ports
                .iter()
                .map(|p| (p.name.as_deref(), p.protocol.as_deref(), p.port)),
        )
        .into_iter()
        .map(|p| (p.name, p.proto))
        .collect();
        return Some(Entry::Headless {
            endpoints: endpoints.into_boxed_slice(),
            ports,
        });
    }
    let ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ips.is_empty() {
        return None; // not allocated yet
    }
    Some(Entry::ClusterIp {
        ips: ips.into_boxed_slice(),
        ports: named_ports(
            ports
                .iter()
                .map(|p| (p.name.as_deref(), p.protocol.as_deref(), p.port)),
        )
        .into_boxed_slice(),
    })
}

#[cfg(test)]
pub(crate) mod tests;
