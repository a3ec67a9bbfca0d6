//! Snapshots of the embedded store (`berth-server snapshot save|restore|status`): a
//! consistent copy of every table, taken from one redb read transaction while the
//! server goes on serving. A redb read transaction is a snapshot — it sees every commit
//! made before it began and nothing after — and a write is acknowledged only after its
//! commit (see the parent module), so every write acknowledged before the snapshot
//! began is in it, and no half of a commit group is. The copy is logical (table by
//! table, key by key), not the redb file: that file is written in place between
//! checkpoints and may not be copied while the writer runs, and redb allows one open
//! of it per process.
//!
//! Format, version 1, integers little-endian:
//!
//! ```text
//! header   "BERTHSNP" | version u32 | revision i64 | compacted i64 | keys u64 | taken unix ms u64
//! records  table u8 (1..=6) | key length u32 | key | value length u32 | value    (repeated)
//! end      0u8
//! trailer  SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! `keys` counts the live objects (`current`); the records also carry every version
//! still kept (`history`), the change log watches replay (`log`), the leases and the
//! revisions (`meta`), so a store restored from it answers reads and watches from the
//! same revisions. Values are copied as stored: Secrets encrypted at rest stay
//! encrypted, and the restored server needs the same encryption config to read them.
//!
//! Entry points: [`write`] (behind [`crate::store::Store::snapshot`]), [`status`] (reads
//! and verifies a file), [`restore`] (a data dir from a file).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use sha2::{Digest, Sha256};

use super::{
    CURRENT, HISTORY, LEASE_KEYS, LEASES, LOG, META, META_COMPACTED, META_REVISION, META_WAL_EPOCH,
    Tables, backend, meta_get,
};
use crate::store::wal::Mutation;
use crate::store::{Revision, StoreError};

/// The first bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"BERTHSNP";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// The store's files in a data dir (what `restore` writes and refuses to overwrite).
pub const STORE_FILE: &str = "store.redb";
pub const WAL_FILE: &str = "store.wal";

const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8;
const TRAILER_LEN: usize = 32;
/// Bytes of records restored per redb transaction (the last one is durable).
const RESTORE_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The tables, by their tag in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Current = 1,
    History = 2,
    Log = 3,
    Leases = 4,
    LeaseKeys = 5,
    Meta = 6,
}

impl Table {
    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => Self::Current,
            2 => Self::History,
            3 => Self::Log,
            4 => Self::Leases,
            5 => Self::LeaseKeys,
            6 => Self::Meta,
            _ => return None,
        })
    }
}

/// What a snapshot holds (`berth-server snapshot status`, like `etcdctl snapshot status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The store's revision when the snapshot was taken.
    pub revision: Revision,
    /// The oldest revision still readable in it.
    pub compacted: Revision,
    /// Live keys (objects).
    pub keys: u64,
    /// Every record: live keys, kept versions, change log, leases, meta.
    pub records: u64,
    /// The file's size in bytes.
    pub size: u64,
    /// SHA-256 of the file's contents (the trailer), hex.
    pub sha256: String,
    /// When it was taken (unix ms).
    pub taken_unix_ms: u64,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let taken = i64::try_from(self.taken_unix_ms)
            .ok()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .map_or_else(|| self.taken_unix_ms.to_string(), |t| t.to_string());
        writeln!(f, "revision:  {}", self.revision)?;
        writeln!(f, "compacted: {}", self.compacted)?;
        writeln!(f, "keys:      {}", self.keys)?;
        writeln!(
            f,
            "records:   {} (objects, their kept versions, the change log, leases)",
            self.records
        )?;
        writeln!(
            f,
            "size:      {} bytes ({:.1} MiB)",
            self.size,
            self.size as f64 / (1024.0 * 1024.0)
        )?;
        writeln!(f, "sha256:    {}", self.sha256)?;
        write!(f, "taken:     {taken}")
    }
}

/// Why a snapshot could not be read, written or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a berth snapshot (it does not start with {MAGIC:?})",
        MAGIC = "BERTHSNP"
    )]
    NotASnapshot { path: PathBuf },
    #[error("{path}: snapshot format version {found}; this berth-server reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: the file ends before the snapshot does (truncated at byte {at})")]
    Truncated { path: PathBuf, at: u64 },
    #[error(
        "{path}: checksum mismatch — the file is corrupt (SHA-256 of its contents {actual}, recorded {recorded})"
    )]
    Checksum {
        path: PathBuf,
        actual: String,
        recorded: String,
    },
    #[error("{path}: corrupt record at byte {at}: {what}")]
    Corrupt {
        path: PathBuf,
        at: u64,
        what: String,
    },
    #[error(
        "{dir} already holds a store ({file}); restore into an empty data dir, or give --force to replace it"
    )]
    StoreExists { dir: PathBuf, file: PathBuf },
    #[error("restoring into {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn record(out: &mut impl Write, table: Table, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let len = |n: usize| {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| std::io::Error::other("a record of more than 4 GiB"))
    };
    out.write_all(&[table as u8])?;
    out.write_all(&len(key.len())?)?;
    out.write_all(key)?;
    out.write_all(&len(value.len())?)?;
    out.write_all(value)
}

fn with_rev(rev: i64, s: &str) -> Vec<u8> {
    let mut k = rev.to_le_bytes().to_vec();
    k.extend_from_slice(s.as_bytes());
    k
}

/// Writes a snapshot of `db` to `out` from one read transaction; returns the revision it
/// holds. `out` sees the bytes as they are produced (the server streams them).
pub fn write(db: &Database, out: impl Write) -> Result<Revision, StoreError> {
    let io = |e: std::io::Error| StoreError::Backend(format!("writing the snapshot: {e}"));
    let txn = db.begin_read().map_err(backend)?;
    let current = txn.open_table(CURRENT).map_err(backend)?;
    let history = txn.open_table(HISTORY).map_err(backend)?;
    let log = txn.open_table(LOG).map_err(backend)?;
    let leases = txn.open_table(LEASES).map_err(backend)?;
    let lease_keys = txn.open_table(LEASE_KEYS).map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let revision = meta_get(&meta, META_REVISION)?;
    let compacted = meta_get(&meta, META_COMPACTED)?;
    let keys = current.len().map_err(backend)?;

    let mut out = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, out),
        hash: Sha256::new(),
    };
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&revision.to_le_bytes());
    header.extend_from_slice(&compacted.to_le_bytes());
    header.extend_from_slice(&keys.to_le_bytes());
    header.extend_from_slice(&now_ms().to_le_bytes());
    out.write_all(&header).map_err(io)?;

    for entry in current.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        record(&mut out, Table::Current, k.value().as_bytes(), v.value()).map_err(io)?;
    }
    for entry in history.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let (key, rev) = k.value();
        record(&mut out, Table::History, &with_rev(rev, key), v.value()).map_err(io)?;
    }
    for entry in log.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        record(&mut out, Table::Log, &k.value().to_le_bytes(), v.value()).map_err(io)?;
    }
    for entry in leases.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        let (ttl, expiry) = v.value();
        let mut value = ttl.to_le_bytes().to_vec();
        value.extend_from_slice(&expiry.to_le_bytes());
        record(&mut out, Table::Leases, &k.value().to_le_bytes(), &value).map_err(io)?;
    }
    for entry in lease_keys.iter().map_err(backend)? {
        let (k, _) = entry.map_err(backend)?;
        let (id, key) = k.value();
        record(&mut out, Table::LeaseKeys, &with_rev(id, key), &[]).map_err(io)?;
    }
    for entry in meta.iter().map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        // The log epoch belongs to the file the snapshot was taken from, not to the copy.
        if k.value() == META_WAL_EPOCH {
            continue;
        }
        let key = k.value().as_bytes();
        record(&mut out, Table::Meta, key, &v.value().to_le_bytes()).map_err(io)?;
    }
    out.write_all(&[0]).map_err(io)?;
    let digest = out.hash.finalize();
    let mut inner = out.inner;
    inner.write_all(&digest).map_err(io)?;
    inner.flush().map_err(io)?;
    Ok(revision)
}

/// A snapshot being read: hashes every byte, counts its position.
struct Reader<R> {
    inner: R,
    path: PathBuf,
    hash: Sha256,
    at: u64,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated {
                path: self.path.clone(),
                at: self.at,
            },
            _ => SnapshotError::Io {
                path: self.path.clone(),
                source: e,
            },
        })?;
        self.hash.update(&*buf);
        self.at += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let n = self.u32()? as usize;
        // Read in steps so a corrupt length cannot make us allocate gigabytes up front.
        let mut out = Vec::with_capacity(n.min(1 << 20));
        let mut chunk = [0u8; 64 * 1024];
        while out.len() < n {
            let take = (n - out.len()).min(chunk.len());
            self.exact(&mut chunk[..take])?;
            out.extend_from_slice(&chunk[..take]);
        }
        Ok(out)
    }

    fn corrupt(&self, what: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            at: self.at,
            what: what.into(),
        }
    }
}

fn split_rev(key: &[u8]) -> Option<(i64, String)> {
    if key.len() < 8 {
        return None;
    }
    let (rev, rest) = key.split_at(8);
    let rev = i64::from_le_bytes(rev.try_into().ok()?);
    Some((rev, String::from_utf8(rest.to_vec()).ok()?))
}

fn word(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(bytes.try_into().ok()?))
}

/// A record as the change that puts it in place — the same changes the write-ahead log
/// replays.
fn decode(table: Table, key: Vec<u8>, value: Vec<u8>) -> Option<Mutation> {
    Some(match table {
        Table::Current => Mutation::CurrentPut(String::from_utf8(key).ok()?, value),
        Table::History => {
            let (rev, key) = split_rev(&key)?;
            Mutation::HistoryPut(key, rev, value)
        }
        Table::Log => Mutation::LogPut(word(&key)?, value),
        Table::Leases => {
            if value.len() != 16 {
                return None;
            }
            let (ttl, expiry) = value.split_at(8);
            Mutation::LeasePut(word(&key)?, word(ttl)? as u64, word(expiry)? as u64)
        }
        Table::LeaseKeys => {
            let (id, key) = split_rev(&key)?;
            Mutation::LeaseKeyPut(id, key)
        }
        Table::Meta => Mutation::Meta(String::from_utf8(key).ok()?, word(&value)?),
    })
}

/// Reads the snapshot at `path` from start to end, handing each record to `each`, and
/// checks its checksum; returns what it holds. Nothing `each` did counts unless this
/// returns `Ok`.
fn read(
    path: &Path,
    mut each: impl FnMut(Mutation, usize) -> Result<(), SnapshotError>,
) -> Result<Status, SnapshotError> {
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    let mut r = Reader {
        inner: BufReader::with_capacity(256 * 1024, file),
        path: path.to_owned(),
        hash: Sha256::new(),
        at: 0,
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic).map_err(|e| match e {
        SnapshotError::Truncated { path, .. } => SnapshotError::NotASnapshot { path },
        other => other,
    })?;
    if &magic != MAGIC {
        return Err(SnapshotError::NotASnapshot {
            path: path.to_owned(),
        });
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let revision = r.u64()? as i64;
    let compacted = r.u64()? as i64;
    let keys = r.u64()?;
    let taken_unix_ms = r.u64()?;
    let mut records = 0u64;
    let mut live = 0u64;
    loop {
        let mut tag = [0u8; 1];
        r.exact(&mut tag)?;
        if tag[0] == 0 {
            break;
        }
        let table = Table::from_tag(tag[0])
            .ok_or_else(|| r.corrupt(format!("unknown table tag {}", tag[0])))?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        let size = key.len() + value.len();
        let m =
            decode(table, key, value).ok_or_else(|| r.corrupt(format!("bad {table:?} record")))?;
        records += 1;
        live += u64::from(table == Table::Current);
        each(m, size)?;
    }
    let actual = std::mem::take(&mut r.hash).finalize();
    let mut recorded = [0u8; TRAILER_LEN];
    r.inner
        .read_exact(&mut recorded)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated {
                path: path.to_owned(),
                at: r.at,
            },
            _ => SnapshotError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
    if actual.as_slice() != recorded {
        return Err(SnapshotError::Checksum {
            path: path.to_owned(),
            actual: hex(&actual),
            recorded: hex(&recorded),
        });
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest).map_or(true, |n| n != 0) {
        return Err(r.corrupt("bytes after the checksum"));
    }
    if live != keys {
        return Err(r.corrupt(format!("{live} live keys, the header says {keys}")));
    }
    Ok(Status {
        revision,
        compacted,
        keys,
        records,
        size,
        sha256: hex(&recorded),
        taken_unix_ms,
    })
}

/// Reads and verifies the snapshot at `path` (`berth-server snapshot status`).
pub fn status(path: &Path) -> Result<Status, SnapshotError> {
    read(path, |_, _| Ok(()))
}

/// Makes `dir` a data dir whose store is the snapshot at `path`, with every key at the
/// revision it had. Refuses a dir that already holds a store unless `force` (then that
/// store is replaced). Nothing in `dir` changes unless the whole snapshot verified: it
/// is restored into a file beside the store, renamed into place at the end. The rest of
/// a data dir (PKI, kubeconfigs) is left as it is; a server started on a dir without
/// them makes new ones.
pub fn restore(path: &Path, dir: &Path, force: bool) -> Result<Status, SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    let store = dir.join(STORE_FILE);
    let wal = dir.join(WAL_FILE);
    for file in [&store, &wal] {
        if file.exists() && !force {
            return Err(SnapshotError::StoreExists {
                dir: dir.to_owned(),
                file: file.clone(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Like the server's own: the store holds Secrets.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let partial = dir.join(format!("{STORE_FILE}.restoring"));
    let _ = std::fs::remove_file(&partial);
    let result = restore_into(path, &partial);
    let status = match result {
        Ok(status) => status,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(err);
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&partial))?;
    }
    // The old store's log would be replayed over the new store: it goes first.
    match std::fs::remove_file(&wal) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&wal)(e)),
    }
    std::fs::rename(&partial, &store).map_err(io(&store))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(status)
}

fn restore_into(path: &Path, file: &Path) -> Result<Status, SnapshotError> {
    let store_err = |source: StoreError| SnapshotError::Store {
        path: file.to_owned(),
        source,
    };
    let db = Database::builder()
        .create(file)
        .map_err(|e| store_err(backend(e)))?;
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let status = read(path, |m, size| {
        batch.push(m);
        bytes += size;
        if bytes >= RESTORE_BATCH_BYTES {
            apply(&db, &mut batch, Durability::None).map_err(store_err)?;
            bytes = 0;
        }
        Ok(())
    })?;
    // The last transaction makes the whole file durable; until then it is not in place.
    apply(&db, &mut batch, Durability::Immediate).map_err(store_err)?;
    Ok(status)
}

/// Applies (and empties) `batch` in one transaction, as the log is replayed on open.
fn apply(
    db: &Database,
    batch: &mut Vec<Mutation>,
    durability: Durability,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(durability).map_err(backend)?;
    {
        // Opening them creates every table, as in a store the server made.
        let mut tables = Tables::open(&txn)?;
        for m in batch.drain(..) {
            tables.apply_mutation(&m)?;
        }
    }
    txn.commit().map_err(backend)
}

#[cfg(test)]
mod tests;
