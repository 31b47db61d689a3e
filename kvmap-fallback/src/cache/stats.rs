//! Counters of a near cache, their snapshot and their metrics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counter per `cache`: reads answered from the cache.
pub const CACHE_HITS: &str = "kvmap_cache_hits_total";
/// Counter per `cache`: reads that went to the store.
pub const CACHE_MISSES: &str = "kvmap_cache_misses_total";
/// Counter per `cache`: entries evicted by the bounds or by their TTL.
pub const CACHE_EVICTIONS: &str = "kvmap_cache_evictions_total";
/// Counter per `cache`: entries invalidated or replaced by watch events
/// and by writes through the cache.
pub const CACHE_INVALIDATIONS: &str = "kvmap_cache_invalidations_total";
/// Counter per `cache`: resyncs of the watch and watch re-registrations
/// (each drops what the cache could no longer vouch for).
pub const CACHE_RESYNCS: &str = "kvmap_cache_resyncs_total";
/// Counter per `cache`: reads served from the cache with a staleness mark
/// while the cache could not verify its data (the last resort, and
/// `Stale` reads while unverified).
pub const CACHE_STALE_SERVES: &str = "kvmap_cache_stale_serves_total";
/// Gauge per `cache`: entries held.
pub const CACHE_ENTRIES: &str = "kvmap_cache_entries";
/// Gauge per `cache`: bytes held (keys, values, 64 bytes per entry).
pub const CACHE_BYTES: &str = "kvmap_cache_bytes";
/// Gauge per `cache`: 1 while the cache serves `Default` reads, else 0.
pub const CACHE_HEALTHY: &str = "kvmap_cache_healthy";
/// Histogram per `cache`: seconds from a write through the cache being
/// acknowledged to its watch event arriving.
pub const CACHE_WATCH_LAG: &str = "kvmap_cache_watch_lag_seconds";

/// The last own-write lags kept for [`LagSummary`].
const LAG_SAMPLES: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) stale_serves: AtomicU64,
    pub(crate) fills_rejected: AtomicU64,
    pub(crate) entries: AtomicI64,
    pub(crate) bytes: AtomicI64,
    lags: Mutex<VecDeque<Duration>>,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_lag(&self, label: &Arc<str>, lag: Duration) {
        metrics::histogram!(CACHE_WATCH_LAG, "cache" => metrics::SharedString::from_shared(label.clone()))
            .record(lag.as_secs_f64());
        let mut l = self.lags.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == LAG_SAMPLES {
            l.pop_front();
        }
        l.push_back(lag);
    }

    fn lag_summary(&self) -> LagSummary {
        let mut v: Vec<Duration> = self
            .lags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                Duration::ZERO
            } else {
                let i = ((v.len() - 1) as f64 * q).round() as usize;
                v[i.min(v.len() - 1)]
            }
        };
        LagSummary {
            samples: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }

    pub(crate) fn snapshot(&self, healthy: bool, staleness: Option<Duration>) -> NearCacheStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NearCacheStats {
            hits: g(&self.hits),
            misses: g(&self.misses),
            evictions: g(&self.evictions),
            invalidations: g(&self.invalidations),
            resyncs: g(&self.resyncs),
            stale_serves: g(&self.stale_serves),
            fills_rejected: g(&self.fills_rejected),
            entries: u64::try_from(self.entries.load(Ordering::Relaxed)).unwrap_or(0),
            bytes: u64::try_from(self.bytes.load(Ordering::Relaxed)).unwrap_or(0),
            healthy,
            staleness,
            own_write_lag: self.lag_summary(),
        }
    }

    /// Publishes the counters through the `metrics` facade (called by the
    /// probe task, not on every read, so a hit costs no metric lookup).
    pub(crate) fn publish(&self, label: &Arc<str>, healthy: bool) {
        let l = || metrics::SharedString::from_shared(label.clone());
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::counter!(CACHE_HITS, "cache" => l()).absolute(g(&self.hits));
        metrics::counter!(CACHE_MISSES, "cache" => l()).absolute(g(&self.misses));
        metrics::counter!(CACHE_EVICTIONS, "cache" => l()).absolute(g(&self.evictions));
        metrics::counter!(CACHE_INVALIDATIONS, "cache" => l()).absolute(g(&self.invalidations));
        metrics::counter!(CACHE_RESYNCS, "cache" => l()).absolute(g(&self.resyncs));
        metrics::counter!(CACHE_STALE_SERVES, "cache" => l()).absolute(g(&self.stale_serves));
        metrics::gauge!(CACHE_ENTRIES, "cache" => l())
            .set(self.entries.load(Ordering::Relaxed).max(0) as f64);
        metrics::gauge!(CACHE_BYTES, "cache" => l())
            .set(self.bytes.load(Ordering::Relaxed).max(0) as f64);
        metrics::gauge!(CACHE_HEALTHY, "cache" => l()).set(if healthy { 1.0 } else { 0.0 });
    }
}

/// The distribution of the last 4096 own-write watch lags: from a write
/// through the cache being acknowledged to its watch event arriving.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagSummary {
    /// How many lags the figures are over.
    pub samples: usize,
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest.
    pub max: Duration,
}

/// What a near cache has done, for dashboards and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Reads answered from the cache (fresh).
    pub hits: u64,
    /// Reads that went to the store.
    pub misses: u64,
    /// Entries evicted by the bounds or by their TTL.
    pub evictions: u64,
    /// Entries invalidated or replaced by watch events and own writes.
    pub invalidations: u64,
    /// Resyncs and watch re-registrations.
    pub resyncs: u64,
    /// Reads served stale (marked) while the cache could not verify its data.
    pub stale_serves: u64,
    /// Reads from the store not cached because a change of the key (or a
    /// resync) raced with them.
    pub fills_rejected: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now (keys, values, 64 bytes per entry).
    pub bytes: u64,
    /// Whether the cache serves `Default` reads now.
    pub healthy: bool,
    /// How long ago the cache last verified its watch and the store
    /// (`None` before the first verification).
    pub staleness: Option<Duration>,
    /// Watch lag of writes made through the cache.
    pub own_write_lag: LagSummary,
}

impl NearCacheStats {
    /// Hits ÷ (hits + misses), 0 without reads.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}
