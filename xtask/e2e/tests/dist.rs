//! `cargo xtask dist`'s tarball, set up as a user sets a node up from it: unpacked, its
//! `install.sh` run into a temporary root (`--root DIR --no-start`) — the layout it
//! makes (binaries, the CNI plugin in /opt/cni/bin, the eBPF object, the pause image,
//! the units, the per-host settings, the bootstrap kubeconfig), the installed
//! `berth-agent --version` and `berth-server --version` running, a second run changing
//! nothing, a host without iptables and bad flags refused with a clear message — and
//! `uninstall.sh` removing it all again.
//!
//! The tarball is `BERTH_DIST_TARBALL` when set (a CI step or a developer that built
//! one already); otherwise the test makes it with `xtask dist --bin-dir target/debug
//! --fast` from the debug binaries the test run has built anyway — no release build —
//! into a temporary directory removed when the test ends. Building it is the slow part
//! (about 45 s), so one test makes it once and checks both the layout and the scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use berth_testkit::require_ebpf_object;
use common::dist::Tarball;

const TOKEN: &str = "abcdef.0123456789abcdef";
const CA: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTest\n-----END CERTIFICATE-----\n";

/// A PATH holding only the commands `install.sh` and a node need — links to this
/// host's — with `iptables` a stub when `with_iptables`, absent otherwise.
fn path_dir(dir: &Path, with_iptables: bool) -> PathBuf {
    let bin = dir.join(if with_iptables {
        "bin-full"
    } else {
        "bin-bare"
    });
    std::fs::create_dir_all(&bin).expect("mkdir");
    for tool in [
        "sh",
        "cat",
        "chmod",
        "cmp",
        "cp",
        "cut",
        "dirname",
        "find",
        "grep",
        "id",
        "mkdir",
        "mktemp",
        "mv",
        "rm",
        "sed",
        "sha256sum",
        "sleep",
        "sort",
        "tr",
        "uname",
        "rmdir",
    ] {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is not on this host"));
        let link = bin.join(tool);
        if !link.exists() {
            std::os::unix::fs::symlink(found, link).expect("symlink");
        }
    }
    if with_iptables {
        let stub = bin.join("iptables");
        std::fs::write(&stub, "#!/bin/sh\nexit 0\n").expect("write the stub");
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

fn run(script: &Path, path: &Path, args: &[&str]) -> Output {
    Command::new(path.join("sh"))
        .arg(script)
        .args(args)
        .env_clear()
        .env("PATH", path)
        .output()
        .expect("run the script")
}

fn ok(script: &Path, path: &Path, args: &[&str]) -> String {
    let out = run(script, path, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(script: &Path, path: &Path, args: &[&str]) -> String {
    let out = run(script, path, args);
    assert!(
        !out.status.success(),
        "{} {args:?} should have been refused: {}",
        script.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_tarball_installs_a_node_and_uninstall_sh_removes_it() {
    if std::env::var_os("BERTH_DIST_TARBALL").is_none() {
        require_ebpf_object!();
    }
    let tarball = Tarball::get();
    let tmp = tempfile::tempdir().expect("tempdir");
    let release = tarball.unpack(tmp.path());
    the_tarball_holds_stripped_binaries_units_and_scripts(&tarball, &release);
    install_sh_sets_a_node_up_in_a_root_and_uninstall_sh_removes_it(&release, tmp.path());
}

fn the_tarball_holds_stripped_binaries_units_and_scripts(tarball: &Tarball, release: &Path) {
    for bin in [
        "berth-server",
        "berth-agent",
        "berth-runtime",
        "berth-csi",
        "berth-cni",
    ] {
        let path = release.join("bin").join(bin);
        assert_eq!(mode(&path), 0o755, "{bin}");
        // Stripped, with a link to its debug file in the debug tarball.
        let sections = Command::new("readelf")
            .arg("-S")
            .arg(&path)
            .output()
            .expect("run readelf");
        let sections = String::from_utf8_lossy(&sections.stdout);
        assert!(sections.contains(".gnu_debuglink"), "{bin}: {sections}");
        assert!(!sections.contains(".debug_line"), "{bin} is not stripped");
    }
    for file in [
        "lib/berth/berth-ebpf-programs",
        "lib/berth/images/pause/index.json",
        "systemd/berth-server.service",
        "systemd/berth-agent.service",
        "systemd/berth-csi.service",
        "install.sh",
        "uninstall.sh",
        "MANIFEST",
        "SHA256SUMS",
        "README",
    ] {
        assert!(release.join(file).exists(), "{file} is missing");
    }
    let manifest = read(&release.join("MANIFEST"));
    assert!(manifest.contains("berth-agent"), "{manifest}");
    if tarball.built_here() {
        assert!(
            manifest.contains("binaries from "),
            "the manifest says where the binaries came from: {manifest}"
        );
    }
    assert!(
        manifest.contains("dynamic: ") || manifest.contains("static"),
        "{manifest}"
    );
    let agent = read(&release.join("systemd/berth-agent.service"));
    assert!(
        agent.contains("ExecStart=/usr/local/bin/berth-agent"),
        "{agent}"
    );
    assert!(agent.contains("--bootstrap-kubeconfig /var/lib/berth/agent/bootstrap.kubeconfig"));
    let debug = tarball.debug();
    assert!(debug.exists(), "{} is missing", debug.display());
}

/// systemd's own check of the units `install.sh` wrote into `root`, as systemd would
/// load them on that host (`systemd-analyze --root=ROOT verify`): every key known, every
/// `ExecStart` command present and executable in the root, every dependency found. The
/// root borrows this host's unit directory for the targets the units name, for the
/// check only.
fn verify_units(root: &Path, units: &[&str]) {
    let system = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.join("multi-user.target").exists())
        .expect("systemd's unit directory (Debian systemd; cargo xtask setup installs it)");
    let borrowed = root.join("usr/lib/systemd/system");
    assert!(!borrowed.exists(), "install.sh writes no units there");
    std::fs::create_dir_all(&borrowed).expect("mkdir");
    for unit in std::fs::read_dir(system).expect("read systemd's unit directory") {
        let unit = unit.expect("unit entry").path();
        if unit.extension().is_some_and(|e| e == "target") {
            std::fs::copy(&unit, borrowed.join(unit.file_name().expect("name")))
                .expect("copy a target");
        }
    }
    let paths: Vec<PathBuf> = units
        .iter()
        .map(|u| root.join("etc/systemd/system").join(u))
        .collect();
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .arg("verify")
        .args(&paths)
        .output()
        .expect("run systemd-analyze (Debian systemd; cargo xtask setup installs it)");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(root.join("usr/lib/systemd")).expect("remove the borrowed units");
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {units:?}: {}\n{said}",
        out.status
    );
}

/// `install.sh` into roots under `tmp`, then `uninstall.sh`.
fn install_sh_sets_a_node_up_in_a_root_and_uninstall_sh_removes_it(release: &Path, tmp: &Path) {
    let install = release.join("install.sh");
    let uninstall = release.join("uninstall.sh");
    let root = tmp.join("root");
    let root_arg = root.display().to_string();
    let ca = tmp.join("ca.crt");
    std::fs::write(&ca, CA).expect("write the CA");
    let ca_arg = ca.display().to_string();
    let join = [
        "--root",
        &root_arg,
        "--no-start",
        "--server",
        "https://10.0.0.1:6443",
        "--token",
        TOKEN,
        "--ca-file",
        &ca_arg,
        "--node-name",
        "node-a",
        "--pod-cidr",
        "10.244.5.0/24",
        "--node-ip",
        "10.0.0.5",
    ];

    // A host without iptables is refused, naming it, before anything is installed.
    let bare = path_dir(tmp, false);
    let err = refused(&install, &bare, &join);
    assert!(err.contains("iptables"), "{err}");
    assert!(!root.exists(), "nothing is installed on a refused host");

    let path = path_dir(tmp, true);
    // Bad flags, each with its reason.
    for (args, says) in [
        (
            vec![
                "--root",
                &root_arg,
                "--no-start",
                "--server",
                "https://x:6443",
            ],
            "go together",
        ),
        (
            vec![
                "--root",
                &root_arg,
                "--no-start",
                "--server",
                "https://x:6443",
                "--token",
                "not-a-token",
                "--ca-file",
                &ca_arg,
            ],
            "bootstrap token",
        ),
        (
            vec![
                "--root",
                &root_arg,
                "--no-start",
                "--server",
                "http://x:6443",
                "--token",
                TOKEN,
                "--ca-file",
                &ca_arg,
            ],
            "https://",
        ),
        (vec!["--root", &root_arg], "--no-start"),
        (
            vec!["--root", &root_arg, "--no-start", "--node-name", "Bad_Name"],
            "DNS name",
        ),
        (vec!["--frobnicate"], "unknown argument"),
    ] {
        let err = refused(&install, &path, &args);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    let first = ok(&install, &path, &join);
    assert!(
        first.contains("installed /usr/local/bin/berth-agent"),
        "{first}"
    );
    for bin in ["berth-agent", "berth-runtime", "berth-csi", "berth-server"] {
        assert_eq!(mode(&root.join("usr/local/bin").join(bin)), 0o755, "{bin}");
    }
    assert_eq!(mode(&root.join("opt/cni/bin/berth-cni")), 0o755);
    assert!(
        root.join("usr/local/lib/berth/berth-ebpf-programs")
            .exists()
    );
    assert!(
        root.join("usr/local/lib/berth/images/pause/index.json")
            .exists()
    );
    let agent_unit = read(&root.join("etc/systemd/system/berth-agent.service"));
    assert!(
        agent_unit.contains("EnvironmentFile=-/etc/berth/berth-agent.env"),
        "{agent_unit}"
    );
    assert!(root.join("etc/systemd/system/berth-csi.service").exists());
    assert!(
        !root
            .join("etc/systemd/system/berth-server.service")
            .exists(),
        "the server's unit only with --control-plane"
    );
    let env = read(&root.join("etc/berth/berth-agent.env"));
    assert!(env.contains("BERTH_NODE_NAME=\"node-a\""), "{env}");
    assert!(env.contains("BERTH_POD_CIDR=\"10.244.5.0/24\""), "{env}");
    assert!(
        env.contains("BERTH_AGENT_ARGS=\"--node-ip 10.0.0.5\""),
        "{env}"
    );
    let bootstrap = root.join("var/lib/berth/agent/bootstrap.kubeconfig");
    let kubeconfig = read(&bootstrap);
    assert_eq!(mode(&bootstrap), 0o600, "the token is a secret");
    assert!(
        kubeconfig.contains("server: https://10.0.0.1:6443"),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains(&format!("token: {TOKEN}")),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("certificate-authority: /var/lib/berth/agent/ca.crt"),
        "{kubeconfig}"
    );
    assert_eq!(read(&root.join("var/lib/berth/agent/ca.crt")), CA);

    // The installed binaries run.
    for bin in ["berth-agent", "berth-server"] {
        let out = Command::new(root.join("usr/local/bin").join(bin))
            .arg("--version")
            .output()
            .expect("run the installed binary");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with(bin),
            "{bin} --version: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Again: nothing changes; and without the flags the last settings stay.
    let again = ok(&install, &path, &join);
    assert!(
        !again.contains("installed "),
        "a second run changed: {again}"
    );
    let bare_again = ok(&install, &path, &["--root", &root_arg, "--no-start"]);
    assert!(!bare_again.contains("installed "), "{bare_again}");
    assert_eq!(read(&root.join("etc/berth/berth-agent.env")), env);

    // The control plane's unit and settings.
    let server = ok(
        &install,
        &path,
        &[
            "--root",
            &root_arg,
            "--no-start",
            "--control-plane",
            "--advertise-address",
            "10.0.0.1",
        ],
    );
    assert!(server.contains("berth-server.service"), "{server}");
    let server_env = read(&root.join("etc/berth/berth-server.env"));
    assert!(
        server_env.contains("BERTH_ADVERTISE_ADDRESS=\"10.0.0.1\""),
        "{server_env}"
    );
    verify_units(
        &root,
        &[
            "berth-server.service",
            "berth-agent.service",
            "berth-csi.service",
        ],
    );

    // --prefix moves the binaries, and the units follow them.
    let other = tmp.join("other");
    let other_arg = other.display().to_string();
    ok(
        &install,
        &path,
        &["--root", &other_arg, "--no-start", "--prefix", "/opt/berth"],
    );
    assert!(other.join("opt/berth/bin/berth-agent").exists());
    let unit = read(&other.join("etc/systemd/system/berth-agent.service"));
    assert!(
        unit.contains("ExecStart=/opt/berth/bin/berth-agent"),
        "{unit}"
    );
    assert!(
        unit.contains("/opt/berth/lib/berth/berth-ebpf-programs"),
        "{unit}"
    );
    verify_units(&other, &["berth-agent.service", "berth-csi.service"]);

    // uninstall.sh: files gone, the data kept unless --purge.
    ok(&uninstall, &path, &["--root", &root_arg, "--no-stop"]);
    for gone in [
        "usr/local/bin/berth-agent",
        "usr/local/bin/berth-server",
        "opt/cni/bin/berth-cni",
        "usr/local/lib/berth",
        "etc/systemd/system/berth-agent.service",
        "etc/systemd/system/berth-server.service",
        "etc/berth/berth-agent.env",
        "var/lib/berth/agent/bootstrap.kubeconfig",
    ] {
        assert!(!root.join(gone).exists(), "{gone} is still there");
    }
    assert!(
        root.join("var/lib/berth/agent/ca.crt").exists(),
        "the data stays"
    );
    ok(
        &uninstall,
        &path,
        &["--root", &root_arg, "--no-stop", "--purge"],
    );
    assert!(!root.join("var/lib/berth").exists());
    let err = refused(&uninstall, &path, &["--root", &root_arg]);
    assert!(err.contains("--no-stop"), "{err}");
}
