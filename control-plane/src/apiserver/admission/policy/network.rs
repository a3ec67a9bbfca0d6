//! Kubernetes' CEL URL, IP and CIDR libraries (`k8s.io/apiserver/pkg/cel/library`
//! `urls.go`, `ip.go`, `cidr.go`) as overloads of the shared environment:
//!
//! - `url(string)`, `isURL(string)` and a URL's `getScheme()`, `getHost()`,
//!   `getHostname()`, `getPort()`, `getEscapedPath()`, `getQuery()`, parsed as Go's
//!   `url.ParseRequestURI` does (an absolute URL or an absolute path);
//! - `ip(string)`, `isIP(string)`, `ip.isCanonical(string)` and an IP's `family()`,
//!   `isUnspecified()`, `isLoopback()`, `isLinkLocalMulticast()`,
//!   `isLinkLocalUnicast()`, `isGlobalUnicast()`, `string(ip)`; as `netip.ParseAddr`
//!   with upstream's refusals (no zone, no IPv4-mapped IPv6 address);
//! - `cidr(string)`, `isCIDR(string)` and a CIDR's `containsIP(ip|string)`,
//!   `containsCIDR(cidr|string)`, `ip()`, `masked()`, `prefixLength()`,
//!   `string(cidr)`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cel::common::types::{STRING_TYPE, Type};
use cel::common::value::CowVal;
use cel::objects::{Key, Map, Opaque};
use cel::{DeclarationError, Env, ExecutionError, Value};

use super::library::{err, out, overload, text, values};

// --- URLs ----------------------------------------------------------------------------

/// A URL as `url.ParseRequestURI` splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

const URL: &str = "kubernetes.URL";

impl Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        URL
    }
}

fn url_type() -> Type {
    Type::new_opaque_type(URL)
}

/// `url.ParseRequestURI`: an absolute path, or a scheme whose rest is a path or
/// `//authority/path`; a query after `?`.
fn parse_request_uri(s: &str) -> Result<Url, String> {
    if s.is_empty() {
        return Err("empty url".into());
    }
    if s.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("parse {s:?}: invalid character in URL"));
    }
    let (rest, query) = s.split_once('?').unwrap_or((s, ""));
    let (scheme, rest) = if rest.starts_with('/') {
        ("", rest)
    } else {
        let Some((scheme, rest)) = rest.split_once(':') else {
            return Err(format!("parse {s:?}: invalid URI for request"));
        };
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return Err(format!(
                "parse {s:?}: first path segment in URL cannot contain colon"
            ));
        }
        if !rest.starts_with('/') {
            return Err(format!("parse {s:?}: invalid URI for request"));
        }
        (scheme, rest)
    };
    let (host, path) = match rest.strip_prefix("//").filter(|_| !scheme.is_empty()) {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            let authority = &after[..end];
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host
                .chars()
                .any(|c| !(c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:[]%".contains(c)))
            {
                return Err(format!("parse {s:?}: invalid character in host name"));
            }
            (host.to_owned(), after[end..].to_owned())
        }
        None => (String::new(), rest.to_owned()),
    };
    Ok(Url {
        scheme: scheme.to_ascii_lowercase(),
        host,
        path,
        query: query.to_owned(),
    })
}

impl Url {
    /// `URL.Hostname()`: the host without its port, an IPv6 address without brackets.
    fn hostname(&self) -> &str {
        if let Some(inner) = self.host.strip_prefix('[') {
            return inner.split(']').next().unwrap_or_default();
        }
        self.host.split(':').next().unwrap_or_default()
    }

    /// `URL.Port()`: the digits after the host's last colon, if any.
    fn port(&self) -> &str {
        let after_host = match self.host.strip_prefix('[') {
            Some(inner) => inner.split_once(']').map_or("", |(_, rest)| rest),
            None => self.host.find(':').map_or("", |i| &self.host[i..]),
        };
        after_host
            .strip_prefix(':')
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
            .unwrap_or_default()
    }
}

fn url_of<'a>(v: Option<&'a Value>, function: &str) -> Result<&'a Url, ExecutionError> {
    match v {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Url>()
            .ok_or_else(|| err(function, "expected a URL")),
        _ => Err(err(function, "expected a URL")),
    }
}

fn url(a: &[Value]) -> Result<Value, ExecutionError> {
    parse_request_uri(text(a.first(), "url")?)
        .map(|u| Value::Opaque(Arc::new(u)))
        .map_err(|e| {
            err(
                "url",
                format!("URL parse error during conversion from string: {e}"),
            )
        })
}

fn is_url(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(
        parse_request_uri(text(a.first(), "isURL")?).is_ok(),
    ))
}

fn get_scheme(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        url_of(a.first(), "getScheme")?.scheme.clone(),
    )))
}

fn get_host(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        url_of(a.first(), "getHost")?.host.clone(),
    )))
}

fn get_hostname(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        url_of(a.first(), "getHostname")?.hostname().to_owned(),
    )))
}

fn get_port(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        url_of(a.first(), "getPort")?.port().to_owned(),
    )))
}

fn get_escaped_path(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        url_of(a.first(), "getEscapedPath")?.path.clone(),
    )))
}

/// `URL.Query()`: each key's values, in order.
fn get_query(a: &[Value]) -> Result<Value, ExecutionError> {
    let u = url_of(a.first(), "getQuery")?;
    let mut out: HashMap<Key, Vec<Value>> = HashMap::new();
    for (k, v) in form_urlencoded::parse(u.query.as_bytes()) {
        out.entry(Key::from(k.into_owned()))
            .or_default()
            .push(Value::String(Arc::new(v.into_owned())));
    }
    Ok(Value::Map(Map {
        map: Arc::new(
            out.into_iter()
                .map(|(k, v)| (k, Value::List(Arc::new(v))))
                .collect(),
        ),
    }))
}

// --- IP addresses --------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ip(IpAddr);

const IP: &str = "net.IP";

impl Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        IP
    }
}

fn ip_type() -> Type {
    Type::new_opaque_type(IP)
}

/// `netip.ParseAddr` with upstream's refusals: no zone, no IPv4-mapped IPv6 address.
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let addr: IpAddr = s
        .parse()
        .map_err(|_| format!("ParseAddr({s:?}): unable to parse IP"))?;
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err("IPv4-mapped IPv6 address is not allowed".into());
    }
    Ok(addr)
}

fn ip_of(v: Option<&Value>, function: &str) -> Result<IpAddr, ExecutionError> {
    match v {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Ip>()
            .map(|ip| ip.0)
            .ok_or_else(|| err(function, "expected an IP")),
        Some(Value::String(s)) => parse_ip(s).map_err(|e| err(function, e)),
        _ => Err(err(function, "expected an IP")),
    }
}

fn ip(a: &[Value]) -> Result<Value, ExecutionError> {
    let s = text(a.first(), "ip")?;
    parse_ip(s)
        .map(|addr| Value::Opaque(Arc::new(Ip(addr))))
        .map_err(|e| {
            err(
                "ip",
                format!("IP Address {s:?} parse error during conversion from string: {e}"),
            )
        })
}

fn is_ip(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(parse_ip(text(a.first(), "isIP")?).is_ok()))
}

fn is_canonical(a: &[Value]) -> Result<Value, ExecutionError> {
    let s = text(a.first(), "ip.isCanonical")?;
    let addr = parse_ip(s).map_err(|e| {
        err(
            "ip.isCanonical",
            format!("IP Address {s:?} parse error during conversion from string: {e}"),
        )
    })?;
    Ok(Value::Bool(addr.to_string() == s))
}

fn family(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(match ip_of(a.first(), "family")? {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    }))
}

fn is_unspecified(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(
        ip_of(a.first(), "isUnspecified")?.is_unspecified(),
    ))
}

fn is_loopback(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(ip_of(a.first(), "isLoopback")?.is_loopback()))
}

fn link_local_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_link_local_multicast(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(
        match ip_of(a.first(), "isLinkLocalMulticast")? {
            IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
            IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
        },
    ))
}

fn is_link_local_unicast(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(link_local_unicast(ip_of(
        a.first(),
        "isLinkLocalUnicast",
    )?)))
}

/// Go's `IsGlobalUnicast`: not unspecified, loopback, multicast, link-local or the
/// IPv4 broadcast address (private ranges are global unicast).
fn is_global_unicast(a: &[Value]) -> Result<Value, ExecutionError> {
    let addr = ip_of(a.first(), "isGlobalUnicast")?;
    let broadcast = addr == IpAddr::V4(Ipv4Addr::BROADCAST);
    Ok(Value::Bool(
        !addr.is_unspecified()
            && !addr.is_loopback()
            && !addr.is_multicast()
            && !link_local_unicast(addr)
            && !broadcast,
    ))
}

fn ip_string(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        ip_of(a.first(), "string")?.to_string(),
    )))
}

// --- CIDRs ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

const CIDR: &str = "net.IPPrefix";

impl Opaque for Cidr {
    fn runtime_type_name(&self) -> &str {
        CIDR
    }
}

fn cidr_type() -> Type {
    Type::new_opaque_type(CIDR)
}

/// `netip.ParsePrefix`, without IPv4-mapped IPv6 addresses.
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, bits) = s
        .split_once('/')
        .ok_or_else(|| format!("netip.ParsePrefix({s:?}): no '/'"))?;
    let addr = parse_ip(addr).map_err(|e| format!("netip.ParsePrefix({s:?}): {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits: u8 = bits
        .parse()
        .ok()
        .filter(|b| *b <= max && !bits.starts_with('+') && (bits == "0" || !bits.starts_with('0')))
        .ok_or_else(|| format!("netip.ParsePrefix({s:?}): bad bits after slash: {bits:?}"))?;
    Ok(Cidr { addr, bits })
}

fn masked_addr(addr: IpAddr, bits: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && masked_addr(ip, self.bits) == masked_addr(self.addr, self.bits)
    }
}

fn cidr_of(v: Option<&Value>, function: &str) -> Result<Cidr, ExecutionError> {
    match v {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Cidr>()
            .cloned()
            .ok_or_else(|| err(function, "expected a CIDR")),
        Some(Value::String(s)) => parse_cidr(s).map_err(|e| err(function, e)),
        _ => Err(err(function, "expected a CIDR")),
    }
}

fn cidr(a: &[Value]) -> Result<Value, ExecutionError> {
    parse_cidr(text(a.first(), "cidr")?)
        .map(|c| Value::Opaque(Arc::new(c)))
        .map_err(|e| {
            err(
                "cidr",
                format!("network address parse error during conversion from string: {e}"),
            )
        })
}

fn is_cidr(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(parse_cidr(text(a.first(), "isCIDR")?).is_ok()))
}

fn contains_ip(a: &[Value]) -> Result<Value, ExecutionError> {
    let c = cidr_of(a.first(), "containsIP")?;
    Ok(Value::Bool(c.contains(ip_of(a.get(1), "containsIP")?)))
}

fn contains_cidr(a: &[Value]) -> Result<Value, ExecutionError> {
    let c = cidr_of(a.first(), "containsCIDR")?;
    let other = cidr_of(a.get(1), "containsCIDR")?;
    Ok(Value::Bool(other.bits >= c.bits && c.contains(other.addr)))
}

fn cidr_ip(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Opaque(Arc::new(Ip(cidr_of(a.first(), "ip")?.addr))))
}

fn masked(a: &[Value]) -> Result<Value, ExecutionError> {
    let c = cidr_of(a.first(), "masked")?;
    Ok(Value::Opaque(Arc::new(Cidr {
        addr: masked_addr(c.addr, c.bits),
        bits: c.bits,
    })))
}

fn prefix_length(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(i64::from(
        cidr_of(a.first(), "prefixLength")?.bits,
    )))
}

fn cidr_string(a: &[Value]) -> Result<Value, ExecutionError> {
    let c = cidr_of(a.first(), "string")?;
    Ok(Value::String(Arc::new(format!("{}/{}", c.addr, c.bits))))
}

overload!(url_fn => url);
overload!(is_url_fn => is_url);
overload!(get_scheme_fn => get_scheme);
overload!(get_host_fn => get_host);
overload!(get_hostname_fn => get_hostname);
overload!(get_port_fn => get_port);
overload!(get_escaped_path_fn => get_escaped_path);
overload!(get_query_fn => get_query);
overload!(ip_fn => ip);
overload!(is_ip_fn => is_ip);
overload!(is_canonical_fn => is_canonical);
overload!(family_fn => family);
overload!(is_unspecified_fn => is_unspecified);
overload!(is_loopback_fn => is_loopback);
overload!(is_link_local_multicast_fn => is_link_local_multicast);
overload!(is_link_local_unicast_fn => is_link_local_unicast);
overload!(is_global_unicast_fn => is_global_unicast);
overload!(ip_string_fn => ip_string);
overload!(cidr_fn => cidr);
overload!(is_cidr_fn => is_cidr);
overload!(contains_ip_fn => contains_ip);
overload!(contains_cidr_fn => contains_cidr);
overload!(cidr_ip_fn => cidr_ip);
overload!(masked_fn => masked);
overload!(prefix_length_fn => prefix_length);
overload!(cidr_string_fn => cidr_string);

type Function = cel::common::functions::Function;

/// Registers the URL, IP and CIDR libraries on `env`.
pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    let globals: [(&str, &str, Function); 7] = [
        ("url", "string_to_url", url_fn),
        ("isURL", "is_url_string", is_url_fn),
        ("ip", "string_to_ip", ip_fn),
        ("isIP", "is_ip_string", is_ip_fn),
        ("ip.isCanonical", "ip_is_canonical", is_canonical_fn),
        ("cidr", "string_to_cidr", cidr_fn),
        ("isCIDR", "is_cidr_string", is_cidr_fn),
    ];
    for (name, id, f) in globals {
        env.add_overload(name, id, vec![STRING_TYPE], f)?;
    }
    let url_members: [(&str, Function); 6] = [
        ("getScheme", get_scheme_fn),
        ("getHost", get_host_fn),
        ("getHostname", get_hostname_fn),
        ("getPort", get_port_fn),
        ("getEscapedPath", get_escaped_path_fn),
        ("getQuery", get_query_fn),
    ];
    for (name, f) in url_members {
        env.add_member_overload(name, &format!("url_{name}"), url_type(), vec![], f)?;
    }
    let ip_members: [(&str, Function); 6] = [
        ("family", family_fn),
        ("isUnspecified", is_unspecified_fn),
        ("isLoopback", is_loopback_fn),
        ("isLinkLocalMulticast", is_link_local_multicast_fn),
        ("isLinkLocalUnicast", is_link_local_unicast_fn),
        ("isGlobalUnicast", is_global_unicast_fn),
    ];
    for (name, f) in ip_members {
        env.add_member_overload(name, &format!("ip_{name}"), ip_type(), vec![], f)?;
    }
    env.add_overload("string", "ip_to_string", vec![ip_type()], ip_string_fn)?;
    env.add_overload(
        "string",
        "cidr_to_string",
        vec![cidr_type()],
        cidr_string_fn,
    )?;
    let cidr_members: [(&str, &str, Vec<Type>, Function); 7] = [
        (
            "containsIP",
            "cidr_contains_ip_ip",
            vec![ip_type()],
            contains_ip_fn,
        ),
        (
            "containsIP",
            "cidr_contains_ip_string",
            vec![STRING_TYPE],
            contains_ip_fn,
        ),
        (
            "containsCIDR",
            "cidr_contains_cidr",
            vec![cidr_type()],
            contains_cidr_fn,
        ),
        (
            "containsCIDR",
            "cidr_contains_cidr_string",
            vec![STRING_TYPE],
            contains_cidr_fn,
        ),
        ("ip", "cidr_ip", vec![], cidr_ip_fn),
        ("masked", "cidr_masked", vec![], masked_fn),
        (
            "prefixLength",
            "cidr_prefix_length",
            vec![],
            prefix_length_fn,
        ),
    ];
    for (name, id, args, f) in cidr_members {
        env.add_member_overload(name, id, cidr_type(), args, f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_as_parse_request_uri_does() {
        let u =
            parse_request_uri("https://user@example.com:8443/a%20b/c?x=1&x=2&y=").expect("a URL");
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "example.com:8443");
        assert_eq!(u.hostname(), "example.com");
        assert_eq!(u.port(), "8443");
        assert_eq!(u.path, "/a%20b/c");
        let v6 = parse_request_uri("http://[::1]:80/").expect("an IPv6 URL");
        assert_eq!((v6.hostname(), v6.port()), ("::1", "80"));
        let path = parse_request_uri("/just/a/path").expect("an absolute path");
        assert_eq!((path.scheme.as_str(), path.host.as_str()), ("", ""));
        for bad in ["", "example.com", "mailto:a@b", "1http://x/", "http://a b/"] {
            assert!(parse_request_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ips_and_cidrs_parse_and_compare_as_upstreams() {
        assert!(parse_ip("192.168.0.1").is_ok());
        assert!(parse_ip("::ffff:1.2.3.4").is_err());
        assert!(parse_ip("fe80::1%eth0").is_err());
        assert!(parse_ip("01.2.3.4").is_err());
        let c = parse_cidr("10.0.0.0/8").expect("a CIDR");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert!(!c.contains("::1".parse().expect("ip")));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert_eq!(
            masked_addr("192.168.1.77".parse().expect("ip"), 24),
            "192.168.1.0".parse::<IpAddr>().expect("ip")
        );
        let link_local: IpAddr = "fe80::1".parse().expect("ip");
        assert!(link_local_unicast(link_local));
    }
}
