//! The root CA publisher (kube-controller-manager's `root-ca-cert-publisher`,
//! `pkg/controller/certificates/rootcacertpublisher`): every active namespace holds a
//! `kube-root-ca.crt` ConfigMap whose `ca.crt` is the cluster CA, recreated when
//! deleted and put back when changed. Pods read it through the projected volume the
//! ServiceAccount admission plugin adds, to verify the apiserver from inside. Entry
//! point: [`start`]; [`ca_from_kubeconfig`] finds the CA to publish.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::queue::Queue;
use crate::apiserver::admission::serviceaccount::ROOT_CA_CONFIGMAP;
use crate::client::Informers;

/// Upstream's `kubernetes.io/description` annotation on the ConfigMap.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// The PEM of the first cluster's CA in the kubeconfig at `path` (inline
/// `certificate-authority-data` or the `certificate-authority` file).
pub fn ca_from_kubeconfig(path: &Path) -> Result<String, anyhow::Error> {
    let config = kube::config::Kubeconfig::read_from(path)?;
    let cluster = config
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref())
        .ok_or_else(|| anyhow::anyhow!("{}: no cluster", path.display()))?;
    if let Some(data) = &cluster.certificate_authority_data {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD.decode(data.trim())?;
        return Ok(String::from_utf8(pem)?);
    }
    if let Some(file) = &cluster.certificate_authority {
        return Ok(std::fs::read_to_string(file)?);
    }
    anyhow::bail!(
        "{}: the cluster names no certificate authority",
        path.display()
    )
}

pub fn start(
    client: Client,
    ca: String,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let namespaces = informers.add(Api::<Namespace>::all(client.clone()), {
        let q = queue.clone();
        move |ns: &Namespace| q.add(ns.name_any())
    });
    let maps = informers.add(Api::<ConfigMap>::all(client.clone()), {
        let q = queue.clone();
        move |cm: &ConfigMap| {
            if cm.name_any() == ROOT_CA_CONFIGMAP
                && let Some(ns) = cm.namespace()
            {
                q.add(ns);
            }
        }
    });
    async move {
        let _ = namespaces.wait_until_ready().await;
        let _ = maps.wait_until_ready().await;
        let ctl = Arc::new((client, namespaces, maps, ca));
        queue
            .work("root-ca-cert-publisher", move |ns| {
                let ctl = ctl.clone();
                async move { sync(&ctl.0, &ctl.1, &ctl.2, &ctl.3, &ns).await }
            })
            .await;
    }
}

async fn sync(
    client: &Client,
    namespaces: &Store<Namespace>,
    maps: &Store<ConfigMap>,
    ca: &str,
    ns: &str,
) -> Result<Option<Duration>, kube::Error> {
    let Some(namespace) = namespaces.get(&ObjectRef::new(ns)) else {
        return Ok(None);
    };
    if namespace.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let result = match maps.get(&ObjectRef::new(ROOT_CA_CONFIGMAP).within(ns)) {
        None => {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns,
                    "annotations": {"kubernetes.io/description": DESCRIPTION}},
                "data": {"ca.crt": ca},
            }))
            .map_err(kube::Error::SerdeError)?;
            api.create(&PostParams::default(), &cm).await.map(drop)
        }
        Some(cm) => {
            let data_ok = cm
                .data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(String::as_str)
                == Some(ca)
                && cm.data.as_ref().is_some_and(|d| d.len() == 1)
                && cm.binary_data.as_ref().is_none_or(|b| b.is_empty());
            let annotated = cm
                .annotations()
                .get("kubernetes.io/description")
                .map(String::as_str)
                == Some(DESCRIPTION);
            if data_ok && annotated {
                return Ok(None);
            }
            // As upstream: the data is replaced wholesale, the description restored.
            let patch = json!({
                "metadata": {"annotations": {"kubernetes.io/description": DESCRIPTION}},
                "data": {"ca.crt": ca},
            });
            let mut body = patch;
            if let Some(extra) = cm.data.as_ref() {
                for k in extra.keys().filter(|k| *k != "ca.crt") {
                    body["data"][k] = serde_json::Value::Null;
                }
            }
            if cm.binary_data.as_ref().is_some_and(|b| !b.is_empty()) {
                body["binaryData"] = serde_json::Value::Null;
            }
            super::update::update(
                &api,
                &*cm,
                super::update::Part::Object,
                super::update::merge(body),
            )
            .await
            .map(drop)
        }
    };
    match result {
        Ok(()) => Ok(None),
        // Exists already (the cache will show it), or the namespace is going away.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
