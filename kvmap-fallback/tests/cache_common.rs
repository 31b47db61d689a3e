//! Shared pieces of the near-cache tests: the cache configuration the
//! conformance runs use, and a wait-for-condition helper.

#![allow(dead_code, clippy::unwrap_used)] // test helpers

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmap_core::KvStore;
use kvmap_fallback::{NearCache, NearCacheConfig};

/// A near cache over `store` that verifies itself every 50 ms (so it
/// serves from the cache soon after it is built).
pub(crate) async fn cache_over(store: Arc<dyn KvStore>) -> kvmap_core::Result<Arc<dyn KvStore>> {
    let cache = NearCache::builder(store)
        .config(
            NearCacheConfig::default()
                .with_probe_interval(Duration::from_millis(50))
                .with_max_lag(Duration::from_secs(2)),
        )
        .build()
        .await?;
    Ok(Arc::new(cache) as Arc<dyn KvStore>)
}

/// Waits (polling every 10 ms, at most `limit`) until `f` holds.
pub(crate) async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
