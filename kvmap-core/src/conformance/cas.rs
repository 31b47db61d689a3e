//! Conformance cases: compare-and-swap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::util::{ensure, eq, expect_absent, expect_kind, key, Check, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{Capability, Context, DeleteOptions, ErrorKind, Key, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("cas_create_when_absent_succeeds", create_absent),
        case("cas_create_when_present_already_exists", create_present),
        case("cas_update_with_current_revision_succeeds", update_current),
        case("cas_conflict_returns_current", update_stale),
        case("cas_update_of_absent_key_conflicts", update_absent),
        case("cas_delete_if_revision_matches", delete_if_match),
        case(
            "cas_delete_if_revision_mismatch_keeps_value",
            delete_if_mismatch,
        ),
        case("cas_delete_if_absent_conflicts", delete_if_absent),
        case("cas_concurrent_counter_8x200", concurrent_counter),
    ]
}

/// If CAS is undeclared, checks that a conditional put is `Unsupported`
/// and returns `true` (the case is done).
async fn unsupported(fx: &Fixture) -> Check<bool> {
    if fx.caps.supports(Capability::Cas) {
        return Ok(false);
    }
    let ctx = Context::new();
    let k = key("cas-unsupported")?;
    let r = fx
        .store
        .put(&ctx, &k, Bytes::from("x"), PutOptions::create())
        .await;
    expect_kind(
        r,
        ErrorKind::Unsupported {
            capability: Capability::Cas,
        },
        "create without cas",
    )?;
    let r = fx
        .store
        .delete(&ctx, &k, DeleteOptions::if_revision(1))
        .await;
    expect_kind(
        r,
        ErrorKind::Unsupported {
            capability: Capability::Cas,
        },
        "delete-if without cas",
    )?;
    Ok(true)
}

async fn put(fx: &Fixture, k: &Key, v: &str, o: PutOptions) -> crate::Result<u64> {
    fx.store
        .put(&Context::new(), k, Bytes::from(v.to_owned()), o)
        .await
}

async fn value(fx: &Fixture, k: &Key) -> Check<Option<Bytes>> {
    Ok(fx.store.get(&Context::new(), k).await?.map(|e| e.value))
}

async fn create_absent(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("c")?;
    let r = put(&fx, &k, "v", PutOptions::create()).await?;
    ensure(r > 0, || "revision 0".into())?;
    eq(
        value(&fx, &k).await?,
        Some(Bytes::from("v")),
        "created value",
    )?;
    PASS
}

async fn create_present(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("c")?;
    put(&fx, &k, "first", PutOptions::default()).await?;
    expect_kind(
        put(&fx, &k, "second", PutOptions::create()).await,
        ErrorKind::AlreadyExists,
        "create over existing",
    )?;
    eq(
        value(&fx, &k).await?,
        Some(Bytes::from("first")),
        "value unchanged",
    )?;
    PASS
}

async fn update_current(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("u")?;
    let r1 = put(&fx, &k, "1", PutOptions::default()).await?;
    let r2 = put(&fx, &k, "2", PutOptions::update(r1)).await?;
    ensure(r2 > r1, || format!("{r2} <= {r1}"))?;
    eq(
        value(&fx, &k).await?,
        Some(Bytes::from("2")),
        "updated value",
    )?;
    PASS
}

async fn update_stale(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("u")?;
    let r1 = put(&fx, &k, "1", PutOptions::default()).await?;
    let r2 = put(&fx, &k, "2", PutOptions::default()).await?;
    let r = put(&fx, &k, "3", PutOptions::update(r1)).await;
    expect_kind(
        r,
        ErrorKind::Conflict { current: Some(r2) },
        "update with stale revision",
    )?;
    eq(
        value(&fx, &k).await?,
        Some(Bytes::from("2")),
        "value unchanged",
    )?;
    PASS
}

async fn update_absent(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("absent")?;
    let r = put(&fx, &k, "x", PutOptions::update(1)).await;
    expect_kind(
        r,
        ErrorKind::Conflict { current: None },
        "update of absent key",
    )?;
    expect_absent(&fx, &k, "nothing written").await?;
    PASS
}

async fn delete_if_match(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("d")?;
    let r = put(&fx, &k, "x", PutOptions::default()).await?;
    let d = fx
        .store
        .delete(&Context::new(), &k, DeleteOptions::if_revision(r))
        .await?;
    eq(d, true, "deleted")?;
    eq(value(&fx, &k).await?, None, "gone")?;
    PASS
}

async fn delete_if_mismatch(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("d")?;
    let r1 = put(&fx, &k, "x", PutOptions::default()).await?;
    let r2 = put(&fx, &k, "y", PutOptions::default()).await?;
    let d = fx
        .store
        .delete(&Context::new(), &k, DeleteOptions::if_revision(r1))
        .await;
    expect_kind(
        d,
        ErrorKind::Conflict { current: Some(r2) },
        "delete-if stale",
    )?;
    eq(value(&fx, &k).await?, Some(Bytes::from("y")), "value kept")?;
    PASS
}

async fn delete_if_absent(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let d = fx
        .store
        .delete(
            &Context::new(),
            &key("nothing")?,
            DeleteOptions::if_revision(5),
        )
        .await;
    expect_kind(
        d,
        ErrorKind::Conflict { current: None },
        "delete-if of absent key",
    )?;
    PASS
}

async fn concurrent_counter(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("counter")?;
    put(&fx, &k, "0", PutOptions::default()).await?;
    let successes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, k, successes) = (fx.store.clone(), k.clone(), successes.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = Context::new();
            for _ in 0..200 {
                let e = store
                    .get(&ctx, &k)
                    .await?
                    .ok_or_else(|| "counter vanished".to_string())?;
                let n: u64 = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| "counter not a number".to_string())?;
                let next = Bytes::from((n + 1).to_string());
                match store
                    .put(&ctx, &k, next, PutOptions::update(e.revision))
                    .await
                {
                    Ok(_) => {
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::Conflict { .. }) => {}
                    Err(e) => return Err(super::Failure::from(e)),
                }
            }
            Ok::<_, super::Failure>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("task panicked: {e}"))??;
    }
    let n = successes.load(Ordering::SeqCst);
    eq(
        value(&fx, &k).await?,
        Some(Bytes::from(n.to_string())),
        "counter equals successful swaps",
    )?;
    ensure(n >= 200, || format!("only {n} of 1600 swaps succeeded"))?;
    PASS
}
