//! The bounds hold under 10^5 distinct keys with values of mixed sizes:
//! entries and bytes sampled throughout, sequentially (the bound exactly)
//! and with concurrent readers (the bound plus one install in flight per
//! reader).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvmap_core::{Batch, Context, Key, KvStore, MemoryStore};
use kvmap_fallback::{NearCache, NearCacheConfig, NearCacheStats};
use rand::{Rng, SeedableRng};

const KEYS: usize = 100_000;

/// 10^5 keys, values from 10 bytes to 16 KiB (most small, some large).
async fn filled_store() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ctx = Context::new();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
        let mut batch = Batch::new();
        for &i in chunk {
            let size = match rng.random_range(0..100) {
                0..=79 => rng.random_range(10..200),
                80..=97 => rng.random_range(200..4096),
                _ => rng.random_range(4096..16384),
            };
            batch = batch.put(
                Key::new(format!("b/{i:06}")).unwrap(),
                Bytes::from(vec![b'x'; size]),
            );
        }
        for r in store.apply(&ctx, batch).await.unwrap() {
            r.unwrap();
        }
    }
    store
}

async fn cache(store: Arc<MemoryStore>, entries: u64, bytes: u64) -> Arc<NearCache> {
    let cache = NearCache::builder(store)
        .config(
            NearCacheConfig::default()
                .with_max_entries(entries)
                .with_max_bytes(bytes)
                .with_probe_interval(Duration::from_millis(50))
                .with_max_lag(Duration::from_secs(5)),
        )
        .build()
        .await
        .unwrap();
    let start = Instant::now();
    while !cache.is_healthy() {
        assert!(start.elapsed() < Duration::from_secs(30), "never verified");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Arc::new(cache)
}

fn check(s: &NearCacheStats, entries: u64, bytes: u64, slack: u64, max_entry: u64) {
    assert!(
        s.entries <= entries + slack,
        "entries {} > {entries} + {slack}: {s:?}",
        s.entries
    );
    assert!(
        s.bytes <= bytes + slack * max_entry,
        "bytes {} > {bytes} + {slack}×{max_entry}: {s:?}",
        s.bytes
    );
}

async fn sequential(entries: u64, bytes: u64) {
    let store = filled_store().await;
    let cache = cache(store, entries, bytes).await;
    let ctx = Context::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut max_e, mut max_b) = (0, 0);
    for n in 0..KEYS {
        // Half the reads on 200 hot keys, half spread over all 10^5.
        let i = if n % 2 == 0 {
            rng.random_range(0..200)
        } else {
            rng.random_range(0..KEYS)
        };
        let k = Key::new(format!("b/{i:06}")).unwrap();
        assert!(cache.get(&ctx, &k).await.unwrap().is_some());
        if n % 100 == 0 {
            let s = cache.stats();
            check(&s, entries, bytes, 0, 0);
            max_e = max_e.max(s.entries);
            max_b = max_b.max(s.bytes);
        }
    }
    cache.run_pending_tasks().await;
    let s = cache.stats();
    check(&s, entries, bytes, 0, 0);
    println!(
        "bounds {entries} entries / {bytes} bytes: max sampled {max_e} entries, {max_b} bytes; final {s:?}; hit ratio {:.3}",
        s.hit_ratio()
    );
    assert!(s.evictions > 0, "10^5 keys must evict: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_bounds_hold_sequentially() {
    sequential(1024, 2 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_bound_tighter_than_the_entry_bound_holds() {
    sequential(10_000, 256 << 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_hold_with_concurrent_readers() {
    const READERS: u64 = 4;
    let store = filled_store().await;
    let cache = cache(store, 1024, 2 << 20).await;
    let max_entry = cache.config().max_entry_bytes;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut max_e, mut max_b) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let s = cache.stats();
                check(&s, 1024, 2 << 20, READERS, max_entry);
                max_e = max_e.max(s.entries);
                max_b = max_b.max(s.bytes);
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (n, max_e, max_b)
        })
    };
    let mut readers = Vec::new();
    for r in 0..READERS {
        let cache = cache.clone();
        readers.push(tokio::spawn(async move {
            let ctx = Context::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + r);
            for _ in 0..(KEYS as u64 / READERS) {
                let i = rng.random_range(0..KEYS);
                let k = Key::new(format!("b/{i:06}")).unwrap();
                cache.get(&ctx, &k).await.unwrap();
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (n, max_e, max_b) = sampler.await.unwrap();
    cache.run_pending_tasks().await;
    let s = cache.stats();
    check(&s, 1024, 2 << 20, 0, 0);
    println!("{READERS} concurrent readers: {n} samples, max {max_e} entries, {max_b} bytes; final {s:?}");
}
