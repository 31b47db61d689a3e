//! Conformance cases: time to live.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::util::{ensure, eq, expect_absent, expect_kind, key, Check, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{Capability, Context, ErrorKind, Key, ListRequest, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("ttl_visible_before_expiry", visible_before),
        case("ttl_gone_after_expiry", gone_after),
        case("ttl_cleared_by_put_without_ttl", cleared_by_put),
        case("ttl_refreshed_by_put_with_ttl", refreshed_by_put),
        case("ttl_zero_is_invalid", zero_invalid),
        case("ttl_above_max_is_invalid", above_max_invalid),
        case("ttl_expired_entries_not_listed", not_listed),
    ]
}

async fn unsupported(fx: &Fixture) -> Check<bool> {
    if fx.caps.supports(Capability::Ttl) {
        return Ok(false);
    }
    let r = fx
        .store
        .put(
            &Context::new(),
            &key("ttl")?,
            Bytes::from("x"),
            PutOptions::default().with_ttl(fx.options.ttl),
        )
        .await;
    expect_kind(
        r,
        ErrorKind::Unsupported {
            capability: Capability::Ttl,
        },
        "put with ttl",
    )?;
    Ok(true)
}

async fn put_ttl(fx: &Fixture, k: &Key, ttl: Option<Duration>) -> Check<u64> {
    let o = PutOptions {
        ttl,
        ..PutOptions::default()
    };
    Ok(fx
        .store
        .put(&Context::new(), k, Bytes::from("v"), o)
        .await?)
}

/// Waits until `k` is gone, failing after TTL + grace.
pub(crate) async fn wait_gone(fx: &Fixture, k: &Key, since: tokio::time::Instant) -> Check {
    let limit = fx.options.ttl + fx.options.expiry_grace;
    loop {
        if fx.store.get(&Context::new(), k).await?.is_none() {
            return Ok(());
        }
        if since.elapsed() > limit {
            return Err(format!(
                "{k} still visible {:?} after a put with ttl {:?}",
                since.elapsed(),
                fx.options.ttl
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn visible_before(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("t")?;
    let before = SystemTime::now();
    put_ttl(&fx, &k, Some(fx.options.ttl)).await?;
    let e = fx
        .store
        .get(&Context::new(), &k)
        .await?
        .ok_or_else(|| "absent right after put".to_string())?;
    let at = e
        .expires_at
        .ok_or_else(|| "expires_at missing on a ttl entry".to_string())?;
    // Servers may round expiry to their own granularity: allow a second.
    ensure(
        at >= before + fx.options.ttl - Duration::from_secs(1),
        || format!("expires_at {at:?} too early"),
    )?;
    PASS
}

async fn gone_after(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("t")?;
    let start = tokio::time::Instant::now();
    put_ttl(&fx, &k, Some(fx.options.ttl)).await?;
    wait_gone(&fx, &k, start).await?;
    PASS
}

async fn cleared_by_put(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("t")?;
    put_ttl(&fx, &k, Some(fx.options.ttl)).await?;
    put_ttl(&fx, &k, None).await?;
    let e = fx
        .store
        .get(&Context::new(), &k)
        .await?
        .ok_or_else(|| "absent".to_string())?;
    eq(e.expires_at, None, "expires_at after plain put")?;
    tokio::time::sleep(fx.options.ttl + fx.options.expiry_grace).await;
    ensure(fx.store.get(&Context::new(), &k).await?.is_some(), || {
        "key expired although a put cleared its ttl".into()
    })?;
    PASS
}

async fn refreshed_by_put(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("t")?;
    let long = fx.options.ttl * 4 + fx.options.expiry_grace;
    put_ttl(&fx, &k, Some(fx.options.ttl)).await?;
    put_ttl(&fx, &k, Some(long)).await?;
    tokio::time::sleep(fx.options.ttl + fx.options.ttl / 2).await;
    ensure(fx.store.get(&Context::new(), &k).await?.is_some(), || {
        "expired at the old ttl after a refresh".into()
    })?;
    PASS
}

async fn zero_invalid(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("t")?;
    let r = fx
        .store
        .put(
            &Context::new(),
            &k,
            Bytes::from("v"),
            PutOptions::default().with_ttl(Duration::ZERO),
        )
        .await;
    expect_kind(r, ErrorKind::InvalidArgument, "zero ttl")?;
    expect_absent(&fx, &k, "nothing written").await?;
    PASS
}

/// `Duration::MAX` and anything above `PutOptions::MAX_TTL` are refused
/// before any write (no overflow, no half-written entry); the maximum
/// itself works.
async fn above_max_invalid(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let k = key("tmax")?;
    for ttl in [Duration::MAX, PutOptions::MAX_TTL + Duration::from_secs(1)] {
        let r = fx
            .store
            .put(
                &Context::new(),
                &k,
                Bytes::from("v"),
                PutOptions::default().with_ttl(ttl),
            )
            .await;
        expect_kind(r, ErrorKind::InvalidArgument, "ttl above the maximum")?;
        expect_absent(&fx, &k, "nothing written").await?;
        let batch =
            crate::Batch::new().put_with(k.clone(), "v", PutOptions::default().with_ttl(ttl));
        let r = fx.store.apply(&Context::new(), batch).await.map(|_| ());
        expect_kind(
            r,
            ErrorKind::InvalidArgument,
            "batch with a ttl above the maximum",
        )?;
        expect_absent(&fx, &k, "nothing written by the batch").await?;
    }
    put_ttl(&fx, &k, Some(PutOptions::MAX_TTL)).await?;
    let e = fx
        .store
        .get(&Context::new(), &k)
        .await?
        .ok_or_else(|| "entry with the maximum ttl is missing".to_string())?;
    if let Some(at) = e.expires_at {
        let years_99 = SystemTime::now() + Duration::from_secs(99 * 365 * 24 * 3600);
        ensure(at > years_99, || {
            format!("the maximum ttl was shortened to {at:?}")
        })?;
    }
    PASS
}

async fn not_listed(fx: Fixture) -> CaseResult {
    if unsupported(&fx).await? {
        return PASS;
    }
    let start = tokio::time::Instant::now();
    let k = key("l/short")?;
    put_ttl(&fx, &k, Some(fx.options.ttl)).await?;
    put_ttl(&fx, &key("l/long")?, None).await?;
    wait_gone(&fx, &k, start).await?;
    let page = fx
        .store
        .list(&Context::new(), &ListRequest::prefix("l/"))
        .await?;
    let keys: Vec<&str> = page.entries.iter().map(|e| e.key.as_str()).collect();
    eq(keys, vec!["l/long"], "listed keys after expiry")?;
    PASS
}
