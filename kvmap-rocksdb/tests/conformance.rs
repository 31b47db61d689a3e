//! The shared conformance suite against a RocksDB store, each case on a
//! fresh database in its own directory under one temporary directory
//! that is removed when the run ends. The reopen hook closes a case's
//! store (dropped in async code: the close runs on a blocking thread and
//! the reopen waits for it) and opens its directory again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::KvStore;
use kvmap_rocksdb::{RocksConfig, RocksStore};

/// Change-log retention by count of the stores under test.
const HISTORY: u64 = 200;
/// Per-watcher buffer of the stores under test.
const BUFFER: usize = 16;

fn addr(store: &Arc<dyn KvStore>) -> usize {
    Arc::as_ptr(store).cast::<()>() as usize
}

fn table(
    m: &Mutex<HashMap<usize, RocksConfig>>,
) -> std::sync::MutexGuard<'_, HashMap<usize, RocksConfig>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn main() -> std::process::ExitCode {
    let root = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("conformance: cannot create a temporary directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let options = SuiteOptions {
        // The log keeps between HISTORY and HISTORY * 1.1 changes, so a
        // revision is surely gone after HISTORY * 1.1 + 1 more.
        history_limit: Some((HISTORY + HISTORY / 10 + 1) as usize),
        watch_buffer: Some(BUFFER),
        // Expired entries are invisible at once (the strict case runs).
        expiry_grace: Duration::ZERO,
        ..SuiteOptions::default()
    };
    let base = root.path().to_owned();
    let n = Arc::new(AtomicUsize::new(0));
    // The config of every open store, by the address of its Arc.
    let configs: Arc<Mutex<HashMap<usize, RocksConfig>>> = Arc::default();
    let reopen_configs = configs.clone();
    let code = Suite::new("rocksdb")
        .with_options(options)
        .with_reopen(move |store: Arc<dyn KvStore>| {
            let configs = reopen_configs.clone();
            async move {
                let config = table(&configs).remove(&addr(&store));
                let config = config.ok_or_else(|| {
                    kvmap_core::Error::new(kvmap_core::ErrorKind::Internal)
                        .with_detail("reopen: store not opened by this test")
                })?;
                drop(store);
                let reopened: Arc<dyn KvStore> =
                    Arc::new(RocksStore::open_async(config.clone()).await?);
                table(&configs).insert(addr(&reopened), config);
                Ok(reopened)
            }
        })
        .run(move || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("case-{i}"));
            let configs = configs.clone();
            async move {
                // Every other case unsynced: both write paths (the writer
                // thread, and the inline commit of small unsynced writes)
                // run the whole suite.
                let config = RocksConfig::new(path)
                    .with_sync(i.is_multiple_of(2))
                    .with_block_cache_bytes(8 << 20)
                    .with_changelog_max_entries(HISTORY)
                    .with_watch_buffer(BUFFER);
                let store: Arc<dyn KvStore> =
                    Arc::new(RocksStore::open_async(config.clone()).await?);
                table(&configs).insert(addr(&store), config);
                Ok(store)
            }
        });
    drop(root);
    code
}
