//! [`NearCacheConfig`]: bounds, freshness and the last-resort window.

use std::sync::Arc;
use std::time::Duration;

use kvmap_core::backend::check_prefix;
use kvmap_core::{Error, ErrorKind, Op, Result};

use super::NEAR_CACHE_NAME;

/// How a [`NearCache`](super::NearCache) is bounded and how long it vouches
/// for what it holds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NearCacheConfig {
    /// The cached scope: keys starting with this prefix are cached and
    /// watched (empty: the whole store). Other keys pass through.
    pub scope: String,
    /// At most this many entries (default 1024).
    pub max_entries: u64,
    /// At most this many bytes of keys, values and a fixed 64-byte
    /// estimate per entry (default 2 MiB).
    pub max_bytes: u64,
    /// Larger entries are not cached (default 128 KiB).
    pub max_entry_bytes: u64,
    /// The cache serves `Default` reads only while it verified the watch
    /// and the store within this bound (default 1 s).
    pub max_lag: Duration,
    /// How often the store is probed (default 250 ms; at most `max_lag`).
    pub probe_interval: Duration,
    /// When every backend fails (`Unavailable`, `Timeout`, `CircuitOpen`),
    /// a `Default` read is served from the cache if the cache was last
    /// verified at most this long ago, marked stale (default 30 s; zero
    /// disables the last resort).
    pub max_staleness: Duration,
    /// Cache absent keys too (kept correct by the same watch; default on).
    pub cache_absent: bool,
    /// The name of the cache in `served_by`, errors and metric labels
    /// (default `near-cache`).
    pub label: Arc<str>,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        Self {
            scope: String::new(),
            max_entries: 1024,
            max_bytes: 2 << 20,
            max_entry_bytes: 128 << 10,
            max_lag: Duration::from_secs(1),
            probe_interval: Duration::from_millis(250),
            max_staleness: Duration::from_secs(30),
            cache_absent: true,
            label: Arc::from(NEAR_CACHE_NAME),
        }
    }
}

impl NearCacheConfig {
    /// Caches and watches only keys under `prefix`.
    pub fn with_scope(mut self, prefix: impl Into<String>) -> Self {
        self.scope = prefix.into();
        self
    }

    /// Sets the entry bound.
    pub fn with_max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets the byte bound.
    pub fn with_max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets the largest entry that is cached.
    pub fn with_max_entry_bytes(mut self, n: u64) -> Self {
        self.max_entry_bytes = n;
        self
    }

    /// Sets the freshness bound of `Default` reads.
    pub fn with_max_lag(mut self, d: Duration) -> Self {
        self.max_lag = d;
        self
    }

    /// Sets the probe interval.
    pub fn with_probe_interval(mut self, d: Duration) -> Self {
        self.probe_interval = d;
        self
    }

    /// Sets the last-resort window (zero disables it).
    pub fn with_max_staleness(mut self, d: Duration) -> Self {
        self.max_staleness = d;
        self
    }

    /// Caches absent keys or not.
    pub fn with_cache_absent(mut self, on: bool) -> Self {
        self.cache_absent = on;
        self
    }

    /// Sets the label.
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = Arc::from(label);
        self
    }

    /// Checks the bounds and intervals.
    ///
    /// # Errors
    /// `InvalidArgument` for a zero bound or interval, a probe interval
    /// above `max_lag`, an entry bound above the byte bound or an entry
    /// size above 4 GiB; `InvalidKey` for a bad scope prefix.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Error::new(ErrorKind::InvalidArgument)
                .with_backend(self.label.to_string())
                .with_op(Op::Open)
                .with_detail(why)
        };
        check_prefix(&self.scope)?;
        if self.max_entries == 0 || self.max_bytes == 0 || self.max_entry_bytes == 0 {
            return Err(bad("near cache bounds must be positive".into()));
        }
        if self.max_entries > self.max_bytes {
            return Err(bad(format!(
                "near cache entry bound {} is above its byte bound {}",
                self.max_entries, self.max_bytes
            )));
        }
        if self.max_entry_bytes > u64::from(u32::MAX) {
            return Err(bad("near cache max_entry_bytes must be below 4 GiB".into()));
        }
        if self.max_lag.is_zero() || self.probe_interval.is_zero() {
            return Err(bad(
                "near cache max_lag and probe_interval must be positive".into(),
            ));
        }
        if self.probe_interval > self.max_lag {
            return Err(bad(format!(
                "near cache probe interval {:?} is above max_lag {:?}",
                self.probe_interval, self.max_lag
            )));
        }
        Ok(())
    }

    /// The smallest weight of an entry: the byte bound divided by the entry
    /// bound, rounded up, so a total weight within the byte bound is also
    /// within the entry bound.
    pub(crate) fn min_weight(&self) -> u64 {
        self.max_bytes.div_ceil(self.max_entries.max(1))
    }
}
