//! Cluster DNS, answered by every node's agent: no CoreDNS pods, no cross-node hop.
//!
//! [`zone`] holds the records of the Kubernetes DNS specification, fed by the
//! node's Service/EndpointSlice watch ([`crate::services`]) through
//! [`ZoneConsumer`]; [`answer`] turns a query into a response (or a question for
//! upstream); [`forward`] asks upstream servers and caches; [`config`] reads the
//! upstream overrides of the `kube-system/berth-dns` ConfigMap, which [`watch_config`]
//! follows; [`server`] runs the UDP and TCP listeners; [`metrics`] counts. Pods reach
//! the agent through the `kube-dns` Service's cluster IP, which the socket LB sends
//! to the node-local listener ([`crate::service_lb::watch`]).
//!
//! Entry point: [`Dns::new`], then [`server::serve`].

pub mod answer;
pub mod config;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod zone;

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
};

use futures_util::StreamExt;
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::Record;
use k8s_openapi::api::{
    core::v1::{ConfigMap, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

pub use config::Upstreams;
pub use metrics::DnsMetrics;
pub use zone::Zone;

use answer::Decision;
use forward::Forwarder;

/// An IPv4 or IPv6 network: address and prefix length.
pub type Cidr = (IpAddr, u8);

/// Parses `a.b.c.d/n` (or an address alone, as a host route).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        None => max,
    };
    Ok((ip, len))
}

fn in_cidr(ip: IpAddr, (net, len): Cidr) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What [`Dns::handle`] made of a message.
#[derive(Debug)]
pub enum Handled {
    Reply(Vec<u8>),
    /// Needs an upstream answer: finish with [`Dns::forward`].
    Forward(Box<Pending>),
    Drop,
}

/// A request waiting for upstream.
#[derive(Debug)]
pub struct Pending {
    request: Box<Message>,
    query: Query,
    prefix: Vec<Record>,
    edns: Option<Edns>,
    udp: bool,
}

/// The metrics label of a query type: a fixed set, so no client can grow the
/// metrics with made-up types.
fn type_label(t: hickory_proto::rr::RecordType) -> &'static str {
    use hickory_proto::rr::RecordType as T;
    match t {
        T::A => "A",
        T::AAAA => "AAAA",
        T::SRV => "SRV",
        T::PTR => "PTR",
        T::CNAME => "CNAME",
        T::TXT => "TXT",
        T::SOA => "SOA",
        T::NS => "NS",
        T::MX => "MX",
        T::HTTPS => "HTTPS",
        T::SVCB => "SVCB",
        T::ANY => "ANY",
        _ => "other",
    }
}

fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => u16::from(other).to_string(),
    }
}

/// The node's DNS server state.
#[derive(Debug)]
pub struct Dns {
    zone: RwLock<Zone>,
    forwarder: Forwarder,
    metrics: Arc<DnsMetrics>,
    /// Clients that may have names outside the cluster resolved.
    recursion: Vec<Cidr>,
    /// The node's own upstreams (what the ConfigMap overrides).
    defaults: Upstreams,
}

impl Dns {
    /// A server for `domain` forwarding to `defaults`, resolving outside names only
    /// for clients in `recursion` (loopback always).
    pub fn new(domain: &str, defaults: Upstreams, mut recursion: Vec<Cidr>) -> Self {
        let metrics = Arc::new(DnsMetrics::new());
        recursion.push((IpAddr::from([127, 0, 0, 0]), 8));
        recursion.push((IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128));
        Self {
            zone: RwLock::new(Zone::new(domain)),
            forwarder: Forwarder::new(defaults.clone(), metrics.clone()),
            metrics,
            recursion,
            defaults,
        }
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// The upstream configuration in force.
    pub fn upstreams(&self) -> Upstreams {
        self.forwarder.upstreams()
    }

    /// Replaces what Service `namespace/name` contributes to the zone.
    pub fn set_service(
        &self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    ) {
        if let Ok(mut zone) = self.zone.write() {
            zone.set_service(namespace, name, service, slices);
            self.metrics.zone(zone.services(), zone.ptr_addresses());
        }
    }

    fn may_recurse(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.recursion.iter().any(|c| in_cidr(ip, *c))
    }

    /// Answers the message `bytes` from `peer` (over UDP when `udp`), or says it
    /// needs upstream.
    pub fn handle(&self, bytes: &[u8], peer: IpAddr, udp: bool) -> Handled {
        let proto = if udp { "udp" } else { "tcp" };
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(error) => {
                tracing::debug!(%peer, %error, "undecodable DNS message");
                self.metrics.request(proto, "invalid");
                return match answer::format_error(bytes) {
                    Some(reply) => {
                        self.metrics.response("FORMERR");
                        Handled::Reply(reply)
                    }
                    None => Handled::Drop,
                };
            }
        };
        let qtype = request
            .queries
            .first()
            .map_or("none", |q| type_label(q.query_type()));
        self.metrics.request(proto, qtype);
        let edns = request.edns.clone();
        let recursion = self.may_recurse(peer);
        let decision = match self.zone.read() {
            Ok(zone) => answer::decide(&zone, request, recursion),
            Err(_) => return Handled::Drop,
        };
        match decision {
            Decision::Reply(msg) => {
                self.metrics
                    .response(&rcode_name(msg.metadata.response_code));
                answer::finish(edns.as_ref(), &msg, udp).map_or(Handled::Drop, Handled::Reply)
            }
            Decision::Forward {
                request,
                query,
                prefix,
            } => Handled::Forward(Box::new(Pending {
                request,
                query,
                prefix,
                edns,
                udp,
            })),
            Decision::Drop => Handled::Drop,
        }
    }

    /// The answer to a request that needed upstream.
    pub async fn forward(&self, p: Pending) -> Option<Vec<u8>> {
        let upstream = self.forwarder.resolve(&p.query).await;
        let msg = answer::from_upstream(&p.request, p.prefix, upstream);
        self.metrics
            .response(&rcode_name(msg.metadata.response_code));
        answer::finish(p.edns.as_ref(), &msg, p.udp)
    }

    /// Applies the `berth-dns` ConfigMap's data (`None`: it is gone → the node's
    /// defaults). A bad one is logged and counted; the configuration in force stays.
    pub fn apply_config(&self, data: Option<&std::collections::BTreeMap<String, String>>) {
        let wanted = match data {
            None => Ok(self.defaults.clone()),
            Some(d) => config::from_configmap(d, &self.defaults),
        };
        match wanted {
            Ok(u) if u == self.forwarder.upstreams() => {}
            Ok(u) => {
                tracing::info!(servers = ?u.servers, stubs = ?u.stubs, "DNS upstreams changed");
                self.forwarder.set_upstreams(u);
            }
            Err(error) => {
                self.metrics.config_error();
                tracing::warn!(
                    %error,
                    "ConfigMap {}/{} refused; the DNS configuration in force stays",
                    config::CONFIGMAP_NAMESPACE,
                    config::CONFIGMAP_NAME
                );
            }
        }
    }
}

/// The zone's side of the node's Service watch.
#[derive(Debug)]
pub struct ZoneConsumer(pub Arc<Dns>);

impl crate::services::ServiceConsumer for ZoneConsumer {
    fn changed(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    ) {
        self.0.set_service(namespace, name, service, slices);
    }
}

/// Follows the `kube-system/berth-dns` ConfigMap; runs until the watch ends.
pub async fn watch_config(dns: Arc<Dns>, client: Client) {
    let api = Api::<ConfigMap>::namespaced(client, config::CONFIGMAP_NAMESPACE);
    let cfg =
        watcher::Config::default().fields(&format!("metadata.name={}", config::CONFIGMAP_NAME));
    let mut events = std::pin::pin!(watcher(api, cfg).default_backoff());
    let mut seen_in_list = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => seen_in_list = false,
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                seen_in_list = true;
                dns.apply_config(Some(&cm.data.unwrap_or_default()));
            }
            Ok(watcher::Event::Delete(_)) => dns.apply_config(None),
            Ok(watcher::Event::InitDone) if !seen_in_list => dns.apply_config(None),
            Ok(watcher::Event::InitDone) => {}
            Err(error) => tracing::warn!(%error, "berth-dns ConfigMap watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.77.0.0/24"),
            Ok((IpAddr::from([10, 77, 0, 0]), 24))
        );
        assert_eq!(
            parse_cidr("10.0.0.1"),
            Ok((IpAddr::from([10, 0, 0, 1]), 32))
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense").is_err());
        let net = (IpAddr::from([10, 77, 0, 0]), 24);
        assert!(in_cidr(IpAddr::from([10, 77, 0, 9]), net));
        assert!(!in_cidr(IpAddr::from([10, 77, 1, 9]), net));
        assert!(in_cidr(
            IpAddr::from([192, 0, 2, 1]),
            (IpAddr::from([0, 0, 0, 0]), 0)
        ));
    }

    #[test]
    fn recursion_only_for_the_node_and_its_pods() {
        let dns = Dns::new(
            "cluster.local",
            Upstreams::default(),
            vec![parse_cidr("10.77.0.0/24").expect("cidr")],
        );
        assert!(dns.may_recurse(IpAddr::from([10, 77, 0, 5])));
        assert!(dns.may_recurse(IpAddr::from([127, 0, 0, 1])));
        assert!(!dns.may_recurse(IpAddr::from([203, 0, 113, 7])));
    }
}
