//! `kvmap demo`: the fallback chain against a real Redis, with faults.
//!
//! The primary is a `redis-server` child process (or `--primary URL`, or,
//! when no server can be found, a second RocksDB behind a fault layer);
//! the fallback is embedded RocksDB with the durable outbox. A steady
//! read/write load runs while the primary is hung (SIGSTOP), resumed
//! (SIGCONT), killed (SIGKILL) and restarted; a conflicting write by
//! "another client" is made on the primary while the chain cannot see
//! it. The closing summary is checked: the command fails if any
//! acknowledged write is missing on the primary after recovery.

mod primary;
mod serve;
mod timeline;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvmap::fallback::{
    BreakerConfig, BreakerState, ChainConfig, FallbackChain, NearCache, NearCacheConfig,
    NearCacheStats, OutboxConfig, WritePolicy,
};
use kvmap::{Consistency, Context, Key, KvStore, KvStoreExt, RocksConfig, RocksStore};
use tokio::time::Instant;

use primary::Primary;

/// Options of `kvmap demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// How long the load runs (the fault schedule scales with it).
    #[arg(long, value_parser = crate::parse_duration, default_value = "30s")]
    duration: Duration,
    /// One line per second instead of a table redrawn in place (also when
    /// stdout is not a terminal); no ANSI escapes.
    #[arg(long)]
    plain: bool,
    /// Use this Redis as the primary instead of starting a redis-server
    /// (no faults are injected into it).
    #[arg(long)]
    primary: Option<String>,
    /// Do not look for redis-server: the primary is a second RocksDB
    /// behind a fault-injection layer (what the demo does when no server
    /// can be found).
    #[arg(long, conflicts_with = "primary")]
    simulated_primary: bool,
    /// Serve /metrics (Prometheus text) here while the demo runs.
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_addr: String,
    /// Where the fallback, the outbox, the Redis data and the timeline go
    /// (default: a new temporary directory, kept).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One second of the timeline.
#[derive(Debug, Clone)]
pub(crate) struct Second {
    pub(crate) t: u64,
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) primary_state: BreakerState,
    pub(crate) primary_state_gauge: f64,
    pub(crate) reads_primary: u64,
    pub(crate) reads_fallback: u64,
    pub(crate) writes_primary: u64,
    pub(crate) writes_fallback: u64,
    pub(crate) outbox: usize,
    pub(crate) event: Option<String>,
}

/// What the load saw since the last tick.
#[derive(Default)]
struct Load {
    ops: u64,
    errors: BTreeMap<&'static str, u64>,
    latencies_ms: Vec<f64>,
    /// The last acknowledged value of every key written.
    acked: BTreeMap<String, u64>,
    acked_total: u64,
    /// Faults (name, when) waiting for their first fallback-served read.
    waiting_fallback: Vec<(String, Instant)>,
    /// Fault name and time to the first fallback-served read.
    to_fallback: Vec<(String, Duration)>,
}

const FALLBACK: &str = "rocksdb";
const CONFLICT_KEY: &str = "demo/conflict";
/// Configuration keys, read through the near cache.
const CONFIG_PREFIX: &str = "demo/cfg/";
const CONFIG_KEYS: u64 = 20;
/// How old a configuration read may be: the near cache serves it during
/// an outage, marked stale, while it verified itself within this.
const CONFIG_MAX_STALENESS: Duration = Duration::from_secs(10);

fn config_key(i: u64) -> Option<Key> {
    Key::new(format!("{CONFIG_PREFIX}flag{:02}", i % CONFIG_KEYS)).ok()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lock(load: &Mutex<Load>) -> std::sync::MutexGuard<'_, Load> {
    load.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn load_loop(
    chain: Arc<FallbackChain>,
    cache: Arc<NearCache>,
    load: Arc<Mutex<Load>>,
    stop: Arc<AtomicBool>,
) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        // Configuration reads through the near cache (five per step, hot
        // keys first), each allowed to be CONFIG_MAX_STALENESS old.
        let stale_ok = Context::new()
            .with_timeout(Duration::from_secs(3))
            .with_consistency(Consistency::Stale {
                max_staleness: CONFIG_MAX_STALENESS,
            });
        for j in 0..5 {
            let Some(ck) = config_key((n * 5 + j) % (1 + (n + j) % CONFIG_KEYS)) else {
                return;
            };
            let t0 = Instant::now();
            let mut r = cache.get(&stale_ok, &ck).await;
            if r.as_ref()
                .is_err_and(|e| matches!(e.kind(), kvmap::ErrorKind::StaleTooOld { .. }))
            {
                // Older than the application accepts: read it as fresh as
                // the chain can (the fallback, marked stale by the chain).
                let fresh = Context::new().with_timeout(Duration::from_secs(3));
                r = cache.get(&fresh, &ck).await;
            }
            let took = t0.elapsed();
            let mut l = lock(&load);
            l.ops += 1;
            l.latencies_ms.push(took.as_secs_f64() * 1e3);
            if let Err(e) = r {
                *l.errors.entry(kind_name(&e)).or_default() += 1;
            }
        }
        let name = format!("demo/k{:03}", n % 100);
        let Ok(key) = Key::new(name.clone()) else {
            return;
        };
        let ctx = Context::new().with_timeout(Duration::from_secs(3));
        let t0 = Instant::now();
        let w = chain.set(&ctx, &key, n.to_string()).await;
        let took = t0.elapsed();
        {
            let mut l = lock(&load);
            l.ops += 1;
            l.latencies_ms.push(took.as_secs_f64() * 1e3);
            match &w {
                Ok(_) => {
                    l.acked.insert(name, n);
                    l.acked_total += 1;
                }
                Err(e) => *l.errors.entry(kind_name(e)).or_default() += 1,
            }
        }
        // Read a key written a few steps ago.
        let read = format!("demo/k{:03}", n.saturating_sub(7) % 100);
        if let Ok(rk) = Key::new(read) {
            let t0 = Instant::now();
            let r = chain.get(&ctx, &rk).await;
            let took = t0.elapsed();
            let mut l = lock(&load);
            l.ops += 1;
            l.latencies_ms.push(took.as_secs_f64() * 1e3);
            match r {
                Ok(Some(e)) if e.served_by.as_deref() == Some(FALLBACK) => {
                    let now = Instant::now();
                    let waiting = std::mem::take(&mut l.waiting_fallback);
                    for (fault, at) in waiting {
                        l.to_fallback.push((fault, now - at));
                    }
                }
                Ok(_) => {}
                Err(e) => *l.errors.entry(kind_name(&e)).or_default() += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kind_name(e: &kvmap::Error) -> &'static str {
    match e.kind() {
        kvmap::ErrorKind::Unavailable => "unavailable",
        kvmap::ErrorKind::Timeout => "timeout",
        kvmap::ErrorKind::CircuitOpen => "circuit_open",
        kvmap::ErrorKind::DeadlineExceeded => "deadline",
        _ => "other",
    }
}

struct Schedule {
    steps: Vec<(Duration, Step)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Hang,
    Resume,
    Kill,
    Restart,
}

impl Schedule {
    fn new(d: Duration) -> Self {
        let at = |f: f64| d.mul_f64(f);
        Self {
            steps: vec![
                (at(0.15), Step::Hang),
                (at(0.35), Step::Resume),
                (at(0.50), Step::Kill),
                (at(0.70), Step::Restart),
            ],
        }
    }
}

async fn demo(args: DemoArgs) -> Result<bool, String> {
    let plain = args.plain || !std::io::stdout().is_terminal();
    let out = match args.out {
        Some(d) => d,
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            std::env::temp_dir().join(format!("kvmap-demo-{stamp}-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let namespace = format!("kvmap-demo:{run}:");

    let (mut primary, fallback_reason) = Primary::start(
        args.primary.clone(),
        args.simulated_primary,
        &out,
        &namespace,
    )?;
    match &fallback_reason {
        None => println!(
            "kvmap demo: primary = {}, fallback = embedded RocksDB + outbox in {}",
            primary.describe(),
            out.display()
        ),
        Some(why) => println!(
            "kvmap demo: {why}; the primary is {} instead, fallback = embedded RocksDB + outbox in {}",
            primary.describe(),
            out.display()
        ),
    }

    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let (addr, metrics_task) = serve::metrics(&args.metrics_addr, handle.clone())
        .await
        .map_err(|e| format!("metrics on {}: {e}", args.metrics_addr))?;
    println!("metrics: http://{addr}/metrics (Prometheus text, while the demo runs)");

    let label = primary.label();
    let primary_store = primary.store(&namespace).await.map_err(|e| e.to_string())?;
    let fallback = RocksStore::open_async(RocksConfig::new(out.join("fallback")))
        .await
        .map_err(|e| e.to_string())?;
    let breaker = BreakerConfig::default()
        .with_failure_threshold(3)
        .with_cool_down(Duration::from_secs(1))
        .with_max_cool_down(Duration::from_secs(4));
    let chain = FallbackChain::builder()
        .backend(label, primary_store)
        .backend(FALLBACK, Arc::new(fallback))
        .config(
            ChainConfig::default()
                .with_breaker(breaker)
                .with_write_policy(WritePolicy::Outbox(OutboxConfig::new(out.join("outbox")))),
        )
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let chain = Arc::new(chain);
    println!(
        "chain: {label} (breaker: 3 failures, 1s cool-down doubling to 4s) -> {FALLBACK}, write policy outbox; primary op timeout {}ms",
        primary::OP_TIMEOUT.as_millis()
    );
    let cache = Arc::new(
        NearCache::over_chain(chain.clone())
            .config(NearCacheConfig::default().with_scope(CONFIG_PREFIX))
            .build()
            .await
            .map_err(|e| e.to_string())?,
    );
    println!(
        "near cache over the chain for {CONFIG_PREFIX}* ({CONFIG_KEYS} keys, read with Stale {{ max {}s }}): 1024 entries / 2 MiB, kept fresh by one watch; serves default reads only while the primary breaker is closed",
        CONFIG_MAX_STALENESS.as_secs()
    );
    let conflict_key = Key::new(CONFLICT_KEY).map_err(|e| e.to_string())?;
    let ctx = || Context::new().with_timeout(Duration::from_secs(3));
    for i in 0..CONFIG_KEYS {
        if let Some(k) = config_key(i) {
            chain
                .set(&ctx(), &k, "v0")
                .await
                .map_err(|e| format!("config write: {e}"))?;
        }
    }
    chain
        .set(&ctx(), &conflict_key, "app-before-the-faults")
        .await
        .map_err(|e| format!("first write: {e}"))?;

    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(load_loop(
        chain.clone(),
        cache.clone(),
        load.clone(),
        stop.clone(),
    ));
    let mut last_cache = cache.stats();
    let mut config_version = 0u64;

    let start = Instant::now();
    let schedule = if primary.can_inject() {
        Schedule::new(args.duration).steps
    } else {
        Vec::new()
    };
    let mut next_step = 0;
    let mut seconds: Vec<Second> = Vec::new();
    let mut last_stats = chain.stats();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut drawn_lines = 0usize;
    let mut conflict_written = false;
    let mut pending_event: Option<String> = None;
    let mut draining_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        // Histograms are drained into their summaries here (the exporter
        // runs no upkeep task of its own when installed this way).
        handle.run_upkeep();
        let elapsed = start.elapsed();
        // Faults due now.
        while next_step < schedule.len() && schedule[next_step].0 <= elapsed {
            let step = schedule[next_step].1;
            next_step += 1;
            let real = primary.is_process();
            let what = match step {
                Step::Hang => primary.hang().map(|()| {
                    if real {
                        "primary hung (SIGSTOP)"
                    } else {
                        "primary hung (injected)"
                    }
                }),
                Step::Resume => primary.unhang().map(|()| {
                    if real {
                        "primary resumed (SIGCONT)"
                    } else {
                        "primary resumed"
                    }
                }),
                Step::Kill => {
                    primary.kill();
                    Ok(if real {
                        "primary killed (SIGKILL)"
                    } else {
                        "primary down (injected)"
                    })
                }
                Step::Restart => primary
                    .restart_with_conflict(&conflict_key, "another-client-during-the-outage")
                    .await
                    .map(|()| "primary restarted; another client had changed demo/conflict"),
            }
            .map_err(|e| format!("fault {step:?}: {e}"))?;
            if matches!(step, Step::Hang | Step::Kill) {
                lock(&load)
                    .waiting_fallback
                    .push((what.to_owned(), Instant::now()));
            }
            pending_event = Some(what.to_owned());
            if step == Step::Kill && !conflict_written {
                // The application writes the key while the primary is down.
                conflict_written = chain
                    .set(&ctx(), &conflict_key, "app-during-the-outage")
                    .await
                    .is_ok();
            }
        }
        // Every 3 s one configuration key changes, written through the
        // chain (not the cache): the cache's watch invalidates it.
        if elapsed.as_secs().is_multiple_of(3) && elapsed < args.duration {
            config_version += 1;
            if let Some(k) = config_key(config_version) {
                let _ = chain.set(&ctx(), &k, format!("v{config_version}")).await;
            }
        }
        // One second of the timeline.
        let stats = chain.stats();
        let cs = cache.stats();
        let cache_line = CacheSecond::new(&cs, &last_cache);
        let (ops, errors, mut lat) = {
            let mut l = lock(&load);
            let errs: u64 = l.errors.values().sum();
            l.errors.clear();
            let ops = std::mem::take(&mut l.ops);
            (ops, errs, std::mem::take(&mut l.latencies_ms))
        };
        lat.sort_by(f64::total_cmp);
        let d = |i: usize, f: fn(&kvmap::fallback::BackendStats) -> u64| {
            f(&stats[i]).saturating_sub(f(&last_stats[i]))
        };
        let second = Second {
            t: elapsed.as_secs(),
            ops,
            errors,
            p50_ms: quantile(&lat, 0.5),
            p99_ms: quantile(&lat, 0.99),
            primary_state: stats[0].breaker.state,
            primary_state_gauge: stats[0].breaker.state.as_gauge(),
            reads_primary: d(0, |s| s.reads_served),
            reads_fallback: d(1, |s| s.reads_served),
            writes_primary: d(0, |s| s.writes_served),
            writes_fallback: d(1, |s| s.writes_served),
            outbox: chain.outbox_depth(),
            event: pending_event.take(),
        };
        let calls = |i: usize| {
            stats[i]
                .breaker
                .calls
                .saturating_sub(last_stats[i].breaker.calls)
        };
        let fails = |i: usize| {
            stats[i]
                .breaker
                .failures
                .saturating_sub(last_stats[i].breaker.failures)
        };
        let rejected = |i: usize| {
            stats[i]
                .breaker
                .rejected
                .saturating_sub(last_stats[i].breaker.rejected)
        };
        let primary_state = if chain.primary_active() {
            stats[0].breaker.state.to_string()
        } else {
            format!("{}+bypassed", stats[0].breaker.state)
        };
        if plain {
            println!(
                "t={:>3}s {label}={} {FALLBACK}={} ops/s={} errors={} p50={:.1}ms p99={:.1}ms reads[{label}={} {FALLBACK}={}] writes[{label}={} {FALLBACK}={}] outbox={}{}",
                second.t,
                primary_state,
                stats[1].breaker.state,
                second.ops,
                second.errors,
                second.p50_ms,
                second.p99_ms,
                second.reads_primary,
                second.reads_fallback,
                second.writes_primary,
                second.writes_fallback,
                second.outbox,
                second.event.as_deref().map(|e| format!("  <- {e}")).unwrap_or_default()
            );
            println!("       {}", cache_line.plain());
        } else {
            let mut s = String::new();
            if drawn_lines > 0 {
                s.push_str(&format!("\x1b[{drawn_lines}A"));
            }
            let rows = [
                format!(
                    "t={:>3}s  ops/s {:>4}  errors {:>3}  latency p50 {:>6.1}ms p99 {:>6.1}ms  outbox {:>4}\x1b[K",
                    second.t, second.ops, second.errors, second.p50_ms, second.p99_ms, second.outbox
                ),
                format!(
                    "{:<16} {:<17} {:>8} {:>8} {:>9} {:>8} {:>8}\x1b[K",
                    "backend", "breaker", "calls/s", "errors/s", "rejected/s", "reads/s", "writes/s"
                ),
                format!(
                    "{:<16} {:<17} {:>8} {:>8} {:>9} {:>8} {:>8}\x1b[K",
                    label,
                    primary_state,
                    calls(0),
                    fails(0),
                    rejected(0),
                    second.reads_primary,
                    second.writes_primary
                ),
                format!(
                    "{:<16} {:<17} {:>8} {:>8} {:>9} {:>8} {:>8}\x1b[K",
                    FALLBACK,
                    stats[1].breaker.state.to_string(),
                    calls(1),
                    fails(1),
                    rejected(1),
                    second.reads_fallback,
                    second.writes_fallback
                ),
                format!("{}\x1b[K", cache_line.row()),
                format!(
                    "last event: {}\x1b[K",
                    seconds
                        .iter()
                        .chain(std::iter::once(&second))
                        .rev()
                        .find_map(|s| s.event.clone().map(|e| format!("t={}s {e}", s.t)))
                        .unwrap_or_else(|| "-".into())
                ),
            ];
            for r in &rows {
                s.push_str(r);
                s.push('\n');
            }
            drawn_lines = rows.len();
            print!("{s}");
            let _ = std::io::stdout().flush();
        }
        seconds.push(second);
        last_stats = stats;
        last_cache = cs;
        if elapsed >= args.duration {
            stop.store(true, Ordering::SeqCst);
            let since = *draining_since.get_or_insert_with(Instant::now);
            if chain.outbox_depth() == 0 && chain.primary_active() {
                break;
            }
            if since.elapsed() > Duration::from_secs(30) {
                println!("the outbox did not drain within 30s after the load stopped");
                break;
            }
        }
    }
    let _ = worker.await;

    // The checked summary.
    let direct = primary
        .direct(&namespace)
        .await
        .map_err(|e| format!("direct connection to the primary: {e}"))?;
    let (acked, acked_total, to_fallback) = {
        let l = lock(&load);
        (l.acked.clone(), l.acked_total, l.to_fallback.clone())
    };
    let mut found = 0usize;
    let mut missing = Vec::new();
    for (k, v) in &acked {
        let key = Key::new(k.clone()).map_err(|e| e.to_string())?;
        match direct.get(&ctx(), &key).await {
            Ok(Some(e)) if e.value == v.to_string() => found += 1,
            Ok(other) => missing.push(format!(
                "{k}: acknowledged {v}, primary has {:?}",
                other.map(|e| String::from_utf8_lossy(&e.value).into_owned())
            )),
            Err(e) => missing.push(format!("{k}: {e}")),
        }
    }
    let conflicts = chain.conflicts();
    let conflict_now = direct
        .get(&ctx(), &conflict_key)
        .await
        .ok()
        .flatten()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
    println!("\nsummary");
    println!(
        "  writes acknowledged: {acked_total} ({} keys)",
        acked.len()
    );
    println!(
        "  writes found on the primary after recovery: {found} of {} keys with their last acknowledged value",
        acked.len()
    );
    for m in missing.iter().take(10) {
        println!("    lost: {m}");
    }
    let drained = chain.outbox_depth() == 0 && chain.primary_active();
    println!(
        "  outbox drained: {} (depth {})",
        if drained { "yes" } else { "no" },
        chain.outbox_depth()
    );
    println!("  conflicts reported: {}", conflicts.len());
    for c in &conflicts {
        println!(
            "    {}: {}; the primary keeps {:?}",
            c.key,
            c.reason,
            c.current
                .as_ref()
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        );
    }
    if primary.can_inject() {
        println!("  {CONFLICT_KEY} on the primary: {conflict_now:?} (the other client's write, not overwritten)");
    }
    let cs = cache.stats();
    println!(
        "  near cache ({CONFIG_PREFIX}*): hit rate {:.1}% ({} hits, {} misses), {} served stale during outages (marked, within {}s), {} invalidations, {} resyncs, {} entries / {} bytes, own-write watch lag p50 {:?} p99 {:?}",
        cs.hit_ratio() * 100.0,
        cs.hits,
        cs.misses,
        cs.stale_serves,
        CONFIG_MAX_STALENESS.as_secs(),
        cs.invalidations,
        cs.resyncs,
        cs.entries,
        cs.bytes,
        cs.own_write_lag.p50,
        cs.own_write_lag.p99
    );
    for (fault, d) in &to_fallback {
        println!(
            "  {fault} -> first fallback-served read after {}ms",
            d.as_millis()
        );
    }
    let text = handle.render();
    println!("  metrics (selected, full text at http://{addr}/metrics while running):");
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("kvmap_cb_state")
                || l.starts_with("kvmap_cb_transitions_total")
                || l.starts_with("kvmap_fallback_served_total")
                || l.starts_with("kvmap_outbox")
                || l.starts_with("kvmap_cache_"))
    }) {
        println!("    {line}");
    }
    match timeline::write(&out, &seconds, label) {
        Ok(png) => println!(
            "  timeline: {}{} and {}",
            out.join("timeline.svg").display(),
            if png {
                format!(", {}", out.join("timeline.png").display())
            } else {
                " (no rsvg-convert for a PNG)".to_owned()
            },
            out.join("timeline.csv").display()
        ),
        Err(e) => println!("  timeline not written: {e}"),
    }
    metrics_task.abort();
    let conflict_ok = !primary.can_inject()
        || (conflicts.iter().any(|c| c.key.as_str() == CONFLICT_KEY)
            && conflict_now.as_deref() == Some("another-client-during-the-outage"));
    let ok = missing.is_empty() && drained && conflict_ok;
    println!(
        "summary: {}",
        if ok {
            "ok: no acknowledged write lost, outbox drained, the conflict reported and not overwritten"
        } else {
            "FAILED"
        }
    );
    Ok(ok)
}

/// One second of the near cache, for the table.
struct CacheSecond {
    hits: u64,
    misses: u64,
    stale: u64,
    invalidations: u64,
    entries: u64,
    bytes: u64,
    healthy: bool,
}

impl CacheSecond {
    fn new(now: &NearCacheStats, last: &NearCacheStats) -> Self {
        Self {
            hits: now.hits.saturating_sub(last.hits),
            misses: now.misses.saturating_sub(last.misses),
            stale: now.stale_serves.saturating_sub(last.stale_serves),
            invalidations: now.invalidations.saturating_sub(last.invalidations),
            entries: now.entries,
            bytes: now.bytes,
            healthy: now.healthy,
        }
    }

    fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses + self.stale;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 * 100.0 / n as f64
        }
    }

    fn row(&self) -> String {
        format!(
            "near cache {:<6} hit rate {:>5.1}%  hits/s {:>4}  misses/s {:>3}  stale serves/s {:>3}  invalidations/s {:>2}  {} entries {} bytes",
            if self.healthy { "fresh" } else { "stale" },
            self.hit_rate(),
            self.hits,
            self.misses,
            self.stale,
            self.invalidations,
            self.entries,
            self.bytes
        )
    }

    fn plain(&self) -> String {
        format!(
            "cache[{} hit={:.1}% hits={} misses={} stale={} invalidations={} entries={} bytes={}]",
            if self.healthy { "fresh" } else { "stale" },
            self.hit_rate(),
            self.hits,
            self.misses,
            self.stale,
            self.invalidations,
            self.entries,
            self.bytes
        )
    }
}
