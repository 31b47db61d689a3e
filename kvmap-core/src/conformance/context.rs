//! Conformance cases: deadlines, cancellation, consistency, views.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::util::{ensure, eq, expect_absent, expect_err, expect_kind, key, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{
    Batch, Capability, Consistency, Context, DeleteOptions, ErrorKind, KvStore, KvStoreExt,
    ListRequest, PutOptions, SharedStoreExt,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("ctx_expired_deadline_put_has_no_side_effect", expired_put),
        case(
            "ctx_cancelled_before_call_has_no_side_effect",
            cancelled_writes,
        ),
        case("ctx_expired_deadline_reads_are_typed", expired_reads),
        case("ctx_generous_deadline_succeeds", generous),
        case("error_messages_carry_backend_op_key", messages),
        case("consistency_strong_read_sees_latest_write", strong_read),
        case("consistency_stale_read_within_bound", stale_read),
        case("typed_view_roundtrip_and_codec_error", typed_view),
        case("ext_update_with_read_modify_write", update_with),
    ]
}

fn expired() -> Context {
    Context::new().with_timeout(Duration::ZERO)
}

fn cancelled() -> Context {
    let t = crate::CancellationToken::new();
    t.cancel();
    Context::new().with_cancel(t)
}

async fn expired_put(fx: Fixture) -> CaseResult {
    let k = key("cx/put")?;
    let r = fx
        .store
        .put(&expired(), &k, Bytes::from("v"), PutOptions::default())
        .await;
    expect_kind(r, ErrorKind::DeadlineExceeded, "put with expired deadline")?;
    expect_absent(&fx, &k, "nothing written").await?;
    PASS
}

async fn cancelled_writes(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let (a, b) = (key("cx/a")?, key("cx/b")?);
    fx.store
        .put(&ctx, &a, Bytes::from("keep"), PutOptions::default())
        .await?;
    let c = cancelled();
    expect_kind(
        fx.store
            .put(&c, &b, Bytes::from("v"), PutOptions::default())
            .await,
        ErrorKind::Cancelled,
        "put",
    )?;
    expect_kind(
        fx.store.delete(&c, &a, DeleteOptions::default()).await,
        ErrorKind::Cancelled,
        "delete",
    )?;
    expect_kind(
        fx.store
            .apply(&c, Batch::new().put(b.clone(), "v").delete(a.clone()))
            .await,
        ErrorKind::Cancelled,
        "apply",
    )?;
    eq(fx.store.get(&ctx, &b).await?, None, "b not written")?;
    eq(
        fx.store.get(&ctx, &a).await?.map(|e| e.value),
        Some(Bytes::from("keep")),
        "a kept",
    )?;
    PASS
}

async fn expired_reads(fx: Fixture) -> CaseResult {
    let k = key("cx/r")?;
    let e = expired();
    expect_kind(
        fx.store.get(&e, &k).await,
        ErrorKind::DeadlineExceeded,
        "get",
    )?;
    expect_kind(
        fx.store.list(&e, &ListRequest::prefix("cx/")).await,
        ErrorKind::DeadlineExceeded,
        "list",
    )?;
    expect_kind(
        fx.store.get_many(&e, std::slice::from_ref(&k)).await,
        ErrorKind::DeadlineExceeded,
        "get_many",
    )?;
    let w = fx.store.watch(&e, crate::WatchRequest::key(k)).await;
    expect_err(
        w.map(|_| "a stream"),
        |k| {
            k == ErrorKind::DeadlineExceeded
                || k == ErrorKind::Unsupported {
                    capability: Capability::Watch,
                }
        },
        "watch",
    )?;
    PASS
}

async fn generous(fx: Fixture) -> CaseResult {
    let ctx = Context::new()
        .with_timeout(Duration::from_secs(60))
        .with_label("case", "generous");
    let k = key("cx/g")?;
    fx.store
        .put(&ctx, &k, Bytes::from("v"), PutOptions::default())
        .await?;
    eq(
        fx.store.get(&ctx, &k).await?.map(|e| e.value),
        Some(Bytes::from("v")),
        "value",
    )?;
    PASS
}

async fn messages(fx: Fixture) -> CaseResult {
    let k = key("cx/msg")?;
    let e = fx
        .store
        .put(&expired(), &k, Bytes::from("v"), PutOptions::default())
        .await;
    let e = expect_kind(e, ErrorKind::DeadlineExceeded, "put")?;
    let msg = e.to_string();
    ensure(msg.contains(fx.store.name()), || {
        format!("message lacks backend: {msg}")
    })?;
    ensure(msg.contains("put"), || format!("message lacks op: {msg}"))?;
    ensure(msg.contains("cx/msg"), || {
        format!("message lacks key: {msg}")
    })?;
    ensure(
        msg.chars().next().is_some_and(|c| !c.is_uppercase()),
        || format!("message not lowercase: {msg}"),
    )?;
    eq(e.backend(), fx.store.name(), "backend field")?;
    PASS
}

async fn strong_read(fx: Fixture) -> CaseResult {
    let k = key("cs/k")?;
    let ctx = Context::new().with_consistency(Consistency::Strong);
    if !fx.caps.supports(Capability::StrongRead) {
        let r = fx.store.get(&ctx, &k).await;
        expect_kind(
            r,
            ErrorKind::Unsupported {
                capability: Capability::StrongRead,
            },
            "strong read",
        )?;
        return PASS;
    }
    for i in 0..20 {
        let v = format!("v{i}");
        fx.store
            .put(
                &Context::new(),
                &k,
                Bytes::from(v.clone()),
                PutOptions::default(),
            )
            .await?;
        eq(
            fx.store.get(&ctx, &k).await?.map(|e| e.value),
            Some(Bytes::from(v)),
            "strong read after write",
        )?;
    }
    PASS
}

async fn stale_read(fx: Fixture) -> CaseResult {
    let k = key("cs/stale")?;
    let max = Duration::from_secs(10);
    let ctx = Context::new().with_consistency(Consistency::Stale { max_staleness: max });
    if !fx.caps.supports(Capability::StaleRead) {
        expect_kind(
            fx.store.get(&ctx, &k).await,
            ErrorKind::Unsupported {
                capability: Capability::StaleRead,
            },
            "stale read",
        )?;
        return PASS;
    }
    fx.store
        .put(&Context::new(), &k, Bytes::from("v"), PutOptions::default())
        .await?;
    let start = tokio::time::Instant::now();
    loop {
        match fx.store.get(&ctx, &k).await {
            Ok(Some(e)) => {
                let s = e
                    .staleness
                    .ok_or_else(|| "stale read without a staleness bound".to_string())?;
                ensure(s <= max, || format!("staleness {s:?} above max {max:?}"))?;
                eq(e.value, Bytes::from("v"), "stale value")?;
                return PASS;
            }
            // A replica that has not caught up yet may answer absent or too old.
            Ok(None) => {}
            Err(e) if matches!(e.kind(), ErrorKind::StaleTooOld { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() > fx.options.event_timeout {
            return Err("stale read never saw the write".to_string().into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct User {
    name: String,
    age: u32,
}

async fn typed_view(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let store: Arc<dyn KvStore> = fx.store.clone();
    let users = store.typed::<User>();
    let k = key("ty/ada")?;
    let want = User {
        name: "ada".into(),
        age: 36,
    };
    let rev = users.put(&ctx, &k, &want).await?;
    let got = users
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| "typed value absent".to_string())?;
    eq(got.value, want, "typed value")?;
    eq(got.revision, rev, "typed revision")?;
    let bad = key("ty/bad")?;
    fx.store
        .put(
            &ctx,
            &bad,
            Bytes::from_static(b"\xffnot json"),
            PutOptions::default(),
        )
        .await?;
    expect_kind(
        users.get(&ctx, &bad).await,
        ErrorKind::Codec,
        "decode of foreign bytes",
    )?;
    PASS
}

async fn update_with(fx: Fixture) -> CaseResult {
    if !fx.caps.supports(Capability::Cas) {
        return Ok(Some(
            "update_with needs compare-and-swap; covered by the cas cases".into(),
        ));
    }
    let ctx = Context::new();
    let k = key("ux/n")?;
    for _ in 0..3 {
        fx.store
            .update_with(&ctx, &k, 5, |cur| {
                let n: u64 = cur
                    .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                    .unwrap_or(0);
                Bytes::from((n + 1).to_string())
            })
            .await?;
    }
    eq(
        fx.store.get(&ctx, &k).await?.map(|e| e.value),
        Some(Bytes::from("3")),
        "counter",
    )?;
    PASS
}
