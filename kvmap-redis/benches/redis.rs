//! kvmap-redis against the raw `redis` cluster connection on the same
//! cluster, in the same run.
//!
//! `cargo bench -p kvmap-redis --bench redis` starts a 3+3 cluster through
//! the integration-test harness, or uses the cluster whose seed URLs are in
//! `KVMAP_BENCH_REDIS_URLS` (comma-separated). Besides criterion's groups
//! (get/put at concurrency 1 and 64, kvmap vs raw), it prints the batch
//! throughput of 10k-key `get_many`/`apply` next to `redis-benchmark -P 64`
//! on the same cluster, the watch latency p50/p99, and the lock figures:
//! uncontended acquire+release latency as a ratio to one `get` round trip
//! (kvmap `get` and raw `GET`, same cluster, same run), and contended
//! handoffs per second (4 tasks taking turns on one key).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use futures::StreamExt;
use kvmap_core::{Batch, Context, Key, KvStore, KvStoreExt, LockOptions, WatchEvent, WatchRequest};
use kvmap_redis::{RedisConfig, RedisStore};
use redis::AsyncCommands;

const BATCH: usize = 10_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench_single(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
    quiet: &RedisStore,
    raw: &redis::cluster_async::ClusterConnection,
) {
    let ctx = Context::new();
    let key = Key::new("bench/k").expect("key");
    let value = Bytes::from(vec![b'x'; 100]);
    rt.block_on(async {
        store.set(&ctx, &key, value.clone()).await.expect("seed");
        let mut r = raw.clone();
        let _: () = r
            .set("raw:bench/k", value.as_ref())
            .await
            .expect("seed raw");
    });
    for conc in [1usize, 64] {
        let mut g = c.benchmark_group(format!("get_c{conc}"));
        g.bench_function("kvmap", |b| {
            b.to_async(rt).iter(|| async {
                let futs = (0..conc).map(|_| store.get(&ctx, &key));
                for r in futures::future::join_all(futs).await {
                    r.expect("get");
                }
            })
        });
        g.bench_function("raw", |b| {
            b.to_async(rt).iter(|| async {
                let futs = (0..conc).map(|_| {
                    let mut r = raw.clone();
                    async move { r.get::<_, Vec<u8>>("raw:bench/k").await }
                });
                for r in futures::future::join_all(futs).await {
                    r.expect("get");
                }
            })
        });
        g.bench_function("raw_hmget_same_key", |b| {
            b.to_async(rt).iter(|| async {
                let futs = (0..conc).map(|_| {
                    let mut r = raw.clone();
                    async move {
                        redis::cmd("HMGET")
                            .arg("kvmap:bench/k")
                            .arg(&["v", "r", "c", "e"])
                            .query_async::<redis::Value>(&mut r)
                            .await
                    }
                });
                for r in futures::future::join_all(futs).await {
                    r.expect("hmget");
                }
            })
        });
        g.finish();
        let mut g = c.benchmark_group(format!("put_c{conc}"));
        g.bench_function("kvmap_no_change_events", |b| {
            b.to_async(rt).iter(|| async {
                let futs = (0..conc).map(|_| quiet.set(&ctx, &key, value.clone()));
                for r in futures::future::join_all(futs).await {
                    r.expect("put");
                }
            })
        });
        g.bench_function("kvmap", |b| {
            b.to_async(rt).iter(|| async {
                let futs = (0..conc).map(|_| store.set(&ctx, &key, value.clone()));
                for r in futures::future::join_all(futs).await {
                    r.expect("put");
                }
            })
        });
        g.bench_function("raw", |b| {
            b.to_async(rt).iter(|| async {
                let futs = (0..conc).map(|_| {
                    let mut r = raw.clone();
                    let v = value.clone();
                    async move { r.set::<_, _, ()>("raw:bench/k", v.as_ref()).await }
                });
                for r in futures::future::join_all(futs).await {
                    r.expect("set");
                }
            })
        });
        g.finish();
    }
}

fn redis_benchmark(port: u16, test: &str) -> Option<f64> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["--cluster", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-t", test, "-n", "200000", "-P", "64", "-r", "10000", "-d", "100", "-q",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let upper = test.to_uppercase();
    text.split(['\n', '\r'])
        .filter_map(|l| l.trim().strip_prefix(&format!("{upper}: ")))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
}

fn batch_throughput(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
    quiet: &RedisStore,
    port: Option<u16>,
) {
    let ctx = Context::new();
    let keys: Vec<Key> = (0..BATCH)
        .map(|i| Key::new(format!("bench/b/{i}")).expect("key"))
        .collect();
    let value = Bytes::from(vec![b'x'; 100]);
    let rounds = 5;
    let (apply_s, get_s) = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..rounds {
            let batch = keys
                .iter()
                .fold(Batch::new(), |b, k| b.put(k.clone(), value.clone()));
            let out = store.apply(&ctx, batch).await.expect("apply");
            assert!(out.iter().all(Result::is_ok));
        }
        let apply = t.elapsed();
        let t = Instant::now();
        for _ in 0..rounds {
            let out = store.get_many(&ctx, &keys).await.expect("get_many");
            assert!(out.iter().all(|r| matches!(r, Ok(Some(_)))));
        }
        (apply.as_secs_f64(), t.elapsed().as_secs_f64())
    });
    let quiet_s = rt.block_on(async {
        let t = Instant::now();
        for _ in 0..rounds {
            let batch = keys
                .iter()
                .fold(Batch::new(), |b, k| b.put(k.clone(), value.clone()));
            quiet.apply(&ctx, batch).await.expect("apply");
        }
        t.elapsed().as_secs_f64()
    });
    let ops = (BATCH * rounds) as f64;
    println!(
        "batch apply 10k puts, change events off: {:.0} ops/s",
        ops / quiet_s
    );
    let (apply_rate, get_rate) = (ops / apply_s, ops / get_s);
    println!("batch apply 10k puts: {apply_rate:.0} ops/s");
    println!("batch get_many 10k:   {get_rate:.0} ops/s");
    if let Some(port) = port {
        let set = redis_benchmark(port, "set");
        let get = redis_benchmark(port, "get");
        if let (Some(set), Some(get)) = (set, get) {
            println!("redis-benchmark --cluster -P 64: SET {set:.0} ops/s, GET {get:.0} ops/s");
            println!(
                "ratio apply/SET = {:.2}, get_many/GET = {:.2}",
                apply_rate / set,
                get_rate / get
            );
        } else {
            println!("redis-benchmark not available or unparsable output");
        }
    }
}

fn watch_latency(rt: &tokio::runtime::Runtime, store: &RedisStore) {
    let ctx = Context::new();
    let key = Key::new("bench/w").expect("key");
    let mut lat: Vec<Duration> = rt.block_on(async {
        let mut s = store
            .watch(&ctx, WatchRequest::key(key.clone()))
            .await
            .expect("watch");
        let mut out = Vec::new();
        for i in 0..500u32 {
            let t = Instant::now();
            let rev = store.set(&ctx, &key, i.to_string()).await.expect("put");
            loop {
                match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
                    Ok(Some(Ok(WatchEvent::Put { entry, .. }))) if entry.revision == rev => break,
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("watch: {other:?}"),
                }
            }
            out.push(t.elapsed());
        }
        out
    });
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "watch latency (put issued -> event received): p50 {:?}, p99 {:?}",
        p(0.50),
        p(0.99)
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn lock_figures(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
    raw: &redis::cluster_async::ClusterConnection,
) {
    const N: usize = 1000;
    const TASKS: usize = 4;
    let ctx = Context::new();
    let key = Key::new("bench/lock").expect("key");
    let data = Key::new("bench/k").expect("key");
    let ttl = Duration::from_secs(10);
    let (mut lock, mut get, mut raw_get) = rt.block_on(async {
        // Warm-up: scripts loaded, connections up.
        for _ in 0..50 {
            let g = store
                .lock(&ctx, &key, LockOptions::try_lock(ttl))
                .await
                .expect("lock");
            g.release().await.expect("release");
            store.get(&ctx, &data).await.expect("get");
        }
        let (mut lock, mut get, mut raw_get) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..N {
            let t = Instant::now();
            let g = store
                .lock(&ctx, &key, LockOptions::try_lock(ttl))
                .await
                .expect("lock");
            g.release().await.expect("release");
            lock.push(t.elapsed());
            let t = Instant::now();
            store.get(&ctx, &data).await.expect("get");
            get.push(t.elapsed());
            let t = Instant::now();
            let mut r = raw.clone();
            let _: Vec<u8> = r.get("raw:bench/k").await.expect("raw get");
            raw_get.push(t.elapsed());
        }
        (lock, get, raw_get)
    });
    lock.sort();
    get.sort();
    raw_get.sort();
    let (l50, g50, r50) = (
        percentile(&lock, 0.5),
        percentile(&get, 0.5),
        percentile(&raw_get, 0.5),
    );
    println!(
        "lock uncontended acquire+release: p50 {l50:?}, p99 {:?}; kvmap get p50 {g50:?}, raw GET p50 {r50:?}; \
         ratio acquire+release / get = {:.2}, / raw GET = {:.2}",
        percentile(&lock, 0.99),
        l50.as_secs_f64() / g50.as_secs_f64(),
        l50.as_secs_f64() / r50.as_secs_f64(),
    );
    let window = Duration::from_secs(5);
    // Who held the lock last: an acquisition by another task is a handoff.
    let last = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let switches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (acquisitions, elapsed) = rt.block_on(async {
        let t = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|id| {
                let (store, key) = (store.clone(), key.clone());
                let (last, switches) = (last.clone(), switches.clone());
                tokio::spawn(async move {
                    let ctx = Context::new();
                    let mut n = 0usize;
                    while t.elapsed() < window {
                        let g = store
                            .lock(&ctx, &key, LockOptions::new(ttl))
                            .await
                            .expect("lock");
                        n += 1;
                        if last.swap(id, std::sync::atomic::Ordering::SeqCst) != id {
                            switches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        g.release().await.expect("release");
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("task");
        }
        (total, t.elapsed())
    });
    let secs = elapsed.as_secs_f64();
    let handoffs = switches.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "lock contended ({TASKS} tasks, one key, waiting with the core's back-off): {:.0} acquisitions/s, \
         {:.0} handoffs/s to another task ({acquisitions} acquisitions, {handoffs} handoffs in {secs:.1}s)",
        acquisitions as f64 / secs,
        handoffs as f64 / secs,
    );
}

fn main() {
    let rt = runtime();
    let (urls, guard) = match std::env::var("KVMAP_BENCH_REDIS_URLS") {
        Ok(v) => (v.split(',').map(str::to_owned).collect::<Vec<_>>(), None),
        Err(_) => {
            let cluster = rt
                .block_on(integration_tests::RedisCluster::start())
                .expect("start cluster");
            (cluster.urls(), Some(cluster))
        }
    };
    let port = urls
        .first()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.trim_end_matches('/').parse().ok());
    let store = rt
        .block_on(RedisStore::connect(RedisConfig::cluster(urls.clone())))
        .expect("connect");
    let raw = rt
        .block_on(async {
            redis::cluster::ClusterClient::new(urls.clone())?
                .get_async_connection()
                .await
        })
        .expect("raw cluster connection");
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let quiet = rt
        .block_on(RedisStore::connect(
            RedisConfig::cluster(urls.clone()).with_watch_events(false),
        ))
        .expect("connect");
    bench_single(&mut c, &rt, &store, &quiet, &raw);
    c.final_summary();
    let quiet = rt
        .block_on(RedisStore::connect(
            RedisConfig::cluster(urls.clone()).with_watch_events(false),
        ))
        .expect("connect");
    batch_throughput(&rt, &store, &quiet, port);
    watch_latency(&rt, &store);
    lock_figures(&rt, &store, &raw);
    drop(store);
    rt.block_on(async move { drop(guard) });
}
