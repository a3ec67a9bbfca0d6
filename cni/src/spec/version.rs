//! CNI spec versions berth-cni speaks, and what each allows.

use std::fmt;

use super::{CniError, code};

/// Every version berth-cni accepts, oldest first (the VERSION verb's list).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A supported CNI spec version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// The newest version, used when nothing else is known.
    pub const LATEST: Version = Version::V1_1_0;

    /// Parses a `cniVersion`; an unknown one is error 1 (incompatible version).
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "0.3.0" => Self::V0_3_0,
            "0.3.1" => Self::V0_3_1,
            "0.4.0" => Self::V0_4_0,
            "1.0.0" => Self::V1_0_0,
            "1.1.0" => Self::V1_1_0,
            _ => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("incompatible CNI version {s:?}"),
                )
                .details(format!(
                    "berth-cni supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= Self::V1_1_0
    }

    /// Before 1.0.0 every `ips` entry carries `"version": "4"|"6"`.
    pub fn ips_have_version(self) -> bool {
        self < Self::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_round_trips() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(Version::parse(v).map(Version::as_str).ok(), Some(*v));
        }
    }

    #[test]
    fn unknown_version_is_error_1() {
        let err = Version::parse("0.2.0").expect_err("0.2.0 is not supported");
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.msg.contains("0.2.0"));
    }

    #[test]
    fn verbs_by_version() {
        assert!(!Version::V0_3_1.has_check() && Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_gc_and_status() && Version::V1_1_0.has_gc_and_status());
        assert!(Version::V0_4_0.ips_have_version() && !Version::V1_0_0.ips_have_version());
    }
}
