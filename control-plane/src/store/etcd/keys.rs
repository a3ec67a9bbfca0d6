//! kube-apiserver's etcd key layout, translated at the store boundary.
//!
//! Inside berth every key is `/registry/<group>/<plural>/[<namespace>/]<name>`, with
//! `core` for the core group (see `apiserver/registry.rs`). In etcd, under
//! `--etcd-prefix` (default `/registry`):
//!
//! | berth key | etcd key |
//! |---|---|
//! | `/registry/core/pods/default/web` | `/registry/pods/default/web` |
//! | `/registry/apps/deployments/default/web` | `/registry/apps/deployments/default/web` |
//! | `/registry/stable.example.com/crontabs/default/c` | `/registry/stable.example.com/crontabs/default/c` |
//!
//! so `etcdctl get --prefix /registry --keys-only` reads like a kube-apiserver's etcd:
//! core resources directly under the prefix, other groups under their group name.
//! (kube-apiserver also drops the group of a few built-in resources and renames a few,
//! `minions` for nodes; berth keeps one rule without exceptions.)
//!
//! The translation is a bijection because the first segment after the prefix tells the
//! two forms apart: a group name is a DNS subdomain with a dot (CRD and APIService
//! groups must have one) or one of the four built-in groups without one
//! ([`DOTLESS_GROUPS`]); a core resource's plural is neither. A key that would break
//! this — a dotless group outside those four, or a core plural spelled like a group —
//! is refused rather than stored where it would read back as another key.

use super::super::{Result, StoreError};

/// The built-in API groups whose names have no dot.
pub const DOTLESS_GROUPS: [&str; 4] = ["apps", "autoscaling", "batch", "policy"];

/// Where every berth key lives.
pub(crate) const ROOT: &str = "/registry/";
/// The core group's segment in berth keys (absent in etcd keys).
const CORE: &str = "core/";

fn is_group(segment: &str) -> bool {
    segment.contains('.') || DOTLESS_GROUPS.contains(&segment)
}

/// An etcd key range `[start, end)`, and whether the keys in it still have to be
/// checked against the berth prefix they were asked for (when the prefix ends inside
/// the segment that tells core keys from group keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub filter: bool,
}

/// The translation for one `--etcd-prefix`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The etcd prefix with its trailing slash (`/registry/`).
    base: String,
}

impl Layout {
    /// `prefix` is `--etcd-prefix`: a path starting with `/` (a trailing `/` is
    /// ignored).
    pub fn new(prefix: &str) -> std::result::Result<Self, String> {
        let trimmed = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || trimmed.is_empty() {
            return Err(format!(
                "--etcd-prefix {prefix:?}: want an absolute key prefix such as /registry"
            ));
        }
        Ok(Self {
            base: format!("{trimmed}/"),
        })
    }

    /// The etcd prefix with its trailing slash (`/registry/`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The etcd key of berth key `key`.
    pub fn to_etcd(&self, key: &str) -> Result<Vec<u8>> {
        let refuse = |why: &str| StoreError::Backend(format!("key {key:?} {why}"));
        let Some(rest) = key.strip_prefix(ROOT) else {
            return Err(refuse("is outside /registry/"));
        };
        let (group, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let mapped = if group == "core" {
            let plural = tail.split('/').next().unwrap_or_default();
            if plural.is_empty() || is_group(plural) {
                return Err(refuse("has a core resource named like an API group"));
            }
            tail
        } else if is_group(group) {
            rest
        } else {
            return Err(refuse(
                "names a group without a dot that is not apps, autoscaling, batch or policy",
            ));
        };
        Ok(format!("{}{mapped}", self.base).into_bytes())
    }

    /// The berth key of etcd key `key`; `None` for a key that is not berth's (outside
    /// the prefix, or not UTF-8).
    pub fn from_etcd(&self, key: &[u8]) -> Option<String> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.base)?;
        let first = rest.split('/').next().unwrap_or_default();
        Some(if is_group(first) {
            format!("{ROOT}{rest}")
        } else {
            format!("{ROOT}{CORE}{rest}")
        })
    }

    /// The etcd range holding every berth key that starts with `prefix`; `None` if no
    /// berth key can.
    pub fn range(&self, prefix: &str) -> Option<Range> {
        let everything = || Range {
            start: self.base.clone().into_bytes(),
            end: range_end(self.base.as_bytes()),
            filter: false,
        };
        let Some(rest) = prefix.strip_prefix(ROOT) else {
            // `/`, `/reg`: every key; anything else: none.
            return ROOT.starts_with(prefix).then(everything);
        };
        if rest.is_empty() {
            return Some(everything());
        }
        let within = |tail: &str, filter: bool| {
            let start = format!("{}{tail}", self.base).into_bytes();
            let end = range_end(&start);
            Some(Range { start, end, filter })
        };
        if let Some(tail) = rest.strip_prefix(CORE) {
            // Until the plural is complete, group keys can share the etcd prefix.
            return within(tail, !tail.contains('/'));
        }
        match rest.split_once('/') {
            Some((group, _)) if is_group(group) => within(rest, false),
            // A complete first segment that is no group: no key is stored there.
            Some(_) => None,
            // `/registry/c`: core keys (any plural) and groups starting with `c`.
            None => Some(Range {
                filter: true,
                ..everything()
            }),
        }
    }
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a
/// prefix).
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new("/registry").expect("a valid prefix")
    }

    #[test]
    fn keys_are_kube_apiservers_and_round_trip() {
        let l = layout();
        for (berth, etcd) in [
            (
                "/registry/core/pods/default/web",
                "/registry/pods/default/web",
            ),
            ("/registry/core/nodes/n1", "/registry/nodes/n1"),
            (
                "/registry/apps/deployments/default/web",
                "/registry/apps/deployments/default/web",
            ),
            ("/registry/batch/jobs/ns/j", "/registry/batch/jobs/ns/j"),
            (
                "/registry/rbac.authorization.k8s.io/clusterroles/view",
                "/registry/rbac.authorization.k8s.io/clusterroles/view",
            ),
            (
                "/registry/stable.example.com/crontabs/ns/c",
                "/registry/stable.example.com/crontabs/ns/c",
            ),
        ] {
            let got = l.to_etcd(berth).expect("translatable");
            assert_eq!(String::from_utf8_lossy(&got), etcd, "{berth}");
            assert_eq!(l.from_etcd(&got).as_deref(), Some(berth), "{etcd}");
        }
        let custom = Layout::new("/cluster-a/").expect("prefix");
        assert_eq!(
            custom.to_etcd("/registry/core/pods/a/b").expect("key"),
            b"/cluster-a/pods/a/b"
        );
        assert_eq!(custom.from_etcd(b"/registry/pods/a/b"), None);
    }

    #[test]
    fn keys_that_would_collide_are_refused() {
        let l = layout();
        assert!(l.to_etcd("/r/pods/a").is_err());
        assert!(l.to_etcd("/registry/example/things/a").is_err());
        assert!(l.to_etcd("/registry/core/apps/x").is_err());
        assert!(l.to_etcd("/registry/core/a.b/x").is_err());
        assert!(l.to_etcd("/registry/core/").is_err());
        assert!(Layout::new("registry").is_err());
        assert!(Layout::new("/").is_err());
    }

    #[test]
    fn prefixes_become_ranges() {
        let l = layout();
        let r = l.range("/registry/core/pods/").expect("range");
        assert_eq!(
            (r.start.as_slice(), r.filter),
            (&b"/registry/pods/"[..], false)
        );
        assert_eq!(r.end, b"/registry/pods0");
        let r = l.range("/registry/apps/deployments/ns/").expect("range");
        assert_eq!(r.start, b"/registry/apps/deployments/ns/");
        assert!(!r.filter);
        let all = l.range("/registry/").expect("range");
        assert_eq!(
            (all.start.as_slice(), all.filter),
            (&b"/registry/"[..], false)
        );
        assert!(l.range("/registry/core/").expect("range").filter);
        assert!(l.range("/registry/core/po").expect("range").filter);
        assert!(l.range("/registry/a").expect("range").filter);
        assert_eq!(l.range("/registry/example/x/"), None);
        assert_eq!(l.range("/other/"), None);
        assert_eq!(range_end(b"a\xff"), b"b");
    }
}
