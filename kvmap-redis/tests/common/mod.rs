//! Shared setup of the real-server test binaries.
#![allow(dead_code, unreachable_pub)]

use std::process::ExitCode;

/// A multi-thread runtime for a `harness = false` test binary.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `Some(exit code)` when the test binary must stop before starting servers:
/// docker is missing (skipped, unless `KVMAP_REQUIRE_DOCKER=1`), or only
/// `--list` was asked for.
pub fn skip_without_docker(rt: &tokio::runtime::Runtime) -> Option<ExitCode> {
    if std::env::args().any(|a| a == "--list") {
        return None;
    }
    if rt.block_on(integration_tests::docker_available_or_skip()) {
        None
    } else {
        Some(ExitCode::SUCCESS)
    }
}

type TrialFn = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Runs named checks as libtest trials, one at a time (they share servers
/// and may inject faults), and returns the exit code.
pub fn run_trials(trials: Vec<(&'static str, TrialFn)>) -> ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let trials = trials
        .into_iter()
        .map(|(name, f)| libtest_mimic::Trial::test(name, move || f().map_err(Into::into)))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// The counter a compare-and-swap test keeps in `e` (0 if absent or not
/// a number) and its revision (0 if absent).
pub fn counter(e: Option<&kvmap_core::Entry>) -> (u64, kvmap_core::Revision) {
    e.map_or((0, 0), |e| {
        let n = std::str::from_utf8(&e.value)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        (n, e.revision)
    })
}

/// Wraps an async check on a shared runtime as a trial body.
pub fn trial<F, Fut>(rt: &std::sync::Arc<tokio::runtime::Runtime>, f: F) -> TrialFn
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = rt.clone();
    Box::new(move || rt.block_on(f()).map_err(|e| format!("{e:#}")))
}

/// Small enough for the slow-consumer case to overflow it.
pub const WATCH_BUFFER: usize = 32;

/// The whole conformance suite (`conformance::<name>::*`) on one 3 + 3
/// cluster started for it (TLS only with `tls`, the store trusting its
/// generated CA).
pub fn cluster_suite(name: &str, tls: bool) -> ExitCode {
    use std::sync::Arc;

    use kvmap_core::conformance::{Suite, SuiteOptions};
    use kvmap_core::KvStore;
    use kvmap_redis::{RedisConfig, RedisStore};

    // The servers live on their own runtime, so they can be dropped (and
    // their containers removed) after the suite consumed its runtime.
    let infra = runtime();
    if let Some(code) = skip_without_docker(&infra) {
        return code;
    }
    let cluster = infra
        .block_on(integration_tests::RedisCluster::start_with(
            integration_tests::RedisClusterOptions {
                tls,
                ..Default::default()
            },
        ))
        .expect("start redis cluster");
    let urls = cluster.urls();
    let ca = cluster.ca_pem().map(str::to_owned);
    let code = Suite::new(name)
        .with_runtime(runtime())
        .with_options(SuiteOptions {
            watch_buffer: Some(WATCH_BUFFER),
            ..SuiteOptions::default()
        })
        .run(move || {
            let mut cfg = RedisConfig::cluster(urls.clone()).with_watch_buffer(WATCH_BUFFER);
            if let Some(ca) = &ca {
                cfg = cfg.with_tls_ca_pem(ca.clone());
            }
            async move {
                let store = RedisStore::connect(cfg).await?;
                Ok(Arc::new(store) as Arc<dyn KvStore>)
            }
        });
    infra.block_on(async move { drop(cluster) });
    code
}

/// Connecting with `cfg` trusting a CA that signed nothing fails with
/// `Unauthenticated` and a message that names TLS.
pub async fn wrong_ca_is_refused(cfg: kvmap_redis::RedisConfig) -> anyhow::Result<()> {
    let cfg = cfg.with_tls_ca_pem(integration_tests::wrong_ca_pem()?);
    let e = kvmap_redis::RedisStore::connect(cfg)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("connected trusting a wrong ca"))?;
    eprintln!("wrong ca: {e}");
    anyhow::ensure!(
        e.kind() == kvmap_core::ErrorKind::Unauthenticated,
        "kind {:?}: {e}",
        e.kind()
    );
    anyhow::ensure!(
        e.to_string().contains("tls"),
        "message does not name tls: {e}"
    );
    Ok(())
}
