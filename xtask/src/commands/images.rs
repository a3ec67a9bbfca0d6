//! `cargo xtask images`: builds berth's test images without a network, as OCI
//! image-layout directories under `target/images/<name>`:
//! - `busybox`: Debian's busybox-static with its applet links, /etc/passwd and group;
//! - `testserver`: the busybox layer plus the static `testserver` (xtask/testserver);
//! - `pause`: the static `berth-pause` alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use sha2::Digest;

use crate::util;

pub const REGISTRY_PREFIX: &str = "berth.local";

/// Where `xtask images` puts image `name`.
pub fn layout_dir(name: &str) -> PathBuf {
    util::target_dir().join("images").join(name)
}

/// The reference an image is imported under.
pub fn reference(name: &str) -> String {
    let tag = if name == "busybox" { "1.35" } else { "v1" };
    format!("{REGISTRY_PREFIX}/{name}:{tag}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A layer under construction: entries appended to an in-memory tar.
struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, path, std::io::empty())?;
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data)?;
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        Ok(())
    }

    /// (uncompressed tar, gzip of it)
    fn finish(self) -> Result<(Vec<u8>, Vec<u8>)> {
        let raw = self.tar.into_inner()?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw)?;
        Ok((raw, gz.finish()?))
    }
}

struct ImageSpec<'a> {
    name: &'a str,
    layers: Vec<(Vec<u8>, Vec<u8>)>,
    entrypoint: Vec<&'a str>,
    cmd: Vec<&'a str>,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let hex = sha256_hex(bytes);
    let path = dir.join("blobs/sha256").join(&hex);
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

fn write_layout(spec: ImageSpec<'_>) -> Result<PathBuf> {
    let dir = layout_dir(spec.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (raw, gz) in &spec.layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(raw)));
        let (digest, size) = write_blob(&dir, gz)?;
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": if spec.entrypoint.is_empty() { serde_json::Value::Null } else { serde_json::json!(spec.entrypoint) },
            "Cmd": spec.cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    });
    let (config_digest, config_size) = write_blob(&dir, &serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_size,
        },
        "layers": layer_descs,
    });
    let (manifest_digest, manifest_size) = write_blob(&dir, &serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": reference(spec.name)},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(dir)
}

fn busybox_layer() -> Result<(Vec<u8>, Vec<u8>)> {
    let busybox = std::fs::read("/bin/busybox")
        .context("/bin/busybox (Debian busybox-static; run `cargo xtask setup`)")?;
    let list =
        util::output(&mut util::cmd("/bin/busybox", ["--list"])).context("busybox --list")?;
    let mut layer = Layer::new();
    for d in [
        "bin", "etc", "tmp", "root", "proc", "sys", "dev", "var", "home",
    ] {
        layer.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    layer.file("bin/busybox", 0o755, &busybox)?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        layer.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\n",
    )?;
    layer.file(
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\n",
    )?;
    layer.finish()
}

/// Builds a static release binary of `bin` from package `package`.
fn static_binary(package: &str, bin: &str) -> Result<PathBuf> {
    util::run_checked(Command::new(util::cargo()).current_dir(util::root()).args([
        "rustc",
        "--release",
        "-p",
        package,
        "--bin",
        bin,
        "--",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "strip=debuginfo",
    ]))?;
    Ok(util::target_dir().join("release").join(bin))
}

/// Builds the images only when one is missing (`up --bin-dir`: images other processes
/// may be reading are not rewritten under them).
pub fn ensure() -> Result<()> {
    let present = ["busybox", "testserver", "pause"]
        .iter()
        .all(|name| layout_dir(name).join("index.json").exists());
    if !present {
        run()?;
    }
    Ok(())
}

/// Builds the pause image alone (the one image a node needs; `cargo xtask dist` ships
/// it) and returns its layout directory.
pub fn pause() -> Result<PathBuf> {
    let pause = std::fs::read(static_binary("berth-runtime", "berth-pause")?)?;
    let mut p = Layer::new();
    p.file("pause", 0o755, &pause)?;
    write_layout(ImageSpec {
        name: "pause",
        layers: vec![p.finish()?],
        entrypoint: vec!["/pause"],
        cmd: vec![],
    })
}

pub fn run() -> Result<std::process::ExitCode> {
    util::step("building static testserver and berth-pause");
    let testserver = std::fs::read(static_binary("berth-testserver", "testserver")?)?;

    let base = busybox_layer()?;
    let busybox = write_layout(ImageSpec {
        name: "busybox",
        layers: vec![base.clone()],
        entrypoint: vec![],
        cmd: vec!["sh"],
    })?;
    let mut ts = Layer::new();
    ts.file("testserver", 0o755, &testserver)?;
    let testserver_dir = write_layout(ImageSpec {
        name: "testserver",
        layers: vec![base, ts.finish()?],
        entrypoint: vec!["/testserver"],
        cmd: vec![],
    })?;
    let pause_dir = pause()?;
    for dir in [busybox, testserver_dir, pause_dir] {
        println!("  {}", dir.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
