//! Pod sysctls (`spec.securityContext.sysctls`) as the kubelet admits them: the safe
//! set is allowed on every node, others only when `--allowed-unsafe-sysctls` names them
//! (a name or a `prefix*` pattern) and the kernel namespaces them; a pod asking for any
//! other is rejected before anything runs — phase Failed, reason `SysctlForbidden`,
//! message `Pod was rejected: forbidden sysctl: "<name>" not allowlisted` — as the
//! kubelet's admit handler does. Admitted sysctls are set by the sandbox's pause
//! container in the pod's network, IPC and UTS namespaces.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

/// The kubelet's reason for a rejected pod.
pub const FORBIDDEN_REASON: &str = "SysctlForbidden";

/// The kubelet's safe sysctls (pkg/kubelet/sysctl/safe_sysctls.go, Kubernetes 1.32+);
/// the kernel versions they need are all older than any kernel berth supports.
const SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Which namespace isolates a sysctl (component-helpers' `NamespacedBy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Ipc,
    Net,
    Uts,
}

impl Namespace {
    fn of(name: &str) -> Option<Self> {
        match name {
            "kernel.sem" => Some(Self::Ipc),
            "kernel.hostname" | "kernel.domainname" => Some(Self::Uts),
            _ if ["kernel.shm", "kernel.msg", "fs.mqueue."]
                .iter()
                .any(|p| name.starts_with(p)) =>
            {
                Some(Self::Ipc)
            }
            _ if name.starts_with("net.") => Some(Self::Net),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ipc => "IPC",
            Self::Net => "Net",
            Self::Uts => "UTS",
        }
    }
}

/// `net/ipv4/ip_forward` → `net.ipv4.ip_forward`: when the first separator is a slash,
/// slashes and dots swap (a dot inside a slash-separated name belongs to a segment,
/// e.g. an interface `eno2.100`), as the kubelet converts them.
pub fn dotted(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_owned(),
    }
}

/// The sysctls a node admits: the safe set and `--allowed-unsafe-sysctls`.
#[derive(Debug, Clone)]
pub struct Allowlist {
    names: BTreeMap<String, Namespace>,
    prefixes: BTreeMap<String, Namespace>,
}

impl Allowlist {
    /// The safe set plus `unsafe_patterns` (names or `prefix*`); a pattern the kernel does
    /// not namespace is refused with the kubelet's startup error.
    pub fn new(unsafe_patterns: &[String]) -> Result<Self, String> {
        let mut list = Self {
            names: BTreeMap::new(),
            prefixes: BTreeMap::new(),
        };
        for pattern in SAFE
            .iter()
            .map(|s| (*s).to_owned())
            .chain(unsafe_patterns.iter().map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
        {
            let valid = pattern.len() <= 253
                && pattern
                    .trim_end_matches('*')
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
                && !pattern.trim_end_matches('*').contains('*');
            if !valid {
                return Err(format!(
                    "--allowed-unsafe-sysctls: sysctl {pattern:?} must have at most 253 characters and consist of lower-case letters, digits, '_', '-', '.' or '/', optionally ending in '*'"
                ));
            }
            let pattern = dotted(&pattern);
            if let Some(prefix) = pattern.strip_suffix('*') {
                let ns = Namespace::of(prefix).ok_or_else(|| {
                    format!("the sysctls {pattern:?} are not known to be namespaced")
                })?;
                list.prefixes.insert(prefix.to_owned(), ns);
            } else {
                let ns = Namespace::of(&pattern).ok_or_else(|| {
                    format!("the sysctl {pattern:?} are not known to be namespaced")
                })?;
                list.names.insert(pattern, ns);
            }
        }
        Ok(list)
    }

    fn check(&self, name: &str, host_net: bool, host_ipc: bool) -> Result<(), String> {
        let name = dotted(name);
        let ns = self.names.get(&name).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| name.starts_with(p.as_str()))
                .map(|(_, ns)| *ns)
        });
        match ns {
            None => Err(format!("{name:?} not allowlisted")),
            Some(Namespace::Ipc) if host_ipc => Err(format!(
                "{name:?} not allowed with host {} enabled",
                Namespace::Ipc.label()
            )),
            Some(Namespace::Net) if host_net => Err(format!(
                "{name:?} not allowed with host {} enabled",
                Namespace::Net.label()
            )),
            Some(_) => Ok(()),
        }
    }

    /// The kubelet's admission: `Err(message)` (`forbidden sysctl: …`) for the first
    /// sysctl of the pod this node does not allow.
    pub fn admit(&self, pod: &Pod) -> Result<(), String> {
        let Some(spec) = &pod.spec else {
            return Ok(());
        };
        let sysctls = spec
            .security_context
            .as_ref()
            .and_then(|s| s.sysctls.as_ref());
        for s in sysctls.into_iter().flatten() {
            self.check(
                &s.name,
                spec.host_network == Some(true),
                spec.host_ipc == Some(true),
            )
            .map_err(|e| format!("forbidden sysctl: {e}"))?;
        }
        Ok(())
    }
}

/// The pod's sysctls with dotted names, for the sandbox.
pub fn of(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (dotted(&s.name), s.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(sysctls: &[(&str, &str)], host_net: bool) -> Pod {
        let list: Vec<_> = sysctls
            .iter()
            .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"hostNetwork": host_net, "securityContext": {"sysctls": list},
                     "containers": [{"name": "c"}]}
        }))
        .expect("pod")
    }

    #[test]
    fn the_safe_set_is_admitted_and_others_need_the_flag() {
        let safe = Allowlist::new(&[]).expect("safe set");
        assert!(
            safe.admit(&pod(
                &[("net.ipv4.ip_local_port_range", "1024 65000")],
                false
            ))
            .is_ok()
        );
        assert!(
            safe.admit(&pod(&[("net/ipv4/tcp_syncookies", "1")], false))
                .is_ok()
        );
        assert_eq!(
            safe.admit(&pod(&[("kernel.msgmax", "65536")], false))
                .expect_err("unsafe"),
            r#"forbidden sysctl: "kernel.msgmax" not allowlisted"#
        );
        assert_eq!(
            safe.admit(&pod(&[("net.ipv4.tcp_syncookies", "1")], true))
                .expect_err("host net"),
            r#"forbidden sysctl: "net.ipv4.tcp_syncookies" not allowed with host Net enabled"#
        );
        let unsafe_ok = Allowlist::new(&["kernel.msg*".into(), "net.core.somaxconn".into()])
            .expect("namespaced patterns");
        assert!(
            unsafe_ok
                .admit(&pod(&[("kernel.msgmax", "65536")], false))
                .is_ok()
        );
        assert!(
            unsafe_ok
                .admit(&pod(&[("net.core.somaxconn", "1024")], false))
                .is_ok()
        );
        assert!(
            unsafe_ok
                .admit(&pod(&[("net.core.rmem_max", "1")], false))
                .is_err()
        );
    }

    #[test]
    fn patterns_the_kernel_does_not_namespace_are_refused_at_start() {
        assert_eq!(
            Allowlist::new(&["vm.swappiness".into()]).expect_err("not namespaced"),
            r#"the sysctl "vm.swappiness" are not known to be namespaced"#
        );
        assert_eq!(
            Allowlist::new(&["kernel.*".into()]).expect_err("not namespaced"),
            r#"the sysctls "kernel.*" are not known to be namespaced"#
        );
        assert!(Allowlist::new(&["net.*".into(), "fs.mqueue.*".into()]).is_ok());
        assert!(Allowlist::new(&["net.*.x*".into()]).is_err());
    }

    #[test]
    fn slash_names_become_dotted_keeping_dots_inside_segments() {
        assert_eq!(dotted("net/ipv4/ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(
            dotted("net/ipv4/conf/eno2.100/rp_filter"),
            "net.ipv4.conf.eno2/100.rp_filter"
        );
        assert_eq!(dotted("kernel.shm_rmid_forced"), "kernel.shm_rmid_forced");
    }
}
