//! Peer comparison: kvmap's Redis backend, Apache OpenDAL's Redis service and
//! the raw `redis` crate, side by side against the same real Redis servers.
//!
//! ```text
//! cargo run --release --manifest-path benchmarks/Cargo.toml -- \
//!     [--topology standalone|cluster|both] [--seconds N]
//! ```
//!
//! For each topology the integration-test harness starts the servers
//! (one Redis, or a 3 masters + 3 replicas cluster). Then, for `get` and
//! `put` of 100-byte values over 20 000 distinct keys (pre-populated by each
//! client in its own key space before the gets), at concurrency 1 and 64
//! (that many tokio tasks sharing one client), each client runs for N
//! seconds, one after the other in the same process: kvmap, OpenDAL, raw;
//! then the triple runs a second time, so run-to-run noise is visible next
//! to the differences between clients. Only successful operations count; a
//! failed operation (or a `get` that finds no value of the expected length)
//! is counted as an error and the first error message is printed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use integration_tests::{RedisCluster, RedisStandalone};
use kvmap_core::{Context, Key, KvStore, PutOptions};
use kvmap_redis::{RedisConfig, RedisStore};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;

/// Distinct keys each client reads and writes.
const KEYS: usize = 20_000;
/// Size of every value, in bytes.
const VALUE_SIZE: usize = 100;
/// Concurrency levels measured (tokio tasks sharing one client).
const CONCURRENCY: [usize; 2] = [1, 64];
/// How many times the kvmap/OpenDAL/raw triple is run per cell.
const ROUNDS: usize = 2;
/// Tasks used to pre-populate the key space.
const POPULATE_TASKS: usize = 64;
/// OpenDAL's working directory: its keys are `opendal-bench/bench/{i}`.
const OPENDAL_ROOT: &str = "/opendal-bench/";

/// Which Redis deployment to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// One Redis server.
    Standalone,
    /// Redis Cluster, 3 masters + 3 replicas.
    Cluster,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Standalone => "standalone",
            Topology::Cluster => "cluster",
        })
    }
}

/// Command-line arguments.
#[derive(Debug)]
struct Args {
    /// Topologies to run, in order.
    topologies: Vec<Topology>,
    /// Length of one measured run of one client.
    run_for: Duration,
}

impl Args {
    /// Parses `--topology standalone|cluster|both` and `--seconds N`.
    fn parse() -> anyhow::Result<Self> {
        let mut args = Args {
            topologies: vec![Topology::Standalone, Topology::Cluster],
            run_for: Duration::from_secs(5),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--topology" => {
                    let v = it.next().context("--topology needs a value")?;
                    args.topologies = match v.as_str() {
                        "standalone" => vec![Topology::Standalone],
                        "cluster" => vec![Topology::Cluster],
                        "both" => vec![Topology::Standalone, Topology::Cluster],
                        other => bail!("unknown topology {other:?} (standalone|cluster|both)"),
                    };
                }
                "--seconds" => {
                    let v = it.next().context("--seconds needs a value")?;
                    let secs: f64 = v.parse().with_context(|| format!("--seconds {v:?}"))?;
                    ensure!(secs.is_finite() && secs > 0.0, "--seconds must be positive");
                    args.run_for = Duration::from_secs_f64(secs);
                }
                "-h" | "--help" => {
                    println!(
                        "usage: kvmap-peer-benchmarks [--topology standalone|cluster|both] [--seconds N]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(args)
    }
}

/// The measured operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Read one key (pre-populated).
    Get,
    /// Unconditionally write one key.
    Put,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Get => "get",
            Op::Put => "put",
        })
    }
}

/// The raw `redis` crate connection: multiplexed for standalone, the async
/// cluster connection for Redis Cluster. Both are cheap clones of one
/// shared connection.
#[derive(Clone)]
enum RawConn {
    /// Standalone server.
    Single(MultiplexedConnection),
    /// Redis Cluster.
    Cluster(ClusterConnection),
}

impl RawConn {
    /// `GET key`.
    async fn get(&mut self, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
        match self {
            RawConn::Single(c) => c.get(key).await,
            RawConn::Cluster(c) => c.get(key).await,
        }
    }

    /// `SET key value`.
    async fn set(&mut self, key: &str, value: &[u8]) -> redis::RedisResult<()> {
        match self {
            RawConn::Single(c) => c.set(key, value).await,
            RawConn::Cluster(c) => c.set(key, value).await,
        }
    }
}

/// One of the compared clients; clones share one connection (or pool).
#[derive(Clone)]
enum Client {
    /// kvmap's Redis backend with its default configuration.
    Kvmap(RedisStore),
    /// OpenDAL's Redis service with its default configuration.
    OpenDal(opendal::Operator),
    /// The raw `redis` crate.
    Raw(RawConn),
}

impl Client {
    /// Column name in the report.
    fn name(&self) -> &'static str {
        match self {
            Client::Kvmap(_) => "kvmap",
            Client::OpenDal(_) => "opendal",
            Client::Raw(_) => "raw",
        }
    }

    /// Runs `op` on key number `i`; a `get` that finds no value, or one of
    /// the wrong length, is an error.
    async fn run_op(
        &mut self,
        keys: &KeySpace,
        ctx: &Context,
        op: Op,
        i: usize,
        value: &Bytes,
    ) -> anyhow::Result<()> {
        let found = match (self, op) {
            (Client::Kvmap(store), Op::Get) => store
                .get(ctx, &keys.kvmap[i])
                .await?
                .map(|entry| entry.value.len()),
            (Client::Kvmap(store), Op::Put) => {
                store
                    .put(ctx, &keys.kvmap[i], value.clone(), PutOptions::default())
                    .await?;
                return Ok(());
            }
            (Client::OpenDal(op), Op::Get) => Some(op.read(&keys.opendal[i]).await?.len()),
            (Client::OpenDal(op), Op::Put) => {
                op.write(&keys.opendal[i], value.clone()).await?;
                return Ok(());
            }
            (Client::Raw(conn), Op::Get) => conn.get(&keys.raw[i]).await?.map(|v| v.len()),
            (Client::Raw(conn), Op::Put) => {
                conn.set(&keys.raw[i], value).await?;
                return Ok(());
            }
        };
        match found {
            Some(len) if len == value.len() => Ok(()),
            Some(len) => Err(anyhow!(
                "get returned {len} bytes, expected {}",
                value.len()
            )),
            None => Err(anyhow!("get found no value")),
        }
    }
}

/// The key names of each client: each writes its own key space, so the
/// clients never read each other's data.
struct KeySpace {
    /// kvmap keys `bench/{i}` (stored under kvmap's `kvmap:` prefix).
    kvmap: Vec<Key>,
    /// OpenDAL paths `bench/{i}` under [`OPENDAL_ROOT`].
    opendal: Vec<String>,
    /// Raw Redis keys `raw:bench/{i}`.
    raw: Vec<String>,
}

impl KeySpace {
    /// Builds the [`KEYS`] names of every client.
    fn new() -> anyhow::Result<Self> {
        let kvmap = (0..KEYS)
            .map(|i| Key::new(format!("bench/{i}")).map_err(anyhow::Error::from))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(KeySpace {
            kvmap,
            opendal: (0..KEYS).map(|i| format!("bench/{i}")).collect(),
            raw: (0..KEYS).map(|i| format!("raw:bench/{i}")).collect(),
        })
    }
}

/// Outcome of one timed run of one client.
#[derive(Debug, Clone)]
struct RunResult {
    /// Successful operations.
    ok: u64,
    /// Failed operations.
    errors: u64,
    /// The first error seen, if any.
    first_error: Option<String>,
    /// Wall time from start until every task finished.
    elapsed: Duration,
}

impl RunResult {
    /// Successful operations per second.
    fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `op` with `concurrency` tasks sharing `client` for `run_for`.
/// Task `t` walks the key space from `t * KEYS / concurrency` on, so the
/// tasks touch different keys.
async fn timed_run(
    client: &Client,
    keys: &Arc<KeySpace>,
    op: Op,
    concurrency: usize,
    run_for: Duration,
    value: &Bytes,
) -> anyhow::Result<RunResult> {
    let start = Instant::now();
    let deadline = start + run_for;
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (mut client, keys, value) = (client.clone(), keys.clone(), value.clone());
            tokio::spawn(async move {
                let ctx = Context::new();
                let mut i = t * KEYS / concurrency;
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    match client.run_op(&keys, &ctx, op, i, &value).await {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    i = (i + 1) % KEYS;
                }
                (ok, errors, first_error)
            })
        })
        .collect();
    let mut result = RunResult {
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (ok, errors, first_error) = task.await.context("benchmark task panicked")?;
        result.ok += ok;
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

/// Writes every key of `client`'s key space once ([`POPULATE_TASKS`]
/// tasks); fails on the first error.
async fn populate(client: &Client, keys: &Arc<KeySpace>, value: &Bytes) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..POPULATE_TASKS)
        .map(|t| {
            let (mut client, keys, value) = (client.clone(), keys.clone(), value.clone());
            tokio::spawn(async move {
                let ctx = Context::new();
                for i in (t..KEYS).step_by(POPULATE_TASKS) {
                    client.run_op(&keys, &ctx, Op::Put, i, &value).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("populate task panicked")??;
    }
    Ok(())
}

/// The running servers of one topology; dropping it removes the containers.
enum Servers {
    /// One Redis (boxed: its guard is much larger than the cluster's).
    Standalone(Box<RedisStandalone>),
    /// Redis Cluster.
    Cluster(RedisCluster),
}

impl Servers {
    /// Starts the servers of `topology`.
    async fn start(topology: Topology) -> anyhow::Result<Self> {
        Ok(match topology {
            Topology::Standalone => Servers::Standalone(Box::new(
                RedisStandalone::start()
                    .await
                    .context("start standalone Redis")?,
            )),
            Topology::Cluster => {
                Servers::Cluster(RedisCluster::start().await.context("start Redis Cluster")?)
            }
        })
    }

    /// URL of one server (the first seed for a cluster).
    fn first_url(&self) -> anyhow::Result<String> {
        match self {
            Servers::Standalone(s) => Ok(s.url()),
            Servers::Cluster(c) => c.urls().into_iter().next().context("cluster has no nodes"),
        }
    }

    /// `redis_version` from `INFO server` of one server.
    async fn server_version(&self) -> anyhow::Result<String> {
        let client = redis::Client::open(self.first_url()?)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
            .context("INFO server has no redis_version")
    }

    /// The three clients, in run order: kvmap, OpenDAL, raw.
    async fn clients(&self) -> anyhow::Result<Vec<Client>> {
        let (kvmap_cfg, opendal, raw) = match self {
            Servers::Standalone(s) => {
                let raw = s
                    .client()?
                    .get_multiplexed_async_connection()
                    .await
                    .context("raw multiplexed connection")?;
                (
                    RedisConfig::standalone(s.url()),
                    opendal::services::Redis::default()
                        .endpoint(&s.url())
                        .root(OPENDAL_ROOT),
                    RawConn::Single(raw),
                )
            }
            Servers::Cluster(c) => {
                let urls = c.urls();
                let raw = redis::cluster::ClusterClient::new(urls.clone())?
                    .get_async_connection()
                    .await
                    .context("raw cluster connection")?;
                (
                    RedisConfig::cluster(urls.clone()),
                    opendal::services::Redis::default()
                        .cluster_endpoints(&urls.join(","))
                        .root(OPENDAL_ROOT),
                    RawConn::Cluster(raw),
                )
            }
        };
        let store = RedisStore::connect(kvmap_cfg)
            .await
            .context("kvmap connect")?;
        let op = opendal::Operator::new(opendal).context("opendal operator")?;
        Ok(vec![
            Client::Kvmap(store),
            Client::OpenDal(op),
            Client::Raw(raw),
        ])
    }
}

/// One row of the report: one operation at one concurrency, one round.
struct Row {
    /// Topology measured.
    topology: Topology,
    /// Operation measured.
    op: Op,
    /// Tasks sharing the client.
    concurrency: usize,
    /// Round number, from 1.
    round: usize,
    /// Results in client order kvmap, OpenDAL, raw.
    results: Vec<RunResult>,
}

/// Prints the report table of `rows`.
fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| topology | op | conc | round | kvmap ops/s | opendal ops/s | raw ops/s | kvmap/raw | kvmap/opendal | errors k/o/r |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for row in rows {
        let rate = |i: usize| row.results.get(i).map_or(0.0, RunResult::ops_per_sec);
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "n/a".to_owned()
            }
        };
        let (k, o, r) = (rate(0), rate(1), rate(2));
        let errors: Vec<String> = row.results.iter().map(|r| r.errors.to_string()).collect();
        println!(
            "| {} | {} | {} | {} | {k:.0} | {o:.0} | {r:.0} | {} | {} | {} |",
            row.topology,
            row.op,
            row.concurrency,
            row.round,
            ratio(k, r),
            ratio(k, o),
            errors.join("/"),
        );
    }
}

/// Runs every cell of one topology and returns its rows.
async fn bench_topology(topology: Topology, run_for: Duration) -> anyhow::Result<Vec<Row>> {
    let servers = Servers::start(topology).await?;
    let version = servers.server_version().await?;
    println!("== topology: {topology}, redis-server {version}");
    let clients = servers.clients().await?;
    let keys = Arc::new(KeySpace::new()?);
    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);
    for client in &clients {
        let t = Instant::now();
        populate(client, &keys, &value)
            .await
            .with_context(|| format!("populate {}", client.name()))?;
        println!(
            "populated {KEYS} keys with {} in {:.2?}",
            client.name(),
            t.elapsed()
        );
    }
    let mut rows = Vec::new();
    for op in [Op::Get, Op::Put] {
        for concurrency in CONCURRENCY {
            for round in 1..=ROUNDS {
                let mut results = Vec::with_capacity(clients.len());
                for client in &clients {
                    let r = timed_run(client, &keys, op, concurrency, run_for, &value).await?;
                    println!(
                        "{topology} {op} c={concurrency} round {round} {:<7} {:>9.0} ops/s ({} ok, {} errors in {:.2?})",
                        client.name(),
                        r.ops_per_sec(),
                        r.ok,
                        r.errors,
                        r.elapsed
                    );
                    if let Some(e) = &r.first_error {
                        println!("    first error ({}): {e}", client.name());
                    }
                    results.push(r);
                }
                rows.push(Row {
                    topology,
                    op,
                    concurrency,
                    round,
                    results,
                });
            }
        }
    }
    drop(clients);
    drop(servers);
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    println!(
        "kvmap vs OpenDAL vs raw redis: {VALUE_SIZE}-byte values, {KEYS} keys, concurrency {CONCURRENCY:?}, \
         {:.1?} per client per run, {ROUNDS} rounds, tokio worker threads = {}",
        args.run_for,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rows = Vec::new();
    for topology in &args.topologies {
        rows.extend(bench_topology(*topology, args.run_for).await?);
    }
    print_table(&rows);
    Ok(())
}
