//! Synced put throughput with group commit: `RocksStore` (`sync = true`,
//! the default) against raw RocksDB synced puts, at concurrency 1 and 64,
//! in the same run and on the same disk.
//!
//! ```text
//! cargo bench -p kvmap-rocksdb --bench group_commit
//! KVMAP_BENCH_SECONDS=5 KVMAP_BENCH_ROUNDS=3 cargo bench -p kvmap-rocksdb --bench group_commit
//! ```
//!
//! - `raw`: N OS threads, each a loop of `put_opt` with
//!   `WriteOptions::set_sync(true)` on its own keys. RocksDB's own write
//!   groups let concurrent synced writers share a WAL `fsync`, so this is
//!   the fair baseline for concurrency 64.
//! - `raw-equiv`: the same threads, each write the RocksDB work of a
//!   kvmap put (read the current value, then one synced batch of value
//!   envelope, change record with the previous value, revision counter).
//! - `kvmap`: N Tokio tasks on a 2-worker runtime, each a loop of
//!   `RocksStore::put` on its own keys (every put reads the current
//!   value, writes envelope + change record + revision and publishes an
//!   event). The writer thread commits whatever is queued as one synced
//!   batch.
//!
//! Each round runs every case for `KVMAP_BENCH_SECONDS` (default 3) on a
//! fresh database and prints puts per second, the mean group size of the
//! kvmap runs and the ratio kvmap / raw. Not a criterion bench: the
//! quantity is throughput under concurrency, not one call's latency.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvmap_core::{Context, Key, KvStore, PutOptions};
use kvmap_rocksdb::{RocksConfig, RocksStore};
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

const VALUE_LEN: usize = 100;
const KEYS_PER_WRITER: u64 = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raw synced writes by `writers` threads; `equiv`: each write is the
/// batch a kvmap put writes (a read of the current value, then value
/// envelope + change record with the previous value + revision counter),
/// so `kvmap / raw-equiv` isolates kvmap's own path (the hop to the writer
/// thread and back) from the extra bytes it syncs.
fn raw(dir: &std::path::Path, writers: u64, secs: Duration, equiv: bool) -> f64 {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.increase_parallelism(2);
    let db = Arc::new(DB::open(&o, dir).expect("open raw db"));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (db, stop, done) = (db.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut opts = WriteOptions::default();
                opts.set_sync(true);
                let value = vec![b'x'; VALUE_LEN];
                let mut i = 0u64;
                let envelope = vec![b'e'; VALUE_LEN + 25];
                let record = vec![b'r'; 2 * (VALUE_LEN + 25) + 40];
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w:02}/{:06}", i % KEYS_PER_WRITER);
                    if equiv {
                        let _ = db.get(&key).expect("raw get");
                        let mut batch = WriteBatch::default();
                        batch.put(&key, &envelope);
                        batch.put(format!("log/{w:02}/{i:012}"), &record);
                        batch.put("revision", i.to_be_bytes());
                        db.write_opt(batch, &opts).expect("raw batch");
                    } else {
                        db.put_opt(key, &value, &opts).expect("raw put");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("raw writer");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Puts per second and the mean group size (writes per commit).
fn kvmap(dir: &std::path::Path, writers: u64, secs: Duration) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = RocksStore::open(RocksConfig::new(dir)).expect("open store");
    assert!(store.config().sync, "synced writes are the default");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
                tokio::spawn(async move {
                    let ctx = Context::new();
                    let value = Bytes::from(vec![b'x'; VALUE_LEN]);
                    let keys: Vec<Key> = (0..KEYS_PER_WRITER)
                        .map(|i| Key::new(format!("w{w:02}/{i:06}")).expect("key"))
                        .collect();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let key = &keys[i % keys.len()];
                        store
                            .put(&ctx, key, value.clone(), PutOptions::default())
                            .await
                            .expect("kvmap put");
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(secs).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("kvmap writer");
        }
    });
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let stats = store.write_stats();
    let group = stats.writes as f64 / stats.commits.max(1) as f64;
    drop(store);
    drop(rt);
    (rate, group)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let secs = Duration::from_secs(env_u64("KVMAP_BENCH_SECONDS", 3));
    let rounds = env_u64("KVMAP_BENCH_ROUNDS", 2);
    println!("synced puts per second, {VALUE_LEN}-byte values, {secs:?} per case");
    println!("| round | writers | raw | raw-equiv | kvmap | kvmap / raw | kvmap / raw-equiv | kvmap writes per commit |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for round in 1..=rounds {
        for writers in [1, 64] {
            let d1 = tempfile::tempdir().expect("tempdir");
            let d2 = tempfile::tempdir().expect("tempdir");
            let d3 = tempfile::tempdir().expect("tempdir");
            let r = raw(d1.path(), writers, secs, false);
            let e = raw(d3.path(), writers, secs, true);
            let (k, group) = kvmap(d2.path(), writers, secs);
            println!(
                "| {round} | {writers} | {r:.0} | {e:.0} | {k:.0} | {:.2} | {:.2} | {group:.1} |",
                k / r,
                k / e
            );
        }
    }
}
