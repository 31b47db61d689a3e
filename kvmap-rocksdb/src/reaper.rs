//! The background reaper: a thread that turns expiries into
//! [`WatchEvent::Expired`](kvmap_core::WatchEvent::Expired) changes (with a
//! new revision each) and trims the change log by age.
//!
//! It walks the `expiry` column family, which is ordered by expiry time,
//! so a pass only touches what is due. It sleeps until the next expiry
//! (at most [`MAINTENANCE`]), is woken by writes with an earlier expiry,
//! and stops when the store is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use kvmap_core::{Op, Result};
use rocksdb::ReadOptions;

use crate::codec::{
    now_nanos, record_time, split_expiry_key, CF_EXPIRY, CF_LOG, CF_META, META_COMPACTED,
};
use crate::db::Inner;
use crate::error::{from_rocks, internal};
use crate::txn::Txn;

/// The longest sleep between two passes (age trimming runs on it).
pub(crate) const MAINTENANCE: Duration = Duration::from_secs(1);
/// The most expiries reaped, or log records trimmed, under one lock hold.
const CHUNK: usize = 1000;

#[derive(Debug, Default)]
struct State {
    stop: bool,
    /// When the reaper will wake next (ns since the epoch); 0 while a
    /// pass runs.
    wake_at: u64,
    /// The earliest expiry written since the current pass started
    /// (0: none), so that a write racing with a pass is not missed.
    written: u64,
}

/// Wakes and stops the reaper.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: Mutex<State>,
    cv: Condvar,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields, consistent at every point.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the reaper if `expires` is earlier than its next wake-up.
    pub(crate) fn expiry_written(&self, expires: u64) {
        let mut st = self.lock();
        if st.written == 0 || expires < st.written {
            st.written = expires;
        }
        if expires < st.wake_at {
            self.cv.notify_one();
        }
    }

    /// Asks the reaper to stop.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_one();
    }
}

/// Starts the reaper thread.
pub(crate) fn spawn(inner: Arc<Inner>, control: Arc<Control>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvmap-rocksdb-reaper".into())
        .spawn(move || run(&inner, &control))
        .map_err(|e| internal(Op::Open, "cannot start the reaper thread").with_source(e))
}

fn run(inner: &Inner, control: &Control) {
    loop {
        {
            let mut st = control.lock();
            st.wake_at = 0;
            st.written = 0;
        }
        let next = match reap_due(inner) {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e.report(), "rocksdb: expiry pass failed");
                None
            }
        };
        if let Err(e) = trim_by_age(inner) {
            tracing::warn!(error = %e.report(), "rocksdb: change-log trimming failed");
        }
        let now = now_nanos();
        let max = now.saturating_add(MAINTENANCE.as_nanos() as u64);
        let wake_at = next.map_or(max, |n| n.min(max));
        let mut st = control.lock();
        st.wake_at = match st.written {
            0 => wake_at,
            w => w.min(wake_at),
        };
        while !st.stop {
            let now = now_nanos();
            if now >= st.wake_at {
                break;
            }
            let wait = Duration::from_nanos(st.wake_at - now);
            let (guard, timeout) = control
                .cv
                .wait_timeout(st, wait)
                .unwrap_or_else(PoisonError::into_inner);
            st = guard;
            if !timeout.timed_out() {
                // Woken by an earlier expiry (or stop): run a pass now.
                break;
            }
        }
        if st.stop {
            return;
        }
    }
}

/// Reaps every entry due now, in chunks. Returns the next expiry, if any.
pub(crate) fn reap_due(inner: &Inner) -> Result<Option<u64>> {
    loop {
        let mut txn = Txn::begin(inner, Op::Delete);
        let now = txn.now();
        let floor = inner.reaped_through.load(Ordering::Acquire);
        let idx = inner.cf(CF_EXPIRY, Op::Delete)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(floor.saturating_add(1).to_be_bytes().to_vec());
        let mut it = inner.db.raw_iterator_cf_opt(idx, opts);
        it.seek_to_first();
        let mut due = Vec::new();
        let mut next = None;
        while let Some(k) = it.key() {
            let (at, key) = split_expiry_key(k)?;
            if at > now {
                next = Some(at);
                break;
            }
            if due.len() == CHUNK {
                next = Some(at);
                break;
            }
            due.push((at, key));
            it.next();
        }
        it.status().map_err(|e| from_rocks(e, Op::Delete))?;
        drop(it);
        let full = due.len() == CHUNK;
        for (at, key) in &due {
            txn.reap_indexed(key, *at)?;
        }
        txn.commit()?;
        if !full {
            // Everything expiring up to `now` is reaped (writers lower the
            // watermark if they ever write an expiry at or below it).
            inner.reaped_through.fetch_max(now, Ordering::AcqRel);
            return Ok(next);
        }
    }
}

/// Drops change-log records older than the retention age, in chunks.
pub(crate) fn trim_by_age(inner: &Inner) -> Result<()> {
    let Some(age) = inner.config.changelog_max_age else {
        return Ok(());
    };
    let cutoff = now_nanos().saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
    loop {
        let mut w = inner.lock();
        let log = inner.cf(CF_LOG, Op::Delete)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound((w.compacted + 1).to_be_bytes().to_vec());
        let mut it = inner.db.raw_iterator_cf_opt(log, opts);
        it.seek_to_first();
        let mut upto = w.compacted;
        let mut n = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if n == CHUNK || record_time(v)? >= cutoff {
                break;
            }
            upto = crate::codec::decode_u64(k)?;
            n += 1;
            it.next();
        }
        it.status().map_err(|e| from_rocks(e, Op::Delete))?;
        drop(it);
        if upto == w.compacted {
            return Ok(());
        }
        let meta = inner.cf(CF_META, Op::Delete)?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(
            log,
            (w.compacted + 1).to_be_bytes(),
            (upto + 1).to_be_bytes(),
        );
        batch.put_cf(meta, META_COMPACTED, upto.to_be_bytes());
        inner
            .db
            .write_opt(batch, &inner.write_opts)
            .map_err(|e| from_rocks(e, Op::Delete))?;
        w.compacted = upto;
        if n < CHUNK {
            return Ok(());
        }
    }
}
