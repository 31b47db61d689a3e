#![doc = include_str!("../docs.md")]
#![forbid(unsafe_code)]

pub mod breaker;
pub mod cache;
mod chain;
mod config;
pub mod metrics;
mod outbox;

pub use breaker::{Breaker, BreakerConfig, BreakerSnapshot, BreakerState, FailureRate};
pub use cache::{NearCache, NearCacheBuilder, NearCacheConfig, NearCacheStats, NEAR_CACHE_NAME};
pub use chain::{
    BackendStats, ChainBuilder, ConflictReport, FallbackChain, ReplayReport, CHAIN_NAME,
};
pub use config::{ChainConfig, OutboxConfig, ReplayMode, WritePolicy};
pub use outbox::{Base, RecordOp};
