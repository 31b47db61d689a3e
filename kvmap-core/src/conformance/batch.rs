//! Conformance cases: get_many and apply.

use bytes::Bytes;

use super::util::{ensure, eq, expect_absent, expect_err, key, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{Batch, BatchOutcome, Capability, Context, DeleteOptions, ErrorKind, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("batch_get_many_in_order_with_missing", get_many_order),
        case("batch_get_many_empty", get_many_empty),
        case("batch_apply_puts_and_deletes", apply_mixed),
        case("batch_apply_failed_condition", apply_condition),
        case("batch_apply_bad_input_writes_nothing", apply_bad_input),
        case("batch_over_declared_max_is_invalid", over_max),
        case("batch_apply_many_keys", apply_many),
    ]
}

async fn get_many_order(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let keys = [key("g/1")?, key("g/2")?, key("g/3")?];
    fx.store
        .put(&ctx, &keys[0], Bytes::from("one"), PutOptions::default())
        .await?;
    fx.store
        .put(&ctx, &keys[2], Bytes::from("three"), PutOptions::default())
        .await?;
    let out = fx.store.get_many(&ctx, &keys).await?;
    eq(out.len(), 3, "results")?;
    let vals: Vec<Option<Bytes>> = out
        .into_iter()
        .map(|r| r.map(|e| e.map(|e| e.value)))
        .collect::<Result<_, _>>()?;
    eq(
        vals,
        vec![Some(Bytes::from("one")), None, Some(Bytes::from("three"))],
        "values in order",
    )?;
    PASS
}

async fn get_many_empty(fx: Fixture) -> CaseResult {
    let out = fx.store.get_many(&Context::new(), &[]).await?;
    eq(out.len(), 0, "results")?;
    PASS
}

async fn apply_mixed(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let (a, b, c) = (key("b/a")?, key("b/b")?, key("b/c")?);
    fx.store
        .put(&ctx, &c, Bytes::from("old"), PutOptions::default())
        .await?;
    let batch = Batch::new()
        .put(a.clone(), "A")
        .put(b.clone(), "B")
        .delete(c.clone());
    let out = fx.store.apply(&ctx, batch).await?;
    eq(out.len(), 3, "outcomes")?;
    for (i, o) in out.iter().enumerate() {
        match (i, o) {
            (0 | 1, Ok(BatchOutcome::Put(r))) => ensure(*r > 0, || "revision 0".into())?,
            (2, Ok(BatchOutcome::Deleted(d))) => eq(*d, true, "delete outcome")?,
            _ => return Err(format!("outcome {i}: {o:?}").into()),
        }
    }
    eq(
        fx.store.get(&ctx, &a).await?.map(|e| e.value),
        Some(Bytes::from("A")),
        "a",
    )?;
    eq(
        fx.store.get(&ctx, &b).await?.map(|e| e.value),
        Some(Bytes::from("B")),
        "b",
    )?;
    eq(fx.store.get(&ctx, &c).await?, None, "c deleted")?;
    PASS
}

async fn apply_condition(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let (a, b) = (key("bc/a")?, key("bc/b")?);
    let rb = fx
        .store
        .put(&ctx, &b, Bytes::from("b0"), PutOptions::default())
        .await?;
    let batch = Batch::new()
        .put(a.clone(), "A")
        .put_with(b.clone(), "B", PutOptions::update(rb + 1000))
        .delete_with(key("bc/none")?, DeleteOptions::default());
    let cas = fx.caps.supports(Capability::Cas);
    let r = fx.store.apply(&ctx, batch).await;
    if !cas {
        expect_err(
            r,
            |k| {
                k == ErrorKind::Unsupported {
                    capability: Capability::Cas,
                }
            },
            "conditional batch without cas",
        )?;
        return PASS;
    }
    if fx.caps.supports(Capability::AtomicBatch) {
        expect_err(
            r,
            |k| matches!(k, ErrorKind::Conflict { current: Some(c) } if c == rb),
            "atomic batch with failed condition",
        )?;
        eq(
            fx.store.get(&ctx, &a).await?,
            None,
            "atomic batch wrote nothing",
        )?;
    } else {
        let out = r?;
        ensure(out[0].is_ok(), || {
            format!("independent op failed: {:?}", out[0])
        })?;
        let e = out[1]
            .as_ref()
            .err()
            .ok_or_else(|| "failed condition reported ok".to_string())?;
        ensure(matches!(e.kind(), ErrorKind::Conflict { .. }), || {
            format!("wrong kind {e}")
        })?;
    }
    eq(
        fx.store.get(&ctx, &b).await?.map(|e| e.value),
        Some(Bytes::from("b0")),
        "b unchanged",
    )?;
    PASS
}

async fn apply_bad_input(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let max = fx.caps.limits.max_value_bytes;
    if max > 32 << 20 {
        return Ok(Some(format!(
            "declared max value {max} bytes is above the 32 MiB the suite sends"
        )));
    }
    let a = key("bb/a")?;
    let batch = Batch::new()
        .put(a.clone(), "ok")
        .put(key("bb/big")?, vec![0u8; max + 1]);
    let r = fx.store.apply(&ctx, batch).await;
    expect_err(
        r,
        |k| matches!(k, ErrorKind::ValueTooLarge { .. }),
        "oversized value in batch",
    )?;
    expect_absent(&fx, &a, "nothing written").await?;
    PASS
}

async fn over_max(fx: Fixture) -> CaseResult {
    let n = fx.caps.limits.max_batch_ops + 1;
    if n > 100_000 {
        return Ok(Some(format!(
            "declared max batch {} too large to exceed in a test",
            n - 1
        )));
    }
    let ctx = Context::new();
    let keys = (0..n)
        .map(|i| key(&format!("om/{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    expect_err(
        fx.store.get_many(&ctx, &keys).await,
        |k| k == ErrorKind::InvalidArgument,
        "get_many over max",
    )?;
    let batch = keys.iter().fold(Batch::new(), |b, k| b.put(k.clone(), "x"));
    expect_err(
        fx.store.apply(&ctx, batch).await,
        |k| k == ErrorKind::InvalidArgument,
        "apply over max",
    )?;
    expect_absent(&fx, &keys[0], "nothing written").await?;
    PASS
}

async fn apply_many(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let n = fx.caps.limits.max_batch_ops.min(500);
    let keys = (0..n)
        .map(|i| key(&format!("am/{i:04}")))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = keys
        .iter()
        .fold(Batch::new(), |b, k| b.put(k.clone(), k.as_str().to_owned()));
    let out = fx.store.apply(&ctx, batch).await?;
    ensure(out.iter().all(|o| o.is_ok()), || {
        "a put of the batch failed".into()
    })?;
    let got = fx.store.get_many(&ctx, &keys).await?;
    for (k, r) in keys.iter().zip(got) {
        let v = r?.map(|e| e.value);
        eq(v, Some(Bytes::from(k.as_str().to_owned())), k.as_str())?;
    }
    PASS
}
