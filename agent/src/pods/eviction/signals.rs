//! The kubelet's eviction signals and `--eviction-hard` thresholds: memory.available,
//! nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree and
//! pid.available, each a quantity (`100Mi`, `1000`) or a percentage of capacity
//! (`10%`). Without the flag the kubelet's Linux defaults apply
//! (`memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%`);
//! with it, only the signals it names are watched — the others are not inherited, as
//! the kubelet does without `mergeDefaultEvictionSettings`.

use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pods::resources;

/// The kubelet's default hard eviction thresholds on Linux.
pub const DEFAULT_HARD: &str = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl Signal {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "memory.available" => Self::MemoryAvailable,
            "nodefs.available" => Self::NodefsAvailable,
            "nodefs.inodesFree" => Self::NodefsInodesFree,
            "imagefs.available" => Self::ImagefsAvailable,
            "imagefs.inodesFree" => Self::ImagefsInodesFree,
            "pid.available" => Self::PidAvailable,
            _ => return None,
        })
    }

    /// The signal's name (`memory.available`).
    pub fn name(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory.available",
            Self::NodefsAvailable => "nodefs.available",
            Self::NodefsInodesFree => "nodefs.inodesFree",
            Self::ImagefsAvailable => "imagefs.available",
            Self::ImagefsInodesFree => "imagefs.inodesFree",
            Self::PidAvailable => "pid.available",
        }
    }

    /// The resource the kubelet names in an eviction message.
    pub fn resource(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory",
            Self::NodefsAvailable | Self::ImagefsAvailable => "ephemeral-storage",
            Self::NodefsInodesFree | Self::ImagefsInodesFree => "inodes",
            Self::PidAvailable => "pids",
        }
    }

    /// Which node condition the signal drives.
    pub fn condition(self) -> Condition {
        match self {
            Self::MemoryAvailable => Condition::Memory,
            Self::PidAvailable => Condition::Pid,
            _ => Condition::Disk,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Memory,
    Disk,
    Pid,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Amount {
    /// Bytes, inodes or pids.
    Absolute(u64),
    /// A percentage of the signal's capacity.
    Percent(f64),
}

/// One `<signal><<value>` threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    amount: Amount,
    /// The value as given (`10%`, `100Mi`), for messages.
    pub text: String,
}

impl Amount {
    /// In the signal's units, for a signal of `capacity`.
    fn of(self, capacity: u64) -> u64 {
        match self {
            Amount::Absolute(n) => n,
            Amount::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }

    /// `10%` or a quantity, as the kubelet reads eviction values.
    fn parse(part: &str, value: &str) -> Result<Self, String> {
        if let Some(p) = value.strip_suffix('%') {
            let p: f64 = p
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=100.0).contains(p))
                .ok_or_else(|| format!("{part:?}: percentage must be between 0% and 100%"))?;
            Ok(Amount::Percent(p))
        } else {
            let n = resources::units(&Quantity(value.to_owned()))
                .filter(|n| *n >= 0 && !value.starts_with('-'))
                .ok_or_else(|| format!("{part:?}: bad quantity {value:?}"))?;
            Ok(Amount::Absolute(n as u64))
        }
    }
}

impl Threshold {
    /// Whether `available` of `capacity` is below the threshold.
    pub fn crossed(&self, available: u64, capacity: u64) -> bool {
        match self.amount {
            Amount::Absolute(min) => available < min,
            Amount::Percent(p) => (available as f64) < capacity as f64 * p / 100.0,
        }
    }

    /// Whether a threshold that was met is still not resolved: `available` is below the
    /// threshold plus its minimum reclaim (the kubelet keeps evicting until then).
    pub fn unresolved(&self, available: u64, capacity: u64, reclaim: &MinimumReclaim) -> bool {
        let floor = self
            .amount
            .of(capacity)
            .saturating_add(reclaim.of(self.signal, capacity));
        available < floor
    }
}

/// `--eviction-minimum-reclaim` (`signal=quantity|percent,…`): how far past its
/// threshold a signal must recover before the pressure it caused counts as resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinimumReclaim(Vec<(Signal, Amount)>);

impl MinimumReclaim {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out: Vec<(Signal, Amount)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                format!("minimum reclaim {part:?}: expected <signal>=<quantity or percentage>")
            })?;
            let signal = Signal::parse(name.trim())
                .ok_or_else(|| format!("unknown eviction signal {:?}", name.trim()))?;
            let amount =
                Amount::parse(part, value.trim()).map_err(|e| format!("minimum reclaim {e}"))?;
            if out.iter().any(|(s, _)| *s == signal) {
                return Err(format!("minimum reclaim {part:?}: signal given twice"));
            }
            out.push((signal, amount));
        }
        Ok(Self(out))
    }

    /// The reclaim for `signal` in its units (0 when not given).
    pub fn of(&self, signal: Signal, capacity: u64) -> u64 {
        self.0
            .iter()
            .find(|(s, _)| *s == signal)
            .map_or(0, |(_, a)| a.of(capacity))
    }
}

/// Hard eviction thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds(pub Vec<Threshold>);

impl Default for Thresholds {
    fn default() -> Self {
        Self::parse(DEFAULT_HARD).unwrap_or(Self(Vec::new()))
    }
}

impl Thresholds {
    /// Parses `--eviction-hard`; empty means the kubelet's defaults.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        Self::parse_list(text)
    }

    /// Parses a list of thresholds as written (`--eviction-soft`: empty is none).
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let mut out: Vec<Threshold> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('<').ok_or_else(|| {
                format!("eviction threshold {part:?}: expected <signal><<quantity or percentage>")
            })?;
            let signal = Signal::parse(name.trim())
                .ok_or_else(|| format!("unknown eviction signal {:?}", name.trim()))?;
            let value = value.trim();
            let amount =
                Amount::parse(part, value).map_err(|e| format!("eviction threshold {e}"))?;
            if out.iter().any(|t| t.signal == signal) {
                return Err(format!("eviction threshold {part:?}: signal given twice"));
            }
            out.push(Threshold {
                signal,
                amount,
                text: value.to_owned(),
            });
        }
        Ok(Self(out))
    }

    /// The thresholds crossed in `obs`.
    pub fn crossed<'a>(&'a self, obs: &'a Observations) -> impl Iterator<Item = &'a Threshold> {
        self.0.iter().filter(move |t| {
            let (available, capacity) = obs.get(t.signal);
            capacity > 0 && t.crossed(available, capacity)
        })
    }

    /// The thresholds met now: crossed in `obs`, or met last round (`was_met`) and not
    /// yet recovered past their minimum reclaim.
    pub fn met<'a>(
        &'a self,
        obs: &'a Observations,
        was_met: &'a std::collections::HashSet<Signal>,
        reclaim: &'a MinimumReclaim,
    ) -> impl Iterator<Item = &'a Threshold> {
        self.0.iter().filter(move |t| {
            let (available, capacity) = obs.get(t.signal);
            capacity > 0
                && (t.crossed(available, capacity)
                    || (was_met.contains(&t.signal) && t.unresolved(available, capacity, reclaim)))
        })
    }

    /// Memory, disk and PID pressure in `obs`.
    pub fn pressure(&self, obs: &Observations) -> crate::node::Pressure {
        let mut p = crate::node::Pressure::default();
        for t in self.crossed(obs) {
            match t.signal.condition() {
                Condition::Memory => p.memory = true,
                Condition::Disk => p.disk = true,
                Condition::Pid => p.pid = true,
            }
        }
        p
    }
}

/// Soft eviction thresholds (`--eviction-soft`) and how long each must stay crossed
/// before a pod is evicted for it (`--eviction-soft-grace-period`).
#[derive(Debug, Clone, PartialEq)]
pub struct Soft {
    pub thresholds: Thresholds,
    grace: Vec<(Signal, std::time::Duration)>,
}

impl Default for Soft {
    /// No soft thresholds (the kubelet has none by default).
    fn default() -> Self {
        Soft {
            thresholds: Thresholds(Vec::new()),
            grace: Vec::new(),
        }
    }
}

impl Soft {
    /// Parses the two flags; every soft threshold needs a grace period, as the
    /// kubelet requires.
    pub fn parse(thresholds: &str, grace_periods: &str) -> Result<Self, String> {
        let thresholds = Thresholds::parse_list(thresholds)?;
        let mut grace = Vec::new();
        for part in grace_periods
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                format!("eviction grace period {part:?}: expected <signal>=<duration>")
            })?;
            let signal = Signal::parse(name.trim())
                .ok_or_else(|| format!("unknown eviction signal {:?}", name.trim()))?;
            let d = crate::config::go_duration(value.trim())
                .map_err(|e| format!("eviction grace period {part:?}: {e}"))?;
            grace.push((signal, d));
        }
        for t in &thresholds.0 {
            if !grace.iter().any(|(s, _)| *s == t.signal) {
                return Err(format!(
                    "grace period must be specified for the soft eviction threshold {}",
                    t.signal.name()
                ));
            }
        }
        Ok(Self { thresholds, grace })
    }

    /// How long `signal` must stay crossed.
    pub fn grace(&self, signal: Signal) -> std::time::Duration {
        self.grace
            .iter()
            .find(|(s, _)| *s == signal)
            .map_or(std::time::Duration::ZERO, |(_, d)| *d)
    }
}

/// (available, capacity) of each signal, read from the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observations {
    pub memory: (u64, u64),
    pub nodefs_bytes: (u64, u64),
    pub nodefs_inodes: (u64, u64),
    pub imagefs_bytes: (u64, u64),
    pub imagefs_inodes: (u64, u64),
    pub pids: (u64, u64),
}

impl Observations {
    pub fn get(&self, signal: Signal) -> (u64, u64) {
        match signal {
            Signal::MemoryAvailable => self.memory,
            Signal::NodefsAvailable => self.nodefs_bytes,
            Signal::NodefsInodesFree => self.nodefs_inodes,
            Signal::ImagefsAvailable => self.imagefs_bytes,
            Signal::ImagefsInodesFree => self.imagefs_inodes,
            Signal::PidAvailable => self.pids,
        }
    }

    /// Reads the signals now: nodefs is the filesystem of `root_dir`, imagefs the one
    /// holding the images (`image_dir`; the same one unless the images live elsewhere).
    pub fn observe(root_dir: &Path, image_dir: &Path) -> Self {
        let memory = (
            crate::node::meminfo("MemAvailable:").unwrap_or(u64::MAX),
            crate::node::meminfo("MemTotal:").unwrap_or(0),
        );
        let (nodefs_bytes, nodefs_inodes) = fs_stats(root_dir);
        let (imagefs_bytes, imagefs_inodes) = fs_stats(image_dir);
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let procs = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Self {
            memory,
            nodefs_bytes,
            nodefs_inodes,
            imagefs_bytes,
            imagefs_inodes,
            pids: (pid_max.saturating_sub(procs), pid_max),
        }
    }
}

/// ((bytes available, bytes), (inodes free, inodes)) of the filesystem holding `path`.
fn fs_stats(path: &Path) -> ((u64, u64), (u64, u64)) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => (
            (
                s.blocks_available() * s.fragment_size(),
                s.blocks() * s.fragment_size(),
            ),
            (s.files_available(), s.files()),
        ),
        Err(_) => ((0, 0), (0, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_thresholds_need_their_grace_periods() {
        let soft = Soft::parse(
            "memory.available<1Gi,nodefs.available<20%",
            "memory.available=1m30s,nodefs.available=2m",
        )
        .expect("valid");
        assert_eq!(soft.thresholds.0.len(), 2);
        assert_eq!(
            soft.grace(Signal::MemoryAvailable),
            std::time::Duration::from_secs(90)
        );
        assert_eq!(Soft::parse("", "").expect("none"), Soft::default());
        let err = Soft::parse("memory.available<1Gi", "").expect_err("no grace");
        assert_eq!(
            err,
            "grace period must be specified for the soft eviction threshold memory.available"
        );
        assert!(
            Soft::parse("memory.available<1Gi", "memory.available=soon")
                .expect_err("bad duration")
                .contains("eviction grace period \"memory.available=soon\"")
        );
    }

    #[test]
    fn empty_means_the_kubelet_defaults() {
        let t = Thresholds::parse("").expect("empty");
        assert_eq!(t.0.len(), 5);
        assert_eq!(t, Thresholds::default());
        let obs = Observations {
            memory: (50 << 20, 8 << 30),
            nodefs_bytes: (9, 100),
            nodefs_inodes: (50, 100),
            imagefs_bytes: (20, 100),
            imagefs_inodes: (50, 100),
            pids: (10, 100),
        };
        let p = t.pressure(&obs);
        assert!(p.memory && p.disk && !p.pid, "{p:?}");
    }

    #[test]
    fn given_signals_replace_the_defaults() {
        let t = Thresholds::parse("memory.available<1Gi").expect("valid");
        assert_eq!(t.0.len(), 1);
        let obs = Observations {
            memory: (2 << 30, 8 << 30),
            nodefs_bytes: (0, 100),
            ..Default::default()
        };
        assert_eq!(t.pressure(&obs), crate::node::Pressure::default());
        let t = Thresholds::parse("nodefs.available<100%, pid.available<1000").expect("valid");
        let obs = Observations {
            nodefs_bytes: (99, 100),
            pids: (999, 4_000_000),
            ..Default::default()
        };
        let p = t.pressure(&obs);
        assert!(p.disk && p.pid && !p.memory, "{p:?}");
    }

    #[test]
    fn bad_thresholds_name_the_problem() {
        for (text, want) in [
            ("memory.available>1Gi", "expected"),
            (
                "cpu.available<1",
                "unknown eviction signal \"cpu.available\"",
            ),
            ("memory.available<lots", "bad quantity"),
            ("nodefs.available<120%", "between 0% and 100%"),
            ("nodefs.available<5%,nodefs.available<6%", "given twice"),
        ] {
            let err = Thresholds::parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
