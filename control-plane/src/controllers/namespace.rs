//! The Namespace controller: a namespace being deleted (phase Terminating, the
//! `kubernetes` finalizer in spec.finalizers) is emptied — every namespaced resource
//! the apiserver serves, found through discovery, deleted as a collection — and once
//! nothing is left its finalizer is removed through `namespaces/{name}/finalize`, which
//! lets the apiserver remove it. While content remains the namespace's
//! `NamespaceContentRemaining` condition says what.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::queue::Queue;
use crate::client::Informers;

const FINALIZER: &str = "kubernetes";

pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let namespaces = informers.add(Api::<Namespace>::all(client.clone()), {
        let q = queue.clone();
        move |ns: &Namespace| {
            if ns.metadata.deletion_timestamp.is_some() {
                q.add(ns.name_any());
            }
        }
    });
    async move {
        let _ = namespaces.wait_until_ready().await;
        let ctl = Arc::new((client, namespaces));
        queue
            .work("namespace", move |key| {
                let ctl = ctl.clone();
                async move { sync(&ctl.0, &ctl.1, &key).await }
            })
            .await;
    }
}

async fn sync(
    client: &Client,
    namespaces: &Store<Namespace>,
    name: &str,
) -> Result<Option<Duration>, kube::Error> {
    let Some(ns) = namespaces.get(&ObjectRef::new(name)) else {
        return Ok(None);
    };
    let finalizers = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default();
    if ns.metadata.deletion_timestamp.is_none() || !finalizers.iter().any(|f| f == FINALIZER) {
        return Ok(None);
    }
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut remaining: Vec<(String, usize)> = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            // Deletable resources only, as upstream's deleter (read-only ones such as
            // metrics.k8s.io's pods go with what they describe).
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), name, &ar);
            if caps.supports_operation(verbs::DELETE_COLLECTION) {
                match api
                    .delete_collection(&DeleteParams::background(), &ListParams::default())
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let left = match api.list(&ListParams::default()).await {
                Ok(l) => l.items.len(),
                Err(kube::Error::Api(_)) => 0,
                Err(e) => return Err(e),
            };
            if left > 0 {
                let what = if ar.group.is_empty() {
                    ar.plural.clone()
                } else {
                    format!("{}.{}", ar.plural, ar.group)
                };
                remaining.push((what, left));
            }
        }
    }
    let api: Api<Namespace> = Api::all(client.clone());
    if !remaining.is_empty() {
        let message = remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let patch = json!({"status": {"conditions": [{
            "type": "NamespaceContentRemaining", "status": "True",
            "reason": "SomeResourcesRemain",
            "message": format!("Some resources are remaining: {message}"),
            "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}});
        let _ = super::update::update(
            &api,
            &*ns,
            super::update::Part::Status,
            super::update::merge(patch),
        )
        .await;
        return Ok(Some(Duration::from_secs(1)));
    }
    let mut done = (*ns).clone();
    if let Some(spec) = done.spec.as_mut() {
        spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
    }
    match api
        .replace_subresource("finalize", name, &PostParams::default(), &done)
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
