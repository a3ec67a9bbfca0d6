//! Which device nodes a container may create and open: the OCI
//! `linux.resources.devices` rules followed by runc's default allow-list (always
//! appended, as runc's `specconv` does), enforced before the container's first process
//! runs — on cgroup v2 by berth's `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's cgroup, on v1 by the `devices` controller.
//!
//! Semantics (runc's device filter): a request (type, major, minor, access) matches a
//! rule when type, major and minor match and its access is a subset of the rule's; the
//! last matching rule decides; no match denies. CRI puts "deny all" first for ordinary
//! containers and "allow all" for privileged ones. Entry point: [`rules`], then
//! `Cgroup::apply_devices`.

use berth_ebpf_common::{
    DEVICE_ACC_MKNOD, DEVICE_ACC_READ, DEVICE_ACC_WRITE, DEVICE_ANY, DEVICE_KIND_ANY,
    DEVICE_KIND_BLOCK, DEVICE_KIND_CHAR, DeviceRule,
};
use oci_spec::runtime::{LinuxDeviceType, Spec};

/// runc's default allowed devices (libcontainer/specconv `AllowedDevices`): mknod of
/// any character or block device (creating is harmless, opening is what counts), the
/// standard /dev nodes, /dev/pts/* and /dev/ptmx. (type, major, minor, access).
pub const RUNC_DEFAULTS: [(char, i64, i64, &str); 10] = [
    ('c', -1, -1, "m"),
    ('b', -1, -1, "m"),
    ('c', 1, 3, "rwm"),    // /dev/null
    ('c', 1, 8, "rwm"),    // /dev/random
    ('c', 1, 7, "rwm"),    // /dev/full
    ('c', 5, 0, "rwm"),    // /dev/tty
    ('c', 1, 5, "rwm"),    // /dev/zero
    ('c', 1, 9, "rwm"),    // /dev/urandom
    ('c', 136, -1, "rwm"), // /dev/pts/*
    ('c', 5, 2, "rwm"),    // /dev/ptmx
];

/// /dev/console, allowed when the process has a terminal (runc's console rule).
const CONSOLE: (char, i64, i64, &str) = ('c', 5, 1, "rwm");

/// One rule in the form both enforcement paths take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// 'a', 'b' or 'c'.
    pub kind: char,
    /// -1 = any.
    pub major: i64,
    pub minor: i64,
    /// Subset of "rwm".
    pub access: Access,
    pub allow: bool,
}

/// Access bits in the kernel's `BPF_DEVCG_ACC_*` encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    pub const ALL: Self = Self(DEVICE_ACC_MKNOD | DEVICE_ACC_READ | DEVICE_ACC_WRITE);

    fn parse(text: &str) -> Result<Self, String> {
        let mut bits = 0;
        for ch in text.chars() {
            bits |= match ch {
                'r' => DEVICE_ACC_READ,
                'w' => DEVICE_ACC_WRITE,
                'm' => DEVICE_ACC_MKNOD,
                other => return Err(format!("device access {text:?}: unknown {other:?}")),
            };
        }
        Ok(Self(bits))
    }

    /// "rwm" order, as the v1 controller's files take it.
    pub fn as_str(self) -> String {
        let mut s = String::new();
        for (bit, ch) in [
            (DEVICE_ACC_READ, 'r'),
            (DEVICE_ACC_WRITE, 'w'),
            (DEVICE_ACC_MKNOD, 'm'),
        ] {
            if self.0 & bit != 0 {
                s.push(ch);
            }
        }
        s
    }
}

impl Rule {
    fn new((kind, major, minor, access): (char, i64, i64, &str)) -> Self {
        Self {
            kind,
            major,
            minor,
            // The table above is valid by construction.
            access: Access::parse(access).unwrap_or(Access::ALL),
            allow: true,
        }
    }

    /// Whether the rule covers every device with every access.
    pub fn is_everything(&self) -> bool {
        self.kind == 'a' && self.major < 0 && self.minor < 0 && self.access == Access::ALL
    }

    /// The rule as the v1 `devices.allow`/`devices.deny` line ("c 1:3 rwm", "a").
    pub fn v1_line(&self) -> String {
        if self.is_everything() {
            return "a".into();
        }
        let num = |n: i64| {
            if n < 0 {
                "*".to_string()
            } else {
                n.to_string()
            }
        };
        format!(
            "{} {}:{} {}",
            self.kind,
            num(self.major),
            num(self.minor),
            self.access.as_str()
        )
    }

    /// The rule as the device program's table entry.
    pub fn bpf(&self) -> DeviceRule {
        let num = |n: i64| u32::try_from(n).unwrap_or(DEVICE_ANY);
        DeviceRule {
            kind: match self.kind {
                'b' => DEVICE_KIND_BLOCK,
                'c' => DEVICE_KIND_CHAR,
                _ => DEVICE_KIND_ANY,
            },
            major: num(self.major),
            minor: num(self.minor),
            access: self.access.0,
            allow: u32::from(self.allow),
        }
    }
}

/// The rules for a container: the spec's, then runc's defaults (and /dev/console with a
/// terminal). `Ok(None)` when the result allows everything (a privileged container):
/// nothing needs enforcing.
pub fn rules(spec: &Spec) -> Result<Option<Vec<Rule>>, String> {
    let mut out = Vec::new();
    let spec_rules = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    for d in &spec_rules {
        let kind = match d.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => 'a',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::P => {
                return Err("device rule of type p (FIFO): not a device cgroup type".into());
            }
        };
        let access = match d.access().as_deref() {
            None | Some("") => Access::ALL,
            Some(a) => Access::parse(a)?,
        };
        out.push(Rule {
            kind,
            major: d.major().unwrap_or(-1),
            minor: d.minor().unwrap_or(-1),
            access,
            allow: d.allow(),
        });
    }
    out.extend(RUNC_DEFAULTS.iter().copied().map(Rule::new));
    if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
        out.push(Rule::new(CONSOLE));
    }
    // Everything allowed when the last "everything" rule allows and no deny follows it.
    let last_all = out.iter().rposition(Rule::is_everything);
    if let Some(i) = last_all
        && out[i].allow
        && out[i + 1..].iter().all(|r| r.allow)
    {
        return Ok(None);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(devices: serde_json::Value, terminal: bool) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "linux": {"resources": {"devices": devices}},
        }))
        .expect("spec")
    }

    #[test]
    fn cri_deny_all_then_runc_defaults() {
        let r = rules(&spec(
            serde_json::json!([{"allow": false, "access": "rwm"}]),
            false,
        ))
        .expect("rules")
        .expect("restricted");
        assert_eq!(r[0].v1_line(), "a");
        assert!(!r[0].allow);
        let lines: Vec<String> = r.iter().skip(1).map(Rule::v1_line).collect();
        assert_eq!(
            lines,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:8 rwm",
                "c 1:7 rwm",
                "c 5:0 rwm",
                "c 1:5 rwm",
                "c 1:9 rwm",
                "c 136:* rwm",
                "c 5:2 rwm"
            ]
        );
        let b = r[1].bpf();
        assert_eq!(
            (b.kind, b.major, b.minor, b.access),
            (DEVICE_KIND_CHAR, DEVICE_ANY, DEVICE_ANY, DEVICE_ACC_MKNOD)
        );
        // mknod c 4:1 is allowed, opening it is not: the last matching rule decides.
        let verdict = |kind, major, minor, access| {
            r.iter()
                .map(Rule::bpf)
                .rfind(|x| x.matches(kind, major, minor, access))
                .is_some_and(|x| x.allow == 1)
        };
        assert!(verdict(DEVICE_KIND_CHAR, 4, 1, DEVICE_ACC_MKNOD));
        assert!(!verdict(DEVICE_KIND_CHAR, 4, 1, DEVICE_ACC_READ));
        assert!(!verdict(
            DEVICE_KIND_BLOCK,
            8,
            0,
            DEVICE_ACC_READ | DEVICE_ACC_WRITE
        ));
        assert!(verdict(
            DEVICE_KIND_CHAR,
            1,
            3,
            DEVICE_ACC_READ | DEVICE_ACC_WRITE
        ));
        assert!(verdict(DEVICE_KIND_CHAR, 136, 7, DEVICE_ACC_READ));
        assert!(
            !verdict(DEVICE_KIND_CHAR, 5, 1, DEVICE_ACC_READ),
            "console only with a terminal"
        );
    }

    #[test]
    fn privileged_allow_all_needs_no_enforcement() {
        assert_eq!(
            rules(&spec(
                serde_json::json!([{"allow": true, "access": "rwm"}]),
                true
            )),
            Ok(None)
        );
        let with_tty = rules(&spec(
            serde_json::json!([{"allow": false, "access": "rwm"}]),
            true,
        ))
        .expect("rules")
        .expect("restricted");
        assert_eq!(
            with_tty.last().map(Rule::v1_line).as_deref(),
            Some("c 5:1 rwm")
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let err = rules(&spec(
            serde_json::json!([{"allow": true, "access": "rwx"}]),
            false,
        ))
        .expect_err("bad access");
        assert!(err.contains("rwx"), "{err}");
    }
}
