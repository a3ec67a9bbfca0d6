//! A container's security settings from its Pod: the seccomp profile
//! (`securityContext.seccompProfile`, the container's over the pod's, then the
//! kubelet's `--seccomp-default`). Entry point: [`seccomp_profile`].

use std::path::{Component, Path};

use berth_runtime::pod::SeccompProfile;
use k8s_openapi::api::core::v1::{
    PodSecurityContext, SeccompProfile as ApiProfile, SecurityContext,
};

/// The profile a container runs under. `root_dir` is the agent's `--root-dir`: Localhost
/// profiles live in `<root-dir>/seccomp/` (the kubelet's `<root-dir>/seccomp`).
/// `default_runtime_default` is `--seccomp-default`. The error text is the
/// CreateContainerConfigError message.
pub fn seccomp_profile(
    pod: Option<&PodSecurityContext>,
    container: Option<&SecurityContext>,
    root_dir: &Path,
    default_runtime_default: bool,
) -> Result<SeccompProfile, String> {
    let chosen = container
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod.and_then(|s| s.seccomp_profile.as_ref()));
    let Some(p) = chosen else {
        return Ok(if default_runtime_default {
            SeccompProfile::RuntimeDefault
        } else {
            SeccompProfile::Unconfined
        });
    };
    from_api(p, root_dir)
}

fn from_api(p: &ApiProfile, root_dir: &Path) -> Result<SeccompProfile, String> {
    match p.type_.as_str() {
        "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
        "Unconfined" => Ok(SeccompProfile::Unconfined),
        "Localhost" => {
            let rel = p
                .localhost_profile
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or("localhostProfile must be set if seccompProfile type is Localhost")?;
            let rel_path = Path::new(rel);
            if rel_path.is_absolute()
                || rel_path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir))
            {
                return Err(format!(
                    "localhostProfile {rel:?} must be a relative path without '..'"
                ));
            }
            Ok(SeccompProfile::Localhost {
                path: root_dir.join("seccomp").join(rel_path),
            })
        }
        other => Err(format!(
            "seccompProfile type {other:?} is not supported (RuntimeDefault, Unconfined, Localhost)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(t: &str, local: Option<&str>) -> ApiProfile {
        ApiProfile {
            type_: t.into(),
            localhost_profile: local.map(str::to_string),
        }
    }

    fn pod(p: ApiProfile) -> PodSecurityContext {
        PodSecurityContext {
            seccomp_profile: Some(p),
            ..Default::default()
        }
    }

    fn ctr(p: ApiProfile) -> SecurityContext {
        SecurityContext {
            seccomp_profile: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn the_container_overrides_the_pod_and_the_flag_sets_the_default() {
        let root = Path::new("/var/lib/berth");
        assert_eq!(
            seccomp_profile(None, None, root, false),
            Ok(SeccompProfile::Unconfined)
        );
        assert_eq!(
            seccomp_profile(None, None, root, true),
            Ok(SeccompProfile::RuntimeDefault)
        );
        let p = pod(api("RuntimeDefault", None));
        assert_eq!(
            seccomp_profile(Some(&p), None, root, false),
            Ok(SeccompProfile::RuntimeDefault)
        );
        let c = ctr(api("Unconfined", None));
        assert_eq!(
            seccomp_profile(Some(&p), Some(&c), root, true),
            Ok(SeccompProfile::Unconfined)
        );
        // A container securityContext without a profile leaves the pod's in force.
        let c = SecurityContext::default();
        assert_eq!(
            seccomp_profile(Some(&p), Some(&c), root, false),
            Ok(SeccompProfile::RuntimeDefault)
        );
    }

    #[test]
    fn localhost_profiles_resolve_under_root_dir_and_never_out_of_it() {
        let root = Path::new("/var/lib/berth");
        let c = ctr(api("Localhost", Some("profiles/deny.json")));
        assert_eq!(
            seccomp_profile(None, Some(&c), root, false),
            Ok(SeccompProfile::Localhost {
                path: "/var/lib/berth/seccomp/profiles/deny.json".into()
            })
        );
        for bad in ["../../etc/passwd", "/etc/x.json", "a/../../b"] {
            let c = ctr(api("Localhost", Some(bad)));
            assert!(
                seccomp_profile(None, Some(&c), root, false).is_err(),
                "{bad}"
            );
        }
        let c = ctr(api("Localhost", None));
        let err = seccomp_profile(None, Some(&c), root, false).expect_err("no localhostProfile");
        assert!(err.contains("localhostProfile must be set"), "{err}");
        let c = ctr(api("Sometimes", None));
        assert!(seccomp_profile(None, Some(&c), root, false).is_err());
    }
}
