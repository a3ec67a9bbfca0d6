//! Skipped tests: printed with their reason and recorded for `cargo xtask test`.

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A name unique to this process and call, `prefix` first (kept short: interface
/// names are limited to 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 100_000)
}

/// Records the current test as skipped for `reason` and prints it. The caller returns
/// right after.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(dir) = std::env::var_os("BERTH_TEST_SKIP_DIR") {
        let dir = PathBuf::from(dir);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let file = dir.join(format!("{}-{n}", std::process::id()));
        if let Err(err) =
            fs::create_dir_all(&dir).and_then(|()| fs::write(&file, format!("{test}\t{reason}\n")))
        {
            // Losing the record would turn a skip into a silent pass: fail loudly.
            panic!("cannot record skip of {test} in {}: {err}", file.display());
        }
    }
}
