//! Compiles the vendored Kubernetes `generated.proto` files (`proto/`) into one
//! `FileDescriptorSet` that `apiserver::protobuf` loads with prost-reflect. protoc is
//! already a build requirement of the workspace (`cargo xtask setup` installs Debian's
//! `protobuf-compiler`); `PROTOC` overrides which one runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut files = Vec::new();
    protos(&root, &mut files)?;
    files.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.fds");
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".to_owned());
    let mut cmd = Command::new(&protoc);
    cmd.arg("-I")
        .arg(&root)
        .arg("--include_imports")
        .arg("--descriptor_set_out")
        .arg(&out);
    for f in &files {
        cmd.arg(f.strip_prefix(&root)?);
    }
    let status = cmd.status().map_err(|e| {
        format!("running {protoc} (install protobuf-compiler: `cargo xtask setup`): {e}")
    })?;
    if !status.success() {
        return Err(format!("{protoc} failed on {}: {status}", root.display()).into());
    }
    Ok(())
}
