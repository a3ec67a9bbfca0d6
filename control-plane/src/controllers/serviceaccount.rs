//! The ServiceAccount controller: every active namespace has a `default`
//! ServiceAccount, recreated if it is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::queue::Queue;
use crate::client::Informers;

const DEFAULT: &str = "default";

pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let namespaces = informers.add(Api::<Namespace>::all(client.clone()), {
        let q = queue.clone();
        move |ns: &Namespace| q.add(ns.name_any())
    });
    let accounts = informers.add(Api::<ServiceAccount>::all(client.clone()), {
        let q = queue.clone();
        move |sa: &ServiceAccount| {
            if sa.name_any() == DEFAULT
                && let Some(ns) = sa.namespace()
            {
                q.add(ns);
            }
        }
    });
    async move {
        let _ = namespaces.wait_until_ready().await;
        let _ = accounts.wait_until_ready().await;
        let ctl = Arc::new((client, namespaces, accounts));
        queue
            .work("serviceaccount", move |ns| {
                let ctl = ctl.clone();
                async move { sync(&ctl.0, &ctl.1, &ctl.2, &ns).await }
            })
            .await;
    }
}

async fn sync(
    client: &Client,
    namespaces: &Store<Namespace>,
    accounts: &Store<ServiceAccount>,
    ns: &str,
) -> Result<Option<Duration>, kube::Error> {
    let Some(namespace) = namespaces.get(&ObjectRef::new(ns)) else {
        return Ok(None);
    };
    if namespace.metadata.deletion_timestamp.is_some()
        || accounts.get(&ObjectRef::new(DEFAULT).within(ns)).is_some()
    {
        return Ok(None);
    }
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": DEFAULT, "namespace": ns}}))
            .map_err(kube::Error::SerdeError)?;
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(None),
        // Exists already, or the namespace is terminating: nothing to do.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}
