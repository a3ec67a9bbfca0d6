//! `berth-server migrate --to-etcd`: moves a cluster from the embedded store in its
//! data dir to etcd, to run it on etcd from then on (`--etcd-servers`, the same data
//! dir for the PKI).
//!
//! What is copied, byte for byte (the etcd backend stores values as they are): every
//! live object, and the Service IP and node port allocation bitmaps
//! (`/registry/ranges/…`), which every server on one etcd shares. Keys get
//! kube-apiserver's etcd layout ([`super::etcd::keys`]). Keys with a TTL (Events) get
//! an etcd lease per store lease, with the TTL it has left, so they expire when they
//! would have; those whose lease expired while no server ran are skipped and counted.
//! The master leases (`/registry/masterleases/<ip>`) are skipped: each names one
//! server's address and lives as long as that server renews it; the server on etcd
//! makes its own.
//!
//! Revisions are not copied — etcd has its own counter — so every object gets a new
//! resourceVersion (etcd's revision of its write), as after an etcd restore upstream.
//! Before copying, etcd's revision is moved past the embedded store's and its history
//! compacted there ([`Importer::bump_past`], what `etcdutl snapshot restore
//! --bump-revision --mark-compacted` does for a restore): every new resourceVersion is
//! above every old one, and a read or watch at an old one answers 410 Gone, so a
//! client that kept one re-lists instead of reading another store's history under the
//! same numbers. Restart agents, controllers and watches after migrating all the same.
//!
//! Every write is a create (`create_revision == 0`), in transactions of up to
//! [`import::BATCH_KEYS`] keys, so nothing already in etcd is overwritten; a prefix
//! that holds keys is refused unless `force`, which deletes them first (never a
//! merge). The embedded store is the source and is never changed ([`export`]), and
//! is locked while this runs, so no server starts on it meanwhile. Values are read
//! into memory first (the size of the store; the server's watch cache holds as much).
//!
//! Entry points: [`prepare`], then [`Migration::run`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::etcd::Options;
use super::etcd::import::{self, Importer, Put};
use super::etcd::keys::Layout;
use super::redb::export::{self, Contents, ExportError, Lease};
use super::{KeyValue, LeaseId, Revision, StoreError};

/// Where the master leases live in berth keys (`apiserver::endpoint_reconciler::LEASES`).
pub const MASTER_LEASES: &str = "/registry/core/masterleases/";
/// How a value encrypted at rest starts (`super::encryption`).
const ENCRYPTED: &[u8] = b"k8s:enc:";

/// Why a migration failed. The embedded store is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Source(#[from] ExportError),
    #[error("{0}: the etcd backend cannot store it, so nothing was written to etcd")]
    Key(StoreError),
    #[error("{0}; nothing was written to etcd")]
    Etcd(StoreError),
    #[error(
        "etcd ({endpoints}) already holds {keys} keys under {prefix} (the first: {first}); \
         migrate into an empty prefix, or give --force to delete them first"
    )]
    NotEmpty {
        endpoints: String,
        prefix: String,
        keys: i64,
        first: String,
    },
    #[error(
        "{source}\n{written} of {total} keys had been written to etcd under {prefix} when this \
         failed{deleted}; the embedded store is unchanged: fix the cause and run again with \
         --force to start over"
    )]
    Partial {
        source: StoreError,
        prefix: String,
        written: usize,
        total: usize,
        /// Said when `--force` deleted keys before.
        deleted: String,
    },
}

/// Keys and value bytes of one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub keys: usize,
    pub bytes: usize,
}

/// What a migration will copy and skip.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// The etcd key of each key copied, with its index in [`Contents::kvs`].
    copy: Vec<(Vec<u8>, usize)>,
    /// By resource (`configmaps`, `deployments.apps`).
    resources: BTreeMap<String, Tally>,
    /// The store leases of copied keys: when each expires (unix ms).
    leases: BTreeMap<LeaseId, u64>,
    leased_keys: usize,
    master_leases: usize,
    expired: usize,
    encrypted: usize,
}

/// `configmaps` for `/registry/core/configmaps/…`, `deployments.apps` for
/// `/registry/apps/deployments/…` (how kubectl names resources).
fn resource(key: &str) -> String {
    let mut parts = key.trim_start_matches("/registry/").split('/');
    match (parts.next(), parts.next()) {
        (Some("core"), Some(plural)) => plural.to_owned(),
        (Some(group), Some(plural)) => format!("{plural}.{group}"),
        _ => key.to_owned(),
    }
}

fn plan(
    kvs: &[KeyValue],
    leases: &BTreeMap<LeaseId, Lease>,
    layout: &Layout,
    now_ms: u64,
) -> Result<Plan, MigrateError> {
    let mut plan = Plan::default();
    for (index, kv) in kvs.iter().enumerate() {
        if kv.key.starts_with(MASTER_LEASES) {
            plan.master_leases += 1;
            continue;
        }
        if let Some(id) = kv.lease {
            // A lease that is gone or past its expiry: the key would be deleted as
            // soon as a server ran.
            match leases.get(&id) {
                Some(lease) if lease.expires_unix_ms > now_ms => {
                    plan.leases.insert(id, lease.expires_unix_ms);
                    plan.leased_keys += 1;
                }
                _ => {
                    plan.expired += 1;
                    continue;
                }
            }
        }
        let etcd_key = layout.to_etcd(&kv.key).map_err(MigrateError::Key)?;
        let tally = plan.resources.entry(resource(&kv.key)).or_default();
        tally.keys += 1;
        tally.bytes += kv.value.len();
        plan.encrypted += usize::from(kv.value.starts_with(ENCRYPTED));
        plan.copy.push((etcd_key, index));
    }
    Ok(plan)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The embedded store of a data dir, read and planned, to copy into etcd.
#[derive(Debug)]
pub struct Migration {
    source: PathBuf,
    contents: Contents,
    plan: Plan,
    options: Options,
}

/// Reads the store in `data_dir` (refusing one a server has open) and plans the copy
/// into etcd as `options` say: every key must have an etcd key, or nothing is done.
pub fn prepare(data_dir: &Path, options: Options) -> Result<Migration, MigrateError> {
    let layout =
        Layout::new(&options.prefix).map_err(|e| MigrateError::Etcd(StoreError::Backend(e)))?;
    let contents = export::read(data_dir)?;
    let plan = plan(&contents.kvs, &contents.leases, &layout, now_ms())?;
    Ok(Migration {
        source: data_dir.join(super::redb::snapshot::STORE_FILE),
        contents,
        plan,
        options,
    })
}

impl Migration {
    /// Copies the keys into etcd (see the module docs).
    pub async fn run(self, force: bool) -> Result<Summary, MigrateError> {
        let importer = Importer::connect(&self.options)
            .await
            .map_err(MigrateError::Etcd)?;
        let prefix = importer.layout().base().to_owned();
        let occupied = importer.occupied().await.map_err(MigrateError::Etcd)?;
        let mut deleted_first = 0;
        if occupied.keys > 0 {
            if !force {
                return Err(MigrateError::NotEmpty {
                    endpoints: importer.endpoints().to_owned(),
                    prefix,
                    keys: occupied.keys,
                    first: occupied.first.unwrap_or_default(),
                });
            }
            deleted_first = importer.clear().await.map_err(MigrateError::Etcd)?;
            tracing::info!(keys = deleted_first, %prefix, "--force: deleted the keys under the prefix");
        }
        let total = self.plan.copy.len();
        let mut written = 0;
        let partial = |source: StoreError, written: usize| MigrateError::Partial {
            source,
            prefix: prefix.clone(),
            written,
            total,
            deleted: if deleted_first > 0 {
                format!(" (after --force deleted the {deleted_first} keys there)")
            } else {
                String::new()
            },
        };
        let (compacted, bumped) = importer
            .bump_past(self.contents.revision)
            .await
            .map_err(MigrateError::Etcd)?;
        // Each store lease as an etcd lease with the TTL it has left now.
        let mut leases = BTreeMap::new();
        for (&id, &expires) in &self.plan.leases {
            let left = Duration::from_millis(expires.saturating_sub(now_ms()).max(1));
            let lease = importer
                .grant(left)
                .await
                .map_err(|e| partial(e, written))?;
            leases.insert(id, lease);
        }
        let mut revisions: Option<(Revision, Revision)> = None;
        let mut batch = Vec::with_capacity(import::BATCH_KEYS);
        let mut bytes = 0;
        let mut copied = self.plan.copy.iter().peekable();
        while let Some((key, index)) = copied.next() {
            let kv = &self.contents.kvs[*index];
            batch.push(Put {
                key: key.clone(),
                value: &kv.value,
                lease: kv.lease.and_then(|id| leases.get(&id).copied()),
            });
            bytes += kv.value.len();
            let next_fits = copied.peek().is_some_and(|(_, next)| {
                batch.len() < import::BATCH_KEYS
                    && bytes + self.contents.kvs[*next].value.len() <= import::BATCH_BYTES
            });
            if next_fits {
                continue;
            }
            let revision = importer
                .create_all(&batch)
                .await
                .map_err(|e| partial(e, written))?;
            written += batch.len();
            revisions =
                Some(revisions.map_or((revision, revision), |(first, _)| (first, revision)));
            batch.clear();
            bytes = 0;
            if written % 10_000 < import::BATCH_KEYS {
                tracing::info!(written, total, "copying into etcd");
            }
        }
        let (first_revision, last_revision) = match revisions {
            Some(r) => r,
            None => {
                let now = importer.revision().await.map_err(|e| partial(e, written))?;
                (now, now)
            }
        };
        Ok(Summary {
            source: self.source,
            source_revision: self.contents.revision,
            endpoints: importer.endpoints().to_owned(),
            prefix,
            resources: self.plan.resources,
            leases: leases.len(),
            leased_keys: self.plan.leased_keys,
            master_leases: self.plan.master_leases,
            expired: self.plan.expired,
            encrypted: self.plan.encrypted,
            deleted_first,
            first_revision,
            last_revision,
            bumped,
            compacted,
        })
    }
}

/// What a migration did (`berth-server migrate` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub source: PathBuf,
    /// The embedded store's revision.
    pub source_revision: Revision,
    pub endpoints: String,
    /// The etcd prefix, with its trailing slash.
    pub prefix: String,
    /// Keys copied by resource (`configmaps`, `deployments.apps`).
    pub resources: BTreeMap<String, Tally>,
    /// etcd leases granted, and the keys attached to them.
    pub leases: usize,
    pub leased_keys: usize,
    /// Keys skipped: master leases (per server) and keys whose lease had expired.
    pub master_leases: usize,
    pub expired: usize,
    /// Values copied encrypted at rest (`k8s:enc:`).
    pub encrypted: usize,
    /// Keys `--force` deleted under the prefix first.
    pub deleted_first: i64,
    /// etcd's revisions of the first and last write.
    pub first_revision: Revision,
    pub last_revision: Revision,
    /// Writes that moved etcd's revision past the store's before the copy.
    pub bumped: i64,
    /// The revision etcd's history was compacted at before the copy.
    pub compacted: Revision,
}

impl Summary {
    /// Keys and bytes copied in all.
    pub fn total(&self) -> Tally {
        self.resources
            .values()
            .fold(Tally::default(), |a, t| Tally {
                keys: a.keys + t.keys,
                bytes: a.bytes + t.bytes,
            })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.total();
        if self.deleted_first > 0 {
            writeln!(
                f,
                "deleted first (--force): {} keys under {} in etcd",
                self.deleted_first, self.prefix
            )?;
        }
        writeln!(
            f,
            "copied {} keys ({} bytes) from {} (revision {}) to etcd {} under {}",
            total.keys,
            total.bytes,
            self.source.display(),
            self.source_revision,
            self.endpoints,
            self.prefix
        )?;
        let width = self.resources.keys().map(String::len).max().unwrap_or(0);
        for (resource, tally) in &self.resources {
            writeln!(
                f,
                "  {resource:<width$}  {:>7} keys  {:>10} bytes",
                tally.keys, tally.bytes
            )?;
        }
        writeln!(
            f,
            "leases:  {} etcd leases with the TTL left for {} keys (Events)",
            self.leases, self.leased_keys
        )?;
        writeln!(
            f,
            "skipped: {} master leases (per server; the server on etcd makes its own), \
             {} keys whose lease had expired",
            self.master_leases, self.expired
        )?;
        if self.encrypted > 0 {
            writeln!(
                f,
                "encrypted: {} values copied as stored (k8s:enc:); run the server on etcd with the same --encryption-provider-config",
                self.encrypted
            )?;
        }
        write!(
            f,
            "resourceVersions: etcd revisions {} to {} now, above the embedded store's (up to {}); \
             etcd's history is compacted at {} ({} writes moved its revision past the store's), \
             so an old resourceVersion gets 410 Gone: clients must re-list (restart agents, \
             controllers and watches)",
            self.first_revision,
            self.last_revision,
            self.source_revision,
            self.compacted,
            self.bumped
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
