//! Pod garbage collection, as kube-controller-manager's podgc: terminated pods
//! (Succeeded or Failed) beyond the threshold are deleted oldest first; pods bound to a
//! node that no longer exists, and unscheduled pods already being deleted, are deleted
//! at once (grace period 0) since no kubelet will ever finish them.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Client, ResourceExt};

use super::pods;
use crate::client::Informers;

const PERIOD: Duration = Duration::from_secs(5);

pub fn start(
    client: Client,
    threshold: usize,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let nodes = informers.add(Api::<Node>::all(client.clone()), |_: &Node| {});
    let pods = informers.add(Api::<Pod>::all(client.clone()), |_: &Pod| {});
    async move {
        let _ = nodes.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        loop {
            tokio::time::sleep(PERIOD).await;
            let known: HashSet<String> = nodes.state().iter().map(|n| n.name_any()).collect();
            let all = pods.state();
            let mut terminated: Vec<&Pod> = all
                .iter()
                .map(|p| &**p)
                .filter(|p| matches!(pods::phase(p), "Succeeded" | "Failed"))
                .collect();
            if terminated.len() > threshold {
                terminated.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let excess = terminated.len() - threshold;
                for p in terminated.into_iter().take(excess) {
                    delete(&client, p, false).await;
                }
            }
            for p in &all {
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .filter(|n| !n.is_empty());
                match node {
                    Some(n) if !known.contains(n) => {
                        // The cache may lag a node just created: ask the apiserver.
                        let gone =
                            matches!(Api::<Node>::all(client.clone()).get_opt(n).await, Ok(None));
                        if gone {
                            delete(&client, p, true).await;
                        }
                    }
                    None if p.metadata.deletion_timestamp.is_some() => {
                        delete(&client, p, true).await
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn delete(client: &Client, pod: &Pod, force: bool) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let dp = DeleteParams {
        grace_period_seconds: force.then_some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&name, &dp)
        .await
    {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), force, "pod garbage collected"),
        Err(err) => tracing::debug!(%err, pod = %name, "pod gc delete failed; retried next period"),
    }
}
