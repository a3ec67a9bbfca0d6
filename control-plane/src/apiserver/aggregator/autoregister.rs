//! The local APIServices kube-apiserver registers for what it serves
//! (`kube-aggregator/pkg/controllers/autoregister` fed by `apiServicesToRegister` and
//! the `crdregistration` controller):
//!
//! - every built-in group-version in upstream's priority table, labelled
//!   `kube-aggregator.kubernetes.io/automanaged: onstart`: created at start when
//!   missing, its spec put back at start if changed, and deleted at start if this
//!   release no longer serves it;
//! - every served version of every CustomResourceDefinition (priority 1000, version
//!   priority 100), labelled `automanaged: "true"`: kept in step with the CRDs.
//!
//! An APIService without the label is the user's and left alone (a remote one of the
//! same name then serves the group-version). Entry point: [`run`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::apiservice::{AUTOMANAGED, name_of};
use super::{GROUP, PREFIX, priorities};
use crate::apiserver::Api;
use crate::apiserver::object;
use crate::apiserver::rest::{self, Part};

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";
const ON_START: &str = "onstart";
const CONTINUOUSLY: &str = "true";

/// A desired local APIService: name → spec.
type Desired = BTreeMap<String, Value>;

fn spec(group: &str, version: &str, (gp, vp): (i64, i64)) -> Value {
    json!({
        "group": group,
        "version": version,
        "groupPriorityMinimum": gp,
        "versionPriority": vp,
    })
}

/// The built-in group-versions this server serves (not CRDs; not the built-in metrics
/// server, which has no APIService — see the module docs of `aggregator`).
pub fn builtin(api: &Api) -> Desired {
    let mut out = Desired::new();
    for def in api.registry.all() {
        if def.crd.is_some() || def.metrics {
            continue;
        }
        if let Some(p) = priorities::builtin(&def.group, &def.version) {
            out.insert(
                name_of(&def.group, &def.version),
                spec(&def.group, &def.version, p),
            );
        }
    }
    out
}

/// The served versions of the CRDs in the watch cache.
pub fn crds(api: &Api) -> Desired {
    let mut out = Desired::new();
    for crd in api.cache.list(CRD_PREFIX, |_| true).0 {
        let crd = crd.value();
        let Some(group) = crd.pointer("/spec/group").and_then(Value::as_str) else {
            continue;
        };
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for v in versions {
            if v["served"].as_bool() != Some(true) {
                continue;
            }
            if let Some(version) = v["name"].as_str() {
                out.insert(
                    name_of(group, version),
                    spec(group, version, priorities::CRD),
                );
            }
        }
    }
    out
}

fn managed_as(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/labels")?.get(AUTOMANAGED)?.as_str()
}

/// Makes the APIServices labelled `label` match `desired`: creates what is missing,
/// puts back changed specs, deletes those labelled `label` that are not desired.
/// Unlabelled APIServices are never touched.
async fn sync(api: &Arc<Api>, desired: &Desired, label: &str) {
    let Some(ctx) = super::internal_ctx(api, GROUP, "apiservices", None) else {
        return;
    };
    for (name, want) in desired {
        match api.cache.get(&format!("{PREFIX}{name}")).map(|o| o.value()) {
            None => {
                let obj = json!({
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": name, "labels": {AUTOMANAGED: label}},
                    "spec": want,
                });
                match rest::create_object(&ctx, obj).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(apiservice = %name, error = %e.message, "registering a local APIService failed")
                    }
                }
            }
            Some(current) if managed_as(&current).is_some() => {
                if current.get("spec") == Some(want) && managed_as(&current) == Some(label) {
                    continue;
                }
                let result = rest::update_live(&ctx, name, Part::Main, |live| {
                    let mut next = live.clone();
                    next["spec"] = want.clone();
                    if let Some(meta) = object::meta_mut(&mut next) {
                        let labels = meta.entry("labels").or_insert_with(|| json!({}));
                        labels[AUTOMANAGED] = json!(label);
                    }
                    Ok(next)
                })
                .await;
                if let Err(e) = result {
                    tracing::warn!(apiservice = %name, error = %e.message, "updating a local APIService failed");
                }
            }
            Some(_) => {}
        }
    }
    let stale: Vec<String> = api
        .cache
        .list(PREFIX, |_| true)
        .0
        .iter()
        .map(|o| o.value())
        .filter(|o| managed_as(o) == Some(label))
        .map(|o| object::name(&o).to_owned())
        .filter(|name| !desired.contains_key(name))
        .collect();
    for name in stale {
        if let Err(err) = api.store.delete(format!("{PREFIX}{name}"), None).await {
            tracing::debug!(apiservice = %name, %err, "removing a local APIService failed");
        }
    }
}

/// Registers the built-in group-versions once, then follows the CRDs.
pub async fn run(api: Arc<Api>) {
    let (_, mut watch) = api.cache.snapshot_and_watch(CRD_PREFIX);
    sync(&api, &builtin(&api), ON_START).await;
    sync(&api, &crds(&api), CONTINUOUSLY).await;
    loop {
        match watch.live.recv().await {
            Ok(change) => {
                let key = change.object.key.as_str();
                let relevant = key.starts_with(CRD_PREFIX)
                    || (key.starts_with(PREFIX)
                        && change.kind == crate::apiserver::watch_cache::ChangeKind::Deleted
                        && managed_as(&change.object.value()) == Some(CONTINUOUSLY));
                if relevant {
                    sync(&api, &crds(&api), CONTINUOUSLY).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                sync(&api, &crds(&api), CONTINUOUSLY).await;
            }
            Err(_) => return,
        }
    }
}
