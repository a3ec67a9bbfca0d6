//! Stalls of the disk under a bench's data, read from its block device's sysfs `stat`
//! file: spans in which the device had requests in flight and completed none, and the
//! mean time the writes and cache flushes completed in each sample took (a flush is not
//! counted in flight, so a stalled flush shows only in its time). A durable write cannot
//! be answered before the device completes it, so a latency tail that lines up with a
//! stall is the machine's, not the program's; the benches report both side by side.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the device's counters are read.
const SAMPLE: Duration = Duration::from_millis(10);
/// A gap between samples longer than this (the sampler itself was held up) ends a
/// span without counting it: what happened in between is not known.
const LATE: Duration = Duration::from_millis(30);
/// Stalls at least this long are counted.
pub const STALL_MS: f64 = 100.0;

/// What one span of monitoring saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stalls {
    /// The longest stall (ms): a span with requests in flight and none completed (to
    /// the sample period), or the mean time of the writes or flushes one sample saw
    /// complete.
    pub longest_ms: f64,
    /// Stalls of at least [`STALL_MS`].
    pub over_threshold: usize,
}

/// Samples the device of a path in a thread of its own until dropped.
pub struct DiskMonitor {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Stalls>>,
}

/// The counters of a block device's `stat` file used here
/// (Documentation/block/stat.rst).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    in_flight: u64,
    /// Requests completed: reads, writes, discards and flushes.
    done: u64,
    writes: u64,
    write_ms: u64,
    flushes: u64,
    flush_ms: u64,
}

fn sample(stat: &Path) -> Option<Counters> {
    let text = std::fs::read_to_string(stat).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(Counters {
        in_flight: at(8),
        done: at(0) + at(4) + at(11) + at(15),
        writes: at(4),
        write_ms: at(7),
        flushes: at(15),
        flush_ms: at(16),
    })
}

/// The sysfs `stat` file of the disk holding `path`: a partition's parent disk, which
/// alone counts cache flushes.
fn stat_file(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    let node = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let stat = if node.join("partition").exists() {
        node.join("../stat")
    } else {
        node.join("stat")
    };
    sample(&stat).map(|_| stat)
}

impl DiskMonitor {
    /// Starts monitoring the disk under `path`; `None` where it has no block device
    /// (tmpfs, overlay) or sysfs is not readable.
    pub fn start(path: &Path) -> Option<Self> {
        let stat = stat_file(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Stalls::default()));
        let (thread_stop, thread_seen) = (stop.clone(), seen.clone());
        std::thread::Builder::new()
            .name("disk-monitor".into())
            .spawn(move || {
                let mut detector = Detector::default();
                while !thread_stop.load(Ordering::Relaxed) {
                    if let Some(counters) = sample(&stat)
                        && let Some(ms) = detector.observe(Instant::now(), counters)
                        && let Ok(mut seen) = thread_seen.lock()
                    {
                        seen.longest_ms = seen.longest_ms.max(ms);
                        if ms >= STALL_MS {
                            seen.over_threshold += 1;
                        }
                    }
                    std::thread::sleep(SAMPLE);
                }
            })
            .ok()?;
        Some(Self { stop, seen })
    }

    /// What was seen since the last call (or the start), and starts over.
    pub fn take(&self) -> Stalls {
        self.seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

impl Drop for DiskMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Turns samples into stalls (see the module docs).
#[derive(Debug, Default)]
struct Detector {
    last: Option<(Instant, Counters)>,
    /// When the current span with requests in flight and no completion began.
    since: Option<Instant>,
}

impl Detector {
    /// Feeds one sample; returns a stall's length (ms) when one ends or a sample saw
    /// slow completions.
    fn observe(&mut self, now: Instant, c: Counters) -> Option<f64> {
        let (then, last) = self.last.replace((now, c))?;
        // The kernel's own times of what completed since the last sample.
        let mean = |ios: u64, ms: u64, ios0: u64, ms0: u64| {
            let n = ios.saturating_sub(ios0);
            (n > 0).then(|| ms.saturating_sub(ms0) as f64 / n as f64)
        };
        let completed = [
            mean(c.writes, c.write_ms, last.writes, last.write_ms),
            mean(c.flushes, c.flush_ms, last.flushes, last.flush_ms),
        ]
        .into_iter()
        .flatten()
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let span = if now.duration_since(then) > LATE {
            // The sampler was late: the span, if any, is not known.
            self.since = None;
            None
        } else if c.done != last.done || c.in_flight == 0 {
            self.since
                .take()
                .map(|began| now.duration_since(began).as_secs_f64() * 1000.0)
        } else {
            self.since.get_or_insert(then);
            None
        };
        match (span, completed) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_are_spans_without_completions_or_slow_completions() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let c = |in_flight, done, writes, write_ms| Counters {
            in_flight,
            done,
            writes,
            write_ms,
            ..Counters::default()
        };
        let mut d = Detector::default();
        assert_eq!(d.observe(at(0), c(0, 10, 10, 5)), None);
        // Requests complete between samples, fast: a figure, no stall.
        assert_eq!(d.observe(at(10), c(2, 12, 12, 6)), Some(0.5));
        // One request in flight, nothing completes from 10 ms to 310 ms.
        assert_eq!(d.observe(at(20), c(1, 12, 12, 6)), None);
        assert_eq!(d.observe(at(30), c(1, 12, 12, 6)), None);
        let mut t = 30;
        while t < 300 {
            t += 10;
            assert_eq!(d.observe(at(t), c(1, 12, 12, 6)), None);
        }
        let ms = d
            .observe(at(310), c(0, 13, 13, 306))
            .expect("the stall ends");
        assert!((ms - 300.0).abs() < 1e-6, "{ms}");
        // Idle (nothing in flight) is not a stall.
        assert_eq!(d.observe(at(320), c(0, 13, 13, 306)), None);
        // A flush is never counted in flight: its time shows it.
        let mut f = c(0, 14, 13, 306);
        f.flushes = 1;
        f.flush_ms = 180;
        assert_eq!(d.observe(at(330), f), Some(180.0));
        // A late sampler ends a span without counting it.
        let mut stuck = f;
        stuck.in_flight = 1;
        assert_eq!(d.observe(at(340), stuck), None);
        assert_eq!(d.observe(at(350), stuck), None);
        assert_eq!(d.observe(at(600), stuck), None);
        let mut done = stuck;
        done.in_flight = 0;
        done.done += 1;
        assert_eq!(d.observe(at(610), done), None);
    }
}
