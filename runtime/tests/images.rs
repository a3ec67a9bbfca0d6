//! The image store: OCI layouts and archives (made by skopeo), a crafted layer that
//! tries to write outside its directory, corrupted and truncated blobs, registry pulls
//! from a real `docker-registry` (concurrent pulls fetch each blob once) and from a small
//! registry in this test that demands basic credentials for a bearer token, and gc.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_runtime::image::pull::{PullOptions, pull};
use berth_runtime::image::{ImageStore, sha256_digest};
use berth_testkit::{Registry, skopeo};
use serde_json::json;

fn is_root() -> bool {
    if berth_testkit::is_root() {
        return true;
    }
    berth_testkit::skip("needs root (device nodes, xattrs in layers)");
    false
}

/// Writes an OCI layout holding one image with the given (uncompressed) layer tars.
fn layout_with_layers(dir: &Path, name: &str, layers: &[Vec<u8>]) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |bytes: &[u8]| {
        let d = sha256_digest(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).expect("blob");
        (d, bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let (d, size) = put(l);
        diff_ids.push(d.clone());
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}));
    }
    let config = json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = put(&serde_json::to_vec(&config).expect("json"));
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs});
    let (md, ms) = put(&serde_json::to_vec(&manifest).expect("json"));
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": name}}]});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    dir.to_path_buf()
}

/// A tar written by hand, header by header, so it can hold what tar builders refuse.
fn raw_tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000755\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        let size = format!("{:011o}\0", data.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn layouts_and_archives_import() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    let layout = common::image_layout("testserver");
    let img = store.import_layout(&layout, None).expect("layout");
    assert_eq!(img.reference, "berth.local/testserver:v1");
    assert_eq!(img.layers.len(), 2);
    let top = store.layer_dir(&img.layers[1]).expect("layer");
    assert!(top.join("testserver").is_file());
    let base = store.layer_dir(&img.layers[0]).expect("layer");
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).expect("link"),
        PathBuf::from("busybox")
    );

    let docker = dir.path().join("busybox-docker.tar");
    let oci = dir.path().join("busybox-oci.tar");
    let src = format!("oci:{}", common::image_layout("busybox").display());
    skopeo(&[
        "copy",
        &src,
        &format!("docker-archive:{}:example.com/bb:docker", docker.display()),
    ]);
    skopeo(&[
        "copy",
        &src,
        &format!("oci-archive:{}:example.com/bb:oci", oci.display()),
    ]);
    let d = store.import_archive(&docker, None).expect("docker archive");
    assert_eq!(d.reference, "example.com/bb:docker");
    let o = store
        .import_archive(&oci, Some("example.com/bb:named"))
        .expect("oci archive");
    assert_eq!(o.reference, "example.com/bb:named");
    for image in [&d, &o] {
        let layer = store.layer_dir(&image.layers[0]).expect("layer");
        assert!(layer.join("bin/busybox").is_file(), "{}", image.reference);
    }
    assert!(
        std::fs::read_dir(store.root().join("tmp"))
            .expect("tmp")
            .flatten()
            .all(|e| e.file_name().to_string_lossy().ends_with(".lock"))
    );
}

/// The directory outside the layer still holds only the file the test put there.
fn assert_only_target(outside: &Path) {
    let names: Vec<String> = std::fs::read_dir(outside)
        .expect("outside")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["target".to_string()],
        "wrote outside: {names:?}"
    );
}

#[test]
fn crafted_layers_cannot_escape_and_whiteouts_become_overlay_markers() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let evil = raw_tar(&[
        ("../../../outside/dotdot", b'0', "", b"x"),
        ("/outside/absolute", b'0', "", b"x"),
        ("abs", b'2', "/", b""),
        ("abs/outside/through-absolute-link", b'0', "", b"x"),
        ("up", b'2', "../../../../outside", b""),
        ("up/through-relative-link", b'0', "", b"x"),
        ("hard", b'1', "../../../outside/target", b""),
        ("dir/", b'5', "", b""),
        ("dir/.wh.gone", b'0', "", b""),
        ("opaque/.wh..wh..opq", b'0', "", b""),
    ]);
    let layout = layout_with_layers(&dir.path().join("layout"), "evil:1", &[evil]);
    std::fs::write(outside.join("target"), b"secret").expect("target");
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    let result = store.import_layout(&layout, None);
    // The hard link's target resolves inside the layer, where it does not exist: the
    // import fails with that entry named, or succeeds with everything contained.
    assert_only_target(&outside);
    match result {
        Err(err) => assert!(err.to_string().contains("hard"), "{err}"),
        Ok(_) => panic!("a hard link to a missing file must fail"),
    }

    // Without the hard link: the import succeeds and everything lands inside.
    let ok = raw_tar(&[
        ("../../../outside/dotdot", b'0', "", b"x"),
        ("/outside/absolute", b'0', "", b"x"),
        ("abs", b'2', "/", b""),
        ("abs/outside/through-absolute-link", b'0', "", b"x"),
        ("dir/", b'5', "", b""),
        ("dir/.wh.gone", b'0', "", b""),
        ("opaque/.wh..wh..opq", b'0', "", b""),
        ("file", b'0', "", b"data"),
        ("hard", b'1', "file", b""),
    ]);
    let layout = layout_with_layers(&dir.path().join("layout2"), "contained:1", &[ok]);
    let img = store.import_layout(&layout, None).expect("import");
    let layer = store.layer_dir(&img.layers[0]).expect("layer dir");
    assert_only_target(&outside);
    assert!(layer.join("outside/dotdot").is_file());
    assert!(layer.join("outside/absolute").is_file());
    assert!(layer.join("outside/through-absolute-link").is_file());
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = std::fs::symlink_metadata(layer.join("dir/gone")).expect("whiteout");
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    assert_eq!(
        lgetxattr(&layer.join("opaque"), "trusted.overlay.opaque"),
        b"y",
        "an opaque whiteout marks its directory opaque for overlayfs"
    );
    let a = std::fs::metadata(layer.join("file")).expect("file");
    let b = std::fs::metadata(layer.join("hard")).expect("hard");
    assert_eq!(a.ino(), b.ino());
}

/// The value of extended attribute `name` on `path` (not following a symlink), read
/// with lgetxattr(2) so no tool is needed; panics if it cannot be read.
fn lgetxattr(path: &Path, name: &str) -> Vec<u8> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let c_name = CString::new(name).expect("name without NUL");
    let mut value = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer is
    // valid for writes of value.len() bytes.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    let n = usize::try_from(n).unwrap_or_else(|_| {
        panic!(
            "lgetxattr {} {name}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )
    });
    value.truncate(n);
    value
}

#[test]
fn corrupt_and_truncated_blobs_are_refused_and_leave_nothing() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    for (case, damage) in [("corrupt", 0usize), ("truncated", 1)] {
        let layout = dir.path().join(case);
        skopeo(&[
            "copy",
            &format!("oci:{}", common::image_layout("busybox").display()),
            &format!("oci:{}:x", layout.display()),
        ]);
        // The biggest blob is the layer.
        let blob = std::fs::read_dir(layout.join("blobs/sha256"))
            .expect("blobs")
            .flatten()
            .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .expect("a blob")
            .path();
        let mut bytes = std::fs::read(&blob).expect("read");
        if damage == 0 {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
        } else {
            bytes.truncate(bytes.len() / 2);
        }
        std::fs::write(&blob, bytes).expect("write");
        let err = store
            .import_layout(&layout, Some("damaged:1"))
            .expect_err("damaged blob accepted");
        let text = err.to_string();
        assert!(
            text.contains("digest mismatch") || text.contains("truncated"),
            "{case}: {text}"
        );
        assert!(store.get("docker.io/library/damaged:1").is_err());
        let digest = format!(
            "sha256:{}",
            blob.file_name().expect("name").to_string_lossy()
        );
        assert!(!store.has_blob(&digest), "{case}: damaged blob stored");
        let leftovers: Vec<_> = std::fs::read_dir(store.root().join("tmp"))
            .expect("tmp")
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(leftovers.is_empty(), "{case}: {leftovers:?}");
    }
}

/// A mirror (k3s' registries.yaml shape) serves an image named after another registry:
/// the pull goes to the mirror with the repository rewritten, the image keeps the name
/// it was asked by, and when every endpoint fails the error names each attempt.
#[test]
fn mirrors_serve_images_of_other_registries_under_their_names() {
    if !is_root() {
        return;
    }
    use berth_runtime::image::pull::pull_from;
    use berth_runtime::image::registries::Registries;
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", common::image_layout("testserver").display()),
        &format!("docker://127.0.0.1:{}/hub/testserver:v1", reg.port),
    ]);
    let dead = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = Registries::parse(&format!(
        "mirrors:\n  registry.invalid:\n    endpoint: [\"http://127.0.0.1:{dead}\", \"http://127.0.0.1:{}\"]\n    rewrite:\n      \"^team/(.*)\": \"hub/$1\"\n",
        reg.port
    ))
    .expect("config");
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let name = "registry.invalid/team/testserver:v1";
    let sources = config.sources(name, &PullOptions::default());
    assert_eq!(sources.len(), 3, "{sources:?}");
    let image = rt
        .block_on(pull_from(&store, name, &sources))
        .expect("pulled through the second mirror");
    assert_eq!(image.reference, name);
    assert!(store.get(name).is_ok());
    assert!(
        reg.requests().contains("/v2/hub/testserver/manifests/v1"),
        "{}",
        reg.requests()
    );
    // Every endpoint failing: one error naming each.
    let err = rt
        .block_on(pull_from(
            &store,
            "registry.invalid/team/nope:v1",
            &config.sources("registry.invalid/team/nope:v1", &PullOptions::default()),
        ))
        .expect_err("no such image anywhere")
        .to_string();
    assert!(
        err.contains("every mirror and the registry failed"),
        "{err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{dead}")), "{err}");
    assert!(err.contains("hub/nope"), "{err}");
    assert!(err.contains("registry.invalid"), "{err}");
}

#[test]
fn pulls_from_a_registry_once_per_blob() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    let target = format!("127.0.0.1:{}/berth/testserver:v1", reg.port);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", common::image_layout("testserver").display()),
        &format!("docker://{target}"),
    ]);
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let opts = PullOptions::default();
    let (a, b) = rt.block_on(async {
        tokio::join!(pull(&store, &target, &opts), pull(&store, &target, &opts))
    });
    let a = a.expect("pull a");
    let b = b.expect("pull b");
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.reference, target);
    let layer = store.layer_dir(&a.layers[1]).expect("layer");
    assert!(layer.join("testserver").is_file());
    // Each blob was fetched once although two pulls ran at the same time.
    let log = std::fs::read_to_string(&reg.log).expect("log");
    for digest in &a.layers {
        let gets = log
            .lines()
            .filter(|l| {
                l.contains("GET")
                    && l.contains(&format!("/blobs/{digest}"))
                    && l.contains("response completed")
            })
            .count();
        assert_eq!(gets, 1, "blob {digest} fetched {gets} times");
    }
    // A missing tag is a clear registry error.
    let err = rt
        .block_on(pull(
            &store,
            &format!("127.0.0.1:{}/berth/nope:v1", reg.port),
            &opts,
        ))
        .expect_err("missing");
    assert!(err.to_string().contains("404"), "{err}");
}

/// A registry that serves one OCI layout and wants a bearer token, which its token
/// endpoint hands out only for the right basic credentials.
fn auth_registry(layout: PathBuf) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization: ") {
                    auth = v.trim().to_string();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut conn = conn;
            let reply = |conn: &mut std::net::TcpStream, code: &str, headers: &str, body: &[u8]| {
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            };
            if path == "/quit" {
                reply(&mut conn, "200 OK", "", b"");
                return;
            }
            if path.starts_with("/token") {
                // base64("alice:s3cret")
                if auth == "basic ywxpy2u6cznjcmv0" {
                    reply(
                        &mut conn,
                        "200 OK",
                        "Content-Type: application/json\r\n",
                        br#"{"token":"tok123"}"#,
                    );
                } else {
                    reply(&mut conn, "401 Unauthorized", "", b"bad credentials");
                }
                continue;
            }
            if auth != "bearer tok123" {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",scope=\"repository:img:pull\"\r\n"
                );
                reply(&mut conn, "401 Unauthorized", &challenge, b"");
                continue;
            }
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
                    .expect("json");
            let manifest_digest = index["manifests"][0]["digest"]
                .as_str()
                .expect("digest")
                .to_string();
            let (digest, ctype) = if path.contains("/manifests/") {
                (
                    manifest_digest,
                    "application/vnd.oci.image.manifest.v1+json",
                )
            } else {
                (
                    path.rsplit('/').next().unwrap_or("").to_string(),
                    "application/octet-stream",
                )
            };
            match std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(digest.trim_start_matches("sha256:")),
            ) {
                Ok(body) => reply(
                    &mut conn,
                    "200 OK",
                    &format!("Content-Type: {ctype}\r\n"),
                    &body,
                ),
                Err(_) => reply(&mut conn, "404 Not Found", "", b""),
            }
            let _ = conn.flush();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    });
    (port, handle)
}

#[test]
fn bearer_token_auth_with_basic_credentials() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, handle) = auth_registry(common::image_layout("busybox"));
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let reference = format!("127.0.0.1:{port}/img:v1");
    let err = rt
        .block_on(pull(&store, &reference, &PullOptions::default()))
        .expect_err("anonymous pull must fail");
    assert!(err.to_string().contains("401"), "{err}");
    let opts = PullOptions {
        username: Some("alice".into()),
        password: Some("s3cret".into()),
        ..Default::default()
    };
    let img = rt
        .block_on(pull(&store, &reference, &opts))
        .expect("authenticated pull");
    assert!(
        store
            .layer_dir(&img.layers[0])
            .expect("layer")
            .join("bin/busybox")
            .is_file()
    );
    let _ = std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|mut s| s.write_all(b"GET /quit HTTP/1.1\r\n\r\n"));
    let _ = handle.join();
}

#[test]
fn gc_removes_what_no_image_uses() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = common::store_with_images(&dir.path().join("store"));
    let ts = store.get("berth.local/testserver:v1").expect("testserver");
    let bb = store.get("berth.local/busybox:1.35").expect("busybox");
    assert_eq!(
        ts.layers[0], bb.layers[0],
        "testserver shares busybox's layer"
    );
    store.remove("berth.local/testserver:v1").expect("rm");
    let (blobs, layers) = store.gc(&[]).expect("gc");
    assert_eq!(layers, 1, "only testserver's own layer goes");
    assert!(
        blobs >= 3,
        "its manifest, config and layer blobs go: {blobs}"
    );
    assert!(store.layer_dir(&bb.layers[0]).expect("dir").exists());
    assert!(!store.layer_dir(&ts.layers[1]).expect("dir").exists());
    assert!(!store.has_blob(&ts.digest));
}

/// Unmounts on drop.
struct TmpfsGuard(PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_is_reported_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount a 1 MiB tmpfs");
    let _guard = TmpfsGuard(small.clone());
    let store = ImageStore::open(&small).expect("store");
    let err = store
        .import_layout(&common::image_layout("testserver"), None)
        .expect_err("2 MiB of layers fit in 1 MiB");
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(text.contains("No space left on device"), "{text}");
    assert!(store.list().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(small.join("tmp"))
        .expect("tmp")
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let partial: Vec<_> = std::fs::read_dir(small.join("layers/sha256"))
        .expect("layers")
        .flatten()
        .filter(|e| e.path().join("fs").exists())
        .collect();
    assert!(
        partial.is_empty(),
        "unpacked layers of a failed import: {partial:?}"
    );
}

#[test]
fn pulls_over_https_with_a_trusted_ca() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // A CA and a server certificate for 127.0.0.1 signed by it.
    let (ca, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    let (cert, key, csr) = (
        dir.path().join("reg.crt"),
        dir.path().join("reg.key"),
        dir.path().join("reg.csr"),
    );
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    openssl(&[
        &os("req"),
        &os("-x509"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-days"),
        &os("1"),
        &os("-subj"),
        &os("/CN=berth-test-ca"),
        &os("-keyout"),
        ca_key.as_os_str(),
        &os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        &os("req"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-subj"),
        &os("/CN=127.0.0.1"),
        &os("-keyout"),
        key.as_os_str(),
        &os("-out"),
        csr.as_os_str(),
    ]);
    openssl(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        csr.as_os_str(),
        &os("-CA"),
        ca.as_os_str(),
        &os("-CAkey"),
        ca_key.as_os_str(),
        &os("-CAcreateserial"),
        &os("-days"),
        &os("1"),
        &os("-extfile"),
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ]);
    let reg = Registry::start_with(
        dir.path(),
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ),
    );
    let target = format!("127.0.0.1:{}/berth/busybox:tls", reg.port);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", common::image_layout("busybox").display()),
        &format!("docker://{target}"),
    ]);
    let store = ImageStore::open(dir.path().join("store")).expect("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    // Trusting something else than the CA that signed the registry's certificate fails
    // the TLS handshake, and the error says so.
    let wrong = PullOptions {
        ca_file: Some(cert.clone()),
        ..Default::default()
    };
    let err = rt
        .block_on(pull(&store, &target, &wrong))
        .expect_err("untrusted certificate accepted");
    assert!(err.to_string().contains("certificate"), "{err}");
    let opts = PullOptions {
        ca_file: Some(ca.clone()),
        ..Default::default()
    };
    let img = rt
        .block_on(pull(&store, &target, &opts))
        .expect("https pull");
    assert!(
        store
            .layer_dir(&img.layers[0])
            .expect("layer")
            .join("bin/busybox")
            .is_file()
    );
}
