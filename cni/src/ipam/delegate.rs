//! Delegation to an external IPAM plugin (`ipam.type` other than `berth-ipam`, e.g.
//! the reference `host-local`): found on `CNI_PATH`, run with the same environment
//! and the same network configuration on stdin, as the spec says a plugin invokes
//! its IPAM plugin.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{
    env::Invocation,
    spec::{CniError, CniResult, code},
};

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find(invocation: &Invocation, plugin: &str) -> Result<PathBuf, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid ipam type {plugin:?}"),
        ));
    }
    invocation
        .path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::IPAM_DELEGATE,
                format!("IPAM plugin {plugin:?} not found on CNI_PATH"),
            )
            .details(format!("searched {:?}", invocation.path))
        })
}

/// Runs the IPAM plugin for `command`; returns its parsed result for ADD.
pub fn run(
    invocation: &Invocation,
    plugin: &str,
    command: &str,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let binary = find(invocation, plugin)?;
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IPAM_DELEGATE,
                format!("cannot run {}: {e}", binary.display()),
            )
        })?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(|e| {
            CniError::new(
                code::IPAM_DELEGATE,
                format!("cannot write to {plugin}: {e}"),
            )
        })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IPAM_DELEGATE, format!("waiting for {plugin}: {e}")))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        // Pass the delegate's own error through when it printed one.
        return Err(parsed
            .as_ref()
            .and_then(CniError::from_json)
            .unwrap_or_else(|| {
                CniError::new(
                    code::IPAM_DELEGATE,
                    format!("IPAM plugin {plugin} failed: {}", out.status),
                )
                .details(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }));
    }
    if command != "ADD" {
        return Ok(None);
    }
    let value = parsed.ok_or_else(|| {
        CniError::new(
            code::IPAM_DELEGATE,
            format!("IPAM plugin {plugin} printed no JSON result"),
        )
    })?;
    CniResult::from_json(&value).map(Some)
}
