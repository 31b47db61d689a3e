//! The chain's routing, write policies, outbox replay, conflicts,
//! restart and watch, over real stores (memory, RocksDB) with a
//! switchable fault layer in front of the primary.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvmap_core::{
    Consistency, Context, ErrorKind, KvStore, KvStoreExt, MemoryStore, WatchEvent, WatchRequest,
};
use kvmap_fallback::{
    BreakerConfig, BreakerState, ChainConfig, FallbackChain, OutboxConfig, ReplayMode, WritePolicy,
};
use kvmap_rocksdb::{RocksConfig, RocksStore};

mod common;
use common::{key, Switch};

fn breaker() -> BreakerConfig {
    BreakerConfig::default()
        .with_failure_threshold(2)
        .with_cool_down(Duration::from_millis(1))
        .with_max_cool_down(Duration::from_millis(1))
        .with_jitter(0.0)
}

async fn chain(
    primary: Arc<Switch>,
    fallback: Arc<dyn KvStore>,
    policy: WritePolicy,
) -> FallbackChain {
    FallbackChain::builder()
        .backend("primary", primary)
        .backend("local", fallback)
        .config(
            ChainConfig::default()
                .with_breaker(breaker())
                .with_write_policy(policy),
        )
        .build()
        .await
        .unwrap()
}

fn outbox(dir: &std::path::Path) -> WritePolicy {
    WritePolicy::Outbox(OutboxConfig::new(dir.join("outbox")).with_replay(ReplayMode::Manual))
}

/// Replays until drained; the primary's breaker may need a few probes.
async fn drain(chain: &FallbackChain) -> kvmap_fallback::ReplayReport {
    let mut total = kvmap_fallback::ReplayReport::default();
    for _ in 0..1000 {
        let r = chain.replay_now().await.unwrap();
        total.replayed += r.replayed;
        total.conflicts += r.conflicts;
        total.already_applied += r.already_applied;
        if r.drained() {
            return total;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("outbox did not drain");
}

#[tokio::test]
async fn reads_fall_back_and_name_the_backend() {
    let primary = Switch::new("memory", Arc::new(MemoryStore::new()));
    let c = chain(
        primary.clone(),
        Arc::new(MemoryStore::new()),
        WritePolicy::Reject,
    )
    .await;
    let ctx = Context::new();
    c.set(&ctx, &key("a"), "1").await.unwrap();
    let e = c.get(&ctx, &key("a")).await.unwrap().unwrap();
    assert_eq!(e.served_by.as_deref(), Some("primary"));
    primary.set_down(true);
    let e = c.get(&ctx, &key("a")).await.unwrap().unwrap();
    assert_eq!(
        e.served_by.as_deref(),
        Some("local"),
        "mirrored copy served"
    );
    assert_eq!(e.value, "1");
    assert!(e.staleness.is_some());
    // Strong reads never fall back.
    let strong = Context::new().with_consistency(Consistency::Strong);
    let err = c.get(&strong, &key("a")).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::CircuitOpen),
        "{err}"
    );
    // Reject: writes fail while the primary is down.
    let err = c.set(&ctx, &key("a"), "2").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::CircuitOpen),
        "{err}"
    );
    assert_ne!(c.breakers()[0].state(), BreakerState::Closed);
    let list = c
        .list(&ctx, &kvmap_core::ListRequest::prefix(""))
        .await
        .unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].served_by.as_deref(), Some("local"));
}

#[tokio::test]
async fn write_through_writes_to_the_healthy_backends() {
    let primary = Switch::new("memory", Arc::new(MemoryStore::new()));
    let local = Arc::new(MemoryStore::new());
    let c = chain(primary.clone(), local.clone(), WritePolicy::WriteThrough).await;
    let ctx = Context::new();
    c.set(&ctx, &key("a"), "1").await.unwrap();
    assert_eq!(
        local.get(&ctx, &key("a")).await.unwrap().unwrap().value,
        "1"
    );
    primary.set_down(true);
    c.set(&ctx, &key("b"), "2").await.unwrap();
    assert_eq!(
        local.get(&ctx, &key("b")).await.unwrap().unwrap().value,
        "2"
    );
    assert_eq!(primary.inner.get(&ctx, &key("b")).await.unwrap(), None);
}

#[tokio::test]
async fn outbox_keeps_acknowledged_writes_and_replays_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let raw_primary: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let primary = Switch::new("memory", raw_primary.clone());
    let c = chain(
        primary.clone(),
        Arc::new(MemoryStore::new()),
        outbox(dir.path()),
    )
    .await;
    let ctx = Context::new();
    c.set(&ctx, &key("k/seen"), "before").await.unwrap();
    primary.set_down(true);
    for i in 0..50 {
        c.set(&ctx, &key(&format!("k/{}", i % 10)), format!("v{i}"))
            .await
            .unwrap();
    }
    c.set(&ctx, &key("k/seen"), "during").await.unwrap();
    c.remove(&ctx, &key("k/0")).await.unwrap();
    assert_eq!(c.outbox_depth(), 52);
    assert!(!c.primary_active());
    // Own writes are visible during the outage.
    let e = c.get(&ctx, &key("k/9")).await.unwrap().unwrap();
    assert_eq!(
        (e.value.as_ref(), e.served_by.as_deref()),
        (&b"v49"[..], Some("local"))
    );
    assert_eq!(c.get(&ctx, &key("k/0")).await.unwrap(), None);
    // Still bypassed while the primary is back but the outbox is full.
    primary.set_down(false);
    let e = c.get(&ctx, &key("k/seen")).await.unwrap().unwrap();
    assert_eq!(e.served_by.as_deref(), Some("local"));
    let report = drain(&c).await;
    assert_eq!(report.conflicts, 0, "{report:?}");
    assert_eq!(c.outbox_depth(), 0);
    assert!(c.primary_active());
    for i in 1..10 {
        let e = raw_primary
            .get(&ctx, &key(&format!("k/{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.value, format!("v{}", 40 + i));
    }
    assert_eq!(raw_primary.get(&ctx, &key("k/0")).await.unwrap(), None);
    assert_eq!(
        raw_primary
            .get(&ctx, &key("k/seen"))
            .await
            .unwrap()
            .unwrap()
            .value,
        "during"
    );
    let e = c.get(&ctx, &key("k/seen")).await.unwrap().unwrap();
    assert_eq!(e.served_by.as_deref(), Some("primary"));
}

#[tokio::test]
async fn a_key_changed_on_the_primary_meanwhile_is_a_conflict_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let raw_primary: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let primary = Switch::new("memory", raw_primary.clone());
    let c = chain(
        primary.clone(),
        Arc::new(MemoryStore::new()),
        outbox(dir.path()),
    )
    .await;
    let mut conflicts = c.subscribe_conflicts();
    let ctx = Context::new();
    c.set(&ctx, &key("doc"), "v1").await.unwrap();
    c.set(&ctx, &key("other"), "o1").await.unwrap();
    primary.set_down(true);
    c.set(&ctx, &key("doc"), "mine").await.unwrap();
    c.set(&ctx, &key("doc"), "mine-again").await.unwrap();
    c.set(&ctx, &key("other"), "o2").await.unwrap();
    // Someone else writes the key on the primary during the outage.
    raw_primary.set(&ctx, &key("doc"), "theirs").await.unwrap();
    primary.set_down(false);
    let report = drain(&c).await;
    assert_eq!(
        report.conflicts, 2,
        "both outbox writes of doc conflict: {report:?}"
    );
    assert_eq!(report.replayed, 1);
    assert_eq!(
        raw_primary
            .get(&ctx, &key("doc"))
            .await
            .unwrap()
            .unwrap()
            .value,
        "theirs"
    );
    assert_eq!(
        raw_primary
            .get(&ctx, &key("other"))
            .await
            .unwrap()
            .unwrap()
            .value,
        "o2"
    );
    let first = conflicts.recv().await.unwrap();
    assert_eq!(first.key.as_str(), "doc");
    assert_eq!(first.current.unwrap().value, "theirs");
    assert!(
        first.reason.contains("changed on the primary"),
        "{}",
        first.reason
    );
    assert_eq!(c.conflicts().len(), 2);
}

#[tokio::test]
async fn a_restart_with_a_non_empty_outbox_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let raw_primary: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
    let primary = Switch::new("memory", raw_primary.clone());
    let open_local = || async {
        Arc::new(
            RocksStore::open_async(RocksConfig::new(dir.path().join("local")))
                .await
                .unwrap(),
        ) as Arc<dyn KvStore>
    };
    let ctx = Context::new();
    {
        let c = chain(primary.clone(), open_local().await, outbox(dir.path())).await;
        c.set(&ctx, &key("x"), "0").await.unwrap();
        primary.set_down(true);
        for i in 0..20 {
            c.set(&ctx, &key(&format!("r/{i}")), format!("{i}"))
                .await
                .unwrap();
        }
        c.set(&ctx, &key("x"), "1").await.unwrap();
        assert_eq!(c.outbox_depth(), 21);
    }
    // A new process: the primary is back, the outbox still full.
    primary.set_down(false);
    let c = chain(primary.clone(), open_local().await, outbox(dir.path())).await;
    assert_eq!(c.outbox_depth(), 21);
    assert!(!c.primary_active());
    let e = c.get(&ctx, &key("r/7")).await.unwrap().unwrap();
    assert_eq!(e.value, "7");
    let report = drain(&c).await;
    assert_eq!(report.conflicts, 0, "{report:?}");
    for i in 0..20 {
        let e = raw_primary
            .get(&ctx, &key(&format!("r/{i}")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.value, format!("{i}"));
    }
    assert_eq!(
        raw_primary
            .get(&ctx, &key("x"))
            .await
            .unwrap()
            .unwrap()
            .value,
        "1"
    );
}

#[tokio::test]
async fn watch_follows_the_serving_backend_with_a_resync() {
    let dir = tempfile::tempdir().unwrap();
    let primary = Switch::new("memory", Arc::new(MemoryStore::new()));
    let c = chain(
        primary.clone(),
        Arc::new(MemoryStore::new()),
        outbox(dir.path()),
    )
    .await;
    let ctx = Context::new();
    let mut w = c.watch(&ctx, WatchRequest::prefix("w/")).await.unwrap();
    c.set(&ctx, &key("w/a"), "1").await.unwrap();
    match w.next().await.unwrap().unwrap() {
        WatchEvent::Put { entry, .. } => assert_eq!(entry.served_by.as_deref(), Some("primary")),
        other => panic!("{other:?}"),
    }
    primary.set_down(true);
    c.set(&ctx, &key("w/b"), "2").await.unwrap();
    let mut saw_resync = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Resync { entries, .. } => {
                saw_resync = true;
                assert!(entries
                    .iter()
                    .all(|e| e.served_by.as_deref() == Some("local")));
                if entries.iter().any(|e| e.key.as_str() == "w/b") {
                    break;
                }
            }
            WatchEvent::Put { entry, .. } if entry.key.as_str() == "w/b" => {
                assert_eq!(entry.served_by.as_deref(), Some("local"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_resync, "no resync on the switch");
}
