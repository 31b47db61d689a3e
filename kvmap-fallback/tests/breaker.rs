//! The breaker layer against a scripted store, with paused tokio time.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests

use std::sync::Arc;
use std::time::Duration;

use kvmap_core::{Context, ErrorKind, KvStore, KvStoreExt, MemoryStore, PutOptions};
use kvmap_fallback::{Breaker, BreakerConfig, BreakerState};

mod common;
use common::{key, Switch};

fn config() -> BreakerConfig {
    BreakerConfig::default().with_jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn opens_after_five_counted_failures_and_then_does_no_io() {
    let sw = Switch::new("scripted", Arc::new(MemoryStore::new()));
    let b = Breaker::new(sw.clone(), config());
    let ctx = Context::new();
    sw.set_down(true);
    for _ in 0..5 {
        let e = b.get(&ctx, &key("k")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(sw.calls(), 5);
    for _ in 0..100 {
        let e = b.get(&ctx, &key("k")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::CircuitOpen);
        assert!(
            e.to_string()
                .starts_with("scripted: get \"k\": circuit open"),
            "{e}"
        );
    }
    assert_eq!(sw.calls(), 5, "an open breaker touched the store");
    assert_eq!(b.snapshot().rejected, 100);
}

#[tokio::test(start_paused = true)]
async fn cool_down_then_one_probe_closes() {
    let sw = Switch::new("scripted", Arc::new(MemoryStore::new()));
    let b = Breaker::new(sw.clone(), config().with_cool_down(Duration::from_secs(10)));
    let ctx = Context::new();
    sw.set_down(true);
    for _ in 0..5 {
        let _ = b.get(&ctx, &key("k")).await;
    }
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(
        b.get(&ctx, &key("k")).await.unwrap_err().kind(),
        ErrorKind::CircuitOpen
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    sw.set_down(false);
    assert_eq!(b.get(&ctx, &key("k")).await.unwrap(), None);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(sw.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens_with_doubled_cool_down() {
    let sw = Switch::new("scripted", Arc::new(MemoryStore::new()));
    let b = Breaker::new(sw.clone(), config().with_cool_down(Duration::from_secs(1)));
    let ctx = Context::new();
    sw.set_down(true);
    for _ in 0..5 {
        let _ = b.get(&ctx, &key("k")).await;
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        b.get(&ctx, &key("k")).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn conflicts_bad_input_and_own_deadline_never_trip() {
    let store = Arc::new(MemoryStore::new());
    let b = Breaker::new(store, config());
    let ctx = Context::new();
    let k = key("c");
    b.set(&ctx, &k, "v").await.unwrap();
    for _ in 0..20 {
        let e = b.create(&ctx, &k, "again").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        let e = b.update(&ctx, &k, "x", 999).await.unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Conflict { .. }));
        let e = b
            .put(&ctx, &k, vec![0u8; 2 << 20].into(), PutOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::ValueTooLarge { .. }));
        let expired = Context::new().with_timeout(Duration::ZERO);
        let e = b.get(&expired, &k).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().failures, 0);
}

/// A store whose every call hangs until dropped.
#[derive(Debug)]
struct Hang;

#[async_trait::async_trait]
impl KvStore for Hang {
    fn name(&self) -> &str {
        "hang"
    }
    fn capabilities(&self) -> kvmap_core::Capabilities {
        kvmap_core::Capabilities::all_native().with(
            kvmap_core::Capability::Lock,
            kvmap_core::Support::Unsupported,
        )
    }
    async fn get(
        &self,
        _: &Context,
        _: &kvmap_core::Key,
    ) -> kvmap_core::Result<Option<kvmap_core::Entry>> {
        std::future::pending().await
    }
    async fn put(
        &self,
        _: &Context,
        _: &kvmap_core::Key,
        _: bytes::Bytes,
        _: PutOptions,
    ) -> kvmap_core::Result<u64> {
        Err(ErrorKind::Unavailable.into())
    }
    async fn delete(
        &self,
        _: &Context,
        _: &kvmap_core::Key,
        _: kvmap_core::DeleteOptions,
    ) -> kvmap_core::Result<bool> {
        std::future::pending().await
    }
    async fn list(
        &self,
        _: &Context,
        _: &kvmap_core::ListRequest,
    ) -> kvmap_core::Result<kvmap_core::ListPage> {
        std::future::pending().await
    }
    async fn watch(
        &self,
        _: &Context,
        _: kvmap_core::WatchRequest,
    ) -> kvmap_core::Result<kvmap_core::WatchStream> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot() {
    let b = Arc::new(Breaker::new(
        Arc::new(Hang),
        config().with_cool_down(Duration::from_secs(1)),
    ));
    let ctx = Context::new();
    for _ in 0..5 {
        let _ = b.set(&ctx, &key("k"), "v").await;
    }
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    // The probe hangs; the caller gives up by dropping the future.
    let r = tokio::time::timeout(Duration::from_millis(100), b.get(&ctx, &key("k"))).await;
    assert!(r.is_err());
    // The slot is free again: the next call is admitted as a probe (and
    // fails at once), rather than rejected as "probes in flight".
    let e = b.set(&ctx, &key("k"), "v").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(b.state(), BreakerState::Open);
}
