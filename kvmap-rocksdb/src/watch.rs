//! The [`ChangeSource`] of the store: history from the change log and
//! consistent snapshots, both read from one RocksDB snapshot. The fan-out
//! to streams is kvmap-core's [`ChangeFeed`](kvmap_core::ChangeFeed).

use std::sync::Arc;

use async_trait::async_trait;
use kvmap_core::{
    ChangeSource, Entry, Error, ErrorKind, KeyRange, Op, Result, Revision, WatchEvent,
};
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

    /// Every change with a revision `>= from`, or `Compacted`.
    pub(crate) fn history_from(&self, from: Revision) -> Result<Vec<WatchEvent>> {
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
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push(decode_record(decode_u64(k)?, v)?);
            it.next();
        }
        it.status().map_err(|e| from_rocks(e, Op::Watch))?;
        Ok(out)
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

    async fn history(&self, from: Revision) -> Result<Vec<WatchEvent>> {
        offload(&self.0, Op::Watch, move |inner| inner.history_from(from)).await
    }
}
