//! Service cluster IPs and node ports shared by every berth-server on one store, as
//! kube-apiserver keeps them: each range is one `RangeAllocation` in the store —
//! `/registry/ranges/serviceips` and `/registry/ranges/servicenodeports` in etcd —
//! whose `data` is the allocation bitmap (bit *n* set: the range's *n*-th value is
//! taken; big-endian, leading zero bytes left out, as Go's `big.Int.Bytes()` writes
//! it). A value is taken by a compare-and-swap write that sets its bit only if it is
//! still clear, and given back by one that clears it, so two servers never hand out
//! the same address or port.
//!
//! Which values to take is [`Allocator`]'s computation, run over the
//! bitmaps as the store holds them. A value taken for a Service that was then not
//! stored (a server killed between the two writes) is a leak; [`ServiceRanges::repair`]
//! (at start and every three minutes, as upstream's repair controllers) sets the bits
//! of every stored Service and clears a bit no Service holds once it has been seen
//! leaked three times in a row.
//!
//! Entry points: [`ServiceRanges::allocate`], [`ServiceRanges::update`] then
//! [`ServiceRanges::commit`] or [`ServiceRanges::abort`], [`ServiceRanges::release`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::service_ips::{Allocator, NODE_PORTS, SERVICE_CIDR};
use crate::apiserver::status::Cause;
use crate::store::{Revision, Store, StoreError};

/// The cluster IP range's allocation (etcd: `/registry/ranges/serviceips`).
pub const IPS_KEY: &str = "/registry/core/ranges/serviceips";
/// The node port range's allocation (etcd: `/registry/ranges/servicenodeports`).
pub const PORTS_KEY: &str = "/registry/core/ranges/servicenodeports";
const SERVICES: &str = "/registry/core/services/";
/// How often the ranges are checked against the Services (upstream: 3 minutes).
pub const REPAIR_INTERVAL: Duration = Duration::from_secs(180);
/// Repairs that must find a value leaked before it is freed (upstream's
/// `numRepairsBeforeLeakCleanup`).
const LEAK_REPAIRS: u32 = 3;
/// Compare-and-swap attempts before a write gives up with 503.
const ATTEMPTS: usize = 16;

/// Why an allocation failed: the Service asks for what it cannot have (422), or the
/// store failed.
#[derive(Debug)]
pub enum AllocError {
    Invalid(Vec<Cause>),
    Store(StoreError),
}

impl From<StoreError> for AllocError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// One of the two ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Ips,
    Ports,
}

impl Range {
    fn key(self) -> &'static str {
        match self {
            Range::Ips => IPS_KEY,
            Range::Ports => PORTS_KEY,
        }
    }
}

/// What an update took and what it gives up once written.
#[derive(Debug, Default)]
pub struct Change {
    taken_ips: BTreeSet<u32>,
    taken_ports: BTreeSet<u32>,
    freed_ips: BTreeSet<u32>,
    freed_ports: BTreeSet<u32>,
}

/// See the module docs.
#[derive(Debug)]
pub struct ServiceRanges {
    store: Arc<dyn Store>,
    network: Ipv4Addr,
    prefix: u8,
    /// Where this server's next address search starts (a hint; the store decides).
    next_ip: AtomicU32,
    /// Values found leaked, and by how many repairs in a row.
    leaks: Mutex<BTreeMap<(u8, u32), u32>>,
}

/// A range's bitmap as stored, and the revision to swap it at (`None`: no such key).
#[derive(Debug, Default)]
struct Stored {
    bits: BTreeSet<u32>,
    revision: Option<Revision>,
}

impl ServiceRanges {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            network: SERVICE_CIDR.0,
            prefix: SERVICE_CIDR.1,
            next_ip: AtomicU32::new(2),
            leaks: Mutex::default(),
        }
    }

    fn allocator(&self, ips: &BTreeSet<u32>, ports: &BTreeSet<u32>) -> Allocator {
        let base = u32::from(self.network);
        Allocator::with_used(
            self.network,
            self.prefix,
            ips.iter().map(|o| base + 1 + o).collect(),
            ports
                .iter()
                .filter_map(|o| u16::try_from(o + u32::from(*NODE_PORTS.start())).ok())
                .collect(),
            self.next_ip.load(Ordering::Relaxed),
        )
    }

    /// The `kubernetes` Service's address.
    pub fn first(&self) -> Ipv4Addr {
        Allocator::new(self.network, self.prefix).first()
    }

    /// The cluster DNS Service's address.
    pub fn dns(&self) -> Ipv4Addr {
        Allocator::new(self.network, self.prefix).dns()
    }

    /// Bit offsets of addresses (`base + 1 + offset`, upstream's) and ports.
    fn ip_offsets(&self, ips: &BTreeSet<u32>) -> BTreeSet<u32> {
        let base = u32::from(self.network) + 1;
        ips.iter().filter_map(|ip| ip.checked_sub(base)).collect()
    }

    fn port_offsets(ports: &BTreeSet<u16>) -> BTreeSet<u32> {
        ports
            .iter()
            .filter_map(|p| p.checked_sub(*NODE_PORTS.start()).map(u32::from))
            .collect()
    }

    /// Gives `svc` a cluster IP and node ports where it needs them, taken in the store
    /// (a `dry_run` only checks and fills them in). On error nothing stays taken.
    pub async fn allocate(&self, svc: &mut Value, dry_run: bool) -> Result<(), AllocError> {
        for _ in 0..ATTEMPTS {
            let (ips, ports) = (self.load(Range::Ips).await?, self.load(Range::Ports).await?);
            let alloc = self.allocator(&ips.bits, &ports.bits);
            let mut candidate = svc.clone();
            alloc
                .allocate(&mut candidate)
                .map_err(AllocError::Invalid)?;
            let (now_ips, now_ports, next) = alloc.used();
            let taken_ips = diff(&self.ip_offsets(&now_ips), &ips.bits);
            let taken_ports = diff(&Self::port_offsets(&now_ports), &ports.bits);
            if dry_run || self.claim(&taken_ips, &taken_ports).await? {
                self.next_ip.store(next, Ordering::Relaxed);
                *svc = candidate;
                return Ok(());
            }
        }
        Err(contended())
    }

    /// Allocates and frees for an update from `old` to `new` (see
    /// [`Allocator::update`]), filling `new`'s values in; what it takes is taken in the
    /// store, what it frees is freed by [`ServiceRanges::commit`] (a `dry_run` takes and
    /// frees nothing).
    pub async fn update(
        &self,
        old: &Value,
        new: &mut Value,
        dry_run: bool,
    ) -> Result<Change, AllocError> {
        for _ in 0..ATTEMPTS {
            let (ips, ports) = (self.load(Range::Ips).await?, self.load(Range::Ports).await?);
            let alloc = self.allocator(&ips.bits, &ports.bits);
            let mut candidate = new.clone();
            let local = alloc
                .update(old, &mut candidate)
                .map_err(AllocError::Invalid)?;
            let (now_ips, now_ports, next) = alloc.used();
            let change = Change {
                taken_ips: diff(&self.ip_offsets(&now_ips), &ips.bits),
                taken_ports: diff(&Self::port_offsets(&now_ports), &ports.bits),
                freed_ips: self.ip_offsets(&local.freed_ip().into_iter().collect()),
                freed_ports: Self::port_offsets(&local.freed_ports().iter().copied().collect()),
            };
            if dry_run {
                *new = candidate;
                return Ok(Change::default());
            }
            if self.claim(&change.taken_ips, &change.taken_ports).await? {
                self.next_ip.store(next, Ordering::Relaxed);
                *new = candidate;
                return Ok(change);
            }
        }
        Err(contended())
    }

    /// The update was written: frees what it gave up.
    pub async fn commit(&self, change: &Change) {
        self.free(&change.freed_ips, &change.freed_ports).await;
    }

    /// The update was not written: gives back what it took.
    pub async fn abort(&self, change: &Change) {
        self.free(&change.taken_ips, &change.taken_ports).await;
    }

    /// Frees what `svc` held (it was deleted, or its create was not written).
    pub async fn release(&self, svc: &Value) {
        let (ips, ports) = held(svc);
        self.free(&self.ip_offsets(&ips), &Self::port_offsets(&ports))
            .await;
    }

    async fn free(&self, ips: &BTreeSet<u32>, ports: &BTreeSet<u32>) {
        for (range, bits) in [(Range::Ips, ips), (Range::Ports, ports)] {
            if bits.is_empty() {
                continue;
            }
            let cleared = self
                .modify(range, |set| {
                    for b in bits {
                        set.remove(b);
                    }
                    true
                })
                .await;
            if let Err(err) = cleared {
                // Left taken: the repair frees it once no Service holds it.
                tracing::warn!(%err, key = range.key(), "freeing service range values failed");
            }
        }
    }

    /// Sets `ips` and `ports` only if all are still clear; `false` (nothing taken) if
    /// one is not.
    async fn claim(&self, ips: &BTreeSet<u32>, ports: &BTreeSet<u32>) -> Result<bool, StoreError> {
        if !ips.is_empty() && !self.modify(Range::Ips, set_all(ips)).await? {
            return Ok(false);
        }
        if !ports.is_empty() {
            let claimed = self.modify(Range::Ports, set_all(ports)).await;
            if !matches!(claimed, Ok(true)) {
                self.free(ips, &BTreeSet::new()).await;
                return claimed;
            }
        }
        Ok(true)
    }

    /// The range as stored; a range not stored yet is made first by a repair (so a
    /// store that has Services from before the ranges were kept starts with their
    /// values taken).
    async fn load(&self, range: Range) -> Result<Stored, StoreError> {
        match self.read(range).await? {
            Some(stored) => Ok(stored),
            None => {
                self.repair_range(range, &self.held_by_services().await?)
                    .await?;
                Ok(self.read(range).await?.unwrap_or_default())
            }
        }
    }

    async fn read(&self, range: Range) -> Result<Option<Stored>, StoreError> {
        let Some(kv) = self.store.get(range.key(), None).await? else {
            return Ok(None);
        };
        let value: Value = serde_json::from_slice(&kv.value).map_err(|e| {
            StoreError::Backend(format!("{}: not a RangeAllocation: {e}", range.key()))
        })?;
        let data = value.get("data").and_then(Value::as_str).unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| StoreError::Backend(format!("{}: data: {e}", range.key())))?;
        Ok(Some(Stored {
            bits: decode_bitmap(&bytes),
            revision: Some(kv.mod_revision),
        }))
    }

    /// Applies `change` to the stored bitmap with compare-and-swap, reading it again
    /// after a conflict; `change` returning `false` stops without writing.
    async fn modify(
        &self,
        range: Range,
        mut change: impl FnMut(&mut BTreeSet<u32>) -> bool,
    ) -> Result<bool, StoreError> {
        for _ in 0..ATTEMPTS {
            let stored = self.read(range).await?.unwrap_or_default();
            let mut bits = stored.bits.clone();
            if !change(&mut bits) {
                return Ok(false);
            }
            if bits == stored.bits && stored.revision.is_some() {
                return Ok(true);
            }
            let value = self.encode(range, &bits);
            let written = match stored.revision {
                Some(rev) => self.store.update(range.key().into(), value, rev).await,
                None => self.store.create(range.key().into(), value, None).await,
            };
            match written {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })
                | Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{}: too many concurrent changes",
            range.key()
        )))
    }

    /// The RangeAllocation object kube-apiserver stores.
    fn encode(&self, range: Range, bits: &BTreeSet<u32>) -> Vec<u8> {
        let text = match range {
            Range::Ips => format!("{}/{}", self.network, self.prefix),
            Range::Ports => format!("{}-{}", NODE_PORTS.start(), NODE_PORTS.end()),
        };
        let object = json!({
            "kind": "RangeAllocation",
            "apiVersion": "v1",
            "metadata": {"creationTimestamp": null},
            "range": text,
            "data": base64::engine::general_purpose::STANDARD.encode(encode_bitmap(bits)),
        });
        serde_json::to_vec(&object).unwrap_or_default()
    }

    /// The values every stored Service holds (addresses, ports), read from the store.
    async fn held_by_services(&self) -> Result<(BTreeSet<u32>, BTreeSet<u16>), StoreError> {
        let listed = self.store.list(SERVICES, Default::default()).await?;
        let mut ips = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for kv in listed.kvs {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let (i, p) = held(&svc);
            ips.extend(i);
            ports.extend(p);
        }
        Ok((ips, ports))
    }

    /// Checks both ranges against the Services (see the module docs).
    pub async fn repair(&self) -> Result<(), StoreError> {
        for range in [Range::Ips, Range::Ports] {
            // The bitmap is read before the Services are listed and written with
            // compare-and-swap on that read: any allocation or release in between
            // makes the write fail, and the repair starts over.
            for attempt in 0.. {
                let stored = self.read(range).await?;
                let held = self.held_by_services().await?;
                match self.repair_with(range, stored, &held).await {
                    Ok(()) => break,
                    Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })
                        if attempt + 1 < ATTEMPTS => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn repair_range(
        &self,
        range: Range,
        held: &(BTreeSet<u32>, BTreeSet<u16>),
    ) -> Result<(), StoreError> {
        let stored = self.read(range).await?;
        match self.repair_with(range, stored, held).await {
            // Another server made or changed it meanwhile: theirs stands.
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn repair_with(
        &self,
        range: Range,
        stored: Option<Stored>,
        held: &(BTreeSet<u32>, BTreeSet<u16>),
    ) -> Result<(), StoreError> {
        let want = match range {
            Range::Ips => self.ip_offsets(&held.0),
            Range::Ports => Self::port_offsets(&held.1),
        };
        let tag = range as u8;
        let (mut bits, revision) = match stored {
            Some(s) => (s.bits, s.revision),
            None => (BTreeSet::new(), None),
        };
        let before = bits.clone();
        {
            let mut leaks = self
                .leaks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            leaks.retain(|(t, v), _| *t != tag || (bits.contains(v) && !want.contains(v)));
            for leaked in bits.difference(&want).copied().collect::<Vec<_>>() {
                let seen = leaks.entry((tag, leaked)).or_insert(0);
                *seen += 1;
                if *seen >= LEAK_REPAIRS {
                    tracing::info!(
                        key = range.key(),
                        offset = leaked,
                        "freeing a leaked service range value"
                    );
                    bits.remove(&leaked);
                    leaks.remove(&(tag, leaked));
                }
            }
        }
        bits.extend(want.iter().copied());
        if revision.is_some() && bits == before {
            return Ok(());
        }
        let value = self.encode(range, &bits);
        match revision {
            Some(rev) => self.store.update(range.key().into(), value, rev).await?,
            None => self.store.create(range.key().into(), value, None).await?,
        };
        Ok(())
    }
}

/// Runs [`ServiceRanges::repair`] every [`REPAIR_INTERVAL`].
pub async fn repair_periodically(ranges: Arc<ServiceRanges>) {
    loop {
        tokio::time::sleep(REPAIR_INTERVAL).await;
        if let Err(err) = ranges.repair().await {
            tracing::warn!(%err, "repairing the service ranges failed");
        }
    }
}

/// Sets every bit of `bits` if none is set yet.
fn set_all(bits: &BTreeSet<u32>) -> impl FnMut(&mut BTreeSet<u32>) -> bool + '_ {
    move |set| {
        if bits.iter().any(|b| set.contains(b)) {
            return false;
        }
        set.extend(bits.iter().copied());
        true
    }
}

fn contended() -> AllocError {
    AllocError::Store(StoreError::Unavailable(
        "the service ranges are changing too fast; try again".into(),
    ))
}

fn diff(now: &BTreeSet<u32>, before: &BTreeSet<u32>) -> BTreeSet<u32> {
    now.difference(before).copied().collect()
}

/// The address and node ports a Service holds.
fn held(svc: &Value) -> (BTreeSet<u32>, BTreeSet<u16>) {
    let ips = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .into_iter()
        .collect();
    let mut ports: BTreeSet<u16> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    if let Some(hc) = svc
        .pointer("/spec/healthCheckNodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
    {
        ports.insert(hc);
    }
    (ips, ports)
}

/// Go's `big.Int.Bytes()` of the bitmap: big-endian, no leading zero bytes.
fn encode_bitmap(bits: &BTreeSet<u32>) -> Vec<u8> {
    let Some(&max) = bits.last() else {
        return Vec::new();
    };
    let len = max as usize / 8 + 1;
    let mut out = vec![0u8; len];
    for &b in bits {
        out[len - 1 - b as usize / 8] |= 1 << (b % 8);
    }
    out
}

fn decode_bitmap(bytes: &[u8]) -> BTreeSet<u32> {
    let mut bits = BTreeSet::new();
    for (i, byte) in bytes.iter().rev().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                bits.insert(i as u32 * 8 + bit);
            }
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> (ServiceRanges, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::store::redb::RedbStore::open(&dir.path().join("s.redb")).expect("store");
        (ServiceRanges::new(Arc::new(store)), dir)
    }

    #[test]
    fn bitmaps_are_big_endian_without_leading_zero_bytes() {
        let bits: BTreeSet<u32> = [0, 9].into_iter().collect();
        assert_eq!(encode_bitmap(&bits), vec![0b10, 0b1]);
        assert_eq!(decode_bitmap(&[0, 0b10, 0b1]), bits);
        assert!(encode_bitmap(&BTreeSet::new()).is_empty());
    }

    #[tokio::test]
    async fn two_servers_on_one_store_never_hand_out_a_value_twice() {
        let (a, _dir) = ranges();
        let b = ServiceRanges::new(a.store.clone());
        let mut seen_ips = BTreeSet::new();
        let mut seen_ports = BTreeSet::new();
        for i in 0..20 {
            let server = if i % 2 == 0 { &a } else { &b };
            let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
            server.allocate(&mut svc, false).await.expect("allocate");
            let (ips, ports) = held(&svc);
            assert!(seen_ips.insert(ips), "an address handed out twice");
            assert!(seen_ports.insert(ports), "a node port handed out twice");
        }
        // A value taken through one server is refused through the other.
        let taken = seen_ips
            .iter()
            .next()
            .and_then(|s| s.iter().next())
            .copied();
        let ip = Ipv4Addr::from(taken.expect("an address")).to_string();
        let mut again = json!({"spec": {"clusterIP": ip, "ports": [{"port": 1}]}});
        assert!(matches!(
            b.allocate(&mut again, false).await,
            Err(AllocError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn released_values_are_free_again_and_repair_frees_leaks() {
        let (a, _dir) = ranges();
        let mut svc = json!({"spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 1}]}});
        a.allocate(&mut svc, false).await.expect("allocate");
        let mut same = svc.clone();
        assert!(a.allocate(&mut same, false).await.is_err(), "taken");
        a.release(&svc).await;
        let mut same = svc.clone();
        a.allocate(&mut same, true).await.expect("a dry run");
        a.allocate(&mut same, false)
            .await
            .expect("free after release");
        // No Service holds it: a leak, freed by the third repair.
        for _ in 0..LEAK_REPAIRS {
            let stored = a.read(Range::Ips).await.expect("read").expect("stored");
            assert!(!stored.bits.is_empty());
            a.repair().await.expect("repair");
        }
        let stored = a.read(Range::Ips).await.expect("read").expect("stored");
        assert!(stored.bits.is_empty(), "leak freed: {:?}", stored.bits);
    }
}
