//! Checked histories against real backends: concurrent clients run get /
//! put / create / compare-and-swap / delete on a few keys while faults are
//! injected, and every key's history is checked for linearizability
//! (`integration_tests::history`). Prints per backend: histories checked,
//! operations, unknown-outcome operations, violations.
//!
//! Trials (run one at a time):
//! - `memory`: `MemoryStore`, also behind a wrapper that answers some
//!   writes with outcome-unknown errors (applied or not): 0 violations.
//! - `checker_catches_broken_stores`: the same pipeline on a store serving
//!   stale reads and on one acknowledging writes it drops: violations > 0.
//! - `rocksdb_reopen`: `RocksStore` in a temp dir, dropped and reopened
//!   every 150 ms during the run: 0 violations.
//! - `rocksdb_killed_writer`: the RocksDB is held by a child process (this
//!   binary with `KVMAP_HISTORIES_CHILD_DB` set) serving the calls over
//!   stdin/stdout; it is SIGKILLed every 250 ms (calls in flight: unknown
//!   outcome) and restarted on the same database: 0 violations (a process
//!   crash loses no acknowledged write).
//! - `redis_cluster_failover`: the 3+3 cluster, a master paused (failover,
//!   then it rejoins) and a master killed (failover, then restarted),
//!   without and with durable writes. Redis promises no linearizable read
//!   across a failover (kvmap-redis docs.md: `Strong` is unsupported, a
//!   deposed master serves reads for a while) and, without durable writes,
//!   may lose acknowledged writes; with durable writes an acknowledged write
//!   has reached a replica. So: full-history violations are reported as the
//!   documented weaker guarantee; with durable writes a violation in the
//!   history of effects (writes only) is a lost acknowledged write, printed
//!   as such (seen once in about six runs after the double failover; see
//!   kvmap-redis docs.md, Consistency).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use async_trait::async_trait;
use integration_tests::history::checker::effects_only;
use integration_tests::history::workload;
use integration_tests::history::{
    check_history, CheckConfig, KeyCheck, Operation, StoreSlot, Verdict, WorkloadConfig,
    WorkloadStats,
};
use integration_tests::{key_slot, RedisCluster};
use kvmap_core::{
    Bytes, Capabilities, Context, DeleteOptions, Entry, Error, ErrorKind, Key, KvStore, ListPage,
    ListRequest, MemoryStore, Op, PutOptions, Result as KvResult, RetryClass, Revision,
    WatchRequest, WatchStream,
};
use rand::Rng;

/// The figures of one backend run.
#[derive(Debug, Default)]
struct Summary {
    histories: usize,
    ops: usize,
    unknown: usize,
    dropped: usize,
    violations: usize,
    effect_violations: usize,
    inconclusive: usize,
    max_check: Duration,
    max_states: usize,
}

/// Checks the full history and its effects-only projection per key and
/// prints the figures (and the first violations).
fn check_and_report(backend: &str, ops: &[Operation], stats: &WorkloadStats) -> Summary {
    let config = CheckConfig::default();
    let full = check_history(ops, &config);
    let effects = check_history(&effects_only(ops), &config);
    let mut s = Summary {
        histories: full.len(),
        ops: full.iter().map(|c| c.ops).sum(),
        unknown: full.iter().map(|c| c.unknown).sum(),
        dropped: stats.dropped,
        ..Summary::default()
    };
    let tally = |checks: &[KeyCheck], s: &mut Summary| {
        for c in checks {
            s.max_check = s.max_check.max(c.elapsed);
            s.max_states = s.max_states.max(c.states);
            if matches!(c.verdict, Verdict::Inconclusive { .. }) {
                s.inconclusive += 1;
            }
        }
    };
    tally(&full, &mut s);
    tally(&effects, &mut s);
    s.violations = full.iter().filter(|c| c.verdict.is_violation()).count();
    s.effect_violations = effects.iter().filter(|c| c.verdict.is_violation()).count();
    println!(
        "[histories] {backend}: histories checked {}, ops {}, unknown-outcome ops {}, dropped ops {}, \
         violations {} (of which in the effects-only history {}), inconclusive {}, \
         slowest key check {:.1} ms, most states {}",
        s.histories,
        s.ops,
        s.unknown,
        s.dropped,
        s.violations,
        s.effect_violations,
        s.inconclusive,
        s.max_check.as_secs_f64() * 1e3,
        s.max_states
    );
    if !stats.errors.is_empty() {
        println!("[histories] {backend}: errors {:?}", stats.errors);
    }
    for (i, c) in full.iter().filter(|c| c.verdict.is_violation()).enumerate() {
        if i >= 2 {
            println!("[histories] {backend}: ... {} more", s.violations - 2);
            break;
        }
        if let Verdict::Violation(v) = &c.verdict {
            println!("[histories] {backend}: {v}");
        }
    }
    s
}

/// Test wrappers around a store.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Correct, but 8% of writes fail with an outcome-unknown `Timeout`
    /// (half of them applied), 4% with a `Safe` `Unavailable` (not applied).
    Ambiguous,
    /// Reads are served from a cache filled by reads, 20 ms old at most.
    StaleReads,
    /// 5% of unconditional puts are acknowledged without being written.
    LostWrites,
}

#[derive(Debug)]
struct Wrapped {
    inner: MemoryStore,
    mode: Mode,
    cache: Mutex<std::collections::HashMap<Key, (Instant, Option<Entry>)>>,
}

impl Wrapped {
    fn new(mode: Mode) -> Self {
        Self {
            inner: MemoryStore::new(),
            mode,
            cache: Mutex::default(),
        }
    }

    /// `Some(apply_first)` when this write should fail as outcome-unknown.
    fn ambiguous(&self, op: Op) -> Option<Result<bool, Error>> {
        if self.mode != Mode::Ambiguous {
            return None;
        }
        let roll = rand::rng().random_range(0..100);
        let timeout = Error::new(ErrorKind::Timeout)
            .with_op(op)
            .with_retry(RetryClass::OutcomeUnknown);
        match roll {
            0..4 => Some(Ok(true)),
            4..8 => Some(Err(timeout)),
            8..12 => Some(Err(Error::new(ErrorKind::Unavailable)
                .with_op(op)
                .with_retry(RetryClass::Safe))),
            _ => None,
        }
    }
}

#[async_trait]
impl KvStore for Wrapped {
    fn name(&self) -> &str {
        "wrapped-memory"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, ctx: &Context, key: &Key) -> KvResult<Option<Entry>> {
        if self.mode == Mode::StaleReads {
            if let Some((at, e)) = self.cache.lock().expect("cache").get(key) {
                if at.elapsed() < Duration::from_millis(20) {
                    return Ok(e.clone());
                }
            }
            let e = self.inner.get(ctx, key).await?;
            self.cache
                .lock()
                .expect("cache")
                .insert(key.clone(), (Instant::now(), e.clone()));
            return Ok(e);
        }
        self.inner.get(ctx, key).await
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> KvResult<Revision> {
        if self.mode == Mode::LostWrites
            && options == PutOptions::overwrite()
            && rand::rng().random_range(0..100) < 5
        {
            return Ok(self.inner.revision() + 1_000_000);
        }
        match self.ambiguous(Op::Put) {
            Some(Ok(_)) => {
                let _ = self.inner.put(ctx, key, value, options).await;
                Err(Error::new(ErrorKind::Timeout)
                    .with_op(Op::Put)
                    .with_retry(RetryClass::OutcomeUnknown))
            }
            Some(Err(e)) => Err(e),
            None => self.inner.put(ctx, key, value, options).await,
        }
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> KvResult<bool> {
        match self.ambiguous(Op::Delete) {
            Some(Ok(_)) => {
                let _ = self.inner.delete(ctx, key, options).await;
                Err(Error::new(ErrorKind::Timeout)
                    .with_op(Op::Delete)
                    .with_retry(RetryClass::OutcomeUnknown))
            }
            Some(Err(e)) => Err(e),
            None => self.inner.delete(ctx, key, options).await,
        }
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> KvResult<ListPage> {
        self.inner.list(ctx, request).await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> KvResult<WatchStream> {
        self.inner.watch(ctx, request).await
    }
}

async fn run_on(
    store: Arc<dyn KvStore>,
    config: WorkloadConfig,
) -> (Vec<Operation>, WorkloadStats) {
    workload::run(
        Arc::new(StoreSlot::new(store)),
        config,
        Arc::new(AtomicBool::new(false)),
    )
    .await
}

fn memory_config(prefix: &str) -> WorkloadConfig {
    WorkloadConfig {
        ops_per_key: 300,
        max_rounds: 4,
        ..WorkloadConfig::new(prefix, 4)
    }
}

async fn memory() -> anyhow::Result<()> {
    let (ops, stats) = run_on(Arc::new(MemoryStore::new()), memory_config("mem")).await;
    let s = check_and_report("memory", &ops, &stats);
    ensure!(s.histories == 16, "16 histories, got {}", s.histories);
    ensure!(s.ops >= 4 * 4 * 300, "checker ran on {} ops", s.ops);
    ensure!(s.violations == 0, "memory: {} violations", s.violations);
    ensure!(
        s.inconclusive == 0,
        "memory: {} inconclusive",
        s.inconclusive
    );

    let (ops, stats) = run_on(
        Arc::new(Wrapped::new(Mode::Ambiguous)),
        memory_config("amb"),
    )
    .await;
    let s = check_and_report("memory with outcome-unknown errors", &ops, &stats);
    ensure!(s.histories == 16, "16 histories, got {}", s.histories);
    ensure!(s.ops >= 4000, "checker ran on {} ops", s.ops);
    ensure!(s.unknown >= 50, "only {} unknown-outcome ops", s.unknown);
    ensure!(s.dropped >= 50, "only {} dropped ops", s.dropped);
    ensure!(s.violations == 0, "{} violations", s.violations);
    ensure!(s.inconclusive == 0, "{} inconclusive", s.inconclusive);
    Ok(())
}

async fn checker_catches_broken_stores() -> anyhow::Result<()> {
    for (mode, name) in [
        (
            Mode::StaleReads,
            "memory serving stale reads (broken on purpose)",
        ),
        (
            Mode::LostWrites,
            "memory losing acknowledged writes (broken on purpose)",
        ),
    ] {
        let config = WorkloadConfig {
            think: Duration::from_micros(500),
            ..memory_config("broken")
        };
        let (ops, stats) = run_on(Arc::new(Wrapped::new(mode)), config).await;
        let s = check_and_report(name, &ops, &stats);
        ensure!(s.ops >= 4000, "checker ran on {} ops", s.ops);
        ensure!(s.violations >= 1, "{name}: the checker found no violation");
        if mode == Mode::LostWrites {
            ensure!(
                s.effect_violations >= 1,
                "{name}: lost writes not seen in the effects-only history"
            );
        }
    }
    Ok(())
}

async fn rocksdb_reopen() -> anyhow::Result<()> {
    use kvmap_rocksdb::{RocksConfig, RocksStore};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("db");
    let open = {
        let path = path.clone();
        move || {
            let path = path.clone();
            async move {
                let store = RocksStore::open_async(RocksConfig::new(path)).await?;
                Ok::<Arc<dyn KvStore>, anyhow::Error>(Arc::new(store))
            }
        }
    };
    let slot = Arc::new(StoreSlot::new(open().await?));
    let stop = Arc::new(AtomicBool::new(false));
    let reopens = Arc::new(AtomicUsize::new(0));
    let fault = {
        let (slot, stop, reopens, open) = (slot.clone(), stop.clone(), reopens.clone(), open);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                slot.reopen(open.clone()).await?;
                reopens.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    let config = WorkloadConfig {
        think: Duration::from_micros(1500),
        ..memory_config("rocks")
    };
    let (ops, stats) = workload::run(slot, config, Arc::new(AtomicBool::new(false))).await;
    stop.store(true, Ordering::Relaxed);
    fault.await.context("reopen task")??;
    let reopens = reopens.load(Ordering::Relaxed);
    println!("[histories] rocksdb: {reopens} drop/reopen cycles during the run");
    let s = check_and_report("rocksdb (drop/reopen)", &ops, &stats);
    ensure!(reopens >= 3, "only {reopens} reopens during the run");
    ensure!(s.histories == 16, "16 histories, got {}", s.histories);
    ensure!(s.ops >= 4000, "checker ran on {} ops", s.ops);
    ensure!(s.violations == 0, "rocksdb: {} violations", s.violations);
    ensure!(
        s.inconclusive == 0,
        "rocksdb: {} inconclusive",
        s.inconclusive
    );
    Ok(())
}

/// Key names of history `n`: three in the slots of the master owning slot
/// 0 (the fault's victim), one elsewhere.
fn victim_keys(namespace: &str, victim: &[std::ops::RangeInclusive<u16>]) -> workload::KeyNames {
    let namespace = namespace.to_owned();
    let victim = victim.to_vec();
    Arc::new(move |n| {
        (0..4)
            .map(|j| {
                (0..)
                    .map(|s| format!("h{n}/k{j}-{s}"))
                    .find(|k| {
                        let slot = key_slot(format!("{namespace}{k}").as_bytes());
                        victim.iter().any(|r| r.contains(&slot)) == (j < 3)
                    })
                    .expect("some suffix lands in the slot range")
            })
            .collect()
    })
}

async fn redis_run(cluster: &RedisCluster, durable: bool) -> anyhow::Result<()> {
    use kvmap_redis::{RedisConfig, RedisStore};
    let label = if durable {
        "redis cluster, durable writes (WAIT 1, 500 ms)"
    } else {
        "redis cluster, no durable writes"
    };
    let namespace = if durable { "histdw:" } else { "histnd:" };
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    let victim = cluster.masters().await?[0].clone();
    let mut config = RedisConfig::cluster(cluster.urls())
        .with_key_prefix(namespace)
        .with_op_timeout(Duration::from_secs(1));
    if durable {
        config = config.with_durable_writes(1, Duration::from_millis(500));
    }
    let store: Arc<dyn KvStore> = Arc::new(RedisStore::connect(config).await?);
    let stop = Arc::new(AtomicBool::new(false));
    let workload_config = WorkloadConfig {
        clients: 4,
        keys: victim_keys(namespace, &victim.slots),
        ops_per_key: 150,
        max_rounds: 1000,
        op_timeout: Duration::from_secs(4),
        think: Duration::from_millis(6),
        error_pause: Duration::from_millis(50),
    };
    let run = tokio::spawn(workload::run(
        Arc::new(StoreSlot::new(store)),
        workload_config,
        stop.clone(),
    ));
    let faults = async {
        let node_timeout = cluster.options().node_timeout;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Pause the master: its replica takes over; unpaused, it rejoins as
        // a replica (and serves some requests as a deposed master first).
        let m = cluster.masters().await?[0].clone();
        let idx = m.index.context("victim master is ours")?;
        println!("[histories] {label}: pausing master on port {}", m.port);
        cluster.node(idx).pause().await?;
        tokio::time::sleep(node_timeout * 2 + Duration::from_secs(1)).await;
        cluster.node(idx).unpause().await?;
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        let after_pause = cluster.masters().await?[0].clone();
        println!(
            "[histories] {label}: unpaused; slot 0 now on port {}",
            after_pause.port
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Kill the (new) master: failover, then restart it as a replica.
        let idx = after_pause.index.context("master is ours")?;
        let took = cluster.kill_master(0).await?;
        println!(
            "[histories] {label}: killed master on port {}, failover in {:.1}s",
            after_pause.port,
            took.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.restart_node(idx).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        anyhow::Ok((m.port, after_pause.port))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ops, stats) = run.await.context("workload task")?;
    let (paused, killed) = faults?;
    let s = check_and_report(label, &ops, &stats);
    let promoted = cluster.masters().await?[0].port;
    ensure!(
        paused != killed && promoted != killed,
        "the faults moved slot 0 (paused {paused}, killed {killed}, now {promoted})"
    );
    ensure!(stats.rounds >= 5, "only {} histories", stats.rounds);
    ensure!(s.ops >= 1500, "checker ran on {} ops", s.ops);
    if s.violations > 0 {
        println!(
            "[histories] {label}: {} of {} histories not linearizable: the documented weaker \
             guarantee (kvmap-redis docs.md, Consistency: no linearizable read across a \
             failover{})",
            s.violations,
            s.histories,
            if durable {
                ""
            } else {
                "; without durable writes an acknowledged write can be lost at failover"
            }
        );
    }
    if durable && s.effect_violations > 0 {
        // Observed once in about six runs (2026-12-04): one write
        // acknowledged with WAIT 1 missing after this schedule's two
        // failovers (a pause, then a kill). WAIT is not a consensus
        // protocol (Redis documents that it does not make Redis strongly
        // consistent); kvmap-redis docs.md (Durable writes) states this
        // level, and issue 10 tracks the investigation. Reported loudly,
        // not asserted, so that the rest of the checks keep running in CI.
        println!(
            "[histories] {label}: LOST ACKNOWLEDGED DURABLE WRITE: {} histories of effects not              linearizable (see kvmap-redis docs.md, Durable writes)",
            s.effect_violations
        );
    }
    ensure!(
        s.inconclusive * 10 <= s.histories * 2,
        "{label}: {} of {} checks inconclusive",
        s.inconclusive,
        s.histories * 2
    );
    Ok(())
}

async fn redis_cluster_failover() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    redis_run(&cluster, false).await?;
    redis_run(&cluster, true).await
}

// ---------------------------------------------------------------------------
// RocksDB behind a writer child process that is killed (SIGKILL) mid-run.

/// The environment variable that makes this binary a RocksDB child serving
/// the line protocol below on stdin/stdout.
const CHILD_DB_ENV: &str = "KVMAP_HISTORIES_CHILD_DB";

/// Child mode: opens the RocksDB at `path` and answers requests, one line
/// each: `id get key` / `id put key value o|c|u<rev>` / `id del key -|<rev>`
/// with `id ok <value>|- <rev>` (get), `id ok <rev>` (put), `id ok 0|1`
/// (delete), `id exists`, `id conflict -|<rev>`, `id err safe|unknown`.
fn child_main(path: &str) -> ExitCode {
    use kvmap_rocksdb::{RocksConfig, RocksStore};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let store =
            Arc::new(RocksStore::open(RocksConfig::new(path)).expect("child: open rocksdb"));
        let out = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let (store, out) = (store.clone(), out.clone());
            tokio::spawn(async move {
                let reply = child_serve(store.as_ref(), &line).await;
                let mut out = out.lock().await;
                let _ = out.write_all(format!("{reply}\n").as_bytes()).await;
                let _ = out.flush().await;
            });
        }
    });
    ExitCode::SUCCESS
}

async fn child_serve(store: &dyn KvStore, line: &str) -> String {
    let ctx = Context::new();
    let parts: Vec<&str> = line.split(' ').collect();
    let id = parts.first().copied().unwrap_or("0");
    let Some(key) = parts.get(2).and_then(|k| Key::new(*k).ok()) else {
        return format!("{id} err safe");
    };
    let rev = |s: &str| s.parse::<Revision>().ok();
    let result: KvResult<String> = match parts.get(1).copied() {
        Some("get") => store.get(&ctx, &key).await.map(|e| match e {
            Some(e) => format!("{} {}", String::from_utf8_lossy(&e.value), e.revision),
            None => "- 0".into(),
        }),
        Some("put") => {
            let value = Bytes::from(parts.get(3).copied().unwrap_or("").to_owned());
            let options = match parts.get(4).copied() {
                Some("c") => PutOptions::create(),
                Some(u) if u.starts_with('u') => PutOptions::update(rev(&u[1..]).unwrap_or(0)),
                _ => PutOptions::overwrite(),
            };
            store
                .put(&ctx, &key, value, options)
                .await
                .map(|r| r.to_string())
        }
        Some("del") => {
            let mut options = DeleteOptions::default();
            options.if_revision = parts.get(3).and_then(|r| rev(r));
            store
                .delete(&ctx, &key, options)
                .await
                .map(|d| u8::from(d).to_string())
        }
        _ => return format!("{id} err safe"),
    };
    match result {
        Ok(s) => format!("{id} ok {s}"),
        Err(e) => match e.kind() {
            ErrorKind::AlreadyExists => format!("{id} exists"),
            ErrorKind::Conflict { current } => format!(
                "{id} conflict {}",
                current.map_or("-".to_owned(), |r| r.to_string())
            ),
            _ if e.retry_class() == RetryClass::Safe => format!("{id} err safe"),
            _ => format!("{id} err unknown"),
        },
    }
}

type Pending = Arc<Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<String>>>>;

struct ChildConn {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    pending: Pending,
}

/// A `KvStore` whose every call is served by a child process holding the
/// RocksDB; [`ChildStore::kill`] SIGKILLs it (calls in flight fail: writes
/// with an unknown outcome), the next call starts a new child on the same
/// database.
#[derive(Debug)]
struct ChildStore {
    path: std::path::PathBuf,
    conn: tokio::sync::Mutex<Option<ChildConn>>,
    next_id: std::sync::atomic::AtomicU64,
    capabilities: Capabilities,
}

impl std::fmt::Debug for ChildConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildConn").finish_non_exhaustive()
    }
}

impl ChildStore {
    fn new(path: std::path::PathBuf) -> Self {
        Self {
            path,
            conn: tokio::sync::Mutex::new(None),
            next_id: std::sync::atomic::AtomicU64::new(1),
            // Limits as usual; only get / put / delete are served (the
            // workload uses nothing else).
            capabilities: MemoryStore::new().capabilities(),
        }
    }

    fn spawn(&self) -> anyhow::Result<ChildConn> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .env(CHILD_DB_ENV, &self.path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some((id, rest)) = line.split_once(' ') else {
                    continue;
                };
                let tx = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| p.lock().expect("pending").remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(rest.to_owned());
                }
            }
            // The child is gone: every call still waiting fails.
            p.lock().expect("pending").clear();
        });
        Ok(ChildConn {
            child,
            stdin,
            pending,
        })
    }

    /// SIGKILLs the child (if one runs) and waits for it to exit.
    async fn kill(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.lock().await;
        if let Some(mut c) = conn.take() {
            c.child.start_kill()?;
            c.child.wait().await?;
            c.pending.lock().expect("pending").clear();
        }
        Ok(())
    }

    /// Sends one request; `Err(sent)` when no reply came (`sent`: the
    /// request may have reached the child).
    async fn call(&self, request: &str) -> Result<String, bool> {
        use tokio::io::AsyncWriteExt;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut conn = self.conn.lock().await;
            if conn.is_none() {
                *conn = Some(self.spawn().map_err(|_| false)?);
            }
            let c = conn.as_mut().ok_or(false)?;
            c.pending.lock().expect("pending").insert(id, tx);
            let line = format!("{id} {request}\n");
            if c.stdin.write_all(line.as_bytes()).await.is_err() || c.stdin.flush().await.is_err() {
                return Err(true);
            }
        }
        rx.await.map_err(|_| true)
    }

    async fn request(&self, op: Op, request: String) -> KvResult<String> {
        let lost = |sent: bool| {
            let retry = if sent && op.is_write() {
                RetryClass::OutcomeUnknown
            } else {
                RetryClass::Safe
            };
            Error::new(ErrorKind::Unavailable)
                .with_op(op)
                .with_detail("writer child gone")
                .with_retry(retry)
        };
        let reply = self.call(&request).await.map_err(lost)?;
        let parts: Vec<&str> = reply.split(' ').collect();
        let rev = |i: usize| parts.get(i).and_then(|r| r.parse::<Revision>().ok());
        match parts.first().copied() {
            Some("ok") => Ok(parts[1..].join(" ")),
            Some("exists") => Err(Error::new(ErrorKind::AlreadyExists).with_op(op)),
            Some("conflict") => {
                Err(Error::new(ErrorKind::Conflict { current: rev(1) }).with_op(op))
            }
            Some("err") if parts.get(1) == Some(&"safe") => Err(Error::new(ErrorKind::Unavailable)
                .with_op(op)
                .with_retry(RetryClass::Safe)),
            _ => Err(Error::new(ErrorKind::Internal)
                .with_op(op)
                .with_retry(RetryClass::OutcomeUnknown)),
        }
    }
}

#[async_trait]
impl KvStore for ChildStore {
    fn name(&self) -> &str {
        "rocksdb-child"
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn get(&self, _ctx: &Context, key: &Key) -> KvResult<Option<Entry>> {
        let reply = self
            .request(Op::Get, format!("get {}", key.as_str()))
            .await?;
        let (value, rev) = reply.split_once(' ').unwrap_or(("-", "0"));
        if value == "-" {
            return Ok(None);
        }
        let rev: Revision = rev.parse().map_err(|_| Error::new(ErrorKind::Internal))?;
        Ok(Some(Entry::new(
            key.clone(),
            Bytes::from(value.to_owned()),
            rev,
            rev,
        )))
    }

    async fn put(
        &self,
        _ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> KvResult<Revision> {
        let mode = match options.mode {
            kvmap_core::PutMode::Overwrite => "o".to_owned(),
            kvmap_core::PutMode::Create => "c".to_owned(),
            kvmap_core::PutMode::Update(r) => format!("u{r}"),
        };
        let value = String::from_utf8_lossy(&value).into_owned();
        let reply = self
            .request(Op::Put, format!("put {} {value} {mode}", key.as_str()))
            .await?;
        reply
            .parse()
            .map_err(|_| Error::new(ErrorKind::Internal).with_op(Op::Put))
    }

    async fn delete(&self, _ctx: &Context, key: &Key, options: DeleteOptions) -> KvResult<bool> {
        let cond = options
            .if_revision
            .map_or("-".to_owned(), |r| r.to_string());
        let reply = self
            .request(Op::Delete, format!("del {} {cond}", key.as_str()))
            .await?;
        Ok(reply == "1")
    }

    async fn list(&self, _ctx: &Context, _request: &ListRequest) -> KvResult<ListPage> {
        Err(Error::new(ErrorKind::Unsupported {
            capability: kvmap_core::Capability::OrderedList,
        }))
    }

    async fn watch(&self, _ctx: &Context, _request: WatchRequest) -> KvResult<WatchStream> {
        Err(Error::new(ErrorKind::Unsupported {
            capability: kvmap_core::Capability::Watch,
        }))
    }
}

async fn rocksdb_killed_writer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(ChildStore::new(dir.path().join("db")));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let fault = {
        let (store, stop, kills) = (store.clone(), stop.clone(), kills.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                store.kill().await?;
                kills.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    let config = WorkloadConfig {
        think: Duration::from_micros(1500),
        ..memory_config("child")
    };
    let (ops, stats) = run_on(store.clone(), config).await;
    stop.store(true, Ordering::Relaxed);
    fault.await.context("kill task")??;
    store.kill().await?;
    let kills = kills.load(Ordering::Relaxed);
    println!("[histories] rocksdb: writer child SIGKILLed {kills} times during the run");
    let s = check_and_report("rocksdb (writer child killed)", &ops, &stats);
    ensure!(kills >= 3, "only {kills} kills during the run");
    ensure!(s.histories == 16, "16 histories, got {}", s.histories);
    ensure!(s.ops >= 4000, "checker ran on {} ops", s.ops);
    ensure!(
        s.violations == 0,
        "rocksdb child: {} violations",
        s.violations
    );
    ensure!(
        s.inconclusive == 0,
        "rocksdb child: {} inconclusive",
        s.inconclusive
    );
    Ok(())
}

type TrialFn = Box<dyn FnOnce() -> Result<(), String> + Send>;

fn trial<F, Fut>(rt: &Arc<tokio::runtime::Runtime>, f: F) -> TrialFn
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = rt.clone();
    Box::new(move || {
        let t0 = Instant::now();
        let r = rt.block_on(f()).map_err(|e| format!("{e:#}"));
        println!("[histories] trial took {:.1}s", t0.elapsed().as_secs_f64());
        r
    })
}

fn main() -> ExitCode {
    if let Ok(path) = std::env::var(CHILD_DB_ENV) {
        return child_main(&path);
    }
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let listing = args.list;
    let docker = listing || rt.block_on(integration_tests::docker_available_or_skip());
    let trials: Vec<(&str, TrialFn, bool)> = vec![
        ("memory", trial(&rt, memory), false),
        (
            "checker_catches_broken_stores",
            trial(&rt, checker_catches_broken_stores),
            false,
        ),
        ("rocksdb_reopen", trial(&rt, rocksdb_reopen), false),
        (
            "rocksdb_killed_writer",
            trial(&rt, rocksdb_killed_writer),
            false,
        ),
        (
            "redis_cluster_failover",
            trial(&rt, redis_cluster_failover),
            !docker,
        ),
    ];
    let trials = trials
        .into_iter()
        .map(|(name, f, ignored)| {
            libtest_mimic::Trial::test(name, move || f().map_err(Into::into))
                .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
