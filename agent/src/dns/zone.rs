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

/// The records one Service contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contribution {
    pub names: Vec<(String, Node)>,
    /// Names that exist only because names below them do.
    pub empty: Vec<String>,
    pub ptrs: Vec<(Ipv4Addr, String)>,
}

/// The cluster zone.
#[derive(Debug)]
pub struct Zone {
    domain: String,
    names: HashMap<String, Node>,
    /// Empty non-terminals with the number of Services that make them exist.
    empty: HashMap<String, u32>,
    ptrs: HashMap<Ipv4Addr, Vec<String>>,
    services: HashMap<(String, String), Contribution>,
    /// Bumped on every change: the SOA serial.
    serial: u32,
}

impl Zone {
    /// An empty zone for `domain` (e.g. `cluster.local`).
    pub fn new(domain: &str) -> Self {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut names = HashMap::new();
        names.insert(
            format!("dns-version.{domain}"),
            Node {
                txt: vec![SCHEMA_VERSION.to_owned()],
                ..Node::default()
            },
        );
        let mut empty = HashMap::new();
        for fixed in ["svc", "pod"] {
            empty.insert(format!("{fixed}.{domain}"), 1);
        }
        Self {
            domain,
            names,
            empty,
            ptrs: HashMap::new(),
            services: HashMap::new(),
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
        self.services.len()
    }

    /// Names with records (for metrics).
    pub fn names(&self) -> usize {
        self.names.len()
    }

    /// True for `name` (lower-case, no trailing dot) at or below the zone's apex.
    pub fn contains(&self, name: &str) -> bool {
        name == self.domain
            || name
                .strip_suffix(self.domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
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
        let key = (namespace.to_owned(), name.to_owned());
        let new = service.map(|s| contribution(s, slices, &self.domain));
        if self.services.get(&key) == new.as_ref() {
            return;
        }
        if let Some(old) = self.services.remove(&key) {
            for (n, _) in &old.names {
                self.names.remove(n);
            }
            for e in &old.empty {
                if let Some(count) = self.empty.get_mut(e) {
                    *count -= 1;
                    if *count == 0 {
                        self.empty.remove(e);
                    }
                }
            }
            for (ip, target) in &old.ptrs {
                if let Some(targets) = self.ptrs.get_mut(ip) {
                    targets.retain(|t| t != target);
                    if targets.is_empty() {
                        self.ptrs.remove(ip);
                    }
                }
            }
        }
        if let Some(new) = new {
            for (n, node) in &new.names {
                self.names.insert(n.clone(), node.clone());
            }
            for e in &new.empty {
                *self.empty.entry(e.clone()).or_default() += 1;
            }
            for (ip, target) in &new.ptrs {
                self.ptrs.entry(*ip).or_default().push(target.clone());
            }
            self.services.insert(key, new);
        }
        self.serial = self.serial.wrapping_add(1);
    }

    /// What `name` (lower-case, no trailing dot, inside the zone) is.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        if name == self.domain {
            return Lookup::Apex;
        }
        if let Some(node) = self.names.get(name) {
            return Lookup::Node(Cow::Borrowed(node));
        }
        if self.empty.contains_key(name) {
            return Lookup::Empty;
        }
        if let Some(ip) = self.pod_address(name) {
            return Lookup::Node(Cow::Owned(Node {
                a: vec![ip],
                ..Node::default()
            }));
        }
        let pods = format!(".pod.{}", self.domain);
        if name.strip_suffix(pods.as_str()).is_some_and(is_label) {
            return Lookup::Empty; // `<ns>.pod.<zone>`
        }
        Lookup::NxDomain
    }

    /// The names `ip` points back to (PTR).
    pub fn reverse(&self, ip: Ipv4Addr) -> &[String] {
        self.ptrs.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// `<a>-<b>-<c>-<d>.<ns>.pod.<zone>` → `a.b.c.d`.
    fn pod_address(&self, name: &str) -> Option<Ipv4Addr> {
        let rest = name.strip_suffix(self.domain.as_str())?;
        let rest = rest.strip_suffix(".pod.")?;
        let (dashed, namespace) = rest.split_once('.')?;
        if !is_label(namespace) {
            return None;
        }
        dashed.replace('-', ".").parse().ok()
    }
}

/// A single DNS label of letters, digits and dashes.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An endpoint that answers for a headless Service.
struct Endpoint<'a> {
    ip: Ipv4Addr,
    host: String,
    slice: &'a EndpointSlice,
}

fn ready_endpoints<'a>(
    service: &str,
    slices: &[&'a EndpointSlice],
    publish_not_ready: bool,
) -> Vec<Endpoint<'a>> {
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
                out.push(Endpoint { ip, host, slice });
            }
        }
    }
    out
}

fn proto_label(protocol: Option<&str>) -> String {
    format!("_{}", protocol.unwrap_or("TCP").to_ascii_lowercase())
}

/// The records `svc` contributes over `slices` in zone `domain`.
pub fn contribution(svc: &Service, slices: &[&EndpointSlice], domain: &str) -> Contribution {
    let mut c = Contribution::default();
    let (Some(namespace), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
        return c;
    };
    let Some(spec) = &svc.spec else { return c };
    let base = format!("{name}.{namespace}.svc.{domain}").to_ascii_lowercase();
    let namespace_name = format!("{namespace}.svc.{domain}").to_ascii_lowercase();
    if spec.type_.as_deref() == Some("ExternalName") {
        if let Some(target) = spec
            .external_name
            .as_deref()
            .map(|t| t.trim_end_matches('.').to_ascii_lowercase())
            .filter(|t| !t.is_empty())
        {
            c.names.push((
                base,
                Node {
                    cname: Some(target),
                    ..Node::default()
                },
            ));
            c.empty.push(namespace_name);
        }
        return c;
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if !headless {
        let mut ips: Vec<Ipv4Addr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ips.is_empty() {
            return c; // not allocated yet
        }
        ips.sort();
        for ip in &ips {
            c.ptrs.push((*ip, base.clone()));
        }
        let mut protos = BTreeSet::new();
        for port in ports {
            let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let proto = proto_label(port.protocol.as_deref());
            c.names.push((
                format!("_{port_name}.{proto}.{base}").to_ascii_lowercase(),
                Node {
                    srv: vec![Srv {
                        priority: 0,
                        weight: 100,
                        port: number,
                        target: base.clone(),
                    }],
                    ..Node::default()
                },
            ));
            protos.insert(proto);
        }
        for proto in protos {
            c.empty.push(format!("{proto}.{base}"));
        }
        c.names.push((
            base,
            Node {
                a: ips,
                ..Node::default()
            },
        ));
        c.empty.push(namespace_name);
        return c;
    }
    let endpoints = ready_endpoints(name, slices, spec.publish_not_ready_addresses == Some(true));
    if endpoints.is_empty() {
        return c; // spec 2.4.1: no ready endpoint → NXDOMAIN
    }
    let mut hosts: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
    for ep in &endpoints {
        let host_name = format!("{}.{base}", ep.host);
        hosts.entry(host_name.clone()).or_default().push(ep.ip);
        c.ptrs.push((ep.ip, host_name));
    }
    let mut protos = BTreeSet::new();
    for port in ports {
        let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let mut srv: Vec<Srv> = endpoints
            .iter()
            .filter_map(|ep| {
                let number = ep.slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or_default() == port_name
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })?;
                Some(Srv {
                    priority: 0,
                    weight: 0,
                    port: u16::try_from(number.port?).ok()?,
                    target: format!("{}.{base}", ep.host),
                })
            })
            .collect();
        if srv.is_empty() {
            continue;
        }
        srv.sort();
        srv.dedup();
        // CoreDNS' weights: the SRV set shares 100.
        let weight = u16::try_from(100 / srv.len()).unwrap_or(1).max(1);
        for s in &mut srv {
            s.weight = weight;
        }
        let proto = proto_label(Some(protocol));
        c.names.push((
            format!("_{port_name}.{proto}.{base}").to_ascii_lowercase(),
            Node {
                srv,
                ..Node::default()
            },
        ));
        protos.insert(proto);
    }
    for proto in protos {
        c.empty.push(format!("{proto}.{base}"));
    }
    let mut all: Vec<Ipv4Addr> = endpoints.iter().map(|e| e.ip).collect();
    all.sort();
    let mut hosts: Vec<(String, Vec<Ipv4Addr>)> = hosts.into_iter().collect();
    hosts.sort();
    for (host_name, mut ips) in hosts {
        ips.sort();
        c.names.push((
            host_name,
            Node {
                a: ips,
                ..Node::default()
            },
        ));
    }
    c.names.push((
        base,
        Node {
            a: all,
            ..Node::default()
        },
    ));
    c.empty.push(namespace_name);
    c
}

#[cfg(test)]
pub(crate) mod tests;
