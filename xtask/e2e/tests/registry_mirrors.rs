//! Registry mirrors through a real cluster, the way air-gapped clusters run: the
//! agent's `--registry-config` (k3s' `registries.yaml` shape) points `docker.io` at a
//! local `docker-registry` holding busybox (pushed with skopeo), so a pod with
//! `image: busybox:<tag>` and pull policy Always runs although docker.io is never
//! reached; the kubelet's image events (Pulling, Pulled with time and size, Created,
//! Started) are recorded; a configuration edited to a dead mirror is picked up without
//! a restart, and the pull then fails with a Failed event naming every attempt, then
//! backs off (ImagePullBackOff, a BackOff event). A registry that wants a password
//! (htpasswd basic auth): a pod naming a `kubernetes.io/dockerconfigjson` Secret in
//! `imagePullSecrets` runs its image; without the Secret the pull is refused
//! (ErrImagePull, then ImagePullBackOff).

use std::time::Duration;

use berth_testkit::{AUTH_PASSWORD, AUTH_USER, Registry, require_root, skopeo, tools::images_dir};

mod common;
use common::{Cluster, cluster_full, events_of, ready};

#[test]
fn docker_hub_images_come_from_the_configured_mirror() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", images_dir().join("busybox").display()),
        &format!(
            "docker://127.0.0.1:{}/hub/busybox:berth-mirror",
            registry.port
        ),
    ]);
    let config = dir.path().join("registries.yaml");
    std::fs::write(
        &config,
        format!(
            "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:{}\"]\n    rewrite:\n      \"^library/(.*)\": \"hub/$1\"\n",
            registry.port
        ),
    )
    .expect("write registries.yaml");
    let flag = format!("--registry-config={}", config.display());
    let Some(c) = cluster_full(&["--controllers=false"], &[&flag]) else {
        return;
    };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: mirrored}
spec:
  containers:
  - {name: c, image: "busybox:berth-mirror", imagePullPolicy: Always, command: [sleep, "300"]}
"#,
    );
    c.wait_pod("mirrored", "Ready", ready);
    assert!(
        registry
            .requests()
            .contains("/v2/hub/busybox/manifests/berth-mirror"),
        "the mirror was not asked: {}",
        registry.requests()
    );
    c.wait("the image events", Duration::from_secs(20), || {
        let events = events_of(&c, "mirrored");
        let has =
            |reason: &str, text: &str| events.iter().any(|(r, m)| r == reason && m.contains(text));
        has("Pulling", "Pulling image \"busybox:berth-mirror\"")
            && has(
                "Pulled",
                "Successfully pulled image \"busybox:berth-mirror\" in ",
            )
            && events.iter().any(|(r, m)| {
                r == "Pulled"
                    && m.contains(" including waiting). Image size: ")
                    && m.ends_with(" bytes.")
            })
            && has("Created", "Created container: c")
            && has("Started", "Started container c")
    });

    // The file changes: the next pull reads it (no restart). A dead mirror and no
    // route to docker.io: the pull fails naming both attempts.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    std::fs::write(
        &config,
        format!("mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:{dead}\"]\n"),
    )
    .expect("rewrite registries.yaml");
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unmirrored}
spec:
  containers:
  - {name: c, image: "busybox:berth-mirror", imagePullPolicy: Always, command: [sleep, "300"]}
"#,
    );
    // The failed pull, then the kubelet's back-off: no new pull for 10 s, the waiting
    // message naming the last error.
    let pod = c.wait_pod("unmirrored", "the pull back-off", |p| {
        Cluster::container_status(p, "c")["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    let message = Cluster::container_status(&pod, "c")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains(&format!("127.0.0.1:{dead}")), "{message}");
    assert!(
        message.starts_with("Back-off pulling image \"busybox:berth-mirror\": ErrImagePull: "),
        "{message}"
    );
    c.wait(
        "a Failed event naming the attempts",
        Duration::from_secs(20),
        || {
            let events = events_of(&c, "unmirrored");
            let failed_pull = events.iter().any(|(r, m)| {
                r == "Failed"
                    && m.starts_with("Failed to pull image \"busybox:berth-mirror\": ")
                    && m.contains(&format!("127.0.0.1:{dead}"))
                    && m.contains("registry-1.docker.io")
            });
            let has =
                |reason: &str, text: &str| events.iter().any(|(r, m)| r == reason && m == text);
            failed_pull
                && has("Failed", "Error: ErrImagePull")
                && has("BackOff", "Back-off pulling image \"busybox:berth-mirror\"")
        },
    );
    c.kubectl.ok(&[
        "delete",
        "pod",
        "mirrored",
        "unmirrored",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}

#[test]
fn image_pull_secrets_open_a_private_registry() {
    require_root!();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start_with_auth(dir.path());
    let host = format!("127.0.0.1:{}", registry.port);
    let image = format!("{host}/private/busybox:v1");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("--dest-creds={AUTH_USER}:{AUTH_PASSWORD}"),
        &format!("oci:{}", images_dir().join("busybox").display()),
        &format!("docker://{image}"),
    ]);
    let Some(c) = cluster_full(&["--controllers=false"], &[]) else {
        return;
    };
    // The Secret as `kubectl create secret docker-registry` makes it.
    c.kubectl.ok(&[
        "create",
        "secret",
        "docker-registry",
        "pull",
        &format!("--docker-server={host}"),
        &format!("--docker-username={AUTH_USER}"),
        &format!("--docker-password={AUTH_PASSWORD}"),
    ]);
    let secret = c.kubectl.json(&["get", "secret", "pull"]);
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson", "{secret}");
    // Without the Secret first, so the image is not on the node yet.
    c.kubectl.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: anonymous}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: "{image}", command: [sleep, "300"]}}
"#
    ));
    c.wait_pod("anonymous", "the pull refused, then backed off", |p| {
        Cluster::container_status(p, "c")["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    assert!(
        registry.requests().contains("401")
            || registry.requests().contains("authentication required"),
        "the registry refused the anonymous pull: {}",
        registry.requests()
    );
    c.wait(
        "the anonymous pull's events",
        Duration::from_secs(20),
        || {
            let events = events_of(&c, "anonymous");
            events.iter().any(|(r, m)| {
                r == "Failed" && m.starts_with(&format!("Failed to pull image \"{image}\": "))
            }) && events
                .iter()
                .any(|(r, m)| r == "Failed" && m == "Error: ErrImagePull")
        },
    );
    // With the Secret: pulled and running.
    c.kubectl.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: authorized}}
spec:
  terminationGracePeriodSeconds: 1
  imagePullSecrets: [{{name: pull}}]
  containers:
  - {{name: c, image: "{image}", command: [sleep, "300"]}}
"#
    ));
    let pod = c.wait_pod("authorized", "Ready", ready);
    assert_eq!(
        Cluster::container_status(&pod, "c")["image"],
        image.as_str()
    );
    assert!(
        events_of(&c, "authorized")
            .iter()
            .any(|(r, m)| r == "Pulled"
                && m.starts_with(&format!("Successfully pulled image \"{image}\""))),
        "{:?}",
        events_of(&c, "authorized")
    );
    c.kubectl.ok(&[
        "delete",
        "pod",
        "anonymous",
        "authorized",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}
