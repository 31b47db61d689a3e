//! The conformance suite on a `NearCache` over RocksDB
//! (`conformance::near_cache::rocksdb::*`).

#[path = "cache_common.rs"]
mod cache_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_rocksdb::{RocksConfig, RocksStore};

const HISTORY: u64 = 200;
const BUFFER: usize = 16;

fn main() -> std::process::ExitCode {
    let root = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("conformance: cannot create a temporary directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let base = root.path().to_owned();
    let n = Arc::new(AtomicUsize::new(0));
    let code = Suite::new("near_cache::rocksdb")
        .with_options(SuiteOptions {
            history_limit: Some((HISTORY + HISTORY / 10 + 1) as usize),
            watch_buffer: Some(BUFFER),
            ..SuiteOptions::default()
        })
        .run(move || {
            let path = base.join(format!("case-{}", n.fetch_add(1, Ordering::Relaxed)));
            async move {
                let config = RocksConfig::new(path)
                    .with_block_cache_bytes(4 << 20)
                    .with_changelog_max_entries(HISTORY)
                    .with_watch_buffer(BUFFER);
                let store = RocksStore::open_async(config).await?;
                cache_common::cache_over(Arc::new(store)).await
            }
        });
    drop(root);
    code
}
