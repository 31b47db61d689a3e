//! The whole conformance suite on real Consul, in one binary:
//! `conformance::consul::dev::*` on one dev agent and
//! `conformance::consul::cluster::*` on a 3-server cluster (every store
//! given all three HTTP addresses). Both topologies start once, in
//! parallel, before the suites run; a topology whose suite the test filter
//! leaves out is not started.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kvmap_consul::{ConsulConfig, ConsulStore};
use kvmap_core::conformance::{cases, Suite, SuiteOptions};
use kvmap_core::KvStore;

/// Small enough for the slow-consumer case to overflow it.
const WATCH_BUFFER: usize = 32;
/// The reaper runs often so expired entries leave the server quickly.
const REAPER: Duration = Duration::from_millis(200);

fn options() -> SuiteOptions {
    SuiteOptions {
        ttl: Duration::from_secs(1),
        expiry_grace: Duration::from_secs(2),
        event_timeout: Duration::from_secs(10),
        watch_buffer: Some(WATCH_BUFFER),
        // Consul's shortest session TTL; an unrenewed session is
        // invalidated up to 2×TTL after its last renewal (TTL + 10 s of
        // slack), plus margin for the waiter's back-off.
        lock_ttl: Duration::from_secs(10),
        lock_grace: Duration::from_secs(12),
        ..SuiteOptions::default()
    }
}

fn config(addrs: Vec<String>) -> ConsulConfig {
    ConsulConfig::new(addrs[0].clone())
        .with_addrs(addrs)
        .with_watch_buffer(WATCH_BUFFER)
        .with_watch_wait(Duration::from_secs(5))
        .with_reaper_interval(Some(REAPER))
        .with_request_timeout(Duration::from_secs(10))
}

/// Whether the command line's filter keeps any case of `backend`
/// (libtest's rules: substring match, or the whole name with `--exact`).
fn selected(backend: &str) -> bool {
    let args = libtest_mimic::Arguments::from_args();
    let matches = |pat: &str, name: &str| {
        if args.exact {
            pat == name
        } else {
            name.contains(pat)
        }
    };
    cases().iter().any(|c| {
        let name = format!("conformance::{backend}::{}", c.name);
        args.filter.as_deref().is_none_or(|f| matches(f, &name))
            && !args.skip.iter().any(|s| matches(s, &name))
    })
}

fn suite(name: &str, addrs: Option<Vec<String>>) -> ExitCode {
    Suite::new(name)
        .with_runtime(common::runtime())
        .with_options(options())
        .run(move || {
            let addrs = addrs.clone();
            async move {
                // `None` only for `--list`, which never calls the factory.
                let addrs = addrs.ok_or_else(|| {
                    kvmap_core::Error::new(kvmap_core::ErrorKind::Internal)
                        .with_detail("no topology started")
                })?;
                let store = ConsulStore::connect(config(addrs)).await?;
                Ok(Arc::new(store) as Arc<dyn KvStore>)
            }
        })
}

fn main() -> ExitCode {
    // The servers live on their own runtime, so they can be dropped (and
    // their containers removed) after the suites consumed theirs.
    let infra = common::runtime();
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let list = common::list_only();
    let (want_dev, want_cluster) = (
        !list && selected("consul::dev"),
        !list && selected("consul::cluster"),
    );
    let (dev, cluster) = infra.block_on(async {
        let dev = async {
            if want_dev {
                Some(integration_tests::ConsulDev::start().await)
            } else {
                None
            }
        };
        let cluster = async {
            if want_cluster {
                Some(integration_tests::ConsulCluster::start().await)
            } else {
                None
            }
        };
        futures::join!(dev, cluster)
    });
    let dev = dev.map(|r| r.expect("start consul dev agent"));
    let cluster = cluster.map(|r| r.expect("start consul 3-server cluster"));

    let dev_code = suite("consul::dev", dev.as_ref().map(|d| vec![d.http_addr()]));
    let cluster_code = suite(
        "consul::cluster",
        cluster
            .as_ref()
            .map(integration_tests::ConsulCluster::http_addrs),
    );
    infra.block_on(async move { drop((dev, cluster)) });
    if dev_code == ExitCode::SUCCESS && cluster_code == ExitCode::SUCCESS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
