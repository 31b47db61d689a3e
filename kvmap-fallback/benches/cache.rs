//! Near-cache figures, in the same run:
//!
//! 1. criterion: a `NearCache` hit (over `MemoryStore`, 1000 hot keys) and a
//!    raw `moka::future::Cache::get` of the same keys; the ratio is the
//!    layer's cost on a hit (target ≤ 1.5×);
//! 2. printed: hit ratio and p50/p99 read latency of a Zipf(1.1) workload
//!    over a real `redis-server` child process, with and without the cache;
//! 3. printed: invalidation lag p50/p99 — from another client's write being
//!    acknowledged to the cache serving the new value — and the watch lag
//!    of writes through the cache.
//!
//! ```text
//! cargo bench -p kvmap-fallback --bench cache -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Parts 2 and 3 print `skipped: ...` without `redis-server`
//! (`KVMAP_CACHE_BENCH_NO_REDIS=1` leaves them out).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use kvmap_core::{Context, Entry, Key, KvStore, KvStoreExt, MemoryStore};
use kvmap_fallback::{NearCache, NearCacheConfig};
use kvmap_redis::{RedisConfig, RedisStore};
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;

const HOT: usize = 1000;

fn key(i: usize) -> Key {
    Key::new(format!("z/{i:06}")).expect("valid key")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn config() -> NearCacheConfig {
    NearCacheConfig::default()
        .with_probe_interval(Duration::from_millis(100))
        .with_max_lag(Duration::from_secs(1))
}

async fn ready(cache: &NearCache) {
    let start = Instant::now();
    while !cache.is_healthy() {
        assert!(start.elapsed() < Duration::from_secs(30), "never verified");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn hit_vs_moka(c: &mut Criterion) {
    let rt = runtime();
    let keys: Vec<Key> = (0..HOT).map(key).collect();
    let store = Arc::new(MemoryStore::new());
    let ctx = Context::new();
    let cache = rt.block_on(async {
        let cache = NearCache::builder(store.clone())
            .config(config())
            .build()
            .await
            .expect("cache");
        ready(&cache).await;
        for k in &keys {
            cache.set(&ctx, k, vec![b'v'; 100]).await.expect("put");
            cache.get(&ctx, k).await.expect("fill");
        }
        cache
    });
    let raw: moka::future::Cache<Key, Arc<Entry>> = moka::future::Cache::builder()
        .max_capacity(2 << 20)
        .weigher(|k: &Key, v: &Arc<Entry>| (k.len() + v.value.len() + 64) as u32)
        .build();
    rt.block_on(async {
        for k in &keys {
            let e = store.get(&ctx, k).await.expect("get").expect("present");
            raw.insert(k.clone(), Arc::new(e)).await;
        }
        // Every key must be a hit for the comparison to mean anything.
        let before = cache.stats().hits;
        for k in &keys {
            cache.get(&ctx, k).await.expect("hit");
        }
        assert_eq!(cache.stats().hits - before, HOT as u64, "not all hits");
    });
    let mut g = c.benchmark_group("near_cache_hit");
    let mut i = 0usize;
    g.bench_function("raw_moka_get", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % HOT;
            let k = &keys[i];
            let raw = &raw;
            async move { black_box(raw.get(k).await) }
        })
    });
    // The same lookup plus what the `KvStore` contract adds to any layer:
    // an owned `Entry` (clone of key, value and label) returned through a
    // boxed future (`async_trait`).
    let label: Arc<str> = Arc::from("near-cache");
    let mut i = 0usize;
    g.bench_function("raw_moka_get_owned_entry_boxed", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % HOT;
            let k = &keys[i];
            let (raw, label) = (&raw, &label);
            let fut: std::pin::Pin<
                Box<dyn std::future::Future<Output = Option<Entry>> + Send + '_>,
            > = Box::pin(async move {
                raw.get(k)
                    .await
                    .map(|e| (*e).clone().with_served_by(label.clone()))
            });
            async move { black_box(fut.await) }
        })
    });
    let mut i = 0usize;
    g.bench_function("near_cache_get_hit", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % HOT;
            let k = &keys[i];
            let (cache, ctx) = (&cache, &ctx);
            async move { black_box(cache.get(ctx, k).await) }
        })
    });
    g.finish();
    let s = cache.stats();
    println!(
        "near cache after the hit bench: hits {} misses {}",
        s.hits, s.misses
    );
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

const ZIPF_KEYS: usize = 10_000;
const ZIPF_READS: usize = 20_000;

async fn zipf_run(label: &str, store: &dyn KvStore, seed: u64) -> Vec<Duration> {
    let zipf = Zipf::new(ZIPF_KEYS as f64, 1.1).expect("zipf");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ctx = Context::new();
    let mut lat = Vec::with_capacity(ZIPF_READS);
    let start = Instant::now();
    for _ in 0..ZIPF_READS {
        let i = rng.sample(zipf) as usize - 1;
        let t = Instant::now();
        black_box(store.get(&ctx, &key(i)).await.expect("read"));
        lat.push(t.elapsed());
    }
    let took = start.elapsed();
    let mut l = lat.clone();
    println!(
        "zipf(1.1) over {ZIPF_KEYS} keys, {ZIPF_READS} reads, {label}: p50 {:?} p99 {:?} mean {:?} ({:.0} reads/s)",
        pct(&mut l, 0.5),
        pct(&mut l, 0.99),
        took / ZIPF_READS as u32,
        ZIPF_READS as f64 / took.as_secs_f64()
    );
    lat
}

fn redis_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(server) = redis_server::server_or_skip(dir.path()) else {
        println!("skipped: the Redis figures need redis-server");
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let connect = || async {
            Arc::new(
                RedisStore::connect(RedisConfig::standalone(server.url()))
                    .await
                    .expect("connect"),
            ) as Arc<dyn KvStore>
        };
        let raw = connect().await;
        let writer = connect().await;
        let ctx = Context::new();
        for i in 0..ZIPF_KEYS {
            writer.set(&ctx, &key(i), vec![b'v'; 100]).await.expect("load");
        }
        let cache = NearCache::builder(connect().await)
            .config(config())
            .build()
            .await
            .expect("cache");
        ready(&cache).await;
        zipf_run("raw redis", raw.as_ref(), 1).await;
        zipf_run("near cache (cold start, default bounds)", &cache, 1).await;
        let s = cache.stats();
        println!(
            "near cache hit ratio {:.3} (hits {}, misses {}, entries {}, bytes {}, evictions {})",
            s.hit_ratio(),
            s.hits,
            s.misses,
            s.entries,
            s.bytes,
            s.evictions
        );

        // Invalidation lag: another client writes, the cache serves the
        // new value after ... (polled as fast as the reader can).
        let k = key(0);
        let mut lags = Vec::new();
        for n in 0..500u32 {
            let v = format!("lag-{n}");
            writer.set(&ctx, &k, v.clone()).await.expect("write");
            let t = Instant::now();
            loop {
                let e = cache.get(&ctx, &k).await.expect("read").expect("present");
                if e.value == v.as_bytes() {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "never converged");
                tokio::task::yield_now().await;
            }
            lags.push(t.elapsed());
        }
        let mut l = lags.clone();
        println!(
            "invalidation lag (foreign write acknowledged → cache serves it), {} writes: p50 {:?} p99 {:?} max {:?}",
            lags.len(),
            pct(&mut l, 0.5),
            pct(&mut l, 0.99),
            l.last().copied().unwrap_or_default()
        );
        for n in 0..500u32 {
            cache.set(&ctx, &key(1), format!("own-{n}")).await.expect("own write");
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let w = cache.stats().own_write_lag;
        println!(
            "watch lag of writes through the cache, {} samples: p50 {:?} p99 {:?} max {:?}",
            w.samples, w.p50, w.p99, w.max
        );
    });
    drop(server);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    hit_vs_moka(&mut c);
    c.final_summary();
    if std::env::var_os("KVMAP_CACHE_BENCH_NO_REDIS").is_none() {
        redis_figures();
    }
}
