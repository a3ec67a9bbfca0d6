//! Running code inside another network namespace: a scoped thread enters it with
//! setns(2) (which changes only the calling thread), runs the closure and ends.
//! Sockets opened there stay in that namespace; processes the thread spawns start in
//! it. Used for CNI in the node's pod network, probes, port-forwarding and `lo`.

use std::path::Path;

/// Runs `f` on a thread inside the network namespace at `netns`.
pub fn run_in<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file =
                std::fs::File::open(netns).map_err(|e| format!("open {}: {e}", netns.display()))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("enter {}: {e}", netns.display()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err("the network namespace thread panicked".into()))
    })
}
