//! The cache proper: a `moka` cache, change counters that keep read-through
//! fills from installing values a concurrent change made stale, and the
//! freshness clock.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use kvmap_core::{Entry, Key, KvStore, Revision, WatchEvent};
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op as CacheOp};
use tokio::sync::Notify;

use super::config::NearCacheConfig;
use super::stats::Counters;

/// Change counters: a fill is installed only if no change of a key in its
/// slot was seen between its start and its install.
const SLOTS: usize = 4096;
/// The per-entry overhead counted in bytes.
pub(crate) const ENTRY_OVERHEAD: u64 = 64;
/// Own writes whose watch event is awaited, at most.
const PENDING_MAX: usize = 1024;

/// What the cache holds for a key: its entry (annotations stripped) or
/// `None` for a key known absent.
#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) entry: Option<Entry>,
    pub(crate) bytes: u64,
}

impl Cached {
    fn new(key: &Key, entry: Option<Entry>) -> Self {
        let bytes =
            key.len() as u64 + entry.as_ref().map_or(0, |e| e.value.len() as u64) + ENTRY_OVERHEAD;
        Self { entry, bytes }
    }

    fn revision(&self) -> Option<Revision> {
        self.entry.as_ref().map(|e| e.revision)
    }

    pub(crate) fn expired(&self, now: SystemTime) -> bool {
        self.entry
            .as_ref()
            .and_then(|e| e.expires_at)
            .is_some_and(|at| at <= now)
    }
}

/// The change counters seen when a read-through started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    slot: usize,
    seq: u64,
    healthy: bool,
}

#[derive(Debug, Default)]
struct Pending {
    /// Key → (revision written, 0 for a delete; acknowledged at, µs).
    writes: HashMap<Key, (Revision, u64)>,
    order: VecDeque<(Key, u64)>,
}

pub(crate) type HealthFn = Arc<dyn Fn() -> bool + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) inner: Arc<dyn KvStore>,
    pub(crate) config: NearCacheConfig,
    pub(crate) cache: moka::future::Cache<Key, Arc<Cached>>,
    slots: Box<[AtomicU64]>,
    generation: AtomicU64,
    epoch: Instant,
    /// `Default` reads may be served from the cache while now (µs since
    /// `epoch`) is below this.
    serve_until_us: AtomicU64,
    /// `now < serve_until_us`, kept by the window task (a clock read per
    /// hit would cost as much as the rest of the hit).
    serving: AtomicBool,
    /// Wakes the window task when the window changes.
    pub(crate) window_changed: Notify,
    /// When the last successful verification started (µs; 0: never).
    verified_us: AtomicU64,
    pub(crate) watch_ok: AtomicBool,
    registered_us: AtomicU64,
    pending: Mutex<Pending>,
    pub(crate) health: Option<HealthFn>,
    pub(crate) stats: Arc<Counters>,
    /// Asks the watch task to drop its stream and register anew.
    pub(crate) resubscribe: Notify,
    /// Asks the probe task to probe now.
    pub(crate) probe_now: Notify,
    max_lag_us: u64,
}

impl Shared {
    pub(crate) fn new(
        inner: Arc<dyn KvStore>,
        config: NearCacheConfig,
        health: Option<HealthFn>,
    ) -> Self {
        let stats = Arc::new(Counters::default());
        let listener_stats = stats.clone();
        let min_weight = config.min_weight();
        let cache = moka::future::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(move |_k: &Key, v: &Arc<Cached>| {
                u32::try_from(v.bytes.max(min_weight)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_k, v: Arc<Cached>, cause| {
                listener_stats.entries.fetch_sub(1, Ordering::Relaxed);
                listener_stats.bytes.fetch_sub(
                    i64::try_from(v.bytes).unwrap_or(i64::MAX),
                    Ordering::Relaxed,
                );
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    Counters::add(&listener_stats.evictions);
                }
            })
            .build();
        let max_lag_us = u64::try_from(config.max_lag.as_micros()).unwrap_or(u64::MAX);
        Self {
            inner,
            cache,
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            epoch: Instant::now(),
            serve_until_us: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            window_changed: Notify::new(),
            verified_us: AtomicU64::new(0),
            watch_ok: AtomicBool::new(false),
            registered_us: AtomicU64::new(u64::MAX),
            pending: Mutex::new(Pending::default()),
            health,
            stats,
            resubscribe: Notify::new(),
            probe_now: Notify::new(),
            max_lag_us,
            config,
        }
    }

    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(crate) fn in_scope(&self, key: &Key) -> bool {
        key.as_str().starts_with(self.config.scope.as_str())
    }

    /// Whether `Default` reads may be served from the cache.
    pub(crate) fn healthy(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Closes the window once it has passed; returns how long until it
    /// does, `None` if it is closed.
    pub(crate) fn check_window(&self) -> Option<Duration> {
        let until = self.serve_until_us.load(Ordering::Acquire);
        let now = self.now_us();
        if now >= until {
            self.serving.store(false, Ordering::Release);
            // A probe may have extended it meanwhile.
            if self.serve_until_us.load(Ordering::Acquire) > now {
                self.serving.store(true, Ordering::Release);
                return Some(Duration::ZERO);
            }
            None
        } else {
            Some(Duration::from_micros(until - now))
        }
    }

    /// How long ago the cache last verified its watch and the store.
    pub(crate) fn staleness(&self) -> Option<Duration> {
        match self.verified_us.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_micros(self.now_us().saturating_sub(at))),
        }
    }

    fn slot(key: &Key) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % SLOTS as u64) as usize
    }

    /// Marks a change of `key` (before the cache entry is touched).
    fn bump(&self, key: &Key) {
        self.slots[Self::slot(key)].fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn ticket(&self, key: &Key) -> Ticket {
        let slot = Self::slot(key);
        Ticket {
            generation: self.generation.load(Ordering::SeqCst),
            slot,
            seq: self.slots[slot].load(Ordering::SeqCst),
            healthy: self.watch_ok.load(Ordering::SeqCst) && self.healthy(),
        }
    }

    fn ticket_valid(&self, t: &Ticket) -> bool {
        self.generation.load(Ordering::SeqCst) == t.generation
            && self.slots[t.slot].load(Ordering::SeqCst) == t.seq
    }

    /// A cached value of `key` that has not expired.
    pub(crate) async fn lookup(&self, key: &Key) -> Option<Arc<Cached>> {
        let c = self.cache.get(key).await?;
        if c.entry.as_ref().is_some_and(|e| e.expires_at.is_some()) && c.expired(SystemTime::now())
        {
            return None;
        }
        Some(c)
    }

    /// Installs what a read-through returned, unless a change of the key
    /// (or a resync) was seen since `ticket`, or the value is not
    /// cacheable. Never replaces a newer revision, never replaces an entry
    /// by "absent".
    pub(crate) async fn install(&self, key: &Key, ticket: Ticket, entry: Option<&Entry>) {
        if !ticket.healthy || !self.in_scope(key) {
            return;
        }
        let entry = match entry {
            // An entry another store served stale (a chain's fallback) is
            // not the cache's to vouch for.
            Some(e) if e.staleness.is_some_and(|s| !s.is_zero()) => return,
            Some(e) if e.expires_at.is_some_and(|at| at <= SystemTime::now()) => return,
            Some(e) => Some(
                Entry::new(
                    e.key.clone(),
                    e.value.clone(),
                    e.revision,
                    e.create_revision,
                )
                .with_expires_at(e.expires_at),
            ),
            None if !self.config.cache_absent => return,
            None => None,
        };
        let new = Arc::new(Cached::new(key, entry));
        if new.bytes > self.config.max_entry_bytes {
            return;
        }
        if !self.ticket_valid(&ticket) {
            Counters::add(&self.stats.fills_rejected);
            return;
        }
        let candidate = new.clone();
        let result = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|cur| {
                let op = match cur {
                    None => CacheOp::Put(candidate),
                    // An expired entry is never served; anything replaces it.
                    Some(c) if c.value().expired(SystemTime::now()) => CacheOp::Put(candidate),
                    Some(c) => match (c.value().revision(), candidate.revision()) {
                        (Some(old), Some(r)) if r > old => CacheOp::Put(candidate),
                        _ => CacheOp::Nop,
                    },
                };
                std::future::ready(op)
            })
            .await;
        if !matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ) {
            return;
        }
        self.count_in(&new);
        if !self.ticket_valid(&ticket) {
            // A change raced with the install: take back our value (a
            // newer one installed meanwhile stays).
            Counters::add(&self.stats.fills_rejected);
            self.remove_if(key, |c| Arc::ptr_eq(c, &new)).await;
        }
        self.enforce_bounds().await;
    }

    fn count_in(&self, c: &Cached) {
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(
            i64::try_from(c.bytes).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// moka applies evictions in its maintenance; run it as soon as an
    /// insert takes the cache over a bound, so the bounds hold at once.
    async fn enforce_bounds(&self) {
        let entries = self.stats.entries.load(Ordering::Relaxed);
        let bytes = self.stats.bytes.load(Ordering::Relaxed);
        if u64::try_from(entries).unwrap_or(0) > self.config.max_entries
            || u64::try_from(bytes).unwrap_or(0) > self.config.max_bytes
        {
            self.cache.run_pending_tasks().await;
        }
    }

    async fn remove_if(&self, key: &Key, f: impl FnOnce(&Arc<Cached>) -> bool) -> bool {
        let r = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|cur| {
                std::future::ready(match cur {
                    Some(c) if f(c.value()) => CacheOp::Remove,
                    _ => CacheOp::Nop,
                })
            })
            .await;
        matches!(r, CompResult::Removed(_))
    }

    /// A write through the cache (done or failed: its outcome may be
    /// unknown) invalidates its key before the call returns.
    pub(crate) async fn invalidate(&self, key: &Key) {
        if !self.in_scope(key) {
            return;
        }
        self.bump(key);
        if self.cache.remove(key).await.is_some() {
            Counters::add(&self.stats.invalidations);
        }
    }

    /// Notes a write through the cache, to measure the lag of its watch
    /// event and to notice a watch that fell silent.
    pub(crate) fn await_event(&self, key: &Key, revision: Revision) {
        if !self.in_scope(key) {
            return;
        }
        let now = self.now_us();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.writes.len() >= PENDING_MAX {
            if let Some((k, _)) = p.order.pop_front() {
                p.writes.remove(&k);
            }
        }
        p.writes.insert(key.clone(), (revision, now));
        p.order.push_back((key.clone(), now));
    }

    /// Notes the event of a key; returns whether it is the event of the
    /// last write made through the cache (whose own invalidation already
    /// covers every read-through that could have read an older value).
    fn event_arrived(&self, key: &Key, revision: Revision, is_delete: bool) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(want, at)) = p.writes.get(key) else {
            return false;
        };
        let (matched, exact) = if want == 0 {
            (is_delete, is_delete)
        } else {
            (revision >= want, revision == want && !is_delete)
        };
        if matched {
            p.writes.remove(key);
            drop(p);
            let lag = Duration::from_micros(self.now_us().saturating_sub(at));
            self.stats.record_lag(&self.config.label, lag);
        }
        exact
    }

    /// The acknowledgement time of the oldest own write still awaiting its
    /// event.
    pub(crate) fn oldest_pending(&self) -> Option<u64> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Drop order records of writes answered (or overwritten) since.
        while let Some((k, at)) = p.order.front().cloned() {
            match p.writes.get(&k) {
                Some(&(_, a)) if a == at => return Some(at),
                _ => {
                    p.order.pop_front();
                }
            }
        }
        None
    }

    fn clear_pending(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.writes.clear();
        p.order.clear();
    }

    /// Forgets everything: no fill started before this is installed.
    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        self.clear_pending();
    }

    /// The watch failed or was dropped: stop serving `Default` reads.
    pub(crate) fn mark_broken(&self) {
        self.watch_ok.store(false, Ordering::SeqCst);
        self.serve_until_us.store(0, Ordering::Release);
        self.serving.store(false, Ordering::Release);
    }

    /// A new watch is registered: whatever the cache held may have missed
    /// changes, so it is dropped; a probe started from now on verifies.
    pub(crate) fn registered(&self) {
        self.clear();
        Counters::add(&self.stats.resyncs);
        self.registered_us.store(self.now_us(), Ordering::SeqCst);
        self.watch_ok.store(true, Ordering::SeqCst);
        self.probe_now.notify_one();
    }

    /// The outcome of a probe that started at `t0`.
    pub(crate) fn after_probe(&self, t0: u64, store_ok: bool) {
        let external_ok = self.health.as_ref().is_none_or(|f| f());
        let overdue = self
            .oldest_pending()
            .is_some_and(|at| t0.saturating_sub(at) > self.max_lag_us);
        let watch_ok =
            self.watch_ok.load(Ordering::SeqCst) && t0 >= self.registered_us.load(Ordering::SeqCst);
        if !external_ok {
            // Definite (a chain's primary breaker opened): close the window
            // now; the lapse re-registers the watch once healthy again.
            let now = self.now_us();
            self.serve_until_us.fetch_min(now, Ordering::AcqRel);
            self.serving.store(false, Ordering::Release);
            self.window_changed.notify_one();
            return;
        }
        if !(store_ok && watch_ok) {
            return;
        }
        let until = self.serve_until_us.load(Ordering::Acquire);
        if overdue || (until != 0 && t0 > until) {
            // The cache could not verify for longer than max_lag (a hung
            // store, a partition, a silent watch): it may have missed
            // changes. Register a new watch, which drops the cache.
            tracing::debug!(cache = %self.config.label, overdue, "near cache lapsed; re-registering its watch");
            self.mark_broken();
            self.resubscribe.notify_one();
            return;
        }
        self.verified_us.fetch_max(t0, Ordering::AcqRel);
        let until = t0.saturating_add(self.max_lag_us);
        self.serve_until_us.fetch_max(until, Ordering::AcqRel);
        if self.now_us() < until && self.watch_ok.load(Ordering::SeqCst) {
            self.serving.store(true, Ordering::Release);
        }
        self.window_changed.notify_one();
    }

    /// Applies one watch event.
    pub(crate) async fn apply(&self, event: WatchEvent) {
        match event {
            WatchEvent::Put { entry, .. } => {
                let key = entry.key.clone();
                if !self.event_arrived(&key, entry.revision, false) {
                    self.bump(&key);
                }
                let rev = entry.revision;
                let fresh = Arc::new(Cached::new(
                    &key,
                    Some(
                        Entry::new(key.clone(), entry.value, rev, entry.create_revision)
                            .with_expires_at(entry.expires_at),
                    ),
                ));
                let too_big = fresh.bytes > self.config.max_entry_bytes;
                let candidate = fresh.clone();
                let r = self
                    .cache
                    .entry_by_ref(&key)
                    .and_compute_with(|cur| {
                        std::future::ready(match cur {
                            None => CacheOp::Nop,
                            Some(c) => match c.value().revision() {
                                Some(old) if old >= rev => CacheOp::Nop,
                                // Replace an older entry by the event's.
                                Some(_) if !too_big => CacheOp::Put(candidate),
                                // "Absent" (or too big now): drop it.
                                _ => CacheOp::Remove,
                            },
                        })
                    })
                    .await;
                match r {
                    CompResult::ReplacedWith(_) => {
                        self.count_in(&fresh);
                        Counters::add(&self.stats.invalidations);
                    }
                    CompResult::Removed(_) => Counters::add(&self.stats.invalidations),
                    _ => {}
                }
            }
            WatchEvent::Delete { key, revision, .. }
            | WatchEvent::Expired { key, revision, .. } => {
                if !self.event_arrived(&key, revision, true) {
                    self.bump(&key);
                }
                if self
                    .remove_if(&key, |c| c.revision().is_some_and(|old| old < revision))
                    .await
                {
                    Counters::add(&self.stats.invalidations);
                }
            }
            WatchEvent::Resync { entries, .. } => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.clear_pending();
                Counters::add(&self.stats.resyncs);
                let state: HashMap<&str, &Bytes> =
                    entries.iter().map(|e| (e.key.as_str(), &e.value)).collect();
                let keys: Vec<Key> = self.cache.iter().map(|(k, _)| (*k).clone()).collect();
                for key in keys {
                    let now = state.get(key.as_str()).copied();
                    // The value decides, not the revision: after a chain
                    // switched backends, revisions are the other store's.
                    let stale = |c: &Arc<Cached>| match (&c.entry, now) {
                        (Some(e), Some(v)) => e.value != *v,
                        (Some(_), None) | (None, Some(_)) => true,
                        (None, None) => false,
                    };
                    if self.remove_if(&key, stale).await {
                        Counters::add(&self.stats.invalidations);
                    }
                }
            }
        }
    }
}
