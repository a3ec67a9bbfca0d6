//! Writing keys into etcd that were kept elsewhere (`berth-server migrate --to-etcd`,
//! [`crate::store::migrate`]): batches of creates, each one transaction that applies
//! only if none of its keys exists (`create_revision == 0` for every key), so nothing
//! already in etcd is ever overwritten; leases for keys that expire; and what is under
//! the prefix before anything is written.
//!
//! Keys here are etcd keys (translate berth keys with [`super::keys::Layout`]); values
//! are stored as they are, as [`super::EtcdStore`] stores and reads them.
//!
//! Entry point: [`Importer::connect`].

use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

use super::keys::{Layout, range_end};
use super::request::classify;
use super::{Failure, Options, REQUEST_TIMEOUT, call, header_revision};
use crate::store::{LeaseId, Result, Revision, StoreError};

/// Most keys one transaction creates (etcd refuses more than `--max-txn-ops`, 128 by
/// default, compares or operations in one).
pub const BATCH_KEYS: usize = 100;
/// Most value bytes one transaction carries, well under etcd's request limit
/// (`--max-request-bytes`, 1.5 MiB by default); a larger value goes alone.
pub const BATCH_BYTES: usize = 1024 * 1024;

/// One key to create.
#[derive(Debug, Clone)]
pub struct Put<'a> {
    pub key: Vec<u8>,
    pub value: &'a [u8],
    pub lease: Option<LeaseId>,
}

/// What is under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupied {
    /// How many keys.
    pub keys: i64,
    /// The first of them, for messages.
    pub first: Option<String>,
}

/// An etcd client for writing under one prefix (see the module docs).
pub struct Importer {
    client: etcd_client::Client,
    layout: Layout,
    endpoints: String,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("endpoints", &self.endpoints)
            .field("layout", &self.layout)
            .finish()
    }
}

impl Importer {
    /// Connects to etcd and reads from it once, so an unreachable etcd or bad options
    /// fail here, before anything is written.
    pub async fn connect(options: &Options) -> Result<Self> {
        let layout = Layout::new(&options.prefix).map_err(StoreError::Backend)?;
        let connect = options.connect_options()?;
        let endpoints = options.endpoints_text();
        let client = etcd_client::Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| plain(classify(e, &endpoints), &endpoints))?;
        let importer = Self {
            client,
            layout,
            endpoints,
        };
        importer.revision().await?;
        Ok(importer)
    }

    /// The translation of berth keys for this prefix.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn prefix_range(&self) -> (Vec<u8>, Vec<u8>) {
        let start = self.layout.base().as_bytes().to_vec();
        let end = range_end(&start);
        (start, end)
    }

    async fn get(&self, key: Vec<u8>, opts: GetOptions) -> Result<etcd_client::GetResponse> {
        call(&self.endpoints, "a read", REQUEST_TIMEOUT, || {
            let (mut kv, key, opts) = (self.client.kv_client(), key.clone(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })
        .await
        .map_err(|f| plain(f, &self.endpoints))
    }

    /// etcd's revision now (a linearizable read).
    pub async fn revision(&self) -> Result<Revision> {
        let (start, _) = self.prefix_range();
        let resp = self.get(start, GetOptions::new().with_count_only()).await?;
        header_revision(resp.header())
    }

    /// The keys under the prefix.
    pub async fn occupied(&self) -> Result<Occupied> {
        let (start, end) = self.prefix_range();
        let resp = self
            .get(
                start,
                GetOptions::new()
                    .with_range(end)
                    .with_keys_only()
                    .with_limit(1),
            )
            .await?;
        Ok(Occupied {
            keys: resp.count(),
            first: resp
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
        })
    }

    /// Deletes every key under the prefix; how many there were.
    pub async fn clear(&self) -> Result<i64> {
        let (start, end) = self.prefix_range();
        let resp = call(&self.endpoints, "a delete", REQUEST_TIMEOUT, || {
            let (mut kv, start, end) = (self.client.kv_client(), start.clone(), end.clone());
            async move {
                kv.delete(start, Some(DeleteOptions::new().with_range(end)))
                    .await
            }
        })
        .await
        .map_err(|f| plain(f, &self.endpoints))?;
        Ok(resp.deleted())
    }

    /// A lease of `ttl`, in whole seconds rounded up (etcd raises it to its minimum).
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let resp = call(&self.endpoints, "a lease grant", REQUEST_TIMEOUT, || {
            let mut lease = self.client.lease_client();
            async move { lease.grant(secs, None).await }
        })
        .await
        .map_err(|f| plain(f, &self.endpoints))?;
        Ok(resp.id())
    }

    /// Writes to a key of its own outside the prefix until etcd's revision is past
    /// `past`, then deletes it and compacts etcd's history there; the revision compacted
    /// at, and how many revisions the writes took. etcd counts one revision per write
    /// and has no other way to move its counter (etcdutl's `--bump-revision` works on
    /// a stopped member's snapshot), so this takes `past - now` writes, `IN_FLIGHT` at a
    /// time. Everything written after it has a revision above `past`, and every
    /// revision up to it is compacted: a read or watch at one answers "compacted".
    pub async fn bump_past(&self, past: Revision) -> Result<(Revision, i64)> {
        use futures_util::StreamExt;
        const IN_FLIGHT: usize = 64;
        let key = format!(
            "{}-migration-revision-bump",
            self.layout.base().trim_end_matches('/')
        )
        .into_bytes();
        let now = self.revision().await?;
        let writes = past.saturating_sub(now).max(0);
        let mut puts = futures_util::stream::iter(0..writes)
            .map(|i| {
                let key = key.clone();
                async move {
                    call(&self.endpoints, "a write", REQUEST_TIMEOUT, || {
                        let (mut kv, key) = (self.client.kv_client(), key.clone());
                        async move { kv.put(key, i.to_string(), None).await }
                    })
                    .await
                    .map_err(|f| plain(f, &self.endpoints))
                }
            })
            .buffer_unordered(IN_FLIGHT);
        let mut done = 0i64;
        while let Some(put) = puts.next().await {
            put?;
            done += 1;
            if done % 100_000 == 0 {
                tracing::info!(done, writes, "moving etcd's revision past the store's");
            }
        }
        let deleted = call(&self.endpoints, "a delete", REQUEST_TIMEOUT, || {
            let (mut kv, key) = (self.client.kv_client(), key.clone());
            async move { kv.delete(key, None).await }
        })
        .await
        .map_err(|f| plain(f, &self.endpoints))?;
        let at = header_revision(deleted.header())?;
        let compacted = call(&self.endpoints, "a compaction", REQUEST_TIMEOUT, || {
            let mut kv = self.client.kv_client();
            async move {
                kv.compact(
                    at,
                    Some(etcd_client::CompactionOptions::new().with_physical()),
                )
                .await
            }
        })
        .await;
        match compacted {
            // Compacted there already (nothing was written since the last compaction).
            Ok(_) | Err(Failure::Compacted) => Ok((at, writes)),
            Err(f) => Err(plain(f, &self.endpoints)),
        }
    }

    /// Creates every key of `batch` in one transaction, or none of them when one
    /// exists ([`StoreError::AlreadyExists`] naming it); the revision it was written at.
    pub async fn create_all(&self, batch: &[Put<'_>]) -> Result<Revision> {
        let compares: Vec<Compare> = batch
            .iter()
            .map(|p| Compare::create_revision(p.key.clone(), CompareOp::Equal, 0))
            .collect();
        let puts: Vec<TxnOp> = batch
            .iter()
            .map(|p| {
                let opts = p
                    .lease
                    .map_or_else(PutOptions::new, |id| PutOptions::new().with_lease(id));
                TxnOp::put(p.key.clone(), p.value.to_vec(), Some(opts))
            })
            .collect();
        let gets: Vec<TxnOp> = batch
            .iter()
            .map(|p| TxnOp::get(p.key.clone(), Some(GetOptions::new().with_keys_only())))
            .collect();
        let txn = Txn::new().when(compares).and_then(puts).or_else(gets);
        let resp = call(&self.endpoints, "a create", REQUEST_TIMEOUT, || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|f| match f {
            Failure::LeaseNotFound => StoreError::Backend(format!(
                "etcd ({}): a lease granted for this migration is gone (expired)",
                self.endpoints
            )),
            f => plain(f, &self.endpoints),
        })?;
        if !resp.succeeded() {
            let existing = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned()),
                _ => None,
            });
            return Err(StoreError::AlreadyExists {
                key: existing.unwrap_or_else(|| "(a key of the batch)".into()),
            });
        }
        header_revision(resp.header())
    }
}

/// A [`Failure`] as a store error.
fn plain(failure: Failure, endpoints: &str) -> StoreError {
    match failure {
        Failure::Store(err) => err,
        other => StoreError::Backend(format!("etcd ({endpoints}): {other:?}")),
    }
}
