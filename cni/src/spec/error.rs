//! CNI errors: the spec's error object, printed on stdout with a non-zero exit.

use serde_json::{Value, json};

/// Error codes: 1–99 are the spec's well-known codes, 100+ are berth-cni's own.
pub mod code {
    /// The requested `cniVersion` is not supported.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field of the network configuration is not supported.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// An I/O failure (e.g. the IPAM store could not be written).
    pub const IO_FAILURE: u32 = 5;
    /// stdin could not be decoded.
    pub const DECODING_FAILURE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition: try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// A netlink operation failed.
    pub const NETLINK: u32 = 100;
    /// The address range has no free address.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// The requested interface name already exists in the container's netns.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// CHECK found the container's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 103;
    /// A delegated IPAM plugin failed or could not be run.
    pub const IPAM_DELEGATE: u32 = 104;
    /// Setting up masquerading failed.
    pub const MASQUERADE: u32 = 105;
}

/// A CNI error: code, message, details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the `details` text.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object as the spec defines it.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }

    /// Reads an error object another plugin printed (for delegation).
    pub fn from_json(v: &Value) -> Option<Self> {
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
        Some(Self::new(code, msg).details(details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(code::INVALID_CONFIG, "bad subnet").details("10.0.0.0/33");
        let v = e.to_json("1.1.0");
        assert_eq!(
            v,
            json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad subnet", "details": "10.0.0.0/33"})
        );
        assert_eq!(CniError::from_json(&v), Some(e));
        let plain = CniError::new(code::INVALID_ENV, "CNI_NETNS missing").to_json("0.4.0");
        assert!(plain.get("details").is_none());
    }
}
