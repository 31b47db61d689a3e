//! Locks: in-process leases ([`LocalLocks`], RocksDB is single-process)
//! with fencing tokens that keep increasing across reopen.
//!
//! The token counter persists a high-water mark in the meta column family
//! in blocks of [`BLOCK`]: tokens are handed out from memory up to the
//! persisted mark, and a new mark is written (synced) before the first
//! token above it. After a reopen (or a crash) the counter starts above
//! the last persisted mark, so a token is never handed out twice; a crash
//! skips at most one block of numbers.

use std::sync::{Arc, Mutex, PoisonError};

use kvmap_core::lock::{LocalLocks, TokenSource};
use kvmap_core::{Op, Result};
use rocksdb::WriteOptions;

use crate::codec::{decode_u64, CF_META, META_LOCK_TOKENS};
use crate::db::Inner;
use crate::error::{from_rocks, NAME};

/// Tokens reserved per synced write of the high-water mark.
pub(crate) const BLOCK: u64 = 1000;

/// The durable [`TokenSource`] of a [`crate::RocksStore`].
#[derive(Debug)]
pub(crate) struct DurableTokens {
    db: Arc<Inner>,
    /// `(last handed out, persisted mark)`; `None` until first use.
    state: Mutex<Option<(u64, u64)>>,
}

impl DurableTokens {
    pub(crate) fn new(db: Arc<Inner>) -> Self {
        Self {
            db,
            state: Mutex::new(None),
        }
    }

    fn read_mark(&self) -> Result<u64> {
        let cf = self.db.cf(CF_META, Op::Lock)?;
        let raw = self
            .db
            .db
            .get_pinned_cf(cf, META_LOCK_TOKENS)
            .map_err(|e| from_rocks(e, Op::Lock))?;
        match raw {
            Some(v) => decode_u64(&v).map_err(|e| e.in_context(NAME, Op::Lock, None)),
            None => Ok(0),
        }
    }

    fn write_mark(&self, mark: u64) -> Result<()> {
        let cf = self.db.cf(CF_META, Op::Lock)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .db
            .put_cf_opt(cf, META_LOCK_TOKENS, mark.to_be_bytes(), &opts)
            .map_err(|e| from_rocks(e, Op::Lock))
    }
}

impl TokenSource for DurableTokens {
    fn next_token(&self) -> Result<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, mark) = match *state {
            Some(s) => s,
            None => {
                let m = self.read_mark()?;
                (m, m)
            }
        };
        let next = last.saturating_add(1);
        let mark = if next > mark {
            let m = mark.saturating_add(BLOCK);
            self.write_mark(m)?;
            m
        } else {
            mark
        };
        *state = Some((next, mark));
        Ok(next)
    }
}

/// The lock table of a store over `db`.
pub(crate) fn locks(db: Arc<Inner>) -> Arc<LocalLocks> {
    Arc::new(LocalLocks::new(NAME, Arc::new(DurableTokens::new(db))))
}
