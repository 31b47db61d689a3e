//! The shared conformance suite on a fallback chain of two healthy
//! backends: `MemoryStore` (primary) → RocksDB (fallback), with the
//! outbox write policy, each case on fresh stores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::{KvStore, MemoryConfig, MemoryStore};
use kvmap_fallback::{ChainConfig, FallbackChain, OutboxConfig, WritePolicy};
use kvmap_rocksdb::{RocksConfig, RocksStore};

const HISTORY: usize = 200;
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
        history_limit: Some(HISTORY),
        watch_buffer: Some(BUFFER),
        ..SuiteOptions::default()
    };
    let base = root.path().to_owned();
    let n = Arc::new(AtomicUsize::new(0));
    let code = Suite::new("fallback::memory_rocksdb")
        .with_options(options)
        .run(move || {
            let dir = base.join(format!("case-{}", n.fetch_add(1, Ordering::Relaxed)));
            async move {
                let primary = MemoryStore::with_config(
                    MemoryConfig::default()
                        .with_history_limit(HISTORY)
                        .with_watch_buffer(BUFFER),
                );
                let fallback = RocksStore::open_async(
                    RocksConfig::new(dir.join("fallback")).with_block_cache_bytes(4 << 20),
                )
                .await?;
                let chain = FallbackChain::builder()
                    .backend("memory", Arc::new(primary))
                    .backend("rocksdb", Arc::new(fallback))
                    .config(
                        ChainConfig::default().with_write_policy(WritePolicy::Outbox(
                            OutboxConfig::new(dir.join("outbox")).with_sync(false),
                        )),
                    )
                    .build()
                    .await?;
                Ok(Arc::new(chain) as Arc<dyn KvStore>)
            }
        });
    drop(root);
    code
}
