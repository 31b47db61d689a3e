//! RocksStore against the raw `rocksdb` crate on the same data, in the
//! same run: get, put, apply(1000), list(100) at 10^4 and 10^6 keys.
//!
//! `raw` does what a user of the bare crate would do (one `get`, one
//! `put`, one `WriteBatch`, one bounded iterator). `raw-equiv` does, by
//! hand, the RocksDB work a kvmap write needs (read the current value,
//! write the value envelope, a change-log record and the revision counter
//! in one `WriteBatch`), so `kvmap / raw-equiv` is the cost of kvmap
//! itself and `kvmap / raw` the cost of the features.
//!
//! ```text
//! cargo bench -p kvmap-rocksdb --bench rocks -- --warm-up-time 1 --measurement-time 3
//! ```
//! `KVMAP_BENCH_SIZES=10000` limits the sizes.
//!
//! Both sides write without `fsync` (`sync = false`, RocksDB's default)
//! so this measures the code paths; synced writes and group commit are
//! measured by the `group_commit` bench.

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kvmap_core::{Batch, Context, Key, KvStore, ListRequest, PutOptions};
use kvmap_rocksdb::{RocksConfig, RocksStore};
use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, ReadOptions, WriteBatch, DB};

const VALUE_LEN: usize = 100;
const CACHE: usize = 64 << 20;

fn key(i: u64) -> String {
    format!("k/{i:010}")
}

/// A small deterministic generator (the same sequence for both sides).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The raw database, tuned like the store's column families.
fn open_raw(path: &std::path::Path) -> DB {
    let cache = Cache::new_lru_cache(CACHE);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_block_based_table_factory(&table);
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    o.increase_parallelism(2);
    DB::open(&o, path).expect("open raw db")
}

struct Fixture {
    n: u64,
    rt: tokio::runtime::Runtime,
    store: RocksStore,
    raw: DB,
    keys: Vec<Key>,
    value: Bytes,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn load(n: u64) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kv_dir = tempfile::tempdir().expect("tempdir");
    let raw_dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(
        RocksConfig::new(kv_dir.path())
            .with_block_cache_bytes(CACHE)
            .with_sync(false),
    )
    .expect("open store");
    let raw = open_raw(raw_dir.path());
    let value = Bytes::from(vec![b'x'; VALUE_LEN]);
    let keys: Vec<Key> = (0..n).map(|i| Key::new(key(i)).expect("key")).collect();
    let started = std::time::Instant::now();
    let ctx = Context::new();
    for chunk in keys.chunks(1000) {
        let mut batch = Batch::new();
        let mut wb = WriteBatch::default();
        for k in chunk {
            batch = batch.put(k.clone(), value.clone());
            wb.put(k.as_str(), &value);
        }
        rt.block_on(store.apply(&ctx, batch)).expect("load store");
        raw.write(wb).expect("load raw");
    }
    store.compact().expect("compact store");
    raw.compact_range(None::<&[u8]>, None::<&[u8]>);
    eprintln!("loaded {n} keys into both in {:?}", started.elapsed());
    Fixture {
        n,
        rt,
        store,
        raw,
        keys,
        value,
        _dirs: (kv_dir, raw_dir),
    }
}

/// Closes `store` and opens its path again with `config`.
fn reopen(store: &mut RocksStore, config: RocksConfig) -> RocksStore {
    // Swap in a throwaway store so the old handle can be dropped first.
    let dir = tempfile::tempdir().expect("tempdir");
    let old = std::mem::replace(
        store,
        RocksStore::open(RocksConfig::new(dir.path())).expect("placeholder"),
    );
    drop(old);
    RocksStore::open(config).expect("reopen")
}

fn bench_size(c: &mut Criterion, n: u64) {
    let mut fx = load(n);
    let mut g = c.benchmark_group(format!("n={n}"));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let ctx = Context::new();

    // --- get ---
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    g.bench_function("get/raw", |b| {
        b.iter(|| {
            let k = &fx.keys[r.below(fx.n) as usize];
            let v = fx.raw.get_pinned(k.as_str()).expect("get");
            black_box(v.map(|v| Bytes::copy_from_slice(&v)))
        })
    });
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    g.bench_function("get/kvmap", |b| {
        b.to_async(&fx.rt).iter(|| {
            let k = &fx.keys[r.below(fx.n) as usize];
            let (s, ctx) = (&fx.store, &ctx);
            async move { black_box(s.get(ctx, k).await.expect("get")) }
        })
    });
    if n <= 10_000 {
        // The same data, reads on a blocking thread: the cost of the
        // hand-off that `offload_reads = false` avoids. (A second handle
        // on the path would be locked out, so close and reopen.)
        let cfg = fx.store.config().clone();
        fx.store = reopen(&mut fx.store, cfg.clone().with_offload_reads(true));
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        g.bench_function("get/kvmap-offload", |b| {
            b.to_async(&fx.rt).iter(|| {
                let k = &fx.keys[r.below(fx.n) as usize];
                let (s, ctx) = (&fx.store, &ctx);
                async move { black_box(s.get(ctx, k).await.expect("get")) }
            })
        });
        fx.store = reopen(&mut fx.store, cfg);
    }

    // --- list(100) --- (before the writes, on the freshly compacted data:
    // overwrites leave versions in the memtable that iterators must skip)
    let mut r = Rng(13);
    g.bench_function("list100/raw", |b| {
        b.iter(|| {
            let start = &fx.keys[r.below(fx.n.saturating_sub(100).max(1)) as usize];
            let mut o = ReadOptions::default();
            o.set_iterate_lower_bound(start.as_str().as_bytes().to_vec());
            let mut it = fx.raw.raw_iterator_opt(o);
            it.seek_to_first();
            let mut out = Vec::with_capacity(100);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                out.push((k.to_vec(), Bytes::copy_from_slice(v)));
                if out.len() == 100 {
                    break;
                }
                it.next();
            }
            black_box(out)
        })
    });
    let mut r = Rng(13);
    g.bench_function("list100/kvmap", |b| {
        b.to_async(&fx.rt).iter(|| {
            let start = fx.keys[r.below(fx.n.saturating_sub(100).max(1)) as usize].as_str();
            let req = ListRequest::range(start, None).with_limit(100);
            let (s, ctx) = (&fx.store, &ctx);
            async move { black_box(s.list(ctx, &req).await.expect("list")) }
        })
    });
    // --- put ---
    let mut r = Rng(7);
    g.bench_function("put/raw", |b| {
        b.iter(|| {
            let k = &fx.keys[r.below(fx.n) as usize];
            fx.raw.put(k.as_str(), &fx.value).expect("put")
        })
    });
    let mut r = Rng(7);
    let mut rev = 10 * fx.n;
    g.bench_function("put/raw-equiv", |b| {
        b.iter(|| {
            let k = &fx.keys[r.below(fx.n) as usize];
            rev += 1;
            raw_equiv_put(&fx.raw, k.as_str(), &fx.value, rev)
        })
    });
    let mut r = Rng(7);
    g.bench_function("put/kvmap", |b| {
        b.to_async(&fx.rt).iter(|| {
            let k = &fx.keys[r.below(fx.n) as usize];
            let (s, ctx, v) = (&fx.store, &ctx, fx.value.clone());
            async move { s.put(ctx, k, v, PutOptions::default()).await.expect("put") }
        })
    });

    // --- apply(1000) ---
    let mut r = Rng(11);
    let mut pick = move |n: u64| -> Vec<usize> { (0..1000).map(|_| r.below(n) as usize).collect() };
    g.bench_function("apply1000/raw", |b| {
        b.iter_batched(
            || pick(fx.n),
            |idx| {
                let mut wb = WriteBatch::default();
                for i in idx {
                    wb.put(fx.keys[i].as_str(), &fx.value);
                }
                fx.raw.write(wb).expect("write")
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("apply1000/raw-equiv", |b| {
        b.iter_batched(
            || pick(fx.n),
            |idx| {
                rev += 1000;
                raw_equiv_apply(&fx.raw, &fx.keys, &idx, &fx.value, rev)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("apply1000/kvmap", |b| {
        b.to_async(&fx.rt).iter_batched(
            || {
                let mut batch = Batch::new();
                for i in pick(fx.n) {
                    batch = batch.put(fx.keys[i].clone(), fx.value.clone());
                }
                batch
            },
            |batch| {
                let (s, ctx) = (&fx.store, &ctx);
                async move { s.apply(ctx, batch).await.expect("apply") }
            },
            BatchSize::SmallInput,
        )
    });

    g.finish();
}

/// What a kvmap put does in RocksDB, by hand: read, then value envelope +
/// change record (new and previous value) + revision in one batch.
fn raw_equiv_put(db: &DB, k: &str, value: &[u8], rev: u64) {
    let prev = db.get_pinned(k).expect("get");
    let mut env = Vec::with_capacity(25 + value.len());
    env.push(1);
    env.extend_from_slice(&rev.to_be_bytes());
    env.extend_from_slice(&rev.to_be_bytes());
    env.extend_from_slice(&0u64.to_be_bytes());
    env.extend_from_slice(value);
    let mut rec = Vec::with_capacity(64 + 2 * env.len());
    rec.extend_from_slice(k.as_bytes());
    rec.extend_from_slice(&env);
    if let Some(p) = &prev {
        rec.extend_from_slice(p);
    }
    let mut wb = WriteBatch::default();
    wb.put(k, &env);
    wb.put(format!("log/{rev:020}"), &rec);
    wb.put("meta/revision", rev.to_be_bytes());
    db.write(wb).expect("write");
}

fn raw_equiv_apply(db: &DB, keys: &[Key], idx: &[usize], value: &[u8], rev: u64) {
    let ks: Vec<&str> = idx.iter().map(|&i| keys[i].as_str()).collect();
    let prevs = db.multi_get(ks.iter().map(|k| k.as_bytes()));
    let mut wb = WriteBatch::default();
    for (j, (k, prev)) in ks.iter().zip(prevs).enumerate() {
        let r = rev + j as u64;
        let mut env = Vec::with_capacity(25 + value.len());
        env.push(1);
        env.extend_from_slice(&r.to_be_bytes());
        env.extend_from_slice(&r.to_be_bytes());
        env.extend_from_slice(&0u64.to_be_bytes());
        env.extend_from_slice(value);
        let mut rec = Vec::with_capacity(64 + 2 * env.len());
        rec.extend_from_slice(k.as_bytes());
        rec.extend_from_slice(&env);
        if let Ok(Some(p)) = &prev {
            rec.extend_from_slice(p);
        }
        wb.put(k, &env);
        wb.put(format!("log/{r:020}"), &rec);
    }
    wb.put("meta/revision", rev.to_be_bytes());
    db.write(wb).expect("write");
}

fn benches(c: &mut Criterion) {
    let sizes: Vec<u64> = std::env::var("KVMAP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 1_000_000]);
    for n in sizes {
        bench_size(c, n);
    }
}

criterion_group!(rocks, benches);
criterion_main!(rocks);
