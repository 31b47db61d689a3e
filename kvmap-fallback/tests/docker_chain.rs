//! Fallback chains over real servers in Docker (the `integration-tests`
//! harness):
//!
//! - the whole conformance suite (`conformance::fallback::redis_rocksdb::*`)
//!   on a chain Redis (standalone container) → RocksDB with the outbox
//!   policy, both healthy;
//! - a three-store chain Redis → Consul (dev agent) → RocksDB with the
//!   outbox policy: the Redis container is stopped (reads and writes are
//!   served by Consul), started again, and after the replay every write
//!   acknowledged during the outage is on Redis; the same with Consul
//!   stopped too (served by RocksDB).
//!
//! Skipped with a message when Docker is missing (`KVMAP_REQUIRE_DOCKER=1`
//! makes that a failure). No timed assertions: the tests wait for
//! conditions with generous bounds and print the figures they see.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use kvmap_consul::{ConsulConfig, ConsulStore};
use kvmap_core::conformance::{Suite, SuiteOptions};
use kvmap_core::{Context, DeleteOptions, Key, KvStore, KvStoreExt};
use kvmap_fallback::{
    BreakerConfig, ChainConfig, FallbackChain, OutboxConfig, ReplayMode, ReplayReport, WritePolicy,
};
use kvmap_redis::{RedisConfig, RedisStore};
use kvmap_rocksdb::{RocksConfig, RocksStore};

/// Redis's watch buffer, small enough for the slow-consumer case.
const WATCH_BUFFER: usize = 32;
/// Backend operation timeouts of the fault tests (below the caller's
/// deadline, so a hang trips the breaker).
const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// The caller's deadline in the fault tests.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of every wait for a condition.
const WAIT: Duration = Duration::from_secs(30);

const BEFORE: usize = 20;
const NEW: usize = 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn listing() -> bool {
    std::env::args().any(|a| a == "--list")
}

fn main() -> ExitCode {
    integration_tests::install_crypto_provider();
    let infra = runtime();
    if !listing() && !infra.block_on(integration_tests::docker_available_or_skip()) {
        return ExitCode::SUCCESS;
    }
    let suite = run_suite(&infra);
    let faults = run_fault_trials();
    if suite == ExitCode::SUCCESS {
        faults
    } else {
        suite
    }
}

// ---------------------------------------------------------------------------
// Conformance: Redis → RocksDB, both healthy.

fn run_suite(infra: &tokio::runtime::Runtime) -> ExitCode {
    // The server lives on its own runtime, so it can be dropped (and its
    // container removed) after the suite consumed its runtime. `--list`
    // starts nothing (the factory is never called).
    let server = if listing() {
        None
    } else {
        Some(
            infra
                .block_on(integration_tests::RedisStandalone::start())
                .expect("start redis standalone"),
        )
    };
    let url = server
        .as_ref()
        .map_or_else(|| "redis://127.0.0.1:1".to_string(), |s| s.url());
    let root = tempfile::tempdir().expect("temporary directory");
    let base = root.path().to_owned();
    let n = Arc::new(AtomicUsize::new(0));
    let code = Suite::new("fallback::redis_rocksdb")
        .with_runtime(runtime())
        .with_options(SuiteOptions {
            watch_buffer: Some(WATCH_BUFFER),
            ..SuiteOptions::default()
        })
        .run(move || {
            let url = url.clone();
            let dir = base.join(format!("case-{}", n.fetch_add(1, Ordering::Relaxed)));
            async move {
                let primary = RedisStore::connect(
                    RedisConfig::standalone(url).with_watch_buffer(WATCH_BUFFER),
                )
                .await?;
                let fallback = RocksStore::open_async(
                    RocksConfig::new(dir.join("fallback")).with_block_cache_bytes(4 << 20),
                )
                .await?;
                let chain = FallbackChain::builder()
                    .backend("redis", Arc::new(primary))
                    .backend("rocksdb", Arc::new(fallback))
                    .config(
                        ChainConfig::default().with_write_policy(WritePolicy::Outbox(
                            OutboxConfig::new(dir.join("outbox")).with_sync(false),
                        )),
                    )
                    .build()
                    .await?;
                Ok(Arc::new(chain) as Arc<dyn KvStore>)
            }
        });
    infra.block_on(async move { drop(server) });
    drop(root);
    code
}

// ---------------------------------------------------------------------------
// Faults on the three-store chain Redis → Consul → RocksDB.

type TrialFn = Box<dyn FnOnce() -> Result<(), String> + Send>;

fn trial<F, Fut>(rt: &Arc<tokio::runtime::Runtime>, f: F) -> TrialFn
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = rt.clone();
    Box::new(move || rt.block_on(f()).map_err(|e| format!("{e:#}")))
}

/// One at a time: each starts its own containers and stops them.
fn run_fault_trials() -> ExitCode {
    let rt = Arc::new(runtime());
    let trials: Vec<(&str, TrialFn)> = vec![
        (
            "docker_chain::redis_consul_rocksdb::redis_stopped_consul_serves_outbox_reaches_redis",
            trial(&rt, || outage(Outage::Redis)),
        ),
        (
            "docker_chain::redis_consul_rocksdb::redis_and_consul_stopped_rocksdb_serves_outbox_reaches_redis",
            trial(&rt, || outage(Outage::RedisAndConsul)),
        ),
    ];
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let trials = trials
        .into_iter()
        .map(|(name, f)| libtest_mimic::Trial::test(name, move || f().map_err(Into::into)))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    Redis,
    RedisAndConsul,
}

fn key(s: &str) -> Key {
    Key::new(s).expect("valid key")
}

async fn redis_store(url: &str) -> kvmap_core::Result<RedisStore> {
    RedisStore::connect(
        RedisConfig::standalone(url)
            .with_op_timeout(OP_TIMEOUT)
            .with_connect_timeout(OP_TIMEOUT)
            .with_watch_events(false)
            .with_key_prefix("docker-chain:"),
    )
    .await
}

async fn consul_store(addr: &str) -> kvmap_core::Result<ConsulStore> {
    ConsulStore::connect(
        ConsulConfig::new(addr)
            .with_request_timeout(OP_TIMEOUT)
            .with_connect_timeout(OP_TIMEOUT)
            .with_key_prefix("docker-chain/"),
    )
    .await
}

async fn chain(redis_url: &str, consul_addr: &str, dir: &Path) -> anyhow::Result<FallbackChain> {
    let redis = redis_store(redis_url).await.context("connect redis")?;
    let consul = consul_store(consul_addr).await.context("connect consul")?;
    let local = RocksStore::open_async(RocksConfig::new(dir.join("local")))
        .await
        .context("open rocksdb")?;
    FallbackChain::builder()
        .backend("redis", Arc::new(redis))
        .backend("consul", Arc::new(consul))
        .backend("rocksdb", Arc::new(local))
        .config(
            ChainConfig::default()
                .with_breaker(
                    BreakerConfig::default()
                        .with_failure_threshold(3)
                        .with_cool_down(Duration::from_millis(100))
                        .with_max_cool_down(Duration::from_millis(200)),
                )
                .with_write_policy(WritePolicy::Outbox(
                    OutboxConfig::new(dir.join("outbox")).with_replay(ReplayMode::Manual),
                )),
        )
        .build()
        .await
        .context("build chain")
}

/// Reads `k` through `store`: `Some(value, served_by)` or `None` (absent).
async fn read(
    store: &dyn KvStore,
    ctx: &Context,
    k: &str,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    let e = store
        .get(ctx, &key(k))
        .await
        .with_context(|| format!("get {k:?}"))?;
    Ok(e.map(|e| {
        (
            String::from_utf8_lossy(&e.value).into_owned(),
            e.served_by.as_deref().map(str::to_owned),
        )
    }))
}

/// Asserts `k` reads `want` through the chain, served by `by`.
async fn expect_served(
    c: &FallbackChain,
    ctx: &Context,
    k: &str,
    want: &str,
    by: &str,
) -> anyhow::Result<()> {
    match read(c, ctx, k).await? {
        Some((v, served)) => {
            ensure!(v == want, "{k}: read {v:?}, expected {want:?}");
            ensure!(
                served.as_deref() == Some(by),
                "{k}: served by {served:?}, expected {by:?}"
            );
            Ok(())
        }
        None => bail!("{k}: absent, expected {want:?} served by {by}"),
    }
}

/// Replays until the outbox is drained (the primary's breaker needs its
/// cool-down and a probe, Redis its restart), within [`WAIT`].
async fn drain(c: &FallbackChain) -> anyhow::Result<ReplayReport> {
    let mut total = ReplayReport::default();
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.replay_now().await.context("replay_now")?;
        total.replayed += r.replayed;
        total.conflicts += r.conflicts;
        total.already_applied += r.already_applied;
        total.expired += r.expired;
        if r.drained() {
            return Ok(total);
        }
        if Instant::now() > deadline {
            bail!(
                "outbox not drained within {WAIT:?}: {} left, last report {r:?}",
                c.outbox_depth()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it returns `Ok(true)`, within [`WAIT`]; the last error
/// or refusal is reported.
async fn wait_for<F, Fut>(what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => "condition false".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not within {WAIT:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outage(kind: Outage) -> anyhow::Result<()> {
    let t_setup = Instant::now();
    // AOF, so the values Redis held before the stop survive the restart
    // and the replay's conditions (update-if-revision) hold; without it a
    // restarted Redis is empty and every overwrite is a conflict.
    let (redis, consul) = tokio::try_join!(
        integration_tests::RedisStandalone::start_with(integration_tests::RedisOptions {
            extra_args: ["--appendonly", "yes", "--appendfsync", "always"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        }),
        integration_tests::ConsulDev::start(),
    )?;
    let dir = tempfile::tempdir()?;
    let c = chain(&redis.url(), &consul.http_addr(), dir.path()).await?;
    let direct_consul = consul_store(&consul.http_addr()).await?;
    let ctx = Context::new().with_timeout(CALL_TIMEOUT);
    println!("setup (containers, chain): {:?}", t_setup.elapsed());

    // Healthy: written to Redis, copied to Consul and RocksDB.
    for i in 0..BEFORE {
        c.set(&ctx, &key(&format!("k/{i}")), format!("before-{i}"))
            .await
            .with_context(|| format!("healthy set k/{i}"))?;
    }
    c.set(&ctx, &key("gone"), "before").await?;
    for i in 0..BEFORE {
        expect_served(&c, &ctx, &format!("k/{i}"), &format!("before-{i}"), "redis").await?;
        let on_consul = read(&direct_consul, &ctx, &format!("k/{i}")).await?;
        ensure!(
            on_consul.as_ref().map(|(v, _)| v.as_str()) == Some(format!("before-{i}").as_str()),
            "k/{i} not copied to consul: {on_consul:?}"
        );
    }

    // The outage.
    let serving = match kind {
        Outage::Redis => "consul",
        Outage::RedisAndConsul => "rocksdb",
    };
    let t_stop = Instant::now();
    match kind {
        Outage::Redis => redis.node().stop().await?,
        Outage::RedisAndConsul => {
            tokio::try_join!(redis.node().stop(), consul.node().stop())?;
        }
    }
    let stopped = t_stop.elapsed();
    // The first read after the stop: already served by the fallback (a
    // stopped server refuses at once; no retry is needed).
    let t_read = Instant::now();
    expect_served(&c, &ctx, "k/0", "before-0", serving).await?;
    println!(
        "{kind:?} stopped in {stopped:?}; first read after the stop served by {serving} in {:?} \
         ({:?} after the stop call)",
        t_read.elapsed(),
        t_stop.elapsed()
    );
    for i in 0..BEFORE {
        expect_served(&c, &ctx, &format!("k/{i}"), &format!("before-{i}"), serving).await?;
    }

    // Writes during the outage: overwrites, new keys, a delete; each one
    // acknowledged.
    let mut acked: Vec<(String, Option<String>)> = Vec::new();
    let t_writes = Instant::now();
    for i in 0..BEFORE {
        let (k, v) = (format!("k/{i}"), format!("during-{i}"));
        c.set(&ctx, &key(&k), v.clone())
            .await
            .with_context(|| format!("set {k} during the outage"))?;
        acked.push((k, Some(v)));
    }
    for i in 0..NEW {
        let (k, v) = (format!("n/{i}"), format!("new-{i}"));
        c.set(&ctx, &key(&k), v.clone())
            .await
            .with_context(|| format!("set {k} during the outage"))?;
        acked.push((k, Some(v)));
    }
    let existed = c
        .delete(&ctx, &key("gone"), DeleteOptions::default())
        .await
        .context("delete gone during the outage")?;
    ensure!(existed, "delete of `gone` during the outage found no key");
    acked.push(("gone".into(), None));
    println!(
        "{} writes acknowledged during the outage in {:?}",
        acked.len(),
        t_writes.elapsed()
    );
    ensure!(
        c.outbox_depth() == acked.len(),
        "outbox depth {} after {} acknowledged writes",
        c.outbox_depth(),
        acked.len()
    );
    // Own writes are read back from the serving fallback.
    for (k, v) in &acked {
        match v {
            Some(v) => expect_served(&c, &ctx, k, v, serving).await?,
            None => {
                let got = read(&c, &ctx, k).await?;
                ensure!(
                    got.is_none(),
                    "{k}: deleted during the outage, read {got:?}"
                );
            }
        }
    }
    if kind == Outage::Redis {
        // The outage writes are on Consul itself.
        for (k, v) in &acked {
            let got = read(&direct_consul, &ctx, k).await?.map(|(v, _)| v);
            ensure!(got == *v, "{k} on consul: {got:?}, expected {v:?}");
        }
    }

    // Recovery: Redis only (in the second variant Consul stays down).
    let t_start = Instant::now();
    redis.node().start().await?;
    redis.wait_ready().await?;
    let restarted = t_start.elapsed();
    let t_replay = Instant::now();
    let report = drain(&c).await?;
    println!(
        "redis restarted in {restarted:?}; outbox drained {:?} later: {report:?}",
        t_replay.elapsed()
    );
    ensure!(report.conflicts == 0, "conflicts on replay: {report:?}");
    ensure!(report.expired == 0, "expired on replay: {report:?}");
    ensure!(
        report.replayed + report.already_applied == acked.len(),
        "replay report {report:?} for {} acknowledged writes",
        acked.len()
    );
    ensure!(c.outbox_depth() == 0, "outbox depth {}", c.outbox_depth());

    // Every acknowledged write is on Redis (read directly, not through
    // the chain).
    let direct_redis = redis_store(&redis.url()).await?;
    for (k, v) in &acked {
        let got = read(&direct_redis, &ctx, k).await?.map(|(v, _)| v);
        ensure!(
            got == *v,
            "{k} on redis after replay: {got:?}, expected {v:?}"
        );
    }
    // And the chain serves from Redis again.
    wait_for("chain serves k/0 from redis again", || async {
        Ok(read(&c, &ctx, "k/0").await?
            == Some(("during-0".to_string(), Some("redis".to_string()))))
    })
    .await?;
    for (k, v) in &acked {
        match v {
            Some(v) => expect_served(&c, &ctx, k, v, "redis").await?,
            None => {
                let got = read(&c, &ctx, k).await?;
                ensure!(got.is_none(), "{k}: deleted, read {got:?} after recovery");
            }
        }
    }
    drop(c);
    println!("{kind:?}: total {:?}", t_setup.elapsed());
    Ok(())
}
