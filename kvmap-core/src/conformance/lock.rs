//! Conformance cases: leases and locks with fencing tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::util::{ensure, eq, expect_kind, key, Check, Failure, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::lock::{FencingToken, LockGuard, LockOptions};
use crate::{Capability, Context, ErrorKind, Key, ListRequest, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("lock_try_lock_contended", try_lock_contended),
        case("lock_release_then_reacquire", release_then_reacquire),
        case("lock_tokens_strictly_increase", tokens_increase),
        case("lock_mutual_exclusion", mutual_exclusion),
        case("lock_wait_honours_deadline", wait_deadline),
        case("lock_wait_honours_cancel", wait_cancel),
        case("lock_wait_option_bounds_wait", wait_option),
        case("lock_waiter_gets_released_lock", waiter_gets_released),
        case("lock_unrenewed_lease_expires", unrenewed_expires),
        case("lock_renewal_keeps_lease", renewal_keeps),
        case("lock_drop_releases", drop_releases),
        case("lock_leaves_data_alone", leaves_data_alone),
        case("lock_ttl_out_of_range_is_invalid", ttl_invalid),
    ]
}

/// `Some(skip)` unless the store declares locks; for one that does not,
/// checks the typed `Unsupported` first.
async fn gate(fx: &Fixture) -> Check<Option<CaseResult>> {
    if fx.caps.supports(Capability::Lock) {
        return Ok(None);
    }
    let r = fx
        .store
        .lock(&Context::new(), &key("lock")?, opts(fx))
        .await;
    expect_kind(
        r,
        ErrorKind::Unsupported {
            capability: Capability::Lock,
        },
        "lock on a store without locks",
    )?;
    Ok(Some(PASS))
}

fn opts(fx: &Fixture) -> LockOptions {
    LockOptions::new(fx.options.lock_ttl)
}

fn try_opts(fx: &Fixture) -> LockOptions {
    LockOptions::try_lock(fx.options.lock_ttl)
}

/// A context long enough for any wait a case expects to end.
fn patient(fx: &Fixture) -> Context {
    Context::new().with_timeout(fx.options.lock_ttl * 4 + fx.options.lock_grace + secs(20))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

async fn take(fx: &Fixture, k: &Key, o: LockOptions) -> Check<LockGuard> {
    Ok(fx.store.lock(&patient(fx), k, o).await?)
}

async fn expect_locked(fx: &Fixture, k: &Key, what: &str) -> Check {
    let r = fx.store.lock(&Context::new(), k, try_opts(fx)).await;
    expect_kind(r.map(|g| g.token()), ErrorKind::Locked, what)?;
    Ok(())
}

async fn try_lock_contended(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("try")?;
    let a = take(&fx, &k, try_opts(&fx)).await?;
    eq(a.key().clone(), k.clone(), "guard key")?;
    expect_locked(&fx, &k, "try-lock of a held lock").await?;
    ensure(!a.is_lost(), || {
        "holder lost its lease to a refused try-lock".into()
    })?;
    // Another key is independent.
    let b = take(&fx, &key("try-other")?, try_opts(&fx)).await?;
    b.release().await?;
    a.release().await?;
    PASS
}

async fn release_then_reacquire(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("again")?;
    let a = take(&fx, &k, try_opts(&fx)).await?;
    let first = a.token();
    a.release().await?;
    let b = take(&fx, &k, try_opts(&fx)).await?;
    ensure(b.token() > first, || {
        format!("token after release {} not above {first}", b.token())
    })?;
    b.release().await?;
    PASS
}

async fn tokens_increase(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("tokens")?;
    let mut last: Option<FencingToken> = None;
    for i in 0..5 {
        let g = take(&fx, &k, opts(&fx)).await?;
        if let Some(prev) = last {
            ensure(g.token() > prev, || {
                format!("holder {i}: token {} not above {prev}", g.token())
            })?;
        }
        last = Some(g.token());
        g.release().await?;
    }
    PASS
}

async fn mutual_exclusion(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 5;
    let k = key("mutex")?;
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (fx, k) = (fx.clone(), k.clone());
        let (inside, overlaps, order) = (inside.clone(), overlaps.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let g = fx.store.lock(&patient(&fx), &k, opts(&fx)).await?;
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                order
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(g.token());
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await?;
            }
            Ok::<(), crate::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| Failure::from(format!("client task failed: {e}")))??;
    }
    eq(
        overlaps.load(Ordering::SeqCst),
        0,
        "overlapping critical sections",
    )?;
    let order = order.lock().unwrap_or_else(PoisonError::into_inner).clone();
    eq(order.len(), CLIENTS * ROUNDS, "critical sections entered")?;
    ensure(order.windows(2).all(|w| w[0] < w[1]), || {
        format!("tokens not increasing in holding order: {order:?}")
    })?;
    PASS
}

async fn wait_deadline(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("deadline")?;
    let a = take(&fx, &k, opts(&fx)).await?;
    let started = Instant::now();
    let ctx = Context::new().with_timeout(Duration::from_millis(300));
    let r = fx.store.lock(&ctx, &k, opts(&fx)).await;
    expect_kind(
        r.map(|g| g.token()),
        ErrorKind::DeadlineExceeded,
        "waiting past the deadline",
    )?;
    // Generous bound: the wait stopped at the deadline, not at the TTL.
    ensure(
        started.elapsed() < Duration::from_millis(300) + secs(3),
        || format!("the wait ran {:?} past a 300ms deadline", started.elapsed()),
    )?;
    ensure(!a.is_lost(), || "holder lost its lease to a waiter".into())?;
    // Nothing left behind: after the holder releases, the lock is free.
    a.release().await?;
    let b = take(&fx, &k, opts(&fx)).await?;
    b.release().await?;
    PASS
}

async fn wait_cancel(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("cancel")?;
    let a = take(&fx, &k, opts(&fx)).await?;
    let token = CancellationToken::new();
    let ctx = Context::new().with_cancel(token.clone());
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        token.cancel();
    });
    let r = fx.store.lock(&ctx, &k, opts(&fx)).await;
    expect_kind(r.map(|g| g.token()), ErrorKind::Cancelled, "cancelled wait")?;
    let _ = canceller.await;
    a.release().await?;
    PASS
}

async fn wait_option(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("wait")?;
    let a = take(&fx, &k, opts(&fx)).await?;
    let o = opts(&fx).with_wait(Duration::from_millis(200));
    let r = fx.store.lock(&patient(&fx), &k, o).await;
    let e = expect_kind(r.map(|g| g.token()), ErrorKind::Locked, "bounded wait")?;
    ensure(e.to_string().contains("lock"), || {
        format!("error does not name the operation: {e}")
    })?;
    a.release().await?;
    PASS
}

async fn waiter_gets_released(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("handoff")?;
    let a = take(&fx, &k, opts(&fx)).await?;
    let first = a.token();
    let waiter = {
        let (fx, k) = (fx.clone(), k.clone());
        tokio::spawn(async move { take(&fx, &k, opts(&fx)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure(!waiter.is_finished(), || "waiter got a held lock".into())?;
    a.release().await?;
    let b = waiter
        .await
        .map_err(|e| Failure::from(format!("waiter task failed: {e}")))??;
    ensure(b.token() > first, || {
        format!("waiter's token {} not above {first}", b.token())
    })?;
    b.release().await?;
    PASS
}

async fn unrenewed_expires(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("expire")?;
    let ttl = fx.options.lock_ttl;
    let a = take(&fx, &k, opts(&fx).with_auto_renew(false)).await?;
    let started = Instant::now();
    // The lost signal fires by the TTL.
    tokio::time::timeout(ttl + secs(1), a.lost())
        .await
        .map_err(|_| Failure::from(format!("lost signal did not fire within {ttl:?} + 1s")))?;
    ensure(a.is_lost(), || "is_lost false after the lost signal".into())?;
    ensure(a.lost_reason().is_some(), || "no lost reason".into())?;
    // Another client gets the lock within TTL + the backend's grace.
    let ctx = Context::new().with_timeout(ttl + fx.options.lock_grace + secs(5));
    let b = fx.store.lock(&ctx, &k, opts(&fx)).await?;
    let took = started.elapsed();
    ensure(took <= ttl + fx.options.lock_grace + secs(1), || {
        format!(
            "next holder got the lock after {took:?}, over ttl {ttl:?} + grace {:?}",
            fx.options.lock_grace
        )
    })?;
    ensure(b.token() > a.token(), || {
        format!("next holder's token {} not above {}", b.token(), a.token())
    })?;
    // The stale holder can neither renew nor free the new holder's lock.
    let renewed = a.renew().await;
    expect_kind(renewed, ErrorKind::Locked, "renewal of a lost lease")?;
    a.release().await?;
    expect_locked(&fx, &k, "try-lock after a stale holder's release").await?;
    ensure(!b.is_lost(), || {
        "new holder lost its lease to a stale release".into()
    })?;
    b.release().await?;
    PASS
}

async fn renewal_keeps(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("renew")?;
    let ttl = fx.options.lock_ttl;
    let a = take(&fx, &k, opts(&fx)).await?;
    tokio::time::sleep(ttl * 2 + ttl / 2).await;
    ensure(!a.is_lost(), || {
        format!("renewed lease lost: {:?}", a.lost_reason())
    })?;
    expect_locked(&fx, &k, "try-lock after 2.5 ttl of renewals").await?;
    a.release().await?;
    PASS
}

async fn drop_releases(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("drop")?;
    let long = secs(60);
    let a = take(&fx, &k, LockOptions::try_lock(long)).await?;
    let first = a.token();
    drop(a);
    // Well before the 60 s TTL, the lock is free again.
    let ctx = Context::new().with_timeout(secs(10));
    let b = fx.store.lock(&ctx, &k, LockOptions::new(long)).await?;
    ensure(b.token() > first, || {
        format!("token after drop {} not above {first}", b.token())
    })?;
    b.release().await?;
    PASS
}

async fn leaves_data_alone(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("data")?;
    let ctx = Context::new();
    let rev = fx
        .store
        .put(&ctx, &k, Bytes::from("v"), PutOptions::default())
        .await?;
    let g = take(&fx, &k, opts(&fx)).await?;
    let other = take(&fx, &key("data-free")?, opts(&fx)).await?;
    let got = fx.store.get(&ctx, &k).await?;
    eq(
        got.map(|e| (e.value, e.revision)),
        Some((Bytes::from("v"), rev)),
        "value under a held lock",
    )?;
    eq(
        fx.store.get(&ctx, other.key()).await?.map(|e| e.value),
        None,
        "a locked key without data",
    )?;
    let page = fx.store.list(&ctx, &ListRequest::prefix("")).await?;
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.clone()).collect();
    eq(keys, vec![k.clone()], "keys listed while locks are held")?;
    g.release().await?;
    other.release().await?;
    let page = fx.store.list(&ctx, &ListRequest::prefix("")).await?;
    eq(page.entries.len(), 1, "keys listed after release")?;
    PASS
}

async fn ttl_invalid(fx: Fixture) -> CaseResult {
    if let Some(r) = gate(&fx).await? {
        return r;
    }
    let k = key("bad-ttl")?;
    for ttl in [Duration::ZERO, LockOptions::MAX_TTL + secs(1)] {
        let r = fx
            .store
            .lock(&Context::new(), &k, LockOptions::try_lock(ttl))
            .await;
        expect_kind(
            r.map(|g| g.token()),
            ErrorKind::InvalidArgument,
            "lock ttl out of range",
        )?;
    }
    // Nothing was taken.
    let g = take(&fx, &k, try_opts(&fx)).await?;
    g.release().await?;
    PASS
}
