//! The tarball's `MANIFEST` (what is in it, each binary's size and the shared libraries
//! it needs) and `SHA256SUMS` (what `install.sh` verifies before installing).

use std::fmt::Write as _;
use std::path::Path;

/// One binary of `bin/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub name: String,
    /// As cargo built it (with its profile's line tables).
    pub unstripped: u64,
    /// As shipped.
    pub stripped: u64,
    /// Its `.debug` file, in the debug tarball.
    pub debug: u64,
    /// The shared libraries it loads (`ldd`); empty when statically linked.
    pub libraries: Vec<String>,
    /// The newest glibc symbol version it references (`GLIBC_2.34` → (2, 34)).
    pub glibc: Option<(u32, u32)>,
}

impl Binary {
    /// `static`, or `dynamic: ` and the libraries it loads.
    pub fn linking(&self) -> String {
        if self.libraries.is_empty() {
            "static".to_owned()
        } else {
            format!("dynamic: {}", self.libraries.join(" "))
        }
    }
}

/// The libraries in `ldd`'s output (the vDSO, which is no file, left out); empty for
/// a static binary.
pub fn parse_ldd(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.contains(".so") && !name.starts_with("linux-vdso"))
        .map(|name| {
            name.rsplit('/')
                .next()
                .unwrap_or(name)
                .trim_end_matches(':')
                .to_owned()
        })
        .collect()
}

/// The newest `GLIBC_2.N` version named in an ELF file (its version needs), which
/// decides the oldest glibc (and distribution) it runs on.
pub fn glibc_floor(elf: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut best = None;
    let mut at = 0;
    while let Some(pos) = elf[at..].windows(TAG.len()).position(|w| w == TAG) {
        let start = at + pos + TAG.len();
        let digits: Vec<u8> = elf[start..]
            .iter()
            .take(12)
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.').map(str::parse::<u32>);
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            best = best.max(Some((major, minor)));
        }
        at = start;
    }
    best
}

/// Bytes in MiB.
pub fn mebibytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", mebibytes(bytes))
}

/// Where the binaries came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// The `release-lto` profile ([`super::PROFILE`]), built by dist itself (or by an
    /// earlier run, with `--no-build`).
    Release,
    /// Taken as they were from a directory (`--bin-dir`), whatever profile made them.
    Dir(&'a Path),
}

/// What the manifest says about one build.
#[derive(Debug, Clone)]
pub struct Build<'a> {
    pub version: &'a str,
    /// `linux-amd64`.
    pub platform: &'a str,
    /// The Rust target triple.
    pub target: &'a str,
    pub origin: Origin<'a>,
    /// `git describe`-like: commit, and whether the tree had changes.
    pub source: &'a str,
    pub binaries: &'a [Binary],
    /// The debug tarball's file name.
    pub debug_tarball: &'a str,
}

/// The `MANIFEST` file.
pub fn render(build: &Build<'_>) -> String {
    let mut out = String::new();
    let origin = match build.origin {
        Origin::Release => format!("{} profile", super::PROFILE),
        Origin::Dir(dir) => format!("binaries from {}", dir.display()),
    };
    let _ = writeln!(
        out,
        "berth {} for {} (Rust target {}, {origin}, source {})\n",
        build.version, build.platform, build.target, build.source
    );
    let _ = writeln!(
        out,
        "bin/, stripped. Their debug info is in {}: one <name>.debug a\n\
         binary, found through its .gnu_debuglink beside it or under /usr/lib/debug/<its dir>.\n",
        build.debug_tarball
    );
    let width = build
        .binaries
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0);
    for b in build.binaries {
        let glibc = b
            .glibc
            .map(|(major, minor)| format!("; glibc >= {major}.{minor}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<width$}  {:>10}  (unstripped {}, debug {})  {}{glibc}",
            b.name,
            mib(b.stripped),
            mib(b.unstripped),
            mib(b.debug),
            b.linking(),
        );
    }
    let total: u64 = build.binaries.iter().map(|b| b.stripped).sum();
    let _ = writeln!(out, "  {:<width$}  {:>10}", "total", mib(total));
    out.push_str(
        "\nlib/berth/berth-ebpf-programs  the eBPF object berth-agent loads (--ebpf-object)\n\
         lib/berth/images/pause         the pause image (OCI layout holding the static berth-pause)\n\
         systemd/                       berth-server, berth-agent and berth-csi units (the flags of `cargo xtask up`)\n\
         install.sh, uninstall.sh       set a node up from this directory, or remove it (--help)\n\
         SHA256SUMS                     every file's checksum; install.sh verifies them first\n\
         \n\
         A node needs: Linux 6.6 or newer with BTF (the eBPF Service load balancer and\n\
         NetworkPolicy), cgroups (v2, or v1), overlayfs, iptables (berth-cni masquerades pod\n\
         traffic leaving the cluster), and systemd for the units.\n",
    );
    out
}

/// `SHA256SUMS` in `sha256sum -c`'s format.
pub fn sha256sums(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(path, sum)| format!("{sum}  {path}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_becomes_library_names() {
        let dynamic = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(dynamic),
            [
                "libgcc_s.so.1",
                "libm.so.6",
                "libc.so.6",
                "ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn the_newest_glibc_version_is_found() {
        let elf = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0GLIBC_2.3.4\0";
        assert_eq!(glibc_floor(elf), Some((2, 34)));
        assert_eq!(glibc_floor(b"\0musl\0"), None);
    }

    #[test]
    fn the_manifest_names_every_binary_its_size_and_libraries() {
        let binaries = [
            Binary {
                name: "berth-server".into(),
                unstripped: 189 << 20,
                stripped: 31 << 20,
                debug: 150 << 20,
                libraries: vec!["libc.so.6".into(), "libm.so.6".into()],
                glibc: Some((2, 34)),
            },
            Binary {
                name: "berth-cni".into(),
                unstripped: 9 << 20,
                stripped: 2 << 20,
                debug: 7 << 20,
                libraries: vec![],
                glibc: None,
            },
        ];
        let build = Build {
            version: "0.1.0",
            platform: "linux-amd64",
            target: "x86_64-unknown-linux-gnu",
            origin: Origin::Release,
            source: "abc1234",
            binaries: &binaries,
            debug_tarball: "berth-0.1.0-linux-amd64-debug.tar.gz",
        };
        let text = render(&build);
        assert!(
            text.starts_with(
                "berth 0.1.0 for linux-amd64 (Rust target x86_64-unknown-linux-gnu, release-lto profile, source abc1234)"
            ),
            "{text}"
        );
        let from_dir = render(&Build {
            origin: Origin::Dir(Path::new("target/debug")),
            ..build
        });
        assert!(
            from_dir.contains("binaries from target/debug, source abc1234"),
            "{from_dir}"
        );
        assert!(
            text.contains(
                "berth-server    31.0 MiB  (unstripped 189.0 MiB, debug 150.0 MiB)  dynamic: libc.so.6 libm.so.6; glibc >= 2.34"
            ),
            "{text}"
        );
        assert!(text.contains("berth-cni"), "{text}");
        assert!(text.contains("2.0 MiB"), "{text}");
        assert!(text.contains("static"), "{text}");
        assert!(text.contains("total           33.0 MiB"), "{text}");
        assert!(
            text.contains("berth-0.1.0-linux-amd64-debug.tar.gz"),
            "{text}"
        );
        assert_eq!(
            sha256sums(&[("bin/a".into(), "00ff".into())]),
            "00ff  bin/a\n"
        );
    }
}
