//! IPv4 prefixes (`10.22.0.5/16`), as CNI writes them.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 address with a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Self { addr, prefix })
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address (host bits zero).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The broadcast address (host bits one).
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// The same prefix with `addr` as the address.
    pub fn with_addr(self, addr: Ipv4Addr) -> Self {
        Self {
            addr,
            prefix: self.prefix,
        }
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{s:?}: bad prefix length {prefix:?}"))?;
        Self::new(addr, prefix).ok_or_else(|| format!("{s:?}: prefix length {prefix} is over 32"))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_arithmetic() {
        let c: Ipv4Cidr = "10.22.3.4/16".parse().expect("valid");
        assert_eq!(c.network(), Ipv4Addr::new(10, 22, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 22, 255, 255));
        assert!(c.contains(Ipv4Addr::new(10, 22, 200, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 23, 0, 1)));
        assert_eq!(c.to_string(), "10.22.3.4/16");
        let all: Ipv4Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "fd00::/64", "x/1"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} must not parse");
        }
    }
}
