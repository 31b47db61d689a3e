//! The shared conformance suite on a [`Breaker`] in front of the
//! in-memory reference store.

use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::{KvStore, MemoryConfig, MemoryStore};
use kvmap_fallback::{Breaker, BreakerConfig};

const HISTORY: usize = 200;
const BUFFER: usize = 16;

fn main() -> std::process::ExitCode {
    let options = SuiteOptions {
        history_limit: Some(HISTORY),
        watch_buffer: Some(BUFFER),
        ..SuiteOptions::default()
    };
    Suite::new("breaker::memory")
        .with_options(options)
        .run(|| async {
            let store = MemoryStore::with_config(
                MemoryConfig::default()
                    .with_history_limit(HISTORY)
                    .with_watch_buffer(BUFFER),
            );
            Ok(
                Arc::new(Breaker::new(Arc::new(store), BreakerConfig::default()))
                    as Arc<dyn KvStore>,
            )
        })
}
