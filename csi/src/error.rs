//! The driver's error type. Each variant is one row kind of the CSI spec's error tables
//! (spec.md, "Error Scheme"), so the gRPC code a caller sees is decided where the error
//! is made, not guessed at the transport.

use std::path::PathBuf;

/// A failed CSI call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is missing or malformed (`INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume, snapshot or source named does not exist (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// A name is taken with incompatible arguments, or a path is in use (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// A capacity the driver cannot provide (`OUT_OF_RANGE`).
    #[error("{0}")]
    OutOfRange(String),
    /// Out of capacity, volumes or topology (`RESOURCE_EXHAUSTED`).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A call out of order, e.g. publish before stage (`FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A pagination token this driver did not hand out (`ABORTED`).
    #[error("{0}")]
    Aborted(String),
    /// A host operation failed (`INTERNAL`), with the path it failed on.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call failed (`INTERNAL`).
    #[error("{call} {path}: {source}")]
    Syscall {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The metadata file is unreadable (`INTERNAL`).
    #[error("metadata {path}: {message}")]
    Metadata { path: PathBuf, message: String },
}

/// Shorthand for the driver's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` during `op`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// A failed system call on `path`.
    pub fn sys(call: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(nix::Error) -> Self {
        let path = path.into();
        move |source| Error::Syscall { call, path, source }
    }

    /// RESOURCE_EXHAUSTED for an I/O error that means the disk or quota is full
    /// (ENOSPC, EDQUOT); the error itself otherwise.
    pub fn out_of_space(self) -> Self {
        match self {
            Error::Io { op, path, source }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                Error::ResourceExhausted(format!("{op} {}: {source}", path.display()))
            }
            other => other,
        }
    }

    /// The gRPC code the CSI spec assigns to this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Error::NotFound(_) => tonic::Code::NotFound,
            Error::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Error::OutOfRange(_) => tonic::Code::OutOfRange,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Error::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Error::Aborted(_) => tonic::Code::Aborted,
            Error::Io { .. } | Error::Syscall { .. } | Error::Metadata { .. } => {
                tonic::Code::Internal
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

/// `INVALID_ARGUMENT` unless `value` is non-empty.
pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str> {
    if value.is_empty() {
        Err(Error::InvalidArgument(format!("{field} is required")))
    } else {
        Ok(value)
    }
}

/// INVALID_ARGUMENT unless `value` is a non-empty absolute path: the spec requires "an
/// absolute path in the root filesystem of the process serving this request" for
/// staging, target and volume paths, and a relative one would resolve against the
/// driver's working directory.
pub fn required_path<'a>(value: &'a str, field: &str) -> Result<&'a std::path::Path> {
    let path = std::path::Path::new(required(value, field)?);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(Error::InvalidArgument(format!(
            "{field} {value:?} is not an absolute path"
        )))
    }
}
