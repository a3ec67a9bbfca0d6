//! Bad input to the loader gets an error that names the problem (no root needed to
//! reach these checks: they fail before anything touches the kernel).

use std::path::Path;

use berth_ebpf::{Error, SocketLb};

#[test]
fn missing_object_names_the_path() {
    let err = SocketLb::load(Path::new("/nonexistent/berth.o")).expect_err("must fail");
    assert!(matches!(err, Error::Load { .. }), "got {err:?}");
    assert!(
        err.to_string().contains("/nonexistent/berth.o"),
        "message must name the path: {err}"
    );
}

#[test]
fn a_file_that_is_not_elf_is_rejected() {
    let dir = std::env::temp_dir().join(format!("berth-ebpf-notelf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("garbage.o");
    std::fs::write(&path, b"this is not an ELF object").expect("write");
    let err = SocketLb::load(&path).expect_err("must fail");
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(
        err.to_string().contains("garbage.o"),
        "message must name the file: {err}"
    );
}
