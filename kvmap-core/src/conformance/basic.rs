//! Conformance cases: round trips, overwrite, values, revisions.

use bytes::Bytes;

use super::util::{ensure, eq, expect_absent, expect_err, key, Check, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{Context, DeleteOptions, ErrorKind, Key, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("put_get_roundtrip", put_get_roundtrip),
        case("get_missing_is_none", get_missing_is_none),
        case("overwrite_replaces_value", overwrite_replaces_value),
        case("empty_value_roundtrip", empty_value_roundtrip),
        case("binary_value_all_256_bytes", binary_value_all_bytes),
        case("value_at_declared_max", value_at_max),
        case(
            "value_one_byte_over_max_rejected_nothing_written",
            value_over_max,
        ),
        case("delete_existing_returns_true", delete_existing),
        case("delete_missing_returns_false", delete_missing),
        case("revision_increases_on_every_change", revisions_increase),
        case("create_revision_kept_across_updates", create_revision_kept),
        case(
            "recreate_after_delete_new_create_revision",
            recreate_after_delete,
        ),
        case("unicode_key_roundtrip", unicode_key_roundtrip),
        case("capabilities_are_sane", capabilities_sane),
    ]
}

async fn put(fx: &Fixture, k: &Key, v: impl Into<Bytes>) -> Check<u64> {
    Ok(fx
        .store
        .put(&Context::new(), k, v.into(), PutOptions::default())
        .await?)
}

async fn get_value(fx: &Fixture, k: &Key) -> Check<Option<Bytes>> {
    Ok(fx.store.get(&Context::new(), k).await?.map(|e| e.value))
}

async fn put_get_roundtrip(fx: Fixture) -> CaseResult {
    let k = key("a/b")?;
    let rev = put(&fx, &k, "hello").await?;
    let e = fx.store.get(&Context::new(), &k).await?;
    let e = e.ok_or_else(|| "written key is absent".to_string())?;
    eq(e.key.as_str(), "a/b", "key")?;
    eq(e.value, Bytes::from("hello"), "value")?;
    eq(
        e.revision,
        rev,
        "revision returned by put equals entry revision",
    )?;
    ensure(rev > 0, || "revision 0".into())?;
    eq(e.expires_at, None, "expires_at without ttl")?;
    PASS
}

async fn get_missing_is_none(fx: Fixture) -> CaseResult {
    eq(get_value(&fx, &key("nope")?).await?, None, "missing key")?;
    PASS
}

async fn overwrite_replaces_value(fx: Fixture) -> CaseResult {
    let k = key("k")?;
    put(&fx, &k, "one").await?;
    put(&fx, &k, "two").await?;
    eq(get_value(&fx, &k).await?, Some(Bytes::from("two")), "value")?;
    PASS
}

async fn empty_value_roundtrip(fx: Fixture) -> CaseResult {
    let k = key("empty")?;
    put(&fx, &k, Bytes::new()).await?;
    eq(
        get_value(&fx, &k).await?,
        Some(Bytes::new()),
        "empty value is present",
    )?;
    PASS
}

async fn binary_value_all_bytes(fx: Fixture) -> CaseResult {
    let k = key("bin")?;
    let v: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    put(&fx, &k, v.clone()).await?;
    eq(
        get_value(&fx, &k).await?,
        Some(Bytes::from(v)),
        "binary value",
    )?;
    PASS
}

const MAX_TESTED_VALUE: usize = 32 << 20;

async fn value_at_max(fx: Fixture) -> CaseResult {
    let max = fx.caps.limits.max_value_bytes;
    if max > MAX_TESTED_VALUE {
        return Ok(Some(format!(
            "declared max value {max} bytes is above the 32 MiB the suite sends"
        )));
    }
    let k = key("big")?;
    let v = Bytes::from(vec![b'x'; max]);
    put(&fx, &k, v.clone()).await?;
    let got = get_value(&fx, &k)
        .await?
        .ok_or_else(|| "max value absent".to_string())?;
    eq(got.len(), max, "length of max value")?;
    ensure(got == v, || "max value content differs".into())?;
    PASS
}

async fn value_over_max(fx: Fixture) -> CaseResult {
    let max = fx.caps.limits.max_value_bytes;
    if max > MAX_TESTED_VALUE {
        return Ok(Some(format!(
            "declared max value {max} bytes is above the 32 MiB the suite sends"
        )));
    }
    let k = key("too-big")?;
    let r = fx
        .store
        .put(
            &Context::new(),
            &k,
            Bytes::from(vec![0u8; max + 1]),
            PutOptions::default(),
        )
        .await;
    let e = expect_err(
        r,
        |k| matches!(k, ErrorKind::ValueTooLarge { .. }),
        "over max",
    )?;
    eq(
        e.kind(),
        ErrorKind::ValueTooLarge { size: max + 1, max },
        "sizes in error",
    )?;
    expect_absent(&fx, &k, "nothing written").await?;
    PASS
}

async fn delete_existing(fx: Fixture) -> CaseResult {
    let k = key("d")?;
    put(&fx, &k, "x").await?;
    let ctx = Context::new();
    eq(
        fx.store.delete(&ctx, &k, DeleteOptions::default()).await?,
        true,
        "deleted",
    )?;
    eq(get_value(&fx, &k).await?, None, "gone after delete")?;
    PASS
}

async fn delete_missing(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let r = fx
        .store
        .delete(&ctx, &key("never")?, DeleteOptions::default())
        .await?;
    eq(r, false, "delete of missing key")?;
    PASS
}

async fn revisions_increase(fx: Fixture) -> CaseResult {
    let k = key("rev")?;
    let mut last = 0;
    for i in 0..10 {
        let r = put(&fx, &k, format!("v{i}")).await?;
        ensure(r > last, || format!("revision {r} after {last}"))?;
        last = r;
    }
    // Another key's write does not move this key backwards.
    put(&fx, &key("other")?, "x").await?;
    let r = put(&fx, &k, "final").await?;
    ensure(r > last, || format!("revision {r} after {last}"))?;
    PASS
}

async fn create_revision_kept(fx: Fixture) -> CaseResult {
    let k = key("cr")?;
    let first = put(&fx, &k, "1").await?;
    put(&fx, &k, "2").await?;
    let e = fx
        .store
        .get(&Context::new(), &k)
        .await?
        .ok_or_else(|| "absent".to_string())?;
    eq(e.create_revision, first, "create_revision")?;
    ensure(e.revision > first, || "revision did not move".into())?;
    PASS
}

async fn recreate_after_delete(fx: Fixture) -> CaseResult {
    let k = key("re")?;
    let ctx = Context::new();
    let first = put(&fx, &k, "1").await?;
    fx.store.delete(&ctx, &k, DeleteOptions::default()).await?;
    let second = put(&fx, &k, "2").await?;
    let e = fx
        .store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| "absent".to_string())?;
    eq(e.create_revision, second, "create_revision after re-create")?;
    ensure(second > first, || {
        format!("re-created revision {second} <= {first}")
    })?;
    PASS
}

async fn unicode_key_roundtrip(fx: Fixture) -> CaseResult {
    for s in ["ключ/значение", "日本/東京", "emoji/🦀", "mixed/ä ö ü ß"] {
        let k = key(s)?;
        put(&fx, &k, s.to_owned()).await?;
        let e = fx
            .store
            .get(&Context::new(), &k)
            .await?
            .ok_or_else(|| format!("{s} absent"))?;
        eq(e.key.as_str(), s, "key")?;
        eq(e.value, Bytes::from(s.to_owned()), "value")?;
    }
    PASS
}

async fn capabilities_sane(fx: Fixture) -> CaseResult {
    let l = fx.caps.limits;
    ensure(l.max_key_bytes >= 64, || {
        format!("max_key_bytes {} < 64", l.max_key_bytes)
    })?;
    ensure(l.max_key_bytes <= Key::MAX_BYTES, || {
        "max_key_bytes above Key::MAX_BYTES".into()
    })?;
    ensure(l.max_value_bytes >= 1024, || {
        "max_value_bytes < 1024".into()
    })?;
    ensure(l.max_batch_ops >= 1, || "max_batch_ops 0".into())?;
    ensure(!fx.store.name().is_empty(), || "empty name".into())?;
    eq(fx.raw.name(), fx.store.name(), "namespaced name")?;
    PASS
}
