//! `berth-cni`: the CNI plugin binary. Parameters come from `CNI_*` variables, the
//! network configuration from stdin; the result (or the spec's error object, with
//! exit status 1) goes to stdout.

use std::{
    io::{Read, Write},
    process::ExitCode,
};

use berth_cni::{
    env::Invocation,
    plugin,
    spec::{CniError, Version, code},
};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot read stdin: {e}")))
        .and_then(|_| Invocation::from_env(|k| std::env::var(k).ok()))
        .and_then(|inv| plugin::run(&inv, &stdin));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(value)) => {
            let _ = writeln!(out, "{value}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(out, "{}", err.to_json(error_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}

/// The version to report an error in: the config's, if it names a supported one.
fn error_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .and_then(|s| Version::parse(s).ok())
        })
        .unwrap_or(Version::LATEST)
        .as_str()
}
