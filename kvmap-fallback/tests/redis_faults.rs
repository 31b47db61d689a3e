//! Real faults on a real Redis: a `redis-server` child process is the
//! primary of a chain Redis → RocksDB with the outbox policy; it is
//! paused (SIGSTOP), killed (SIGKILL) and restarted, and the process
//! writing through the chain is itself SIGKILLed with a full outbox.
//! Skipped (with a message) when `redis-server` is not installed.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvmap_core::{Context, KvStore, KvStoreExt};
use kvmap_fallback::{
    BreakerConfig, BreakerState, ChainConfig, FallbackChain, OutboxConfig, ReplayMode,
    ReplayReport, WritePolicy,
};
use kvmap_redis::{RedisConfig, RedisStore};
use kvmap_rocksdb::{RocksConfig, RocksStore};

mod common;
use common::key;
#[path = "common/redis.rs"]
mod redis_server;
use redis_server::server_or_skip;

const OP_TIMEOUT: Duration = Duration::from_millis(300);

async fn redis(url: &str) -> kvmap_core::Result<RedisStore> {
    RedisStore::connect(
        RedisConfig::standalone(url)
            .with_op_timeout(OP_TIMEOUT)
            .with_connect_timeout(OP_TIMEOUT)
            .with_watch_events(false)
            .with_key_prefix("fallback-test:"),
    )
    .await
}

async fn chain(url: &str, dir: &Path) -> FallbackChain {
    let primary = redis(url).await.unwrap();
    let local = RocksStore::open_async(RocksConfig::new(dir.join("local")))
        .await
        .unwrap();
    FallbackChain::builder()
        .backend("redis", Arc::new(primary))
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
        .unwrap()
}

/// Replays until drained (the breaker needs its cool-down and a probe).
async fn drain(chain: &FallbackChain) -> ReplayReport {
    let mut total = ReplayReport::default();
    for _ in 0..600 {
        let r = chain.replay_now().await.unwrap();
        total.replayed += r.replayed;
        total.conflicts += r.conflicts;
        total.already_applied += r.already_applied;
        if r.drained() {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("outbox did not drain within 600 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_primary_falls_back_and_the_outbox_reaches_redis() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server_or_skip(dir.path()) else {
        return;
    };
    let c = chain(&server.url(), dir.path()).await;
    let ctx = Context::new().with_timeout(Duration::from_secs(5));
    for i in 0..20 {
        c.set(&ctx, &key(&format!("p/{i}")), format!("before-{i}"))
            .await
            .unwrap();
    }
    server.pause();
    // Every read succeeds: the first ones wait for Redis's op timeout and
    // fall through; after 3 failures the breaker opens and reads go
    // straight to RocksDB.
    for i in 0..20 {
        let e = c.get(&ctx, &key(&format!("p/{i}"))).await.unwrap().unwrap();
        assert_eq!(e.value, format!("before-{i}"));
        assert_eq!(e.served_by.as_deref(), Some("rocksdb"));
    }
    assert_ne!(c.breakers()[0].state(), BreakerState::Closed);
    assert!(c.breakers()[0].snapshot().failures >= 3);
    // Writes are acknowledged from RocksDB and journaled.
    for i in 0..20 {
        c.set(&ctx, &key(&format!("p/{i}")), format!("during-{i}"))
            .await
            .unwrap();
    }
    assert_eq!(c.outbox_depth(), 20);
    let e = c.get(&ctx, &key("p/3")).await.unwrap().unwrap();
    assert_eq!(e.value, "during-3", "own write visible during the outage");
    server.resume();
    let report = drain(&c).await;
    assert_eq!(report.conflicts, 0, "{report:?}");
    assert_eq!(c.breakers()[0].state(), BreakerState::Closed);
    let direct = redis(&server.url()).await.unwrap();
    for i in 0..20 {
        let e = direct
            .get(&ctx, &key(&format!("p/{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.value, format!("during-{i}"));
    }
    let e = c.get(&ctx, &key("p/0")).await.unwrap().unwrap();
    assert_eq!(e.served_by.as_deref(), Some("redis"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_primary_gets_the_outbox_and_a_conflict_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = server_or_skip(dir.path()) else {
        return;
    };
    let c = chain(&server.url(), dir.path()).await;
    let ctx = Context::new().with_timeout(Duration::from_secs(5));
    c.set(&ctx, &key("doc"), "v1").await.unwrap();
    for i in 0..10 {
        c.set(&ctx, &key(&format!("q/{i}")), "before")
            .await
            .unwrap();
    }
    server.kill();
    c.set(&ctx, &key("doc"), "mine").await.unwrap();
    for i in 0..10 {
        c.set(&ctx, &key(&format!("q/{i}")), format!("during-{i}"))
            .await
            .unwrap();
    }
    assert_eq!(
        c.get(&ctx, &key("doc")).await.unwrap().unwrap().value,
        "mine"
    );
    server.restart();
    // Another client changes the key on the primary before the replay.
    let direct = redis(&server.url()).await.unwrap();
    assert_eq!(
        direct.get(&ctx, &key("doc")).await.unwrap().unwrap().value,
        "v1",
        "aof kept it"
    );
    direct.set(&ctx, &key("doc"), "theirs").await.unwrap();
    let report = drain(&c).await;
    assert_eq!(report.conflicts, 1, "{report:?}");
    assert_eq!(
        direct.get(&ctx, &key("doc")).await.unwrap().unwrap().value,
        "theirs"
    );
    for i in 0..10 {
        let e = direct
            .get(&ctx, &key(&format!("q/{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.value, format!("during-{i}"));
    }
    let conflicts = c.conflicts();
    assert_eq!(conflicts[0].key.as_str(), "doc");
}

const CHILD_ENV: &str = "KVMAP_FALLBACK_TEST_CHILD";

/// The writing process of the SIGKILL test: runs only when started by
/// it; writes through the chain (Redis is down) and prints each
/// acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, url) = spec.split_once('|').unwrap();
    let c = chain(url, Path::new(dir)).await;
    let ctx = Context::new().with_timeout(Duration::from_secs(5));
    for i in 0.. {
        c.set(&ctx, &key(&format!("s/{i}")), format!("{i}"))
            .await
            .unwrap();
        println!("acked {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_writer_with_a_full_outbox_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = server_or_skip(dir.path()) else {
        return;
    };
    // The child connects while Redis is up; Redis is killed after its
    // fifth acknowledged write, so the rest go to the outbox.
    let url = server.url();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, format!("{}|{url}", dir.path().display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0usize;
    let mut killed_server = false;
    while let Some(Ok(line)) = lines.next() {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse::<usize>().unwrap() + 1;
            if acked == 5 && !killed_server {
                server.kill();
                killed_server = true;
            }
            if acked >= 60 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(acked >= 60, "child stopped after {acked} writes");
    server.restart();
    let c = chain(&url, dir.path()).await;
    assert!(c.outbox_depth() > 0, "the outage writes are in the outbox");
    let report = drain(&c).await;
    assert_eq!(report.conflicts, 0, "{report:?}");
    let direct = redis(&url).await.unwrap();
    let ctx = Context::new().with_timeout(Duration::from_secs(5));
    for i in 0..acked {
        let e = direct.get(&ctx, &key(&format!("s/{i}"))).await.unwrap();
        assert_eq!(
            e.map(|e| e.value),
            Some(format!("{i}").into()),
            "acked write s/{i} lost"
        );
    }
}
