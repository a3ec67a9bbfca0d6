//! `cargo xtask dist`'s tarball for the tests that install from it: `BERTH_DIST_TARBALL`
//! when set (`cargo xtask test` builds one before the e2e tests, and a developer may
//! have one), otherwise made with `xtask dist --bin-dir target/debug --fast` from the
//! debug binaries the test run has built anyway — no release build — into a temporary
//! directory removed when the test ends.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_testkit::workspace_bin;

/// The tarball under test, and the temporary directory it was built in (removed on
/// drop) unless it came from `BERTH_DIST_TARBALL`.
pub struct Tarball {
    pub path: PathBuf,
    out_dir: Option<tempfile::TempDir>,
}

impl Tarball {
    pub fn get() -> Self {
        if let Some(path) = std::env::var_os("BERTH_DIST_TARBALL") {
            return Self {
                path: PathBuf::from(path),
                out_dir: None,
            };
        }
        let xtask = workspace_bin("xtask");
        assert!(
            xtask.exists(),
            "{} is missing: run `cargo build -p xtask` (or set BERTH_DIST_TARBALL)",
            xtask.display()
        );
        // target/debug: the berth binaries the test run built, beside xtask.
        let bin_dir = xtask.parent().expect("xtask lives in target/<profile>");
        let out_dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(&xtask)
            .arg("dist")
            .arg("--bin-dir")
            .arg(bin_dir)
            .arg("--out-dir")
            .arg(out_dir.path())
            .arg("--fast")
            .output()
            .expect("run xtask dist");
        assert!(
            out.status.success(),
            "xtask dist --bin-dir {} failed: {}{}",
            bin_dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Its last line is the tarball.
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        let path = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("xtask dist printed the tarball")
                .trim(),
        );
        // Only the tarballs are used: the staged trees (the debug info unpacked, some
        // 400 MiB) go now rather than with the directory.
        for entry in std::fs::read_dir(out_dir.path()).expect("read the out dir") {
            let entry = entry.expect("an entry");
            if entry.file_type().expect("its type").is_dir() {
                std::fs::remove_dir_all(entry.path()).expect("remove a staged tree");
            }
        }
        Self {
            path,
            out_dir: Some(out_dir),
        }
    }

    /// Whether this test made it (from the debug binaries, with `--bin-dir`).
    pub fn built_here(&self) -> bool {
        self.out_dir.is_some()
    }

    /// The debug-info tarball beside it.
    pub fn debug(&self) -> PathBuf {
        self.path.with_file_name(
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.replace(".tar.gz", "-debug.tar.gz"))
                .expect("a name"),
        )
    }

    /// Unpacks the tarball into `dir`; returns the release's top directory.
    pub fn unpack(&self, dir: &Path) -> PathBuf {
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&self.path)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("run tar");
        assert!(status.success(), "tar -xzf {} failed", self.path.display());
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .expect("a .tar.gz");
        dir.join(name)
    }
}
