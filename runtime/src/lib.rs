//! berth's container runtime: the image store (OCI layouts, registry pulls), rootfs
//! (overlay layers and the init layer), sandboxes around `berth-pause`, containers in
//! namespaces and cgroups, logs, exec, and crash-safe on-disk state.
//!
//! Entry points: [`container`] (the OCI lifecycle the `berth-runtime` CLI exposes) and
//! [`state::Root`] (where containers are recorded).

pub mod cgroups;
pub mod container;
pub mod devices;
pub mod image;
pub mod init;
pub mod logs;
pub mod monitor;
pub mod paths;
pub mod pod;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod state;
mod sys;

pub use container::{Error, Status};
pub use state::Root;

/// An error with its causes, `: `-separated: the top-level text of reqwest's, hyper's
/// and tonic's errors leaves out the TLS or connect reason.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cur = c.source();
    }
    text
}

/// Marks the calling process a child subreaper, so orphaned descendants (a container
/// init forked into a joined PID namespace) are re-parented to it and can be waited for.
pub fn become_subreaper() -> std::io::Result<()> {
    sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0)
}
