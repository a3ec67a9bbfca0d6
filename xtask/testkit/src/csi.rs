//! A `berth-csi` driver started for a test or a benchmark: its socket and volume root
//! under `<parent>/csi/`, its log in `<parent>/csi/csi.log`, ready once the socket
//! exists; killed by PID on drop (then its dir is removed). Hand [`CsiDriver::socket`]
//! to an agent's `--csi-socket` — start the driver first, stop it after the agent (a
//! struct holding both declares the agent first: fields drop in declaration order).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ChildGuard, workspace_bin};

/// How long the driver may take to listen on its socket.
const READY_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug)]
pub struct CsiDriver {
    /// The unix socket the driver serves CSI on (give it to the agent's `--csi-socket`).
    pub socket: PathBuf,
    /// `--root`: the volumes live in `<root>/volumes/<volume id>/`.
    pub root: PathBuf,
    dir: PathBuf,
    child: Option<ChildGuard>,
}

impl CsiDriver {
    /// Starts the `berth-csi` at `bin` for node `node_id` with its socket, root and log
    /// under `<parent>/csi/`; returns once the socket exists. Panics, with the driver's
    /// log, if it exits or does not listen within 15 s.
    pub fn start(bin: &Path, parent: &Path, node_id: &str) -> Self {
        let dir = parent.join("csi");
        let root = dir.join("root");
        std::fs::create_dir_all(&root).expect("the CSI driver's root");
        let socket = dir.join("csi.sock");
        // A socket left by an earlier run would look ready before the driver is.
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("csi.log"))
            .expect("the CSI driver's log");
        let child = Command::new(bin)
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg("--root")
            .arg(&root)
            .args(["--node-id", node_id])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut driver = Self {
            socket,
            root,
            dir,
            child: Some(ChildGuard(child)),
        };
        driver.wait_ready();
        driver
    }

    /// [`CsiDriver::start`] with the `berth-csi` built beside the running test.
    pub fn start_workspace(parent: &Path, node_id: &str) -> Self {
        Self::start(&workspace_bin("berth-csi"), parent, node_id)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(guard) = &mut self.child
                && let Ok(Some(status)) = guard.0.try_wait()
            {
                panic!(
                    "berth-csi exited with {status}: {}",
                    std::fs::read_to_string(self.log_file()).unwrap_or_default()
                );
            }
            if self.socket.exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berth-csi did not create {} within {READY_WITHIN:?}: {}",
                self.socket.display(),
                std::fs::read_to_string(self.log_file()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The driver's stderr (its tracing log).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("csi.log")
    }

    /// The directory of the volume with CSI id `volume_id` (a PV's
    /// `spec.csi.volumeHandle`).
    pub fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.root.join("volumes").join(volume_id)
    }

    /// The ids of the volumes on disk (`<root>/volumes/*`).
    pub fn volumes(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root.join("volumes"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }
}

impl Drop for CsiDriver {
    fn drop(&mut self) {
        self.child = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
