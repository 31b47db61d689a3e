#![doc = include_str!("../docs.md")]
#![forbid(unsafe_code)]

mod batch;
mod client;
mod config;
mod error;
mod list;
mod lock;
mod scripts;
mod stale;
mod store;
mod watch;
mod wid;

pub use config::{DurableWrites, RedisConfig, Topology};
pub use store::RedisStore;
