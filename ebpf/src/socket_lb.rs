//! Socket-level load balancing: the cgroup `connect4`, `sendmsg4`, `recvmsg4` and
//! `getpeername4` programs and their maps.

use std::{fs::File, net::SocketAddrV4, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use berth_ebpf_common::{
    BACKENDS_MAP, Backend, BackendKey, CONNECT4_PROGRAM, GETPEERNAME4_PROGRAM, RECVMSG4_PROGRAM,
    SENDMSG4_PROGRAM, SERVICES_MAP, STATS_MAP, ServiceKey, ServiceValue, Stat,
};

/// The socket-LB programs, attached together to one cgroup.
const PROGRAMS: [&str; 4] = [
    CONNECT4_PROGRAM,
    SENDMSG4_PROGRAM,
    RECVMSG4_PROGRAM,
    GETPEERNAME4_PROGRAM,
];

use crate::{Error, Frontend, LbMaps, ServiceTable};

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
}

/// The loaded socket load balancer. Dropping it detaches the programs.
pub struct SocketLb {
    // Owns the programs and their links: dropping it detaches them.
    ebpf: Ebpf,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    stats: PerCpuArray<MapData, u64>,
    table: ServiceTable,
}

impl SocketLb {
    /// Loads the eBPF object at `object` and its socket-LB programs into the
    /// kernel, without attaching them anywhere yet.
    pub fn load(object: &Path) -> Result<Self, Error> {
        let mut ebpf = Ebpf::load_file(object).map_err(|source| Error::Load {
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
        Ok(Self {
            ebpf,
            services,
            backends,
            stats,
            table: ServiceTable::default(),
        })
    }

    /// Attaches the socket-LB programs to the cgroup2 directory `cgroup`: every
    /// socket created by a process in it (or below it) is balanced from now on.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), Error> {
        for name in PROGRAMS {
            let dir = File::open(cgroup).map_err(|source| Error::Cgroup {
                path: cgroup.to_path_buf(),
                source,
            })?;
            program(&mut self.ebpf, name)?
                .attach(dir, CgroupAttachMode::Single)
                .map_err(|source| Error::Program { name, source })?;
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
        let mut maps = AyaMaps {
            services: &mut self.services,
            backends: &mut self.backends,
        };
        self.table
            .set(&mut maps, frontend, backends, affinity_timeout)
    }

    /// Removes `frontend`; returns whether it was programmed.
    pub fn remove_service(&mut self, frontend: Frontend) -> Result<bool, Error> {
        let mut maps = AyaMaps {
            services: &mut self.services,
            backends: &mut self.backends,
        };
        self.table.remove(&mut maps, frontend)
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
