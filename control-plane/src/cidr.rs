//! IP prefixes as Nodes' `spec.podCIDRs` and `--cluster-cidr` write them
//! (`10.244.1.0/24`, `fd00:10:244::/64`): parsing, containment, overlap and the
//! subnets of a given size inside a prefix — the arithmetic the node IPAM controller
//! ([`crate::controllers::node_ipam`]) and the apiserver's podCIDR checks share. No I/O.
//!
//! Both families are held as a `u128` (IPv4 in the low 32 bits) with the family's
//! width beside it, so one set of operations serves both.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A prefix: its network address (host bits cleared) and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    v6: bool,
    network: u128,
    prefix: u8,
}

fn width(v6: bool) -> u8 {
    if v6 { 128 } else { 32 }
}

/// The mask of a `prefix`-long prefix in a `width`-bit family.
fn mask(width: u8, prefix: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    if prefix == 0 {
        0
    } else {
        (all << (width - prefix)) & all
    }
}

impl Cidr {
    /// The prefix of `addr` with length `prefix` (host bits of `addr` are dropped);
    /// `None` when `prefix` is longer than the family allows.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (v6, bits) = match addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        (prefix <= width(v6)).then(|| Self {
            v6,
            network: bits & mask(width(v6), prefix),
            prefix,
        })
    }

    pub fn is_ipv6(&self) -> bool {
        self.v6
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The family's address width: 32 or 128.
    pub fn width(&self) -> u8 {
        width(self.v6)
    }

    fn addr(&self, bits: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            // The value is masked to 32 bits for an IPv4 prefix.
            IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap_or(u32::MAX)))
        }
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.addr(self.network)
    }

    /// The last address of the prefix.
    fn last(&self) -> u128 {
        self.network | (!mask(self.width(), self.prefix) & mask(self.width(), self.width()))
    }

    /// Whether `other` lies wholly inside this prefix (or is it).
    pub fn contains(&self, other: &Cidr) -> bool {
        self.v6 == other.v6
            && other.prefix >= self.prefix
            && other.network & mask(self.width(), self.prefix) == self.network
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// How many `prefix`-long subnets this prefix holds; `None` when `prefix` is
    /// shorter than this one's, longer than the family allows, or the count does not
    /// fit in 64 bits.
    pub fn subnet_count(&self, prefix: u8) -> Option<u64> {
        if prefix < self.prefix || prefix > self.width() || prefix - self.prefix >= 64 {
            return None;
        }
        Some(1u64 << (prefix - self.prefix))
    }

    /// The `index`-th `prefix`-long subnet of this prefix.
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Cidr> {
        if index >= self.subnet_count(prefix)? {
            return None;
        }
        let step = u128::from(index) << (self.width() - prefix);
        Some(Cidr {
            v6: self.v6,
            network: self.network | step,
            prefix,
        })
    }

    /// The indices (first, last) of the `prefix`-long subnets of this prefix that
    /// `other` overlaps; `None` when it overlaps none.
    pub fn subnet_range(&self, prefix: u8, other: &Cidr) -> Option<(u64, u64)> {
        self.subnet_count(prefix)?;
        if !self.overlaps(other) {
            return None;
        }
        let shift = self.width() - prefix;
        let index = |bits: u128| -> u64 {
            u64::try_from((bits - self.network) >> shift).unwrap_or(u64::MAX)
        };
        let first = other.network.max(self.network);
        let last = other.last().min(self.last());
        Some((index(first), index(last)))
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `address/prefix`, IPv4 or IPv6; host bits set in the address are dropped, as
    /// Go's `net.ParseCIDR` (which Kubernetes' validation uses) does.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix-length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{s:?}: {prefix:?} is not a prefix length"))?;
        Self::new(addr, prefix).ok_or_else(|| {
            format!(
                "{s:?}: the prefix length may be at most {}",
                if addr.is_ipv4() { 32 } else { 128 }
            )
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_both_families_and_drops_host_bits() {
        assert_eq!(c("10.244.1.7/24").to_string(), "10.244.1.0/24");
        assert_eq!(c("fd00:10:244::5/64").to_string(), "fd00:10:244::/64");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let cluster = c("10.244.0.0/16");
        assert!(cluster.contains(&c("10.244.3.0/24")));
        assert!(!cluster.contains(&c("10.245.0.0/24")));
        assert!(!c("10.244.3.0/24").contains(&cluster));
        assert!(c("10.244.3.0/24").overlaps(&cluster));
        assert!(!c("10.244.3.0/24").overlaps(&c("10.244.4.0/24")));
        assert!(
            !c("10.0.0.0/8").overlaps(&c("::/0")),
            "families never overlap"
        );
    }

    #[test]
    fn subnets_by_index_and_back() {
        let cluster = c("10.244.0.0/16");
        assert_eq!(cluster.subnet_count(24), Some(256));
        assert_eq!(cluster.subnet(24, 0), Some(c("10.244.0.0/24")));
        assert_eq!(cluster.subnet(24, 255), Some(c("10.244.255.0/24")));
        assert_eq!(cluster.subnet(24, 256), None);
        assert_eq!(cluster.subnet_count(8), None);
        assert_eq!(cluster.subnet_range(24, &c("10.244.7.0/24")), Some((7, 7)));
        assert_eq!(
            cluster.subnet_range(24, &c("10.244.8.0/22")),
            Some((8, 11)),
            "a larger prefix covers several subnets"
        );
        assert_eq!(
            cluster.subnet_range(24, &c("10.0.0.0/8")),
            Some((0, 255)),
            "a prefix around the cluster covers all of it"
        );
        assert_eq!(cluster.subnet_range(24, &c("10.245.0.0/24")), None);
        let v6 = c("fd00:10:244::/56");
        assert_eq!(v6.subnet_count(64), Some(256));
        assert_eq!(v6.subnet(64, 1), Some(c("fd00:10:244:1::/64")));
        assert_eq!(v6.subnet_range(64, &c("fd00:10:244:2::/64")), Some((2, 2)));
    }
}
