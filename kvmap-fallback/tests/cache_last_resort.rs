//! The last resort over a chain: every backend of the chain is switched
//! off (a real `MemoryStore` behind a switch, its breaker opens); reads of
//! cached keys are answered by the near cache marked stale within
//! `max_staleness`, uncached and absent keys fail, and beyond
//! `max_staleness` cached keys fail too. Switched on again, the cache
//! serves fresh values.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{key, Switch};
use kvmap_core::{Context, ErrorKind, KvStore, KvStoreExt, MemoryStore};
use kvmap_fallback::{BreakerConfig, ChainConfig, FallbackChain, NearCache, NearCacheConfig};

const MAX_STALENESS: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_down_serves_cached_entries_marked_stale_then_the_error() {
    let switch = Switch::new("primary", Arc::new(MemoryStore::new()));
    let chain = FallbackChain::builder()
        .backend("primary", switch.clone())
        .config(
            ChainConfig::default().with_breaker(
                BreakerConfig::default()
                    .with_failure_threshold(2)
                    .with_cool_down(Duration::from_millis(200)),
            ),
        )
        .build()
        .await
        .unwrap();
    let cache = NearCache::over_chain(Arc::new(chain))
        .config(
            NearCacheConfig::default()
                .with_probe_interval(Duration::from_millis(50))
                .with_max_lag(Duration::from_millis(500))
                .with_max_staleness(MAX_STALENESS),
        )
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    while !cache.is_healthy() {
        assert!(start.elapsed() < Duration::from_secs(30), "never verified");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ctx = Context::new();
    let (cached, absent, uncached) = (key("lr/cached"), key("lr/absent"), key("lr/uncached"));
    cache.set(&ctx, &cached, "v").await.unwrap();
    cache.set(&ctx, &uncached, "u").await.unwrap();
    cache.get(&ctx, &cached).await.unwrap();
    assert_eq!(cache.get(&ctx, &absent).await.unwrap(), None);

    switch.set_down(true);
    let mut stale = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_err = loop {
        assert!(
            Instant::now() < deadline,
            "never failed beyond max_staleness"
        );
        match cache.get(&ctx, &cached).await {
            Ok(Some(e)) => {
                assert_eq!(e.value, Bytes::from("v"));
                assert_eq!(e.served_by.as_deref(), Some("near-cache"));
                if let Some(s) = e.staleness {
                    assert!(s <= MAX_STALENESS, "{s:?}");
                    stale += 1;
                }
            }
            Ok(None) => panic!("a cached key read as absent"),
            Err(e) => break e.kind(),
        }
        if stale > 0 {
            // Uncached and absent keys are never answered stale.
            assert!(cache.get(&ctx, &uncached).await.is_err());
            assert!(cache.get(&ctx, &absent).await.is_err());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        stale > 0,
        "nothing was served from the cache while the chain was down"
    );
    assert!(
        matches!(last_err, ErrorKind::Unavailable | ErrorKind::CircuitOpen),
        "{last_err:?}"
    );
    assert!(cache.stats().staleness.unwrap() > MAX_STALENESS);
    println!(
        "chain down: {stale} stale serves, then {last_err:?}; {:?}",
        cache.stats()
    );

    switch.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "never recovered");
        if let Ok(Some(e)) = cache.get(&ctx, &cached).await {
            if e.staleness.is_none() {
                assert_eq!(e.value, Bytes::from("v"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
