//! The built-in allocator's store: one directory per network holding `state.json`
//! (allocations keyed by address, owned by container ID + ifname, and the last
//! address handed out) and a `lock` file. Every change holds an exclusive flock on
//! `lock`, so concurrent plugin processes never hand out one address twice, and is
//! written to a temp file then renamed over `state.json`, so a crash mid-write leaves
//! the old state or the new one, never a torn file. (No fsync: after a power loss
//! every pod netns is gone too, and host-local makes the same trade.)

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::RangeSpec;
use crate::spec::{Attachment, CniError, Ipv4Cidr, code};

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(rename = "lastReserved", default)]
    last_reserved: Option<Ipv4Addr>,
    #[serde(default)]
    allocations: BTreeMap<Ipv4Addr, Owner>,
}

/// The allocations of one network.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    ranges: Vec<RangeSpec>,
}

/// An exclusive hold on the store, with its state loaded.
struct Locked {
    _lock: Flock<File>,
    state: State,
    path: PathBuf,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what} {}: {e}", path.display()))
}

impl Store {
    /// The store of network `network` under `data_dir`.
    pub fn new(data_dir: &Path, network: &str, ranges: Vec<RangeSpec>) -> Self {
        Self {
            dir: data_dir.join(network),
            ranges,
        }
    }

    fn lock(&self) -> Result<Locked, CniError> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err("cannot create", &self.dir, e))?;
        let lock_path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("cannot lock", &lock_path, e))?;
        let path = self.dir.join("state.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io_err("corrupt IPAM state", &path, e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        Ok(Locked {
            _lock: lock,
            state,
            path,
        })
    }

    /// The address of `container_id`/`ifname`, allocating one if it has none
    /// (so a repeated ADD gets the same address). Error 101 when the ranges are full.
    pub fn allocate(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<(Ipv4Cidr, RangeSpec), CniError> {
        let mut locked = self.lock()?;
        let owner = Owner {
            container_id: container_id.into(),
            ifname: ifname.into(),
        };
        if let Some((ip, _)) = locked.state.allocations.iter().find(|(_, o)| **o == owner) {
            let ip = *ip;
            if let Some(range) = self.range_of(ip) {
                return Ok((range.subnet.with_addr(ip), range));
            }
        }
        let (ip, range) = self.next_free(&locked.state).ok_or_else(|| {
            CniError::new(code::RANGE_EXHAUSTED, "no free address in the IPAM range")
                .details(self.describe_ranges())
        })?;
        locked.state.allocations.insert(ip, owner);
        locked.state.last_reserved = Some(ip);
        locked.save()?;
        Ok((range.subnet.with_addr(ip), range))
    }

    /// Releases what `container_id`/`ifname` holds; nothing held is not an error.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, CniError> {
        let mut locked = self.lock()?;
        let found = locked
            .state
            .allocations
            .iter()
            .find(|(_, o)| o.container_id == container_id && o.ifname == ifname)
            .map(|(ip, _)| *ip);
        if let Some(ip) = found {
            locked.state.allocations.remove(&ip);
            locked.save()?;
        }
        Ok(found)
    }

    /// Releases every allocation not in `valid`; returns the addresses released.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Vec<Ipv4Addr>, CniError> {
        let mut locked = self.lock()?;
        let stale: Vec<Ipv4Addr> = locked
            .state
            .allocations
            .iter()
            .filter(|(_, o)| {
                !valid
                    .iter()
                    .any(|a| a.container_id == o.container_id && a.ifname == o.ifname)
            })
            .map(|(ip, _)| *ip)
            .collect();
        if !stale.is_empty() {
            for ip in &stale {
                locked.state.allocations.remove(ip);
            }
            locked.save()?;
        }
        Ok(stale)
    }

    /// How many addresses are still free.
    pub fn free(&self) -> Result<u64, CniError> {
        let locked = self.lock()?;
        let total: u64 = self.ranges.iter().map(RangeSpec::size).sum();
        let used = locked
            .state
            .allocations
            .keys()
            .filter(|ip| self.range_of(**ip).is_some())
            .count() as u64;
        Ok(total.saturating_sub(used))
    }

    /// The network's directory (IPAM state, and the masquerade bookkeeping).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The allocations, by address.
    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, Owner>, CniError> {
        Ok(self.lock()?.state.allocations)
    }

    fn range_of(&self, ip: Ipv4Addr) -> Option<RangeSpec> {
        self.ranges.iter().copied().find(|r| r.allocatable(ip))
    }

    /// The first free address after the last one handed out, wrapping around the
    /// ranges in order (host-local's round robin: a released address is not reused
    /// at once). Walks positions in the ranges' concatenation lazily.
    fn next_free(&self, state: &State) -> Option<(Ipv4Addr, RangeSpec)> {
        let total: u64 = self.ranges.iter().map(span).sum();
        if total == 0 {
            return None;
        }
        let first = state
            .last_reserved
            .and_then(|ip| self.position(ip))
            .map_or(0, |p| p + 1);
        (0..total)
            .filter_map(|k| self.at((first + k) % total))
            .find(|(ip, range)| range.allocatable(*ip) && !state.allocations.contains_key(ip))
    }

    fn position(&self, ip: Ipv4Addr) -> Option<u64> {
        let mut base = 0;
        for r in &self.ranges {
            if ip >= r.start && ip <= r.end {
                return Some(base + u64::from(u32::from(ip) - u32::from(r.start)));
            }
            base += span(r);
        }
        None
    }

    fn at(&self, mut pos: u64) -> Option<(Ipv4Addr, RangeSpec)> {
        for r in &self.ranges {
            if pos < span(r) {
                let ip = Ipv4Addr::from(u32::from(r.start) + u32::try_from(pos).ok()?);
                return Some((ip, *r));
            }
            pos -= span(r);
        }
        None
    }

    fn describe_ranges(&self) -> String {
        self.ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn span(r: &RangeSpec) -> u64 {
    u64::from(u32::from(r.end)) - u64::from(u32::from(r.start)) + 1
}

impl Locked {
    fn save(&mut self) -> Result<(), CniError> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec(&self.state).map_err(|e| io_err("cannot encode", &self.path, e))?;
        fs::write(&tmp, bytes).map_err(|e| io_err("cannot write", &tmp, e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io_err("cannot replace", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ipam::IpamConf;

    fn store(dir: &Path, subnet_conf: serde_json::Value) -> Store {
        let conf = IpamConf::parse(&subnet_conf).expect("valid ipam");
        Store::new(dir, "net", conf.ranges)
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocates_round_robin_skipping_gateway_and_is_idempotent() {
        let dir = tempdir("rr");
        let s = store(&dir, json!({"subnet": "10.1.0.0/29"})); // .1 gw, .2-.6 usable
        let (a, _) = s.allocate("c1", "eth0").expect("alloc");
        assert_eq!(a.to_string(), "10.1.0.2/29");
        assert_eq!(
            s.allocate("c1", "eth0").expect("again").0,
            a,
            "same owner, same address"
        );
        let (b, _) = s.allocate("c2", "eth0").expect("alloc");
        assert_eq!(b.addr, Ipv4Addr::new(10, 1, 0, 3));
        assert_eq!(s.release("c1", "eth0").expect("release"), Some(a.addr));
        let (c, _) = s.allocate("c3", "eth0").expect("alloc");
        assert_eq!(
            c.addr,
            Ipv4Addr::new(10, 1, 0, 4),
            "a released address is not reused at once"
        );
        assert_eq!(s.release("nobody", "eth0").expect("release unknown"), None);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn exhaustion_is_error_101_and_wraps_after_release() {
        let dir = tempdir("full");
        let s = store(&dir, json!({"subnet": "10.2.0.0/29"}));
        for i in 0..5 {
            s.allocate(&format!("c{i}"), "eth0").expect("room");
        }
        assert_eq!(s.free().expect("free"), 0);
        assert_eq!(
            s.allocate("c9", "eth0").expect_err("full").code,
            code::RANGE_EXHAUSTED
        );
        s.release("c1", "eth0").expect("release");
        assert_eq!(
            s.allocate("c9", "eth0").expect("wraps").0.addr,
            Ipv4Addr::new(10, 2, 0, 3)
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let dir = tempdir("gc");
        let s = store(&dir, json!({"subnet": "10.3.0.0/24"}));
        for id in ["a", "b", "c"] {
            s.allocate(id, "eth0").expect("alloc");
        }
        let valid = [Attachment {
            container_id: "b".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(s.gc(&valid).expect("gc").len(), 2);
        let left: Vec<String> = s
            .allocations()
            .expect("read")
            .values()
            .map(|o| o.container_id.clone())
            .collect();
        assert_eq!(left, ["b"]);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn multiple_ranges_are_walked_in_order() {
        let dir = tempdir("multi");
        let s = store(
            &dir,
            json!({"ranges": [[
                {"subnet": "10.4.0.0/24", "rangeStart": "10.4.0.10", "rangeEnd": "10.4.0.11"},
                {"subnet": "10.4.1.0/24", "rangeStart": "10.4.1.10", "rangeEnd": "10.4.1.10"}
            ]]}),
        );
        let got: Vec<String> = (0..3)
            .map(|i| {
                s.allocate(&format!("c{i}"), "eth0")
                    .expect("alloc")
                    .0
                    .to_string()
            })
            .collect();
        assert_eq!(got, ["10.4.0.10/24", "10.4.0.11/24", "10.4.1.10/24"]);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempdir("par");
        let conf = IpamConf::parse(&json!({"subnet": "10.5.0.0/24"})).expect("valid");
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (dir, ranges) = (dir.clone(), conf.ranges.clone());
                std::thread::spawn(move || {
                    Store::new(&dir, "net", ranges)
                        .allocate(&format!("c{i}"), "eth0")
                        .expect("alloc")
                        .0
                        .addr
                })
            })
            .collect();
        let mut ips: Vec<Ipv4Addr> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 50, "50 owners must get 50 distinct addresses");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
