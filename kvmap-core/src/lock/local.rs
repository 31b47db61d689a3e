//! In-process leases: the [`LockDriver`] of the memory and RocksDB stores
//! (both single-process), with fencing tokens from a [`TokenSource`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{FencingToken, Lease, LockDriver};
use crate::error::Result;
use crate::key::Key;

/// Hands out fencing tokens: each call returns a number strictly greater
/// than every number returned before, by this source and (for a durable
/// source) by any earlier instance over the same data.
///
/// One counter for all keys is enough: a token greater than every earlier
/// one is greater than every earlier one of the same key.
pub trait TokenSource: Send + Sync + fmt::Debug + 'static {
    /// The next token.
    ///
    /// # Errors
    /// A durable source's I/O error; no lease is granted then.
    fn next_token(&self) -> Result<u64>;
}

/// A [`TokenSource`] in memory, starting at 1 (not durable).
#[derive(Debug, Default)]
pub struct MemoryTokens(AtomicU64);

impl TokenSource for MemoryTokens {
    fn next_token(&self) -> Result<u64> {
        Ok(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

#[derive(Debug)]
struct Holder {
    owner: String,
    token: u64,
    expires: Instant,
}

/// In-process leases: a table of holders with expiry instants, guarded by
/// one mutex; no I/O except the token source.
#[derive(Debug)]
pub struct LocalLocks {
    backend: &'static str,
    holders: Mutex<HashMap<Key, Holder>>,
    tokens: Arc<dyn TokenSource>,
}

/// Above this many entries, expired holders are swept on acquisition, so
/// the table is bounded by the locks held (plus this).
const SWEEP_ABOVE: usize = 256;

impl LocalLocks {
    /// A lock table for `backend` with tokens from `tokens`.
    pub fn new(backend: &'static str, tokens: Arc<dyn TokenSource>) -> Self {
        Self {
            backend,
            holders: Mutex::new(HashMap::new()),
            tokens,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Holder>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl LockDriver for LocalLocks {
    fn backend(&self) -> &str {
        self.backend
    }

    fn ttl_range(&self) -> (Duration, Duration) {
        (Duration::from_millis(10), super::LockOptions::MAX_TTL)
    }

    async fn try_acquire(&self, key: &Key, owner: &str, ttl: Duration) -> Result<Option<Lease>> {
        let now = Instant::now();
        let mut table = self.table();
        if table.len() > SWEEP_ABOVE {
            table.retain(|_, h| h.expires > now);
        }
        if let Some(h) = table.get(key) {
            if h.expires > now {
                return Ok((h.owner == owner).then(|| Lease {
                    token: FencingToken::new(h.token),
                    handle: h.owner.clone(),
                }));
            }
        }
        let token = self.tokens.next_token()?;
        table.insert(
            key.clone(),
            Holder {
                owner: owner.to_owned(),
                token,
                expires: now + ttl,
            },
        );
        Ok(Some(Lease {
            token: FencingToken::new(token),
            handle: owner.to_owned(),
        }))
    }

    async fn renew(&self, key: &Key, lease: &Lease, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut table = self.table();
        match table.get_mut(key) {
            Some(h) if h.owner == lease.handle && h.expires > now => {
                h.expires = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &Key, lease: &Lease) -> Result<()> {
        let mut table = self.table();
        if table.get(key).is_some_and(|h| h.owner == lease.handle) {
            table.remove(key);
        }
        Ok(())
    }
}
