//! Entering a network namespace for the duration of a closure. berth-cni is
//! single-threaded, so setns(2) on the calling thread moves the whole plugin; it
//! always moves back, even when the closure fails.

use std::{fs::File, io, path::Path};

use nix::sched::{CloneFlags, setns};

use crate::spec::{CniError, code};

/// Opens the network namespace at `path`; a missing or non-namespace path is
/// error 4 (CNI_NETNS is invalid), naming the path.
pub fn open(path: &Path) -> Result<File, CniError> {
    let file = File::open(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {}: cannot open network namespace: {e}",
                path.display()
            ),
        )
    })?;
    // NS_GET_NSTYPE would tell for sure; entering it below fails with EINVAL anyway.
    Ok(file)
}

/// Runs `f` inside the network namespace `ns`, then returns to the original one.
pub fn enter<T>(ns: &File, f: impl FnOnce() -> io::Result<T>) -> Result<T, CniError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot open own network namespace: {e}"),
        )
    })?;
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS is not a network namespace: setns: {e}"),
        )
    })?;
    let result = f();
    setns(&own, CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("cannot return to own network namespace: {e}"),
        )
    })?;
    result.map_err(|e| {
        CniError::new(
            code::NETLINK,
            format!("inside the container namespace: {e}"),
        )
    })
}
