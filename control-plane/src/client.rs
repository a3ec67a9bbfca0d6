//! What the scheduler and the controllers share as clients of the apiserver: a client
//! from a kubeconfig, informer caches (kube-runtime reflectors) that call back on every
//! change, and Events recorded as kube components record them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};

/// A client from a kubeconfig file, for the component named `product`.
pub async fn from_kubeconfig(path: &Path, product: &str) -> Result<Client, anyhow::Error> {
    Ok(Client::try_from(
        config_from_kubeconfig(path, product).await?,
    )?)
}

/// A client configuration from a kubeconfig file, sending `product`'s User-Agent.
pub async fn config_from_kubeconfig(
    path: &Path,
    product: &str,
) -> Result<kube::Config, anyhow::Error> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_str(&user_agent(product))?,
    ));
    Ok(config)
}

/// The User-Agent of a component, as client-go's default one reads
/// (`kube-scheduler/v1.37.0 (linux/amd64) berth/0.1.0`): the apiserver names a write's
/// field manager after its product, so the scheduler's and the controllers' writes show
/// in managedFields as `kube-scheduler` and `kube-controller-manager`, not `unknown`.
pub fn user_agent(product: &str) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "{product}/{} ({}/{arch}) berth/{}",
        crate::apiserver::discovery::GIT_VERSION,
        std::env::consts::OS,
        env!("CARGO_PKG_VERSION")
    )
}

/// The informers of one component: reflector-fed caches whose watches run only while
/// [`Informers::run`] runs, so dropping that future (a lost leader election, a stopped
/// component) stops every watch with it. Typed caches are shared: everyone who adds
/// the same resource gets the one cache and is called back from its one watch
/// (client-go's shared informer factory).
#[derive(Default)]
pub struct Informers {
    watches: Vec<futures_util::future::BoxFuture<'static, ()>>,
    /// One wait per cache for its first list. kube-runtime's readiness wakes only the
    /// last of several waiters on one cache, so [`Informers::run`] waits for every
    /// cache itself before the work starts (client-go's `WaitForCacheSync`); the
    /// work's own `wait_until_ready` calls then return at once.
    synced: Vec<futures_util::future::BoxFuture<'static, ()>>,
    shared: HashMap<(TypeId, String), Box<dyn Any + Send>>,
    /// Who lists and watches, whatever client an `Api` was made with (the controller
    /// manager's own identity, while each controller writes as itself).
    client: Option<Client>,
}

type Subscribers<K> = Arc<Mutex<Vec<Box<dyn Fn(&K) + Send>>>>;

/// One shared cache and who is told of its changes.
struct Shared<K>
where
    K: kube::Resource + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: reflector::Store<K>,
    subscribers: Subscribers<K>,
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Informers({} watches)", self.watches.len())
    }
}

impl Informers {
    /// Informers whose cluster-wide watches all list and watch as `client`.
    pub fn watching_as(client: Client) -> Self {
        Informers {
            client: Some(client),
            ..Self::default()
        }
    }

    /// The client watches list and watch as (`fallback` when the informers have none
    /// of their own) — for namespaced watches, which [`Informers::add`] keeps as given.
    pub fn watch_client(&self, fallback: &Client) -> Client {
        self.client.clone().unwrap_or_else(|| fallback.clone())
    }

    /// A cache of `api`'s objects; `on_change` sees every object created, changed or
    /// deleted (after the cache has it). The watch restarts with back-off on errors.
    pub fn add<K, F>(&mut self, api: Api<K>, on_change: F) -> reflector::Store<K>
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        F: Fn(&K) + Send + 'static,
    {
        self.add_with(api, Default::default(), on_change)
    }

    /// [`Informers::add`] for dynamic types too (`DynamicObject` with its
    /// `ApiResource`): one cache per resource URL, shared in the same way (the garbage
    /// collector's and the quota controller's caches of every resource are one).
    pub fn add_with<K, F>(
        &mut self,
        api: Api<K>,
        dyntype: K::DynamicType,
        on_change: F,
    ) -> reflector::Store<K>
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
        F: Fn(&K) + Send + 'static,
    {
        let key = (TypeId::of::<K>(), api.resource_url().to_owned());
        if let Some(shared) = self
            .shared
            .get(&key)
            .and_then(|s| s.downcast_ref::<Shared<K>>())
        {
            shared
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Box::new(on_change));
            return shared.store.clone();
        }
        let subscribers: Subscribers<K> = Arc::new(Mutex::new(vec![Box::new(on_change)]));
        let store = self.watch_with(api, dyntype, {
            let subscribers = subscribers.clone();
            move |obj: &K| {
                for f in subscribers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    f(obj);
                }
            }
        });
        self.shared.insert(
            key,
            Box::new(Shared {
                store: store.clone(),
                subscribers,
            }),
        );
        store
    }

    /// A cache of `api`'s objects with its own watch, calling back `on_change`.
    fn watch_with<K, F>(
        &mut self,
        api: Api<K>,
        dyntype: K::DynamicType,
        on_change: F,
    ) -> reflector::Store<K>
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
        F: Fn(&K) + Send + 'static,
    {
        let api = match (&self.client, api.namespace()) {
            (Some(client), None) => Api::all_with(client.clone(), &dyntype),
            _ => api,
        };
        let writer = reflector::store::Writer::new(dyntype);
        let store = writer.as_reader();
        self.synced.push(Box::pin({
            let store = store.clone();
            async move {
                let _ = store.wait_until_ready().await;
            }
        }));
        let stream = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        self.watches.push(Box::pin(async move {
            let mut s = std::pin::pin!(stream);
            while let Some(item) = s.next().await {
                if let Ok(obj) = item {
                    on_change(&obj);
                }
            }
        }));
        store
    }

    /// Runs the watches alongside `work`, which starts once every cache has its first
    /// list, until `work` returns.
    pub async fn run<T>(self, work: impl std::future::Future<Output = T>) -> T {
        let watches = futures_util::future::join_all(self.watches);
        let synced = futures_util::future::join_all(self.synced);
        tokio::select! {
            out = async move {
                synced.await;
                work.await
            } => out,
            _ = watches => std::future::pending().await,
        }
    }
}

/// The object an Event is about.
#[derive(Debug, Clone, Default)]
pub struct Involved {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
}

impl Involved {
    pub fn of<K: kube::Resource<DynamicType = ()>>(obj: &K) -> Self {
        Involved {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespace: obj.meta().namespace.clone(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone(),
        }
    }
}

/// client-go's event spam filter: per source and involved object, a token bucket of
/// 25 events refilled at one per 5 minutes; at most 4 096 objects tracked.
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL_PER_S: f64 = 1.0 / 300.0;
const SPAM_KEYS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

/// Events being sent at most (client-go's broadcaster queues 1 000).
const EVENTS_IN_FLIGHT: usize = 1000;
static EVENTS_IN_FLIGHT_NOW: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

static SPAM: std::sync::LazyLock<Mutex<HashMap<String, Bucket>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether an event from `component` about `about` may be sent now.
fn spam_allows(component: &str, about: &Involved) -> bool {
    let key = format!(
        "{component}\0{}\0{}\0{}\0{}\0{}",
        about.kind,
        about.namespace.as_deref().unwrap_or_default(),
        about.name,
        about.uid.as_deref().unwrap_or_default(),
        about.api_version
    );
    let now = std::time::Instant::now();
    let mut all = SPAM.lock().unwrap_or_else(|p| p.into_inner());
    if all.len() >= SPAM_KEYS && !all.contains_key(&key) {
        // Forget the buckets that have refilled (they behave as new ones), else the
        // least recently used.
        all.retain(|_, b| {
            b.tokens + now.duration_since(b.at).as_secs_f64() * SPAM_REFILL_PER_S < SPAM_BURST
        });
        if all.len() >= SPAM_KEYS
            && let Some(oldest) = all.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| k.clone())
        {
            all.remove(&oldest);
        }
    }
    let b = all.entry(key).or_insert(Bucket {
        tokens: SPAM_BURST,
        at: now,
    });
    b.tokens =
        (b.tokens + now.duration_since(b.at).as_secs_f64() * SPAM_REFILL_PER_S).min(SPAM_BURST);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// Records a core/v1 Event (`type_` is `Normal` or `Warning`) from `component`;
/// failures are logged, never returned: an Event is best effort, as in Kubernetes.
/// Like client-go's recorder, a component sends at most 25 events about one object in
/// a burst, then one per 5 minutes; the rest are dropped (logged at debug).
pub async fn record_event(
    client: &Client,
    component: &str,
    about: &Involved,
    type_: &str,
    reason: &str,
    message: &str,
) {
    if !spam_allows(component, about) {
        tracing::debug!(%reason, object = %about.name, "event dropped by the spam filter");
        return;
    }
    let ns = about.namespace.clone().unwrap_or_else(|| "default".into());
    let stamp = jiff::Timestamp::now();
    let now = stamp.to_string();
    // client-go's event name: the object's name and the time in hex nanoseconds.
    let name = format!("{}.{:x}", about.name, stamp.as_nanosecond());
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"apiVersion": about.api_version, "kind": about.kind,
            "name": about.name, "namespace": about.namespace, "uid": about.uid},
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let ev: Event = match serde_json::from_value(event) {
        Ok(ev) => ev,
        Err(err) => {
            tracing::warn!(%err, "event body");
            return;
        }
    };
    // Sent in the background, as client-go's broadcaster does: a controller's sync
    // does not wait on its events. At most EVENTS_IN_FLIGHT wait; beyond, dropped.
    if EVENTS_IN_FLIGHT_NOW.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= EVENTS_IN_FLIGHT {
        EVENTS_IN_FLIGHT_NOW.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        tracing::debug!(%reason, object = %about.name, "event dropped: too many in flight");
        return;
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let (reason, object) = (reason.to_owned(), about.name.clone());
    tokio::spawn(async move {
        if let Err(err) = events.create(&PostParams::default(), &ev).await {
            tracing::warn!(%err, %reason, %object, "could not record event");
        }
        EVENTS_IN_FLIGHT_NOW.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    });
}

#[cfg(test)]
mod spam_tests {
    use super::*;

    #[test]
    fn an_object_gets_a_burst_of_25_events_then_none() {
        let about = Involved {
            kind: "Job".into(),
            name: format!("spam-{}", std::process::id()),
            ..Default::default()
        };
        let sent = (0..40).filter(|_| spam_allows("test", &about)).count();
        assert_eq!(sent, 25);
        let other = Involved {
            name: "another".into(),
            ..about
        };
        assert!(spam_allows("test", &other));
    }
}
