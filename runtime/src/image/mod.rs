//! Images: a content-addressed store of blobs (`blobs/sha256/<hex>`), unpacked layers
//! (`layers/sha256/<hex>/fs`, one overlayfs lower directory per layer blob) and image
//! records (`images/<hash of the reference>.json`) under the runtime's root. Images come
//! from OCI image-layout directories, OCI/docker-archive tarballs, or registry pulls;
//! every blob is verified against its digest before it is used.

mod archive;
pub mod config;
pub mod pull;
pub mod registries;
mod store;
pub mod unpack;

pub use archive::normalize_reference as archive_normalize;
pub use config::{ImageUser, merge_command};
pub use store::{BlobWriter, Image, ImageStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid digest {0:?} (want sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("digest mismatch for {expected}: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} is truncated: {got} of {want} bytes")]
    Truncated { digest: String, got: u64, want: u64 },
    #[error("{what}: invalid JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("no linux/amd64 image in the index of {0}")]
    NoPlatform(String),
    #[error(transparent)]
    Unpack(#[from] unpack::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("{}: {message}", path.display())]
    Config {
        path: std::path::PathBuf,
        message: String,
    },
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The hex part of a validated `sha256:` digest.
pub fn digest_hex(digest: &str) -> Result<&str, Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::BadDigest(digest.to_string()))?;
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(hex)
    } else {
        Err(Error::BadDigest(digest.to_string()))
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
