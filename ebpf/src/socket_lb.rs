//! Socket-level load balancing: the cgroup `connect4`, `sendmsg4`, `recvmsg4` and
//! `getpeername4` programs and their maps.
//!
//! With a pin directory (on a bpffs), the maps and the cgroup links are pinned
//! there: the programs stay attached and the maps keep their entries when the agent
//! exits, and a restarted agent opens the same maps, keeps the running links, and
//! adopts the programmed services ([`SocketLb::open`]) — traffic is never
//! interrupted.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use std::collections::{BTreeMap, HashMap as StdHashMap};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap, MapData, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, links::FdLink,
        links::PinnedLink,
    },
};
use berth_ebpf_common::{
    AFFINITY_MAP, ANNOUNCE_MAP, BACKENDS_MAP, Backend, BackendKey, CONNECT4_PROGRAM, CT_MAP,
    GETPEERNAME4_PROGRAM, HOST_NETNS_MAP, HOST_ROUTING_MAP, HostRouting, IF_MACS_MAP, IPPROTO_TCP,
    IPPROTO_UDP, IfMac, NETPOL_EGRESS_PROGRAM, NETPOL_INGRESS_PROGRAM, NODE_IPS_MAP,
    NODEPORT_EGRESS_PROGRAM, NODEPORT_INGRESS_PROGRAM, NP_CT_MAP, NP_DENIED_MAP, NP_HOST_MAP,
    NP_PODS_MAP, NP_PORTS_MAP, NP_RULES_MAP, RECVMSG4_PROGRAM, REVNAT_MAP, SENDMSG4_PROGRAM,
    SERVICES_MAP, SOURCE_RANGE_FRONTEND_BITS, SOURCE_RANGES_MAP, STATS_MAP, ServiceKey,
    ServiceValue, SourceRangeKey, Stat,
};

/// Every map of the object, pinned by these names.
const MAPS: [&str; 18] = [
    HOST_NETNS_MAP,
    NP_PODS_MAP,
    NP_RULES_MAP,
    NP_PORTS_MAP,
    NP_CT_MAP,
    NP_HOST_MAP,
    NP_DENIED_MAP,
    SERVICES_MAP,
    BACKENDS_MAP,
    REVNAT_MAP,
    AFFINITY_MAP,
    STATS_MAP,
    NODE_IPS_MAP,
    CT_MAP,
    ANNOUNCE_MAP,
    IF_MACS_MAP,
    SOURCE_RANGES_MAP,
    HOST_ROUTING_MAP,
];

/// The pin-name prefix of external interfaces' tc links: `<prefix><program>-<iface>-<ifindex>`.
const TC_LINK_PREFIX: &str = "link-";

/// The tc programs of external interfaces, with their direction.
const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (NODEPORT_INGRESS_PROGRAM, TcAttachType::Ingress),
    (NODEPORT_EGRESS_PROGRAM, TcAttachType::Egress),
];

/// The NetworkPolicy programs (cgroup skb), with their direction.
const NETPOL_PROGRAMS: [(&str, aya::programs::CgroupSkbAttachType); 2] = [
    (
        NETPOL_INGRESS_PROGRAM,
        aya::programs::CgroupSkbAttachType::Ingress,
    ),
    (
        NETPOL_EGRESS_PROGRAM,
        aya::programs::CgroupSkbAttachType::Egress,
    ),
];

/// The socket-LB programs, attached together to one cgroup.
const PROGRAMS: [&str; 4] = [
    CONNECT4_PROGRAM,
    SENDMSG4_PROGRAM,
    RECVMSG4_PROGRAM,
    GETPEERNAME4_PROGRAM,
];

use crate::{Error, Frontend, LbMaps, Protocol, ServiceOptions, ServiceTable};

/// Counters kept by the kernel programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// connect() calls rewritten to a backend.
    pub translated: u64,
    /// connect() calls refused because the service had no backends.
    pub no_backends: u64,
    /// Lookups that found a service but not its backend slot.
    pub missing_backend: u64,
    /// recvmsg/getpeername results shown as the frontend.
    pub reversed: u64,
    /// Connects that followed a live ClientIP affinity pin.
    pub affinity_hit: u64,
    /// Affinity pins found expired (or stale) and re-picked.
    pub affinity_expired: u64,
    /// New NodePort flows translated to a backend.
    pub nodeport_new: u64,
    /// NodePort packets of known flows translated (both directions).
    pub nodeport_tracked: u64,
    /// NodePort packets dropped because the Service had no backends.
    pub nodeport_no_backends: u64,
    /// Packets forwarded between pods by eBPF host routing.
    pub host_routed: u64,
}

/// The loaded socket load balancer. Dropping it detaches the programs.
pub struct SocketLb {
    // Owns the programs and their links: dropping it detaches them.
    pub(crate) ebpf: Ebpf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    stats: PerCpuArray<MapData, u64>,
    table: ServiceTable,
    /// Where maps and links are pinned, if anywhere.
    pins: Option<PathBuf>,
    /// Pinned cgroup links (attached by us or by an earlier agent).
    links: Vec<PinnedLink>,
    /// The external interfaces the tc programs are attached to, by (name, ifindex),
    /// with their links.
    external: BTreeMap<(String, u32), Vec<TcLink>>,
    /// The source ranges programmed per frontend (as the trie holds them).
    source_ranges: StdHashMap<ServiceKey, Vec<(u32, u8)>>,
    /// What the NetworkPolicy maps hold, and their port sets.
    pub(crate) policy: crate::PolicyState,
    pub(crate) port_sets: crate::netpol::PortSets,
}

/// A tc link of an external interface: pinned (and removed by unpinning), or owned
/// by the program (detached through it).
enum TcLink {
    Pinned(PinnedLink),
    Owned(&'static str, aya::programs::tc::SchedClassifierLinkId),
}

impl SocketLb {
    /// Loads the eBPF object at `object` and its socket-LB programs into the
    /// kernel, without attaching them anywhere yet. Nothing is pinned: dropping the
    /// balancer detaches and frees everything.
    pub fn load(object: &Path) -> Result<Self, Error> {
        Self::open(object, None)
    }

    /// Like [`SocketLb::load`], with maps pinned in `pins` (a directory on a bpffs):
    /// maps already pinned there are reused with their entries, and the services
    /// they hold are adopted into the table, so a restarted agent continues where
    /// the last one stopped. [`SocketLb::attach`] then pins the links there too.
    pub fn open(object: &Path, pins: Option<&Path>) -> Result<Self, Error> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = pins
            .map(|dir| MAPS.iter().map(|m| (*m, dir.join(m))).collect())
            .unwrap_or_default();
        for (name, path) in &paths {
            // The counters array grows as programs count more events; one pinned by
            // an older agent is smaller than this object's, and is replaced (the
            // counters restart; the metrics count increments).
            if *name == STATS_MAP
                && aya::maps::MapInfo::from_pin(path)
                    .is_ok_and(|info| info.max_entries() != berth_ebpf_common::STATS_LEN)
            {
                let _ = std::fs::remove_file(path);
            }
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load_file(object).map_err(|source| Error::Load {
            path: object.to_path_buf(),
            source: Box::new(source),
        })?;
        let services = take_map(&mut ebpf, SERVICES_MAP)?;
        let backends = take_map(&mut ebpf, BACKENDS_MAP)?;
        let stats = ebpf
            .take_map(STATS_MAP)
            .ok_or(Error::Missing {
                kind: "map",
                name: STATS_MAP,
            })
            .and_then(|m| {
                PerCpuArray::try_from(m).map_err(|source| Error::Map {
                    name: STATS_MAP,
                    source,
                })
            })?;
        for name in PROGRAMS {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        for (name, _) in TC_PROGRAMS {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        for (name, _) in NETPOL_PROGRAMS {
            skb_program(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::Program { name, source })?;
        }
        let mut lb = Self {
            ebpf,
            services,
            backends,
            stats,
            table: ServiceTable::default(),
            pins: pins.map(Path::to_path_buf),
            links: Vec::new(),
            external: BTreeMap::new(),
            source_ranges: StdHashMap::new(),
            policy: crate::PolicyState::default(),
            port_sets: crate::netpol::PortSets::default(),
        };
        if pins.is_some() {
            lb.adopt()?;
        }
        Ok(lb)
    }

    /// Takes over the services already in (pinned) maps.
    fn adopt(&mut self) -> Result<(), Error> {
        let services = self
            .services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                name: SERVICES_MAP,
                source,
            })?;
        let backends = self
            .backends
            .iter()
            .map(|r| r.map(|(k, _)| k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                name: BACKENDS_MAP,
                source,
            })?;
        self.table.adopt(services, backends);
        let trie = self.source_trie()?;
        let keys = trie
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::Map {
                name: SOURCE_RANGES_MAP,
                source,
            })?;
        for key in keys {
            let data = key.data();
            let prefix = key.prefix_len().saturating_sub(SOURCE_RANGE_FRONTEND_BITS) as u8;
            self.source_ranges
                .entry(data.frontend)
                .or_default()
                .push((data.client, prefix));
        }
        Ok(())
    }

    fn source_trie(&mut self) -> Result<LpmTrie<&mut MapData, SourceRangeKey, u8>, Error> {
        let map = self.ebpf.map_mut(SOURCE_RANGES_MAP).ok_or(Error::Missing {
            kind: "map",
            name: SOURCE_RANGES_MAP,
        })?;
        LpmTrie::try_from(map).map_err(|source| Error::Map {
            name: SOURCE_RANGES_MAP,
            source,
        })
    }

    /// Sets the client ranges (address, prefix length) `frontend` accepts new
    /// flows from when it has [`ServiceOptions::source_ranges`]; write them before
    /// that flag, remove them after clearing it.
    pub fn set_source_ranges(
        &mut self,
        frontend: Frontend,
        ranges: &[(Ipv4Addr, u8)],
    ) -> Result<(), Error> {
        let fk = frontend.key();
        let wanted: Vec<(u32, u8)> = ranges
            .iter()
            .map(|(a, p)| {
                let p = (*p).min(32);
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                (u32::from_ne_bytes((u32::from(*a) & mask).to_be_bytes()), p)
            })
            .collect();
        let old = self.source_ranges.remove(&fk).unwrap_or_default();
        let key = |(client, prefix): (u32, u8)| {
            LpmKey::new(
                SOURCE_RANGE_FRONTEND_BITS + u32::from(prefix),
                SourceRangeKey {
                    frontend: fk,
                    client,
                },
            )
        };
        let mut trie = self.source_trie()?;
        for r in wanted.iter().filter(|r| !old.contains(r)) {
            trie.insert(&key(*r), 1, 0).map_err(|source| Error::Map {
                name: SOURCE_RANGES_MAP,
                source,
            })?;
        }
        for r in old.iter().filter(|r| !wanted.contains(r)) {
            // Already gone is fine.
            let _ = trie.remove(&key(*r));
        }
        if !wanted.is_empty() {
            self.source_ranges.insert(fk, wanted);
        }
        Ok(())
    }

    /// Answers ARP for `addr` on the external interfaces (a load-balancer address
    /// this node serves), or stops.
    pub fn announce(&mut self, addr: Ipv4Addr, on: bool) -> Result<(), Error> {
        let map = self.ebpf.map_mut(ANNOUNCE_MAP).ok_or(Error::Missing {
            kind: "map",
            name: ANNOUNCE_MAP,
        })?;
        let mut set: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(|source| Error::Map {
                name: ANNOUNCE_MAP,
                source,
            })?;
        let key = u32::from_ne_bytes(addr.octets());
        let result = if on {
            set.insert(key, 1, 0)
        } else {
            match set.remove(&key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| Error::Map {
            name: ANNOUNCE_MAP,
            source,
        })
    }

    /// The addresses ARP is answered for.
    pub fn announced(&self) -> Vec<Ipv4Addr> {
        self.ebpf
            .map(ANNOUNCE_MAP)
            .and_then(|m| HashMap::<_, u32, u8>::try_from(m).ok())
            .map(|set| {
                set.keys()
                    .filter_map(Result::ok)
                    .map(|k| Ipv4Addr::from(k.to_ne_bytes()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The frontends programmed now (adopted ones included).
    pub fn frontends(&self) -> Vec<Frontend> {
        self.table.keys().filter_map(frontend_of).collect()
    }

    /// Removes the pins (links and maps): once this balancer is dropped, the
    /// programs detach and the maps are freed.
    pub fn unpin(&mut self) -> Result<(), Error> {
        let external = std::mem::take(&mut self.external);
        for links in external.into_values() {
            self.drop_links(links);
        }
        for link in self.links.drain(..) {
            link.unpin().map_err(|source| Error::Pin {
                path: PathBuf::from("link"),
                source,
            })?;
        }
        if let Some(dir) = self.pins.take() {
            for name in MAPS {
                let path = dir.join(name);
                if let Err(source) = std::fs::remove_file(&path)
                    && source.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(Error::Pin { path, source });
                }
            }
        }
        Ok(())
    }

    /// Attaches the socket-LB programs to the cgroup2 directory `cgroup`: every
    /// socket created by a process in it (or below it) is balanced from now on.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), Error> {
        self.attach_sock_addr(cgroup, "")
    }

    /// The socket-LB programs attached at `cgroup`, their links pinned as
    /// `link-<program><suffix>`.
    fn attach_sock_addr(&mut self, cgroup: &Path, suffix: &str) -> Result<(), Error> {
        for name in PROGRAMS {
            let pin = self.link_pin(&format!("link-{name}{suffix}"));
            if self.keep_pinned(pin.as_deref())? {
                continue;
            }
            let dir = File::open(cgroup).map_err(|source| Error::Cgroup {
                path: cgroup.to_path_buf(),
                source,
            })?;
            let prog = program(&mut self.ebpf, name)?;
            let id = prog
                .attach(dir, CgroupAttachMode::Single)
                .map_err(|source| Error::Program { name, source })?;
            if let Some(path) = pin {
                let link = prog
                    .take_link(id)
                    .map_err(|source| Error::Program { name, source })?;
                self.pin_link(link, path)?;
            }
        }
        Ok(())
    }

    /// Attaches the socket-LB programs to a second cgroup2 directory, the host's
    /// processes' (`/` for all of them, in production only): the host then reaches
    /// ClusterIPs, and NodePorts on the node's addresses and — with
    /// [`SocketLb::set_host_netns`] — on loopback. Pinned apart from [`SocketLb::attach`]'s.
    pub fn attach_host(&mut self, cgroup: &Path) -> Result<(), Error> {
        self.attach_sock_addr(cgroup, "-host")
    }

    /// Removes the NetworkPolicy attachment an earlier agent pinned, and empties the
    /// selected-pod map (`--network-policy=false`: nothing stays enforced).
    pub fn detach_network_policy(&mut self) -> Result<(), Error> {
        for (name, _) in NETPOL_PROGRAMS {
            if let Some(path) = self.link_pin(&format!("link-{name}"))
                && let Err(source) = std::fs::remove_file(&path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::Pin { path, source });
            }
        }
        self.adopt_policy()?;
        self.apply_policy(&crate::PolicyState::default())?;
        Ok(())
    }

    /// Removes the host attachment an earlier agent pinned (its pins go; the links with
    /// them once nothing holds them).
    pub fn detach_host(&mut self) -> Result<(), Error> {
        for name in PROGRAMS {
            if let Some(path) = self.link_pin(&format!("link-{name}-host"))
                && let Err(source) = std::fs::remove_file(&path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(Error::Pin { path, source });
            }
        }
        Ok(())
    }

    /// Sets the host's network-namespace cookie ([`netns_cookie`]): sockets there
    /// reach NodePorts on loopback addresses. 0 turns it off.
    pub fn set_host_netns(&mut self, cookie: u64) -> Result<(), Error> {
        let map = self.ebpf.map_mut(HOST_NETNS_MAP).ok_or(Error::Missing {
            kind: "map",
            name: HOST_NETNS_MAP,
        })?;
        let mut array: aya::maps::Array<&mut MapData, u64> = aya::maps::Array::try_from(map)
            .map_err(|source| Error::Map {
                name: HOST_NETNS_MAP,
                source,
            })?;
        array.set(0, cookie, 0).map_err(|source| Error::Map {
            name: HOST_NETNS_MAP,
            source,
        })
    }

    /// Attaches the NetworkPolicy programs (cgroup skb ingress and egress) to the
    /// cgroup2 directory `cgroup`: the packets of every socket in it (or below) are
    /// checked against the policy maps from now on. Pinned like the socket-LB links.
    pub fn attach_network_policy(&mut self, cgroup: &Path) -> Result<(), Error> {
        for (name, direction) in NETPOL_PROGRAMS {
            let pin = self.link_pin(&format!("link-{name}"));
            if self.keep_pinned(pin.as_deref())? {
                continue;
            }
            let dir = File::open(cgroup).map_err(|source| Error::Cgroup {
                path: cgroup.to_path_buf(),
                source,
            })?;
            let prog = skb_program(&mut self.ebpf, name)?;
            let id = prog
                .attach(dir, direction, CgroupAttachMode::Single)
                .map_err(|source| Error::Program { name, source })?;
            if let Some(path) = pin {
                let link = prog
                    .take_link(id)
                    .map_err(|source| Error::Program { name, source })?;
                self.pin_link(link, path)?;
            }
        }
        Ok(())
    }

    /// Attaches the NodePort programs (tc ingress and egress, TCX) to interface
    /// `iface` of the calling thread's network namespace: packets arriving there for
    /// a node address at a NodePort (a frontend with address 0.0.0.0) go to a
    /// backend, and the backend's replies leave with the NodePort address. Without
    /// pins the attachments last as long as this balancer; with pins they are pinned
    /// like the cgroup links and survive an agent restart. Attach it to every
    /// interface clients or backends are reached through (external interfaces, the
    /// pod bridge, links to other nodes): replies of masqueraded flows are restored
    /// where they come in.
    pub fn attach_external(&mut self, iface: &str) -> Result<(), Error> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| Error::Interface {
            iface: iface.to_owned(),
            source: std::io::Error::from(e),
        })?;
        if self.external.contains_key(&(iface.to_owned(), ifindex)) {
            return Ok(());
        }
        // The MAC ARP replies give (an interface without one, such as a tunnel,
        // announces nothing).
        if let Some(mac) = interface_mac(iface) {
            let map = self.ebpf.map_mut(IF_MACS_MAP).ok_or(Error::Missing {
                kind: "map",
                name: IF_MACS_MAP,
            })?;
            let mut macs: HashMap<&mut MapData, u32, IfMac> =
                HashMap::try_from(map).map_err(|source| Error::Map {
                    name: IF_MACS_MAP,
                    source,
                })?;
            macs.insert(ifindex, IfMac { mac, _pad: [0; 2] }, 0)
                .map_err(|source| Error::Map {
                    name: IF_MACS_MAP,
                    source,
                })?;
        }
        let mut links = Vec::new();
        let result = (|| {
            for (name, direction) in TC_PROGRAMS {
                let pin = self.link_pin(&format!("{TC_LINK_PREFIX}{name}-{iface}-{ifindex}"));
                if let Some(path) = pin.as_deref().filter(|p| p.exists()) {
                    let link = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
                    links.push(TcLink::Pinned(link));
                    continue;
                }
                let prog = classifier(&mut self.ebpf, name)?;
                let id = prog
                    .attach(iface, direction)
                    .map_err(|source| Error::Program { name, source })?;
                match pin {
                    Some(path) => {
                        let link = prog
                            .take_link(id)
                            .map_err(|source| Error::Program { name, source })?;
                        let pinned = FdLink::try_from(link)
                            .map_err(|e| pin_error(&path, e))?
                            .pin(&path)
                            .map_err(|e| pin_error(&path, e))?;
                        links.push(TcLink::Pinned(pinned));
                    }
                    None => links.push(TcLink::Owned(name, id)),
                }
            }
            Ok(())
        })();
        if let Err(err) = result {
            self.drop_links(links);
            return Err(err);
        }
        self.external.insert((iface.to_owned(), ifindex), links);
        Ok(())
    }

    /// Detaches the tc programs from `iface` (any ifindex it had).
    pub fn detach_external(&mut self, iface: &str) {
        let keys: Vec<(String, u32)> = self
            .external
            .keys()
            .filter(|(n, _)| n == iface)
            .cloned()
            .collect();
        for key in keys {
            if let Some(links) = self.external.remove(&key) {
                self.drop_links(links);
            }
            if let Some(map) = self.ebpf.map_mut(IF_MACS_MAP)
                && let Ok(mut macs) = HashMap::<&mut MapData, u32, IfMac>::try_from(map)
            {
                let _ = macs.remove(&key.1);
            }
        }
    }

    /// The interfaces the tc programs are attached to now (name, ifindex).
    pub fn external_interfaces(&self) -> Vec<(String, u32)> {
        self.external.keys().cloned().collect()
    }

    /// Removes the pins of tc links whose interface no longer exists (deleted while
    /// no agent ran), so a re-created interface of that name is attached afresh.
    pub fn forget_gone_interfaces(&mut self) {
        let Some(dir) = self.pins.clone() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = TC_PROGRAMS
                .iter()
                .find_map(|(p, _)| name.strip_prefix(&format!("{TC_LINK_PREFIX}{p}-")))
            else {
                continue;
            };
            let Some((iface, index)) = rest.rsplit_once('-') else {
                continue;
            };
            let alive = index.parse::<u32>().ok().is_some_and(|index| {
                nix::net::if_::if_nametoindex(iface).is_ok_and(|i| i == index)
            });
            if !alive {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn drop_links(&mut self, links: Vec<TcLink>) {
        for link in links {
            match link {
                TcLink::Pinned(l) => {
                    // Unpinned and dropped, the link (and the attachment) goes.
                    let _ = l.unpin();
                }
                TcLink::Owned(name, id) => {
                    if let Ok(prog) = classifier(&mut self.ebpf, name) {
                        let _ = prog.detach(id);
                    }
                }
            }
        }
    }

    /// Where the link called `name` is pinned, when pinning.
    fn link_pin(&self, name: &str) -> Option<PathBuf> {
        self.pins.as_ref().map(|dir| dir.join(name))
    }

    /// If a link is already pinned at `pin` (attached by an earlier agent with
    /// these same maps), keeps it running and says so.
    fn keep_pinned(&mut self, pin: Option<&Path>) -> Result<bool, Error> {
        let Some(path) = pin.filter(|p| p.exists()) else {
            return Ok(false);
        };
        let link = PinnedLink::from_pin(path).map_err(|e| pin_error(path, e))?;
        self.links.push(link);
        Ok(true)
    }

    /// Pins a link we just attached at `path`.
    fn pin_link<L>(&mut self, link: L, path: PathBuf) -> Result<(), Error>
    where
        FdLink: TryFrom<L>,
        <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
    {
        let pinned = FdLink::try_from(link)
            .map_err(|e| pin_error(&path, e))?
            .pin(&path)
            .map_err(|e| pin_error(&path, e))?;
        self.links.push(pinned);
        Ok(())
    }

    /// Turns eBPF host routing on for the pod range `net/prefix` (None: off). With it
    /// on, the NodePort ingress program forwards a TCP or UDP packet between two
    /// addresses of that range itself when the kernel's route sends it out of
    /// another interface the tc programs are attached to (see
    /// [`SocketLb::attach_external`]): it decrements the TTL and hands the packet to
    /// that interface's neighbour (`bpf_redirect_neigh`), skipping the stack's
    /// forwarding path and netfilter, as Cilium's BPF host routing does. Traffic
    /// leaving the range (masqueraded), segmented packets, packets with IP options
    /// or an expiring TTL and routes out of other interfaces (a VXLAN device) stay
    /// with the kernel.
    pub fn set_host_routing(&mut self, range: Option<(Ipv4Addr, u8)>) -> Result<(), Error> {
        let value = match range {
            Some((net, prefix)) if (1..=32).contains(&prefix) => {
                let mask = u32::MAX << (32 - u32::from(prefix));
                HostRouting {
                    net: (u32::from(net) & mask).to_be(),
                    mask: mask.to_be(),
                }
            }
            _ => HostRouting::default(),
        };
        let map = self.ebpf.map_mut(HOST_ROUTING_MAP).ok_or(Error::Missing {
            kind: "map",
            name: HOST_ROUTING_MAP,
        })?;
        let mut array: aya::maps::Array<&mut MapData, HostRouting> =
            aya::maps::Array::try_from(map).map_err(|source| Error::Map {
                name: HOST_ROUTING_MAP,
                source,
            })?;
        array.set(0, value, 0).map_err(|source| Error::Map {
            name: HOST_ROUTING_MAP,
            source,
        })
    }

    /// Sets the node addresses NodePorts answer on (replacing the previous set).
    pub fn set_node_ips(&mut self, ips: &[Ipv4Addr]) -> Result<(), Error> {
        let map = self.ebpf.map_mut(NODE_IPS_MAP).ok_or(Error::Missing {
            kind: "map",
            name: NODE_IPS_MAP,
        })?;
        let mut node_ips: HashMap<&mut MapData, u32, u8> =
            HashMap::try_from(map).map_err(|source| Error::Map {
                name: NODE_IPS_MAP,
                source,
            })?;
        let wanted: Vec<u32> = ips
            .iter()
            .map(|ip| u32::from_ne_bytes(ip.octets()))
            .collect();
        let stale: Vec<u32> = node_ips
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            node_ips.remove(&key).map_err(|source| Error::Map {
                name: NODE_IPS_MAP,
                source,
            })?;
        }
        for key in wanted {
            node_ips.insert(key, 1, 0).map_err(|source| Error::Map {
                name: NODE_IPS_MAP,
                source,
            })?;
        }
        Ok(())
    }

    /// Programs `frontend` to balance over `backends`; see [`ServiceTable::set`].
    pub fn set_service(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
    ) -> Result<(), Error> {
        self.set_service_with_affinity(frontend, backends, None)
    }

    /// Like [`SocketLb::set_service`], with ClientIP session affinity of
    /// `affinity_timeout` seconds when given.
    pub fn set_service_with_affinity(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
        affinity_timeout: Option<u32>,
    ) -> Result<(), Error> {
        self.set_service_with(
            frontend,
            backends,
            ServiceOptions {
                affinity_timeout,
                ..ServiceOptions::default()
            },
        )
    }

    /// Like [`SocketLb::set_service`], with every option.
    pub fn set_service_with(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
        options: ServiceOptions,
    ) -> Result<(), Error> {
        let mut maps = AyaMaps {
            services: &mut self.services,
            backends: &mut self.backends,
        };
        self.table.set(&mut maps, frontend, backends, options)
    }

    /// Removes `frontend` (and its source ranges); returns whether it was programmed.
    pub fn remove_service(&mut self, frontend: Frontend) -> Result<bool, Error> {
        let mut maps = AyaMaps {
            services: &mut self.services,
            backends: &mut self.backends,
        };
        let removed = self.table.remove(&mut maps, frontend)?;
        self.set_source_ranges(frontend, &[])?;
        Ok(removed)
    }

    /// Deletes replaced backend groups whose grace period is over (see
    /// [`ServiceTable::reap`]); call it now and then when no changes come.
    pub fn reap_retired(&mut self) {
        let mut maps = AyaMaps {
            services: &mut self.services,
            backends: &mut self.backends,
        };
        self.table.reap(&mut maps);
    }

    /// The services table (counts of services and backends).
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Reads the kernel's counters (summed over CPUs).
    pub fn stats(&self) -> Result<Stats, Error> {
        let read = |stat: Stat| {
            self.stats
                .get(&(stat as u32), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .map_err(|source| Error::Map {
                    name: STATS_MAP,
                    source,
                })
        };
        Ok(Stats {
            translated: read(Stat::Translated)?,
            no_backends: read(Stat::NoBackends)?,
            missing_backend: read(Stat::MissingBackend)?,
            reversed: read(Stat::Reversed)?,
            affinity_hit: read(Stat::AffinityHit)?,
            affinity_expired: read(Stat::AffinityExpired)?,
            nodeport_new: read(Stat::NodePortNew)?,
            nodeport_tracked: read(Stat::NodePortTracked)?,
            nodeport_no_backends: read(Stat::NodePortNoBackends)?,
            host_routed: read(Stat::HostRouted)?,
        })
    }
}

impl std::fmt::Debug for SocketLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketLb")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn pin_error(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Pin {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), as the
/// programs' `bpf_get_netns_cookie` sees it.
pub fn netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we just opened and own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for the call and sized as passed.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The MAC address of `iface` in the calling thread's network namespace (netlink,
/// not sysfs, which shows the namespace it was mounted in).
fn interface_mac(iface: &str) -> Option<[u8; 6]> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|ifa| ifa.interface_name == iface)
        .find_map(|ifa| ifa.address?.as_link_addr()?.addr())
        .filter(|mac| *mac != [0; 6])
}

/// The frontend a map key stands for.
fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    let protocol = match key.protocol {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    Some(Frontend {
        addr: Ipv4Addr::from(key.addr.to_ne_bytes()),
        port: u16::from_be(key.port),
        protocol,
    })
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn skb_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::CgroupSkb, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    let map = ebpf
        .take_map(name)
        .ok_or(Error::Missing { kind: "map", name })?;
    HashMap::try_from(map).map_err(|source| Error::Map { name, source })
}

struct AyaMaps<'a> {
    services: &'a mut HashMap<MapData, ServiceKey, ServiceValue>,
    backends: &'a mut HashMap<MapData, BackendKey, Backend>,
}

impl LbMaps for AyaMaps<'_> {
    fn put_backend(&mut self, key: BackendKey, value: Backend) -> Result<(), Error> {
        self.backends
            .insert(key, value, 0)
            .map_err(|source| Error::Map {
                name: BACKENDS_MAP,
                source,
            })
    }

    fn delete_backend(&mut self, key: BackendKey) -> Result<(), Error> {
        self.backends.remove(&key).map_err(|source| Error::Map {
            name: BACKENDS_MAP,
            source,
        })
    }

    fn put_service(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), Error> {
        self.services
            .insert(key, value, 0)
            .map_err(|source| Error::Map {
                name: SERVICES_MAP,
                source,
            })
    }

    fn delete_service(&mut self, key: ServiceKey) -> Result<(), Error> {
        self.services.remove(&key).map_err(|source| Error::Map {
            name: SERVICES_MAP,
            source,
        })
    }
}
