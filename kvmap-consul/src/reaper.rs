//! Removing expired entries from the server.
//!
//! Consul KV has no per-key TTL. Sessions with `behavior = delete` were
//! the other option, but a session TTL is at least 10 s, is renewed by a
//! client that may die, and deletes every key of the session at once, so
//! it cannot give each key its own expiry. kvmap instead stores the expiry
//! instant in `Flags` (see the crate docs), hides expired entries on every
//! read, and this reaper deletes them with `delete-cas` on the
//! `ModifyIndex` it saw: an entry rewritten meanwhile is never deleted.
//!
//! The reaper knows the TTL entries this process wrote or read; every 60
//! intervals (and at start) it also scans the whole key prefix, to find
//! entries written by other processes that died.

use std::collections::BTreeSet;
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime};

use kvmap_core::{Context, Entry, Op, Result};

use crate::batch::{TxnOp, TxnOutcome};
use crate::codec::decode;
use crate::list::Span;
use crate::store::Inner;

/// At most this many pending expiries are remembered (the full scans find
/// the rest).
const MAX_PENDING: usize = 100_000;

/// Scans of the whole key prefix happen every this many intervals.
const SWEEP_EVERY: u64 = 60;

/// The expiries the reaper waits for: (instant, kvmap key, revision).
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    due: Mutex<BTreeSet<(SystemTime, String, u64)>>,
}

impl Reaper {
    /// Remembers an entry with an expiry.
    pub(crate) fn note(&self, entry: &Entry) {
        let Some(at) = entry.expires_at else {
            return;
        };
        // A poisoned lock only means another thread panicked while
        // inserting; the set itself is still usable.
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        if due.len() < MAX_PENDING {
            due.insert((at, entry.key.as_str().to_owned(), entry.revision));
        }
    }

    fn take_due(&self, now: SystemTime) -> Vec<(String, u64)> {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        while let Some(first) = due.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, k, r)) = due.pop_first() {
                out.push((k, r));
            }
        }
        out
    }
}

/// Starts the reaper task; it ends when the store is dropped.
pub(crate) fn spawn(inner: Weak<Inner>, interval: Duration) {
    tokio::spawn(async move {
        let mut tick: u64 = 0;
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            if tick.is_multiple_of(SWEEP_EVERY) {
                if let Err(e) = strong.sweep().await {
                    tracing::debug!(target: "kvmap_consul", error = %e.report(), "reaper scan failed");
                }
            }
            strong.reap_due().await;
            drop(strong);
            tick = tick.wrapping_add(1);
            tokio::time::sleep(interval).await;
        }
    });
}

impl Inner {
    /// Scans the whole key prefix for expired entries.
    pub(crate) async fn sweep(&self) -> Result<()> {
        let ctx = Context::new().with_timeout(self.cfg.request_timeout);
        let span = Span::Prefix(self.cfg.key_prefix.clone());
        let read = self.read_span(&ctx, &span, None, Op::List).await?;
        let now = SystemTime::now();
        for raw in read.raws {
            if let Ok(Some(d)) = decode(raw, &self.cfg.key_prefix, true, now, Op::List) {
                if d.expired {
                    self.reaper.note(&d.entry);
                }
            }
        }
        Ok(())
    }

    /// Deletes the entries whose expiry passed (guarded by their
    /// revision); returns how many were deleted.
    pub(crate) async fn reap_due(&self) -> usize {
        let mut deleted = 0;
        for (key, rev) in self.reaper.take_due(SystemTime::now()) {
            let ctx = Context::new().with_timeout(self.cfg.request_timeout);
            let op = TxnOp::DeleteCas {
                key: self.consul_key(&key),
                index: rev,
            };
            match self.txn(&ctx, &[op], Op::Delete, Some(&key)).await {
                Ok(TxnOutcome::Done(_)) => deleted += 1,
                // Rewritten or already gone: nothing to do.
                Ok(TxnOutcome::Failed(_)) => {}
                Err(e) => {
                    tracing::debug!(target: "kvmap_consul", error = %e.report(), key = %key, "reaper delete failed; retried by the next scan");
                }
            }
        }
        deleted
    }
}
