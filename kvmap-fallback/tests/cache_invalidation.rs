//! Invalidation under a second writer: another handle writes a counter
//! while this one reads it through its near cache. Asserts only that the
//! reader converges on every write and never reads a value older than one
//! it already saw (monotonic reads); prints how long the cache served the
//! old value after each acknowledged foreign write.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // the fault helpers are for the partition test
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvmap_core::{Context, Key, KvStore, KvStoreExt, MemoryStore};
use kvmap_fallback::{NearCache, NearCacheConfig};
use kvmap_redis::{RedisConfig, RedisStore};

const WRITES: u64 = 300;

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn pct(v: &[Duration], q: f64) -> Duration {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The second writer writes 1..=WRITES to one key (with a pause between
/// writes); the reader loops on its cache. Returns the per-write lags.
async fn run(label: &str, cache: Arc<NearCache>, writer: Arc<dyn KvStore>) {
    let ctx = Context::new();
    let k = key("inv/counter");
    writer.set(&ctx, &k, "0").await.unwrap();
    assert!(
        cache_ready(&cache).await,
        "{label}: the cache never verified itself"
    );
    // When each value was acknowledged to the writer (µs since start).
    let start = Instant::now();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..=WRITES).map(|_| AtomicU64::new(0)).collect());
    let first_seen: Arc<Mutex<Vec<Option<Duration>>>> =
        Arc::new(Mutex::new(vec![None; WRITES as usize + 1]));
    let reader = {
        let (cache, k, first_seen) = (cache.clone(), k.clone(), first_seen.clone());
        tokio::spawn(async move {
            let ctx = Context::new();
            let mut highest = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while highest < WRITES {
                assert!(
                    Instant::now() < deadline,
                    "reader never converged (at {highest})"
                );
                let e = cache.get(&ctx, &k).await.unwrap().unwrap();
                let v: u64 = std::str::from_utf8(&e.value).unwrap().parse().unwrap();
                assert!(v >= highest, "non-monotonic read: {v} after {highest}");
                if v > highest {
                    let mut f = first_seen.lock().unwrap();
                    for slot in f.iter_mut().take(v as usize + 1).skip(highest as usize + 1) {
                        slot.get_or_insert(start.elapsed());
                    }
                    highest = v;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for i in 1..=WRITES {
        writer.set(&ctx, &k, i.to_string()).await.unwrap();
        let at = u64::try_from(start.elapsed().as_micros()).unwrap();
        acked[i as usize].store(at, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    reader.await.unwrap();
    let seen = first_seen.lock().unwrap().clone();
    // A value the reader skipped (overwritten before it looked) counts from
    // its acknowledgement to the first read of a newer one.
    let mut lags: Vec<Duration> = (1..=WRITES as usize)
        .filter_map(|i| {
            let ack = Duration::from_micros(acked[i].load(Ordering::SeqCst));
            seen[i].map(|s| s.saturating_sub(ack))
        })
        .collect();
    lags.sort_unstable();
    let s = cache.stats();
    println!(
        "{label}: {} foreign writes, cache served the old value for p50 {:?}, p90 {:?}, p99 {:?}, max {:?} after the ack; hits {} misses {} invalidations {} fills rejected {} resyncs {}",
        lags.len(),
        pct(&lags, 0.5),
        pct(&lags, 0.9),
        pct(&lags, 0.99),
        lags.last().unwrap(),
        s.hits,
        s.misses,
        s.invalidations,
        s.fills_rejected,
        s.resyncs
    );
    assert_eq!(lags.len(), WRITES as usize);
}

async fn cache_ready(cache: &NearCache) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if cache.is_healthy() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn config() -> NearCacheConfig {
    NearCacheConfig::default()
        .with_probe_interval(Duration::from_millis(50))
        .with_max_lag(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_on_memory() {
    let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let cache = NearCache::builder(store.clone())
        .config(config())
        .build()
        .await
        .unwrap();
    run("memory", Arc::new(cache), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_writer_on_redis() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = redis_server::server_or_skip(dir.path()) else {
        return;
    };
    // Two connections: the writer is another client of the same server.
    let reader = RedisStore::connect(RedisConfig::standalone(server.url()))
        .await
        .unwrap();
    let writer = RedisStore::connect(RedisConfig::standalone(server.url()))
        .await
        .unwrap();
    let cache = NearCache::builder(Arc::new(reader))
        .config(config())
        .build()
        .await
        .unwrap();
    run("redis", Arc::new(cache), Arc::new(writer)).await;
    drop(server);
}
