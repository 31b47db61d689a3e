//! The [`ChangeSource`] of the store: history from the change log and
//! consistent snapshots, both read from one RocksDB snapshot. The fan-out
//! to streams is kvmap-core's [`ChangeFeed`](kvmap_core::backend::ChangeFeed).

use std::sync::Arc;

use async_trait::async_trait;
use kvmap_core::backend::{history_scan_limit, ChangeSource, HistoryChunk};
use kvmap_core::{Entry, Error, ErrorKind, KeyRange, Op, Result, Revision};
use rocksdb::ReadOptions;

use crate::codec::{decode_record, decode_u64, CF_LOG, CF_META, META_COMPACTED, META_REVISION};
use crate::db::Inner;
use crate::error::{from_rocks, internal};

/// The change source over a store's shared state.
pub(crate) struct Source(pub(crate) Arc<Inner>);

/// Runs blocking RocksDB work off the async workers (snapshots and
/// history can be large), inline when there is no Tokio runtime.
pub(crate) async fn offload<T, F>(inner: &Arc<Inner>, op: Op, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Inner) -> Result<T> + Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return f(inner.as_ref());
    }
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(inner.as_ref()))
        .await
        .map_err(|e| internal(op, format!("blocking task failed: {e}")))?
}

fn counter(inner: &Inner, snap: &rocksdb::Snapshot<'_>, key: &[u8]) -> Result<Revision> {
    let meta = inner.cf(CF_META, Op::Watch)?;
    snap.get_cf(meta, key)
        .map_err(|e| from_rocks(e, Op::Watch))?
        .map_or(Ok(0), |v| decode_u64(&v))
}

impl Inner {
    /// The live entries of `range` and the revision they were read at.
    pub(crate) fn snapshot_range(&self, range: &KeyRange) -> Result<(Vec<Entry>, Revision)> {
        let snap = self.db.snapshot();
        let revision = counter(self, &snap, META_REVISION)?;
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        let lower = range.start().as_bytes().to_vec();
        let entries = self.scan(range, lower, usize::MAX, true, opts, Op::Watch)?;
        Ok((entries, revision))
    }

    /// One chunk of the changes with a revision `>= from` whose key is in
    /// `range`, read from the change log under one snapshot: at most
    /// `max_events` events after examining at most
    /// [`history_scan_limit`]`(max_events)` records, or `Compacted`.
    pub(crate) fn history_from(
        &self,
        from: Revision,
        range: &KeyRange,
        max_events: usize,
    ) -> Result<HistoryChunk> {
        let snap = self.db.snapshot();
        let compacted = counter(self, &snap, META_COMPACTED)?;
        if from <= compacted {
            return Err(Error::new(ErrorKind::Compacted {
                oldest: compacted + 1,
            })
            .with_detail(format!(
                "the change log starts at revision {}",
                compacted + 1
            )));
        }
        let log = self.cf(CF_LOG, Op::Watch)?;
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        opts.set_iterate_lower_bound(from.to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(log, opts);
        it.seek_to_first();
        let scan_limit = history_scan_limit(max_events);
        let mut events = Vec::new();
        let mut scanned_through = from.saturating_sub(1);
        let mut scanned = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if events.len() >= max_events || scanned >= scan_limit {
                return Ok(HistoryChunk::new(events, scanned_through, true));
            }
            let revision = decode_u64(k)?;
            let event = decode_record(revision, v)?;
            scanned += 1;
            scanned_through = revision;
            if event.key().is_some_and(|key| range.contains(key.as_str())) {
                events.push(event);
            }
            it.next();
        }
        it.status().map_err(|e| from_rocks(e, Op::Watch))?;
        Ok(HistoryChunk::new(events, scanned_through, false))
    }
}

#[async_trait]
impl ChangeSource for Source {
    async fn snapshot(&self, range: &KeyRange) -> Result<(Vec<Entry>, Revision)> {
        let range = range.clone();
        offload(&self.0, Op::Watch, move |inner| {
            inner.snapshot_range(&range)
        })
        .await
    }

    async fn history(
        &self,
        from: Revision,
        range: &KeyRange,
        max_events: usize,
    ) -> Result<HistoryChunk> {
        let range = range.clone();
        offload(&self.0, Op::Watch, move |inner| {
            inner.history_from(from, &range, max_events)
        })
        .await
    }
}
