//! Compiles the vendored CSI spec `proto/csi.proto` (v1.10.0) into tonic client and
//! server code. protoc is a build requirement of the workspace (`cargo xtask setup`
//! installs Debian's `protobuf-compiler`); `PROTOC` overrides which one runs, as in
//! control-plane/build.rs. The well-known types csi.proto imports are vendored under
//! `proto/google/protobuf/` because Debian's protoc ships without them.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        // prost-build runs `protoc` from PATH when PROTOC is unset; say so if it is missing.
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("protoc").is_file()));
        if !found {
            return Err("protoc not found (install protobuf-compiler: `cargo xtask setup`)".into());
        }
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[root.join("csi.proto")], &[root])?;
    Ok(())
}
