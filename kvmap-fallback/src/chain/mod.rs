//! [`FallbackChain`]: an ordered list of stores behind breakers, itself a
//! store.

mod known;
mod replay;
mod watch;
mod write;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::backend::Scope;
use kvmap_core::{
    Batch, BatchOutcome, Capabilities, Consistency, Context, DeleteOptions, Entry, Error,
    ErrorKind, Key, KvStore, Limits, ListPage, ListRequest, LockGuard, LockOptions, Op, PutOptions,
    Result, Revision, Support, WatchRequest, WatchStream,
};
use tokio::sync::{broadcast, watch as tokio_watch};
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerSnapshot};
use crate::config::{ChainConfig, ReplayMode, WritePolicy};
use crate::metrics;
use crate::outbox::Outbox;

pub use replay::{ConflictReport, ReplayReport};

use known::KnownTable;

/// The name of a chain in errors and as [`KvStore::name`].
pub const CHAIN_NAME: &str = "fallback";

/// One backend of a chain.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) label: Arc<str>,
    pub(crate) breaker: Arc<Breaker>,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// What one backend of a chain has done, for dashboards.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendStats {
    /// The backend's label.
    pub label: Arc<str>,
    /// Its breaker.
    pub breaker: BreakerSnapshot,
    /// Reads it answered for the chain.
    pub reads_served: u64,
    /// Writes it took for the chain.
    pub writes_served: u64,
}

/// An ordered list of stores, the first the primary, each behind its own
/// [`Breaker`]; itself a [`KvStore`].
///
/// - **Reads** go to the first backend whose breaker admits; on an
///   infrastructure error or an open breaker the next is tried, within
///   the same context deadline. The entry names the backend that served
///   it ([`Entry::served_by`]); one served by a fallback carries a
///   staleness bound ([`Entry::staleness`]): the time since the primary
///   last answered. `Consistency::Strong` reads never fall back;
///   `Stale { max }` reads fall back only within `max`.
/// - **Writes** follow the [`WritePolicy`].
/// - **Watch** follows the serving backend and emits `Resync` with the
///   full state of the new one when it switches.
///
/// See the crate docs for the guarantees and an example.
pub struct FallbackChain {
    inner: Arc<Inner>,
    replay_task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) struct Inner {
    pub(crate) backends: Vec<Backend>,
    pub(crate) policy: Policy,
    pub(crate) mirror: bool,
    pub(crate) outbox: Option<Outbox>,
    pub(crate) replay_timeout: Duration,
    /// False while the outbox holds writes: the primary then serves
    /// neither reads nor writes, so that the application reads its own
    /// writes and the replay keeps their order.
    pub(crate) primary_active: AtomicBool,
    pub(crate) active_tx: tokio_watch::Sender<bool>,
    /// Serialises writes made while the primary is unavailable, and the
    /// replay's final "drained" decision.
    pub(crate) outage: tokio::sync::Mutex<()>,
    /// Serialises replays.
    pub(crate) replaying: tokio::sync::Mutex<()>,
    pub(crate) known: KnownTable,
    /// When the primary last answered, relative to `epoch`, in µs
    /// (0: never).
    primary_ok_us: AtomicU64,
    epoch: Instant,
    pub(crate) conflicts_tx: broadcast::Sender<ConflictReport>,
    pub(crate) recent_conflicts: Mutex<Vec<ConflictReport>>,
    caps: Capabilities,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Reject,
    WriteThrough,
    Outbox,
}

/// Builds a [`FallbackChain`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use kvmap_core::{Context, Key, KvStore, KvStoreExt, MemoryStore};
/// use kvmap_fallback::{ChainConfig, FallbackChain, WritePolicy};
///
/// let chain = FallbackChain::builder()
///     .backend("primary", Arc::new(MemoryStore::new()))
///     .backend("local", Arc::new(MemoryStore::new()))
///     .config(ChainConfig::default().with_write_policy(WritePolicy::WriteThrough))
///     .build()
///     .await?;
/// let ctx = Context::new();
/// let key = Key::new("a")?;
/// chain.set(&ctx, &key, "1").await?;
/// let e = chain.get(&ctx, &key).await?.unwrap();
/// assert_eq!(e.served_by.as_deref(), Some("primary"));
/// # Ok::<(), kvmap_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Default)]
pub struct ChainBuilder {
    backends: Vec<(Arc<str>, Arc<dyn KvStore>)>,
    config: ChainConfig,
}

impl fmt::Debug for ChainBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainBuilder")
            .field(
                "backends",
                &self.backends.iter().map(|(l, _)| l).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

impl ChainBuilder {
    /// Adds a backend; the first added is the primary.
    pub fn backend(mut self, label: &str, store: Arc<dyn KvStore>) -> Self {
        self.backends.push((Arc::from(label), store));
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: ChainConfig) -> Self {
        self.config = config;
        self
    }

    /// Opens the outbox (if the policy has one), recovers the writes it
    /// holds and starts the replay task (automatic replay).
    ///
    /// # Errors
    /// `InvalidArgument` without backends, with duplicate labels, or with
    /// an outbox policy and a single backend; the outbox database's open
    /// errors.
    pub async fn build(self) -> Result<FallbackChain> {
        let invalid = |why: &str| {
            Error::new(ErrorKind::InvalidArgument)
                .with_backend(CHAIN_NAME)
                .with_op(Op::Open)
                .with_detail(why.to_owned())
        };
        if self.backends.is_empty() {
            return Err(invalid("a chain needs at least one backend"));
        }
        for (i, (l, _)) in self.backends.iter().enumerate() {
            if self.backends[..i].iter().any(|(m, _)| m == l) {
                return Err(invalid(&format!("backend label {l:?} is used twice")));
            }
        }
        let config = self.config;
        let (policy, outbox, replay, replay_timeout) = match &config.write_policy {
            WritePolicy::Reject => (Policy::Reject, None, None, Duration::from_secs(5)),
            WritePolicy::WriteThrough => (Policy::WriteThrough, None, None, Duration::from_secs(5)),
            WritePolicy::Outbox(o) => {
                if self.backends.len() < 2 {
                    return Err(invalid("the outbox policy needs a fallback backend"));
                }
                let (outbox, known) = Outbox::open(o.rocksdb.clone()).await?;
                (
                    Policy::Outbox,
                    Some((outbox, known)),
                    Some(o.replay),
                    o.replay_timeout,
                )
            }
        };
        let backends: Vec<Backend> = self
            .backends
            .into_iter()
            .map(|(label, store)| Backend {
                breaker: Arc::new(Breaker::labelled(store, config.breaker, &label)),
                label,
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            })
            .collect();
        let caps = combined_capabilities(&backends);
        // Primary revisions only matter to condition outbox replays.
        let known = KnownTable::new(if policy == Policy::Outbox {
            config.known_capacity
        } else {
            0
        });
        let outbox = match outbox {
            Some((outbox, recovered)) => {
                for (k, v) in recovered {
                    known.restore(k, v);
                }
                Some(outbox)
            }
            None => None,
        };
        let depth = outbox.as_ref().map_or(0, Outbox::depth);
        metrics_depth(depth);
        if depth > 0 {
            tracing::info!(
                depth,
                "outbox holds writes from an earlier run; they will be replayed"
            );
        }
        let (active_tx, _) = tokio_watch::channel(depth == 0);
        let (conflicts_tx, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            backends,
            policy,
            mirror: config.mirror || policy == Policy::WriteThrough,
            outbox,
            replay_timeout,
            primary_active: AtomicBool::new(depth == 0),
            active_tx,
            outage: tokio::sync::Mutex::new(()),
            replaying: tokio::sync::Mutex::new(()),
            known,
            primary_ok_us: AtomicU64::new(0),
            epoch: Instant::now(),
            conflicts_tx,
            recent_conflicts: Mutex::new(Vec::new()),
            caps,
        });
        let replay_task = match replay {
            Some(ReplayMode::Auto { interval }) => {
                Some(tokio::spawn(replay::auto(Arc::downgrade(&inner), interval)))
            }
            _ => None,
        };
        Ok(FallbackChain { inner, replay_task })
    }
}

pub(crate) fn metrics_depth(depth: usize) {
    ::metrics::gauge!(metrics::OUTBOX_DEPTH).set(depth as f64);
}

fn min_support(a: Support, b: Support) -> Support {
    let rank = |s: Support| match s {
        Support::Native => 2,
        Support::Emulated => 1,
        Support::Unsupported => 0,
    };
    if rank(a) <= rank(b) {
        a
    } else {
        b
    }
}

fn combined_capabilities(backends: &[Backend]) -> Capabilities {
    let mut caps = Capabilities::all_native();
    let mut limits = Limits {
        max_key_bytes: usize::MAX,
        max_value_bytes: usize::MAX,
        max_batch_ops: usize::MAX,
    };
    for b in backends {
        let c = b.breaker.capabilities();
        for (cap, support) in c.table() {
            caps = caps.with(cap, min_support(caps.get(cap), support));
        }
        limits.max_key_bytes = limits.max_key_bytes.min(c.limits.max_key_bytes);
        limits.max_value_bytes = limits.max_value_bytes.min(c.limits.max_value_bytes);
        limits.max_batch_ops = limits.max_batch_ops.min(c.limits.max_batch_ops);
    }
    // Locks live on the primary only: a lease taken on a fallback would
    // not exclude a holder on the primary, so they are never failed over.
    let primary_lock = backends
        .first()
        .map_or(Support::Unsupported, |b| b.breaker.capabilities().lock);
    caps = caps.with(kvmap_core::Capability::Lock, primary_lock);
    // The outbox keeps replay bookkeeping under `k/{key}`.
    limits.max_key_bytes = limits.max_key_bytes.min(Key::MAX_BYTES - 2);
    caps.with_limits(limits)
}

impl fmt::Debug for FallbackChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackChain")
            .field(
                "backends",
                &self
                    .inner
                    .backends
                    .iter()
                    .map(|b| (&b.label, b.breaker.state()))
                    .collect::<Vec<_>>(),
            )
            .field("policy", &self.inner.policy)
            .field("outbox_depth", &self.outbox_depth())
            .finish()
    }
}

impl Drop for FallbackChain {
    fn drop(&mut self) {
        if let Some(t) = self.replay_task.take() {
            t.abort();
        }
    }
}

impl FallbackChain {
    /// A builder.
    pub fn builder() -> ChainBuilder {
        ChainBuilder::default()
    }

    /// The breakers of the backends, primary first.
    pub fn breakers(&self) -> Vec<Arc<Breaker>> {
        self.inner
            .backends
            .iter()
            .map(|b| b.breaker.clone())
            .collect()
    }

    /// Per-backend state and counters, primary first.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.inner
            .backends
            .iter()
            .map(|b| BackendStats {
                label: b.label.clone(),
                breaker: b.breaker.snapshot(),
                reads_served: b.reads.load(Ordering::Relaxed),
                writes_served: b.writes.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Writes journaled in the outbox and not replayed yet (0 without an
    /// outbox).
    pub fn outbox_depth(&self) -> usize {
        self.inner.outbox.as_ref().map_or(0, Outbox::depth)
    }

    /// Whether the primary serves reads and writes (false while the
    /// outbox holds writes).
    pub fn primary_active(&self) -> bool {
        self.inner.primary_active.load(Ordering::SeqCst)
    }

    /// Replays the outbox to the primary now, as far as it goes.
    ///
    /// # Errors
    /// Errors of the outbox database. A primary that is still
    /// unavailable is not an error: the report says where the replay
    /// stalled.
    pub async fn replay_now(&self) -> Result<ReplayReport> {
        replay::replay(&self.inner).await
    }

    /// Conflicts reported by replays from now on.
    pub fn subscribe_conflicts(&self) -> broadcast::Receiver<ConflictReport> {
        self.inner.conflicts_tx.subscribe()
    }

    /// The conflicts reported so far (the last 1000).
    pub fn conflicts(&self) -> Vec<ConflictReport> {
        self.inner
            .recent_conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Inner {
    pub(crate) fn scope<'a>(&self, op: Op, key: Option<&'a str>) -> Scope<'a> {
        let mut s = Scope::new(CHAIN_NAME, op);
        s.key = key;
        s
    }

    pub(crate) fn is_primary_active(&self) -> bool {
        self.policy != Policy::Outbox || self.primary_active.load(Ordering::SeqCst)
    }

    pub(crate) fn set_primary_active(&self, active: bool) {
        if self.primary_active.swap(active, Ordering::SeqCst) != active {
            tracing::info!(
                active,
                "primary {}",
                if active {
                    "serves again (outbox drained)"
                } else {
                    "bypassed: writes go to the outbox"
                }
            );
            self.active_tx.send_replace(active);
        }
    }

    pub(crate) fn primary_answered(&self) {
        let us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.primary_ok_us.store(us.max(1), Ordering::Relaxed);
    }

    /// How stale a fallback may be: the time since the primary last
    /// answered (since the chain started if it never did).
    pub(crate) fn staleness_bound(&self) -> Duration {
        let at = self.primary_ok_us.load(Ordering::Relaxed);
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_micros(at))
    }

    /// The backends a read may use, in order.
    fn read_candidates(&self, ctx: &Context) -> std::ops::Range<usize> {
        let first = usize::from(!self.is_primary_active());
        let last = match ctx.consistency() {
            Consistency::Strong => 1,
            _ => self.backends.len(),
        };
        first..last.max(first)
    }

    /// Runs a read on the first backend that answers.
    async fn read<T, F, Fut>(
        &self,
        ctx: &Context,
        op: Op,
        key: Option<&str>,
        call: F,
    ) -> Result<(usize, T)>
    where
        F: Fn(Arc<Breaker>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let scope = self.scope(op, key);
        ctx.check(&scope)?;
        let mut last_err = None;
        for i in self.read_candidates(ctx) {
            let b = &self.backends[i];
            if i > 0 {
                if let Consistency::Stale { max_staleness } = ctx.consistency() {
                    let s = self.staleness_bound();
                    if s > max_staleness {
                        last_err = Some(scope.error(ErrorKind::StaleTooOld {
                            staleness: s,
                            max: max_staleness,
                        }));
                        continue;
                    }
                }
            }
            match call(b.breaker.clone()).await {
                Ok(v) => {
                    if i == 0 {
                        self.primary_answered();
                    } else {
                        metrics::record_fallback_served(&b.label, op);
                    }
                    b.reads.fetch_add(1, Ordering::Relaxed);
                    return Ok((i, v));
                }
                Err(e) if falls_through(&e) => {
                    tracing::debug!(backend = %b.label, op = op.as_str(), error = %e.report(), "read falls through to the next backend");
                    last_err = Some(e);
                }
                Err(e) => {
                    if i == 0 {
                        self.primary_answered();
                    }
                    return Err(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            scope.error(ErrorKind::Unavailable).with_detail(
                "no backend may serve this read (the primary is bypassed while the outbox drains)",
            )
        }))
    }

    pub(crate) fn annotate(&self, i: usize, mut e: Entry, ctx: &Context) -> Entry {
        e.served_by = Some(self.backends[i].label.clone());
        if i > 0 {
            e.staleness = Some(self.staleness_bound());
        } else if e.staleness.is_none() {
            e.staleness = ctx.fresh_read_staleness();
        }
        e
    }
}

/// Whether an error of one backend sends the call to the next.
pub(crate) fn falls_through(e: &Error) -> bool {
    e.is_infrastructure() || e.kind() == ErrorKind::CircuitOpen
}

#[async_trait]
impl KvStore for FallbackChain {
    fn name(&self) -> &str {
        CHAIN_NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        let inner = &self.inner;
        inner
            .caps
            .limits
            .check_key(key)
            .map_err(|e| e.in_context(CHAIN_NAME, Op::Get, Some(key.as_str())))?;
        let (i, e) = inner
            .read(ctx, Op::Get, Some(key.as_str()), |b| async move {
                b.get(ctx, key).await
            })
            .await?;
        if i == 0 {
            inner.known.observe(key, e.as_ref().map(|e| e.revision));
        }
        Ok(e.map(|e| inner.annotate(i, e, ctx)))
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        self.inner.put(ctx, key, value, options).await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.inner.delete(ctx, key, options).await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        let inner = &self.inner;
        request
            .validate()
            .map_err(|e| e.in_context(CHAIN_NAME, Op::List, None))?;
        let (i, mut page) = inner
            .read(ctx, Op::List, None, |b| async move {
                b.list(ctx, request).await
            })
            .await?;
        page.entries = page
            .entries
            .into_iter()
            .map(|e| inner.annotate(i, e, ctx))
            .collect();
        Ok(page)
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        watch::open(self.inner.clone(), ctx, request).await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        let inner = &self.inner;
        inner
            .caps
            .limits
            .check_keys(keys)
            .map_err(|e| e.in_context(CHAIN_NAME, Op::GetMany, None))?;
        let (i, results) = inner
            .read(ctx, Op::GetMany, None, |b| async move {
                let r = b.get_many(ctx, keys).await?;
                if !r.is_empty() && r.iter().all(|x| x.as_ref().is_err_and(falls_through)) {
                    // Every key failed on this backend: try the next one.
                    if let Some(Err(e)) = r.into_iter().next() {
                        return Err(e);
                    }
                    return Err(Error::new(ErrorKind::Unavailable));
                }
                Ok(r)
            })
            .await?;
        Ok(results
            .into_iter()
            .zip(keys)
            .map(|(r, k)| {
                r.map(|e| {
                    if i == 0 {
                        inner.known.observe(k, e.as_ref().map(|e| e.revision));
                    }
                    e.map(|e| inner.annotate(i, e, ctx))
                })
            })
            .collect())
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        self.inner.apply(ctx, batch).await
    }

    /// Locks are taken on the primary only (through its breaker), never on
    /// a fallback: while the primary is down, `lock` fails with its error
    /// or `CircuitOpen`.
    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        let scope = self.inner.scope(Op::Lock, Some(key.as_str()));
        ctx.check(&scope)?;
        match self.inner.backends.first() {
            Some(b) => b.breaker.lock(ctx, key, options).await,
            None => Err(scope.error(ErrorKind::Unsupported {
                capability: kvmap_core::Capability::Lock,
            })),
        }
    }
}
