//! The `CNI_*` environment a runtime invokes a plugin with (CNI spec, "Parameters").

use std::path::PathBuf;

use crate::spec::{CniError, code};

/// The verb in `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Gc => "GC",
            Self::Status => "STATUS",
        }
    }
}

/// One invocation's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub verb: Verb,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
}

fn invalid_env(msg: String) -> CniError {
    CniError::new(code::INVALID_ENV, msg)
}

impl Invocation {
    /// Reads the parameters through `get` (the process environment in the binary),
    /// checking what `CNI_COMMAND` requires.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let verb = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Verb::Add,
            Some("DEL") => Verb::Del,
            Some("CHECK") => Verb::Check,
            Some("VERSION") => Verb::Version,
            Some("GC") => Verb::Gc,
            Some("STATUS") => Verb::Status,
            Some(other) => return Err(invalid_env(format!("unknown CNI_COMMAND {other:?}"))),
            None => return Err(invalid_env("CNI_COMMAND is not set".into())),
        };
        let needs_container = matches!(verb, Verb::Add | Verb::Del | Verb::Check);
        let required = |name: &str| -> Result<String, CniError> {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid_env(format!("{name} is not set")))
        };
        let (container_id, ifname) = if needs_container {
            (required("CNI_CONTAINERID")?, required("CNI_IFNAME")?)
        } else {
            (String::new(), String::new())
        };
        if needs_container {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let netns = match verb {
            Verb::Add | Verb::Check => Some(PathBuf::from(required("CNI_NETNS")?)),
            _ => get("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        let path: Vec<PathBuf> = match verb {
            Verb::Version => Vec::new(),
            _ => required("CNI_PATH")?
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        Ok(Self {
            verb,
            container_id,
            netns,
            ifname,
            args: get("CNI_ARGS").unwrap_or_default(),
            path,
        })
    }
}

/// Container IDs: non-empty, alphanumerics plus `_.-` (the spec's rule).
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid_env(format!(
            "CNI_CONTAINERID {id:?} is not a valid container ID"
        )))
    }
}

/// Interface names as Linux takes them: 1–15 bytes, no `/`, `:` or whitespace, not `.`/`..`.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(invalid_env(format!(
            "CNI_IFNAME {name:?} is not a valid interface name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-123"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn add_reads_everything() {
        let inv = Invocation::from_env(env(ADD)).expect("valid");
        assert_eq!(inv.verb, Verb::Add);
        assert_eq!(
            inv.path,
            [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn missing_or_bad_variables_are_error_4() {
        for drop in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_PATH",
        ] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != drop).collect();
            let err = Invocation::from_env(env(&pairs)).expect_err(drop);
            assert_eq!(err.code, code::INVALID_ENV, "{drop}");
            assert!(err.msg.contains(drop), "message names {drop}: {}", err.msg);
        }
        for (k, v) in [
            ("CNI_COMMAND", "FROB"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "sixteen-chars-xx"),
            ("CNI_CONTAINERID", "-x"),
        ] {
            let pairs: Vec<_> = ADD
                .iter()
                .copied()
                .map(|(a, b)| if a == k { (a, v) } else { (a, b) })
                .collect();
            assert_eq!(
                Invocation::from_env(env(&pairs)).expect_err(v).code,
                code::INVALID_ENV
            );
        }
    }

    #[test]
    fn del_does_not_need_netns_and_version_needs_nothing() {
        let del: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(Invocation::from_env(env(&del)).expect("valid").netns, None);
        assert_eq!(
            Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")]))
                .expect("valid")
                .verb,
            Verb::Version
        );
    }
}
