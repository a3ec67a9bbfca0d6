//! Importing images from disk: OCI image-layout directories, and tarballs holding either
//! an OCI layout (`oci-archive`) or `docker save` output (`docker-archive`).

use std::fs;
use std::io;
use std::path::Path;

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};
use serde::Deserialize;

use super::store::{Image, ImageStore};
use super::{Error, digest_hex, io_err, sha256_digest};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

impl ImageStore {
    fn copy_blob(&self, layout: &Path, desc: &Descriptor) -> Result<(), Error> {
        let digest = desc.digest().to_string();
        let src = layout.join("blobs/sha256").join(digest_hex(&digest)?);
        self.put_blob(
            &digest,
            Some(desc.size()),
            || {
                let f = fs::File::open(&src).map_err(io_err(format!("blob {}", src.display())))?;
                Ok(Box::new(f))
            },
            &|_| {},
        )?;
        Ok(())
    }

    /// Imports the image of an OCI layout directory. `reference` names it; without one
    /// the index's `org.opencontainers.image.ref.name` annotation is used.
    pub fn import_layout(&self, dir: &Path, reference: Option<&str>) -> Result<Image, Error> {
        let index_path = dir.join("index.json");
        let bytes = fs::read(&index_path).map_err(io_err(format!("{}", index_path.display())))?;
        let index: ImageIndex = json(&bytes, &index_path.display().to_string())?;
        let mut desc = ImageStore::select_manifest(&index, &dir.display().to_string())?;
        let mut name = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned());
        // A nested index (multi-platform image): descend once.
        if *desc.media_type() == MediaType::ImageIndex {
            self.copy_blob(dir, &desc)?;
            let nested: ImageIndex =
                json(&self.read_blob(desc.digest().as_ref())?, "nested index")?;
            desc = ImageStore::select_manifest(&nested, &dir.display().to_string())?;
        }
        self.copy_blob(dir, &desc)?;
        let manifest: ImageManifest =
            json(&self.read_blob(desc.digest().as_ref())?, "image manifest")?;
        self.copy_blob(dir, manifest.config())?;
        for layer in manifest.layers() {
            self.copy_blob(dir, layer)?;
        }
        if let Some(r) = reference {
            name = Some(r.to_string());
        }
        let reference = name.ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: the index names no image (ref.name annotation); give a reference",
                dir.display()
            ))
        })?;
        self.register(&normalize_reference(&reference), desc.digest().as_ref())
    }

    /// Imports an `oci-archive` or `docker-archive` tarball.
    pub fn import_archive(&self, path: &Path, reference: Option<&str>) -> Result<Image, Error> {
        let tmp = tempdir_in(&self.root().join("tmp"))?;
        let result = (|| {
            let file = fs::File::open(path).map_err(io_err(format!("{}", path.display())))?;
            let mut archive = tar::Archive::new(io::BufReader::new(file));
            // tar's unpack refuses entries that would land outside the directory.
            archive
                .unpack(&tmp)
                .map_err(io_err(format!("unpack {}", path.display())))?;
            if tmp.join("index.json").exists() {
                self.import_layout(&tmp, reference)
            } else if tmp.join("manifest.json").exists() {
                self.import_docker(&tmp, reference)
            } else {
                Err(Error::Unsupported(format!(
                    "{}: neither an OCI layout (index.json) nor a docker archive (manifest.json)",
                    path.display()
                )))
            }
        })();
        let _ = fs::remove_dir_all(&tmp);
        result
    }

    fn import_docker(&self, dir: &Path, reference: Option<&str>) -> Result<Image, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let bytes = fs::read(dir.join("manifest.json")).map_err(io_err("manifest.json"))?;
        let entries: Vec<Entry> = json(&bytes, "docker archive manifest.json")?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| Error::Unsupported("docker archive holds no image".into()))?;
        let reference = reference
            .map(str::to_string)
            .or_else(|| entry.repo_tags.first().cloned())
            .ok_or_else(|| {
                Error::Unsupported("docker archive image has no tag; give a reference".into())
            })?;

        let store_file = |rel: &str, media: MediaType| -> Result<Descriptor, Error> {
            let safe = crate::paths::clean_relative(Path::new(rel))
                .ok_or_else(|| Error::Unsupported(format!("bad path {rel:?} in manifest.json")))?;
            let path = dir.join(safe);
            let bytes = fs::read(&path).map_err(io_err(format!("{}", path.display())))?;
            let digest = sha256_digest(&bytes);
            self.put_bytes(&digest, &bytes)?;
            DescriptorBuilder::default()
                .media_type(media)
                .digest(
                    digest
                        .parse::<oci_spec::image::Digest>()
                        .map_err(|e| Error::BadDigest(format!("{digest}: {e}")))?,
                )
                .size(bytes.len() as u64)
                .build()
                .map_err(|e| Error::Unsupported(e.to_string()))
        };
        let config = store_file(&entry.config, MediaType::ImageConfig)?;
        let layers = entry
            .layers
            .iter()
            .map(|l| store_file(l, MediaType::ImageLayer))
            .collect::<Result<Vec<_>, _>>()?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(layers)
            .build()
            .map_err(|e| Error::Unsupported(e.to_string()))?;
        let bytes = serde_json::to_vec(&manifest).map_err(|source| Error::Json {
            what: "manifest".into(),
            source,
        })?;
        let digest = sha256_digest(&bytes);
        self.put_bytes(&digest, &bytes)?;
        self.register(&normalize_reference(&reference), &digest)
    }
}

fn tempdir_in(parent: &Path) -> Result<std::path::PathBuf, Error> {
    let dir = parent.join(format!(
        "import.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// `busybox` → `docker.io/library/busybox:latest`, as container runtimes name images.
pub fn normalize_reference(reference: &str) -> String {
    let (name, tag_or_digest) = split_reference(reference);
    let first = name.split('/').next().unwrap_or("");
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{tag_or_digest}")
}

/// Splits `name[:tag][@digest]` into the name and the rest (`:latest` when neither).
pub fn split_reference(reference: &str) -> (&str, String) {
    if let Some(at) = reference.find('@') {
        return (&reference[..at], reference[at..].to_string());
    }
    let last_slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    match reference[last_slash..].rfind(':') {
        Some(colon) => {
            let split = last_slash + colon;
            (&reference[..split], reference[split..].to_string())
        }
        None => (reference, ":latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_like_docker() {
        assert_eq!(
            normalize_reference("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_reference("a/b:1"), "docker.io/a/b:1");
        assert_eq!(
            normalize_reference("localhost:5000/x/y"),
            "localhost:5000/x/y:latest"
        );
        assert_eq!(
            normalize_reference("127.0.0.1:5000/t:v1"),
            "127.0.0.1:5000/t:v1"
        );
    }
}
