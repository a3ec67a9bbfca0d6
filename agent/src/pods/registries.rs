//! The node's registry configuration (`--registry-config`, k3s' `registries.yaml`
//! shape: mirrors, rewrites, per-registry credentials and TLS; see
//! `berth_runtime::image::registries`). Read at start — a bad file stops the agent,
//! naming the field — and again whenever the file changes: a pull looks at the file's
//! modification time first. A bad edit is logged and the configuration in force kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use berth_runtime::image::registries::Registries;

/// The configuration in force and the file it came from.
#[derive(Debug)]
pub struct RegistryConfig {
    path: Option<PathBuf>,
    current: Mutex<(Option<SystemTime>, Arc<Registries>)>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            path: None,
            current: Mutex::new((None, Arc::new(Registries::default()))),
        }
    }
}

impl RegistryConfig {
    /// Reads `path` (a missing file configures nothing).
    pub fn load(path: &Path) -> Result<Self, String> {
        let registries = Registries::load(path).map_err(|e| e.to_string())?;
        Ok(RegistryConfig {
            path: Some(path.to_owned()),
            current: Mutex::new((modified(path), Arc::new(registries))),
        })
    }

    /// The configuration, re-read first if the file changed since.
    pub fn get(&self) -> Arc<Registries> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.path else {
            return current.1.clone();
        };
        let stamp = modified(path);
        if stamp != current.0 {
            match Registries::load(path) {
                Ok(r) => {
                    tracing::info!(path = %path.display(), "registry configuration reloaded");
                    *current = (stamp, Arc::new(r));
                }
                Err(error) => {
                    tracing::error!(%error, "registry configuration refused; the previous one stays");
                    current.0 = stamp;
                }
            }
        }
        current.1.clone()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_read_and_bad_ones_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registries.yaml");
        let cfg = RegistryConfig::load(&path).expect("missing file");
        assert!(cfg.get().is_empty());
        std::fs::write(
            &path,
            "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n",
        )
        .expect("write");
        let sources = cfg.get().sources("busybox", &Default::default());
        assert_eq!(sources[0].registry, "127.0.0.1:5000");
        // A bad edit (mtime moves on) keeps the configuration in force.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            &path,
            "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n",
        )
        .expect("write");
        let sources = cfg.get().sources("busybox", &Default::default());
        assert_eq!(sources[0].registry, "127.0.0.1:5000");
        assert!(RegistryConfig::load(&path).is_err());
    }
}
