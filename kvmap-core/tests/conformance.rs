//! The conformance suite against the in-memory reference store.
//!
//! The store hides an expired entry at once, so the expiry grace is zero
//! (the strict-invisibility case runs). It is not durable: no reopen hook,
//! the durability case is skipped.

use std::sync::Arc;
use std::time::Duration;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::{KvStore, MemoryConfig, MemoryStore};

const HISTORY: usize = 200;
const BUFFER: usize = 16;

fn main() -> std::process::ExitCode {
    let options = SuiteOptions {
        history_limit: Some(HISTORY),
        watch_buffer: Some(BUFFER),
        expiry_grace: Duration::ZERO,
        ..SuiteOptions::default()
    };
    Suite::new("memory").with_options(options).run(|| async {
        let config = MemoryConfig::default()
            .with_history_limit(HISTORY)
            .with_watch_buffer(BUFFER);
        Ok(Arc::new(MemoryStore::with_config(config)) as Arc<dyn KvStore>)
    })
}
