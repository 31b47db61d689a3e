//! Failover on the 3+3 cluster (started once for this binary): a master is
//! killed during a mixed workload, without and with durable writes, during
//! 8 clients' compare-and-swap increments of one key (without and with
//! durable writes: final value within acknowledged + outcome-unknown), and
//! during a watch. Prints the errors seen, the time to recover and the
//! acknowledged writes lost.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};
use futures::StreamExt;
use integration_tests::RedisCluster;
use kvmap_core::{
    Consistency, Context, ErrorKind, Key, KvStore, KvStoreExt, RetryClass, WatchEvent, WatchRequest,
};
use kvmap_redis::{RedisConfig, RedisStore};

const WRITERS: usize = 8;
const KEYS_PER_WRITER: usize = 64;

#[derive(Debug, Default)]
struct Report {
    ops_ok: usize,
    errors: BTreeMap<String, usize>,
    #[allow(dead_code)] // printed through Debug
    kill_to_cluster_ok: Duration,
    recovered_after: Duration,
    acked_keys: usize,
    lost: usize,
}

fn config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::cluster(cluster.urls()).with_op_timeout(Duration::from_secs(1))
}

/// Kills master #0 during a write/read workload; heals the cluster after.
async fn workload(
    cluster: &RedisCluster,
    store: Arc<RedisStore>,
    tag: &str,
) -> anyhow::Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let errors: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, stop, errors, tag) =
            (store.clone(), stop.clone(), errors.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let ctx = Context::new();
            let mut acked: HashMap<Key, u64> = HashMap::new();
            let mut ok = 0usize;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key =
                    Key::new(format!("fo-{tag}/{w}/{}", i % KEYS_PER_WRITER as u64)).expect("key");
                match store.set(&ctx, &key, i.to_string()).await {
                    Ok(_) => {
                        ok += 1;
                        acked.insert(key.clone(), i);
                    }
                    Err(e) => errors.lock().expect("lock").push((
                        t0.elapsed(),
                        format!("put {:?} {:?}", e.kind(), e.retry_class()),
                    )),
                }
                if i.is_multiple_of(4) {
                    match store.get(&ctx, &key).await {
                        Ok(_) => ok += 1,
                        Err(e) => errors
                            .lock()
                            .expect("lock")
                            .push((t0.elapsed(), format!("get {:?}", e.kind()))),
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, acked)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = cluster.masters().await?[0]
        .index
        .ok_or_else(|| anyhow!("victim index"))?;
    let kill_at = t0.elapsed();
    let kill_to_cluster_ok = cluster.kill_master(0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = Report {
        kill_to_cluster_ok,
        ..Report::default()
    };
    let mut acked_all = HashMap::new();
    for t in tasks {
        let (ok, acked) = t.await?;
        report.ops_ok += ok;
        acked_all.extend(acked);
    }
    let errors = errors.lock().expect("lock").clone();
    for (_, kind) in &errors {
        *report.errors.entry(kind.clone()).or_default() += 1;
    }
    report.recovered_after = errors
        .iter()
        .map(|(at, _)| at.saturating_sub(kill_at))
        .max()
        .unwrap_or_default();
    report.acked_keys = acked_all.len();
    let ctx = Context::new();
    for (key, want) in &acked_all {
        let got = get_after_failover(&store, &ctx, key).await?;
        let got: u64 = got
            .map(|e| String::from_utf8_lossy(&e.value).parse().unwrap_or(0))
            .unwrap_or(0);
        if got < *want {
            report.lost += 1;
        }
    }
    cluster
        .restart_node(victim)
        .await
        .context("heal the cluster")?;
    eprintln!("[failover {tag}] {report:?}");
    Ok(report)
}

const CAS_CLIENTS: usize = 8;
const CAS_INCREMENTS: u64 = 500;

/// One client's compare-and-swap increments of `key` until `CAS_INCREMENTS`
/// were acknowledged: returns (acknowledged, outcome-unknown, conflicts).
async fn cas_client(store: Arc<RedisStore>, key: Key) -> (u64, u64, u64) {
    let ctx = Context::new();
    let (mut acked, mut unknown, mut conflicts) = (0, 0, 0);
    while acked < CAS_INCREMENTS {
        let (n, rev) = match store.get(&ctx, &key).await {
            Ok(e) => common::counter(e.as_ref()),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let next = (n + 1).to_string();
        let r = if rev == 0 {
            store.create(&ctx, &key, next).await
        } else {
            store.update(&ctx, &key, next, rev).await
        };
        match r {
            Ok(_) => acked += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Conflict { .. } | ErrorKind::AlreadyExists
                ) =>
            {
                conflicts += 1;
            }
            Err(e) if e.retry_class() == RetryClass::OutcomeUnknown => unknown += 1,
            Err(e) => {
                eprintln!(
                    "  cas write error (retried): {} [{:?}]",
                    e.report(),
                    e.retry_class()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (acked, unknown, conflicts)
}

/// 8 clients × 500 CAS increments of one key while the key's master is
/// killed: the final value is within the acknowledged increments plus
/// the outcome-unknown ones (with exactly-once writes, usually equal).
async fn cas_counter_failover(durable: bool) -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let mut cfg = config(&cluster);
    if durable {
        cfg = cfg.with_durable_writes(1, Duration::from_millis(500));
    }
    let store = Arc::new(RedisStore::connect(cfg).await?);
    let key = Key::new("cas/counter")?;
    let master = cluster.master_for_key(b"kvmap:cas/counter").await?;
    let victim = cluster
        .masters()
        .await?
        .iter()
        .position(|m| m.id == master.id)
        .ok_or_else(|| anyhow!("the key's master is not listed"))?;
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CAS_CLIENTS)
        .map(|_| tokio::spawn(cas_client(store.clone(), key.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = get_after_failover(&store, &Context::new(), &key)
        .await?
        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
    let container = master
        .index
        .ok_or_else(|| anyhow!("the master's container"))?;
    let recovery = cluster.kill_master(victim).await?;
    // Back as a replica of the promoted master: durable writes need one.
    cluster
        .restart_node(container)
        .await
        .context("restart the killed master")?;
    let (mut acked, mut unknown, mut conflicts) = (0, 0, 0);
    for c in clients {
        let (a, u, k) = tokio::time::timeout(Duration::from_secs(180), c)
            .await
            .map_err(|_| anyhow!("the clients did not finish within 180 s"))??;
        acked += a;
        unknown += u;
        conflicts += k;
    }
    let elapsed = t0.elapsed();
    let last = get_after_failover(&store, &Context::new(), &key)
        .await?
        .ok_or_else(|| anyhow!("the counter is gone"))?;
    let value: u64 = std::str::from_utf8(&last.value)?.parse()?;
    let mode = if durable { "durable" } else { "plain" };
    eprintln!(
        "[cas failover {mode}] {CAS_CLIENTS} clients x {CAS_INCREMENTS} increments, the key's \
         master killed at {:?} (counter {before_kill:?}), cluster ok {recovery:?} later, then \
         restarted as a replica; \
         final {value} for {acked} acknowledged + {unknown} outcome-unknown increments, \
         {conflicts} conflicts, {elapsed:?} in all",
        Duration::from_millis(800)
    );
    ensure!(
        value >= acked,
        "{mode}: final {value} < {acked} acknowledged increments: acknowledged writes lost"
    );
    ensure!(
        value <= acked + unknown,
        "{mode}: final {value} > {acked} acknowledged + {unknown} unknown: a write applied twice \
         or misreported"
    );
    Ok(())
}

/// Reads a key, retrying transient errors for a while: right after a
/// failover the client may still route to the dead master once.
async fn get_after_failover(
    store: &RedisStore,
    ctx: &Context,
    key: &Key,
) -> anyhow::Result<Option<kvmap_core::Entry>> {
    let start = Instant::now();
    loop {
        match store.get(ctx, key).await {
            Err(e) if e.is_transient() && start.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// What a watcher saw: the range's state, put events, resyncs.
type Seen = (BTreeMap<Key, bytes::Bytes>, usize, usize);

async fn watch_across_failover(cluster: &RedisCluster) -> anyhow::Result<()> {
    let store = Arc::new(RedisStore::connect(config(cluster)).await?);
    let ctx = Context::new();
    let mut stream = store.watch(&ctx, WatchRequest::prefix("fw/")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let ctx = Context::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = Key::new(format!("fw/{}", i % 32)).expect("key");
                let _ = store.set(&ctx, &key, i.to_string()).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let mut s = seen.lock().expect("lock");
                match ev {
                    Ok(WatchEvent::Put { entry, .. }) => {
                        s.0.insert(entry.key, entry.value);
                        s.1 += 1;
                    }
                    Ok(WatchEvent::Delete { key, .. } | WatchEvent::Expired { key, .. }) => {
                        s.0.remove(&key);
                    }
                    Ok(WatchEvent::Resync { entries, .. }) => {
                        s.0 = entries.into_iter().map(|e| (e.key, e.value)).collect();
                        s.2 += 1;
                    }
                    Err(e) => {
                        eprintln!("watch stream error: {e}");
                        return;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = cluster.masters().await?[0]
        .index
        .ok_or_else(|| anyhow!("victim index"))?;
    cluster.kill_master(0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let finals: BTreeMap<Key, bytes::Bytes> = store
        .list_all(&ctx, kvmap_core::ListRequest::prefix("fw/"), usize::MAX)
        .await?
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    let t = Instant::now();
    let outcome = loop {
        let (same, puts, resyncs) = {
            let s = seen.lock().expect("lock");
            (s.0 == finals, s.1, s.2)
        };
        if same {
            break Ok((puts, resyncs));
        }
        if t.elapsed() > Duration::from_secs(20) {
            break Err(anyhow!("the watch never converged on the final values"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    reader.abort();
    cluster
        .restart_node(victim)
        .await
        .context("heal the cluster")?;
    let (puts, resyncs) = outcome?;
    eprintln!(
        "[failover watch] {} keys, final values all observed after {:?}; {puts} put events, {resyncs} resyncs",
        finals.len(),
        t.elapsed()
    );
    ensure!(
        resyncs >= 1,
        "continuity was lost (slot map changed) but no resync was emitted"
    );
    Ok(())
}

/// Stale reads are served by replicas within the bound, or `StaleTooOld`.
async fn stale_reads(cluster: &RedisCluster) -> anyhow::Result<()> {
    let store = RedisStore::connect(config(cluster)).await?;
    let ctx = Context::new();
    for i in 0..20 {
        let k = Key::new(format!("st/{i}"))?;
        store.set(&ctx, &k, format!("v{i}")).await?;
        let stale = Context::new().with_consistency(Consistency::Stale {
            max_staleness: Duration::from_secs(1),
        });
        // The replica may not have applied a write acknowledged a moment
        // ago: `StaleTooOld` is the contract's answer; it must pass soon.
        let start = Instant::now();
        let e = loop {
            match store.get(&stale, &k).await {
                Err(e)
                    if matches!(e.kind(), ErrorKind::StaleTooOld { .. })
                        && start.elapsed() < Duration::from_secs(5) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        let e = e.ok_or_else(|| anyhow!("stale read lost {k}"))?;
        ensure!(
            e.value == format!("v{i}"),
            "stale read of a write acknowledged before the probe: {e:?}"
        );
        let s = e
            .staleness
            .ok_or_else(|| anyhow!("no staleness on a stale read"))?;
        ensure!(
            s <= Duration::from_secs(1),
            "staleness {s:?} over the bound"
        );
    }
    let tight = Context::new().with_consistency(Consistency::Stale {
        max_staleness: Duration::from_nanos(1),
    });
    let e = match store.get(&tight, &Key::new("st/0")?).await {
        Ok(got) => return Err(anyhow!("1ns bound met: {got:?}")),
        Err(e) => e,
    };
    ensure!(
        matches!(e.kind(), ErrorKind::StaleTooOld { .. }),
        "kind {:?}",
        e.kind()
    );
    Ok(())
}

/// A foreign key of another type inside the namespace is `InvalidData`,
/// per key in batches.
async fn foreign_keys(cluster: &RedisCluster) -> anyhow::Result<()> {
    let store = RedisStore::connect(config(cluster)).await?;
    let mut raw = cluster.client()?.get_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg("kvmap:fk/str")
        .arg("x")
        .query_async(&mut raw)
        .await?;
    let ctx = Context::new();
    let (ok, bad) = (Key::new("fk/ok")?, Key::new("fk/str")?);
    store.set(&ctx, &ok, "v").await?;
    let got = store.get_many(&ctx, &[ok.clone(), bad.clone()]).await?;
    ensure!(matches!(&got[0], Ok(Some(_))), "{:?}", got[0]);
    ensure!(
        matches!(&got[1], Err(e) if e.kind() == ErrorKind::InvalidData),
        "{:?}",
        got[1]
    );
    let batch = kvmap_core::Batch::new()
        .put(ok.clone(), "w")
        .put(bad.clone(), "w");
    let out = store.apply(&ctx, batch).await?;
    ensure!(out[0].is_ok(), "{:?}", out[0]);
    ensure!(
        matches!(&out[1], Err(e) if e.kind() == ErrorKind::InvalidData),
        "{:?}",
        out[1]
    );
    let e = store
        .get(&ctx, &bad)
        .await
        .err()
        .ok_or_else(|| anyhow!("read a foreign key"))?;
    ensure!(e.kind() == ErrorKind::InvalidData, "get: {e}");
    let e = store
        .delete(&ctx, &bad, Default::default())
        .await
        .err()
        .ok_or_else(|| anyhow!("deleted a foreign key"))?;
    ensure!(e.kind() == ErrorKind::InvalidData, "delete: {e}");
    Ok(())
}

/// Durable batches: every pipeline ends with its own `WAIT`. With the
/// replica of one master paused, that master's writes come back as
/// outcome-unknown timeouts (applied, not proven replicated) and every
/// other write succeeds.
async fn durable_batch(cluster: &RedisCluster) -> anyhow::Result<()> {
    let cfg = config(cluster).with_durable_writes(1, Duration::from_millis(300));
    let store = RedisStore::connect(cfg).await?;
    let ctx = Context::new();
    let keys: Vec<Key> = (0..120)
        .map(|i| Key::new(format!("db/{i:03}")))
        .collect::<Result<_, _>>()?;
    let batch = |v: &str| {
        keys.iter().fold(kvmap_core::Batch::new(), |b, k| {
            b.put(k.clone(), v.to_owned())
        })
    };
    let out = store.apply(&ctx, batch("1")).await?;
    ensure!(
        out.iter().all(Result::is_ok),
        "healthy cluster: {:?}",
        out.iter().find(|r| r.is_err())
    );
    let target = cluster.master_for_key(b"kvmap:db/000").await?;
    let replica = cluster
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.master_id.as_deref() == Some(target.id.as_str()))
        .ok_or_else(|| anyhow!("no replica of the target master"))?;
    let node = cluster.node(replica.index.ok_or_else(|| anyhow!("replica index"))?);
    node.pause().await?;
    let r = store.apply(&ctx, batch("2")).await;
    node.unpause().await?;
    let out = r?;
    let mut on_target = 0;
    for (k, r) in keys.iter().zip(&out) {
        let here = target.owns_slot(integration_tests::key_slot(format!("kvmap:{k}").as_bytes()));
        match r {
            Err(e) if here => {
                ensure!(
                    e.kind() == ErrorKind::Timeout && e.retry_class() == RetryClass::OutcomeUnknown,
                    "{k} on the master with the paused replica: {e} ({:?})",
                    e.retry_class()
                );
                on_target += 1;
            }
            Ok(_) if !here => {}
            other => {
                return Err(anyhow!(
                    "{k} (on the paused replica's master: {here}): {other:?}"
                ))
            }
        }
    }
    eprintln!(
        "[durable batch] 120 puts, replica of one master paused: {on_target} outcome-unknown timeouts on that master, {} acknowledged elsewhere",
        120 - on_target
    );
    ensure!(
        on_target > 0,
        "no key landed on the master with the paused replica"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let cluster = Arc::new(
        infra
            .block_on(RedisCluster::start())
            .expect("start redis cluster"),
    );
    let (c4, c5, c6) = (cluster.clone(), cluster.clone(), cluster.clone());
    let trials = vec![
        (
            "cluster_stale_read_from_replica_is_bounded",
            common::trial(&infra, move || async move { stale_reads(&c4).await }),
        ),
        (
            "cluster_durable_batch_waits_per_pipeline",
            common::trial(&infra, move || async move { durable_batch(&c6).await }),
        ),
        (
            "cluster_foreign_key_is_invalid_data_per_key",
            common::trial(&infra, move || async move { foreign_keys(&c5).await }),
        ),
        (
            "cluster_failover_mixed_workload_recovers",
            common::trial(&infra, move || async move {
                // Each fault trial kills a master of its own, fresh cluster.
                let c1 = RedisCluster::start().await?;
                let store = Arc::new(RedisStore::connect(config(&c1)).await?);
                let r = workload(&c1, store, "plain").await?;
                ensure!(r.ops_ok > 0, "no operation succeeded");
                ensure!(
                    r.recovered_after < Duration::from_secs(20),
                    "no recovery: {r:?}"
                );
                Ok(())
            }),
        ),
        (
            "cluster_failover_durable_writes_lose_nothing",
            common::trial(&infra, move || async move {
                let c2 = RedisCluster::start().await?;
                let cfg = config(&c2).with_durable_writes(1, Duration::from_millis(500));
                let store = Arc::new(RedisStore::connect(cfg).await?);
                let r = workload(&c2, store, "durable").await?;
                ensure!(
                    r.lost == 0,
                    "durable mode lost {} acknowledged writes",
                    r.lost
                );
                Ok(())
            }),
        ),
        (
            "cluster_failover_cas_counter_exact",
            common::trial(
                &infra,
                move || async move { cas_counter_failover(false).await },
            ),
        ),
        (
            "cluster_failover_cas_counter_exact_durable",
            common::trial(
                &infra,
                move || async move { cas_counter_failover(true).await },
            ),
        ),
        (
            "cluster_failover_watch_resyncs_and_sees_final_values",
            common::trial(&infra, move || async move {
                let c3 = RedisCluster::start().await?;
                watch_across_failover(&c3).await
            }),
        ),
    ];
    let code = common::run_trials(trials);
    infra.block_on(async move { drop(cluster) });
    code
}
