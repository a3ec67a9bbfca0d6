//! Images for a pod's containers: pulls by pull policy through the node's registry
//! mirrors with the kubelet's events and back-off, and the pod's pull secrets.

use super::*;

/// Pulls `image` as its pull policy says, through the node's registry mirrors, and
/// records the kubelet's image events (Pulling, Pulled with the time and size, Failed)
/// in `events`.
pub(super) fn ensure_image(
    ctx: &Ctx,
    image: &str,
    policy: &str,
    secrets: &[(String, String)],
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let store = ctx.runtime.images();
    let present = store.find(image).is_ok();
    let pull = match policy {
        "Never" if !present => {
            return Err(format!(
                "ErrImageNeverPull: container image {image:?} is not present with pull policy of Never"
            ));
        }
        "Never" => false,
        "Always" => true,
        _ => !present,
    };
    if !pull {
        events.push(Event {
            warning: false,
            reason: "Pulled".into(),
            message: format!("Container image {image:?} already present on machine"),
        });
        return Ok(());
    }
    let mut opts = berth_runtime::image::pull::PullOptions::default();
    if let Some((u, p)) = secrets.first() {
        opts.username = Some(u.clone());
        opts.password = Some(p.clone());
    }
    let sources = ctx.registries.get().sources(image, &opts);
    let local = image.starts_with("berth.local/");
    if !local {
        events.push(Event {
            warning: false,
            reason: "Pulling".into(),
            message: format!("Pulling image {image:?}"),
        });
    }
    let started = Instant::now();
    let handle = tokio::runtime::Handle::current();
    // One pull at a time unless the node allows more; the wait counts in the
    // "including waiting" time, as the kubelet's.
    let _slot = ctx
        .pull_slots
        .as_ref()
        .and_then(|s| handle.block_on(s.clone().acquire_owned()).ok());
    let pulling = Instant::now();
    match handle.block_on(berth_runtime::image::pull::pull_from(
        store, image, &sources,
    )) {
        Ok(pulled) => {
            let (took, total) = (
                go_duration(pulling.elapsed()),
                go_duration(started.elapsed()),
            );
            events.push(Event {
                warning: false,
                reason: "Pulled".into(),
                message: format!(
                    "Successfully pulled image {image:?} in {took} ({total} including waiting). Image size: {} bytes.",
                    pulled.size
                ),
            });
            Ok(())
        }
        // Always with a local copy and an unreachable registry: the kubelet fails too,
        // but images imported locally (berth.local/…) have no registry at all.
        Err(_) if present && local => {
            events.push(Event {
                warning: false,
                reason: "Pulled".into(),
                message: format!("Container image {image:?} already present on machine"),
            });
            Ok(())
        }
        Err(e) => {
            events.push(Event {
                warning: true,
                reason: "Failed".into(),
                message: format!("Failed to pull image {image:?}: {e}"),
            });
            Err(format!("ErrImagePull: failed to pull image {image:?}: {e}"))
        }
    }
}

/// A duration as Go prints a `time.Duration` truncated to milliseconds (`812ms`,
/// `1.204s`, `2m3.5s`), as the kubelet's pull events show it.
pub(super) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let secs = format!("{}.{:03}", rest / 1000, rest % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// Registry credentials from the pod's imagePullSecrets for `image`'s registry.
pub(super) fn pull_secrets(pod: &Pod, inputs: &Inputs, image: &str) -> Vec<(String, String)> {
    let registry = berth_runtime::image::pull::Reference::parse(image).registry;
    let mut out = Vec::new();
    for r in pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
    {
        let Some(secret) = inputs.secret(&r.name) else {
            continue;
        };
        let Some(data) = secret.data.as_ref() else {
            continue;
        };
        let Some(cfg) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&cfg.0) else {
            continue;
        };
        let auths = v.get("auths").unwrap_or(&v);
        for (host, entry) in auths.as_object().into_iter().flatten() {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("");
            let matches = host == registry
                || (host == "index.docker.io" && registry == "registry-1.docker.io");
            if !matches {
                continue;
            }
            let user = entry.get("username").and_then(Value::as_str);
            let pass = entry.get("password").and_then(Value::as_str);
            if let (Some(u), Some(p)) = (user, pass) {
                out.push((u.to_owned(), p.to_owned()));
            } else if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
                use base64::Engine;
                if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth)
                    && let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':')
                {
                    out.push((u.to_owned(), p.to_owned()));
                }
            }
        }
    }
    out
}
