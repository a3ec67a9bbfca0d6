//! The agent's side of Service load balancing: reflectors over Services and
//! EndpointSlices (the `kube` runtime), and a level-triggered loop that, whenever a
//! Service or one of its slices changes, recomputes that Service from the stores'
//! current contents and applies it through [`ServiceSync`]. After both initial lists,
//! everything is applied once and frontends no Service claims (adopted from pinned
//! maps of an earlier agent) are pruned.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use futures_util::{StreamExt, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt, reflector,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use super::{
    metrics::LbMetrics,
    model::SERVICE_NAME_LABEL,
    sync::{LbTarget, ServiceSync},
};

/// What an event touched.
enum Touch {
    /// The Service `namespace/name` must be recomputed.
    Service(String, String),
    /// A kind's initial list is complete.
    Listed(Kind),
    Nothing,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    Slices,
}

fn touch_service(e: watcher::Event<Service>) -> Touch {
    match e {
        watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s) => {
            Touch::Service(s.namespace().unwrap_or_default(), s.name_any())
        }
        watcher::Event::InitDone => Touch::Listed(Kind::Services),
        watcher::Event::Init => Touch::Nothing,
    }
}

fn touch_slice(e: watcher::Event<EndpointSlice>) -> Touch {
    match e {
        watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s) => {
            match s.labels().get(SERVICE_NAME_LABEL) {
                Some(service) => Touch::Service(s.namespace().unwrap_or_default(), service.clone()),
                None => Touch::Nothing,
            }
        }
        watcher::Event::InitDone => Touch::Listed(Kind::Slices),
        watcher::Event::Init => Touch::Nothing,
    }
}

/// Watches every Service and EndpointSlice through `client` and keeps `sync`
/// (and `metrics`) up to date; runs until the watches end. Watch errors are logged
/// and retried with back-off; the dataplane keeps its last state meanwhile.
pub async fn run<T: LbTarget + Send + 'static>(
    client: Client,
    sync: Arc<Mutex<ServiceSync<T>>>,
    metrics: Arc<Mutex<LbMetrics>>,
) {
    let (services, service_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let service_events = reflector(
        service_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|r| r.map(touch_service));
    let slice_events = reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|r| r.map(touch_slice));
    let mut events = std::pin::pin!(stream::select(service_events, slice_events));
    let (mut services_listed, mut slices_listed, mut synced) = (false, false, false);
    while let Some(event) = events.next().await {
        match event {
            Err(error) => tracing::warn!(%error, "watch failed; retrying"),
            Ok(Touch::Nothing) => {}
            Ok(Touch::Listed(kind)) => {
                services_listed |= kind == Kind::Services;
                slices_listed |= kind == Kind::Slices;
                if services_listed && slices_listed && !synced {
                    synced = true;
                    full_sync(&services, &slices, &sync, &metrics);
                }
            }
            Ok(Touch::Service(namespace, name)) if synced => {
                reconcile(&namespace, &name, &services, &slices, &sync, &metrics);
            }
            Ok(Touch::Service(..)) => {} // applied by the full sync once both lists are in
        }
    }
}

fn slices_of(slices: &Store<EndpointSlice>, namespace: &str, name: &str) -> Vec<EndpointSlice> {
    slices
        .state()
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace))
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name))
        .map(|s| (**s).clone())
        .collect()
}

fn reconcile<T: LbTarget>(
    namespace: &str,
    name: &str,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    sync: &Mutex<ServiceSync<T>>,
    metrics: &Mutex<LbMetrics>,
) {
    let started = Instant::now();
    let Ok(mut sync) = sync.lock() else { return };
    let result = match services.get(&ObjectRef::new(name).within(namespace)) {
        Some(service) => sync.apply(&service, &slices_of(slices, namespace, name)),
        None => sync.delete(namespace, name),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "service not synced");
    }
    if let Ok(mut m) = metrics.lock() {
        m.observe_sync(started.elapsed(), &sync.stats(), sync.target_slots());
    }
}

fn full_sync<T: LbTarget>(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    sync: &Mutex<ServiceSync<T>>,
    metrics: &Mutex<LbMetrics>,
) {
    for service in services.state() {
        let namespace = service.namespace().unwrap_or_default();
        reconcile(
            &namespace,
            &service.name_any(),
            services,
            slices,
            sync,
            metrics,
        );
    }
    if let Ok(mut sync) = sync.lock() {
        match sync.prune_unclaimed() {
            Ok(n) if n > 0 => tracing::info!(removed = n, "pruned frontends no Service claims"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning stale frontends failed"),
        }
    }
}
