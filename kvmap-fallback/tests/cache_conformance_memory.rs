//! The conformance suite on a `NearCache` over `MemoryStore`
//! (`conformance::near_cache::memory::*`).

#[path = "cache_common.rs"]
mod cache_common;

use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::{MemoryConfig, MemoryStore};

const HISTORY: usize = 200;
const BUFFER: usize = 16;

fn main() -> std::process::ExitCode {
    Suite::new("near_cache::memory")
        .with_options(SuiteOptions {
            history_limit: Some(HISTORY),
            watch_buffer: Some(BUFFER),
            ..SuiteOptions::default()
        })
        .run(|| async {
            let store = MemoryStore::with_config(
                MemoryConfig::default()
                    .with_history_limit(HISTORY)
                    .with_watch_buffer(BUFFER),
            );
            cache_common::cache_over(Arc::new(store)).await
        })
}
