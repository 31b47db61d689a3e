#![doc = include_str!("../docs.md")]
#![forbid(unsafe_code)]

mod codec;
mod config;
mod db;
mod error;
mod lock;
mod reaper;
mod store;
mod txn;
mod watch;

pub use config::RocksConfig;
pub use store::RocksStore;
