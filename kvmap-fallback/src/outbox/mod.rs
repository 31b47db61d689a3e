//! The durable outbox: writes made while the primary was unavailable,
//! journaled in an embedded RocksDB database in the order they were
//! acknowledged, until they are replayed to the primary.
//!
//! Layout (one RocksDB database of its own, `sync` writes by default):
//! - `o/{seq:020}`: a [`Record`], in replay order;
//! - `k/{key}`: the primary revision of a key produced by a replay
//!   (`a` when it is absent), so that a later record of the same key with
//!   base [`Base::Previous`] is conditioned correctly even after a restart
//!   in the middle of a replay. Cleared when the outbox drains.

mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use kvmap_core::{
    Batch, Context, DeleteOptions, Error, ErrorKind, Key, KvStore, KvStoreExt, Limits, ListRequest,
    PutOptions, Result, Revision,
};
use kvmap_rocksdb::{RocksConfig, RocksStore};

pub(crate) use record::Record;
pub use record::{Base, RecordOp};

/// What the chain knows of a key on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    Absent,
    Revision(Revision),
    /// A replay of the key conflicted: its later records conflict too.
    Conflicted,
}

impl Known {
    fn encode(self) -> Bytes {
        match self {
            Known::Absent => Bytes::from_static(b"a"),
            Known::Conflicted => Bytes::from_static(b"c"),
            Known::Revision(r) => Bytes::copy_from_slice(&r.to_be_bytes()),
        }
    }

    fn decode(b: &[u8]) -> Option<Self> {
        match b {
            b"a" => Some(Known::Absent),
            b"c" => Some(Known::Conflicted),
            b if b.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Some(Known::Revision(u64::from_be_bytes(a)))
            }
            _ => None,
        }
    }
}

/// The journal. Appends are made by one writer at a time (the chain's
/// outage lock); replay removes records from the front.
#[derive(Debug)]
pub(crate) struct Outbox {
    store: RocksStore,
    next_seq: AtomicU64,
    /// Number of records per key not replayed yet, and their total.
    pending: Mutex<(HashMap<Key, usize>, usize)>,
}

fn record_key(seq: u64) -> Result<Key> {
    Key::new(format!("o/{seq:020}"))
}

fn known_key(key: &Key) -> Result<Key> {
    Key::new(format!("k/{key}"))
}

const PAGE: usize = 256;

impl Outbox {
    /// Opens (or creates) the outbox database; returns it with the known
    /// primary revisions a replay in progress had recorded.
    pub(crate) async fn open(config: RocksConfig) -> Result<(Self, Vec<(Key, Known)>)> {
        let config = config.with_limits(Limits {
            max_key_bytes: Key::MAX_BYTES,
            max_value_bytes: 1 << 30,
            max_batch_ops: 1 << 16,
        });
        let store = RocksStore::open_async(config).await?;
        let ctx = Context::new();
        let mut pending: HashMap<Key, usize> = HashMap::new();
        let mut total = 0;
        let mut last = 0;
        let mut req = ListRequest::prefix("o/").with_limit(PAGE);
        loop {
            let page = store.list(&ctx, &req).await?;
            for e in &page.entries {
                let seq = parse_seq(&e.key)?;
                let r = Record::decode(seq, &e.value)?;
                *pending.entry(r.key).or_default() += 1;
                total += 1;
                last = last.max(seq);
            }
            match page.cursor {
                Some(c) => req.cursor = Some(c),
                None => break,
            }
        }
        let mut known = Vec::new();
        for e in store
            .list_all(&ctx, ListRequest::prefix("k/"), usize::MAX)
            .await?
        {
            let name = e.key.as_str().strip_prefix("k/").unwrap_or_default();
            if let (Ok(k), Some(v)) = (Key::new(name), Known::decode(&e.value)) {
                known.push((k, v));
            }
        }
        let outbox = Self {
            store,
            next_seq: AtomicU64::new(last + 1),
            pending: Mutex::new((pending, total)),
        };
        Ok((outbox, known))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<Key, usize>, usize)> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records not replayed yet.
    pub(crate) fn depth(&self) -> usize {
        self.lock().1
    }

    /// Whether a record of `key` waits for replay.
    pub(crate) fn has_pending(&self, key: &Key) -> bool {
        self.lock().0.contains_key(key)
    }

    /// Journals records durably and atomically; returns once they are on
    /// disk (fsynced when the outbox config says `sync`).
    pub(crate) async fn append(&self, records: Vec<Record>) -> Result<()> {
        let mut batch = Batch::new();
        let mut keys = Vec::with_capacity(records.len());
        for mut r in records {
            r.seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            batch = batch.put_with(record_key(r.seq)?, r.encode(), PutOptions::create());
            keys.push(r.key);
        }
        let outcomes = self.store.apply(&Context::new(), batch).await?;
        if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
            return Err(e);
        }
        let mut g = self.lock();
        for k in keys {
            *g.0.entry(k).or_default() += 1;
            g.1 += 1;
        }
        Ok(())
    }

    /// The oldest records, in replay order.
    pub(crate) async fn peek(&self, n: usize) -> Result<Vec<Record>> {
        let page = self
            .store
            .list(
                &Context::new(),
                &ListRequest::prefix("o/").with_limit(n.max(1)),
            )
            .await?;
        page.entries
            .iter()
            .map(|e| Record::decode(parse_seq(&e.key)?, &e.value))
            .collect()
    }

    /// Removes a replayed (or abandoned) record, remembering the primary
    /// state it produced, in one atomic write.
    pub(crate) async fn complete(&self, record: &Record, known: Option<Known>) -> Result<()> {
        let mut batch = Batch::new().delete(record_key(record.seq)?);
        let kk = known_key(&record.key)?;
        batch = match known {
            Some(k) => batch.put(kk, k.encode()),
            None => batch.delete(kk),
        };
        let outcomes = self.store.apply(&Context::new(), batch).await?;
        if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
            return Err(e);
        }
        let mut g = self.lock();
        if let Some(n) = g.0.get_mut(&record.key) {
            *n -= 1;
            if *n == 0 {
                g.0.remove(&record.key);
            }
        }
        g.1 = g.1.saturating_sub(1);
        Ok(())
    }

    /// The primary state a replay recorded for `key`, if any.
    pub(crate) async fn known(&self, key: &Key) -> Result<Option<Known>> {
        let e = self.store.get(&Context::new(), &known_key(key)?).await?;
        Ok(e.and_then(|e| Known::decode(&e.value)))
    }

    /// Drops the replay bookkeeping once the outbox is empty.
    pub(crate) async fn clear_known(&self) -> Result<()> {
        let ctx = Context::new();
        loop {
            let page = self
                .store
                .list(
                    &ctx,
                    &ListRequest::prefix("k/").keys_only().with_limit(PAGE),
                )
                .await?;
            if page.entries.is_empty() {
                return Ok(());
            }
            for e in page.entries {
                self.store
                    .delete(&ctx, &e.key, DeleteOptions::default())
                    .await?;
            }
        }
    }
}

fn parse_seq(key: &Key) -> Result<u64> {
    key.as_str()
        .strip_prefix("o/")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::new(ErrorKind::InvalidData)
                .with_backend("outbox")
                .with_key(key.as_str())
                .with_detail("not an outbox record key")
        })
}
