//! The on-disk image store.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{Error, digest_hex, hex, io_err, sha256_digest, unpack};
use crate::state::write_atomic;
use crate::sys;

/// A stored image: its manifest, config and layer blobs (bottom first).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub reference: String,
    /// Digest of the manifest (the image ID Kubernetes shows as `imageID`).
    pub digest: String,
    pub config_digest: String,
    pub layers: Vec<String>,
    pub config: ImageConfiguration,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A blob being written: hashed as it goes, checked and renamed into place by
/// `commit`, removed if dropped uncommitted.
#[derive(Debug)]
pub struct BlobWriter {
    digest: String,
    size: Option<u64>,
    path: PathBuf,
    tmp: PathBuf,
    file: fs::File,
    hasher: sha2::Sha256,
    count: u64,
    _lock: fs::File,
    done: bool,
}

impl BlobWriter {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
        if let Some(want) = self.size
            && self.count > want
        {
            return Err(Error::Truncated {
                digest: self.digest.clone(),
                got: self.count,
                want,
            });
        }
        self.file
            .write_all(bytes)
            .map_err(io_err(format!("write {}", self.tmp.display())))
    }

    pub fn commit(mut self) -> Result<PathBuf, Error> {
        if let Some(want) = self.size
            && self.count != want
        {
            return Err(Error::Truncated {
                digest: self.digest.clone(),
                got: self.count,
                want,
            });
        }
        let actual = format!("sha256:{}", hex(&self.hasher.clone().finalize()));
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        self.file.sync_all().map_err(io_err("fsync blob"))?;
        fs::rename(&self.tmp, &self.path)
            .map_err(io_err(format!("rename to {}", self.path.display())))?;
        self.done = true;
        Ok(self.path.clone())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }
    fn digest(&self) -> String {
        format!("sha256:{}", hex(&self.hasher.clone().finalize()))
    }
}

fn is_gzip(media: &MediaType) -> Result<bool, Error> {
    match media {
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Ok(true),
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(false),
        MediaType::Other(s) if s == "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(true),
        MediaType::Other(s) if s == "application/vnd.docker.image.rootfs.diff.tar" => Ok(false),
        other => Err(Error::Unsupported(format!("layer media type {other}"))),
    }
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        for sub in ["blobs/sha256", "layers/sha256", "images", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    fn lock(&self, digest: &str) -> Result<fs::File, Error> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{}.lock", digest_hex(digest)?));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("lock {}", path.display())))?;
        sys::flock_exclusive(&file).map_err(io_err("flock"))?;
        Ok(file)
    }

    /// Starts storing blob `digest`; None when it is already stored. The writer holds a
    /// lock on the digest, so concurrent writers of one blob (threads or processes) wait
    /// for each other and the second finds it done.
    pub fn begin_blob(&self, digest: &str, size: Option<u64>) -> Result<Option<BlobWriter>, Error> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(None);
        }
        let lock = self.lock(digest)?;
        if path.exists() {
            return Ok(None);
        }
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.part",
            digest_hex(digest)?,
            std::process::id()
        ));
        let file = fs::File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        Ok(Some(BlobWriter {
            digest: digest.to_string(),
            size,
            path,
            tmp,
            file,
            hasher: sha2::Sha256::new(),
            count: 0,
            _lock: lock,
            done: false,
        }))
    }

    /// Stores a blob read from `reader`, verifying size (when known) and digest.
    pub fn put_blob(
        &self,
        digest: &str,
        size: Option<u64>,
        reader: impl FnOnce() -> Result<Box<dyn Read + Send>, Error>,
        progress: &dyn Fn(u64),
    ) -> Result<PathBuf, Error> {
        let Some(mut writer) = self.begin_blob(digest, size)? else {
            return self.blob_path(digest);
        };
        let mut src = reader()?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(io_err(format!("read blob {digest}")))?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
            progress(n as u64);
        }
        writer.commit()
    }

    /// Stores bytes already in memory.
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
        let owned = bytes.to_vec();
        self.put_blob(
            digest,
            Some(bytes.len() as u64),
            move || Ok(Box::new(io::Cursor::new(owned))),
            &|_| {},
        )
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Error> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(io_err(format!("read blob {digest}")))
    }

    /// The unpacked directory of a layer blob.
    pub fn layer_dir(&self, digest: &str) -> Result<PathBuf, Error> {
        Ok(self
            .root
            .join("layers/sha256")
            .join(digest_hex(digest)?)
            .join("fs"))
    }

    /// Unpacks a stored layer blob (once), checking its uncompressed digest.
    pub fn ensure_layer(
        &self,
        layer: &Descriptor,
        diff_id: Option<&str>,
    ) -> Result<PathBuf, Error> {
        let digest = layer.digest().to_string();
        let dir = self.layer_dir(&digest)?;
        if dir.exists() {
            return Ok(dir);
        }
        let _lock = self.lock(&digest)?;
        if dir.exists() {
            return Ok(dir);
        }
        let gzip = is_gzip(layer.media_type())?;
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let tmp = parent.join(format!("fs.{}.part", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| {
            let blob = fs::File::open(self.blob_path(&digest)?)
                .map_err(io_err(format!("open blob {digest}")))?;
            let blob = io::BufReader::with_capacity(256 * 1024, blob);
            let mut tar_stream: HashingReader<Box<dyn Read>> = if gzip {
                HashingReader::new(Box::new(flate2::read::GzDecoder::new(blob)))
            } else {
                HashingReader::new(Box::new(blob))
            };
            unpack::unpack(&mut tar_stream, &tmp)?;
            // Drain trailing padding so the diff ID covers the whole stream.
            io::copy(&mut tar_stream, &mut io::sink())
                .map_err(io_err(format!("read layer {digest}")))?;
            if let Some(want) = diff_id {
                let actual = tar_stream.digest();
                if actual != want {
                    return Err(Error::DigestMismatch {
                        expected: want.to_string(),
                        actual,
                    });
                }
            }
            fs::rename(&tmp, &dir).map_err(io_err(format!("rename to {}", dir.display())))?;
            Ok(dir.clone())
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Picks the linux/amd64 manifest of an index.
    pub fn select_manifest(index: &ImageIndex, what: &str) -> Result<Descriptor, Error> {
        index
            .manifests()
            .iter()
            .find(|d| match d.platform() {
                Some(p) => p.os().to_string() == "linux" && p.architecture().to_string() == "amd64",
                None => true,
            })
            .cloned()
            .ok_or_else(|| Error::NoPlatform(what.to_string()))
    }

    /// Records `reference` → the manifest already stored as blob `manifest_digest`,
    /// unpacking its layers. Blobs must all be present.
    pub fn register(&self, reference: &str, manifest_digest: &str) -> Result<Image, Error> {
        let bytes = self.read_blob(manifest_digest)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: format!("manifest {manifest_digest}"),
                source,
            })?;
        let config_digest = manifest.config().digest().to_string();
        let config_bytes = self.read_blob(&config_digest)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| Error::Json {
                what: format!("image config {config_digest}"),
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(Error::Unsupported(format!(
                "image {reference}: {} layers but {} diff IDs",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut size = 0;
        for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
            self.ensure_layer(layer, Some(diff_id))?;
            size += layer.size();
        }
        let image = Image {
            reference: reference.to_string(),
            digest: manifest_digest.to_string(),
            config_digest,
            layers: manifest
                .layers()
                .iter()
                .map(|l| l.digest().to_string())
                .collect(),
            config,
            size,
        };
        let record = serde_json::to_vec(&image).map_err(|source| Error::Json {
            what: "image record".into(),
            source,
        })?;
        write_atomic(&self.record_path(reference), &record).map_err(|e| Error::Io {
            what: format!("save image {reference}"),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(image)
    }

    fn record_path(&self, reference: &str) -> PathBuf {
        let name = sha256_digest(reference.as_bytes());
        self.root
            .join("images")
            .join(format!("{}.json", &name["sha256:".len()..]))
    }

    pub fn get(&self, reference: &str) -> Result<Image, Error> {
        let path = self.record_path(reference);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(reference.to_string()));
            }
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    /// The image a pod names: stored under its normalized reference (`busybox` →
    /// `docker.io/library/busybox:latest`), else under the reference as written (images
    /// loaded from an archive).
    pub fn find(&self, reference: &str) -> Result<Image, Error> {
        self.get(&crate::image::archive_normalize(reference))
            .or_else(|_| self.get(reference))
    }

    pub fn list(&self) -> Vec<Image> {
        let mut images: Vec<Image> = fs::read_dir(self.root.join("images"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        images
    }

    pub fn remove(&self, reference: &str) -> Result<(), Error> {
        let path = self.record_path(reference);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(Error::NotFound(reference.to_string()))
            }
            Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }

    /// Removes blobs and unpacked layers no image references; `in_use` names layer blobs
    /// that running containers still mount. Returns how many blobs and layers went.
    pub fn gc(&self, in_use: &[String]) -> Result<(usize, usize), Error> {
        let mut keep: std::collections::HashSet<String> = in_use.iter().cloned().collect();
        for image in self.list() {
            keep.insert(image.digest.clone());
            keep.insert(image.config_digest.clone());
            keep.extend(image.layers.iter().cloned());
        }
        let mut blobs = 0;
        for entry in fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !keep.contains(&digest) {
                fs::remove_file(entry.path()).map_err(io_err("gc blob"))?;
                blobs += 1;
            }
        }
        let mut layers = 0;
        for entry in fs::read_dir(self.root.join("layers/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !keep.contains(&digest) {
                fs::remove_dir_all(entry.path()).map_err(io_err("gc layer"))?;
                layers += 1;
            }
        }
        Ok((blobs, layers))
    }
}
