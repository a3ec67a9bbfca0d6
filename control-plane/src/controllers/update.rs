//! Writes as upstream's controllers make them: an update (PUT) of the object or of its
//! `status` subresource, never a patch — their `system:controller:*` roles grant
//! `update` on `<resource>` and `<resource>/status`, not `patch`, and berth's
//! controllers act under those roles. The change is applied to the cached object; a
//! conflict (the cache was stale) reads the object again and applies it once more, as
//! client-go's `RetryOnConflict` with the controllers' single retry.

use kube::Api;
use kube::api::PostParams;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Which part of the object the update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The object (its metadata and spec; the apiserver keeps the status).
    Object,
    /// The `status` subresource (the apiserver keeps the rest).
    Status,
    /// A CertificateSigningRequest's `approval` subresource (its conditions).
    Approval,
}

/// Applies `change` to `cached` (as JSON) and writes it with an update of `part`.
/// `Ok(None)` when the object is gone (404) or still conflicting after the retry,
/// which the caller's next sync sees.
pub async fn update<K>(
    api: &Api<K>,
    cached: &K,
    part: Part,
    change: impl Fn(&mut Value),
) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = cached.meta().name.clone().unwrap_or_default();
    let mut current = serde_json::to_value(cached).map_err(kube::Error::SerdeError)?;
    for attempt in 0..2 {
        change(&mut current);
        let pp = PostParams::default();
        let obj: K = serde_json::from_value(current.clone()).map_err(kube::Error::SerdeError)?;
        let written = match part {
            Part::Object => api.replace(&name, &pp, &obj).await,
            Part::Status => api.replace_status(&name, &pp, &obj).await,
            Part::Approval => api.replace_subresource("approval", &name, &pp, &obj).await,
        };
        match written {
            Ok(obj) => return Ok(Some(obj)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => {
                match api.get_opt(&name).await {
                    Ok(Some(fresh)) => {
                        current = serde_json::to_value(&fresh).map_err(kube::Error::SerdeError)?;
                    }
                    Ok(None) => return Ok(None),
                    // Roles without `get` (the root CA publisher's) wait for the watch.
                    Err(kube::Error::Api(s)) if s.code == 403 => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// A change that merges `patch` into the object (RFC 7386 JSON merge patch semantics:
/// objects merge, `null` removes, anything else replaces).
pub fn merge(patch: Value) -> impl Fn(&mut Value) {
    move |obj: &mut Value| json_patch::merge(obj, &patch)
}
