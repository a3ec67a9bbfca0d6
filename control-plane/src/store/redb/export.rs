//! Reading the embedded store of a data dir from another process, without changing a
//! byte of it: what `berth-server migrate --to-etcd` copies ([`crate::store::migrate`]).
//!
//! The live keys are what a server starting on the data dir would serve: the redb file
//! as its last durable commit left it, with the write-ahead log ([`crate::store::wal`])
//! replayed over it. A server that was killed — or stopped with SIGTERM, which exits
//! without closing the store — leaves a file redb must repair before it can be read, and
//! its last writes only in the log; both are done here in memory, never in the files:
//! redb reads the file through [`CopyOnWrite`], a storage backend that keeps every page
//! redb writes in memory.
//!
//! The file is locked as a server locks it (redb's exclusive whole-file lock) for as
//! long as [`Contents`] lives, so this refuses a store a server has open
//! ([`ExportError::InUse`]) and no server can open it meanwhile.
//!
//! Entry point: [`read`].

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend};

use super::snapshot::{STORE_FILE, WAL_FILE};
use super::{
    CURRENT, LEASES, META, META_REVISION, META_WAL_EPOCH, STORE_CACHE_BYTES, Tables, backend,
    decode_current, meta_get,
};
use crate::store::{KeyValue, LeaseId, Revision, StoreError, wal};

/// Why the store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{dir} holds no embedded store ({file} does not exist)")]
    NoStore { dir: PathBuf, file: PathBuf },
    #[error(
        "{file} is in use: a berth-server is running on {dir} (it locks the store); stop it first"
    )]
    InUse { dir: PathBuf, file: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
}

/// A lease of the store: keys attached to it are deleted when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The TTL it was granted (or last renewed) with.
    pub ttl: Duration,
    /// When it expires (unix ms).
    pub expires_unix_ms: u64,
}

/// Everything live in the store, as a server starting on it would see it.
#[derive(Debug)]
pub struct Contents {
    /// The store's revision.
    pub revision: Revision,
    /// Every live key, in key order.
    pub kvs: Vec<KeyValue>,
    /// Every lease not yet revoked (some may have expired while no server ran).
    pub leases: BTreeMap<LeaseId, Lease>,
    /// Holds the store's lock until dropped.
    _lock: Database,
}

/// Reads the store in `dir` (see the module docs).
pub fn read(dir: &Path) -> Result<Contents, ExportError> {
    let path = dir.join(STORE_FILE);
    let store = |source: StoreError| ExportError::Store {
        path: path.clone(),
        source,
    };
    // Read-write only because an exclusive lock needs a writable descriptor; nothing
    // is written through it.
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ExportError::NoStore {
                dir: dir.to_owned(),
                file: path,
            });
        }
        Err(source) => return Err(ExportError::Io { path, source }),
    };
    let file_len = file
        .metadata()
        .map_err(|source| ExportError::Io {
            path: path.clone(),
            source,
        })?
        .len();
    let backend_of = FileBackend::new(file).map_err(|e| store(backend(e)))?;
    let db = Database::builder()
        .set_cache_size(STORE_CACHE_BYTES)
        .create_with_backend(CopyOnWrite::new(backend_of, file_len))
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => ExportError::InUse {
                dir: dir.to_owned(),
                file: path.clone(),
            },
            other => store(backend(other)),
        })?;
    replay(&db, &dir.join(WAL_FILE)).map_err(store)?;
    let (revision, kvs, leases) = live(&db).map_err(store)?;
    Ok(Contents {
        revision,
        kvs,
        leases,
        _lock: db,
    })
}

/// Replays the log over `db`, as [`super::RedbStore::open`] does (in memory here).
fn replay(db: &Database, log: &Path) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::None).map_err(backend)?;
    {
        let mut tables = Tables::open(&txn)?;
        let epoch = meta_get(&tables.meta, META_WAL_EPOCH)?;
        let mutations = wal::read(log, epoch as u64)?;
        if !mutations.is_empty() {
            tracing::info!(mutations = mutations.len(), "replaying the store log");
        }
        for m in &mutations {
            tables.apply_mutation(m)?;
        }
    }
    txn.commit().map_err(backend)
}

type Live = (Revision, Vec<KeyValue>, BTreeMap<LeaseId, Lease>);

/// The revision, the live keys and the leases, from one read transaction.
fn live(db: &Database) -> Result<Live, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let revision = meta_get(&txn.open_table(META).map_err(backend)?, META_REVISION)?;
    let mut kvs = Vec::new();
    for entry in txn
        .open_table(CURRENT)
        .map_err(backend)?
        .iter()
        .map_err(backend)?
    {
        let (k, v) = entry.map_err(backend)?;
        let (mod_revision, record) = decode_current(v.value())?;
        if let Some(kv) = record.into_kv(k.value(), mod_revision) {
            kvs.push(kv);
        }
    }
    let mut leases = BTreeMap::new();
    for entry in txn
        .open_table(LEASES)
        .map_err(backend)?
        .iter()
        .map_err(backend)?
    {
        let (id, v) = entry.map_err(backend)?;
        let (ttl_ms, expires_unix_ms) = v.value();
        leases.insert(
            id.value(),
            Lease {
                ttl: Duration::from_millis(ttl_ms),
                expires_unix_ms,
            },
        );
    }
    Ok((revision, kvs, leases))
}

/// Bytes per block of [`CopyOnWrite`]'s memory (redb's page size).
const BLOCK: u64 = 4096;

/// A redb storage backend over a file that is never written: reads come from the
/// blocks written so far, else from the file; writes, length changes and syncs stay
/// in memory. Locks are the file's (`FileBackend`'s), so redb's locking works as on
/// the file itself.
#[derive(Debug)]
struct CopyOnWrite {
    file: FileBackend,
    /// The file's length (it does not change: nothing writes it while locked).
    file_len: u64,
    overlay: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb set.
    len: u64,
    /// File bytes from here on read as zeros: the storage was shortened to here once.
    zero_from: u64,
    /// The blocks written, by index.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl CopyOnWrite {
    fn new(file: FileBackend, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            overlay: Mutex::new(Overlay {
                len: file_len,
                zero_from: file_len,
                blocks: HashMap::new(),
            }),
        }
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file's bytes at `at` into `out`, zeros past `zero_from` or its end.
    fn read_file(&self, zero_from: u64, at: u64, out: &mut [u8]) -> std::io::Result<()> {
        let end = zero_from.min(self.file_len);
        let n = usize::try_from(end.saturating_sub(at))
            .unwrap_or(usize::MAX)
            .min(out.len());
        if n > 0 {
            self.file.read(at, &mut out[..n])?;
        }
        out[n..].fill(0);
        Ok(())
    }
}

impl StorageBackend for CopyOnWrite {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.overlay().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let overlay = self.overlay();
        let end = offset + out.len() as u64;
        if end > overlay.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read of {offset}..{end} past the end ({})", overlay.len),
            ));
        }
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let block_end = ((index + 1) * BLOCK).min(end);
            let from = (at - offset) as usize;
            if let Some(block) = overlay.blocks.get(&index) {
                let within = (at - index * BLOCK) as usize;
                let n = (block_end - at) as usize;
                out[from..from + n].copy_from_slice(&block[within..within + n]);
                at = block_end;
                continue;
            }
            // A run of blocks never written: one read of the file.
            let mut run_end = block_end;
            while run_end < end && !overlay.blocks.contains_key(&(run_end / BLOCK)) {
                run_end = ((run_end / BLOCK + 1) * BLOCK).min(end);
            }
            let to = (run_end - offset) as usize;
            self.read_file(overlay.zero_from, at, &mut out[from..to])?;
            at = run_end;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut overlay = self.overlay();
        if len < overlay.len {
            overlay.zero_from = overlay.zero_from.min(len);
            overlay.blocks.retain(|index, _| index * BLOCK < len);
            if let Some(block) = overlay.blocks.get_mut(&(len / BLOCK)) {
                block[(len % BLOCK) as usize..].fill(0);
            }
        }
        overlay.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut overlay = self.overlay();
        let zero_from = overlay.zero_from;
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let block = match overlay.blocks.entry(index) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut block = vec![0u8; BLOCK as usize].into_boxed_slice();
                    self.read_file(zero_from, index * BLOCK, &mut block)?;
                    e.insert(block)
                }
            };
            let within = (at - index * BLOCK) as usize;
            let n = ((BLOCK - within as u64).min(end - at)) as usize;
            let from = (at - offset) as usize;
            block[within..within + n].copy_from_slice(&data[from..from + n]);
            at += n as u64;
        }
        overlay.len = overlay.len.max(end);
        Ok(())
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests;
