//! The node's one watch of Services and EndpointSlices (`kube` reflectors), shared by
//! everything on the node that follows them — the Service load balancer
//! ([`crate::service_lb`]) and the cluster DNS ([`crate::dns`]). Level-triggered:
//! whenever a Service or one of its slices changes, each [`ServiceConsumer`] is
//! handed that Service's current state (or its absence) and all its slices from the
//! stores. After both initial lists, every Service is handed over once and the
//! consumers are told they are in sync. A re-list (after a watch broke off) ends the
//! same way: every Service is handed over again, and those handed over before that
//! are gone now are handed over as absent — nothing that changed or went away while
//! the watch was down is missed.

use std::collections::{HashMap, HashSet};

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

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Something that follows Services and their EndpointSlices.
pub trait ServiceConsumer: Send {
    /// Service `namespace/name` is now `service` (`None`: it is gone) with `slices`.
    fn changed(
        &mut self,
        namespace: &str,
        name: &str,
        service: Option<&Service>,
        slices: &[&EndpointSlice],
    );

    /// Both initial lists have been handed over: what was not in them is stale.
    fn synced(&mut self) {}
}

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

/// Watches every Service and EndpointSlice through `client` and keeps `consumers`
/// up to date; runs until the watches end. Watch errors are logged and retried with
/// back-off; consumers keep their last state meanwhile.
pub async fn run(client: Client, mut consumers: Vec<Box<dyn ServiceConsumer>>) {
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
    let mut handed: HashSet<(String, String)> = HashSet::new();
    while let Some(event) = events.next().await {
        match event {
            Err(error) => tracing::warn!(%error, "watch failed; retrying"),
            Ok(Touch::Nothing) => {}
            Ok(Touch::Listed(kind)) => {
                services_listed |= kind == Kind::Services;
                slices_listed |= kind == Kind::Slices;
                // The first sync once both lists are in; afterwards every re-list
                // (the store holds the new list only from its end) syncs again.
                if services_listed && slices_listed {
                    synced = true;
                    full_sync(&services, &slices, &mut consumers, &mut handed);
                }
            }
            Ok(Touch::Service(namespace, name)) if synced => {
                let service = services.get(&ObjectRef::new(&name).within(&namespace));
                let all = slices.state();
                let mine: Vec<&EndpointSlice> = all
                    .iter()
                    .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                    .filter(|s| {
                        s.labels().get(SERVICE_NAME_LABEL).map(String::as_str)
                            == Some(name.as_str())
                    })
                    .map(|s| &**s)
                    .collect();
                for c in &mut consumers {
                    c.changed(&namespace, &name, service.as_deref(), &mine);
                }
                let key = (namespace, name);
                if service.is_some() {
                    handed.insert(key);
                } else {
                    handed.remove(&key);
                }
            }
            Ok(Touch::Service(..)) => {} // handed over by the full sync once both lists are in
        }
    }
}

fn full_sync(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    consumers: &mut [Box<dyn ServiceConsumer>],
    handed: &mut HashSet<(String, String)>,
) {
    let all_slices = slices.state();
    let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for s in &all_slices {
        if let Some(owner) = s.labels().get(SERVICE_NAME_LABEL) {
            by_service
                .entry((s.namespace().unwrap_or_default(), owner.clone()))
                .or_default()
                .push(s);
        }
    }
    let mut present = HashSet::new();
    for service in services.state() {
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        let mine = by_service.get(&key).map_or(&[][..], Vec::as_slice);
        for c in consumers.iter_mut() {
            c.changed(&key.0, &key.1, Some(&service), mine);
        }
        present.insert(key);
    }
    for (namespace, name) in handed.difference(&present) {
        for c in consumers.iter_mut() {
            c.changed(namespace, name, None, &[]);
        }
    }
    *handed = present;
    for c in consumers.iter_mut() {
        c.synced();
    }
}
