//! The cost of the fallback layers over a healthy backend, in the same
//! run: get and put on a bare RocksDB store, on a `Breaker` in front of
//! it, and on a `FallbackChain` of that one store (reject policy, no
//! fallbacks: the routing, breaker and bookkeeping only); plus the pure
//! breaker state machine per call.
//!
//! ```text
//! cargo bench -p kvmap-fallback --bench chain -- --warm-up-time 1 --measurement-time 3
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use kvmap_core::{Context, Key, KvStore, KvStoreExt, PutOptions};
use kvmap_fallback::breaker::{Admission, CircuitBreaker, Outcome};
use kvmap_fallback::{Breaker, BreakerConfig, FallbackChain};
use kvmap_rocksdb::{RocksConfig, RocksStore};

const KEYS: u64 = 10_000;

fn key(i: u64) -> Key {
    Key::new(format!("k/{i:06}")).expect("valid key")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let bare: Arc<dyn KvStore> =
        Arc::new(RocksStore::open(RocksConfig::new(dir.path().join("db"))).expect("open rocksdb"));
    let breaker: Arc<dyn KvStore> = Arc::new(Breaker::new(bare.clone(), BreakerConfig::default()));
    let chain: Arc<dyn KvStore> = Arc::new(
        rt.block_on(
            FallbackChain::builder()
                .backend("rocksdb", bare.clone())
                .build(),
        )
        .expect("chain"),
    );
    let ctx = Context::new();
    rt.block_on(async {
        for i in 0..KEYS {
            bare.set(&ctx, &key(i), vec![b'v'; 100])
                .await
                .expect("load");
        }
    });
    let keys: Vec<Key> = (0..KEYS).map(key).collect();

    let mut g = c.benchmark_group("get");
    for (name, store) in [("bare", &bare), ("breaker", &breaker), ("chain", &chain)] {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % keys.len();
                let k = &keys[i];
                let s = store.clone();
                let ctx = &ctx;
                async move { black_box(s.get(ctx, k).await.expect("get")) }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("put");
    for (name, store) in [("bare", &bare), ("breaker", &breaker), ("chain", &chain)] {
        let mut i = 0usize;
        let value = bytes::Bytes::from(vec![b'w'; 100]);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % keys.len();
                let k = &keys[i];
                let s = store.clone();
                let v = value.clone();
                let ctx = &ctx;
                async move { black_box(s.put(ctx, k, v, PutOptions::default()).await.expect("put")) }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("breaker_machine");
    let now = tokio::time::Instant::now();
    let mut m = CircuitBreaker::new(BreakerConfig::default(), now);
    g.bench_function("admit_and_record", |b| {
        b.iter(|| {
            if let (Admission::Allowed(p), _) = m.admit(black_box(now)) {
                black_box(m.record(now, p, Outcome::Success));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
