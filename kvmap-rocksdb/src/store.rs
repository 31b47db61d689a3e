//! [`RocksStore`], the [`KvStore`] over an embedded RocksDB.

use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::backend::{ChangeSource, Scope};
use kvmap_core::lock::LocalLocks;
use kvmap_core::{
    Batch, BatchOp, BatchOutcome, Capabilities, Context, DeleteOptions, Entry, Error, ErrorKind,
    Key, KvStore, ListPage, ListRequest, Op, PutOptions, Result, RetryClass, Revision,
    WatchRequest, WatchStream,
};
use kvmap_core::{LockGuard, LockOptions};
use rocksdb::ReadOptions;

use crate::config::RocksConfig;
use crate::db::Inner;
use crate::error::NAME;
use crate::reaper::{self, Control};
use crate::txn::Txn;
use crate::watch::{offload, Source};
use crate::writer::{stopped, Writer};

/// A [`KvStore`] over an embedded RocksDB database: one global revision,
/// compare-and-swap, TTL with expiry events, ordered list, watch with
/// resume from a persisted change log, atomic batches.
///
/// Cheap to clone; clones share the database. Writes run on the store's
/// writer thread with group commit (see the crate docs); reads run inline
/// or, with [`RocksConfig::offload_reads`], on Tokio's blocking pool, and
/// `list` always runs there.
///
/// The database is closed when the last clone and the last watch stream
/// are dropped: the writer and reaper threads are stopped and joined on a
/// blocking thread, never on the async worker that dropped the store. A
/// [`RocksStore::open`] of the same path in this process waits for that
/// close to finish.
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
    /// `None` only inside `drop`.
    writer: Option<Writer>,
    threads: Vec<JoinHandle<()>>,
    locks: Arc<LocalLocks>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.registration.closing();
        self.control.stop();
        // The writer thread ends once its queue is empty.
        drop(self.writer.take());
        let joiner = Joiner(std::mem::take(&mut self.threads));
        match tokio::runtime::Handle::try_current() {
            // Never block an async worker: a reaper pass or a group commit
            // may be running. A runtime that is shutting down drops the
            // task unrun, and with it the joiner, which then joins here.
            Ok(rt) => drop(rt.spawn_blocking(move || drop(joiner))),
            Err(_) => drop(joiner),
        }
    }
}

/// Joins the store's threads when dropped, wherever that happens: on the
/// blocking pool, or on the thread of a runtime's shutdown that drops the
/// join task unrun. So no RocksDB thread outlives the runtime: a process
/// that exits while one still runs aborts in RocksDB's mutexes ("pthread
/// lock: Invalid argument"), as the demo did when it returned from `main`
/// with a store still held by a task.
struct Joiner(Vec<std::thread::JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        for t in self.0.drain(..) {
            // Neither thread panics by design; if one did, there is
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
        let (writer, writer_thread) = Writer::spawn(inner.clone(), control.clone())?;
        let reaper_thread = match reaper::spawn(inner.clone(), control.clone()) {
            Ok(t) => t,
            Err(e) => {
                drop(writer);
                let _ = writer_thread.join();
                return Err(e);
            }
        };
        Ok(Self {
            handle: Arc::new(Handle {
                locks: crate::lock::locks(inner.clone()),
                inner,
                control,
                writer: Some(writer),
                threads: vec![writer_thread, reaper_thread],
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

    /// Counters of the writer thread since open, for diagnostics: how well
    /// group commit shares `fsync`s.
    pub fn write_stats(&self) -> WriteStats {
        let inner = self.inner();
        WriteStats {
            commits: inner.commits.load(std::sync::atomic::Ordering::Relaxed),
            writes: inner
                .grouped_writes
                .load(std::sync::atomic::Ordering::Relaxed),
        }
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

    /// Runs a write on the writer thread (see [`crate::writer`]) under the
    /// context: a write its caller gave up on before the thread took it is
    /// never written, and its error says so ([`RetryClass::Safe`]).
    ///
    /// Fast path: an unsynced write of at most [`INLINE_OPS`] operations
    /// commits inline when the writer lock is free at that moment (a
    /// memtable insert and a WAL `write`, a few microseconds, less than
    /// the two thread hand-offs of the writer thread); it never waits for
    /// the lock.
    async fn write<T, F>(
        &self,
        ctx: &Context,
        op: Op,
        key: Option<&str>,
        ops: usize,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        let scope = scope(op, key);
        ctx.check(&scope)?;
        let inner = self.inner();
        if !inner.config.sync && ops <= INLINE_OPS {
            if let Some(mut txn) = Txn::try_begin(inner, op) {
                return ctx.run_sync(scope, move || {
                    let out = f(&mut txn)?;
                    if let Some(expires) = txn.commit()? {
                        self.handle.control.expiry_written(expires);
                    }
                    Ok(out)
                });
            }
        }
        let writer = self.handle.writer.as_ref().ok_or_else(|| stopped(op))?;
        let deadline = ctx.deadline().map(tokio::time::Instant::into_std);
        let (ticket, reply) = writer.submit(op, deadline, f)?;
        let answer = async {
            match reply.await {
                Ok(r) => r,
                Err(_) => Err(Error::new(ErrorKind::Unavailable)
                    .with_detail("the store's writer thread stopped before answering")
                    .with_retry(RetryClass::OutcomeUnknown)),
            }
        };
        match ctx.run(scope, answer).await {
            // The context ended after the write was queued (`run` may also
            // find it ended before its first poll): withdrawn if still
            // queued, else it may commit.
            Err(e)
                if matches!(e.kind(), ErrorKind::DeadlineExceeded | ErrorKind::Cancelled)
                    && e.retry_class() != RetryClass::Safe =>
            {
                if ticket.abandon() {
                    Err(e
                        .with_detail("before the write was started; nothing was written")
                        .with_retry(RetryClass::Safe))
                } else {
                    Err(e
                        .with_detail("while the write was being committed; it may have happened")
                        .with_retry(RetryClass::OutcomeUnknown))
                }
            }
            other => other,
        }
    }
}

/// The most operations of an unsynced write that may commit inline.
const INLINE_OPS: usize = 16;

/// Counters of a store's writer thread ([`RocksStore::write_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriteStats {
    /// RocksDB write batches the writer thread committed (with
    /// `sync = true`, one WAL `fsync` each).
    pub commits: u64,
    /// Puts, deletes and batches those commits carried (a batch counts
    /// once); `writes / commits` is the mean group size.
    pub writes: u64,
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
        self.write(ctx, Op::Put, Some(key.as_str()), 1, move |txn| {
            txn.put(&k, &value, &options)
        })
        .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.inner().config.limits.check_key(key)?;
        let k = key.clone();
        self.write(ctx, Op::Delete, Some(key.as_str()), 1, move |txn| {
            txn.delete(&k, &options)
        })
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        request.validate()?;
        let req = request.clone();
        // Always on the blocking pool: a page can be large.
        ctx.run(scope(Op::List, Some(request.range.start())), async {
            offload(self.inner(), Op::List, move |inner| {
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
        let ops = batch.len();
        self.write(ctx, Op::Apply, None, ops, move |txn| {
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
        })
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
