//! The conformance suite against the in-memory reference store.

use std::sync::Arc;

use kvmap_core::conformance::Suite;
use kvmap_core::{KvStore, MemoryStore};

fn main() -> std::process::ExitCode {
    Suite::new("memory").run(|| async { Ok(Arc::new(MemoryStore::new()) as Arc<dyn KvStore>) })
}
