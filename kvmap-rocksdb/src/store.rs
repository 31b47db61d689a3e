//! [`RocksStore`], the [`KvStore`] over an embedded RocksDB.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::lock::LocalLocks;
use kvmap_core::{
    Batch, BatchOp, BatchOutcome, Capabilities, ChangeSource, Context, DeleteOptions, Entry, Key,
    KvStore, ListPage, ListRequest, Op, PutOptions, Result, Revision, Scope, WatchRequest,
    WatchStream,
};
use kvmap_core::{LockGuard, LockOptions};
use rocksdb::ReadOptions;

use crate::config::RocksConfig;
use crate::db::Inner;
use crate::error::NAME;
use crate::reaper::{self, Control};
use crate::txn::Txn;
use crate::watch::{offload, Source};

/// A [`KvStore`] over an embedded RocksDB database: one global revision,
/// compare-and-swap, TTL with expiry events, ordered list, watch with
/// resume from a persisted change log, atomic batches.
///
/// Cheap to clone; clones share the database. The database is closed
/// when the last clone and the last watch stream are dropped (the
/// background reaper thread is stopped and joined when the last clone
/// goes).
///
/// See the [crate docs](crate) for the capability table, durability and
/// the on-disk layout.
#[derive(Debug, Clone)]
pub struct RocksStore {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    inner: Arc<Inner>,
    control: Arc<Control>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    locks: Arc<LocalLocks>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.control.stop();
        let thread = self
            .reaper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            // The reaper never panics by design; if it did, there is
            // nothing left to clean up.
            let _ = t.join();
        }
    }
}

impl RocksStore {
    /// Opens (or, with `create_if_missing`, creates) the database at
    /// `config.path` and starts the expiry reaper thread.
    ///
    /// Blocking: RocksDB replays its write-ahead log here. In async code
    /// call it through `tokio::task::spawn_blocking` (or at start-up).
    /// No Tokio runtime is needed.
    ///
    /// # Errors
    /// All with backend `rocksdb` and operation `open`:
    /// - [`InvalidArgument`](kvmap_core::ErrorKind::InvalidArgument): a bad
    ///   setting, a path that is a file, a missing database without
    ///   `create_if_missing`;
    /// - [`PermissionDenied`](kvmap_core::ErrorKind::PermissionDenied): the
    ///   directory cannot be read or written;
    /// - [`Unavailable`](kvmap_core::ErrorKind::Unavailable): the database
    ///   is locked by another process or handle (detail "database is
    ///   locked by another process or handle"), or an I/O error;
    /// - [`InvalidData`](kvmap_core::ErrorKind::InvalidData): a corrupted
    ///   database or OPTIONS file, or a database kvmap did not write.
    pub fn open(config: RocksConfig) -> Result<Self> {
        let inner = Arc::new(Inner::open(config)?);
        let control = Arc::new(Control::default());
        let thread = reaper::spawn(inner.clone(), control.clone())?;
        Ok(Self {
            handle: Arc::new(Handle {
                locks: crate::lock::locks(inner.clone()),
                inner,
                control,
                reaper: Mutex::new(Some(thread)),
            }),
        })
    }

    /// [`RocksStore::open`] on a blocking thread.
    ///
    /// # Errors
    /// As [`RocksStore::open`].
    pub async fn open_async(config: RocksConfig) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Self::open(config);
        }
        match tokio::task::spawn_blocking(move || Self::open(config)).await {
            Ok(r) => r,
            Err(e) => Err(crate::error::internal(
                Op::Open,
                format!("open task failed: {e}"),
            )),
        }
    }

    /// The latest committed revision.
    pub fn revision(&self) -> Revision {
        self.inner().revision()
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &RocksConfig {
        &self.inner().config
    }

    /// Runs one expiry pass now, outside the reaper's schedule (the reaper
    /// does this by itself; this is for tests and tools). Blocking.
    ///
    /// # Errors
    /// Backend failures.
    pub fn reap_expired(&self) -> Result<()> {
        reaper::reap_due(self.inner()).map(|_| ())
    }

    /// Drops change-log records older than the retention age now (the
    /// reaper does this every second). Blocking.
    ///
    /// # Errors
    /// Backend failures.
    pub fn trim_changelog(&self) -> Result<()> {
        reaper::trim_by_age(self.inner())
    }

    /// Flushes the memtables and compacts every column family now
    /// (RocksDB does this in the background by itself; this is for tools,
    /// tests and benchmarks). Blocking.
    ///
    /// # Errors
    /// Backend failures.
    pub fn compact(&self) -> Result<()> {
        self.inner().compact()
    }

    /// A RocksDB property of the data column family (for example
    /// `rocksdb.stats` or `rocksdb.estimate-num-keys`), for diagnostics.
    ///
    /// # Errors
    /// Backend failures.
    pub fn property(&self, name: &str) -> Result<Option<String>> {
        let inner = self.inner();
        let cf = inner.cf(crate::codec::CF_DATA, Op::Get)?;
        inner
            .db
            .property_value_cf(cf, name)
            .map_err(|e| crate::error::from_rocks(e, Op::Get))
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Runs a read inline, or on a blocking thread if configured.
    async fn read<T, F>(&self, op: Op, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        if self.inner().config.offload_reads {
            offload(self.inner(), op, f).await
        } else {
            f(self.inner().as_ref())
        }
    }

    /// Runs a write transaction: inline when writes are not fsynced (a
    /// commit is then a few microseconds of memtable and WAL append), on
    /// a blocking thread when they are (an fsync takes milliseconds).
    async fn write<T, F>(&self, op: Op, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        let control = self.handle.control.clone();
        let run = move |inner: &Inner| {
            let mut txn = Txn::begin(inner, op);
            let out = f(&mut txn)?;
            if let Some(expires) = txn.commit()? {
                control.expiry_written(expires);
            }
            Ok(out)
        };
        if self.inner().config.sync {
            offload(self.inner(), op, run).await
        } else {
            run(self.inner().as_ref())
        }
    }
}

fn scope(op: Op, key: Option<&str>) -> Scope<'_> {
    Scope {
        backend: NAME,
        op,
        key,
        timeout: None,
    }
}

/// Bytes just after `s`: the smallest key greater than `s`.
fn after(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[async_trait]
impl KvStore for RocksStore {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_native().with_limits(self.inner().config.limits)
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.inner().config.limits.check_key(key)?;
        let stale = ctx.fresh_read_staleness();
        let scope = scope(Op::Get, Some(key.as_str()));
        let entry = if self.inner().config.offload_reads {
            let k = key.clone();
            let read = offload(self.inner(), Op::Get, move |inner| inner.get(&k, Op::Get));
            ctx.run(scope, read).await?
        } else {
            // An inline read completes within its first poll: the
            // synchronous guard skips the timer and select of `run`.
            ctx.run_sync(scope, || self.inner().get(key, Op::Get))?
        };
        Ok(entry.map(|e| e.with_staleness(stale)))
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        self.inner().config.limits.check_put(key, &value)?;
        options.validate()?;
        let k = key.clone();
        ctx.run(
            scope(Op::Put, Some(key.as_str())),
            self.write(Op::Put, move |txn| txn.put(&k, &value, &options)),
        )
        .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.inner().config.limits.check_key(key)?;
        let k = key.clone();
        ctx.run(
            scope(Op::Delete, Some(key.as_str())),
            self.write(Op::Delete, move |txn| txn.delete(&k, &options)),
        )
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        request.validate()?;
        let req = request.clone();
        ctx.run(scope(Op::List, Some(request.range.start())), async {
            self.read(Op::List, move |inner| {
                let lower = match req.lower_bound() {
                    std::ops::Bound::Excluded(c) => after(c),
                    std::ops::Bound::Included(s) => s.as_bytes().to_vec(),
                    std::ops::Bound::Unbounded => Vec::new(),
                };
                let limit = req.page_size();
                let entries = inner.scan(
                    &req.range,
                    lower,
                    limit.saturating_add(1),
                    !req.keys_only,
                    ReadOptions::default(),
                    Op::List,
                )?;
                Ok(ListPage::from_sorted(entries, Some(limit)))
            })
            .await
        })
        .await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        let source: Arc<dyn ChangeSource> = Arc::new(Source(self.inner().clone()));
        self.inner().feed.watch(NAME, ctx, request, source).await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.inner().config.limits.check_keys(keys)?;
        let stale = ctx.fresh_read_staleness();
        let keys = keys.to_vec();
        ctx.run(scope(Op::GetMany, None), async {
            let out = self
                .read(Op::GetMany, move |inner| inner.get_many(&keys))
                .await?;
            Ok(out
                .into_iter()
                .map(|r| r.map(|o| o.map(|e| e.with_staleness(stale))))
                .collect())
        })
        .await
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        batch.validate(&self.inner().config.limits)?;
        ctx.run(
            scope(Op::Apply, None),
            self.write(Op::Apply, move |txn| {
                // All or nothing: the first failed condition drops the
                // transaction unwritten.
                let mut out = Vec::with_capacity(batch.len());
                for op in &batch.ops {
                    out.push(Ok(match op {
                        BatchOp::Put {
                            key,
                            value,
                            options,
                        } => BatchOutcome::Put(txn.put(key, value, options)?),
                        BatchOp::Delete { key, options } => {
                            BatchOutcome::Deleted(txn.delete(key, options)?)
                        }
                    }));
                }
                Ok(out)
            }),
        )
        .await
    }

    /// In-process leases (RocksDB is single-process); fencing tokens
    /// persist across reopen (see the crate docs).
    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        self.inner().config.limits.check_key(key)?;
        let driver: Arc<dyn kvmap_core::lock::LockDriver> = self.handle.locks.clone();
        kvmap_core::lock::acquire(driver, ctx, key, options).await
    }
}
