//! # kvmap-core
//!
//! The contract of kvmap: one async key-value map trait, [`KvStore`], that
//! Redis Cluster, Consul KV, embedded RocksDB and the in-memory
//! [`MemoryStore`] all implement, with
//! - a request [`Context`] (deadline, cancellation, consistency, labels),
//!   enforced once in [`Context::run`];
//! - versioned [`Entry`]s (revisions), compare-and-swap as a [`PutMode`],
//!   TTL on every put;
//! - ordered [`list`](KvStore::list) with cursors, [`watch`] streams with
//!   resume and resync, batches ([`KvStore::apply`],
//!   [`KvStore::get_many`]);
//! - one [`Error`] with a `Copy` [`ErrorKind`], a [`RetryClass`] and an
//!   infrastructure flag for circuit breakers;
//! - [`Capabilities`] discovery: what a store lacks fails with
//!   [`ErrorKind::Unsupported`], never silently;
//! - leases and [`lock`]s with fencing tokens, renewed in the background,
//!   with a lost signal;
//! - [`Namespaced`] and [`Typed`] views over any store;
//! - the shared conformance suite (feature `conformance`) that every
//!   backend runs.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use kvmap_core::{Context, ErrorKind, Key, KvStore, KvStoreExt, MemoryStore};
//!
//! let store = MemoryStore::new();
//! let ctx = Context::new();
//! let key = Key::new("config/feature-x")?;
//! let rev = store.create(&ctx, &key, "on").await?;
//! // A second create fails; an update must name the current revision.
//! assert_eq!(store.create(&ctx, &key, "off").await.unwrap_err().kind(), ErrorKind::AlreadyExists);
//! store.update(&ctx, &key, "off", rev).await?;
//! assert_eq!(store.get(&ctx, &key).await?.unwrap().value, "off");
//! # Ok::<(), kvmap_core::Error>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]

pub mod backend;
mod capability;
mod context;
mod entry;
mod error;
mod key;
pub mod lock;
mod memory;
mod namespace;
mod redact;
mod store;
mod typed;
pub mod watch;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use capability::{Capabilities, Capability, Limits, Support};
pub use context::{Consistency, Context};
pub use entry::{
    Batch, BatchOp, BatchOutcome, DeleteOptions, Entry, KeyRange, ListPage, ListRequest, PutMode,
    PutOptions, Revision, DEFAULT_PAGE_SIZE,
};
pub use error::{Error, ErrorKind, Op, Report, Result, RetryClass};
pub use key::Key;
pub use lock::{Fence, FencingToken, LockGuard, LockOptions};
pub use memory::{MemoryConfig, MemoryStore};
pub use namespace::Namespaced;
pub use redact::{is_secret_param, redact_url};
pub use store::{KvStore, KvStoreExt, SharedStoreExt};
pub use typed::{Codec, Json, Typed, Versioned};
pub use watch::{WatchEvent, WatchRequest, WatchStream, WatchTarget};

pub use bytes::Bytes;
pub use tokio_util::sync::CancellationToken;
