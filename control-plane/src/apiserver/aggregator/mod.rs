//! API aggregation (kube-aggregator, `apiregistration.k8s.io/v1`): an `APIService`
//! names a group-version and either this server (`spec.service` null: a *local*
//! APIService) or a Service in the cluster that serves it (a *remote* one, an
//! "extension apiserver" such as metrics-server). Requests for a remote group-version
//! are authenticated and authorized here, then proxied over HTTPS to a ready endpoint
//! of the Service ([`proxy`]) with the user in `X-Remote-*` headers and the front-proxy
//! client certificate ([`front_proxy`]); discovery (`/apis`, `/apis/<group>`, the
//! aggregated document) is the merge of the built-in groups and the remote servers'
//! ([`discovery`]).
//!
//! Controllers, as kube-apiserver runs them: [`autoregister`] keeps a local APIService
//! for every built-in group-version (created once at start, label
//! `kube-aggregator.kubernetes.io/automanaged: onstart`) and every served CRD version
//! (`automanaged: "true"`, kept in step); [`availability`] keeps each APIService's
//! `Available` condition (`Local`, `Passed`, `ServiceNotFound`, `MissingEndpoints`,
//! `FailedDiscoveryCheck`, …) and the remote discovery documents current.
//!
//! The built-in metrics server (`metrics.k8s.io/v1beta1`) has no APIService object:
//! charts that install metrics-server create `v1beta1.metrics.k8s.io` themselves, and
//! a remote APIService for a group-version always wins over what berth serves for it
//! — deleting it gives the group-version back to berth.
//!
//! Entry points: [`start`] (certificates, the `extension-apiserver-authentication`
//! ConfigMap, the controllers), [`proxy::intercept`] (the request hook).

pub mod apiservice;
pub mod autoregister;
pub mod availability;
pub mod discovery;
pub mod endpoints;
pub mod front_proxy;
pub mod priorities;
pub mod proxy;
pub mod transport;

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tokio::sync::mpsc;

use super::Api;
use super::pki::Pki;
use super::rest::Ctx;

/// The store prefix of APIService objects.
pub const PREFIX: &str = "/registry/apiregistration.k8s.io/apiservices/";
/// The API group this module serves.
pub const GROUP: &str = "apiregistration.k8s.io";

/// What the aggregator keeps between requests.
#[derive(Debug)]
pub struct Aggregator {
    /// The remote servers' discovery documents.
    pub discovery: discovery::RemoteCache,
    /// The front-proxy client identity (set once by [`start`]).
    identity: OnceLock<front_proxy::Identity>,
    /// APIService names to check again now (a proxied request that could not reach
    /// its server); the availability controller takes the receiver.
    recheck: mpsc::UnboundedSender<String>,
    recheck_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Default for Aggregator {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            discovery: discovery::RemoteCache::default(),
            identity: OnceLock::new(),
            recheck: tx,
            recheck_rx: Mutex::new(Some(rx)),
        }
    }
}

impl Aggregator {
    /// The front-proxy identity, once [`start`] has loaded it.
    pub fn identity(&self) -> Option<&front_proxy::Identity> {
        self.identity.get()
    }

    /// Asks the availability controller to check `name` again.
    pub fn recheck(&self, name: &str) {
        let _ = self.recheck.send(name.to_owned());
    }

    fn take_recheck(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.recheck_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Loads (or makes) the front-proxy certificates, publishes the
/// `kube-system/extension-apiserver-authentication` ConfigMap, and starts the
/// autoregistration and availability controllers.
pub async fn start(api: &Arc<Api>, pki: &Pki) -> anyhow::Result<()> {
    let identity = front_proxy::ensure(&pki.dir)?;
    front_proxy::publish(api, &pki.ca_cert, &identity)
        .await
        .map_err(|e| anyhow::anyhow!("extension-apiserver-authentication: {}", e.message))?;
    let _ = api.aggregator.identity.set(identity);
    tokio::spawn(autoregister::run(api.clone()));
    if let Some(rx) = api.aggregator.take_recheck() {
        tokio::spawn(availability::run(api.clone(), rx));
    }
    Ok(())
}

/// A context for the server's own writes of `plural` in `group`/v1 (in `namespace`
/// for a namespaced resource).
pub(crate) fn internal_ctx(
    api: &Arc<Api>,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Option<Ctx> {
    let def = api.registry.get(group, "v1", plural)?;
    Some(Ctx {
        api: api.clone(),
        def,
        namespace: namespace.map(str::to_owned),
        query: super::request::Query::default(),
        headers: Default::default(),
        user: None,
        warnings: Default::default(),
    })
}

/// The APIService objects in the watch cache.
pub fn list(api: &Api) -> Vec<apiservice::ApiService> {
    api.cache
        .list(PREFIX, |_| true)
        .0
        .iter()
        .filter_map(|o| apiservice::ApiService::parse(&o.value()))
        .collect()
}

/// One APIService from the watch cache, by name.
pub fn get(api: &Api, name: &str) -> Option<(apiservice::ApiService, Value)> {
    let value = api.cache.get(&format!("{PREFIX}{name}"))?.value();
    Some((apiservice::ApiService::parse(&value)?, value))
}
