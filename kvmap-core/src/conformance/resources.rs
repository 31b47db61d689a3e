//! Conformance case: a store releases what it holds once it and its
//! streams and guards are dropped.
//!
//! The case makes its own store through the suite's factory on a
//! runtime of its own (a fresh thread), uses it (writes, reads, a list,
//! two watch streams, a lock), drops everything and then waits until
//! that runtime has no task alive and nothing holds the store. Client
//! libraries drive each connection (Redis, Consul's HTTP pool,
//! subscriptions) with a task, so a connection left open shows as a task
//! still alive; a background task (watch pump, renewal, outbox drain)
//! that outlives the store shows the same way.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::util::{key, next_change, Check, Failure, PASS};
use super::{case, Case, CaseResult, Factory, Fixture};
use crate::lock::LockOptions;
use crate::{Capability, Context, KvStore, ListRequest, PutOptions, WatchRequest};

pub(crate) fn cases() -> Vec<Case> {
    vec![case("resources_released_after_drop", released_after_drop)]
}

/// How long the tasks of a dropped store may take to end (a blocking
/// close, e.g. RocksDB's flush and thread joins, included).
const SETTLE: Duration = Duration::from_secs(15);

async fn released_after_drop(fx: Fixture) -> CaseResult {
    let Some(factory) = fx.factory.clone() else {
        return Ok(Some("the fixture has no factory (not run by Suite)".into()));
    };
    let prefix = fx.prefix.clone();
    let options = fx.options;
    let caps = fx.caps;
    drop(fx);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("conformance-release".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let r = rt.block_on(exercise(factory, prefix, options, caps));
                    rt.shutdown_timeout(Duration::from_secs(5));
                    r
                }
                Err(e) => Err(Failure::from(format!("cannot build a runtime: {e}"))),
            };
            // The receiver only goes away if the suite gave up on the case.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(Failure::from(format!("cannot start a thread: {e}")));
    }
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(Failure::from(
            "the case's thread ended without a result".to_owned(),
        )),
    }
}

/// Uses a fresh store on the current (the case's own) runtime, drops it
/// and checks that nothing is left.
async fn exercise(
    factory: Factory,
    prefix: String,
    options: super::SuiteOptions,
    caps: crate::Capabilities,
) -> CaseResult {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let raw = factory()
        .await
        .map_err(|e| Failure::from(format!("factory failed: {e}")))?;
    let weak: Weak<dyn KvStore> = Arc::downgrade(&raw);
    let store: Arc<dyn KvStore> = Arc::new(
        crate::Namespaced::new(raw, &prefix)
            .map_err(|e| Failure::from(format!("namespace: {e}")))?,
    );
    let used = use_store(&store, options, &caps).await;
    let peak = metrics.num_alive_tasks();
    // Whatever `use_store` returned (streams, guard) is dropped with it.
    let held = used?;
    drop(held);
    drop(store);
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let alive = metrics.num_alive_tasks().saturating_sub(before);
        let store_alive = weak.strong_count() > 0;
        if alive == 0 && !store_alive {
            return PASS;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure::from(format!(
                "{SETTLE:?} after the store, its watch streams and its lock guard were dropped: \
                 {alive} task(s) still alive on the runtime (peak while in use: {}), store {}",
                peak.saturating_sub(before),
                if store_alive {
                    "still referenced by something"
                } else {
                    "released"
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The handles a user typically holds at once; returned so they are
/// dropped together.
struct Held {
    _streams: Vec<crate::WatchStream>,
    _guard: Option<crate::lock::LockGuard>,
}

async fn use_store(
    store: &Arc<dyn KvStore>,
    options: super::SuiteOptions,
    caps: &crate::Capabilities,
) -> Check<Held> {
    let ctx = Context::new();
    let a = key("a")?;
    let b = key("b")?;
    store
        .put(&ctx, &a, Bytes::from_static(b"1"), PutOptions::default())
        .await?;
    store.get(&ctx, &a).await?;
    store.get_many(&ctx, &[a.clone(), b.clone()]).await?;
    store.list(&ctx, &ListRequest::prefix("")).await?;
    let mut streams = Vec::new();
    if caps.supports(Capability::Watch) {
        let mut s = store.watch(&ctx, WatchRequest::prefix("")).await?;
        // A second stream left unread, as a consumer that never polls.
        streams.push(store.watch(&ctx, WatchRequest::key(b.clone())).await?);
        store
            .put(&ctx, &b, Bytes::from_static(b"2"), PutOptions::default())
            .await?;
        next_change(&mut s, options.event_timeout).await?;
        streams.push(s);
    }
    let guard = if caps.supports(Capability::Lock) {
        let lock_ctx = Context::new().with_timeout(options.lock_ttl * 4 + Duration::from_secs(20));
        Some(
            store
                .lock(&lock_ctx, &key("lock")?, LockOptions::new(options.lock_ttl))
                .await?,
        )
    } else {
        None
    };
    Ok(Held {
        _streams: streams,
        _guard: guard,
    })
}
