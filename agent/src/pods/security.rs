//! A container's security settings from its Pod: the seccomp profile
//! (`securityContext.seccompProfile`, the container's over the pod's, then the
//! kubelet's `--seccomp-default`) and the `runAsNonRoot` check. Entry points:
//! [`seccomp_profile`], [`verify_run_as_non_root`].

use std::path::{Component, Path};

use berth_runtime::pod::SeccompProfile;
use k8s_openapi::api::core::v1::{
    Pod, PodSecurityContext, SeccompProfile as ApiProfile, SecurityContext,
};

/// The kubelet's reason for a pod rejected for its AppArmor profile.
pub const APPARMOR_REASON: &str = "AppArmor";

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Whether the pod asks for an AppArmor profile (the kubelet's `isRequired`): a pod or
/// container `appArmorProfile` other than `Unconfined` (init and ephemeral containers
/// included), or the deprecated per-container annotation with a value other than
/// `unconfined`.
/// The security contexts of every container of the pod: init, regular and ephemeral.
fn container_contexts(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> impl Iterator<Item = &SecurityContext> {
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| c.security_context.as_ref());
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.security_context.as_ref())
        .chain(ephemeral)
        .flatten()
}

fn wants_app_armor(pod: &Pod) -> bool {
    let confined = |t: &str| t != "Unconfined";
    let Some(spec) = &pod.spec else {
        return false;
    };
    if spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        .is_some_and(|p| confined(&p.type_))
    {
        return true;
    }
    if container_contexts(spec)
        .filter_map(|sc| sc.app_armor_profile.as_ref())
        .any(|p| confined(&p.type_))
    {
        return true;
    }
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .any(|(k, v)| k.starts_with(APPARMOR_ANNOTATION_PREFIX) && v != "unconfined")
}

/// The kubelet's AppArmor admission: a pod asking for a profile is rejected with
/// `Cannot enforce AppArmor: …` — the kubelet's words on a host without AppArmor
/// (this one); on a host with it, berth-agent still applies no profiles and says so,
/// rather than running the pod unconfined.
pub fn admit_app_armor(pod: &Pod) -> Result<(), String> {
    if !wants_app_armor(pod) {
        return Ok(());
    }
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    Err(if enabled {
        "Cannot enforce AppArmor: berth-agent does not apply AppArmor profiles".to_owned()
    } else {
        "Cannot enforce AppArmor: AppArmor is not enabled on the host".to_owned()
    })
}

/// The reason of a pod rejected for SELinux options this node cannot apply.
pub const SELINUX_REASON: &str = "SELinux";

/// Whether the pod or any of its containers sets SELinux options (a user, role, type or
/// level).
fn wants_selinux(pod: &Pod) -> bool {
    let set = |o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
        o.is_some_and(|o| {
            [&o.user, &o.role, &o.type_, &o.level]
                .iter()
                .any(|f| f.as_deref().is_some_and(|v| !v.is_empty()))
        })
    };
    let Some(spec) = &pod.spec else {
        return false;
    };
    if set(spec
        .security_context
        .as_ref()
        .and_then(|s| s.se_linux_options.as_ref()))
    {
        return true;
    }
    container_contexts(spec).any(|s| set(s.se_linux_options.as_ref()))
}

/// SELinux options are refused rather than ignored: berth-agent labels nothing, and on
/// this host SELinux is not even enabled — a pod that asks for a label must not run
/// believing it has one.
pub fn admit_selinux(pod: &Pod) -> Result<(), String> {
    if !wants_selinux(pod) {
        return Ok(());
    }
    let enabled = std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok();
    Err(if enabled {
        "Cannot enforce SELinux: berth-agent does not apply SELinux labels".to_owned()
    } else {
        "Cannot enforce SELinux: SELinux is not enabled on the host".to_owned()
    })
}

/// The kubelet's `runAsNonRoot` check, made before a container is created; the error
/// is the CreateContainerConfigError message, word for word as the kubelet's.
/// `image_user` gives the image config's `User` (`uid`, `name`, `uid:gid` or empty); it is
/// asked only when the check needs it.
/// A `runAsUser` (the container's over the pod's) decides alone; otherwise the image's
/// user must be a non-zero uid: empty counts as root and a name cannot be verified.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &str,
    pod_sc: Option<&PodSecurityContext>,
    sc: Option<&SecurityContext>,
    image_user: impl FnOnce() -> String,
) -> Result<(), String> {
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root));
    if non_root != Some(true) {
        return Ok(());
    }
    let who = format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    );
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    if let Some(uid) = run_as_user {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy (pod: {who:?}, container: {container})"
            ));
        }
        return Ok(());
    }
    let image_user = image_user();
    let user = image_user.split(':').next().unwrap_or_default();
    match user.parse::<i64>() {
        _ if user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {who:?}, container: {container})"
        )),
        Ok(0) => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {who:?}, container: {container})"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {who:?}, container: {container})"
        )),
    }
}

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

    #[test]
    fn run_as_non_root_refuses_root_and_unverifiable_users_with_the_kubelets_words() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"}}))
        .expect("pod");
        let non_root = PodSecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        let check = |sc: Option<&SecurityContext>, user: &str| {
            verify_run_as_non_root(&pod, "c", Some(&non_root), sc, || user.to_owned())
        };
        assert_eq!(
            check(None, "").expect_err("root image"),
            r#"container has runAsNonRoot and image will run as root (pod: "p_ns(u1)", container: c)"#
        );
        assert!(check(None, "0:0").is_err());
        assert!(check(None, "1000").is_ok());
        assert!(check(None, "65534:65534").is_ok());
        assert_eq!(
            check(None, "nobody").expect_err("a name"),
            r#"container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root (pod: "p_ns(u1)", container: c)"#
        );
        let as_root = SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        };
        assert_eq!(
            check(Some(&as_root), "1000").expect_err("runAsUser 0"),
            r#"container's runAsUser breaks non-root policy (pod: "p_ns(u1)", container: c)"#
        );
        let as_user = SecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        };
        assert!(check(Some(&as_user), "").is_ok());
        // The container's runAsNonRoot: false overrides the pod's true.
        let allowed = SecurityContext {
            run_as_non_root: Some(false),
            ..Default::default()
        };
        assert!(check(Some(&allowed), "").is_ok());
        assert!(verify_run_as_non_root(&pod, "c", None, None, String::new).is_ok());
    }

    #[test]
    fn app_armor_is_asked_for_by_fields_and_annotations_but_not_unconfined() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).expect("pod") };
        let plain = pod(serde_json::json!({"spec": {"containers": [{"name": "c"}]}}));
        assert!(admit_app_armor(&plain).is_ok());
        let unconfined = pod(serde_json::json!({"metadata": {"annotations": {
            "container.apparmor.security.beta.kubernetes.io/c": "unconfined"}},
            "spec": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}},
                     "containers": [{"name": "c"}]}}));
        assert!(admit_app_armor(&unconfined).is_ok());
        for asked in [
            serde_json::json!({"spec": {"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c"}]}}),
            serde_json::json!({"spec": {"containers": [{"name": "c"}],
                "initContainers": [{"name": "i", "securityContext": {"appArmorProfile":
                    {"type": "Localhost", "localhostProfile": "p"}}}]}}),
            serde_json::json!({"metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/c": "runtime/default"}},
                "spec": {"containers": [{"name": "c"}]}}),
        ] {
            let err = admit_app_armor(&pod(asked)).expect_err("asked for a profile");
            assert!(err.starts_with("Cannot enforce AppArmor: "), "{err}");
        }
    }
}
