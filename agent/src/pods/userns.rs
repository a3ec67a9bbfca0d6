//! The node's user-namespace ID allocator (`hostUsers: false`): each such pod gets its
//! own range of 65 536 host uids and gids, as the kubelet gives — range `k` is host ids
//! `65536 × k` to `65536 × (k + 1) − 1`, `k` from 1 (range 0 holds the host's own
//! users). An allocation is a file `<root-dir>/userns/<pod uid>` holding `k`, so a
//! restarted agent keeps every running pod's range and never hands it out twice; it is
//! removed with the pod.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_runtime::pod::IdRange;

/// IDs per pod (the kubelet's fixed size).
pub const RANGE_SIZE: u32 = 65_536;
/// The highest range index: host ids stay below 2^31 (what `int32` uids in the API and
/// some filesystems take).
const MAX_RANGE: u32 = (1 << 31) / RANGE_SIZE - 1;

/// One allocation at a time within this agent.
static LOCK: Mutex<()> = Mutex::new(());

fn dir(root_dir: &Path) -> PathBuf {
    root_dir.join("userns")
}

fn read_index(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The range of pod `uid`: the one it already has, else the lowest free one.
pub fn allocate(root_dir: &Path, uid: &str) -> Result<IdRange, String> {
    let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = dir(root_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let own = dir.join(uid);
    if let Some(k) = read_index(&own) {
        return Ok(range(k));
    }
    let mut used: Vec<u32> = std::fs::read_dir(&dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| read_index(&e.path()))
        .collect();
    used.sort_unstable();
    let k = (1..=MAX_RANGE)
        .find(|k| used.binary_search(k).is_err())
        .ok_or("no free user namespace range left on this node")?;
    berth_runtime::state::write_atomic(&own, k.to_string().as_bytes())
        .map_err(|e| format!("record the pod's user namespace range: {e}"))?;
    Ok(range(k))
}

/// Frees pod `uid`'s range (nothing when it has none).
pub fn release(root_dir: &Path, uid: &str) {
    let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(dir(root_dir).join(uid));
}

fn range(k: u32) -> IdRange {
    IdRange {
        host_id: k * RANGE_SIZE,
        size: RANGE_SIZE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_kept_and_reused_after_release() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = allocate(tmp.path(), "pod-a").expect("a");
        let b = allocate(tmp.path(), "pod-b").expect("b");
        assert_eq!(a.host_id, 65_536);
        assert_eq!(b.host_id, 131_072);
        assert_eq!(a.size, 65_536);
        // The same pod keeps its range (an agent restart reads it back).
        assert_eq!(allocate(tmp.path(), "pod-a").expect("again"), a);
        release(tmp.path(), "pod-a");
        let c = allocate(tmp.path(), "pod-c").expect("c");
        assert_eq!(c, a, "the lowest free range is reused");
        assert!(b.host_id + b.size <= 1 << 31);
    }
}
