//! The store's write-ahead log: what makes a commit durable without redb's own
//! durable commit (two fsyncs and a page flush, ~1–2 ms here).
//!
//! Each commit group's changes to the redb tables are written as one record —
//! `[magic u32][epoch u64][len u32][crc32 u32][mutations]` — and `fdatasync`ed before the
//! redb transaction commits without durability and the group is acknowledged. The file
//! is preallocated (zero-filled to [`CHECKPOINT_BYTES`]) and written in place, so a sync
//! flushes data only, not the file size or block allocation (half the cost of
//! appending here). Every [`CHECKPOINT_EVERY`] (or [`CHECKPOINT_BYTES`] of log) the
//! writer makes redb durable together with a new *epoch* and starts writing from the top
//! of the file again. On open, the records of the current epoch are applied again from
//! the top: mutations are absolute (insert this value / remove this key), so replaying
//! them in order over any earlier state ends in the state the log describes. The first
//! record that is torn (bad checksum), of another epoch (left from before the last
//! checkpoint) or zeros ends the replay; a torn one was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::StoreError;

/// Make redb durable and start the log over at least this often… (each checkpoint
/// stalls writers for redb's durable commit, 50–100 ms here; replaying a full log on
/// open takes about a second)
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// …or when the log grows past this.
pub const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// One change to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    CurrentPut(String, Vec<u8>),
    CurrentDel(String),
    HistoryPut(String, i64, Vec<u8>),
    /// `history[(key, revision)]` = the record `current[key]` holds: a put's history
    /// entry logged without a second copy of its value (it follows its `CurrentPut`).
    HistoryFromCurrent(String, i64),
    HistoryDel(String, i64),
    LogPut(i64, Vec<u8>),
    LogDel(i64),
    LeasePut(i64, u64, u64),
    LeaseDel(i64),
    LeaseKeyPut(i64, String),
    LeaseKeyDel(i64, String),
    Meta(String, i64),
}

fn io(path: &Path, err: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{}: {err}", path.display()))
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Some(i64::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let n = u32::from_le_bytes(b) as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
}

impl Mutation {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Self::CurrentPut(k, v) => {
                w.u8(0);
                w.bytes(k.as_bytes());
                w.bytes(v);
            }
            Self::CurrentDel(k) => {
                w.u8(1);
                w.bytes(k.as_bytes());
            }
            Self::HistoryPut(k, r, v) => {
                w.u8(2);
                w.bytes(k.as_bytes());
                w.i64(*r);
                w.bytes(v);
            }
            Self::HistoryDel(k, r) => {
                w.u8(3);
                w.bytes(k.as_bytes());
                w.i64(*r);
            }
            Self::LogPut(r, v) => {
                w.u8(4);
                w.i64(*r);
                w.bytes(v);
            }
            Self::LogDel(r) => {
                w.u8(5);
                w.i64(*r);
            }
            Self::LeasePut(id, ttl, exp) => {
                w.u8(6);
                w.i64(*id);
                w.i64(*ttl as i64);
                w.i64(*exp as i64);
            }
            Self::LeaseDel(id) => {
                w.u8(7);
                w.i64(*id);
            }
            Self::LeaseKeyPut(id, k) => {
                w.u8(8);
                w.i64(*id);
                w.bytes(k.as_bytes());
            }
            Self::LeaseKeyDel(id, k) => {
                w.u8(9);
                w.i64(*id);
                w.bytes(k.as_bytes());
            }
            Self::Meta(k, v) => {
                w.u8(10);
                w.bytes(k.as_bytes());
                w.i64(*v);
            }
            Self::HistoryFromCurrent(k, r) => {
                w.u8(11);
                w.bytes(k.as_bytes());
                w.i64(*r);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(match r.u8()? {
            0 => Self::CurrentPut(r.string()?, r.bytes()?),
            1 => Self::CurrentDel(r.string()?),
            2 => Self::HistoryPut(r.string()?, r.i64()?, r.bytes()?),
            3 => Self::HistoryDel(r.string()?, r.i64()?),
            4 => Self::LogPut(r.i64()?, r.bytes()?),
            5 => Self::LogDel(r.i64()?),
            6 => Self::LeasePut(r.i64()?, r.i64()? as u64, r.i64()? as u64),
            7 => Self::LeaseDel(r.i64()?),
            8 => Self::LeaseKeyPut(r.i64()?, r.string()?),
            9 => Self::LeaseKeyDel(r.i64()?, r.string()?),
            10 => Self::Meta(r.string()?, r.i64()?),
            11 => Self::HistoryFromCurrent(r.string()?, r.i64()?),
            _ => return None,
        })
    }
}

const MAGIC: u32 = 0xB3A7_0A1E;
const HEADER: usize = 4 + 8 + 4 + 4;

/// The mutations of every record of `epoch` at the top of `data` (a log file's
/// contents), and where the next record goes.
fn parse(path: &Path, data: &[u8], epoch: u64) -> (Vec<Mutation>, usize) {
    let mut mutations = Vec::new();
    let mut at = 0usize;
    while let Some(header) = data.get(at..at + HEADER) {
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[i..i + 4]);
            u32::from_le_bytes(b)
        };
        let mut e = [0u8; 8];
        e.copy_from_slice(&header[4..12]);
        let (magic, rec_epoch, len, crc) = (word(0), u64::from_le_bytes(e), word(12), word(16));
        if magic != MAGIC || rec_epoch != epoch {
            break;
        }
        let Some(payload) = data.get(at + HEADER..at + HEADER + len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            tracing::warn!(path = %path.display(), offset = at, "store log ends in a torn record (never acknowledged)");
            break;
        }
        let mut reader = Reader(payload);
        while !reader.0.is_empty() {
            match Mutation::decode(&mut reader) {
                Some(m) => mutations.push(m),
                None => break,
            }
        }
        at += HEADER + len as usize;
    }
    (mutations, at)
}

/// The mutations [`Wal::open`] would replay for `epoch`, read without writing the
/// file (none when there is no file): how another process reads a store it must not
/// change (`berth-server migrate`).
pub fn read(path: &Path, epoch: u64) -> Result<Vec<Mutation>, StoreError> {
    match std::fs::read(path) {
        Ok(data) => Ok(parse(path, &data, epoch).0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path, e)),
    }
}

/// The log file.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    /// Where the next record goes.
    offset: u64,
    epoch: u64,
}

impl Wal {
    /// Opens the log, zero-filling it to its preallocated size if it is smaller, and
    /// returns the mutations of every record of `epoch` at its top.
    pub fn open(path: &Path, epoch: u64) -> Result<(Self, Vec<Mutation>), StoreError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(|e| io(path, e))?;
        let (mutations, at) = parse(path, &data, epoch);
        if (data.len() as u64) < CHECKPOINT_BYTES {
            // Preallocate with real zeros (not a sparse hole) once.
            let zeros = vec![0u8; (CHECKPOINT_BYTES as usize) - data.len()];
            file.seek(SeekFrom::End(0))
                .and_then(|_| file.write_all(&zeros))
                .and_then(|()| file.sync_all())
                .map_err(|e| io(path, e))?;
        }
        Ok((
            Self {
                path: path.into(),
                file,
                offset: at as u64,
                epoch,
            },
            mutations,
        ))
    }

    /// Writes one record after the last and makes it durable.
    pub fn append(&mut self, mutations: &[Mutation]) -> Result<(), StoreError> {
        let mut record = Vec::with_capacity(HEADER + 256);
        record.extend_from_slice(&MAGIC.to_le_bytes());
        record.extend_from_slice(&self.epoch.to_le_bytes());
        record.extend_from_slice(&[0u8; 8]);
        for m in mutations {
            m.encode(&mut record);
        }
        let len = (record.len() - HEADER) as u32;
        let crc = crc32fast::hash(&record[HEADER..]);
        record[12..16].copy_from_slice(&len.to_le_bytes());
        record[16..20].copy_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&record, self.offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| io(&self.path, e))?;
        self.offset += record.len() as u64;
        Ok(())
    }

    /// Bytes written in this epoch.
    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts `epoch` at the top of the file; the caller made redb durable with this
    /// epoch recorded, so the records of the old one are never replayed again.
    pub fn restart(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.offset = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_by_epoch_and_a_torn_tail_is_dropped() {
        let path = std::env::temp_dir().join(format!("berth-wal-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let all = vec![
            Mutation::CurrentPut("/a".into(), b"v".to_vec()),
            Mutation::HistoryPut("/a".into(), 1, b"v".to_vec()),
            Mutation::LogPut(1, b"l".to_vec()),
            Mutation::Meta("revision".into(), 1),
            Mutation::LeasePut(3, 1000, 2000),
            Mutation::LeaseKeyDel(3, "/a".into()),
            Mutation::CurrentDel("/b".into()),
        ];
        let end = {
            let (mut wal, replay) = Wal::open(&path, 7).expect("open");
            assert!(replay.is_empty());
            wal.append(&all[..3]).expect("append");
            wal.append(&all[3..]).expect("append");
            wal.size()
        };
        // A crash in the middle of a third record.
        let torn = [
            MAGIC.to_le_bytes().as_slice(),
            &7u64.to_le_bytes(),
            &[200, 0, 0, 0, 1, 2],
        ]
        .concat();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&torn, end))
            .expect("torn write");
        let (mut wal, replay) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(replay, all);
        assert_eq!(wal.size(), end, "new records go after the last good one");
        // After a checkpoint (epoch 8) the old records are not replayed, even where
        // the new epoch has not overwritten them.
        wal.restart(8);
        wal.append(&all[6..]).expect("append");
        let (_, replay) = Wal::open(&path, 8).expect("reopen");
        assert_eq!(replay, all[6..].to_vec());
        std::fs::remove_file(&path).expect("cleanup");
    }
}
