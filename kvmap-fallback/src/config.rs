//! Settings of a [`FallbackChain`](crate::FallbackChain): write policy,
//! outbox, breakers.

use std::path::PathBuf;
use std::time::Duration;

use kvmap_rocksdb::RocksConfig;

use crate::breaker::BreakerConfig;

/// What the chain does with writes while the primary is unavailable.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WritePolicy {
    /// Writes go to the primary only; while it is unavailable they fail
    /// (`Unavailable`, `Timeout` or `CircuitOpen`). Reads still fall back.
    Reject,
    /// Writes go to the primary and then to every fallback whose breaker
    /// admits; while the primary is unavailable they go to the healthy
    /// fallbacks only. Nothing repairs the primary afterwards.
    WriteThrough,
    /// Writes go to the primary (copied to the fallbacks); while it is
    /// unavailable they go to the first available fallback and are
    /// journaled durably, then replayed to the primary in order with
    /// compare-and-swap once its breaker closes.
    Outbox(OutboxConfig),
}

/// When the outbox is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// A background task tries every `interval` while the outbox is not
    /// empty and the primary's breaker admits calls.
    Auto {
        /// The pause between attempts.
        interval: Duration,
    },
    /// Only [`FallbackChain::replay_now`](crate::FallbackChain::replay_now)
    /// replays (tests, operator-driven recovery).
    Manual,
}

/// Settings of the durable outbox.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// The RocksDB database of the journal (its own directory; `sync` on
    /// by default so an acknowledged write survives power loss).
    pub rocksdb: RocksConfig,
    /// When to replay.
    pub replay: ReplayMode,
    /// The timeout of each replayed call.
    pub replay_timeout: Duration,
}

impl OutboxConfig {
    /// An outbox in the directory `path`, fsynced, replayed automatically
    /// every 250 ms.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            rocksdb: RocksConfig::new(path)
                .with_sync(true)
                .with_block_cache_bytes(4 << 20)
                .with_changelog_max_entries(1000),
            replay: ReplayMode::Auto {
                interval: Duration::from_millis(250),
            },
            replay_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the replay mode.
    pub fn with_replay(mut self, replay: ReplayMode) -> Self {
        self.replay = replay;
        self
    }

    /// Sets whether journal writes are fsynced.
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.rocksdb = self.rocksdb.with_sync(sync);
        self
    }

    /// Sets the timeout of each replayed call.
    pub fn with_replay_timeout(mut self, timeout: Duration) -> Self {
        self.replay_timeout = timeout;
        self
    }
}

/// Settings of a [`FallbackChain`](crate::FallbackChain).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChainConfig {
    /// The breaker settings of every backend.
    pub breaker: BreakerConfig,
    /// The write policy (default [`WritePolicy::Reject`]).
    pub write_policy: WritePolicy,
    /// Copy every successful primary write to the fallbacks whose breaker
    /// admits, so they can serve reads during an outage (default `true`;
    /// always on for write-through).
    pub mirror: bool,
    /// How many keys' primary revisions the chain remembers for
    /// conditioning outbox replays (default 100 000; the oldest are
    /// forgotten first).
    pub known_capacity: usize,
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            breaker: BreakerConfig::default(),
            write_policy: WritePolicy::Reject,
            mirror: true,
            known_capacity: 100_000,
        }
    }
}

impl ChainConfig {
    /// Sets the breaker settings.
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Sets the write policy.
    pub fn with_write_policy(mut self, policy: WritePolicy) -> Self {
        self.write_policy = policy;
        self
    }

    /// Sets whether primary writes are copied to the fallbacks.
    pub fn with_mirror(mut self, mirror: bool) -> Self {
        self.mirror = mirror;
        self
    }

    /// Sets how many primary revisions are remembered.
    pub fn with_known_capacity(mut self, n: usize) -> Self {
        self.known_capacity = n;
        self
    }
}
