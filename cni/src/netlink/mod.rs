//! Everything berth-cni does to links, addresses and routes, over rtnetlink (no
//! `ip` commands). A [`Rtnl`] is a netlink socket in one network namespace; the
//! socket for a container's namespace is opened while the (single) thread is
//! briefly inside it ([`netns::enter`]), and it stays bound to that namespace.

pub mod delete;
pub mod netns;

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, BorrowedFd},
};

use futures_util::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{
        AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, LinkAttribute, LinkFlags,
        LinkMessage,
    },
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::spec::{CniError, Ipv4Cidr, code};

/// A netlink failure, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct NlError {
    pub op: String,
    #[source]
    pub source: rtnetlink::Error,
}

impl NlError {
    /// The errno the kernel answered with, if it was a kernel error.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
            _ => None,
        }
    }
}

impl From<NlError> for CniError {
    fn from(e: NlError) -> Self {
        CniError::new(code::NETLINK, e.to_string())
    }
}

fn op<T>(what: impl Into<String>, r: Result<T, rtnetlink::Error>) -> Result<T, NlError> {
    r.map_err(|source| NlError {
        op: what.into(),
        source,
    })
}

/// What berth-cni needs to know of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// IFLA_MASTER: the bridge a port is in.
    pub controller: Option<u32>,
    pub mtu: Option<u32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            peer_index: None,
            controller: None,
            mtu: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name.clone_from(n),
                LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Link(i) => link.peer_index = Some(*i),
                LinkAttribute::Controller(i) => link.controller = Some(*i),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                _ => {}
            }
        }
        link
    }
}

/// Formats a MAC as CNI results show it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A locally administered unicast MAC derived from `seed` (FNV-1a), so the same
/// input always gives the same address.
pub fn mac_from(seed: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// The pod-side MAC for `ip`: `0a:58:` + the address, as Kubernetes network
/// plugins commonly do; unique within the subnet.
pub fn mac_for_ip(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE = NONE } }: no IPv6
/// link-local address for the link (berth-cni is IPv4-only).
fn no_ipv6_link_local() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// A netlink socket in one network namespace.
#[derive(Debug, Clone)]
pub struct Rtnl {
    handle: Handle,
}

impl Rtnl {
    /// A socket in the calling thread's current namespace. Needs a tokio runtime.
    pub fn connect() -> io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, NlError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(source) => Err(NlError {
                op: format!("get link {name}"),
                source,
            }),
        }
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NlError> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(source) => Err(NlError {
                op: format!("get link #{index}"),
                source,
            }),
        }
    }

    /// How many links have `bridge` as their controller (bridge ports).
    pub async fn ports_of(&self, bridge: u32) -> Result<usize, NlError> {
        let links: Vec<LinkMessage> = op(
            "list links",
            self.handle.link().get().execute().try_collect().await,
        )?;
        Ok(links
            .iter()
            .filter(|m| Link::from_message(m).controller == Some(bridge))
            .count())
    }

    /// Creates bridge `name` (up, with a fixed MAC so it does not follow its
    /// ports' addresses) and returns it.
    pub async fn create_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Link, NlError> {
        let mut b = LinkBridge::new(name).address(mac_from(name).to_vec()).up();
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        op(
            format!("create bridge {name}"),
            self.handle.link().add(b.build()).execute().await,
        )?;
        self.link(name).await?.ok_or_else(|| NlError {
            op: format!("bridge {name} vanished after creation"),
            source: rtnetlink::Error::RequestFailed,
        })
    }

    /// Adds `addr` to link `index`; an address already there is fine.
    pub async fn add_address(&self, index: u32, addr: Ipv4Cidr) -> Result<(), NlError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr), addr.prefix)
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => Ok(()),
            r => op(format!("add address {addr} to link #{index}"), r),
        }
    }

    /// The IPv4 addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Cidr>, NlError> {
        let msgs: Vec<_> = op(
            format!("list addresses of link #{index}"),
            self.handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await,
        )?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Ipv4Cidr::new(*ip, m.header.prefix_len)
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Creates a veth pair in one request: `host` in this namespace (in bridge
    /// `bridge`, up) and `peer` directly inside the namespace `peer_netns`.
    pub async fn create_veth(
        &self,
        host: (&str, [u8; 6]),
        peer: (&str, [u8; 6]),
        peer_netns: BorrowedFd<'_>,
        bridge: u32,
        mtu: Option<u32>,
    ) -> Result<(), NlError> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.0.to_string())
            .address(peer.1.to_vec());
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        let peer_msg = peer_msg.setns_by_fd(peer_netns.as_raw_fd()).build();
        let mut msg = LinkVeth::new(host.0, peer.0)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .address(host.1.to_vec())
            .controller(bridge)
            .up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        op(
            format!("create veth {} <-> {}", host.0, peer.0),
            self.handle.link().add(msg.build()).execute().await,
        )
    }

    /// Configures bridge port `index` (the host side of a pod veth) in one
    /// request: hairpin mode if asked, and no IPv6 address generation. The host side
    /// needs no IPv6 link-local address, and each one adds routes to the node's IPv6
    /// FIB, which the kernel walks on link changes — making every later ADD slower as
    /// pods accumulate. Must run before the port gets carrier (before the pod side is
    /// up), while no link-local address exists yet.
    pub async fn configure_port(&self, index: u32, hairpin: bool) -> Result<(), NlError> {
        let mut port = LinkBridgePort::new(index);
        if hairpin {
            port = port.hairpin(true);
        }
        let msg = port.append_extra_attribute(no_ipv6_link_local()).build();
        op(
            format!("configure bridge port #{index}"),
            self.handle.link().set_port(msg).execute().await,
        )
    }

    /// Turns off IPv6 address generation on link `index`, which must still be down
    /// (see [`Rtnl::configure_port`]): a pod's interface then sends no DAD, router
    /// solicitation or MLD packets, which the bridge would flood to every port —
    /// background load that grows with the square of the pod count.
    pub async fn disable_ipv6_link_local(&self, index: u32) -> Result<(), NlError> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(no_ipv6_link_local())
            .build();
        op(
            format!("addrgenmode none on link #{index}"),
            self.handle.link().set(msg).execute().await,
        )
    }

    /// Brings link `index` up.
    pub async fn set_up(&self, index: u32) -> Result<(), NlError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        op(
            format!("set link #{index} up"),
            self.handle.link().set(msg).execute().await,
        )
    }

    /// Deletes link `index` (for a veth, the peer goes too).
    pub async fn delete_link(&self, index: u32) -> Result<(), NlError> {
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(()),
            r => op(format!("delete link #{index}"), r),
        }
    }

    /// Adds a route to `dst` via `gw` (or on-link) out of link `index`.
    pub async fn add_route(
        &self,
        index: u32,
        dst: Ipv4Cidr,
        gw: Option<Ipv4Addr>,
    ) -> Result<(), NlError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix)
            .output_interface(index);
        if let Some(gw) = gw {
            route = route.gateway(gw);
        }
        match self.handle.route().add(route.build()).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => Ok(()),
            r => op(format!("add route {dst} via {gw:?}"), r),
        }
    }

    /// Whether link `index` is up (IFF_UP).
    pub async fn is_up(&self, index: u32) -> Result<bool, NlError> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        let m = op(format!("get link #{index}"), stream.try_next().await)?;
        Ok(m.is_some_and(|m| m.header.flags.contains(LinkFlags::Up)))
    }
}
