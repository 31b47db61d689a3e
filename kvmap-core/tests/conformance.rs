//! The conformance suite against the in-memory reference store.

use std::sync::Arc;

use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::{KvStore, MemoryConfig, MemoryStore};

const HISTORY: usize = 200;
const BUFFER: usize = 16;

fn main() -> std::process::ExitCode {
    let options = SuiteOptions {
        history_limit: Some(HISTORY),
        watch_buffer: Some(BUFFER),
        ..SuiteOptions::default()
    };
    Suite::new("memory").with_options(options).run(|| async {
        let config = MemoryConfig::default()
            .with_history_limit(HISTORY)
            .with_watch_buffer(BUFFER);
        Ok(Arc::new(MemoryStore::with_config(config)) as Arc<dyn KvStore>)
    })
}
