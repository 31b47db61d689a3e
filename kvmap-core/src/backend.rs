//! For backend authors: the plumbing that [`KvStore`](crate::KvStore)
//! implementations share, kept out of the crate root so that application
//! code sees only the contract.
//!
//! - [`Scope`]: the backend, operation and key an error or a timeout is
//!   reported with; [`Context::run`](crate::Context::run) takes one.
//! - [`ChangeFeed`] and [`ChangeSource`] (with [`HistoryChunk`]): the
//!   in-process watch fan-out with history replay, resync and dedup, for
//!   stores with one global revision.
//! - [`check_prefix`] and [`prefix_end`]: prefix validation and the
//!   exclusive upper bound of a prefix scan.
//! - lock drivers: see [`crate::lock`] (`LockDriver`, `LocalLocks`,
//!   `TokenSource`, `acquire`).

pub use crate::context::Scope;
pub use crate::entry::prefix_end;
pub use crate::key::check_prefix;
pub use crate::watch::{
    history_scan_limit, ChangeFeed, ChangeSource, HistoryChunk, HISTORY_CHUNK_EVENTS,
    HISTORY_SCAN_FACTOR,
};
