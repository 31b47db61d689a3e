#![doc = include_str!("../docs.md")]
#![forbid(unsafe_code)]

mod batch;
mod client;
mod codec;
mod config;
mod error;
mod list;
mod lock;
mod reaper;
mod store;
mod watch;

pub use codec::{expiry_flags, flags_expiry, FLAGS_TAG};
pub use config::{ConsulConfig, DEFAULT_MAX_VALUE_BYTES, DEFAULT_TXN_MAX_BYTES, MAX_TXN_OPS};
pub use lock::{
    ConsulLocks, LOCK_FLAGS, LOCK_SUFFIX, MAX_TTL as MAX_LOCK_TTL, MIN_TTL as MIN_LOCK_TTL,
    PENDING_IDLE, RELEASE_RETRY, SESSION_NAME,
};
pub use store::ConsulStore;
