//! The Node watch that drives a [`Router`]: a cache of every Node, a sync after each
//! change (changes arriving together are synced once) and every minute besides (to
//! repair routes someone else removed), and this node's VTEP MAC published on its
//! Node as [`VTEP_MAC_ANNOTATION`]. [`run`] runs it until dropped. When the apiserver
//! is unreachable nothing is synced and the kernel keeps the last programmed state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{Mode, Router, VTEP_MAC_ANNOTATION, plan};

const RESYNC: Duration = Duration::from_secs(60);
/// How long a burst of Node changes is gathered before one sync.
const BATCH: Duration = Duration::from_millis(100);

/// Keeps this node's routes in line with the cluster's Nodes.
pub async fn run(client: Client, router: Router) {
    let api: Api<Node> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let changed = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let changed = changed.clone();
        async move {
            let stream =
                reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => changed.notify_one(),
                    Err(error) => tracing::debug!(%error, "the Node watch for routing"),
                }
            }
        }
    };
    let work = async move {
        let _ = reader.wait_until_ready().await;
        tracing::info!(mode = %router.mode(), "routing pod traffic to the other nodes");
        let mut last_skipped: BTreeSet<(String, String)> = BTreeSet::new();
        let mut last_routes = 0;
        // Logged when it changes, not on every sync.
        let mut last_error: Option<String> = None;
        loop {
            let nodes: Vec<Node> = reader.state().iter().map(|n| (**n).clone()).collect();
            publish_vtep_mac(&client, &router, &nodes).await;
            match router.sync(&nodes).await {
                Ok(p) => {
                    let skipped: BTreeSet<_> = p.skipped.into_iter().collect();
                    for (node, why) in skipped.difference(&last_skipped) {
                        tracing::warn!(%node, %why, "not routing to a node's pods");
                    }
                    if p.routes.len() != last_routes {
                        tracing::info!(
                            routes = p.routes.len(),
                            vxlan = p.vtep.is_some(),
                            "pod routes to other nodes in place"
                        );
                    }
                    last_routes = p.routes.len();
                    last_skipped = skipped;
                    if last_error.take().is_some() {
                        tracing::info!("the routes to other nodes' pods are in sync again");
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "syncing the routes to other nodes' pods");
                    }
                    last_error = Some(text);
                }
            }
            tokio::select! {
                () = changed.notified() => tokio::time::sleep(BATCH).await,
                () = tokio::time::sleep(RESYNC) => {}
            }
        }
    };
    tokio::join!(watch, work);
}

/// Sets the annotation on this node's Node when it is not what it should be.
async fn publish_vtep_mac(client: &Client, router: &Router, nodes: &[Node]) {
    if router.mode() == Mode::Routed {
        return;
    }
    let own = &router.cfg.node_name;
    let want = plan::format_mac(router.vtep_mac());
    let Some(node) = nodes.iter().find(|n| n.name_any() == *own) else {
        return;
    };
    if node.annotations().get(VTEP_MAC_ANNOTATION) == Some(&want) {
        return;
    }
    let patch = json!({"metadata": {"annotations": {VTEP_MAC_ANNOTATION: want}}});
    let api: Api<Node> = Api::all(client.clone());
    if let Err(error) = api
        .patch(own, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(%error, "publishing the node's VTEP MAC");
    }
}
