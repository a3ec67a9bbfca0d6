//! Container lifecycle, one verb per file: `create` (set up and park at the start gate),
//! `start` (open the gate), `kill`, `delete`, `exec` (a new process in a running
//! container), plus the status the OCI `state` command reports.

pub mod create;
pub mod delete;
pub mod exec;
pub mod kill;
pub mod start;

use std::path::PathBuf;

use serde::Serialize;

use crate::state::{Root, State};

pub use create::{CreateOptions, Created, Gate, Stdio, create};
pub use delete::delete;
pub use exec::{ExecOptions, exec};
pub use kill::{kill, parse_signal};
pub use start::start;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::Error),
    #[error("invalid config.json: {0}")]
    Spec(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("container setup failed: {0}")]
    Init(String),
    #[error("container {id:?} is {status}, {needed}")]
    WrongStatus {
        id: String,
        status: Status,
        needed: &'static str,
    },
    #[error("unknown signal {0:?}")]
    BadSignal(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The OCI runtime states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// The path of the exec FIFO of a created-but-not-started container.
pub fn fifo_path(root: &Root, id: &str) -> PathBuf {
    root.container_dir(id).join("exec.fifo")
}

/// Current status: stopped when the first process is gone, created while the start gate
/// is still closed, running otherwise.
pub fn status(root: &Root, state: &State) -> Status {
    if !state.alive() {
        Status::Stopped
    } else if fifo_path(root, &state.id).exists() {
        Status::Created
    } else {
        Status::Running
    }
}

/// The OCI `state` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub annotations: std::collections::HashMap<String, String>,
}

pub fn oci_state(root: &Root, state: &State) -> OciState {
    let status = status(root, state);
    OciState {
        oci_version: "1.0.2".to_string(),
        id: state.id.clone(),
        status,
        pid: if status == Status::Stopped {
            0
        } else {
            state.pid
        },
        bundle: state.bundle.clone(),
        rootfs: state.rootfs.clone(),
        created: state.created.clone(),
        annotations: state.annotations.clone(),
    }
}
