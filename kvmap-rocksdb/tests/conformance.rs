//! The shared conformance suite against a RocksDB store, each case on a
//! fresh database in its own directory under one temporary directory
//! that is removed when the run ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::KvStore;
use kvmap_rocksdb::{RocksConfig, RocksStore};

/// Change-log retention by count of the stores under test.
const HISTORY: u64 = 200;
/// Per-watcher buffer of the stores under test.
const BUFFER: usize = 16;

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
        ..SuiteOptions::default()
    };
    let base = root.path().to_owned();
    let n = Arc::new(AtomicUsize::new(0));
    let code = Suite::new("rocksdb").with_options(options).run(move || {
        let path = base.join(format!("case-{}", n.fetch_add(1, Ordering::Relaxed)));
        async move {
            let config = RocksConfig::new(path)
                .with_block_cache_bytes(8 << 20)
                .with_changelog_max_entries(HISTORY)
                .with_watch_buffer(BUFFER);
            let store = RocksStore::open_async(config).await?;
            Ok(Arc::new(store) as Arc<dyn KvStore>)
        }
    });
    drop(root);
    code
}
