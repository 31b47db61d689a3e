//! Locks on the in-process stores (RocksDB and memory), in one run:
//! uncontended acquire + release against one `get` of the same store, and
//! hand-overs per second with 4 tasks contending for one key.
//!
//! ```text
//! cargo bench -p kvmap-rocksdb --bench lock -- --warm-up-time 1 --measurement-time 3
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn
#![allow(clippy::unwrap_used)] // a benchmark: unwrap is fine

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use kvmap_core::{Context, Key, KvStore, LockOptions, MemoryStore, PutOptions};
use kvmap_rocksdb::{RocksConfig, RocksStore};

const TASKS: usize = 4;

fn bench_store(c: &mut Criterion, name: &str, store: Arc<dyn KvStore>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctx = Context::new();
    let data = Key::new("bench/data").unwrap();
    let lock = Key::new("bench/lock").unwrap();
    rt.block_on(store.put(&ctx, &data, Bytes::from_static(b"v"), PutOptions::default()))
        .unwrap();
    let mut g = c.benchmark_group(format!("lock/{name}"));
    g.bench_function("get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.get(&ctx, &data).await.unwrap()) });
    });
    g.bench_function("acquire+release", |b| {
        b.to_async(&rt).iter(|| async {
            let guard = store
                .lock(&ctx, &lock, LockOptions::try_lock(Duration::from_secs(10)))
                .await
                .unwrap();
            guard.release().await.unwrap();
        });
    });
    // Contended: TASKS tasks each take the lock `n / TASKS` times; the
    // time per acquisition over all of them.
    g.bench_function("contended acquire+release (4 tasks)", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            let lock = lock.clone();
            async move {
                let per = iters.div_ceil(TASKS as u64);
                let start = Instant::now();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let (store, lock) = (store.clone(), lock.clone());
                        tokio::spawn(async move {
                            let ctx = Context::new().with_timeout(Duration::from_secs(60));
                            for _ in 0..per {
                                let g = store
                                    .lock(&ctx, &lock, LockOptions::new(Duration::from_secs(10)))
                                    .await
                                    .unwrap();
                                g.release().await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
        });
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(RocksConfig::new(dir.path().join("db"))).unwrap();
    bench_store(c, "rocksdb", Arc::new(rocks));
    bench_store(c, "memory", Arc::new(MemoryStore::new()));
}

criterion_group!(lock, benches);
criterion_main!(lock);
