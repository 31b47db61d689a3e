//! # kvmap
//!
//! One async key-value map contract, [`KvStore`], with embedded RocksDB
//! (the default), Redis Cluster / standalone and Consul KV behind
//! it. This facade re-exports the contract from [`kvmap_core`], the
//! backends selected by cargo features, and [`open`], which makes a store
//! from a URL.
//!
//! | feature   | default | what                                     |
//! |-----------|---------|------------------------------------------|
//! | `rocksdb` | yes     | [`RocksStore`], `rocksdb:PATH` URLs       |
//! | `redis`   | no      | `RedisStore`, `redis://`, `redis+cluster://` URLs |
//! | `consul`  | no      | `ConsulStore`, `consul://`, `consul+https://` URLs |
//! | `fallback`| no      | [`FallbackChain`], [`Breaker`], the outbox ([`fallback`]) |
//! | `cli`     | no      | the `kvmap` binary (`cargo install --path kvmap --features cli`; turns on every backend and `fallback`) |
//!
//! ```no_run
//! # async fn demo() -> kvmap::Result<()> {
//! use kvmap::{Context, Key, KvStoreExt};
//!
//! let store = kvmap::open("rocksdb:./data").await?;
//! let ctx = Context::new();
//! let key = Key::new("greeting")?;
//! store.set(&ctx, &key, "hello").await?;
//! assert_eq!(store.get(&ctx, &key).await?.map(|e| e.value), Some("hello".into()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod open;

pub use kvmap_core::*;
pub use open::{open, redact, URL_FORMS};

#[cfg(feature = "rocksdb")]
pub use kvmap_rocksdb::{RocksConfig, RocksStore};

#[cfg(feature = "redis")]
pub use kvmap_redis::{RedisConfig, RedisStore};

#[cfg(feature = "consul")]
pub use kvmap_consul::{ConsulConfig, ConsulStore};

/// Circuit breakers, the fallback chain and the durable outbox (feature
/// `fallback`).
#[cfg(feature = "fallback")]
pub use kvmap_fallback as fallback;

#[cfg(feature = "fallback")]
pub use kvmap_fallback::{Breaker, BreakerConfig, ChainConfig, FallbackChain, WritePolicy};
