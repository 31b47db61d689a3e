//! Locks across a failover on the 3+3 cluster: client A holds a lock
//! (auto-renewed), the master owning the key's slot is killed, client B
//! keeps trying to take the same lock and client C a free lock in the same
//! slot. Each scenario runs on a fresh cluster and prints what it measured:
//! whether B got in while A still believed it held the lock, the fencing
//! tokens, whether a [`Fence`] rejected A's stale token once B wrote with
//! its own, and the time from the kill to the next acquisitions.
//!
//! Scenarios:
//! - `plain`: no durable writes, replication left alone;
//! - `plain_replica_behind`: just before A acquires, the master's replica
//!   link is cut and kept down (`CONFIG SET maxclients 1` on the master,
//!   then `CLIENT KILL TYPE replica`; established client connections stay),
//!   so the master dies with A's lease and the last write of the fencing
//!   counter not replicated: the asynchronous-replication hazard, made
//!   deterministic;
//! - `durable_replica_behind`: the same with `with_durable_writes(1, 500ms)`:
//!   acquisitions are refused while the replica is behind; once it caught
//!   up A acquires (replicated before acknowledged) and the master dies.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};
use integration_tests::{key_slot, RedisCluster};
use kvmap_core::{Context, ErrorKind, Fence, Key, KvStore, LockGuard, LockOptions};
use kvmap_redis::{RedisConfig, RedisStore};

/// Long enough to outlive the failover: a lease lost by the failover shows
/// up as an overlap, not as an expiry.
const TTL: Duration = Duration::from_secs(10);
/// How long after the kill B and C keep trying.
const GIVE_UP: Duration = Duration::from_secs(45);

#[derive(Debug, Default, Clone)]
struct Facts {
    mode: &'static str,
    a_token: u64,
    a_acquire_attempts: u32,
    kill_to_promoted: Duration,
    /// B's first successful acquisition, after the kill.
    b_at: Option<Duration>,
    b_token: Option<u64>,
    /// B got the lock while A's guard said it still held it.
    overlap: bool,
    /// When A's guard reported the lease lost (after the kill), and why.
    a_lost_at: Option<Duration>,
    a_lost_reason: Option<String>,
    /// When A released (the lease was still its own after the failover).
    a_released_at: Option<Duration>,
    /// C's first acquisition of a free lock in the same slot.
    c_at: Option<Duration>,
    /// The killed node was restarted (durable mode needs a replica).
    restarted_at: Option<Duration>,
    /// Whether the fence admitted B's token, then A's stale token.
    fence_admitted_b: Option<bool>,
    fence_admitted_stale_a: Option<bool>,
    /// Durable mode with the replica behind: acquisitions refused, and
    /// whether one was granted anyway.
    durable_refused_while_behind: Option<(u32, bool)>,
    /// Errors B saw while trying, by kind.
    b_errors: std::collections::BTreeMap<String, usize>,
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{} ms", d.as_millis()))
}

impl Facts {
    fn print(&self) {
        eprintln!(
            "[lock failover {}] A token {} (acquire attempts {}); kill -> replica promoted {} ms; \
             second holder got in while A believed it held the lock: {}; B got the lock at {} (token {:?}); \
             A lost its lease at {} ({:?}); A released at {}; free lock in the slot acquired at {}; \
             killed node restarted at {}; fence admitted B: {:?}, then A's stale token: {:?}; \
             counter lost in the failover (B's token not above A's): {}; B's errors while trying: {:?}; \
             durable acquisitions refused while the replica was behind (refused, granted anyway): {:?}",
            self.mode,
            self.a_token,
            self.a_acquire_attempts,
            self.kill_to_promoted.as_millis(),
            yes(self.overlap),
            ms(self.b_at),
            self.b_token,
            ms(self.a_lost_at),
            self.a_lost_reason,
            ms(self.a_released_at),
            ms(self.c_at),
            ms(self.restarted_at),
            self.fence_admitted_b,
            self.fence_admitted_stale_a,
            self.b_token.map_or("unknown (B never got in)".to_owned(), |b| yes(b <= self.a_token).to_owned()),
            self.b_errors,
            self.durable_refused_while_behind,
        );
    }
}

async fn set_maxclients(
    conn: &mut redis::aio::MultiplexedConnection,
    n: u32,
) -> anyhow::Result<()> {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(n)
        .query_async(conn)
        .await?;
    Ok(())
}

/// On a master: no new connections (`maxclients 1`, existing ones stay),
/// then its replica links are closed; the replicas cannot come back.
async fn cut_replica_link(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    set_maxclients(conn, 1).await?;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(conn)
        .await?;
    ensure!(killed == 1, "the master had {killed} replica links");
    // The link stays down (the replica retries every second, refused).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    ensure!(
        info.contains("connected_slaves:0"),
        "the replica reconnected: {info}"
    );
    Ok(())
}

fn config(cluster: &RedisCluster, durable: bool) -> RedisConfig {
    let c = RedisConfig::cluster(cluster.urls()).with_op_timeout(Duration::from_secs(1));
    if durable {
        c.with_durable_writes(1, Duration::from_millis(500))
    } else {
        c
    }
}

/// Acquires `key` once per attempt until one succeeds (durable mode may
/// refuse while the replica is behind), up to `deadline`.
async fn acquire_retrying(
    store: &RedisStore,
    key: &Key,
    deadline: Duration,
) -> anyhow::Result<(LockGuard, u32)> {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let ctx = Context::new().with_timeout(Duration::from_secs(3));
        match store.lock(&ctx, key, LockOptions::try_lock(TTL)).await {
            Ok(g) => return Ok((g, attempts)),
            Err(e) if start.elapsed() < deadline => {
                tracing_free_note(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(anyhow!("no acquisition within {deadline:?}: {e}")),
        }
    }
}

fn tracing_free_note(e: &kvmap_core::Error) {
    if e.kind() != ErrorKind::Locked {
        eprintln!("  (acquire attempt failed: {e})");
    }
}

async fn scenario(mode: &'static str, durable: bool, cut_replica: bool) -> anyhow::Result<Facts> {
    let cluster = RedisCluster::start().await?;
    let (a, b, c) = (
        RedisStore::connect(config(&cluster, durable)).await?,
        Arc::new(RedisStore::connect(config(&cluster, durable)).await?),
        Arc::new(RedisStore::connect(config(&cluster, durable)).await?),
    );
    // Both keys carry the hash tag `lf`: one slot, one master.
    let key = Key::new("{lf}/job")?;
    let free = Key::new("{lf}/free")?;
    let slot = key_slot(b"lf");
    let masters = cluster.masters().await?;
    let victim = masters
        .iter()
        .find(|m| m.owns_slot(slot))
        .ok_or_else(|| anyhow!("no master owns slot {slot}"))?
        .clone();
    let victim_idx = victim.index.ok_or_else(|| anyhow!("victim index"))?;

    // Warm-up: the lock works and its token history starts before A.
    let (g, _) = acquire_retrying(&a, &key, Duration::from_secs(10)).await?;
    g.release().await?;

    let master_client = redis::Client::open(victim.url())?;
    let mut master_conn = master_client.get_multiplexed_async_connection().await?;
    if cut_replica {
        // The master refuses new connections and drops its replica's
        // link: the replica cannot reconnect, every write from now on
        // stays on the master only.
        cut_replica_link(&mut master_conn).await?;
    }
    let mut refused_while_behind = None;
    if cut_replica && durable {
        // With WAIT, a lease the replica does not have is refused.
        let t = Instant::now();
        let mut refused = 0u32;
        let mut granted = false;
        while t.elapsed() < Duration::from_secs(2) {
            let ctx = Context::new().with_timeout(Duration::from_secs(3));
            match a.lock(&ctx, &key, LockOptions::try_lock(TTL)).await {
                Ok(g) => {
                    granted = true;
                    g.release().await?;
                    break;
                }
                Err(e) => {
                    eprintln!("  (durable acquire while the replica is behind: {e})");
                    refused += 1;
                }
            }
        }
        refused_while_behind = Some((refused, granted));
        // Let the replica catch up again; A's next acquire is replicated.
        set_maxclients(&mut master_conn, 10_000).await?;
    }
    let (guard_a, attempts) = acquire_retrying(&a, &key, Duration::from_secs(10)).await?;
    let a_token = guard_a.token();
    let fence = Arc::new(Fence::new());
    ensure!(fence.admit(a_token), "fence refused A's first write");
    let holder_a: Arc<Mutex<Option<LockGuard>>> = Arc::new(Mutex::new(Some(guard_a)));

    // The master dies now, with A's lease replicated or not.
    cluster.node(victim_idx).kill().await?;
    let kill_at = Instant::now();
    let facts = Arc::new(Mutex::new(Facts {
        mode,
        a_token: a_token.get(),
        a_acquire_attempts: attempts,
        durable_refused_while_behind: refused_while_behind,
        ..Facts::default()
    }));

    // A's belief, polled: when did its guard report the lease lost?
    let a_watch = {
        let (holder_a, facts) = (holder_a.clone(), facts.clone());
        tokio::spawn(async move {
            while kill_at.elapsed() < GIVE_UP {
                let lost = {
                    let h = holder_a.lock().expect("holder");
                    match h.as_ref() {
                        Some(g) if g.is_lost() => Some(g.lost_reason()),
                        Some(_) => None,
                        None => return,
                    }
                };
                if let Some(reason) = lost {
                    let mut f = facts.lock().expect("facts");
                    f.a_lost_at = Some(kill_at.elapsed());
                    f.a_lost_reason = reason;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // B keeps trying the held lock.
    let b_task = {
        let (b, key, holder_a, facts, fence) = (
            b.clone(),
            key.clone(),
            holder_a.clone(),
            facts.clone(),
            fence.clone(),
        );
        tokio::spawn(async move {
            while kill_at.elapsed() < GIVE_UP {
                let ctx = Context::new().with_timeout(Duration::from_secs(3));
                match b.lock(&ctx, &key, LockOptions::try_lock(TTL)).await {
                    Ok(g) => {
                        let at = kill_at.elapsed();
                        // Did A still believe it held the lock?
                        let a_believes = holder_a
                            .lock()
                            .expect("holder")
                            .as_ref()
                            .is_some_and(|g| !g.is_lost());
                        // B writes to the fenced resource, then A (stale
                        // or not) tries with its token.
                        let admitted_b = fence.admit(g.token());
                        let admitted_a = fence.admit(a_token);
                        {
                            let mut f = facts.lock().expect("facts");
                            f.b_at = Some(at);
                            f.b_token = Some(g.token().get());
                            f.overlap = a_believes;
                            f.fence_admitted_b = Some(admitted_b);
                            f.fence_admitted_stale_a = Some(admitted_a);
                        }
                        return Some(g);
                    }
                    Err(e) => {
                        let name = format!("{:?}", e.kind());
                        *facts
                            .lock()
                            .expect("facts")
                            .b_errors
                            .entry(name)
                            .or_default() += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            None
        })
    };

    // C: a free lock in the same slot, i.e. lock availability.
    let c_task = {
        let (c, free, facts) = (c.clone(), free.clone(), facts.clone());
        tokio::spawn(async move {
            while kill_at.elapsed() < GIVE_UP {
                let ctx = Context::new().with_timeout(Duration::from_secs(3));
                if let Ok(g) = c.lock(&ctx, &free, LockOptions::try_lock(TTL)).await {
                    facts.lock().expect("facts").c_at = Some(kill_at.elapsed());
                    let _ = g.release().await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    cluster
        .wait_state_ok(Duration::from_secs(40))
        .await
        .context("replica promotion")?;
    let promoted = kill_at.elapsed();
    let new_master = cluster.master_for_slot(slot).await?;
    eprintln!(
        "[lock failover {mode}] killed master port {} (slot {slot}); replica port {} promoted after {} ms",
        victim.port,
        new_master.port,
        promoted.as_millis()
    );
    facts.lock().expect("facts").kill_to_promoted = promoted;

    // Give B a chance while A still holds (A's renewals go to the new
    // master now), then A lets go if the lease is still its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if durable {
        // Without a replica every durable acquire fails: bring the old
        // master back (it rejoins as a replica).
        let t = kill_at.elapsed();
        cluster.restart_node(victim_idx).await.context("restart")?;
        facts.lock().expect("facts").restarted_at = Some(t);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let a_guard = holder_a.lock().expect("holder").take();
    if let Some(g) = a_guard {
        if !g.is_lost() {
            facts.lock().expect("facts").a_released_at = Some(kill_at.elapsed());
        }
        let _ = g.release().await;
    }
    let b_guard = b_task.await?;
    let _ = a_watch.await;
    let _ = c_task.await;

    // After B: successive holders get increasing tokens again.
    let mut next_token = None;
    if let Some(g) = b_guard {
        let tb = g.token();
        g.release().await?;
        let (g2, _) = acquire_retrying(&a, &key, Duration::from_secs(20)).await?;
        next_token = Some((tb, g2.token()));
        g2.release().await?;
    }
    let facts = facts.lock().expect("facts").clone();
    facts.print();
    if let Some((tb, t2)) = next_token {
        eprintln!("[lock failover {mode}] holder after B: token {t2} (B's {tb})");
        ensure!(t2 > tb, "token after B's release {t2} not above B's {tb}");
    }
    drop(cluster);
    Ok(facts)
}

/// What must hold whatever the failover did.
fn check(f: &Facts) -> anyhow::Result<()> {
    let b_token = f
        .b_token
        .ok_or_else(|| anyhow!("B never got the lock within {GIVE_UP:?}: {f:?}"))?;
    ensure!(
        f.c_at.is_some(),
        "no lock in the slot acquired after the kill"
    );
    ensure!(
        f.fence_admitted_b == Some(true) || b_token < f.a_token,
        "fence refused B's token {b_token} (A's {})",
        f.a_token
    );
    // The token is max(counter + 1, server time in µs): even when the
    // failover lost the counter's last write, B's token (from the new
    // master's clock; the containers share the host's) is above A's, so
    // the fence stops the stale holder.
    if f.overlap {
        eprintln!(
            "[lock failover {}] second holder got in while A believed it held the lock; tokens A {} < B {b_token}",
            f.mode, f.a_token
        );
    }
    ensure!(
        b_token > f.a_token,
        "B's token {b_token} not above A's {} after the failover",
        f.a_token
    );
    ensure!(
        f.fence_admitted_stale_a == Some(false),
        "fence admitted A's stale token {} after B wrote with {b_token}",
        f.a_token
    );
    if !f.overlap {
        // No overlap: B only got in after A let go or lost the lease.
        let a_gone = [f.a_released_at, f.a_lost_at].into_iter().flatten().min();
        ensure!(
            a_gone.is_some_and(|g| f.b_at.is_some_and(|b| b >= g)),
            "B got in without overlap but before A let go: {f:?}"
        );
    }
    Ok(())
}

/// Lock keys never surface in data operations: a watch of everything sees
/// no event for a taken, expired or released lease, and `list` /
/// `get_many` of the whole namespace show only the data key.
async fn lock_keys_invisible() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let store = RedisStore::connect(config(&cluster, false)).await?;
    let ctx = Context::new();
    let data = Key::new("inv/data")?;
    let locked = Key::new("inv/locked")?;
    let mut events = store
        .watch(&ctx, kvmap_core::WatchRequest::prefix(""))
        .await?;
    // The watch is live: this put is its first event.
    kvmap_core::KvStoreExt::set(&store, &ctx, &data, "v").await?;
    let first = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut events),
    )
    .await
    .context("no event for the put")?;
    ensure!(
        matches!(&first, Some(Ok(kvmap_core::WatchEvent::Put { entry, .. })) if entry.key == data),
        "first event: {first:?}"
    );
    // A lease that expires on the server (keyspace expiry notification),
    // one that is released, one still held.
    let short = store
        .lock(
            &ctx,
            &locked,
            LockOptions::try_lock(Duration::from_millis(50)).with_auto_renew(false),
        )
        .await?;
    short.abandon();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = store
        .lock(&ctx, &locked, LockOptions::try_lock(TTL))
        .await?;
    released.release().await?;
    let held = store
        .lock(&ctx, &locked, LockOptions::try_lock(TTL))
        .await?;
    // Only resyncs (the cluster watch resyncs when the slot map it polls
    // changes, e.g. while a new cluster settles) may arrive, holding the
    // data key alone.
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut resyncs = 0;
    while let Ok(ev) = tokio::time::timeout_at(until, futures::StreamExt::next(&mut events)).await {
        match ev {
            Some(Ok(kvmap_core::WatchEvent::Resync { entries, .. }))
                if entries.iter().all(|e| e.key == data) =>
            {
                resyncs += 1;
            }
            other => return Err(anyhow!("the watch saw lock traffic: {other:?}")),
        }
    }
    let page = store
        .list(&ctx, &kvmap_core::ListRequest::prefix(""))
        .await?;
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.clone()).collect();
    ensure!(keys == vec![data.clone()], "listed: {keys:?}");
    let got = store
        .get_many(&ctx, &[data.clone(), locked.clone()])
        .await?;
    ensure!(
        matches!(&got[0], Ok(Some(_))) && matches!(&got[1], Ok(None)),
        "get_many: {got:?}"
    );
    ensure!(
        store.get(&ctx, &locked).await?.is_none(),
        "a locked key without data has data"
    );
    held.release().await?;
    eprintln!(
        "[lock keys] no watch event, list entry or get_many value from taken, expired, released or held leases ({resyncs} resyncs with the data key only)"
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let trials = vec![
        (
            "lock_keys_invisible_to_watch_list_get_many",
            common::trial(&infra, lock_keys_invisible),
        ),
        (
            "lock_failover_plain",
            common::trial(&infra, || async {
                let f = scenario("plain", false, false).await?;
                check(&f)
            }),
        ),
        (
            "lock_failover_plain_replica_behind",
            common::trial(&infra, || async {
                let f = scenario("plain_replica_behind", false, true).await?;
                check(&f)
            }),
        ),
        (
            "lock_failover_durable_replica_behind",
            common::trial(&infra, || async {
                let f = scenario("durable_replica_behind", true, true).await?;
                check(&f)?;
                // WAIT: A's lease was on the replica before A was told it
                // held the lock, so the promoted replica still had it.
                ensure!(
                    f.durable_refused_while_behind
                        .is_some_and(|(refused, granted)| refused > 0 && !granted),
                    "durable mode granted a lease the replica did not have: {f:?}"
                );
                ensure!(!f.overlap, "durable mode: a second holder got in: {f:?}");
                Ok(())
            }),
        ),
    ];
    common::run_trials(trials)
}
