//! kvmap-consul against the raw HTTP requests a careful user would send
//! with `reqwest` to the same dev agent, in the same run.
//!
//! `cargo bench -p kvmap-consul --bench consul -- --warm-up-time 1 --measurement-time 3`
//! starts a dev agent through the integration-test harness, or uses the
//! agent at `KVMAP_BENCH_CONSUL_ADDR` (`http://127.0.0.1:8500`).
//!
//! Criterion groups (kvmap vs raw in each): `get`, `put`, `cas_put`,
//! `list_100`, `get_many_32`, and `get_c64` / `put_c64` (64 concurrent
//! calls). The raw side parses the JSON and decodes the base64 value,
//! like kvmap. After criterion, an interleaved pass prints the ratio
//! kvmap / raw of each operation (median of alternating rounds, so drift
//! of the shared machine hits both sides alike).
//!
//! Locks (printed at the end): an uncontended acquire + release against
//! one `get` round trip (interleaved the same way), contended handoffs per
//! second (4 tasks, one key), and the time from a holder that stops
//! renewing to the next acquisition (Consul invalidates an unrenewed
//! session up to 2×TTL after its last renewal).

use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use criterion::Criterion;
use kvmap_consul::{ConsulConfig, ConsulStore};
use kvmap_core::{Batch, Context, Key, KvStore, KvStoreExt, ListRequest, LockOptions};
use serde::Deserialize;

const VALUE_BYTES: usize = 100;
const LIST_KEYS: usize = 100;
const MANY_KEYS: usize = 32;
const CONCURRENCY: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One KV pair as Consul's JSON API returns it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)] // fields decoded like a real client would
struct KvPair {
    key: String,
    flags: u64,
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: KvPair,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswer {
    results: Option<Vec<TxnResult>>,
}

fn decode(v: Option<&str>) -> Bytes {
    v.map(|s| {
        Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("base64 value"),
        )
    })
    .unwrap_or_default()
}

/// The raw client: the calls a careful user writes by hand.
#[derive(Clone)]
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    /// `GET /v1/kv/KEY`: value and indexes.
    async fn get(&self, key: &str) -> Option<(Bytes, u64)> {
        let resp = self
            .http
            .get(format!("{}/v1/kv/{key}", self.base))
            .send()
            .await
            .expect("get");
        if resp.status() == 404 {
            return None;
        }
        let body = resp.bytes().await.expect("body");
        let mut kvs: Vec<KvPair> = serde_json::from_slice(&body).expect("json");
        let kv = kvs.pop().expect("one pair");
        Some((decode(kv.value.as_deref()), kv.modify_index))
    }

    async fn txn(&self, ops: serde_json::Value) -> Vec<TxnResult> {
        let resp = self
            .http
            .put(format!("{}/v1/txn", self.base))
            .json(&ops)
            .send()
            .await
            .expect("txn");
        assert!(resp.status().is_success(), "txn status {}", resp.status());
        let body = resp.bytes().await.expect("body");
        let ans: TxnAnswer = serde_json::from_slice(&body).expect("txn json");
        ans.results.unwrap_or_default()
    }

    /// A `set` through `/v1/txn` (the plain `PUT /v1/kv` does not return
    /// the new index).
    async fn put(&self, key: &str, value: &[u8]) -> u64 {
        let v = base64::engine::general_purpose::STANDARD.encode(value);
        let r = self
            .txn(serde_json::json!([{ "KV": { "Verb": "set", "Key": key, "Value": v } }]))
            .await;
        r[0].kv.modify_index
    }

    /// `PUT /v1/kv/KEY` (answers `true`, no index).
    async fn put_plain(&self, key: &str, value: Bytes) {
        let resp = self
            .http
            .put(format!("{}/v1/kv/{key}", self.base))
            .body(value)
            .send()
            .await
            .expect("put");
        assert!(resp.status().is_success());
        let _ = resp.bytes().await;
    }

    /// A `cas` through `/v1/txn`: the new index.
    async fn cas(&self, key: &str, value: &[u8], index: u64) -> u64 {
        let v = base64::engine::general_purpose::STANDARD.encode(value);
        let r = self
            .txn(serde_json::json!([{ "KV": { "Verb": "cas", "Key": key, "Value": v, "Index": index } }]))
            .await;
        r[0].kv.modify_index
    }

    /// `GET /v1/kv/PREFIX?recurse`.
    async fn list(&self, prefix: &str) -> Vec<(String, Bytes)> {
        let body = self
            .http
            .get(format!("{}/v1/kv/{prefix}?recurse", self.base))
            .send()
            .await
            .expect("list")
            .bytes()
            .await
            .expect("body");
        let kvs: Vec<KvPair> = serde_json::from_slice(&body).expect("json");
        kvs.into_iter()
            .map(|kv| {
                let v = decode(kv.value.as_deref());
                (kv.key, v)
            })
            .collect()
    }

    /// One txn of `get`s.
    async fn get_many(&self, keys: &[String]) -> Vec<(String, Bytes)> {
        let ops: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::json!({ "KV": { "Verb": "get", "Key": k } }))
            .collect();
        self.txn(serde_json::Value::Array(ops))
            .await
            .into_iter()
            .map(|r| {
                let v = decode(r.kv.value.as_deref());
                (r.kv.key, v)
            })
            .collect()
    }
}

struct Fixture {
    store: ConsulStore,
    raw: Raw,
    key: Key,
    raw_key: String,
    value: Bytes,
    many: Vec<Key>,
    raw_many: Vec<String>,
}

fn seed(rt: &tokio::runtime::Runtime, store: ConsulStore, raw: Raw) -> Fixture {
    let ctx = Context::new();
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    let key = Key::new("bench/kvmap/k").expect("key");
    let raw_key = "bench/raw/k".to_owned();
    let many: Vec<Key> = (0..MANY_KEYS)
        .map(|i| Key::new(format!("bench/kvmap/many/{i:02}")).expect("key"))
        .collect();
    let raw_many: Vec<String> = (0..MANY_KEYS)
        .map(|i| format!("bench/raw/many/{i:02}"))
        .collect();
    rt.block_on(async {
        store.set(&ctx, &key, value.clone()).await.expect("seed");
        raw.put(&raw_key, &value).await;
        for chunk in many.chunks(32) {
            let b = chunk
                .iter()
                .fold(Batch::new(), |b, k| b.put(k.clone(), value.clone()));
            store.apply(&ctx, b).await.expect("seed many");
        }
        for k in &raw_many {
            raw.put(k, &value).await;
        }
        for i in 0..LIST_KEYS {
            store
                .set(
                    &ctx,
                    &Key::new(format!("bench/kvmap/list/{i:03}")).expect("key"),
                    value.clone(),
                )
                .await
                .expect("seed list");
            raw.put(&format!("bench/raw/list/{i:03}"), &value).await;
        }
    });
    Fixture {
        store,
        raw,
        key,
        raw_key,
        value,
        many,
        raw_many,
    }
}

fn criterion_groups(c: &mut Criterion, rt: &tokio::runtime::Runtime, fx: &Fixture) {
    let ctx = Context::new();
    let list_req = ListRequest::prefix("bench/kvmap/list/");

    let mut g = c.benchmark_group("get");
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            fx.store
                .get(&ctx, &fx.key)
                .await
                .expect("get")
                .expect("some")
        })
    });
    g.bench_function("raw", |b| {
        b.to_async(rt)
            .iter(|| async { fx.raw.get(&fx.raw_key).await.expect("some") })
    });
    g.finish();

    let mut g = c.benchmark_group("put");
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            fx.store
                .set(&ctx, &fx.key, fx.value.clone())
                .await
                .expect("put")
        })
    });
    g.bench_function("raw_txn_set", |b| {
        b.to_async(rt)
            .iter(|| async { fx.raw.put(&fx.raw_key, &fx.value).await })
    });
    g.bench_function("raw_plain_put_no_index", |b| {
        b.to_async(rt)
            .iter(|| async { fx.raw.put_plain(&fx.raw_key, fx.value.clone()).await })
    });
    g.finish();

    let mut g = c.benchmark_group("cas_put");
    let rev = std::cell::Cell::new(
        rt.block_on(fx.store.get(&ctx, &fx.key))
            .expect("get")
            .expect("some")
            .revision,
    );
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            let r = fx
                .store
                .update(&ctx, &fx.key, fx.value.clone(), rev.get())
                .await
                .expect("cas");
            rev.set(r);
        })
    });
    let raw_rev = std::cell::Cell::new(rt.block_on(fx.raw.get(&fx.raw_key)).expect("some").1);
    g.bench_function("raw", |b| {
        b.to_async(rt).iter(|| async {
            let r = fx.raw.cas(&fx.raw_key, &fx.value, raw_rev.get()).await;
            raw_rev.set(r);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("list_100");
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            let p = fx.store.list(&ctx, &list_req).await.expect("list");
            assert_eq!(p.entries.len(), LIST_KEYS);
        })
    });
    g.bench_function("raw", |b| {
        b.to_async(rt).iter(|| async {
            assert_eq!(fx.raw.list("bench/raw/list/").await.len(), LIST_KEYS);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("get_many_32");
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            let v = fx.store.get_many(&ctx, &fx.many).await.expect("get_many");
            assert_eq!(v.len(), MANY_KEYS);
        })
    });
    g.bench_function("raw", |b| {
        b.to_async(rt).iter(|| async {
            assert_eq!(fx.raw.get_many(&fx.raw_many).await.len(), MANY_KEYS);
        })
    });
    g.finish();

    let mut g = c.benchmark_group("get_c64");
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            let futs = (0..CONCURRENCY).map(|_| fx.store.get(&ctx, &fx.key));
            for r in futures::future::join_all(futs).await {
                r.expect("get");
            }
        })
    });
    g.bench_function("raw", |b| {
        b.to_async(rt).iter(|| async {
            let futs = (0..CONCURRENCY).map(|_| fx.raw.get(&fx.raw_key));
            futures::future::join_all(futs).await
        })
    });
    g.finish();

    let mut g = c.benchmark_group("put_c64");
    g.bench_function("kvmap", |b| {
        b.to_async(rt).iter(|| async {
            let futs = (0..CONCURRENCY).map(|_| fx.store.set(&ctx, &fx.key, fx.value.clone()));
            for r in futures::future::join_all(futs).await {
                r.expect("put");
            }
        })
    });
    g.bench_function("raw_txn_set", |b| {
        b.to_async(rt).iter(|| async {
            let futs = (0..CONCURRENCY).map(|_| fx.raw.put(&fx.raw_key, &fx.value));
            futures::future::join_all(futs).await
        })
    });
    g.finish();
}

/// Median seconds per call of `f` over `rounds` rounds of `n` calls.
fn per_call<F, Fut>(rt: &tokio::runtime::Runtime, n: usize, f: &F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let t = Instant::now();
        for _ in 0..n {
            f().await;
        }
        t.elapsed().as_secs_f64() / n as f64
    })
}

fn ratio<K, KF, R, RF>(rt: &tokio::runtime::Runtime, name: &str, n: usize, kv: K, raw: R)
where
    K: Fn() -> KF,
    KF: Future<Output = ()>,
    R: Fn() -> RF,
    RF: Future<Output = ()>,
{
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        a.push(per_call(rt, n, &kv));
        b.push(per_call(rt, n, &raw));
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (ka, rb) = (a[a.len() / 2], b[b.len() / 2]);
    println!(
        "{name:<12} kvmap {:>9.1} µs   raw {:>9.1} µs   ratio {:.2}",
        ka * 1e6,
        rb * 1e6,
        ka / rb
    );
}

fn ratios(rt: &tokio::runtime::Runtime, fx: &Fixture) {
    let ctx = Context::new();
    println!("\nkvmap / raw, median of 7 alternating rounds:");
    ratio(
        rt,
        "get",
        200,
        || async {
            fx.store.get(&ctx, &fx.key).await.expect("get");
        },
        || async {
            fx.raw.get(&fx.raw_key).await;
        },
    );
    ratio(
        rt,
        "put",
        100,
        || async {
            fx.store
                .set(&ctx, &fx.key, fx.value.clone())
                .await
                .expect("put");
        },
        || async {
            fx.raw.put(&fx.raw_key, &fx.value).await;
        },
    );
    let rev = std::cell::Cell::new(
        rt.block_on(fx.store.get(&ctx, &fx.key))
            .expect("get")
            .expect("some")
            .revision,
    );
    let raw_rev = std::cell::Cell::new(rt.block_on(fx.raw.get(&fx.raw_key)).expect("some").1);
    ratio(
        rt,
        "cas_put",
        100,
        || async {
            rev.set(
                fx.store
                    .update(&ctx, &fx.key, fx.value.clone(), rev.get())
                    .await
                    .expect("cas"),
            );
        },
        || async {
            raw_rev.set(fx.raw.cas(&fx.raw_key, &fx.value, raw_rev.get()).await);
        },
    );
    let list_req = ListRequest::prefix("bench/kvmap/list/");
    ratio(
        rt,
        "list_100",
        50,
        || async {
            fx.store.list(&ctx, &list_req).await.expect("list");
        },
        || async {
            fx.raw.list("bench/raw/list/").await;
        },
    );
    ratio(
        rt,
        "get_many_32",
        50,
        || async {
            fx.store.get_many(&ctx, &fx.many).await.expect("get_many");
        },
        || async {
            fx.raw.get_many(&fx.raw_many).await;
        },
    );
    ratio(
        rt,
        "get_c64",
        10,
        || async {
            let futs = (0..CONCURRENCY).map(|_| fx.store.get(&ctx, &fx.key));
            futures::future::join_all(futs).await;
        },
        || async {
            let futs = (0..CONCURRENCY).map(|_| fx.raw.get(&fx.raw_key));
            futures::future::join_all(futs).await;
        },
    );
    ratio(
        rt,
        "put_c64",
        10,
        || async {
            let futs = (0..CONCURRENCY).map(|_| fx.store.set(&ctx, &fx.key, fx.value.clone()));
            futures::future::join_all(futs).await;
        },
        || async {
            let futs = (0..CONCURRENCY).map(|_| fx.raw.put(&fx.raw_key, &fx.value));
            futures::future::join_all(futs).await;
        },
    );
}

/// Lists of 10k keys: kvmap `list_all` (pages of 1000 over one prefix)
/// and one raw `?recurse` GET, seconds per full listing.
fn list_10k(rt: &tokio::runtime::Runtime, fx: &Fixture) {
    let ctx = Context::new();
    const N: usize = 10_000;
    rt.block_on(async {
        let keys: Vec<Key> = (0..N)
            .map(|i| Key::new(format!("bench/kvmap/10k/{i:05}")).expect("key"))
            .collect();
        for chunk in keys.chunks(64) {
            let b = chunk
                .iter()
                .fold(Batch::new(), |b, k| b.put(k.clone(), fx.value.clone()));
            fx.store.apply(&ctx, b).await.expect("seed 10k");
        }
        let raw_keys: Vec<String> = (0..N).map(|i| format!("bench/raw/10k/{i:05}")).collect();
        for chunk in raw_keys.chunks(64) {
            let v = base64::engine::general_purpose::STANDARD.encode(&fx.value);
            let ops: Vec<serde_json::Value> = chunk
                .iter()
                .map(|k| serde_json::json!({ "KV": { "Verb": "set", "Key": k, "Value": v } }))
                .collect();
            fx.raw.txn(serde_json::Value::Array(ops)).await;
        }
    });
    let page = ListRequest::prefix("bench/kvmap/10k/").with_limit(1000);
    ratio(
        rt,
        "list_10k",
        2,
        || async {
            let all = fx
                .store
                .list_all(&ctx, page.clone(), usize::MAX)
                .await
                .expect("list");
            assert_eq!(all.len(), N);
        },
        || async {
            assert_eq!(fx.raw.list("bench/raw/10k/").await.len(), N);
        },
    );
    let one_page = ListRequest::prefix("bench/kvmap/10k/");
    ratio(
        rt,
        "list_10k_1pg",
        2,
        || async {
            let p = fx.store.list(&ctx, &one_page).await.expect("list");
            assert!(!p.entries.is_empty());
        },
        || async {
            assert_eq!(fx.raw.list("bench/raw/10k/").await.len(), N);
        },
    );
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (p(0.50), p(0.99))
}

/// Watch latency, put issued to event received: kvmap's watch vs a raw
/// blocking query already waiting when the put is sent.
fn watch_latency(rt: &tokio::runtime::Runtime, fx: &Fixture) {
    use futures::StreamExt;
    const ROUNDS: usize = 200;
    let ctx = Context::new();
    let key = Key::new("bench/kvmap/w").expect("key");
    let kv = rt.block_on(async {
        // A value no round writes: Consul skips a write of the value a key
        // already holds (no new index, no event).
        fx.store.set(&ctx, &key, "init").await.expect("seed");
        let mut s = fx
            .store
            .watch(&ctx, kvmap_core::WatchRequest::key(key.clone()))
            .await
            .expect("watch");
        let mut out = Vec::with_capacity(ROUNDS);
        let mut seen: Vec<String> = Vec::new();
        for i in 0..ROUNDS {
            let t = Instant::now();
            let rev = fx.store.set(&ctx, &key, i.to_string()).await.expect("put");
            loop {
                let ev = match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                    Ok(Some(Ok(ev))) => ev,
                    other => {
                        println!(
                            "watch latency: no event for put {i} (revision {rev}) within 10s \
                             ({other:?}); last events {:?}",
                            &seen[seen.len().saturating_sub(6)..]
                        );
                        return None;
                    }
                };
                seen.push(format!("{ev:?}").chars().take(160).collect());
                let done = match &ev {
                    kvmap_core::WatchEvent::Put { entry, .. } => entry.revision >= rev,
                    kvmap_core::WatchEvent::Resync { entries, .. } => {
                        entries.iter().any(|e| e.revision >= rev)
                    }
                    _ => false,
                };
                if done {
                    break;
                }
            }
            out.push(t.elapsed());
        }
        Some(out)
    });
    let raw = rt.block_on(async {
        let key = "bench/raw/w";
        let mut index = fx.raw.put(key, b"init").await;
        let mut out = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS {
            let raw = fx.raw.clone();
            let waiting = tokio::spawn(async move {
                let resp = raw
                    .http
                    .get(format!("{}/v1/kv/{key}?index={index}&wait=10s", raw.base))
                    .send()
                    .await
                    .expect("blocking query");
                let next: u64 = resp
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("index header");
                let _ = resp.bytes().await;
                (next, Instant::now())
            });
            // Give the query time to reach the agent and block there.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            let written = fx.raw.put(key, i.to_string().as_bytes()).await;
            let (next, at) = waiting.await.expect("join");
            assert!(next >= written, "blocking query returned early");
            index = next;
            out.push(at.saturating_duration_since(t));
        }
        out
    });
    let (r50, r99) = percentiles(raw);
    match kv {
        Some(kv) => {
            let (k50, k99) = percentiles(kv);
            println!(
                "watch latency (put issued -> event): kvmap p50 {k50:?} p99 {k99:?}; raw blocking query p50 {r50:?} p99 {r99:?}"
            );
        }
        None => println!("watch latency: kvmap missed an event (above); raw blocking query p50 {r50:?} p99 {r99:?}"),
    }
}

const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_TASKS: usize = 4;

fn lock_figures(rt: &tokio::runtime::Runtime, fx: &Fixture) {
    let ctx = Context::new();
    let key = Key::new("bench/kvmap/lock/uncontended").expect("key");
    println!("\nlocks (ttl {LOCK_TTL:?}):");
    ratio(
        rt,
        "lock+release",
        50,
        || async {
            let g = fx
                .store
                .lock(&ctx, &key, LockOptions::try_lock(LOCK_TTL))
                .await
                .expect("lock");
            g.release().await.expect("release");
        },
        || async {
            fx.store.get(&ctx, &fx.key).await.expect("get");
        },
    );
    println!("             (ratio: one uncontended acquire + release / one kvmap get round trip)");

    // Contended: 4 tasks hand one key to each other for 5 s.
    let hot = Key::new("bench/kvmap/lock/contended").expect("key");
    let run = Duration::from_secs(5);
    let (handoffs, took) = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..LOCK_TASKS)
            .map(|_| {
                let (store, hot) = (fx.store.clone(), hot.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let ctx = Context::new().with_timeout(Duration::from_secs(60));
                    while start.elapsed() < run {
                        let g = store
                            .lock(&ctx, &hot, LockOptions::new(LOCK_TTL))
                            .await
                            .expect("contended lock");
                        g.release().await.expect("release");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("join");
        }
        (total, start.elapsed())
    });
    println!(
        "contended    {LOCK_TASKS} tasks, one key: {handoffs} acquisitions in {:.1}s = {:.0} handoffs/s",
        took.as_secs_f64(),
        handoffs as f64 / took.as_secs_f64()
    );

    // A holder that stops renewing: how long until the next holder gets in.
    for trial in 0..2 {
        let k = Key::new(format!("bench/kvmap/lock/lost-{trial}")).expect("key");
        let (since_acquire, since_lost) = rt.block_on(async {
            let a = fx
                .store
                .lock(
                    &ctx,
                    &k,
                    LockOptions::try_lock(LOCK_TTL).with_auto_renew(false),
                )
                .await
                .expect("lock");
            let t0 = Instant::now();
            let waiter = {
                let (store, k) = (fx.store.clone(), k.clone());
                tokio::spawn(async move {
                    let ctx = Context::new().with_timeout(LOCK_TTL * 4);
                    let g = store
                        .lock(&ctx, &k, LockOptions::new(LOCK_TTL))
                        .await
                        .expect("next holder");
                    (g, Instant::now())
                })
            };
            a.lost().await;
            let lost_at = Instant::now();
            let (b, got) = waiter.await.expect("join");
            assert!(b.token() > a.token(), "token did not increase");
            b.release().await.expect("release");
            (
                got.saturating_duration_since(t0),
                got.saturating_duration_since(lost_at),
            )
        });
        println!(
            "holder loss  trial {trial}: next acquisition {:.2}s after the last renewal \
             (the holder's lost signal fired at the ttl; {:.2}s after it)",
            since_acquire.as_secs_f64(),
            since_lost.as_secs_f64()
        );
    }
}

fn main() {
    let rt = runtime();
    // The harness's containers are removed on drop, which needs a runtime
    // even when a panic unwinds through main.
    let _enter = rt.enter();
    let (addr, guard) = match std::env::var("KVMAP_BENCH_CONSUL_ADDR") {
        Ok(a) if !a.trim().is_empty() => (a.trim().to_owned(), None),
        _ => {
            if !rt.block_on(integration_tests::docker_available_or_skip()) {
                eprintln!("skipped: the consul benchmark needs docker or KVMAP_BENCH_CONSUL_ADDR");
                return;
            }
            let dev = rt
                .block_on(integration_tests::ConsulDev::start())
                .expect("start consul dev agent");
            (dev.http_addr(), Some(dev))
        }
    };
    let store = rt
        .block_on(ConsulStore::connect(
            ConsulConfig::new(addr.clone()).with_reaper_interval(None),
        ))
        .expect("connect");
    let fx = seed(&rt, store, Raw::new(&addr));
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion_groups(&mut c, &rt, &fx);
    c.final_summary();
    ratios(&rt, &fx);
    list_10k(&rt, &fx);
    watch_latency(&rt, &fx);
    lock_figures(&rt, &fx);
    drop(fx);
    rt.block_on(async move { drop(guard) });
}
