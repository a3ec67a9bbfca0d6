//! The kernel objects cross-node routing owns, over rtnetlink: routes in the main
//! table tagged with [`ROUTE_PROTOCOL`] (so they can be found again after a restart
//! and told from everyone else's), the VXLAN device and its address, forwarding
//! database and neighbour entries. The socket is opened inside the pod network's
//! namespace when that is not the agent's own, and stays bound to it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use berth_cni::spec::Ipv4Cidr;
use futures_util::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::Error;

/// The routing protocol number berth's routes carry (`ip route show proto 98`);
/// unassigned in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 98;
const MAIN_TABLE: u8 = 254;

fn nl<T>(op: impl Into<String>, r: Result<T, rtnetlink::Error>) -> Result<T, Error> {
    r.map_err(|source| Error::Netlink {
        op: op.into(),
        source,
    })
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A link, as routing needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// For a VXLAN device, its parameters.
    pub vxlan: Option<Vxlan>,
}

/// A VXLAN device's parameters, as far as routing sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    /// The underlying link.
    pub dev: Option<u32>,
    pub port: Option<u16>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            mac: None,
            mtu: None,
            vxlan: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(attrs)) = info {
                            let mut v = Vxlan::default();
                            for x in attrs {
                                match x {
                                    InfoVxlan::Id(id) => v.vni = Some(*id),
                                    InfoVxlan::Local(a) => v.local = Some(*a),
                                    InfoVxlan::Link(i) => v.dev = Some(*i),
                                    InfoVxlan::Port(p) => v.port = Some(*p),
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(v);
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// One of berth's routes as the kernel holds it.
#[derive(Debug, Clone)]
pub struct KernelRoute {
    pub dst: (Ipv4Addr, u8),
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    message: RouteMessage,
}

/// A forwarding-database or neighbour entry on the VXLAN device.
#[derive(Debug, Clone)]
pub struct Entry {
    pub mac: Option<[u8; 6]>,
    pub ip: Option<Ipv4Addr>,
    pub permanent: bool,
    message: NeighbourMessage,
}

impl Entry {
    fn from_message(m: NeighbourMessage) -> Self {
        let mut mac = None;
        let mut ip = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) => {
                    mac = <[u8; 6]>::try_from(l.as_slice()).ok();
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
                // The bridge family's entries come back undecoded.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    ip = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
                }
                _ => {}
            }
        }
        Entry {
            mac,
            ip,
            permanent: m.header.state == NeighbourState::Permanent,
            message: m,
        }
    }
}

/// A netlink socket in the pod network's namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket in `netns` (the agent's own namespace when `None`). Needs a
    /// tokio runtime.
    pub fn connect(netns: Option<&Path>) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::current();
        let open = move || {
            // The socket registers with the runtime's reactor as it is made.
            let _entered = runtime.enter();
            rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))
        };
        let (connection, handle, _) = match netns {
            Some(ns) => crate::netns::run_in(ns, open),
            None => open(),
        }
        .map_err(Error::Setup)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, Error> {
        nl(
            "list links",
            self.handle.link().get().execute().try_collect().await,
        )
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>, Error> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(Error::Netlink {
                op: format!("get link {name}"),
                source,
            }),
        }
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<Link>, Error> {
        Ok(self
            .links()
            .await?
            .iter()
            .find(|m| m.header.index == index)
            .map(Link::from_message))
    }

    async fn addresses(&self) -> Result<Vec<AddressMessage>, Error> {
        nl(
            "list addresses",
            self.handle.address().get().execute().try_collect().await,
        )
    }

    fn ipv4_of(m: &AddressMessage) -> Option<Ipv4Cidr> {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Ipv4Cidr::new(*ip, m.header.prefix_len),
            _ => None,
        })
    }

    /// The link that holds `ip`, with its IPv4 prefixes and MTU.
    pub async fn interface_of(&self, ip: Ipv4Addr) -> Result<Option<(Link, Vec<Ipv4Cidr>)>, Error> {
        let addrs = self.addresses().await?;
        let Some(index) = addrs
            .iter()
            .find(|m| Self::ipv4_of(m).is_some_and(|c| c.addr == ip))
            .map(|m| m.header.index)
        else {
            return Ok(None);
        };
        let prefixes = addrs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(Self::ipv4_of)
            .collect();
        Ok(self.link_by_index(index).await?.map(|l| (l, prefixes)))
    }

    /// Creates the VXLAN device `name` (VNI `vni`, UDP `port`, over link `dev` from
    /// `local`, learning off, MAC `mac`, up) and returns it.
    pub async fn create_vxlan(
        &self,
        name: &str,
        vxlan: (u32, u16),
        dev: u32,
        local: Ipv4Addr,
        mac: [u8; 6],
        mtu: Option<u32>,
    ) -> Result<Link, Error> {
        let (vni, port) = vxlan;
        let mut b = LinkVxlan::new(name, vni)
            .dev(dev)
            .local(local)
            .port(port)
            .learning(false)
            .address(mac.to_vec())
            .up();
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        nl(
            format!("create VXLAN device {name}"),
            self.handle.link().add(b.build()).execute().await,
        )?;
        self.link(name)
            .await?
            .ok_or_else(|| Error::Setup(format!("{name} vanished after creation")))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), Error> {
        nl(
            format!("set link #{index} up"),
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await,
        )
    }

    pub async fn delete_link(&self, index: u32) -> Result<(), Error> {
        match self.handle.link().del(index).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => nl(format!("delete link #{index}"), r),
        }
    }

    /// Makes `addr` the only IPv4 address of link `index`.
    pub async fn set_only_address(&self, index: u32, addr: Ipv4Cidr) -> Result<(), Error> {
        let mut present = false;
        for m in self.addresses().await? {
            if m.header.index != index {
                continue;
            }
            match Self::ipv4_of(&m) {
                Some(c) if c == addr => present = true,
                Some(_) => nl(
                    format!("delete an old address of link #{index}"),
                    self.handle.address().del(m).execute().await,
                )?,
                None => {}
            }
        }
        if present {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr.addr), addr.prefix)
            .execute()
            .await
        {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            r => nl(format!("add address {addr} to link #{index}"), r),
        }
    }

    /// berth's routes in the main table.
    pub async fn routes(&self) -> Result<Vec<KernelRoute>, Error> {
        let all: Vec<RouteMessage> = nl(
            "list routes",
            self.handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute()
                .try_collect()
                .await,
        )?;
        Ok(all
            .into_iter()
            .filter(|m| {
                m.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                    && m.header.table == MAIN_TABLE
                    && m.header.address_family == AddressFamily::Inet
            })
            .map(|m| {
                let (mut dst, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(v)) => dst = *v,
                        RouteAttribute::Gateway(RouteAddress::Inet(v)) => gateway = Some(*v),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                KernelRoute {
                    dst: (dst, m.header.destination_prefix_length),
                    gateway,
                    oif,
                    message: m,
                }
            })
            .collect())
    }

    /// Adds or replaces the route to `dst` via `gateway` out of `oif` (`onlink`: the
    /// gateway is taken to be on the link whatever its addresses say).
    pub async fn replace_route(
        &self,
        dst: (Ipv4Addr, u8),
        gateway: Ipv4Addr,
        oif: u32,
        onlink: bool,
    ) -> Result<(), Error> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.0, dst.1)
            .gateway(gateway)
            .output_interface(oif)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .kind(RouteType::Unicast);
        if onlink {
            b = b.onlink();
        }
        nl(
            format!("route {}/{} via {gateway}", dst.0, dst.1),
            self.handle.route().add(b.build()).replace().execute().await,
        )
    }

    pub async fn delete_route(&self, route: KernelRoute) -> Result<(), Error> {
        match self.handle.route().del(route.message).execute().await {
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            r => nl(format!("delete route {}/{}", route.dst.0, route.dst.1), r),
        }
    }

    /// The entries of link `index` in the bridge forwarding database (`fdb`) or the
    /// IPv4 neighbour table.
    pub async fn entries(&self, index: u32, fdb: bool) -> Result<Vec<Entry>, Error> {
        let family = if fdb {
            AddressFamily::Bridge
        } else {
            AddressFamily::Inet
        };
        let all: Vec<NeighbourMessage> = nl(
            "list neighbours",
            self.handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await,
        )?;
        Ok(all
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .map(Entry::from_message)
            .collect())
    }

    /// `bridge fdb replace <mac> dev <index> dst <remote> self permanent`.
    pub async fn replace_fdb(
        &self,
        index: u32,
        mac: [u8; 6],
        remote: Ipv4Addr,
    ) -> Result<(), Error> {
        nl(
            format!("fdb entry for {remote}"),
            self.handle
                .neighbours()
                .add_bridge(index, &mac)
                .destination(IpAddr::V4(remote))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await,
        )
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn replace_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), Error> {
        nl(
            format!("neighbour entry for {ip}"),
            self.handle
                .neighbours()
                .add(index, IpAddr::V4(ip))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await,
        )
    }

    pub async fn delete_entry(&self, entry: Entry) -> Result<(), Error> {
        match self.handle.neighbours().del(entry.message).execute().await {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            r => nl("delete a neighbour entry", r),
        }
    }
}
