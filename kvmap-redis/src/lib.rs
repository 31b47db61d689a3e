#![doc = include_str!("../docs.md")]
#![forbid(unsafe_code)]

mod batch;
mod client;
mod config;
mod error;
mod feed;
/// **Unstable**: internals exposed for the fuzz targets in `fuzz/` only;
/// not part of the public API, may change in any release.
#[doc(hidden)]
pub mod fuzzing;
mod list;
mod lock;
mod rebuild;
mod scripts;
mod slots;
mod stale;
mod store;
mod watch;
mod wid;

pub use config::{DurableWrites, RedisConfig, Topology};
pub use store::RedisStore;
