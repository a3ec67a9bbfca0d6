//! On-disk container state: one directory per container under the runtime root, holding
//! `state.json` (written to a temporary file, fsynced, renamed over the old one and the
//! directory fsynced, so a kill at any point leaves either the old or the new file) and,
//! for containers run under a monitor, `exit.json` written the same way.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error(
        "invalid container id {0:?}: use letters, digits, '_', '-', '.' (not starting with '.')"
    )]
    BadId(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the runtime remembers about a container between invocations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub id: String,
    /// Host PID of the container's first process.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// recycled PID is never mistaken for the container.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    pub cgroup: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Mounts the runtime made on the host for this container (overlay rootfs), removed
    /// on delete.
    #[serde(default)]
    pub host_mounts: Vec<PathBuf>,
    /// Whether a monitor process owns the container (it records `exit.json`).
    #[serde(default)]
    pub monitored: bool,
    /// Host PID of the monitor, when there is one.
    #[serde(default)]
    pub monitor_pid: i32,
}

/// How a container's first process ended, as recorded by its monitor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    /// Exit status as a shell reports it: the code, or 128 + signal.
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The cgroup's OOM killer fired.
    pub oom_killed: bool,
    /// Unix time in nanoseconds.
    pub finished_at_ns: i128,
}

/// The runtime's state root: `<root>/<id>/…`.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadId(id.to_string()))
    }
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Makes the container's directory; fails if the id is taken.
    pub fn reserve(&self, id: &str) -> Result<PathBuf, Error> {
        validate_id(id)?;
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let dir = self.container_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.to_string()))
            }
            Err(e) => Err(io(&dir)(e)),
        }
    }

    pub fn save(&self, state: &State) -> Result<(), Error> {
        let dir = self.container_dir(&state.id);
        let bytes = serde_json::to_vec(state).map_err(|source| Error::Corrupt {
            path: dir.clone(),
            source,
        })?;
        write_replace(&dir.join("state.json"), &bytes)
    }

    pub fn load(&self, id: &str) -> Result<State, Error> {
        validate_id(id)?;
        let path = self.container_dir(id).join("state.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt { path, source })
    }

    pub fn save_exit(&self, id: &str, exit: &Exit) -> Result<(), Error> {
        let dir = self.container_dir(id);
        let bytes = serde_json::to_vec(exit).map_err(|source| Error::Corrupt {
            path: dir.clone(),
            source,
        })?;
        write_replace(&dir.join("exit.json"), &bytes)
    }

    pub fn load_exit(&self, id: &str) -> Option<Exit> {
        let bytes = fs::read(self.container_dir(id).join("exit.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Ids of every container with a state file, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.ids_with_prefix("")
    }

    /// The ids starting with `prefix` (one pod's containers): names are matched before
    /// any `state.json` is looked at, so a pod's sync does not stat every container on
    /// the node.
    pub fn ids_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| id.starts_with(prefix))
            .filter(|id| self.dir.join(id).join("state.json").exists())
            .collect();
        ids.sort();
        ids
    }

    /// Removes the container's state directory. A monitor that is still ending may
    /// write its last state (a temporary file, then a rename) while the directory
    /// is being emptied, which makes the final rmdir fail with ENOTEMPTY: emptying
    /// is retried for up to a second, so a removal never loses that race.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let dir = self.container_dir(id);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io(&dir)(e)),
            }
        }
    }
}

/// Write `bytes` to `path` so that a crash leaves the old or the new content, never a mix:
/// temporary file in the same directory, fsync, rename, fsync of the directory. For what
/// must outlive the machine: the image store's records.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_renamed(path, bytes, true)
}

/// Write `bytes` to `path` so that a crash of this process or its caller leaves the old
/// or the new content (temporary file, rename), without syncing to disk. For state that
/// describes live processes — the runtime root's `state.json`, `exit.json`, pid files,
/// kept under `/run` as runc keeps its own — which a power loss ends anyway; the two
/// fsyncs of [`write_atomic`] cost milliseconds per write on a disk-backed root and
/// serialise a burst of container starts behind the journal.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_renamed(path, bytes, false)
}

fn write_renamed(path: &Path, bytes: &[u8], durable: bool) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call: two threads may write the same file at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_data()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    if durable {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Start time of `pid` in clock ticks since boot, or None when it does not exist.
pub fn pid_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); starttime is field 22 → index 19 here.
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl State {
    /// Whether the container's first process is still the process we started.
    pub fn alive(&self) -> bool {
        self.pid > 0 && pid_start_time(self.pid) == Some(self.pid_start)
    }
}
