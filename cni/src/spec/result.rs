//! The result of ADD (and the `prevResult` of a chain), in every supported format.

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

use super::{CniError, Dns, Ipv4Cidr, Version, code};

/// An interface the plugin created or configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path, for interfaces inside the container.
    pub sandbox: Option<String>,
}

/// An address given to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// A route in the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Cidr,
    pub gw: Option<Ipv4Addr>,
}

/// A CNI result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// The result as `version` formats it.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({ "name": i.name, "mac": i.mac });
                if let Some(mtu) = i.mtu.filter(|_| version >= Version::V1_1_0) {
                    v["mtu"] = json!(mtu);
                }
                if let Some(sandbox) = &i.sandbox {
                    v["sandbox"] = json!(sandbox);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({ "address": ip.address.to_string() });
                if version.ips_have_version() {
                    v["version"] = json!("4");
                }
                if let Some(gw) = ip.gateway {
                    v["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    v["interface"] = json!(i);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut v = json!({ "dst": r.dst.to_string() });
                if let Some(gw) = r.gw {
                    v["gw"] = json!(gw.to_string());
                }
                v
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_else(|_| json!({})),
        );
        Value::Object(out)
    }

    /// Reads a result of any supported version (a `prevResult`, an IPAM plugin's
    /// output). IPv6 entries are skipped: berth-cni is IPv4-only.
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        let bad = |what: String| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("invalid CNI result: {what}"),
            )
        };
        let str_field = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let mut result = Self::default();
        for i in v
            .get("interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            result.interfaces.push(Interface {
                name: str_field(i, "name").ok_or_else(|| bad("interface without name".into()))?,
                mac: str_field(i, "mac").unwrap_or_default(),
                mtu: i
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok()),
                sandbox: str_field(i, "sandbox"),
            });
        }
        for ip in v.get("ips").and_then(Value::as_array).into_iter().flatten() {
            let address =
                str_field(ip, "address").ok_or_else(|| bad("ip without address".into()))?;
            if address.contains(':') {
                continue;
            }
            result.ips.push(IpConfig {
                address: address.parse().map_err(bad)?,
                gateway: str_field(ip, "gateway")
                    .map(|g| g.parse())
                    .transpose()
                    .map_err(|_| bad("bad gateway".into()))?,
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok()),
            });
        }
        for r in v
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let dst = str_field(r, "dst").ok_or_else(|| bad("route without dst".into()))?;
            if dst.contains(':') {
                continue;
            }
            result.routes.push(Route {
                dst: dst.parse().map_err(bad)?,
                gw: str_field(r, "gw")
                    .map(|g| g.parse())
                    .transpose()
                    .map_err(|_| bad("bad route gw".into()))?,
            });
        }
        if let Some(dns) = v.get("dns") {
            result.dns = serde_json::from_value(dns.clone()).map_err(|e| bad(e.to_string()))?;
        }
        Ok(result)
    }

    /// Appends `other` (this plugin's part) to a chain's previous result, shifting
    /// its interface indexes past the interfaces already there.
    pub fn merged_after(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "berth0".into(),
                    mac: "aa:bb:cc:dd:ee:01".into(),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.22.0.5/16".parse().expect("cidr"),
                gateway: Some(Ipv4Addr::new(10, 22, 0, 1)),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("cidr"),
                gw: Some(Ipv4Addr::new(10, 22, 0, 1)),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn format_per_version() {
        let v1 = sample().to_json(Version::V1_1_0);
        assert_eq!(v1["cniVersion"], "1.1.0");
        assert_eq!(
            v1["ips"][0],
            json!({"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 1})
        );
        assert_eq!(v1["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(v1["interfaces"][1]["mtu"], 1500);
        let v04 = sample().to_json(Version::V0_4_0);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][1].get("mtu").is_none());
        assert_eq!(
            v04["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.22.0.1"})
        );
    }

    #[test]
    fn results_round_trip_through_every_version() {
        for v in [
            Version::V0_3_0,
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let mut back = CniResult::from_json(&sample().to_json(v)).expect("parses");
            if v < Version::V1_1_0 {
                back.interfaces.iter_mut().for_each(|i| i.mtu = Some(1500));
            }
            assert_eq!(back, sample(), "round trip through {v}");
        }
    }

    #[test]
    fn chained_result_shifts_interface_indexes() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: String::new(),
                mtu: None,
                sandbox: None,
            }],
            ..CniResult::default()
        };
        let merged = prev.merged_after(sample());
        assert_eq!(merged.interfaces.len(), 3);
        assert_eq!(merged.ips[0].interface, Some(2));
    }
}
