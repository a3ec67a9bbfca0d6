//! Encryption at rest (kube-apiserver's `--encryption-provider-config`): a [`Store`]
//! that encrypts the values of the resources an `EncryptionConfiguration` names on
//! their way into the store it wraps and decrypts them on their way out — get, list,
//! delete, and watch events with their `prev` — so everything above it (the watch
//! cache, the REST handlers) sees plaintext, and the store file holds
//! `k8s:enc:<provider>:v1:<key>:…` values in upstream's byte formats
//! ([`providers`]).
//!
//! Entry points: [`Transformers::load`] (the config file, [`config`]) and
//! [`EncryptedStore::open`]. As upstream: the first provider of a resource's rule
//! writes; reads try the providers by prefix; a value a provider other than the
//! writing one (or another key) read is reported by [`Store::stale`] so an update that
//! changes nothing still rewrites it — which is how `kubectl get secrets -A -o json |
//! kubectl replace -f -` rotates keys. Values of resources no rule names are stored as
//! they are, and an encrypted value there is an error (upstream's identity check).
//! A value no configured key can read fails the read with an error naming the key;
//! nothing undecryptable is ever passed on as if it were the object.
//!
//! Store keys are `/registry/<group>/<resource>/…` (`core` for the core group); the
//! store key is AES-GCM's authenticated data, as the etcd key is upstream's.

pub mod config;
pub mod providers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use self::config::GroupResource;
use self::providers::{Provider, TransformError};
use super::{
    BoxFuture, Event, EventKind, KeyValue, LeaseId, ListOptions, ListResult, Result, Revision,
    Store, StoreError, WatchStream,
};

pub use self::config::ConfigError;

/// The provider lists of every resource the config names.
#[derive(Debug)]
pub struct Transformers {
    rules: HashMap<GroupResource, Vec<Arc<Provider>>>,
}

impl Transformers {
    /// Reads and validates an `EncryptionConfiguration` file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self {
            rules: config::load(path)?,
        })
    }

    /// From a config's text (YAML or JSON); errors name the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        config::parse(text)
            .map(|rules| Self { rules })
            .map_err(|e| match e {
                config::Refused::Empty => "empty".to_owned(),
                config::Refused::Parse(m) => m,
                config::Refused::Invalid(errors) => errors.join("; "),
            })
    }

    /// What a rule says for `resource` in `group` (`""` for core): exact name first,
    /// then `*.<group>`, then `*.*` (upstream's `transformerFromOverrides`).
    fn providers(&self, key: &str) -> Option<&[Arc<Provider>]> {
        let (group, resource) = group_resource(key)?;
        let mut gr = GroupResource {
            group: group.to_owned(),
            resource: resource.to_owned(),
        };
        if let Some(p) = self.rules.get(&gr) {
            return Some(p);
        }
        gr.resource = "*".into();
        if let Some(p) = self.rules.get(&gr) {
            return Some(p);
        }
        gr.group = "*".into();
        self.rules.get(&gr).map(Vec::as_slice)
    }

    /// The bytes to store for `plain` under `key` (`None`: `plain` itself).
    pub fn to_storage(&self, key: &str, plain: &[u8]) -> Result<Option<Vec<u8>>, TransformError> {
        let Some(providers) = self.providers(key) else {
            return Ok(None);
        };
        let started = Instant::now();
        let result = providers::seal(providers, plain, key.as_bytes());
        let prefix = match providers.first().map(AsRef::as_ref) {
            Some(Provider::Keys { kind, .. }) => kind.prefix(),
            _ => "identity",
        };
        record("to_storage", prefix, result.is_ok(), started);
        result
    }

    /// The plaintext of what is stored under `key` (`None`: the stored bytes are it),
    /// and whether a write now would store it differently.
    pub fn from_storage(
        &self,
        key: &str,
        stored: &[u8],
    ) -> Result<(Option<Vec<u8>>, bool), TransformError> {
        let Some(providers) = self.providers(key) else {
            if stored.starts_with(providers::ENCRYPTED) {
                return Err(TransformError::NoRule {
                    prefix: providers::label(stored),
                });
            }
            return Ok((None, false));
        };
        let started = Instant::now();
        match providers::open(providers, stored, key.as_bytes()) {
            Ok(opened) => {
                record("from_storage", opened.prefix, true, started);
                Ok((opened.plain, opened.stale))
            }
            Err(e) => {
                record("from_storage", "unknown", false, started);
                Err(e)
            }
        }
    }

    /// `kv` with its value in plaintext.
    fn read(&self, mut kv: KeyValue) -> Result<KeyValue> {
        match self.from_storage(&kv.key, &kv.value) {
            Ok((Some(plain), _)) => {
                kv.value = plain.into();
                Ok(kv)
            }
            Ok((None, _)) => Ok(kv),
            Err(e) => Err(unreadable(&kv.key, &e)),
        }
    }
}

/// The revision of the newest event in `store`'s history whose value the config cannot
/// decrypt (0: none). Every revision is one key's change, so the replay of all keys
/// ends at the current revision.
async fn unreadable_history(store: &dyn Store, transformers: &Transformers) -> Result<Revision> {
    let current = store.current_revision();
    let compacted = store.compacted_revision();
    if current <= compacted {
        return Ok(0);
    }
    let mut events = store.watch(String::new(), compacted).await?;
    let deadline = tokio::time::Instant::now() + HISTORY_SCAN;
    let mut unreadable = 0;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(event))) => {
                let revision = event.revision();
                if let Err(err) = transformers.read(event.kv) {
                    tracing::debug!(%err, revision, "unreadable history");
                    unreadable = revision;
                }
                if revision >= current {
                    return Ok(unreadable);
                }
            }
            other => {
                tracing::warn!(
                    outcome = ?other.map(|e| e.map(|e| e.err())),
                    "could not read the store's history with the encryption config; watches start at the current revision"
                );
                return Ok(current);
            }
        }
    }
}

fn unreadable(key: &str, err: &TransformError) -> StoreError {
    StoreError::Backend(format!("cannot decrypt {key}: {err}"))
}

/// `("", "secrets")` for `/registry/core/secrets/ns/name`, `("apps", "deployments")`
/// for `/registry/apps/deployments/…`.
fn group_resource(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.strip_prefix("/registry/")?.splitn(3, '/');
    let group = parts.next()?;
    let resource = parts.next()?;
    Some((if group == "core" { "" } else { group }, resource))
}

/// A store whose values for configured resources are encrypted at rest.
#[derive(Debug)]
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    transformers: Arc<Transformers>,
    /// History before this revision holds a value the config cannot decrypt (written
    /// under a key removed since, and overwritten since): reads and watches from before
    /// it are answered [`StoreError::Compacted`], so the watch cache starts after it
    /// rather than stopping on it.
    unreadable_before: Revision,
}

/// How long reading the store's history at start may take before it is all treated
/// as unreadable (the watch cache then starts at the current revision).
const HISTORY_SCAN: std::time::Duration = std::time::Duration::from_secs(30);

impl EncryptedStore {
    /// `events` with their values decrypted ([`decrypt`]), as the reader takes them.
    fn decrypting(&self, events: WatchStream) -> WatchStream {
        let transformers = self.transformers.clone();
        events.map(move |event| decrypt(&transformers, event))
    }

    /// Wraps `inner` (before anything else writes to it), reading its history once.
    pub async fn open(inner: Arc<dyn Store>, transformers: Transformers) -> Result<Self> {
        let unreadable_before = unreadable_history(inner.as_ref(), &transformers).await?;
        if unreadable_before > 0 {
            tracing::warn!(
                revision = unreadable_before,
                "store history up to this revision has values the encryption config cannot decrypt; it is treated as compacted"
            );
        }
        Ok(Self {
            inner,
            transformers: Arc::new(transformers),
            unreadable_before,
        })
    }

    /// [`StoreError::Compacted`] for a read or watch at a revision before the history
    /// this config can read.
    fn check_history(&self, revision: Revision) -> Result<()> {
        if revision < self.unreadable_before {
            return Err(StoreError::Compacted {
                requested: revision,
                compacted: self.unreadable_before,
            });
        }
        Ok(())
    }

    /// The encrypted bytes to store for `value` (`None`: store it as it is).
    fn seal(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.transformers
            .to_storage(key, value)
            .map_err(|e| StoreError::Backend(format!("cannot encrypt {key}: {e}")))
    }
}

/// An event on the way through: a live event's value must decrypt (else the watch
/// ends with the error); a `prev` that no longer does (a key removed after the
/// rotation, in history a replay still reaches) is dropped with a warning rather than
/// passed on.
fn decrypt(transformers: &Transformers, mut event: Event) -> Result<Event> {
    // A delete without its last value (a watch without `prev`) has nothing to decrypt.
    if !(event.kind == EventKind::Delete && event.kv.value.is_empty()) {
        event.kv = transformers.read(event.kv)?;
    }
    event.prev = match event.prev.map(|p| transformers.read(p)) {
        Some(Ok(prev)) => Some(prev),
        Some(Err(err)) => {
            tracing::warn!(%err, key = %event.kv.key, "watch event's previous value dropped");
            None
        }
        None => None,
    };
    Ok(event)
}

impl Store for EncryptedStore {
    fn current_revision(&self) -> Revision {
        self.inner.current_revision()
    }

    fn compacted_revision(&self) -> Revision {
        self.inner.compacted_revision().max(self.unreadable_before)
    }

    fn shared(&self) -> bool {
        self.inner.shared()
    }

    fn remote(&self) -> bool {
        self.inner.remote()
    }

    fn consistent_revision(&self) -> BoxFuture<'_, Result<Revision>> {
        self.inner.consistent_revision()
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        revision: Option<Revision>,
    ) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            if let Some(r) = revision {
                self.check_history(r)?;
            }
            match self.inner.get(key, revision).await? {
                Some(kv) => self.transformers.read(kv).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str, opts: ListOptions) -> BoxFuture<'a, Result<ListResult>> {
        Box::pin(async move {
            if let Some(r) = opts.revision {
                self.check_history(r)?;
            }
            let mut listed = self.inner.list(prefix, opts).await?;
            listed.kvs = std::mem::take(&mut listed.kvs)
                .into_iter()
                .map(|kv| self.transformers.read(kv))
                .collect::<Result<_>>()?;
            Ok(listed)
        })
    }

    fn create(
        &self,
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(async move {
            let Some(stored) = self.seal(&key, &value)? else {
                return self.inner.create(key, value, lease).await;
            };
            let mut kv = self.inner.create(key, stored, lease).await?;
            kv.value = value.into();
            Ok(kv)
        })
    }

    fn update(
        &self,
        key: String,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(async move {
            let Some(stored) = self.seal(&key, &value)? else {
                return self.inner.update(key, value, expected).await;
            };
            let mut kv = self.inner.update(key, stored, expected).await?;
            kv.value = value.into();
            Ok(kv)
        })
    }

    fn delete(&self, key: String, expected: Option<Revision>) -> BoxFuture<'_, Result<KeyValue>> {
        Box::pin(async move {
            let kv = self.inner.delete(key, expected).await?;
            self.transformers.read(kv)
        })
    }

    fn watch(&self, prefix: String, after: Revision) -> BoxFuture<'_, Result<WatchStream>> {
        Box::pin(async move {
            self.check_history(after)?;
            let events = self.inner.watch(prefix, after).await?;
            Ok(self.decrypting(events))
        })
    }

    fn watch_without_prev(
        &self,
        prefix: String,
        after: Revision,
    ) -> BoxFuture<'_, Result<WatchStream>> {
        Box::pin(async move {
            self.check_history(after)?;
            let events = self.inner.watch_without_prev(prefix, after).await?;
            Ok(self.decrypting(events))
        })
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<()>> {
        self.inner.compact(revision)
    }

    fn grant_lease(&self, ttl: std::time::Duration) -> BoxFuture<'_, Result<LeaseId>> {
        self.inner.grant_lease(ttl)
    }

    fn keep_alive(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        self.inner.keep_alive(id)
    }

    fn health(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.health()
    }

    /// The stored bytes, still encrypted: reading a restored copy needs the same config.
    fn snapshot(&self, out: Box<dyn std::io::Write + Send>) -> BoxFuture<'_, Result<Revision>> {
        self.inner.snapshot(out)
    }

    fn stale<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // No rule: nothing is ever rewritten for the encryption's sake.
            if self.transformers.providers(key).is_none() {
                return Ok(false);
            }
            let Some(kv) = self.inner.get(key, None).await? else {
                return Ok(false);
            };
            self.transformers
                .from_storage(key, &kv.value)
                .map(|(_, stale)| stale)
                .map_err(|e| unreadable(key, &e))
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransformationLabels {
    transformation_type: &'static str,
    transformer_prefix: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    transformation_type: &'static str,
    transformer_prefix: &'static str,
}

struct Metrics {
    registry: Mutex<Registry>,
    operations: Family<TransformationLabels, Counter>,
    durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
}

/// Upstream's buckets: 5 µs doubling 25 times (an in-process cipher takes microseconds;
/// an external KMS, if ever, up to seconds).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(5e-6, 2.0, 25))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let operations = Family::<TransformationLabels, Counter>::default();
    registry.register(
        "apiserver_storage_transformation_operations",
        "Total number of transformations (encryption at rest), by type, provider prefix and status",
        operations.clone(),
    );
    let durations = Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
        duration_histogram,
    );
    registry.register(
        "apiserver_storage_transformation_duration_seconds",
        "Latencies in seconds of value transformation operations.",
        durations.clone(),
    );
    Metrics {
        registry: Mutex::new(registry),
        operations,
        durations,
    }
});

/// Counts one transformation as upstream's
/// `apiserver_storage_transformation_operations_total` (`status` `OK` or `Unknown`), and
/// the time since `started` in `apiserver_storage_transformation_duration_seconds`.
fn record(
    transformation_type: &'static str,
    transformer_prefix: &'static str,
    ok: bool,
    started: Instant,
) {
    METRICS
        .durations
        .get_or_create(&DurationLabels {
            transformation_type,
            transformer_prefix,
        })
        .observe(started.elapsed().as_secs_f64());
    METRICS
        .operations
        .get_or_create(&TransformationLabels {
            transformation_type,
            transformer_prefix,
            status: if ok { "OK" } else { "Unknown" },
        })
        .inc();
}

/// The counter's families in the OpenMetrics text format, without the final `# EOF`
/// (the apiserver's `/metrics` appends them to its own).
pub fn render_metrics() -> String {
    let mut out = String::new();
    if let Ok(registry) = METRICS.registry.lock() {
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
    }
    out
}

#[cfg(test)]
mod tests;
