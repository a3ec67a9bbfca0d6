//! NetworkPolicies (networking.k8s.io/v1) → what the policy maps of this node must
//! hold ([`PolicyState`]), for the pods running here:
//!
//! - a pod is isolated for ingress (egress) when a policy of its namespace selects it
//!   (`podSelector`) and has that type in `policyTypes` (default: Ingress, plus Egress
//!   when the policy has egress rules); it then accepts only what some such policy's
//!   rules allow, the union of them all;
//! - a rule's peers: pods by `podSelector` in the policy's namespace, namespaces by
//!   `namespaceSelector` (all their pods, or those the `podSelector` beside it picks),
//!   `ipBlock` CIDRs minus their `except`s; no peers: everyone;
//! - a rule's ports: protocol (TCP by default, UDP, SCTP) with a number, a range
//!   (`endPort`) or a name (the selected pod's container port for ingress, the peer
//!   pod's for egress); no ports: every port and protocol;
//! - each peer prefix becomes one LPM entry whose port set is the union of every rule
//!   covering it, so an `except` inside another rule's block still gets that rule's
//!   ports, and an `except` nothing else covers gets none (denied).
//!
//! A policy the dataplane cannot express (more port ranges for one peer than a set
//! holds) is reported and left out; the pods it selects stay isolated, so it fails
//! closed. IPv6 blocks are ignored (IPv4 only, like the rest of the dataplane).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use berth_ebpf::{NP_EGRESS, NP_INGRESS, NP_MAX_RANGES, NpPortRange, PolicyRule, PolicyState};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// Whether `sel` selects `labels` (an empty selector selects everything).
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            let have = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => !have.is_some_and(|v| values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// A pod as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Named container ports: (name, protocol) → port.
    pub ports: BTreeMap<(String, u8), u16>,
}

fn protocol_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

impl PodView {
    /// The pod, if it has an IPv4 address on the pod network and is not finished.
    pub fn of(pod: &Pod) -> Option<Self> {
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
            || pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
        {
            return None;
        }
        let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
        let mut ports = BTreeMap::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for p in c.ports.iter().flatten() {
                if let (Some(name), Some(proto), Ok(port)) = (
                    p.name.clone(),
                    protocol_number(p.protocol.as_deref()),
                    u16::try_from(p.container_port),
                ) {
                    ports.insert((name, proto), port);
                }
            }
        }
        Some(PodView {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip,
            ports,
        })
    }
}

/// Everything the model reads.
#[derive(Debug, Default)]
pub struct World {
    pub policies: Vec<NetworkPolicy>,
    /// Namespace labels by name.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Every pod of the cluster with an address.
    pub pods: Vec<PodView>,
    /// The pods of this node (a subset of `pods`).
    pub local: Vec<PodView>,
}

impl World {
    pub fn namespace_labels(ns: &Namespace) -> (String, BTreeMap<String, String>) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        // The API server sets this label on every namespace; older ones may lack it.
        labels
            .entry("kubernetes.io/metadata.name".into())
            .or_insert_with(|| name.clone());
        (name, labels)
    }
}

/// A policy that could not be programmed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unexpressible {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// The model's answer.
#[derive(Debug, Default)]
pub struct Computed {
    pub state: PolicyState,
    /// `namespace/name` of each policy → the local pods (IPs) it isolates, by direction.
    pub selected: BTreeMap<String, Vec<(Ipv4Addr, u32)>>,
    pub unexpressible: Vec<Unexpressible>,
}

/// A rule's ports and peers (`from` or `to`).
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPort>>,
    Option<&'a Vec<NetworkPolicyPeer>>,
);

/// An allowance: a peer prefix minus excepts, with port ranges.
struct Grant {
    net: (u32, u8),
    except: Vec<(u32, u8)>,
    ranges: Vec<NpPortRange>,
}

fn contains(outer: (u32, u8), inner: (u32, u8)) -> bool {
    if inner.1 < outer.1 {
        return false;
    }
    let mask = if outer.1 == 0 {
        0
    } else {
        u32::MAX << (32 - outer.1)
    };
    inner.0 & mask == outer.0 & mask
}

fn parse_cidr(text: &str) -> Option<(u32, u8)> {
    let (a, p) = text.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Some((u32::from(a) & mask, p))
}

fn range(protocol: u8, lo: u16, hi: u16) -> NpPortRange {
    NpPortRange {
        protocol,
        lo,
        hi,
        ..NpPortRange::default()
    }
}

/// The port ranges of a rule's `ports` for a destination pod `dest` (named ports
/// resolve against it; without one they match nothing).
fn port_ranges(ports: Option<&Vec<NetworkPolicyPort>>, dest: Option<&PodView>) -> Vec<NpPortRange> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![range(0, 0, u16::MAX)];
    };
    let mut out = Vec::new();
    for p in ports {
        let Some(proto) = protocol_number(p.protocol.as_deref()) else {
            continue;
        };
        match &p.port {
            None => out.push(range(proto, 0, u16::MAX)),
            Some(IntOrString::Int(n)) => {
                let Ok(lo) = u16::try_from(*n) else { continue };
                let hi = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .unwrap_or(lo)
                    .max(lo);
                out.push(range(proto, lo, hi));
            }
            Some(IntOrString::String(name)) => {
                if let Some(port) = dest.and_then(|d| d.ports.get(&(name.clone(), proto))) {
                    out.push(range(proto, *port, *port));
                }
            }
        }
    }
    out
}

/// Sorted, merged ranges (overlapping or adjacent ranges of one protocol joined; a
/// range of any protocol covering all ports absorbs everything).
fn normalize(mut ranges: Vec<NpPortRange>) -> Vec<NpPortRange> {
    if ranges
        .iter()
        .any(|r| r.protocol == 0 && r.lo == 0 && r.hi == u16::MAX)
    {
        return vec![range(0, 0, u16::MAX)];
    }
    ranges.sort_by_key(|r| (r.protocol, r.lo, r.hi));
    let mut out: Vec<NpPortRange> = Vec::new();
    for r in ranges {
        if let Some(last) = out.last_mut()
            && last.protocol == r.protocol
            && u32::from(r.lo) <= u32::from(last.hi) + 1
        {
            last.hi = last.hi.max(r.hi);
            continue;
        }
        out.push(r);
    }
    out
}

impl World {
    fn namespaces_selected(&self, sel: &LabelSelector) -> BTreeSet<&str> {
        self.namespaces
            .iter()
            .filter(|(_, labels)| selects(sel, labels))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The pods a pod/namespace peer names, from a policy of namespace `ns`.
    fn peer_pods(&self, ns: &str, peer: &NetworkPolicyPeer) -> Vec<&PodView> {
        let namespaces: Option<BTreeSet<&str>> = peer
            .namespace_selector
            .as_ref()
            .map(|s| self.namespaces_selected(s));
        self.pods
            .iter()
            .filter(|p| match &namespaces {
                Some(set) => set.contains(p.namespace.as_str()),
                None => p.namespace == ns,
            })
            .filter(|p| {
                peer.pod_selector
                    .as_ref()
                    .is_none_or(|s| selects(s, &p.labels))
            })
            .collect()
    }
}

/// The policy types of `policy` (upstream's defaulting when none are given).
fn policy_types(policy: &NetworkPolicy) -> u32 {
    let Some(spec) = policy.spec.as_ref() else {
        return 0;
    };
    match &spec.policy_types {
        Some(types) if !types.is_empty() => types.iter().fold(0, |acc, t| match t.as_str() {
            "Ingress" => acc | NP_INGRESS,
            "Egress" => acc | NP_EGRESS,
            _ => acc,
        }),
        _ => {
            let egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            NP_INGRESS | if egress { NP_EGRESS } else { 0 }
        }
    }
}

/// Computes the policy maps of the node whose pods are `world.local`.
pub fn compute(world: &World) -> Computed {
    let mut out = Computed::default();
    for pod in &world.local {
        let mut flags = 0;
        let mut grants: [Vec<Grant>; 2] = [Vec::new(), Vec::new()];
        for policy in &world.policies {
            let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
            let Some(spec) = policy.spec.as_ref() else {
                continue;
            };
            // A missing podSelector is the empty one: every pod of the namespace.
            let selected = spec
                .pod_selector
                .as_ref()
                .is_none_or(|s| selects(s, &pod.labels));
            if ns != pod.namespace || !selected {
                continue;
            }
            let types = policy_types(policy);
            let key = format!(
                "{ns}/{}",
                policy.metadata.name.as_deref().unwrap_or_default()
            );
            for direction in [NP_INGRESS, NP_EGRESS] {
                if types & direction == 0 {
                    continue;
                }
                flags |= direction;
                out.selected
                    .entry(key.clone())
                    .or_default()
                    .push((pod.ip, direction));
                let slot = &mut grants[usize::from(direction == NP_EGRESS)];
                let rules: Vec<Rule<'_>> = if direction == NP_INGRESS {
                    spec.ingress
                        .iter()
                        .flatten()
                        .map(|r| (r.ports.as_ref(), r.from.as_ref()))
                        .collect()
                } else {
                    spec.egress
                        .iter()
                        .flatten()
                        .map(|r| (r.ports.as_ref(), r.to.as_ref()))
                        .collect()
                };
                for (ports, peers) in rules {
                    // Ingress names ports of the selected pod; egress of the peer.
                    let local_ranges = port_ranges(ports, Some(pod));
                    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
                        let ranges = if direction == NP_INGRESS {
                            local_ranges.clone()
                        } else {
                            port_ranges(ports, None)
                        };
                        slot.push(Grant {
                            net: (0, 0),
                            except: Vec::new(),
                            ranges,
                        });
                        let named = ports
                            .into_iter()
                            .flatten()
                            .any(|p| matches!(p.port, Some(IntOrString::String(_))));
                        if direction == NP_EGRESS && named {
                            // Named ports toward any destination: per known pod.
                            for peer in &world.pods {
                                slot.push(Grant {
                                    net: (u32::from(peer.ip), 32),
                                    except: Vec::new(),
                                    ranges: port_ranges(ports, Some(peer)),
                                });
                            }
                        }
                        continue;
                    };
                    for peer in peers {
                        if let Some(block) = &peer.ip_block {
                            let Some(net) = parse_cidr(&block.cidr) else {
                                continue; // IPv6 (or invalid, refused by the apiserver)
                            };
                            let except = block
                                .except
                                .iter()
                                .flatten()
                                .filter_map(|e| parse_cidr(e))
                                .collect();
                            let ranges = if direction == NP_INGRESS {
                                local_ranges.clone()
                            } else {
                                port_ranges(ports, None)
                            };
                            slot.push(Grant {
                                net,
                                except,
                                ranges,
                            });
                            continue;
                        }
                        for other in world.peer_pods(ns, peer) {
                            let ranges = if direction == NP_INGRESS {
                                local_ranges.clone()
                            } else {
                                port_ranges(ports, Some(other))
                            };
                            slot.push(Grant {
                                net: (u32::from(other.ip), 32),
                                except: Vec::new(),
                                ranges,
                            });
                        }
                    }
                }
            }
        }
        if flags == 0 {
            continue;
        }
        out.state.pods.insert(pod.ip, flags);
        for (i, direction) in [NP_INGRESS, NP_EGRESS].into_iter().enumerate() {
            let grants = &grants[i];
            let mut prefixes: BTreeSet<(u32, u8)> = BTreeSet::new();
            for g in grants {
                prefixes.insert(g.net);
                prefixes.extend(g.except.iter().copied());
            }
            for net in prefixes {
                let ranges: Vec<NpPortRange> = grants
                    .iter()
                    .filter(|g| contains(g.net, net) && !g.except.iter().any(|e| contains(*e, net)))
                    .flat_map(|g| g.ranges.iter().copied())
                    .collect();
                let mut ranges = normalize(ranges);
                if ranges.len() > NP_MAX_RANGES {
                    // Fails closed: the peer gets nothing; the policies are reported.
                    for (key, sel) in &out.selected {
                        if sel.contains(&(pod.ip, direction)) {
                            let (namespace, name) = key.split_once('/').unwrap_or_default();
                            out.unexpressible.push(Unexpressible {
                                namespace: namespace.to_owned(),
                                name: name.to_owned(),
                                reason: format!(
                                    "{} port ranges for peer {}/{} of pod {}; at most {NP_MAX_RANGES} can be enforced, so the peer is denied",
                                    ranges.len(),
                                    Ipv4Addr::from(net.0),
                                    net.1,
                                    pod.name
                                ),
                            });
                        }
                    }
                    ranges.clear();
                }
                out.state.rules.insert(
                    PolicyRule {
                        pod: pod.ip,
                        direction,
                        peer: Ipv4Addr::from(net.0),
                        prefix: net.1,
                    },
                    ranges,
                );
            }
        }
    }
    out.unexpressible
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.unexpressible
        .dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, name: &str, ip: &str, labels: serde_json::Value) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            labels: serde_json::from_value(labels).expect("labels"),
            ip: ip.parse().expect("ip"),
            ports: [(("http".to_owned(), TCP), 8080u16)].into_iter().collect(),
        }
    }

    fn policy(ns: &str, spec: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": ns}, "spec": spec}))
            .expect("policy")
    }

    fn world(policies: Vec<NetworkPolicy>) -> World {
        let pods = vec![
            pod("a", "a1", "10.0.0.1", json!({"app": "web"})),
            pod("a", "a2", "10.0.0.2", json!({"app": "db"})),
            pod("b", "b1", "10.0.1.1", json!({"app": "web"})),
        ];
        World {
            policies,
            namespaces: [
                ("a".to_owned(), json!({"team": "x"})),
                ("b".to_owned(), json!({"team": "y"})),
            ]
            .into_iter()
            .map(|(n, l)| {
                let mut labels: BTreeMap<String, String> =
                    serde_json::from_value(l).expect("labels");
                labels.insert("kubernetes.io/metadata.name".into(), n.clone());
                (n, labels)
            })
            .collect(),
            local: pods.clone(),
            pods,
        }
    }

    /// Whether the computed state lets `peer` reach `pod` (ingress) at port/proto, as
    /// the kernel program decides (longest prefix, then the port set).
    fn admits(c: &Computed, pod: &str, direction: u32, peer: &str, proto: u8, port: u16) -> bool {
        let (pod, peer): (Ipv4Addr, Ipv4Addr) =
            (pod.parse().expect("ip"), peer.parse().expect("ip"));
        let Some(flags) = c.state.pods.get(&pod) else {
            return true;
        };
        if flags & direction == 0 {
            return true;
        }
        let best = c
            .state
            .rules
            .iter()
            .filter(|(r, _)| r.pod == pod && r.direction == direction)
            .filter(|(r, _)| contains((u32::from(r.peer), r.prefix), (u32::from(peer), 32)))
            .max_by_key(|(r, _)| r.prefix);
        best.is_some_and(|(_, ranges)| {
            ranges
                .iter()
                .any(|r| (r.protocol == 0 || r.protocol == proto) && r.lo <= port && port <= r.hi)
        })
    }

    #[test]
    fn default_deny_isolates_and_allows_nothing() {
        let c = compute(&world(vec![policy("a", json!({"podSelector": {}}))]));
        assert_eq!(c.state.pods.len(), 2, "both pods of namespace a");
        assert!(!admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.1", TCP, 80));
        assert!(
            admits(&c, "10.0.0.1", NP_EGRESS, "10.0.1.1", TCP, 80),
            "egress not isolated"
        );
        assert!(
            admits(&c, "10.0.1.1", NP_INGRESS, "10.0.0.1", TCP, 80),
            "b is not selected"
        );
    }

    #[test]
    fn pod_and_namespace_selectors_alone_and_together() {
        let from_db = policy(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
        );
        let c = compute(&world(vec![from_db]));
        assert!(admits(&c, "10.0.0.1", NP_INGRESS, "10.0.0.2", TCP, 80));
        assert!(
            !admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.1", TCP, 80),
            "other namespace"
        );
        let from_ns = policy(
            "a",
            json!({"podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
        );
        let c = compute(&world(vec![from_ns]));
        assert!(admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.1", UDP, 53));
        assert!(
            !admits(&c, "10.0.0.1", NP_INGRESS, "10.0.0.2", TCP, 80),
            "own namespace not listed"
        );
        let both = policy(
            "a",
            json!({"podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}]}]}),
        );
        let c = compute(&world(vec![both]));
        assert!(admits(&c, "10.0.0.1", NP_INGRESS, "10.0.0.2", TCP, 1));
        assert!(
            !admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.1", TCP, 1),
            "web pods not picked"
        );
    }

    #[test]
    fn ip_blocks_with_excepts_and_ports_union_by_longest_prefix() {
        let p = policy(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]}}],
                 "ports": [{"port": 80}]},
                {"from": [{"ipBlock": {"cidr": "10.0.1.0/25"}}],
                 "ports": [{"port": 1000, "endPort": 1010, "protocol": "UDP"}, {"port": "http"}]}
            ]}),
        );
        let c = compute(&world(vec![p]));
        assert!(admits(&c, "10.0.0.1", NP_INGRESS, "10.0.5.5", TCP, 80));
        assert!(!admits(&c, "10.0.0.1", NP_INGRESS, "10.0.5.5", TCP, 81));
        // In the except, only the second rule's block: its ports, not port 80.
        assert!(!admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.9", TCP, 80));
        assert!(admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.9", UDP, 1005));
        assert!(!admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.9", TCP, 1005));
        assert!(
            admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.9", TCP, 8080),
            "named port http"
        );
        assert!(
            !admits(&c, "10.0.0.1", NP_INGRESS, "10.0.1.200", UDP, 1005),
            "except, uncovered"
        );
    }

    #[test]
    fn egress_with_policy_types_and_named_ports_of_the_peer() {
        let p = policy(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                        "ports": [{"port": "http"}]},
                       {"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        );
        let c = compute(&world(vec![p]));
        assert_eq!(
            c.state.pods.get(&"10.0.0.1".parse().expect("ip")),
            Some(&NP_EGRESS)
        );
        assert!(admits(&c, "10.0.0.1", NP_EGRESS, "10.0.0.2", TCP, 8080));
        assert!(!admits(&c, "10.0.0.1", NP_EGRESS, "10.0.0.2", TCP, 80));
        assert!(
            admits(&c, "10.0.0.1", NP_EGRESS, "8.8.8.8", UDP, 53),
            "DNS anywhere"
        );
        assert!(!admits(&c, "10.0.0.1", NP_EGRESS, "8.8.8.8", TCP, 53));
        assert!(
            admits(&c, "10.0.0.1", NP_INGRESS, "8.8.8.8", TCP, 1),
            "ingress not isolated"
        );
    }

    #[test]
    fn too_many_port_ranges_fail_closed_and_are_reported() {
        let ports: Vec<serde_json::Value> =
            (0..20).map(|i| json!({"port": 1000 + 2 * i})).collect();
        let p = policy(
            "a",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": ports}]}),
        );
        let c = compute(&world(vec![p]));
        assert!(!admits(&c, "10.0.0.1", NP_INGRESS, "10.9.9.9", TCP, 1000));
        assert_eq!(c.unexpressible.len(), 1, "{:?}", c.unexpressible);
    }
}
