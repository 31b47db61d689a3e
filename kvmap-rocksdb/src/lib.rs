#![doc = include_str!("../docs.md")]
#![forbid(unsafe_code)]

mod codec;
mod config;
mod db;
mod error;
/// **Unstable**: internals exposed for the fuzz targets in `fuzz/` only;
/// not part of the public API, may change in any release.
#[doc(hidden)]
pub mod fuzzing;
mod lock;
mod reaper;
mod registry;
mod store;
mod txn;
mod watch;
mod writer;

pub use config::RocksConfig;
pub use store::{RocksStore, WriteStats};
