//! ImageLocality: nodes that already hold the pod's images score higher, by image size
//! scaled by how many nodes have it (so one node does not attract everything), between
//! kube-scheduler's thresholds of 23 MB and 1000 MB per container.

use k8s_openapi::api::core::v1::Pod;

use super::{MAX_SCORE, Score};
use crate::scheduler::node_info::NodeInfo;

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// `busybox` → `docker.io/library/busybox:latest`, as nodes report image names.
fn normalized(image: &str) -> String {
    let with_tag = if image
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
        || image.contains('@')
    {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    let first = with_tag.split('/').next().unwrap_or("");
    if with_tag.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        with_tag
    } else if with_tag.contains('/') {
        format!("docker.io/{with_tag}")
    } else {
        format!("docker.io/library/{with_tag}")
    }
}

fn has(node: &NodeInfo, image: &str) -> Option<i64> {
    node.images
        .get(image)
        .or_else(|| node.images.get(&normalized(image)))
        .copied()
}

#[derive(Debug)]
pub struct ImageLocality;

impl Score for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
    fn weight(&self) -> i64 {
        1
    }
    fn score(&self, pod: &Pod, node: &NodeInfo, nodes: &[&NodeInfo]) -> i64 {
        let Some(spec) = pod.spec.as_ref() else {
            return 0;
        };
        let total = nodes.len().max(1) as i64;
        let mut sum = 0i64;
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let Some(image) = c.image.as_deref() else {
                continue;
            };
            if let Some(size) = has(node, image) {
                let holders = nodes.iter().filter(|n| has(n, image).is_some()).count() as i64;
                sum += size * holders / total;
            }
        }
        let containers = spec.containers.len() as i64
            + spec.init_containers.as_ref().map_or(0, |v| v.len() as i64);
        let max = MAX_CONTAINER_THRESHOLD * containers.max(1);
        let clamped = sum.clamp(MIN_THRESHOLD, max);
        MAX_SCORE * (clamped - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}
