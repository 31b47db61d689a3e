//! [`NearCache`]: a watch-invalidated, bounded read-through cache in front
//! of any store (a single backend or a [`FallbackChain`]), itself a
//! [`KvStore`].
//!
//! See the crate docs ("Near cache") for the guarantees, the bounds and
//! the metrics.

mod config;
mod state;
mod stats;
mod watcher;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::backend::Scope;
use kvmap_core::{
    Batch, BatchOp, BatchOutcome, CancellationToken, Capabilities, Consistency, Context,
    DeleteOptions, Entry, Error, ErrorKind, Key, KvStore, ListPage, ListRequest, Op, PutOptions,
    Result, Revision, WatchRequest, WatchStream,
};

use crate::breaker::BreakerState;
use crate::chain::FallbackChain;

pub use config::NearCacheConfig;
pub use stats::{
    LagSummary, NearCacheStats, CACHE_BYTES, CACHE_ENTRIES, CACHE_EVICTIONS, CACHE_HEALTHY,
    CACHE_HITS, CACHE_INVALIDATIONS, CACHE_MISSES, CACHE_RESYNCS, CACHE_STALE_SERVES,
    CACHE_WATCH_LAG,
};

use state::{Cached, HealthFn, Shared};
use stats::Counters;

/// The default name of a near cache (`served_by`, errors, metric label).
pub const NEAR_CACHE_NAME: &str = "near-cache";

/// A bounded read-through cache kept fresh by one watch over its scope;
/// itself a [`KvStore`].
///
/// - `get` / `get_many` with `Consistency::Default` are answered from the
///   cache while it has verified its watch and the store within
///   `max_lag`; otherwise they go to the store. `Strong` reads always go
///   to the store. `Stale { max }` reads are answered from the cache when
///   it verified within `max`, with [`Entry::staleness`] set.
/// - Writes go to the store and invalidate their key before they return
///   (read-your-writes through the same handle).
/// - When the store fails with `Unavailable`, `Timeout` or `CircuitOpen`,
///   a read is answered from the cache if it verified within
///   `max_staleness` (or the caller's `Stale` bound), marked with
///   `served_by` = the cache's label and the staleness; beyond, the error.
/// - `list`, `watch`, `lock` go to the store.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use kvmap_core::{Context, Key, KvStore, KvStoreExt, MemoryStore};
/// use kvmap_fallback::{NearCache, NearCacheConfig};
///
/// let store = Arc::new(MemoryStore::new());
/// let cache = NearCache::builder(store)
///     .config(NearCacheConfig::default().with_scope("config/"))
///     .build()
///     .await?;
/// let ctx = Context::new();
/// let key = Key::new("config/flags")?;
/// cache.set(&ctx, &key, "on").await?;
/// cache.get(&ctx, &key).await?;          // a miss, then cached
/// cache.get(&ctx, &key).await?;          // a hit once the cache is verified
/// println!("{:?}", cache.stats());
/// # Ok::<(), kvmap_core::Error>(())
/// # }).unwrap();
/// ```
pub struct NearCache {
    shared: Arc<Shared>,
    caps: Capabilities,
    cancel: CancellationToken,
}

/// Builds a [`NearCache`].
pub struct NearCacheBuilder {
    inner: Arc<dyn KvStore>,
    config: NearCacheConfig,
    health: Option<HealthFn>,
}

impl fmt::Debug for NearCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCacheBuilder")
            .field("inner", &self.inner.name())
            .field("config", &self.config)
            .field("health", &self.health.is_some())
            .finish()
    }
}

impl NearCacheBuilder {
    /// Sets the configuration.
    pub fn config(mut self, config: NearCacheConfig) -> Self {
        self.config = config;
        self
    }

    /// An extra condition for serving `Default` reads, checked by every
    /// probe (e.g. "the primary's breaker is closed").
    pub fn healthy_when(mut self, f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.health = Some(Arc::new(f));
        self
    }

    /// Validates the configuration, opens the watch and starts the probe.
    /// The cache serves `Default` reads from its first successful probe
    /// after the watch is registered (a few ms).
    ///
    /// # Errors
    /// The configuration's errors; `Unsupported` if the store cannot watch.
    pub async fn build(self) -> Result<NearCache> {
        self.config.validate()?;
        let caps = self.inner.capabilities();
        caps.require(kvmap_core::Capability::Watch).map_err(|e| {
            e.in_context(&self.config.label, Op::Open, None)
                .with_detail("a near cache needs a store that can watch")
        })?;
        let shared = Arc::new(Shared::new(self.inner, self.config, self.health));
        let cancel = CancellationToken::new();
        tokio::spawn(watcher::run_watch(shared.clone(), cancel.clone()));
        tokio::spawn(watcher::run_probe(shared.clone(), cancel.clone()));
        tokio::spawn(watcher::run_window(shared.clone(), cancel.clone()));
        Ok(NearCache {
            shared,
            caps,
            cancel,
        })
    }
}

impl fmt::Debug for NearCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("label", &self.shared.config.label)
            .field("inner", &self.shared.inner.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for NearCache {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Whether a store error lets a read fall back to the cache.
fn store_down(e: &Error) -> bool {
    e.is_infrastructure() || e.kind() == ErrorKind::CircuitOpen
}

impl NearCache {
    /// A builder over `inner`.
    pub fn builder(inner: Arc<dyn KvStore>) -> NearCacheBuilder {
        NearCacheBuilder {
            inner,
            config: NearCacheConfig::default(),
            health: None,
        }
    }

    /// A builder over a fallback chain: the cache serves `Default` reads
    /// only while the chain's primary breaker is closed and the primary is
    /// not bypassed, so data served by a fallback is never passed off as
    /// fresh.
    pub fn over_chain(chain: Arc<FallbackChain>) -> NearCacheBuilder {
        let primary = chain.breakers().into_iter().next();
        let c = chain.clone();
        NearCache::builder(chain).healthy_when(move || {
            c.primary_active()
                && primary
                    .as_ref()
                    .is_none_or(|b| b.state() == BreakerState::Closed)
        })
    }

    /// Counters and state now.
    pub fn stats(&self) -> NearCacheStats {
        let s = &self.shared;
        s.stats.snapshot(s.healthy(), s.staleness())
    }

    /// The configuration.
    pub fn config(&self) -> &NearCacheConfig {
        &self.shared.config
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &Arc<dyn KvStore> {
        &self.shared.inner
    }

    /// Whether the cache serves `Default` reads now.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy()
    }

    /// Applies pending evictions now (moka applies them in batches; the
    /// cache also does so whenever an insert takes it over a bound).
    pub async fn run_pending_tasks(&self) {
        self.shared.cache.run_pending_tasks().await;
    }

    fn scope<'a>(&'a self, op: Op, key: Option<&'a str>) -> Scope<'a> {
        let mut s = Scope::new(&self.shared.config.label, op);
        s.key = key;
        s
    }

    fn hit(&self, c: &Cached, staleness: Option<std::time::Duration>) -> Option<Entry> {
        c.entry.as_ref().map(|e| {
            e.clone()
                .with_served_by(self.shared.config.label.clone())
                .with_staleness(staleness)
        })
    }

    /// The cached answer for `key` if the read may take it, without I/O.
    /// `None`: go to the store.
    async fn cached_answer(&self, ctx: &Context, key: &Key) -> Option<Option<Entry>> {
        let s = &self.shared;
        match ctx.consistency() {
            Consistency::Strong => None,
            Consistency::Default => {
                if !s.healthy() {
                    return None;
                }
                let c = s.lookup(key).await?;
                Counters::add(&s.stats.hits);
                Some(self.hit(&c, None))
            }
            Consistency::Stale { max_staleness } => {
                let staleness = s.staleness()?;
                if staleness > max_staleness {
                    return None;
                }
                let c = s.lookup(key).await?;
                if s.healthy() {
                    Counters::add(&s.stats.hits);
                } else {
                    Counters::add(&s.stats.stale_serves);
                }
                Some(self.hit(&c, Some(staleness)))
            }
        }
    }

    /// The last resort: the store failed; serve the cached entry if the
    /// cache verified within the bound. "Absent" is never served this way:
    /// it could not carry a staleness mark.
    async fn last_resort(&self, ctx: &Context, key: &Key, err: Error) -> Result<Option<Entry>> {
        let s = &self.shared;
        let bound = match ctx.consistency() {
            Consistency::Strong => return Err(err),
            Consistency::Default => s.config.max_staleness,
            Consistency::Stale { max_staleness } => max_staleness,
        };
        let Some(staleness) = s.staleness() else {
            return Err(err);
        };
        if bound.is_zero() || staleness > bound || !s.in_scope(key) {
            return Err(err);
        }
        match s.lookup(key).await {
            Some(c) if c.entry.is_some() => {
                Counters::add(&s.stats.stale_serves);
                tracing::debug!(cache = %s.config.label, key = key.as_str(), ?staleness, error = %err.report(), "store unavailable; served from the near cache, marked stale");
                Ok(self.hit(&c, Some(staleness)))
            }
            _ => Err(err),
        }
    }

    async fn read_through(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        let s = &self.shared;
        if ctx.consistency() != Consistency::Strong {
            Counters::add(&s.stats.misses);
        }
        let ticket = s.ticket(key);
        match s.inner.get(ctx, key).await {
            Ok(e) => {
                if ctx.consistency() != Consistency::Strong {
                    s.install(key, ticket, e.as_ref()).await;
                }
                Ok(e)
            }
            Err(e) if store_down(&e) => self.last_resort(ctx, key, e).await,
            Err(e) => Err(e),
        }
    }

    async fn note_written(&self, key: &Key, revision: Option<Revision>) {
        if let Some(r) = revision {
            self.shared.await_event(key, r);
        }
        self.shared.invalidate(key).await;
    }
}

#[async_trait]
impl KvStore for NearCache {
    fn name(&self) -> &str {
        &self.shared.config.label
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        let scope = self.scope(Op::Get, Some(key.as_str()));
        ctx.check(&scope)?;
        self.caps
            .limits
            .check_key(key)
            .map_err(|e| e.in_context(scope.backend, Op::Get, Some(key.as_str())))?;
        let s = &self.shared;
        if !s.in_scope(key) {
            return s.inner.get(ctx, key).await;
        }
        if let Some(answer) = self.cached_answer(ctx, key).await {
            return Ok(answer);
        }
        // Boxed, so the future of a hit stays small (a miss awaits the
        // network anyway).
        Box::pin(self.read_through(ctx, key)).await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        let scope = self.scope(Op::GetMany, None);
        ctx.check(&scope)?;
        self.caps
            .limits
            .check_keys(keys)
            .map_err(|e| e.in_context(scope.backend, Op::GetMany, None))?;
        let s = &self.shared;
        let mut out: Vec<Option<Result<Option<Entry>>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let cached = if s.in_scope(key) {
                self.cached_answer(ctx, key).await
            } else {
                None
            };
            match cached {
                Some(answer) => out.push(Some(Ok(answer))),
                None => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if !missing.is_empty() {
            let wanted: Vec<Key> = missing.iter().map(|&i| keys[i].clone()).collect();
            let tickets: Vec<_> = wanted.iter().map(|k| s.ticket(k)).collect();
            for k in &wanted {
                if s.in_scope(k) && ctx.consistency() != Consistency::Strong {
                    Counters::add(&s.stats.misses);
                }
            }
            let results = match s.inner.get_many(ctx, &wanted).await {
                Ok(r) if r.len() == wanted.len() => r,
                Ok(r) => {
                    return Err(scope.error(ErrorKind::Internal).with_detail(format!(
                        "store answered {} results for {} keys",
                        r.len(),
                        wanted.len()
                    )))
                }
                Err(e) if store_down(&e) => wanted.iter().map(|_| Err(e.clone())).collect(),
                Err(e) => return Err(e),
            };
            for (((i, key), ticket), r) in missing.iter().zip(&wanted).zip(tickets).zip(results) {
                let r = match r {
                    Ok(e) => {
                        if ctx.consistency() != Consistency::Strong {
                            s.install(key, ticket, e.as_ref()).await;
                        }
                        Ok(e)
                    }
                    Err(e) if store_down(&e) => self.last_resort(ctx, key, e).await,
                    Err(e) => Err(e),
                };
                out[*i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::new(ErrorKind::Internal).with_detail("lost result")))
            })
            .collect())
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        ctx.check(&self.scope(Op::Put, Some(key.as_str())))?;
        let r = self.shared.inner.put(ctx, key, value, options).await;
        self.note_written(key, r.as_ref().ok().copied()).await;
        r
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        ctx.check(&self.scope(Op::Delete, Some(key.as_str())))?;
        let r = self.shared.inner.delete(ctx, key, options).await;
        let existed = matches!(r, Ok(true));
        self.note_written(key, existed.then_some(0)).await;
        r
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        ctx.check(&self.scope(Op::List, None))?;
        self.shared.inner.list(ctx, request).await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        ctx.check(&self.scope(Op::Watch, Some(request.target.describe())))?;
        self.shared.inner.watch(ctx, request).await
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        ctx.check(&self.scope(Op::Apply, None))?;
        let keys: Vec<Key> = batch.ops.iter().map(|op| op.key().clone()).collect();
        let kinds: Vec<bool> = batch
            .ops
            .iter()
            .map(|op| matches!(op, BatchOp::Delete { .. }))
            .collect();
        let r = self.shared.inner.apply(ctx, batch).await;
        for (i, key) in keys.iter().enumerate() {
            let revision = match r.as_ref().ok().and_then(|o| o.get(i)) {
                Some(Ok(BatchOutcome::Put(rev))) => Some(*rev),
                Some(Ok(BatchOutcome::Deleted(true))) if kinds[i] => Some(0),
                _ => None,
            };
            self.note_written(key, revision).await;
        }
        r
    }

    async fn lock(
        &self,
        ctx: &Context,
        key: &Key,
        options: kvmap_core::LockOptions,
    ) -> Result<kvmap_core::LockGuard> {
        ctx.check(&self.scope(Op::Lock, Some(key.as_str())))?;
        self.shared.inner.lock(ctx, key, options).await
    }
}
