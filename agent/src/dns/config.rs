//! Where names outside the cluster go: the node's upstream servers (its own
//! resolv.conf, or `--dns-upstream`), overridden by the ConfigMap
//! `kube-system/berth-dns`, whose shape is kube-dns' own:
//!
//! ```yaml
//! data:
//!   upstreamNameservers: '["192.0.2.53", "192.0.2.54:5353"]'   # replaces the node's
//!   stubDomains: '{"corp.example": ["10.150.0.1"]}'           # names under a domain
//! ```
//!
//! Both keys are optional JSON. A server is an IP with an optional port (53). A bad
//! ConfigMap is refused whole with the reason, and the configuration in force stays.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

/// The ConfigMap berth's DNS reads its overrides from.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP_NAME: &str = "berth-dns";
/// kube-dns' limit on `upstreamNameservers` (and resolv.conf's MAXNS).
const MAX_UPSTREAMS: usize = 3;

/// Upstream servers: the default ones and per stub domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    /// Lower-case domain (no trailing dot) → its servers, longest domain first.
    pub stubs: Vec<(String, Vec<SocketAddr>)>,
}

impl Upstreams {
    /// The servers to ask about `name` (lower-case, no trailing dot).
    pub fn servers_for(&self, name: &str) -> &[SocketAddr] {
        self.stubs
            .iter()
            .find(|(domain, _)| {
                name == domain
                    || name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|r| r.ends_with('.'))
            })
            .map_or(self.servers.as_slice(), |(_, s)| s.as_slice())
    }
}

/// `ip` or `ip:port` (`[v6]:port` for IPv6 with a port).
pub fn parse_server(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP address or IP:port"))
        .and_then(|a| {
            if a.port() == 0 {
                Err(format!("{s:?}: port 0"))
            } else {
                Ok(a)
            }
        })
}

/// The nameservers of a resolv.conf, in order (at most three, as the C library).
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next() == Some("nameserver"))
                .then(|| parts.next())
                .flatten()
        })
        .filter_map(|s| s.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_UPSTREAMS)
        .collect()
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The configuration `data` of the ConfigMap gives, over the node's `defaults`.
pub fn from_configmap(
    data: &BTreeMap<String, String>,
    defaults: &Upstreams,
) -> Result<Upstreams, String> {
    let mut out = defaults.clone();
    if let Some(text) = data.get("upstreamNameservers") {
        let list: Vec<String> = serde_json::from_str(text)
            .map_err(|e| format!("upstreamNameservers is not a JSON list of strings: {e}"))?;
        if list.is_empty() {
            return Err("upstreamNameservers is empty".into());
        }
        if list.len() > MAX_UPSTREAMS {
            return Err(format!(
                "upstreamNameservers has {} servers; at most {MAX_UPSTREAMS} are allowed",
                list.len()
            ));
        }
        out.servers = list
            .iter()
            .map(|s| parse_server(s).map_err(|e| format!("upstreamNameservers: {e}")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(text) = data.get("stubDomains") {
        let map: BTreeMap<String, Vec<String>> = serde_json::from_str(text).map_err(|e| {
            format!("stubDomains is not a JSON object of domain → list of servers: {e}")
        })?;
        let mut stubs = Vec::new();
        for (domain, servers) in map {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&domain) {
                return Err(format!("stubDomains: {domain:?} is not a valid domain"));
            }
            if servers.is_empty() {
                return Err(format!("stubDomains: {domain:?} has no servers"));
            }
            let servers = servers
                .iter()
                .map(|s| parse_server(s).map_err(|e| format!("stubDomains[{domain}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            stubs.push((domain, servers));
        }
        stubs.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
        out.stubs = stubs;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn resolv_conf_gives_its_nameservers() {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver nonsense\noptions ndots:2\n";
        let servers = resolv_conf_servers(text);
        assert_eq!(
            servers,
            vec![
                "192.0.2.1:53".parse().expect("addr"),
                "[fe80::1]:53".parse().expect("addr")
            ]
        );
    }

    #[test]
    fn configmap_overrides_and_stub_domains() {
        let defaults = Upstreams {
            servers: vec!["192.0.2.1:53".parse().expect("addr")],
            stubs: Vec::new(),
        };
        let u = from_configmap(
            &data(&[
                (
                    "upstreamNameservers",
                    r#"["198.51.100.1", "198.51.100.2:5353"]"#,
                ),
                (
                    "stubDomains",
                    r#"{"corp.example": ["10.150.0.1"], "a.corp.example.": ["10.150.0.2:54"]}"#,
                ),
            ]),
            &defaults,
        )
        .expect("valid");
        assert_eq!(u.servers.len(), 2);
        assert_eq!(u.servers[1], "198.51.100.2:5353".parse().expect("addr"));
        assert_eq!(
            u.servers_for("x.a.corp.example"),
            &["10.150.0.2:54".parse::<SocketAddr>().expect("addr")],
            "the longest stub domain wins"
        );
        assert_eq!(
            u.servers_for("corp.example"),
            &["10.150.0.1:53".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(u.servers_for("xcorp.example"), u.servers.as_slice());
        assert_eq!(from_configmap(&data(&[]), &defaults), Ok(defaults.clone()));
    }

    #[test]
    fn bad_configmaps_are_refused_with_the_reason() {
        let d = Upstreams::default();
        for (pairs, needle) in [
            (vec![("upstreamNameservers", "not json")], "JSON list"),
            (
                vec![("upstreamNameservers", r#"["300.1.1.1"]"#)],
                "\"300.1.1.1\"",
            ),
            (vec![("upstreamNameservers", "[]")], "empty"),
            (
                vec![(
                    "upstreamNameservers",
                    r#"["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]"#,
                )],
                "at most 3",
            ),
            (
                vec![("stubDomains", r#"{"bad domain": ["1.1.1.1"]}"#)],
                "not a valid domain",
            ),
            (vec![("stubDomains", r#"{"ok.example": []}"#)], "no servers"),
            (
                vec![("stubDomains", r#"{"ok.example": ["1.1.1.1:0"]}"#)],
                "port 0",
            ),
        ] {
            let pairs: Vec<(&str, &str)> = pairs;
            let err = from_configmap(&data(&pairs), &d).expect_err("must be refused");
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
