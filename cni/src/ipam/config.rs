//! The `ipam` section for the built-in allocator (`"type": "berth-ipam"`), in
//! host-local's shapes: either `subnet`/`rangeStart`/`rangeEnd`/`gateway` at the top,
//! or `ranges: [[{…}, …]]` (one range set; IPv4 only).

use std::{net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::spec::{CniError, Ipv4Cidr, Route, RouteConf, code};

/// `ipam.type` of the built-in allocator.
pub const BUILTIN_TYPE: &str = "berth-ipam";
/// Where allocations live unless `ipam.dataDir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth/cni/networks";

/// One address range: `start..=end` inside `subnet`, with `gateway` never handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeSpec {
    pub subnet: Ipv4Cidr,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

impl RangeSpec {
    /// Whether `ip` may be handed out from this range.
    pub fn allocatable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= u32::from(self.start) && n <= u32::from(self.end) && ip != self.gateway
    }

    /// Number of addresses that can be handed out.
    pub fn size(&self) -> u64 {
        let span = u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1;
        span - u64::from(self.gateway >= self.start && self.gateway <= self.end)
    }
}

/// The parsed `ipam` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConf {
    pub ranges: Vec<RangeSpec>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
}

#[derive(Deserialize)]
struct RawRange {
    subnet: String,
    #[serde(rename = "rangeStart")]
    range_start: Option<Ipv4Addr>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(flatten)]
    single: Option<RawRange>,
    #[serde(default)]
    routes: Vec<RouteConf>,
    #[serde(rename = "dataDir")]
    data_dir: Option<PathBuf>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

impl IpamConf {
    /// Parses the built-in allocator's `ipam` section.
    pub fn parse(raw: &Value) -> Result<Self, CniError> {
        let ipam: RawIpam = serde_json::from_value(raw.clone())
            .map_err(|e| invalid(format!("invalid ipam section: {e}")))?;
        let mut raw_ranges = match ipam.ranges.len() {
            0 => Vec::new(),
            1 => ipam.ranges.into_iter().flatten().collect(),
            n => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("ipam.ranges has {n} range sets; berth-ipam supports one (IPv4 only)"),
                ));
            }
        };
        if raw_ranges.is_empty() {
            raw_ranges.extend(ipam.single);
        }
        if raw_ranges.is_empty() {
            return Err(invalid("ipam needs a subnet or ranges".into()));
        }
        let ranges = raw_ranges
            .into_iter()
            .map(range)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if u32::from(a.start) <= u32::from(b.end) && u32::from(b.start) <= u32::from(a.end)
                {
                    return Err(invalid(format!(
                        "ipam ranges {}-{} and {}-{} overlap",
                        a.start, a.end, b.start, b.end
                    )));
                }
            }
        }
        let routes = ipam
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    dst: r
                        .dst
                        .parse()
                        .map_err(|e| invalid(format!("ipam.routes: {e}")))?,
                    gw: r
                        .gw
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .map_err(|_| invalid("ipam.routes: bad gw".into()))?,
                })
            })
            .collect::<Result<Vec<_>, CniError>>()?;
        Ok(Self {
            ranges,
            routes,
            data_dir: ipam
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }
}

fn range(raw: RawRange) -> Result<RangeSpec, CniError> {
    if raw.subnet.contains(':') {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("subnet {}: berth-ipam is IPv4-only", raw.subnet),
        ));
    }
    let subnet: Ipv4Cidr = raw
        .subnet
        .parse()
        .map_err(|e: String| invalid(format!("ipam subnet: {e}")))?;
    if subnet.prefix > 30 {
        return Err(invalid(format!(
            "subnet {subnet} is too small (prefix over /30)"
        )));
    }
    let net = u32::from(subnet.network());
    let first = Ipv4Addr::from(net + 1);
    let last = Ipv4Addr::from(u32::from(subnet.broadcast()) - 1);
    let start = raw.range_start.unwrap_or(first);
    let end = raw.range_end.unwrap_or(last);
    let gateway = raw.gateway.unwrap_or(first);
    for (what, ip) in [
        ("rangeStart", start),
        ("rangeEnd", end),
        ("gateway", gateway),
    ] {
        if !subnet.contains(ip) {
            return Err(invalid(format!("{what} {ip} is outside subnet {subnet}")));
        }
    }
    if u32::from(start) < u32::from(first)
        || u32::from(end) > u32::from(last)
        || u32::from(start) > u32::from(end)
    {
        return Err(invalid(format!(
            "range {start}-{end} is not a usable range of {subnet}"
        )));
    }
    Ok(RangeSpec {
        subnet: Ipv4Cidr {
            addr: subnet.network(),
            prefix: subnet.prefix,
        },
        start,
        end,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn single_subnet_gets_host_local_defaults() {
        let c = IpamConf::parse(&json!({"type": "berth-ipam", "subnet": "10.22.0.0/24"}))
            .expect("valid");
        let r = c.ranges[0];
        assert_eq!(
            (r.start, r.end, r.gateway),
            (
                Ipv4Addr::new(10, 22, 0, 1),
                Ipv4Addr::new(10, 22, 0, 254),
                Ipv4Addr::new(10, 22, 0, 1)
            )
        );
        assert!(!r.allocatable(r.gateway));
        assert_eq!(r.size(), 253);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn ranges_form_with_start_end_and_routes() {
        let c = IpamConf::parse(&json!({
            "type": "berth-ipam",
            "ranges": [[{"subnet": "10.9.0.0/16", "rangeStart": "10.9.1.10", "rangeEnd": "10.9.1.20", "gateway": "10.9.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "/tmp/x"
        }))
        .expect("valid");
        assert_eq!(c.ranges[0].size(), 11);
        assert_eq!(c.routes[0].dst.to_string(), "0.0.0.0/0");
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in [
            json!({"subnet": "10.0.0.0/33"}),
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}),
            json!({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.10"}),
            json!({"subnet": "10.0.0.0/31"}),
            json!({}),
        ] {
            assert_eq!(
                IpamConf::parse(&bad).expect_err("invalid").code,
                code::INVALID_CONFIG,
                "{bad}"
            );
        }
        let v6 = IpamConf::parse(&json!({"subnet": "fd00::/64"})).expect_err("v6");
        assert_eq!(v6.code, code::UNSUPPORTED_FIELD);
    }
}
