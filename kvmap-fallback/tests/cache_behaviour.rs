//! Near cache behaviour on real in-process stores: hits after
//! verification, read-your-writes, strong reads bypassing, TTL honoured,
//! absent keys cached and invalidated by another handle, resync after a
//! slow consumer, the chain helper.

#![allow(clippy::unwrap_used)]

#[path = "cache_common.rs"]
mod cache_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_common::wait_until;
use kvmap_core::{Consistency, Context, Key, KvStore, KvStoreExt, MemoryConfig, MemoryStore};
use kvmap_fallback::{FallbackChain, NearCache, NearCacheConfig, NEAR_CACHE_NAME};

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn config() -> NearCacheConfig {
    NearCacheConfig::default()
        .with_probe_interval(Duration::from_millis(20))
        .with_max_lag(Duration::from_secs(2))
}

async fn healthy(cache: &NearCache) {
    assert!(
        wait_until(Duration::from_secs(30), || cache.is_healthy()).await,
        "the cache never verified itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_after_the_first_read_and_read_your_writes() {
    let store = Arc::new(MemoryStore::new());
    let cache = NearCache::builder(store.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    healthy(&cache).await;
    let ctx = Context::new();
    let k = key("a");
    cache.set(&ctx, &k, "1").await.unwrap();
    let first = cache.get(&ctx, &k).await.unwrap().unwrap();
    assert_eq!(first.value, Bytes::from("1"));
    assert_eq!(first.served_by, None, "a miss is the store's entry");
    let second = cache.get(&ctx, &k).await.unwrap().unwrap();
    assert_eq!(second.value, Bytes::from("1"));
    assert_eq!(second.served_by.as_deref(), Some(NEAR_CACHE_NAME));
    assert_eq!(second.revision, first.revision);
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (1, 1), "{s:?}");
    // Read-your-writes: the write invalidates before it returns.
    for i in 2..50 {
        cache.set(&ctx, &k, i.to_string()).await.unwrap();
        let e = cache.get(&ctx, &k).await.unwrap().unwrap();
        assert_eq!(e.value, Bytes::from(i.to_string()));
        cache.remove(&ctx, &k).await.unwrap();
        assert_eq!(cache.get(&ctx, &k).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_bypass_and_foreign_writes_invalidate() {
    let store = Arc::new(MemoryStore::new());
    let cache = NearCache::builder(store.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    healthy(&cache).await;
    let ctx = Context::new();
    let k = key("b");
    store.set(&ctx, &k, "old").await.unwrap();
    // A read-through racing with the write's watch event is not cached:
    // read until the entry is (the event arrives within milliseconds).
    let mut cached = false;
    for _ in 0..3000 {
        let e = cache.get(&ctx, &k).await.unwrap().unwrap();
        if e.served_by.as_deref() == Some(NEAR_CACHE_NAME) {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cached, "never cached");
    // Another handle writes: a strong read sees it at once, a default read
    // once the watch event arrived.
    store.set(&ctx, &k, "new").await.unwrap();
    let strong = Context::new().with_consistency(Consistency::Strong);
    let e = cache.get(&strong, &k).await.unwrap().unwrap();
    assert_eq!(e.value, Bytes::from("new"));
    assert_eq!(e.served_by, None);
    let mut seen = false;
    for _ in 0..3000 {
        if cache.get(&ctx, &k).await.unwrap().unwrap().value == "new" {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the cache never saw the foreign write");
    assert!(cache.stats().invalidations >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_keys_are_cached_and_a_foreign_create_invalidates_them() {
    let store = Arc::new(MemoryStore::new());
    let cache = NearCache::builder(store.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    healthy(&cache).await;
    let ctx = Context::new();
    let k = key("c");
    assert_eq!(cache.get(&ctx, &k).await.unwrap(), None);
    assert_eq!(cache.get(&ctx, &k).await.unwrap(), None);
    assert_eq!(cache.stats().hits, 1, "absent is cached");
    store.set(&ctx, &k, "now").await.unwrap();
    let mut seen = false;
    for _ in 0..3000 {
        if cache.get(&ctx, &k).await.unwrap().is_some() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "a cached absent key outlived its creation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_never_outlives_its_ttl() {
    let store = Arc::new(MemoryStore::new());
    let cache = NearCache::builder(store.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    healthy(&cache).await;
    let ctx = Context::new();
    let k = key("ttl");
    cache
        .set_with_ttl(&ctx, &k, "v", Duration::from_millis(300))
        .await
        .unwrap();
    let e = cache.get(&ctx, &k).await.unwrap().unwrap();
    let at = e.expires_at.unwrap();
    loop {
        let now = std::time::SystemTime::now();
        let got = cache.get(&ctx, &k).await.unwrap();
        if let Some(e) = &got {
            assert!(
                e.expires_at.unwrap() > now,
                "served an entry past its expires_at"
            );
        }
        if now > at + Duration::from_millis(50) {
            assert_eq!(got, None, "served after expiry");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_drops_what_changed() {
    // A tiny watch buffer: a burst of foreign writes overflows the cache's
    // watch, the store resyncs, and the cache must still converge.
    let store = Arc::new(MemoryStore::with_config(
        MemoryConfig::default().with_watch_buffer(2),
    ));
    let cache = NearCache::builder(store.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    healthy(&cache).await;
    let ctx = Context::new();
    let keys: Vec<Key> = (0..50).map(|i| key(&format!("r/{i}"))).collect();
    for k in &keys {
        store.set(&ctx, k, "0").await.unwrap();
        cache.get(&ctx, k).await.unwrap();
    }
    for round in 1..=20 {
        for k in &keys {
            store.set(&ctx, k, round.to_string()).await.unwrap();
        }
    }
    for k in &keys {
        let mut ok = false;
        for _ in 0..3000 {
            if cache.get(&ctx, k).await.unwrap().unwrap().value == "20" {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok, "{k:?} never converged");
    }
    println!("stats after the burst: {:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_chain_and_keys_outside_the_scope_pass_through() {
    let chain = FallbackChain::builder()
        .backend("memory", Arc::new(MemoryStore::new()))
        .build()
        .await
        .unwrap();
    let cache = NearCache::over_chain(Arc::new(chain))
        .config(config().with_scope("cfg/"))
        .build()
        .await
        .unwrap();
    healthy(&cache).await;
    let ctx = Context::new();
    let inside = key("cfg/x");
    let outside = key("other");
    cache.set(&ctx, &inside, "1").await.unwrap();
    cache.set(&ctx, &outside, "1").await.unwrap();
    for _ in 0..3 {
        cache.get(&ctx, &inside).await.unwrap();
        let e = cache.get(&ctx, &outside).await.unwrap().unwrap();
        assert_eq!(
            e.served_by.as_deref(),
            Some("memory"),
            "outside: the chain's entry"
        );
    }
    let s = cache.stats();
    assert_eq!((s.hits, s.misses), (2, 1), "{s:?}");
    assert_eq!(cache.name(), NEAR_CACHE_NAME);
}
