//! Registering a driver with the cluster, as the kubelet's CSI plugin does once
//! node-driver-registrar announces a driver: the node's CSINode lists the driver with
//! its node id, topology keys and volume limit; the Node gets the driver's topology
//! as labels and its node id in the `csi.volume.kubernetes.io/nodeid` annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::storage::v1::{CSINode, CSINodeDriver, CSINodeSpec, VolumeNodeResources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::Driver;
use crate::pods::Ctx;

/// The Node annotation mapping driver names to their node ids.
pub const NODE_ID_ANNOTATION: &str = "csi.volume.kubernetes.io/nodeid";

fn entry(driver: &Driver) -> CSINodeDriver {
    CSINodeDriver {
        name: driver.name.clone(),
        node_id: driver.node_id.clone(),
        topology_keys: Some(driver.topology.keys().cloned().collect()),
        allocatable: (driver.max_volumes > 0).then_some(VolumeNodeResources {
            count: Some(driver.max_volumes as i32),
        }),
    }
}

/// Writes the driver into the CSINode and the Node.
pub async fn register(ctx: &Ctx, driver: &Driver) -> Result<(), kube::Error> {
    let node_name = ctx.node.name.as_str();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = nodes.get(node_name).await?;
    let mut ids: BTreeMap<String, String> = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ID_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    ids.insert(driver.name.clone(), driver.node_id.clone());
    let ids = serde_json::to_string(&ids).unwrap_or_default();
    let patch = json!({"metadata": {
        "labels": driver.topology,
        "annotations": {NODE_ID_ANNOTATION: ids},
    }});
    nodes
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let api: Api<CSINode> = Api::all(ctx.client.clone());
    for _ in 0..5 {
        match api.get_opt(node_name).await? {
            Some(mut existing) => {
                existing.spec.drivers.retain(|d| d.name != driver.name);
                existing.spec.drivers.push(entry(driver));
                match api
                    .replace(node_name, &PostParams::default(), &existing)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
            None => {
                let obj = CSINode {
                    metadata: ObjectMeta {
                        name: Some(node_name.to_owned()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node_name.to_owned(),
                            uid: node.metadata.uid.clone().unwrap_or_default(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    spec: CSINodeSpec {
                        drivers: vec![entry(driver)],
                    },
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => return Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
