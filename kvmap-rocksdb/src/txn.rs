//! The write path: a transaction staged into one RocksDB `WriteBatch`
//! under the writer lock.
//!
//! Every write (put, delete, batch, expiry) reads the current envelope of
//! its keys, checks conditions, stages the new envelope, the expiry-index
//! update and one change-log record per new revision, and finally the new
//! revision counter, all in one batch: data, revision and history are
//! durable together or not at all. Events are published to the watch feed
//! after the batch is written, in revision order, still under the lock.
//!
//! One transaction can carry several independent writes (the writer
//! thread's group commit, see [`crate::writer`]): each write starts at a
//! [`Savepoint`], and a write whose condition fails is rolled back to it
//! without touching the others. RocksDB's `WriteBatch` has no save points
//! in the Rust binding, so the staged operations are kept in a list and
//! written into the batch at commit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use bytes::Bytes;
use kvmap_core::{DeleteOptions, Entry, Key, Op, PutOptions, Result, Revision, WatchEvent};
use rocksdb::{ColumnFamily, WriteBatch};

use crate::codec::{
    decode_entry, decode_meta, encode_envelope, encode_record, expiry_key, from_nanos, now_nanos,
    ChangeKind, Meta, CF_DATA, CF_EXPIRY, CF_LOG, CF_META, META_COMPACTED, META_REVISION,
};
use crate::db::{Inner, Writer};
use crate::error::from_rocks;

/// The current state of a key inside a transaction: its header and raw
/// envelope, or `None` if absent.
type Current = Option<(Meta, Vec<u8>)>;

/// A change to publish once the batch is written.
struct Pending {
    kind: ChangeKind,
    key: Key,
    revision: Revision,
    /// The new entry (puts), built without copying the value.
    entry: Option<Entry>,
    /// The raw envelope before the change.
    prev: Option<Vec<u8>>,
}

/// One staged RocksDB operation.
enum Staged<'a> {
    Put(&'a ColumnFamily, Vec<u8>, Vec<u8>),
    Delete(&'a ColumnFamily, Vec<u8>),
}

/// Where a write starts inside a transaction: [`Txn::rollback`] undoes
/// everything staged after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Savepoint {
    next: Revision,
    staged: usize,
    pending: usize,
    journal: usize,
    earliest_expiry: Option<u64>,
}

/// A write transaction. Dropping it without [`Txn::commit`] writes
/// nothing.
pub(crate) struct Txn<'a> {
    inner: &'a Inner,
    w: MutexGuard<'a, Writer>,
    op: Op,
    staged: Vec<Staged<'a>>,
    next: Revision,
    now: u64,
    overlay: HashMap<Key, Current>,
    /// The overlay's previous value of every key it changed, in order, for
    /// [`Txn::rollback`] (`None`: the key was not in the overlay).
    journal: Vec<(Key, Option<Current>)>,
    pending: Vec<Pending>,
    /// The earliest expiry written, to wake the reaper.
    pub(crate) earliest_expiry: Option<u64>,
}

impl<'a> Txn<'a> {
    /// Starts a transaction: takes the writer lock.
    pub(crate) fn begin(inner: &'a Inner, op: Op) -> Self {
        Self::with_lock(inner, inner.lock(), op)
    }

    /// Starts a transaction only if the writer lock is free right now.
    pub(crate) fn try_begin(inner: &'a Inner, op: Op) -> Option<Self> {
        inner.try_lock().map(|w| Self::with_lock(inner, w, op))
    }

    fn with_lock(inner: &'a Inner, w: MutexGuard<'a, Writer>, op: Op) -> Self {
        Self {
            next: w.revision,
            inner,
            w,
            op,
            staged: Vec::new(),
            now: now_nanos(),
            overlay: HashMap::new(),
            journal: Vec::new(),
            pending: Vec::new(),
            earliest_expiry: None,
        }
    }

    /// Sets the operation named in the errors of what is staged next.
    pub(crate) fn set_op(&mut self, op: Op) {
        self.op = op;
    }

    /// Marks where the next write starts.
    pub(crate) fn savepoint(&self) -> Savepoint {
        Savepoint {
            next: self.next,
            staged: self.staged.len(),
            pending: self.pending.len(),
            journal: self.journal.len(),
            earliest_expiry: self.earliest_expiry,
        }
    }

    /// Undoes everything staged since `sp`: operations, revisions, events
    /// and the overlay.
    pub(crate) fn rollback(&mut self, sp: Savepoint) {
        self.next = sp.next;
        self.staged.truncate(sp.staged);
        self.pending.truncate(sp.pending);
        self.earliest_expiry = sp.earliest_expiry;
        while self.journal.len() > sp.journal {
            let Some((key, old)) = self.journal.pop() else {
                break;
            };
            match old {
                Some(c) => self.overlay.insert(key, c),
                None => self.overlay.remove(&key),
            };
        }
    }

    /// Records the state of `key` after a staged change.
    fn remember(&mut self, key: &Key, state: Current) {
        let old = self.overlay.insert(key.clone(), state);
        self.journal.push((key.clone(), old));
    }

    fn stage_put(
        &mut self,
        cf: &'a ColumnFamily,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        self.staged.push(Staged::Put(cf, key.into(), value.into()));
    }

    fn stage_delete(&mut self, cf: &'a ColumnFamily, key: impl Into<Vec<u8>>) {
        self.staged.push(Staged::Delete(cf, key.into()));
    }

    /// The wall time of the transaction (ns since the epoch).
    pub(crate) fn now(&self) -> u64 {
        self.now
    }

    fn current(&mut self, key: &Key) -> Result<Current> {
        if let Some(c) = self.overlay.get(key) {
            return Ok(c.clone());
        }
        let cf = self.inner.cf(CF_DATA, self.op)?;
        let raw = self
            .inner
            .db
            .get_cf(cf, key.as_str())
            .map_err(|e| from_rocks(e, self.op))?;
        match raw {
            None => Ok(None),
            Some(raw) => {
                let meta = decode_meta(&raw).map_err(|e| e.with_key(key.as_str()))?;
                Ok(Some((meta, raw)))
            }
        }
    }

    fn log(
        &mut self,
        kind: ChangeKind,
        key: &Key,
        current: Option<&[u8]>,
        prev: Option<&[u8]>,
    ) -> Result<()> {
        let record = encode_record(kind, self.now, key.as_str(), current, prev);
        let cf = self.inner.cf(CF_LOG, self.op)?;
        self.stage_put(cf, self.next.to_be_bytes(), record);
        Ok(())
    }

    fn remove(&mut self, key: &Key, old: &Meta) -> Result<()> {
        let data = self.inner.cf(CF_DATA, self.op)?;
        self.stage_delete(data, key.as_str());
        if old.expires != 0 {
            let idx = self.inner.cf(CF_EXPIRY, self.op)?;
            self.stage_delete(idx, expiry_key(old.expires, key.as_str()));
        }
        Ok(())
    }

    /// Reaps `key` if it has expired, with its own revision and event.
    /// Returns the state after that.
    fn reap_if_expired(&mut self, key: &Key) -> Result<Current> {
        let cur = self.current(key)?;
        match cur {
            Some((meta, raw)) if meta.expired_at(self.now) => {
                self.expire(key, &meta, raw)?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    fn expire(&mut self, key: &Key, meta: &Meta, raw: Vec<u8>) -> Result<()> {
        self.next += 1;
        self.remove(key, meta)?;
        self.log(ChangeKind::Expired, key, None, Some(raw.as_slice()))?;
        self.pending.push(Pending {
            kind: ChangeKind::Expired,
            key: key.clone(),
            revision: self.next,
            entry: None,
            prev: Some(raw),
        });
        self.remember(key, None);
        Ok(())
    }

    /// Reaps `key` if its envelope still carries the expiry `expires` and
    /// it has passed; else only drops the stale index entry. For the
    /// reaper.
    pub(crate) fn reap_indexed(&mut self, key: &Key, expires: u64) -> Result<()> {
        match self.current(key)? {
            Some((meta, raw)) if meta.expires == expires && meta.expired_at(self.now) => {
                self.expire(key, &meta, raw)
            }
            _ => {
                let idx = self.inner.cf(CF_EXPIRY, self.op)?;
                self.stage_delete(idx, expiry_key(expires, key.as_str()));
                Ok(())
            }
        }
    }

    /// Stages a put. Fails with the condition's error (with the key).
    pub(crate) fn put(
        &mut self,
        key: &Key,
        value: &Bytes,
        options: &PutOptions,
    ) -> Result<Revision> {
        let cur = self.reap_if_expired(key)?;
        options
            .check_condition(cur.as_ref().map(|(m, _)| m.revision))
            .map_err(|e| e.with_key(key.as_str()))?;
        self.next += 1;
        let revision = self.next;
        let expires = match options.ttl {
            Some(ttl) => {
                let ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
                self.now.saturating_add(ns).max(self.now + 1)
            }
            None => 0,
        };
        let meta = Meta {
            revision,
            create_revision: cur.as_ref().map_or(revision, |(m, _)| m.create_revision),
            expires,
        };
        let raw = encode_envelope(&meta, value);
        let (prev_meta, prev_raw) = match cur {
            Some((m, r)) => (Some(m), Some(r)),
            None => (None, None),
        };
        if let Some(old) = prev_meta.filter(|m| m.expires != 0 && m.expires != expires) {
            let idx = self.inner.cf(CF_EXPIRY, self.op)?;
            self.stage_delete(idx, expiry_key(old.expires, key.as_str()));
        }
        if expires != 0 {
            let idx = self.inner.cf(CF_EXPIRY, self.op)?;
            self.stage_put(idx, expiry_key(expires, key.as_str()), Vec::new());
            self.earliest_expiry = Some(self.earliest_expiry.map_or(expires, |e| e.min(expires)));
        }
        let data = self.inner.cf(CF_DATA, self.op)?;
        self.stage_put(data, key.as_str(), raw.clone());
        self.log(
            ChangeKind::Put,
            key,
            Some(raw.as_slice()),
            prev_raw.as_deref(),
        )?;
        let entry = Entry::new(key.clone(), value.clone(), revision, meta.create_revision)
            .with_expires_at((expires != 0).then(|| from_nanos(expires)));
        self.pending.push(Pending {
            kind: ChangeKind::Put,
            key: key.clone(),
            revision,
            entry: Some(entry),
            prev: prev_raw,
        });
        self.remember(key, Some((meta, raw)));
        Ok(revision)
    }

    /// Stages a delete. Returns whether the key existed.
    pub(crate) fn delete(&mut self, key: &Key, options: &DeleteOptions) -> Result<bool> {
        let cur = self.reap_if_expired(key)?;
        options
            .check_condition(cur.as_ref().map(|(m, _)| m.revision))
            .map_err(|e| e.with_key(key.as_str()))?;
        let Some((meta, raw)) = cur else {
            return Ok(false);
        };
        self.next += 1;
        self.remove(key, &meta)?;
        self.log(ChangeKind::Delete, key, None, Some(raw.as_slice()))?;
        self.pending.push(Pending {
            kind: ChangeKind::Delete,
            key: key.clone(),
            revision: self.next,
            entry: None,
            prev: Some(raw),
        });
        self.remember(key, None);
        Ok(true)
    }

    /// Writes the batch (with the new revision and, when the change log
    /// outgrew its retention by count, the trimming of its head), then
    /// publishes the events in order. Returns the earliest expiry written.
    pub(crate) fn commit(mut self) -> Result<Option<u64>> {
        if self.next == self.w.revision && self.staged.is_empty() {
            return Ok(None);
        }
        let mut batch = WriteBatch::default();
        for op in self.staged.drain(..) {
            match op {
                Staged::Put(cf, k, v) => batch.put_cf(cf, k, v),
                Staged::Delete(cf, k) => batch.delete_cf(cf, k),
            }
        }
        let meta = self.inner.cf(CF_META, self.op)?;
        batch.put_cf(meta, META_REVISION, self.next.to_be_bytes());
        let keep = self.inner.config.changelog_max_entries;
        // Trim in chunks of a tenth of the retention, so that the log
        // holds between `keep` and `keep * 1.1` changes and range
        // tombstones stay rare.
        let slack = (keep / 10).max(1);
        let mut compacted = self.w.compacted;
        if self.next.saturating_sub(compacted) >= keep + slack {
            let upto = self.next - keep;
            let log = self.inner.cf(CF_LOG, self.op)?;
            batch.delete_range_cf(log, (compacted + 1).to_be_bytes(), (upto + 1).to_be_bytes());
            batch.put_cf(meta, META_COMPACTED, upto.to_be_bytes());
            compacted = upto;
        }
        if let Some(e) = self.earliest_expiry {
            // An expiry at or before the reaper's watermark (possible only
            // if the wall clock stepped back) must not be dropped by the
            // compaction filter before it is reaped.
            self.inner
                .reaped_through
                .fetch_min(e.saturating_sub(1), Ordering::AcqRel);
        }
        self.inner
            .db
            .write_opt(batch, &self.inner.write_opts)
            .map_err(|e| from_rocks(e, self.op))?;
        self.w.revision = self.next;
        self.w.compacted = compacted;
        self.inner.set_revision(self.next);
        let feed = &self.inner.feed;
        if feed.has_watchers() {
            for p in self.pending.drain(..) {
                feed.publish(p.into_event());
            }
        }
        Ok(self.earliest_expiry)
    }
}

impl Pending {
    fn into_event(self) -> WatchEvent {
        // The previous envelope was decoded when it was read, so this
        // cannot fail; `ok()` keeps the commit path free of panics anyway.
        let prev = self
            .prev
            .and_then(|raw| decode_entry(self.key.clone(), &raw).ok());
        match (self.kind, self.entry) {
            (ChangeKind::Put, Some(entry)) => WatchEvent::Put { entry, prev },
            (ChangeKind::Expired, _) => WatchEvent::Expired {
                key: self.key,
                revision: self.revision,
                prev,
            },
            _ => WatchEvent::Delete {
                key: self.key,
                revision: self.revision,
                prev,
            },
        }
    }
}
