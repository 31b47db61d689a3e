//! The write path: a transaction staged in one RocksDB `WriteBatch`
//! under the writer lock.
//!
//! Every write (put, delete, batch, expiry) reads the current envelope of
//! its keys, checks conditions, stages the new envelope, the expiry-index
//! update and one change-log record per new revision, and finally the new
//! revision counter, all in one batch: data, revision and history are
//! durable together or not at all. Events are published to the watch feed
//! after the batch is written, in revision order, still under the lock.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use bytes::Bytes;
use kvmap_core::{DeleteOptions, Entry, Key, Op, PutOptions, Result, Revision, WatchEvent};
use rocksdb::WriteBatch;

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

/// A write transaction. Dropping it without [`Txn::commit`] writes
/// nothing.
pub(crate) struct Txn<'a> {
    inner: &'a Inner,
    w: MutexGuard<'a, Writer>,
    op: Op,
    batch: WriteBatch,
    next: Revision,
    now: u64,
    overlay: HashMap<Key, Current>,
    pending: Vec<Pending>,
    /// The earliest expiry written, to wake the reaper.
    pub(crate) earliest_expiry: Option<u64>,
}

impl<'a> Txn<'a> {
    /// Starts a transaction: takes the writer lock.
    pub(crate) fn begin(inner: &'a Inner, op: Op) -> Self {
        let w = inner.lock();
        Self {
            next: w.revision,
            inner,
            w,
            op,
            batch: WriteBatch::default(),
            now: now_nanos(),
            overlay: HashMap::new(),
            pending: Vec::new(),
            earliest_expiry: None,
        }
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
        self.batch.put_cf(cf, self.next.to_be_bytes(), record);
        Ok(())
    }

    fn remove(&mut self, key: &Key, old: &Meta) -> Result<()> {
        let data = self.inner.cf(CF_DATA, self.op)?;
        self.batch.delete_cf(data, key.as_str());
        if old.expires != 0 {
            let idx = self.inner.cf(CF_EXPIRY, self.op)?;
            self.batch
                .delete_cf(idx, expiry_key(old.expires, key.as_str()));
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
        self.overlay.insert(key.clone(), None);
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
                self.batch.delete_cf(idx, expiry_key(expires, key.as_str()));
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
            self.batch
                .delete_cf(idx, expiry_key(old.expires, key.as_str()));
        }
        if expires != 0 {
            let idx = self.inner.cf(CF_EXPIRY, self.op)?;
            self.batch
                .put_cf(idx, expiry_key(expires, key.as_str()), b"");
            self.earliest_expiry = Some(self.earliest_expiry.map_or(expires, |e| e.min(expires)));
        }
        let data = self.inner.cf(CF_DATA, self.op)?;
        self.batch.put_cf(data, key.as_str(), &raw);
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
        self.overlay.insert(key.clone(), Some((meta, raw)));
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
        self.overlay.insert(key.clone(), None);
        Ok(true)
    }

    /// Writes the batch (with the new revision and, when the change log
    /// outgrew its retention by count, the trimming of its head), then
    /// publishes the events in order. Returns the earliest expiry written.
    pub(crate) fn commit(mut self) -> Result<Option<u64>> {
        if self.next == self.w.revision {
            return Ok(None);
        }
        let meta = self.inner.cf(CF_META, self.op)?;
        self.batch
            .put_cf(meta, META_REVISION, self.next.to_be_bytes());
        let keep = self.inner.config.changelog_max_entries;
        // Trim in chunks of a tenth of the retention, so that the log
        // holds between `keep` and `keep * 1.1` changes and range
        // tombstones stay rare.
        let slack = (keep / 10).max(1);
        let mut compacted = self.w.compacted;
        if self.next.saturating_sub(compacted) >= keep + slack {
            let upto = self.next - keep;
            let log = self.inner.cf(CF_LOG, self.op)?;
            self.batch.delete_range_cf(
                log,
                (compacted + 1).to_be_bytes(),
                (upto + 1).to_be_bytes(),
            );
            self.batch.put_cf(meta, META_COMPACTED, upto.to_be_bytes());
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
        let batch = std::mem::take(&mut self.batch);
        self.inner
            .db
            .write_opt(batch, &self.inner.write_opts)
            .map_err(|e| from_rocks(e, self.op))?;
        self.w.revision = self.next;
        self.w.compacted = compacted;
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
