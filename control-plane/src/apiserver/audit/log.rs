//! The log backend (`--audit-log-path`): one JSON event a line, written by a thread of
//! its own fed through a bounded queue, so a request never waits on the disk (a full
//! queue drops the event and counts it in `apiserver_audit_error_total`). `-` writes
//! to stdout. A file is rotated as kube-apiserver's (lumberjack) is: before a line
//! would take it past `--audit-log-maxsize` MB (100 when 0) it is renamed to
//! `<name>-<UTC time 2006-01-02T15-04-05.000><.ext>` beside it and a new one started;
//! then at most `--audit-log-maxbackup` backups are kept (0: all) and those older
//! than `--audit-log-maxage` days are deleted (0: kept). One difference: a single
//! event larger than the limit is written to a file of its own rather than dropped.
//!
//! Entry point: [`Backend::start`], then [`Backend::send`].

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// Events queued for the writer before new ones are dropped (upstream's default
/// audit buffer size).
const QUEUE: usize = 10_000;
const MEGABYTE: u64 = 1024 * 1024;
/// lumberjack's size when none is given.
const DEFAULT_MAX_SIZE_MB: u64 = 100;
const BACKUP_TIME_FORMAT: &str = "%Y-%m-%dT%H-%M-%S%.3f";

/// Where and how to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// The file, or `-` for stdout.
    pub path: PathBuf,
    pub max_size_mb: u64,
    pub max_backups: usize,
    pub max_age_days: u64,
}

/// The writer's queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Backend {
    tx: SyncSender<Vec<u8>>,
    errors: Counter,
}

impl Backend {
    /// Opens the log (so an unwritable path stops the server at start) and starts the
    /// writer thread.
    pub fn start(options: &LogOptions, errors: Counter) -> std::io::Result<Self> {
        let mut out = if options.path.as_os_str() == "-" {
            Output::Stdout(BufWriter::new(std::io::stdout()))
        } else {
            Output::File(RotatingFile::open(options)?)
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let thread_errors = errors.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(&mut out, &rx, &thread_errors))?;
        Ok(Self { tx, errors })
    }

    /// Queues one line (its newline included); false (and counted) when dropped.
    pub fn send(&self, line: Vec<u8>) -> bool {
        match self.tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.errors.inc();
                tracing::warn!("the audit log queue is full; event dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.errors.inc();
                false
            }
        }
    }
}

enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File(RotatingFile),
}

impl Output {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.write_all(line),
            Self::File(file) => file.write_line(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::File(file) => file.file.flush(),
        }
    }
}

/// Writes what arrives, flushing whenever the queue runs empty; ends when every
/// sender is gone.
fn write_loop(out: &mut Output, rx: &Receiver<Vec<u8>>, errors: &Counter) {
    let mut failing = false;
    let mut report = |result: std::io::Result<()>| match result {
        Ok(()) => failing = false,
        Err(err) => {
            errors.inc();
            if !failing {
                tracing::error!(%err, "writing the audit log failed");
            }
            failing = true;
        }
    };
    while let Ok(line) = rx.recv() {
        report(out.write_line(&line));
        while let Ok(line) = rx.try_recv() {
            report(out.write_line(&line));
        }
        if let Err(err) = out.flush() {
            tracing::error!(%err, "flushing the audit log failed");
        }
    }
}

/// A log file rotated by size, its backups pruned by count and age.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_backups: usize,
    max_age: Option<Duration>,
    file: BufWriter<File>,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingFile {
    pub fn open(options: &LogOptions) -> std::io::Result<Self> {
        let path = options.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        let max_size = match options.max_size_mb {
            0 => DEFAULT_MAX_SIZE_MB,
            mb => mb,
        }
        .saturating_mul(MEGABYTE);
        let max_age = (options.max_age_days > 0)
            .then(|| Duration::from_secs(options.max_age_days.saturating_mul(86_400)));
        let this = Self {
            path,
            max_size,
            max_backups: options.max_backups,
            max_age,
            file: BufWriter::new(file),
            size,
        };
        this.prune();
        Ok(this)
    }

    /// Appends `line`, rotating first when it would not fit.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    /// `audit.log` → (`audit-`, `.log`): what backups are named from.
    fn name_parts(&self) -> (String, String) {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.rfind('.').filter(|&i| i > 0) {
            Some(i) => (format!("{}-", &name[..i]), name[i..].to_owned()),
            None => (format!("{name}-"), String::new()),
        }
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let (prefix, ext) = self.name_parts();
        let dir = self.dir();
        let mut at = jiff::Timestamp::now();
        // Two rotations within a millisecond must not overwrite a backup.
        let backup = loop {
            let candidate = dir.join(format!("{prefix}{}{ext}", at.strftime(BACKUP_TIME_FORMAT)));
            if !candidate.exists() {
                break candidate;
            }
            at += jiff::SignedDuration::from_millis(1);
        };
        std::fs::rename(&self.path, &backup)?;
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        self.prune();
        Ok(())
    }

    /// The backups, newest first.
    fn backups(&self) -> Vec<(PathBuf, jiff::Timestamp)> {
        let (prefix, ext) = self.name_parts();
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        let mut out: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stamp = name.strip_prefix(&prefix)?.strip_suffix(&ext)?;
                let at = jiff::civil::DateTime::strptime(BACKUP_TIME_FORMAT, stamp)
                    .ok()?
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .ok()?
                    .timestamp();
                Some((e.path(), at))
            })
            .collect();
        out.sort_by_key(|b| std::cmp::Reverse(b.1));
        out
    }

    /// Deletes backups beyond `max_backups` and older than `max_age`.
    fn prune(&self) {
        let now = jiff::Timestamp::now();
        for (i, (path, at)) in self.backups().into_iter().enumerate() {
            let too_many = self.max_backups > 0 && i >= self.max_backups;
            let too_old = self.max_age.is_some_and(|age| {
                now.duration_since(at)
                    .try_into()
                    .is_ok_and(|d: Duration| d > age)
            });
            if (too_many || too_old)
                && let Err(err) = std::fs::remove_file(&path)
            {
                tracing::warn!(%err, path = %path.display(), "removing an old audit log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, max_backups: usize, max_age_days: u64) -> LogOptions {
        LogOptions {
            path: dir.join("audit.log"),
            max_size_mb: 1,
            max_backups,
            max_age_days,
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotates_past_max_size_and_keeps_max_backups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RotatingFile::open(&options(dir.path(), 2, 0)).expect("open");
        let line = vec![b'x'; 400 * 1024];
        for _ in 0..10 {
            log.write_line(&line).expect("write");
        }
        log.flush().expect("flush");
        let names = files(dir.path());
        // 10 lines of 400 KiB, two to a 1 MiB file: 5 files were started, the oldest
        // two backups pruned.
        assert_eq!(names.len(), 3, "the live file and 2 backups: {names:?}");
        assert!(names.contains(&"audit.log".to_owned()), "{names:?}");
        for name in names.iter().filter(|n| *n != "audit.log") {
            let stamp = name
                .strip_prefix("audit-")
                .and_then(|n| n.strip_suffix(".log"))
                .unwrap_or_else(|| panic!("backup named audit-<time>.log: {name}"));
            assert!(
                jiff::civil::DateTime::strptime(BACKUP_TIME_FORMAT, stamp).is_ok(),
                "timestamp {stamp}"
            );
            let len = std::fs::metadata(dir.path().join(name))
                .expect("stat")
                .len();
            assert_eq!(len, 800 * 1024, "{name} holds two lines");
        }
        let live = std::fs::metadata(dir.path().join("audit.log"))
            .expect("stat")
            .len();
        assert_eq!(live, 800 * 1024);
    }

    #[test]
    fn an_oversized_line_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RotatingFile::open(&options(dir.path(), 0, 0)).expect("open");
        log.write_line(b"small\n").expect("write");
        log.write_line(&vec![b'y'; 2 * 1024 * 1024]).expect("write");
        log.write_line(b"after\n").expect("write");
        log.flush().expect("flush");
        assert_eq!(files(dir.path()).len(), 3, "{:?}", files(dir.path()));
        let live = std::fs::read(dir.path().join("audit.log")).expect("read");
        assert_eq!(live, b"after\n");
    }

    #[test]
    fn backups_older_than_max_age_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("audit-2001-01-01T00-00-00.000.log");
        let other = dir.path().join("unrelated-2001-01-01T00-00-00.000.log");
        std::fs::write(&old, "old\n").expect("write");
        std::fs::write(&other, "keep\n").expect("write");
        let _log = RotatingFile::open(&options(dir.path(), 0, 30)).expect("open");
        assert!(
            !old.exists(),
            "a backup older than 30 days is deleted at open"
        );
        assert!(other.exists(), "files of other names are left alone");
    }

    #[test]
    fn the_backend_writes_lines_from_its_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend =
            Backend::start(&options(dir.path(), 0, 0), Counter::default()).expect("start");
        assert!(backend.send(b"{\"a\":1}\n".to_vec()));
        let path = dir.path().join("audit.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&path).unwrap_or_default() != "{\"a\":1}\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "the line reached the file"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
