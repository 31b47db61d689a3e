//! Faults on real Consul: the leader of a 3-server cluster killed during a
//! mixed workload (typed errors with the right retry class, nothing
//! acknowledged lost, CAS counts exact), 2 of 3 servers down (no leader:
//! typed errors, never a silently stale answer; stale reads bounded), a
//! paused dev agent (timeouts within the deadline, then recovery), and a
//! watch across a dev agent restart (which wipes its data and resets its
//! index: the watch must converge, never lose a change silently).
//!
//! Locks: several clients contend for a few lock keys across a leader
//! kill (mutual exclusion checked in every critical section, time until a
//! lock is usable again printed), and a holder that stops renewing loses
//! its lease to the next holder, whose higher fencing token fences it out.
//!
//! The cluster and the dev agent start once, on first use, and are healed
//! after every fault.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};
use common::{wait_for, Lazy, Watcher, WAIT};
use integration_tests::consul::{leader_of, peers_of};
use integration_tests::wait::with_timeout;
use integration_tests::{ConsulCluster, ConsulDev, ConsulOptions};
use kvmap_consul::{ConsulConfig, ConsulStore};
use kvmap_core::{
    Consistency, Context, Entry, Error, ErrorKind, Fence, FencingToken, Key, KvStore, KvStoreExt,
    ListRequest, LockOptions, RetryClass, WatchRequest,
};

const WRITERS: usize = 4;
const KEYS_PER_WRITER: u64 = 16;

fn cluster_config(addrs: Vec<String>) -> ConsulConfig {
    ConsulConfig::new(addrs[0].clone())
        .with_addrs(addrs)
        .with_request_timeout(Duration::from_secs(10))
        .with_watch_wait(Duration::from_secs(2))
}

fn strong() -> Context {
    Context::new().with_consistency(Consistency::Strong)
}

fn stale(max: Duration) -> Context {
    Context::new().with_consistency(Consistency::Stale { max_staleness: max })
}

fn describe(e: &Error) -> String {
    format!("{:?}/{:?}", e.kind(), e.retry_class())
}

/// Polls until all three servers run, agree on one leader and list three
/// Raft peers, and a strong kvmap write and read succeed.
async fn wait_healthy(cluster: &ConsulCluster, store: &ConsulStore) -> anyhow::Result<()> {
    let client = integration_tests::consul::http_client();
    wait_for(
        "the cluster to be healthy again",
        Duration::from_secs(120),
        || async {
            let mut leaders = Vec::new();
            for i in 0..cluster.len() {
                let base = cluster.http_addr(i);
                let l = leader_of(&client, &base).await?;
                ensure!(!l.is_empty(), "server {i} sees no leader");
                ensure!(
                    peers_of(&client, &base).await?.len() == 3,
                    "server {i} lists fewer than 3 peers"
                );
                leaders.push(l);
            }
            ensure!(leaders.windows(2).all(|w| w[0] == w[1]), "leaders differ");
            let k = Key::new("faults/health")?;
            let rev = store.set(&strong(), &k, "ok").await?;
            let e = store.get(&strong(), &k).await?;
            Ok(e.is_some_and(|e| e.revision >= rev).then_some(()))
        },
    )
    .await
}

/// Reads with retries of transient errors (the cluster may still settle).
async fn get_retrying(
    store: &ConsulStore,
    ctx: &Context,
    key: &Key,
) -> anyhow::Result<Option<Entry>> {
    let start = Instant::now();
    loop {
        match store.get(ctx, key).await {
            Err(e) if e.kind() == ErrorKind::Unavailable || e.kind() == ErrorKind::Timeout => {
                ensure!(start.elapsed() < WAIT, "still failing after {WAIT:?}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other?),
        }
    }
}

#[derive(Default)]
struct Tally {
    errors: BTreeMap<String, usize>,
    violations: Vec<String>,
    last_error: Option<Instant>,
}

impl Tally {
    fn error(&mut self, what: &str, e: &Error) {
        self.last_error = Some(Instant::now());
        *self
            .errors
            .entry(format!("{what} {}", describe(e)))
            .or_default() += 1;
    }
}

/// A write error during a leader change: `Unavailable` (any class the
/// backend knows), or `Timeout` after the request was sent, which must say
/// outcome unknown.
fn write_error_ok(e: &Error) -> bool {
    match e.kind() {
        ErrorKind::Unavailable => true,
        ErrorKind::Timeout => e.retry_class() == RetryClass::OutcomeUnknown,
        _ => false,
    }
}

/// A read error during a leader change: transient and safe to retry.
fn read_error_ok(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
        && e.retry_class() == RetryClass::Safe
}

struct WriterResult {
    acked: HashMap<Key, u64>,
    ok_after_kill: usize,
}

/// One writer: puts increasing numbers to its keys, and after each
/// acknowledged put a strong read of the same key must see it (or newer).
async fn plain_writer(
    store: Arc<ConsulStore>,
    w: usize,
    stop: Arc<AtomicBool>,
    killed_at: Arc<Mutex<Option<Instant>>>,
    tally: Arc<Mutex<Tally>>,
    progress: Arc<AtomicUsize>,
) -> WriterResult {
    let ctx = Context::new();
    let mut r = WriterResult {
        acked: HashMap::new(),
        ok_after_kill: 0,
    };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = Key::new(format!("faults/lw/{w}/{}", i % KEYS_PER_WRITER)).expect("key");
        match store.set(&ctx, &key, i.to_string()).await {
            Ok(_) => {
                r.acked.insert(key.clone(), i);
                progress.fetch_add(1, Ordering::Relaxed);
                if killed_at.lock().unwrap().is_some() {
                    r.ok_after_kill += 1;
                }
                match store.get(&strong(), &key).await {
                    Ok(Some(e)) => {
                        let got: u64 = String::from_utf8_lossy(&e.value).parse().unwrap_or(0);
                        if got < i {
                            tally.lock().unwrap().violations.push(format!(
                                "strong read of {key} after the acknowledged write {i} returned {got}"
                            ));
                        }
                    }
                    Ok(None) => tally.lock().unwrap().violations.push(format!(
                        "strong read of {key} after the acknowledged write {i} found nothing"
                    )),
                    Err(e) if read_error_ok(&e) => tally.lock().unwrap().error("strong get", &e),
                    Err(e) => tally.lock().unwrap().violations.push(format!(
                        "strong get: untyped or wrongly classed error {e} ({e:?})"
                    )),
                }
            }
            Err(e) if write_error_ok(&e) => tally.lock().unwrap().error("put", &e),
            Err(e) => tally
                .lock()
                .unwrap()
                .violations
                .push(format!("put: untyped or wrongly classed error {e} ({e:?})")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r
}

#[derive(Debug, Default)]
struct CounterResult {
    acked: u64,
    unknown: u64,
    safe_failures: u64,
    conflicts: u64,
}

/// A CAS counter: read (strong), then update on the read revision.
async fn cas_counter(
    store: Arc<ConsulStore>,
    key: Key,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> CounterResult {
    let mut r = CounterResult::default();
    while !stop.load(Ordering::Relaxed) {
        let cur = match store.get(&strong(), &key).await {
            Ok(c) => c,
            Err(e) => {
                if read_error_ok(&e) {
                    tally.lock().unwrap().error("counter get", &e);
                } else {
                    tally
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("counter get: {e} ({e:?})"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let n: u64 = cur
            .as_ref()
            .map(|e| String::from_utf8_lossy(&e.value).parse().unwrap_or(0))
            .unwrap_or(0);
        let next = (n + 1).to_string();
        let res = match &cur {
            Some(e) => store.update(&Context::new(), &key, next, e.revision).await,
            None => store.create(&Context::new(), &key, next).await,
        };
        match res {
            Ok(_) => r.acked += 1,
            Err(e) if e.is_precondition_failed() => r.conflicts += 1,
            Err(e) if write_error_ok(&e) => {
                tally.lock().unwrap().error("cas put", &e);
                match e.retry_class() {
                    RetryClass::OutcomeUnknown => r.unknown += 1,
                    _ => r.safe_failures += 1,
                }
            }
            Err(e) => tally.lock().unwrap().violations.push(format!(
                "cas put: untyped or wrongly classed error {e} ({e:?})"
            )),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r
}

/// Kills the leader during writes, reads and CAS updates; heals after.
async fn leader_kill_workload(cluster: &ConsulCluster) -> anyhow::Result<()> {
    let store = Arc::new(ConsulStore::connect(cluster_config(cluster.http_addrs())).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let progress = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(plain_writer(
                store.clone(),
                w,
                stop.clone(),
                killed_at.clone(),
                tally.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let counter_key = Key::new("faults/counter")?;
    store.remove(&strong(), &counter_key).await?;
    let counter = tokio::spawn(cas_counter(
        store.clone(),
        counter_key.clone(),
        stop.clone(),
        tally.clone(),
    ));
    wait_for("progress before the kill", WAIT, || async {
        Ok((progress.load(Ordering::Relaxed) >= 50).then_some(()))
    })
    .await?;
    let old = cluster.leader().await?;
    *killed_at.lock().unwrap() = Some(Instant::now());
    let election = cluster.stop_leader().await?;
    let after_kill = progress.load(Ordering::Relaxed);
    // Every writer must make progress on the new leader.
    let res = wait_for("writes to succeed after the re-election", WAIT, || async {
        Ok((progress.load(Ordering::Relaxed) >= after_kill + 40 * WRITERS).then_some(()))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<Key, u64> = HashMap::new();
    let mut ok_after_kill = Vec::new();
    for t in writers {
        let r = t.await?;
        acked.extend(r.acked);
        ok_after_kill.push(r.ok_after_kill);
    }
    let counter = counter.await?;
    let heal = cluster
        .restart_server(old)
        .await
        .context("restart the old leader");
    res?;
    heal?;
    wait_healthy(cluster, &store).await?;
    // Nothing acknowledged lost (strong reads after the recovery).
    let mut lost = Vec::new();
    for (k, want) in &acked {
        let got = get_retrying(&store, &strong(), k).await?;
        let got: u64 = got
            .map(|e| String::from_utf8_lossy(&e.value).parse().unwrap_or(0))
            .unwrap_or(0);
        if got < *want {
            lost.push(format!("{k}: acknowledged {want}, read {got}"));
        }
    }
    let final_count: u64 = get_retrying(&store, &strong(), &counter_key)
        .await?
        .map(|e| String::from_utf8_lossy(&e.value).parse().unwrap_or(0))
        .unwrap_or(0);
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let kill_instant = *killed_at.lock().unwrap();
    eprintln!(
        "[leader kill] re-election took {:.2}s; last error {:.2}s after the kill (recovered); \
         writes ok after the kill per writer {ok_after_kill:?}; errors by kind {:?}; \
         acknowledged keys {}, lost {}; cas counter {counter:?}, final value {final_count}",
        election.as_secs_f64(),
        match (tally.last_error, kill_instant) {
            (Some(e), Some(k)) => e.saturating_duration_since(k).as_secs_f64(),
            _ => 0.0,
        },
        tally.errors,
        acked.len(),
        lost.len()
    );
    ensure!(
        tally.violations.is_empty(),
        "violations: {:#?}",
        tally.violations
    );
    ensure!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");
    ensure!(
        ok_after_kill.iter().all(|&n| n > 0),
        "a writer never succeeded after the re-election: {ok_after_kill:?}"
    );
    ensure!(
        final_count >= counter.acked,
        "cas counter {final_count} below its {} acknowledged increments",
        counter.acked
    );
    ensure!(
        final_count <= counter.acked + counter.unknown,
        "cas counter {final_count} above acknowledged {} + outcome-unknown {}: a cas write \
         reported as failed with retry class Safe ({} of them) was applied",
        counter.acked,
        counter.unknown,
        counter.safe_failures
    );
    Ok(())
}

/// Two of three servers down: no leader. Default and strong reads and
/// writes fail `Unavailable` (reads safe to retry), never a stale answer;
/// stale reads are served within the bound or refused `StaleTooOld`.
async fn no_leader(cluster: &ConsulCluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let follower = (0..3)
        .find(|&i| i != leader)
        .ok_or_else(|| anyhow!("no follower"))?;
    let survivor = (0..3)
        .find(|&i| i != leader && i != follower)
        .ok_or_else(|| anyhow!("no survivor"))?;
    // The stopped servers first, so every request also fails over.
    let addrs = vec![
        cluster.http_addr(leader),
        cluster.http_addr(follower),
        cluster.http_addr(survivor),
    ];
    let store = ConsulStore::connect(cluster_config(addrs)).await?;
    let only_survivor =
        ConsulStore::connect(cluster_config(vec![cluster.http_addr(survivor)])).await?;
    let k = Key::new("faults/nl/k")?;
    let w = Key::new("faults/nl/w")?;
    store.remove(&strong(), &w).await?;
    let rev = store.set(&strong(), &k, "before").await?;
    wait_for("the survivor to have the write", WAIT, || async {
        let e = only_survivor
            .get(&stale(Duration::from_secs(3600)), &k)
            .await?;
        Ok(e.is_some_and(|e| e.revision >= rev).then_some(()))
    })
    .await?;
    cluster.node(leader).kill().await?;
    cluster.node(follower).kill().await?;
    let client = integration_tests::consul::http_client();
    let base = cluster.http_addr(survivor);
    let res = async {
        wait_for("the survivor to know no leader", WAIT, || async {
            Ok(leader_of(&client, &base).await?.is_empty().then_some(()))
        })
        .await?;
        let mut report = Vec::new();
        for (name, ctx) in [("default", Context::new()), ("strong", strong())] {
            let e = store
                .get(&ctx, &k)
                .await
                .err()
                .ok_or_else(|| anyhow!("{name} get without a leader answered (stale data)"))?;
            report.push(format!("{name} get: {} {e}", describe(&e)));
            ensure!(
                e.kind() == ErrorKind::Unavailable && e.retry_class() == RetryClass::Safe,
                "{name} get without a leader: {e} ({e:?})"
            );
            let e = store
                .list(&ctx, &ListRequest::prefix("faults/nl/"))
                .await
                .err()
                .ok_or_else(|| anyhow!("{name} list without a leader answered"))?;
            ensure!(
                e.kind() == ErrorKind::Unavailable && e.retry_class() == RetryClass::Safe,
                "{name} list without a leader: {e} ({e:?})"
            );
            match store.get_many(&ctx, std::slice::from_ref(&k)).await {
                Err(e) => ensure!(
                    e.kind() == ErrorKind::Unavailable,
                    "{name} get_many without a leader: {e} ({e:?})"
                ),
                Ok(v) => ensure!(
                    v.iter()
                        .all(|r| matches!(r, Err(e) if e.kind() == ErrorKind::Unavailable)),
                    "{name} get_many without a leader answered: {v:?}"
                ),
            }
        }
        let e = store
            .set(&Context::new(), &w, "no leader")
            .await
            .err()
            .ok_or_else(|| anyhow!("a write without a leader was acknowledged"))?;
        report.push(format!("put: {} {e}", describe(&e)));
        ensure!(write_error_ok(&e), "put without a leader: {e} ({e:?})");
        let put_class = e.retry_class();
        // Stale reads: within a generous bound, or refused; a tight bound
        // is always refused (no contact with a leader for seconds).
        match store.get(&stale(Duration::from_secs(3600)), &k).await {
            Ok(Some(e)) => {
                report.push(format!("stale 1h: ok, staleness {:?}", e.staleness));
                ensure!(e.value == "before", "stale read returned {e:?}");
                let s = e
                    .staleness
                    .ok_or_else(|| anyhow!("a stale read without its staleness: {e:?}"))?;
                ensure!(
                    s <= Duration::from_secs(3600),
                    "staleness {s:?} over the bound"
                );
            }
            Ok(None) => anyhow::bail!("stale read lost the key"),
            Err(e) => {
                report.push(format!("stale 1h: {} {e}", describe(&e)));
                ensure!(
                    matches!(e.kind(), ErrorKind::StaleTooOld { .. }),
                    "stale read without a leader: {e} ({e:?})"
                );
            }
        }
        let e = store
            .get(&stale(Duration::from_millis(1)), &k)
            .await
            .err()
            .ok_or_else(|| anyhow!("a 1ms-stale read without a leader answered"))?;
        report.push(format!("stale 1ms: {} {e}", describe(&e)));
        ensure!(
            matches!(e.kind(), ErrorKind::StaleTooOld { .. }),
            "1ms-stale read without a leader: {e} ({e:?})"
        );
        eprintln!("[no leader] {report:#?}");
        Ok(put_class)
    }
    .await;
    let started = async {
        cluster.node(leader).start().await?;
        cluster.node(follower).start().await
    }
    .await;
    let put_class = res?;
    started?;
    wait_healthy(cluster, &store).await?;
    let e = get_retrying(&store, &strong(), &k).await?;
    ensure!(
        e.as_ref().is_some_and(|e| e.value == "before"),
        "after recovery: {e:?}"
    );
    let wv = get_retrying(&store, &strong(), &w).await?;
    if put_class == RetryClass::Safe {
        ensure!(
            wv.is_none(),
            "a write refused with retry class Safe was applied: {wv:?}"
        );
    }
    Ok(())
}

/// A paused (frozen) agent: every call fails `Timeout` or
/// `DeadlineExceeded` within its deadline (writes outcome-unknown); after
/// the thaw the store works again.
async fn paused_agent(dev: &ConsulDev) -> anyhow::Result<()> {
    let store = ConsulStore::connect(
        ConsulConfig::new(dev.http_addr())
            .with_request_timeout(Duration::from_secs(2))
            .with_watch_wait(Duration::from_secs(2)),
    )
    .await?;
    let k = Key::new("faults/pause/k")?;
    store.set(&Context::new(), &k, "before").await?;
    dev.node().pause().await?;
    let res = async {
        let deadline = || Context::new().with_timeout(Duration::from_secs(4));
        // A hang is the failure; the bound only stops the test.
        let limit = Duration::from_secs(30);
        let timed_out =
            |e: &Error| matches!(e.kind(), ErrorKind::Timeout | ErrorKind::DeadlineExceeded);
        with_timeout("get on a paused agent", limit, async {
            let e = store
                .get(&deadline(), &k)
                .await
                .err()
                .ok_or_else(|| anyhow!("a paused agent answered a get"))?;
            eprintln!("[pause] get: {} {e}", describe(&e));
            ensure!(timed_out(&e), "get on a paused agent: {e} ({e:?})");
            ensure!(
                e.retry_class() != RetryClass::OutcomeUnknown,
                "a read with an unknown outcome: {e:?}"
            );
            Ok(())
        })
        .await?;
        with_timeout("put on a paused agent", limit, async {
            let e = store
                .set(&deadline(), &k, "during pause")
                .await
                .err()
                .ok_or_else(|| anyhow!("a paused agent acknowledged a put"))?;
            eprintln!("[pause] put: {} {e}", describe(&e));
            ensure!(timed_out(&e), "put on a paused agent: {e} ({e:?})");
            ensure!(
                e.retry_class() == RetryClass::OutcomeUnknown,
                "a put sent to a paused agent must be outcome-unknown: {e:?}"
            );
            Ok(())
        })
        .await?;
        with_timeout("list and get_many on a paused agent", limit, async {
            let e = store
                .list(&deadline(), &ListRequest::prefix("faults/pause/"))
                .await
                .err()
                .ok_or_else(|| anyhow!("a paused agent answered a list"))?;
            ensure!(timed_out(&e), "list on a paused agent: {e} ({e:?})");
            match store.get_many(&deadline(), std::slice::from_ref(&k)).await {
                Err(e) => ensure!(timed_out(&e), "get_many on a paused agent: {e} ({e:?})"),
                Ok(v) => ensure!(
                    v.iter().all(|r| matches!(r, Err(e) if timed_out(e))),
                    "get_many on a paused agent answered: {v:?}"
                ),
            }
            // A context deadline shorter than the request timeout.
            let short = Context::new().with_timeout(Duration::from_millis(500));
            let e = store
                .get(&short, &k)
                .await
                .err()
                .ok_or_else(|| anyhow!("a paused agent answered a get"))?;
            ensure!(timed_out(&e), "get with a 500ms deadline: {e} ({e:?})");
            Ok(())
        })
        .await
    }
    .await;
    let thawed = dev.node().unpause().await;
    res?;
    thawed?;
    let v = wait_for("the store to work after the thaw", WAIT, || async {
        Ok(store.get(&Context::new(), &k).await?)
    })
    .await?;
    ensure!(
        v.value == "before" || v.value == "during pause",
        "after the thaw: {v:?}"
    );
    wait_for("writes after the thaw", WAIT, || async {
        store.set(&Context::new(), &k, "after").await?;
        Ok(Some(()))
    })
    .await?;
    let v = store.get(&strong(), &k).await?;
    ensure!(
        v.is_some_and(|e| e.value == "after"),
        "write after the thaw lost"
    );
    Ok(())
}

/// A watch across a dev agent restart: the agent comes back empty with a
/// reset index. The watcher's view (built only from its events) must
/// converge on the new state: the vanished keys gone, the new writes (with
/// lower indexes than before) present.
async fn watch_across_restart(dev: &ConsulDev) -> anyhow::Result<()> {
    let cfg = ConsulConfig::new(dev.http_addr())
        .with_request_timeout(Duration::from_secs(3))
        .with_watch_wait(Duration::from_secs(2));
    let store = ConsulStore::connect(cfg).await?;
    let ctx = Context::new();
    // Push the index well above where a fresh agent starts.
    let mut last = 0;
    for i in 0..150 {
        last = store
            .set(
                &ctx,
                &Key::new(format!("faults/fill/{}", i % 10))?,
                i.to_string(),
            )
            .await?;
    }
    let w = Watcher::spawn(
        store
            .watch(&ctx, WatchRequest::prefix("faults/rw/"))
            .await?,
    );
    for k in ["a", "b", "c"] {
        store
            .set(
                &ctx,
                &Key::new(format!("faults/rw/{k}"))?,
                format!("pre-{k}"),
            )
            .await?;
    }
    let pre = common::state([
        ("faults/rw/a", "pre-a"),
        ("faults/rw/b", "pre-b"),
        ("faults/rw/c", "pre-c"),
    ]);
    w.wait_state("writes before the restart", &pre, WAIT)
        .await?;
    dev.node().stop().await?;
    dev.node().start().await?;
    dev.wait_ready().await?;
    // The store may need a moment to reconnect.
    let mut writes = 0;
    let first_new = loop {
        writes += 1;
        match store.set(&ctx, &Key::new("faults/rw/a")?, "post-a").await {
            Ok(r) => break r,
            Err(e) if e.kind() == ErrorKind::Unavailable || e.kind() == ErrorKind::Timeout => {
                ensure!(writes < 300, "no write succeeded after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    store.set(&ctx, &Key::new("faults/rw/x")?, "post-x").await?;
    let want = common::state([("faults/rw/a", "post-a"), ("faults/rw/x", "post-x")]);
    let actual = common::state_of(
        &store
            .list_all(&strong(), ListRequest::prefix("faults/rw/"), usize::MAX)
            .await?,
    );
    ensure!(actual == want, "server state after the restart: {actual:?}");
    let v = w
        .wait_state("the watch to converge after the restart", &want, WAIT)
        .await;
    let view = w.view();
    eprintln!(
        "[watch restart] index before {last}, first write after {first_new} ({writes} tries); \
         {} puts, {} deletes, {} resyncs, stream errors {:?}",
        view.puts, view.deletes, view.resyncs, view.errors
    );
    v?;
    ensure!(!view.ended, "the watch stream ended");
    // And it keeps going.
    store.set(&ctx, &Key::new("faults/rw/y")?, "later").await?;
    let mut want = want;
    want.insert("faults/rw/y".into(), bytes::Bytes::from_static(b"later"));
    w.wait_state("the watch after the restart", &want, WAIT)
        .await?;
    Ok(())
}

/// A watch whose agent is the leader, across the leader's crash: the store
/// moves to another server and the watcher's view converges on the final
/// state of a range written all along by another store.
async fn watch_across_leader_kill(cluster: &ConsulCluster) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let mut addrs = vec![cluster.http_addr(leader)];
    addrs.extend(
        (0..3)
            .filter(|&i| i != leader)
            .map(|i| cluster.http_addr(i)),
    );
    let watching = ConsulStore::connect(cluster_config(addrs)).await?;
    let writing = Arc::new(ConsulStore::connect(cluster_config(cluster.http_addrs())).await?);
    let w = Watcher::spawn(
        watching
            .watch(&Context::new(), WatchRequest::prefix("faults/wl/"))
            .await?,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (store, stop, writes) = (writing.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let k = Key::new(format!("faults/wl/{}", i % 8)).expect("key");
                if store.set(&Context::new(), &k, i.to_string()).await.is_ok() {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                if i.is_multiple_of(5) {
                    let _ = store
                        .remove(
                            &Context::new(),
                            &Key::new(format!("faults/wl/{}", i % 3)).expect("key"),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_for("writes before the kill", WAIT, || async {
        Ok((writes.load(Ordering::Relaxed) >= 30).then_some(()))
    })
    .await?;
    let killed = cluster.stop_leader().await;
    let after = writes.load(Ordering::Relaxed);
    let progressed = wait_for("writes after the kill", WAIT, || async {
        Ok((writes.load(Ordering::Relaxed) >= after + 30).then_some(()))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let heal = cluster.restart_server(leader).await;
    killed?;
    progressed?;
    heal?;
    wait_healthy(cluster, &writing).await?;
    let want = common::state_of(
        &writing
            .list_all(&strong(), ListRequest::prefix("faults/wl/"), usize::MAX)
            .await?,
    );
    let res = w
        .wait_state("the watch to converge after the leader kill", &want, WAIT)
        .await;
    let v = w.view();
    eprintln!(
        "[watch leader kill] {} keys; {} puts, {} deletes, {} resyncs, stream errors {:?}",
        want.len(),
        v.puts,
        v.deletes,
        v.resyncs,
        v.errors
    );
    res?;
    // Per key, the events arrived in revision order.
    for (k, revs) in &v.revisions {
        ensure!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "events of {k} out of revision order: {revs:?}"
        );
    }
    Ok(())
}

const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_CLIENTS: usize = 6;
const LOCK_KEYS: usize = 2;

/// One acquisition: when the attempt started, when it got the lock.
struct Acquired {
    started: Instant,
    got: Instant,
}

#[derive(Default)]
struct LockTally {
    acquired: Vec<Acquired>,
    errors: BTreeMap<String, usize>,
    /// Critical sections entered while another holder of the same key
    /// was inside.
    overlaps: usize,
    /// Tokens a per-key fence rejected (a holder with a lower token than
    /// an earlier holder's).
    fenced_out: usize,
}

/// A client that takes one of the lock keys, enters its critical section
/// (checking that it is alone there and that its token passes the key's
/// fence), and releases, until stopped.
#[allow(clippy::too_many_arguments)]
async fn lock_client(
    store: Arc<ConsulStore>,
    c: usize,
    keys: Arc<Vec<Key>>,
    inside: Arc<Vec<AtomicUsize>>,
    fences: Arc<Vec<Fence>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<LockTally>>,
) {
    let mut n = c;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let i = n % keys.len();
        let started = Instant::now();
        let ctx = Context::new().with_timeout(Duration::from_secs(60));
        match store.lock(&ctx, &keys[i], LockOptions::new(LOCK_TTL)).await {
            Ok(g) => {
                let got = Instant::now();
                let overlap = inside[i].fetch_add(1, Ordering::SeqCst) != 0;
                let fenced = !fences[i].admit(g.token());
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside[i].fetch_sub(1, Ordering::SeqCst);
                {
                    let mut t = tally.lock().unwrap();
                    t.acquired.push(Acquired { started, got });
                    t.overlaps += usize::from(overlap);
                    t.fenced_out += usize::from(fenced);
                }
                if let Err(e) = g.release().await {
                    *tally
                        .lock()
                        .unwrap()
                        .errors
                        .entry(format!("release {}", describe(&e)))
                        .or_default() += 1;
                }
            }
            Err(e) => {
                *tally
                    .lock()
                    .unwrap()
                    .errors
                    .entry(format!("lock {}", describe(&e)))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Clients contend for two lock keys; the Raft leader is killed. No two
/// holders of a key are ever inside at once, fences never reject a holder,
/// and locks are usable again after the re-election (time printed).
async fn locks_across_leader_kill(cluster: &ConsulCluster) -> anyhow::Result<()> {
    let addrs = cluster.http_addrs();
    let tag = common::run_tag();
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..LOCK_KEYS)
            .map(|i| Key::new(format!("faults/{tag}/lock-{i}")))
            .collect::<Result<_, _>>()?,
    );
    let inside: Arc<Vec<AtomicUsize>> =
        Arc::new((0..LOCK_KEYS).map(|_| AtomicUsize::new(0)).collect());
    let fences: Arc<Vec<Fence>> = Arc::new((0..LOCK_KEYS).map(|_| Fence::new()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let tally: Arc<Mutex<LockTally>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..LOCK_CLIENTS {
        // Each client its own store, starting at a different server.
        let mut mine = addrs.clone();
        mine.rotate_left(c % addrs.len());
        let store = Arc::new(ConsulStore::connect(cluster_config(mine)).await?);
        clients.push(tokio::spawn(lock_client(
            store,
            c,
            keys.clone(),
            inside.clone(),
            fences.clone(),
            stop.clone(),
            tally.clone(),
        )));
    }
    wait_for("lock handoffs before the kill", WAIT, || async {
        Ok((tally.lock().unwrap().acquired.len() >= 40).then_some(()))
    })
    .await?;
    let old = cluster.leader().await?;
    let before = tally.lock().unwrap().acquired.len();
    let killed = Instant::now();
    let election = cluster.stop_leader().await?;
    let res = wait_for("lock handoffs after the kill", WAIT, || async {
        let t = tally.lock().unwrap();
        let after = t.acquired.iter().filter(|a| a.started >= killed).count();
        Ok((after >= 40).then_some(()))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let heal = cluster
        .restart_server(old)
        .await
        .context("restart the old leader");
    let t = std::mem::take(&mut *tally.lock().unwrap());
    // Usable again: the end of the longest gap between two acquisitions
    // (of any client, either key) that ends after the kill.
    let mut gots: Vec<Instant> = t.acquired.iter().map(|a| a.got).collect();
    gots.sort();
    let gap = gots
        .windows(2)
        .filter(|w| w[1] >= killed)
        .max_by_key(|w| w[1].saturating_duration_since(w[0]))
        .map(|w| (w[1].saturating_duration_since(w[0]), w[1]));
    let usable = gap.map(|(_, end)| end.saturating_duration_since(killed));
    let gap = gap.map(|(d, _)| d);
    eprintln!(
        "[locks leader kill] {LOCK_CLIENTS} clients on {LOCK_KEYS} keys, ttl {LOCK_TTL:?}; \
         re-election took {:.2}s; acquisitions {} before the kill, {} in all; \
         mutual-exclusion violations {}; fenced-out tokens {}; \
         locks usable again {:.2}s after the kill (end of the longest gap between \
         acquisitions, {:.2}s); errors by kind {:?}",
        election.as_secs_f64(),
        before,
        t.acquired.len(),
        t.overlaps,
        t.fenced_out,
        usable.map_or(f64::NAN, |d| d.as_secs_f64()),
        gap.map_or(f64::NAN, |d| d.as_secs_f64()),
        t.errors,
    );
    res?;
    heal?;
    ensure!(
        t.overlaps == 0,
        "{} mutual-exclusion violations",
        t.overlaps
    );
    ensure!(t.fenced_out == 0, "{} holders fenced out", t.fenced_out);
    ensure!(usable.is_some(), "no lock acquired after the kill");
    Ok(())
}

/// A holder that stops renewing: its lost signal fires by its TTL, the
/// next holder gets the lock (after Consul invalidates the session, within
/// 2×TTL) with a higher token, and a fence rejects the stale token.
async fn holder_stops_renewing(cluster: &ConsulCluster) -> anyhow::Result<()> {
    let store = ConsulStore::connect(cluster_config(cluster.http_addrs())).await?;
    let next_store = {
        let mut addrs = cluster.http_addrs();
        addrs.rotate_left(1);
        ConsulStore::connect(cluster_config(addrs)).await?
    };
    let k = Key::new(format!("faults/{}/stale-holder", common::run_tag()))?;
    let fence = Fence::new();
    let a = store
        .lock(
            &Context::new(),
            &k,
            LockOptions::try_lock(LOCK_TTL).with_auto_renew(false),
        )
        .await?;
    let t0 = Instant::now();
    ensure!(fence.admit(a.token()), "fence refused the first holder");
    let waiter = tokio::spawn(async move {
        let ctx = Context::new().with_timeout(LOCK_TTL * 4);
        let g = next_store.lock(&ctx, &k, LockOptions::new(LOCK_TTL)).await;
        (g, Instant::now(), next_store)
    });
    tokio::time::timeout(LOCK_TTL + Duration::from_secs(2), a.lost())
        .await
        .map_err(|_| anyhow!("the lost signal did not fire within the ttl + 2 s"))?;
    let lost_after = t0.elapsed();
    let (b, got, _next_store) = waiter.await?;
    let b = b.context("the next holder")?;
    let handoff = got.saturating_duration_since(t0);
    let stale_admitted = fence.admit(b.token()) && fence.admit(a.token());
    let renewed = a.renew().await;
    eprintln!(
        "[stale holder] lost signal {:.2}s after acquiring ({:?}); next holder got the lock \
         {:.2}s after the stale holder's acquisition (ttl {LOCK_TTL:?}); tokens {} -> {}; \
         stale token admitted by the fence: {stale_admitted}; stale renew: {:?}",
        lost_after.as_secs_f64(),
        a.lost_reason(),
        handoff.as_secs_f64(),
        a.token(),
        b.token(),
        renewed.as_ref().map_err(Error::kind),
    );
    ensure!(b.token() > a.token(), "next token not above the stale one");
    ensure!(!stale_admitted, "the fence admitted the stale token");
    ensure!(
        matches!(&renewed, Err(e) if e.kind() == ErrorKind::Locked),
        "stale renew: {renewed:?}"
    );
    ensure!(
        handoff >= LOCK_TTL && handoff <= LOCK_TTL * 2 + Duration::from_secs(3),
        "handoff after {handoff:?}, outside ttl..2×ttl + 3 s"
    );
    // The stale holder's release must not free the new holder's lock.
    a.release().await?;
    let busy = store
        .lock(&Context::new(), b.key(), LockOptions::try_lock(LOCK_TTL))
        .await;
    ensure!(
        matches!(&busy, Err(e) if e.kind() == ErrorKind::Locked),
        "try-lock after the stale release: {:?}",
        busy.map(|g| g.token())
    );
    ensure!(!b.is_lost(), "the new holder lost its lease");
    let _: FencingToken = b.token();
    b.release().await?;
    Ok(())
}

struct Env {
    cluster: Lazy<ConsulCluster>,
    dev: Lazy<ConsulDev>,
}

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let env = Arc::new(Env {
        // A short hold makes leaderless requests fail in 2 s, not 7.
        cluster: Lazy::new(|| {
            ConsulCluster::start_with(ConsulOptions {
                extra_hcl: vec![r#"performance { rpc_hold_timeout = "2s" }"#.into()],
                ..ConsulOptions::default()
            })
        }),
        dev: Lazy::new(ConsulDev::start),
    });
    let (e1, e2, e3, e4, e5, e6, e7) = (
        env.clone(),
        env.clone(),
        env.clone(),
        env.clone(),
        env.clone(),
        env.clone(),
        env.clone(),
    );
    let trials = vec![
        (
            "consul_cluster_leader_kill_mixed_workload_loses_nothing",
            common::trial(&infra, move || async move {
                leader_kill_workload(e1.cluster.get().await?).await
            }),
        ),
        (
            "consul_cluster_no_leader_is_typed_never_stale",
            common::trial(&infra, move || async move {
                no_leader(e2.cluster.get().await?).await
            }),
        ),
        (
            "consul_cluster_watch_across_leader_kill_converges",
            common::trial(&infra, move || async move {
                watch_across_leader_kill(e5.cluster.get().await?).await
            }),
        ),
        (
            "consul_cluster_locks_across_leader_kill_stay_exclusive",
            common::trial(&infra, move || async move {
                locks_across_leader_kill(e6.cluster.get().await?).await
            }),
        ),
        (
            "consul_cluster_lock_holder_that_stops_renewing_is_fenced_out",
            common::trial(&infra, move || async move {
                holder_stops_renewing(e7.cluster.get().await?).await
            }),
        ),
        (
            "consul_dev_paused_agent_times_out_then_recovers",
            common::trial(&infra, move || async move {
                paused_agent(e3.dev.get().await?).await
            }),
        ),
        (
            "consul_dev_watch_across_restart_converges",
            common::trial(&infra, move || async move {
                watch_across_restart(e4.dev.get().await?).await
            }),
        ),
    ];
    let code = common::run_trials(trials);
    infra.block_on(async move { drop(env) });
    code
}
