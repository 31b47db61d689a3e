//! The shared state of a store: the RocksDB handle, its column families,
//! the writer lock and the read paths.
//!
//! The writer lock is only ever taken by the store's two threads (the
//! writer, see [`crate::writer`], and the reaper), never by async code:
//! readers of the latest revision use an atomic copy.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvmap_core::backend::ChangeFeed;
use kvmap_core::{Entry, Error, ErrorKind, Key, KeyRange, Op, Result, Revision};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, CompactionDecision,
    DBCompressionType, Env, Options, ReadOptions, WriteOptions, DB,
};

use crate::codec::{
    decode_key, decode_meta, decode_u64, now_nanos, to_entry, CF_DATA, CF_EXPIRY, CF_LOG, CF_META,
    FORMAT, META_COMPACTED, META_FORMAT, META_REVISION,
};
use crate::config::RocksConfig;
use crate::error::{from_rocks, internal, NAME};

/// What the writer lock guards: the counters every commit advances.
#[derive(Debug)]
pub(crate) struct Writer {
    /// The latest committed revision.
    pub(crate) revision: Revision,
    /// The highest revision dropped from the change log (0: none).
    pub(crate) compacted: Revision,
}

/// The shared state behind a [`RocksStore`](crate::RocksStore) and its
/// watch streams.
pub(crate) struct Inner {
    pub(crate) db: DB,
    pub(crate) config: RocksConfig,
    pub(crate) feed: ChangeFeed,
    pub(crate) write_opts: WriteOptions,
    writer: Mutex<Writer>,
    /// The latest committed revision, readable without the writer lock.
    committed: AtomicU64,
    /// Commits of the writer thread, and the writes they carried.
    pub(crate) commits: AtomicU64,
    pub(crate) grouped_writes: AtomicU64,
    /// Every entry expiring at or before this instant (ns since the epoch)
    /// has been reaped, so the compaction filter may drop it.
    pub(crate) reaped_through: Arc<AtomicU64>,
    /// This database's entry in the process's table of open databases;
    /// declared after `db`, so it is removed only once the database is
    /// closed.
    pub(crate) registration: crate::registry::Registration,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}

fn open_err(e: rocksdb::Error) -> Error {
    from_rocks(e, Op::Open)
}

fn bad_path(kind: ErrorKind, path: &Path, detail: &str) -> Error {
    Error::new(kind)
        .with_backend(NAME)
        .with_op(Op::Open)
        .with_detail(format!("{detail}: {}", path.display()))
}

/// Checks the path before RocksDB touches it, for clear errors.
fn check_path(config: &RocksConfig) -> Result<()> {
    let path = config.path();
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(bad_path(
            ErrorKind::InvalidArgument,
            path,
            "the database path is not a directory",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if config.create_if_missing {
                Ok(())
            } else {
                Err(bad_path(
                    ErrorKind::InvalidArgument,
                    path,
                    "the database does not exist and create_if_missing is off",
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(bad_path(
            ErrorKind::PermissionDenied,
            path,
            "no permission on the database path",
        )
        .with_source(e)),
        Err(e) => Err(bad_path(
            ErrorKind::Unavailable,
            path,
            "cannot inspect the database path",
        )
        .with_source(e)),
    }
}

/// Validates an existing OPTIONS file: RocksDB itself does not read it on
/// open, so a corrupted one would otherwise go unnoticed until a tool
/// trips over it.
///
/// Only finished options files count (`OPTIONS-<number>`): a process killed
/// while creating the database can leave `OPTIONS-<number>.dbtmp` behind,
/// which RocksDB itself ignores and replaces on the next open.
fn check_options_file(path: &Path) -> Result<()> {
    let finished = |name: &str| {
        name.strip_prefix("OPTIONS-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let has_options = std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .any(|e| finished(&e.file_name().to_string_lossy()))
        })
        .unwrap_or(false);
    if !has_options {
        return Ok(());
    }
    let env = Env::new().map_err(open_err)?;
    match Options::load_latest(path, env, true, Cache::new_lru_cache(1 << 20)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let (kind, _) = crate::error::classify(e.kind(), e.as_ref());
            // A lock or permission problem is reported as such; anything
            // else means the file does not parse.
            let kind = match kind {
                ErrorKind::Unavailable | ErrorKind::PermissionDenied => kind,
                _ => ErrorKind::InvalidData,
            };
            Err(Error::new(kind)
                .with_backend(NAME)
                .with_op(Op::Open)
                .with_detail(format!(
                    "the OPTIONS file of {} cannot be read",
                    path.display()
                ))
                .with_source(e))
        }
    }
}

/// Refuses an existing database that kvmap did not create (opening it
/// would add column families to somebody else's data).
fn check_column_families(path: &Path) -> Result<()> {
    if !path.join("CURRENT").exists() {
        return Ok(());
    }
    let cfs = DB::list_cf(&Options::default(), path).map_err(open_err)?;
    for name in [CF_DATA, CF_LOG, CF_EXPIRY, CF_META] {
        if !cfs.iter().any(|c| c == name) {
            return Err(Error::new(ErrorKind::InvalidData)
                .with_backend(NAME)
                .with_op(Op::Open)
                .with_detail(format!(
                    "{} holds a rocksdb database that is not a kvmap database (column family {name} is missing)",
                    path.display()
                )));
        }
    }
    Ok(())
}

fn cf_options(cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    o
}

impl Inner {
    /// Opens (or creates) the database. Blocking.
    pub(crate) fn open(config: RocksConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|e| e.in_context(NAME, Op::Open, None))?;
        check_path(&config)?;
        let registration = crate::registry::Registration::acquire(config.path())?;
        check_options_file(config.path())?;
        check_column_families(config.path())?;

        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(config.create_if_missing);
        db_opts.create_missing_column_families(config.create_if_missing);
        db_opts.set_keep_log_file_num(4);
        db_opts.increase_parallelism(2);

        let reaped_through = Arc::new(AtomicU64::new(0));
        let mut data_opts = cf_options(&cache);
        let watermark = reaped_through.clone();
        data_opts.set_compaction_filter(
            "kvmap-expired",
            move |_level: u32, _key: &[u8], value: &[u8]| {
                // Only entries whose expiry event has been committed (all of
                // them up to the reaper's watermark) are dropped; the reaper
                // deleted them already, so this only frees older versions
                // early and never loses an Expired event.
                match decode_meta(value) {
                    Ok(m) if m.expires != 0 && m.expires <= watermark.load(Ordering::Acquire) => {
                        CompactionDecision::Remove
                    }
                    _ => CompactionDecision::Keep,
                }
            },
        );
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_DATA, data_opts),
            ColumnFamilyDescriptor::new(CF_LOG, cf_options(&cache)),
            ColumnFamilyDescriptor::new(CF_EXPIRY, cf_options(&cache)),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_opts, config.path(), cfs).map_err(open_err)?;

        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(config.sync);
        let inner = Self {
            feed: ChangeFeed::new(config.watch_buffer),
            db,
            config,
            write_opts,
            writer: Mutex::new(Writer {
                revision: 0,
                compacted: 0,
            }),
            committed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            grouped_writes: AtomicU64::new(0),
            reaped_through,
            registration,
        };
        inner.load_counters()?;
        Ok(inner)
    }

    fn load_counters(&self) -> Result<()> {
        let meta = self.cf(CF_META, Op::Open)?;
        let read = |k: &[u8]| -> Result<Option<u64>> {
            self.db
                .get_pinned_cf(meta, k)
                .map_err(open_err)?
                .map(|v| decode_u64(&v))
                .transpose()
                .map_err(|e| e.in_context(NAME, Op::Open, None))
        };
        match read(META_FORMAT)? {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(Error::new(ErrorKind::InvalidData)
                    .with_backend(NAME)
                    .with_op(Op::Open)
                    .with_detail(format!(
                        "unknown data format {other} (this version reads {FORMAT})"
                    )))
            }
            None => {
                let mut opts = WriteOptions::default();
                opts.set_sync(true);
                self.db
                    .put_cf_opt(meta, META_FORMAT, FORMAT.to_be_bytes(), &opts)
                    .map_err(open_err)?;
            }
        }
        let mut w = self.lock();
        w.revision = read(META_REVISION)?.unwrap_or(0);
        w.compacted = read(META_COMPACTED)?.unwrap_or(0);
        self.set_revision(w.revision);
        Ok(())
    }

    /// The writer lock: every commit holds it from the read of the current
    /// state to the publication of its events.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock can only happen before the batch
        // is written (counters are updated after a successful write), so a
        // poisoned lock still guards consistent counters.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer lock if nobody holds it now (never waits).
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, Writer>> {
        match self.writer.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// A column family handle. All four are created at open, so a missing
    /// one is an internal error, never a panic.
    pub(crate) fn cf(&self, name: &str, op: Op) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| internal(op, format!("column family {name} is missing")))
    }

    /// Flushes and compacts every column family.
    pub(crate) fn compact(&self) -> Result<()> {
        for name in [CF_DATA, CF_LOG, CF_EXPIRY, CF_META] {
            let cf = self.cf(name, Op::Apply)?;
            self.db.flush_cf(cf).map_err(|e| from_rocks(e, Op::Apply))?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// The latest committed revision.
    pub(crate) fn revision(&self) -> Revision {
        self.committed.load(Ordering::Acquire)
    }

    /// Publishes a new latest revision (by the holder of the writer lock,
    /// after the commit).
    pub(crate) fn set_revision(&self, revision: Revision) {
        self.committed.store(revision, Ordering::Release);
    }

    /// Reads one key; `None` if absent or expired.
    pub(crate) fn get(&self, key: &Key, op: Op) -> Result<Option<Entry>> {
        let cf = self.cf(CF_DATA, op)?;
        let Some(raw) = self
            .db
            .get_pinned_cf(cf, key.as_str())
            .map_err(|e| from_rocks(e, op))?
        else {
            return Ok(None);
        };
        let meta = decode_meta(&raw)?;
        // Only entries with a TTL need the clock.
        if meta.expires != 0 && meta.expired_at(now_nanos()) {
            return Ok(None);
        }
        Ok(Some(to_entry(key.clone(), &meta, &raw, true)))
    }

    /// Reads several keys with one multi-get.
    pub(crate) fn get_many(&self, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        let cf = self.cf(CF_DATA, Op::GetMany)?;
        let raws =
            self.db
                .batched_multi_get_cf(cf, keys.iter().map(|k| k.as_str().as_bytes()), false);
        let now = now_nanos();
        Ok(keys
            .iter()
            .zip(raws)
            .map(|(key, raw)| {
                let Some(raw) = raw.map_err(|e| from_rocks(e, Op::GetMany))? else {
                    return Ok(None);
                };
                let meta = decode_meta(&raw).map_err(|e| e.with_key(key.as_str()))?;
                Ok((!meta.expired_at(now)).then(|| to_entry(key.clone(), &meta, &raw, true)))
            })
            .collect())
    }

    /// Scans live entries of `range` from `lower` (inclusive), at most
    /// `limit`, optionally at a snapshot (`opts` carries it).
    pub(crate) fn scan(
        &self,
        range: &KeyRange,
        lower: Vec<u8>,
        limit: usize,
        with_values: bool,
        mut opts: ReadOptions,
        op: Op,
    ) -> Result<Vec<Entry>> {
        let cf = self.cf(CF_DATA, op)?;
        if let Some(end) = range.end_bytes() {
            if end.as_slice() <= lower.as_slice() {
                return Ok(Vec::new());
            }
            opts.set_iterate_upper_bound(end);
        }
        opts.set_iterate_lower_bound(lower);
        let mut it = self.db.raw_iterator_cf_opt(cf, opts);
        it.seek_to_first();
        let now = now_nanos();
        let mut out = Vec::new();
        while out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let meta = decode_meta(v)?;
            if !meta.expired_at(now) {
                out.push(to_entry(decode_key(k)?, &meta, v, with_values));
            }
            it.next();
        }
        it.status().map_err(|e| from_rocks(e, op))?;
        Ok(out)
    }
}
