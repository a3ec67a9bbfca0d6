//! Image garbage collection, as the kubelet's image GC manager does it: every five
//! minutes, when the image filesystem is fuller than `--image-gc-high-threshold`
//! (85 %), images no container uses — the pause image is pinned — are removed, least
//! recently used first and none detected less than `--image-minimum-gc-age` (2 min)
//! ago, until it is at `--image-gc-low-threshold` (80 %). Under disk pressure the
//! eviction manager calls [`ImageGc::delete_unused`] before it evicts a pod.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_runtime::pod::Runtime;

pub const PERIOD: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Usage percentage from which images are collected (100 turns collection off).
    pub high: u8,
    /// Usage percentage collection frees down to.
    pub low: u8,
    /// Images detected more recently than this are kept.
    pub min_age: Duration,
}

impl Policy {
    pub fn new(high: u8, low: u8, min_age: Duration) -> Result<Self, String> {
        if high > 100 || low > 100 {
            return Err(format!(
                "--image-gc-high-threshold ({high}) and --image-gc-low-threshold ({low}) must be between 0 and 100"
            ));
        }
        if low > high {
            return Err(format!(
                "--image-gc-low-threshold ({low}) must not be above --image-gc-high-threshold ({high})"
            ));
        }
        Ok(Self { high, low, min_age })
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    first_detected: Instant,
    last_used: Instant,
}

/// The collector: when each image was first seen and last used by a container.
#[derive(Debug)]
pub struct ImageGc {
    pub policy: Policy,
    pause_image: String,
    records: Mutex<HashMap<String, Record>>,
}

/// What a collection did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// The references removed.
    pub removed: Vec<String>,
    /// Bytes the image filesystem gained.
    pub freed: u64,
}

impl ImageGc {
    pub fn new(policy: Policy, pause_image: &str) -> Self {
        Self {
            policy,
            pause_image: pause_image.to_owned(),
            records: Mutex::default(),
        }
    }

    /// Notes which images exist and which containers use; returns the digests in use.
    fn detect(&self, rt: &Runtime, now: Instant) -> Vec<String> {
        let in_use: Vec<String> = rt
            .containers()
            .iter()
            .filter_map(|id| rt.image_id(id))
            .collect();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let images = rt.images().list();
        for image in &images {
            let r = records.entry(image.digest.clone()).or_insert(Record {
                first_detected: now,
                last_used: now,
            });
            if in_use.contains(&image.digest) {
                r.last_used = now;
            }
        }
        records.retain(|digest, _| images.iter().any(|i| &i.digest == digest));
        in_use
    }

    /// Removes unused images, least recently used first, until `enough(freed)` says
    /// so (or none is left), then the blobs and layers no image holds any more.
    fn collect(&self, rt: &Runtime, enough: impl Fn(u64) -> bool) -> Collected {
        let now = Instant::now();
        let in_use = self.detect(rt, now);
        let store = rt.images();
        let pause = store.find(&self.pause_image).map(|i| i.digest).ok();
        let records = self.records.lock().map(|r| r.clone()).unwrap_or_default();
        let mut candidates: Vec<(Instant, String)> = records
            .iter()
            .filter(|(digest, r)| {
                !in_use.contains(digest)
                    && pause.as_ref() != Some(*digest)
                    && now.duration_since(r.first_detected) >= self.policy.min_age
            })
            .map(|(digest, r)| (r.last_used, digest.clone()))
            .collect();
        candidates.sort();
        let mut done = Collected::default();
        let available = || {
            nix::sys::statvfs::statvfs(store.root())
                .map(|s| s.blocks_available() * s.fragment_size())
                .unwrap_or(0)
        };
        let before = available();
        for (_, digest) in candidates {
            if enough(done.freed) {
                break;
            }
            for image in store.list().into_iter().filter(|i| i.digest == digest) {
                match store.remove(&image.reference) {
                    Ok(()) => done.removed.push(image.reference),
                    Err(err) => tracing::warn!(%err, image = %image.reference, "image GC"),
                }
            }
            if let Err(err) = store.gc(&[]) {
                tracing::warn!(%err, "image GC: removing unreferenced blobs and layers");
            }
            done.freed = available().saturating_sub(before);
        }
        done
    }

    /// The periodic pass: frees down to the low threshold when usage is at or above
    /// the high one.
    pub fn run_once(&self, rt: &Runtime) -> Collected {
        let Some((available, capacity)) = usage(rt) else {
            return Collected::default();
        };
        let used = capacity.saturating_sub(available);
        if capacity == 0 || used * 100 < u64::from(self.policy.high) * capacity {
            self.detect(rt, Instant::now());
            return Collected::default();
        }
        let target = used.saturating_sub(u64::from(self.policy.low) * capacity / 100);
        let done = self.collect(rt, |freed| freed >= target);
        if !done.removed.is_empty() {
            tracing::info!(removed = ?done.removed, freed = done.freed, "image GC");
        }
        done
    }

    /// Every unused image old enough goes (the eviction manager's first step under
    /// disk pressure).
    pub fn delete_unused(&self, rt: &Runtime) -> Collected {
        self.collect(rt, |_| false)
    }
}

/// (available, capacity) bytes of the image filesystem.
fn usage(rt: &Runtime) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(rt.images().root()).ok()?;
    Some((
        s.blocks_available() * s.fragment_size(),
        s.blocks() * s.fragment_size(),
    ))
}

/// Runs the periodic pass until the future is dropped.
pub async fn run(gc: std::sync::Arc<ImageGc>, rt: std::sync::Arc<Runtime>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let (gc, rt) = (gc.clone(), rt.clone());
        let _ = tokio::task::spawn_blocking(move || gc.run_once(&rt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_checks_its_thresholds() {
        assert!(Policy::new(85, 80, Duration::from_secs(120)).is_ok());
        assert!(Policy::new(100, 0, Duration::ZERO).is_ok());
        let err = Policy::new(70, 80, Duration::ZERO).expect_err("low above high");
        assert!(err.contains("must not be above"), "{err}");
        assert!(Policy::new(101, 80, Duration::ZERO).is_err());
    }
}
