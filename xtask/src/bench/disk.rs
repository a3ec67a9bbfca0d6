//! Stalls of the disk under a bench's data: spans in which the block device had I/O in
//! flight and completed none, sampled from its sysfs `stat` file. A durable write cannot
//! be answered before the device completes it, so a latency tail that lines up with a
//! stall is the machine's, not the program's; the benches report both side by side.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the device's counters are read.
const SAMPLE: Duration = Duration::from_millis(10);
/// Stalls at least this long are counted.
pub const STALL_MS: f64 = 100.0;

/// What one span of monitoring saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stalls {
    /// The longest span with I/O in flight and none completed (ms, to the sample period).
    pub longest_ms: f64,
    /// Spans of at least [`STALL_MS`].
    pub over_threshold: usize,
}

/// Samples the device of a path in a thread of its own until dropped.
pub struct DiskMonitor {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Stalls>>,
}

/// The counters of `/sys/dev/block/<major>:<minor>/stat` that matter here: requests in
/// flight and requests completed (reads, writes, discards and flushes).
fn sample(stat: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(stat).ok()?;
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some((at(8), at(0) + at(4) + at(11) + at(15)))
}

/// The sysfs `stat` file of the block device holding `path` (a partition has its own).
fn stat_file(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    sample(&stat).map(|_| stat)
}

impl DiskMonitor {
    /// Starts monitoring the device under `path`; `None` where it has no block device
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
                    if let Some((in_flight, done)) = sample(&stat)
                        && let Some(ms) = detector.observe(Instant::now(), in_flight, done)
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

/// Turns samples into stalls: a stall starts at the first sample with requests in flight
/// after which none completes, and ends at the sample that sees a completion.
#[derive(Debug, Default)]
struct Detector {
    last_done: Option<u64>,
    /// When the current span with requests in flight and no completion began.
    since: Option<Instant>,
}

impl Detector {
    /// Feeds one sample; returns a stall's length (ms) when one ends.
    fn observe(&mut self, now: Instant, in_flight: u64, done: u64) -> Option<f64> {
        let progressed = self.last_done.is_some_and(|last| last != done);
        self.last_done = Some(done);
        if progressed || in_flight == 0 {
            let ended = self.since.take()?;
            return Some(now.duration_since(ended).as_secs_f64() * 1000.0);
        }
        self.since.get_or_insert(now);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_the_span_with_requests_in_flight_and_none_completed() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Detector::default();
        assert_eq!(d.observe(at(0), 0, 10), None);
        // Requests complete between samples: no stall.
        assert_eq!(d.observe(at(10), 2, 12), None);
        assert_eq!(d.observe(at(20), 1, 15), None);
        // One request in flight, nothing completes for 300 ms.
        assert_eq!(d.observe(at(30), 1, 15), None);
        assert_eq!(d.observe(at(200), 1, 15), None);
        assert_eq!(d.observe(at(330), 4, 15), None);
        let ms = d.observe(at(340), 0, 20).expect("the stall ends");
        assert!((ms - 310.0).abs() < 1e-6, "{ms}");
        // Idle (nothing in flight) is not a stall.
        assert_eq!(d.observe(at(350), 0, 20), None);
        assert_eq!(d.observe(at(900), 0, 20), None);
    }
}
