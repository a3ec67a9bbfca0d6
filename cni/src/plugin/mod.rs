//! The plugin's verbs, one file each. [`run`] dispatches an invocation.

mod add;
mod check;
mod del;
mod gc;
mod ipam;
mod status;

use serde_json::{Value, json};

use crate::{
    env::{Invocation, Verb},
    spec::{CniError, NetConf, SUPPORTED_VERSIONS, Version, code},
};

/// Runs one invocation with `stdin` as the network configuration; returns what to
/// print on stdout (nothing for DEL, GC, STATUS and a passing CHECK).
pub fn run(inv: &Invocation, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if inv.verb == Verb::Version {
        return Ok(Some(version(stdin)));
    }
    let (conf, version) = NetConf::parse(stdin)?;
    conf.validate()?;
    match inv.verb {
        Verb::Add => add::add(inv, &conf, version, stdin).map(Some),
        Verb::Del => del::del(inv, &conf, stdin).map(|()| None),
        Verb::Check => {
            if !version.has_check() {
                return Err(verb_unsupported("CHECK", version));
            }
            check::check(inv, &conf, stdin).map(|()| None)
        }
        Verb::Gc => {
            if !version.has_gc_and_status() {
                return Err(verb_unsupported("GC", version));
            }
            gc::gc(inv, &conf, stdin).map(|()| None)
        }
        Verb::Status => {
            if !version.has_gc_and_status() {
                return Err(verb_unsupported("STATUS", version));
            }
            status::status(inv, &conf, stdin).map(|()| None)
        }
        Verb::Version => Ok(Some(self::version(stdin))),
    }
}

fn verb_unsupported(verb: &str, version: Version) -> CniError {
    CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("{verb} is not defined for cniVersion {version}"),
    )
}

/// VERSION: the versions berth-cni speaks, answered in the caller's version when it
/// sent a supported one.
fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(|s| Version::parse(s).ok())
        })
        .unwrap_or(Version::LATEST);
    json!({ "cniVersion": asked.as_str(), "supportedVersions": SUPPORTED_VERSIONS })
}

/// The deterministic host-side veth name of `container_id`/`ifname`.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mac = crate::netlink::mac_from(&format!("{container_id}/{ifname}"));
    format!(
        "veth{:02x}{:02x}{:02x}{:02x}",
        mac[2], mac[3], mac[4], mac[5]
    )
}

/// A current-thread tokio runtime: berth-cni stays single-threaded so setns(2)
/// moves the whole process.
fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot start the I/O runtime: {e}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_answers_in_the_asked_version() {
        assert_eq!(version(br#"{"cniVersion":"0.4.0"}"#)["cniVersion"], "0.4.0");
        assert_eq!(version(b"")["cniVersion"], "1.1.0");
        assert_eq!(
            version(br#"{"cniVersion":"7.0.0"}"#)["supportedVersions"]
                .as_array()
                .map(Vec::len),
            Some(5)
        );
    }

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert!(a.len() <= 15 && a.starts_with("veth"));
    }
}
