//! Conformance cases: key rules and namespaces.

use bytes::Bytes;

use super::util::{ensure, eq, expect_kind, key, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{Context, ErrorKind, Key, KvStore, ListRequest, Namespaced, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("key_empty_is_invalid", key_empty),
        case("key_with_control_characters_is_invalid", key_control),
        case("key_with_leading_slash_is_invalid", key_leading_slash),
        case("key_at_declared_max_length_works", key_at_max),
        case(
            "key_over_declared_max_rejected_nothing_written",
            key_over_max,
        ),
        case("key_dots_and_slashes_are_literal", key_literal_segments),
        case("namespaces_are_isolated", namespaces_isolated),
        case("namespace_prefix_is_invisible", namespace_prefix_invisible),
    ]
}

async fn key_empty(_fx: Fixture) -> CaseResult {
    expect_kind(Key::new(""), ErrorKind::InvalidKey, "empty key")?;
    PASS
}

async fn key_control(_fx: Fixture) -> CaseResult {
    for bad in ["a\0b", "line\nbreak", "tab\there", "del\u{7f}", "c1\u{9b}"] {
        expect_kind(Key::new(bad), ErrorKind::InvalidKey, &format!("{bad:?}"))?;
    }
    PASS
}

async fn key_leading_slash(_fx: Fixture) -> CaseResult {
    expect_kind(Key::new("/abs"), ErrorKind::InvalidKey, "leading slash")?;
    PASS
}

async fn key_at_max(fx: Fixture) -> CaseResult {
    let max = fx.caps.limits.max_key_bytes.min(Key::MAX_BYTES);
    let k = key(&"m".repeat(max))?;
    let ctx = Context::new();
    fx.store
        .put(&ctx, &k, Bytes::from("v"), PutOptions::default())
        .await?;
    let e = fx
        .store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| "max-length key absent".to_string())?;
    eq(e.key.len(), max, "key length")?;
    PASS
}

async fn key_over_max(fx: Fixture) -> CaseResult {
    let max = fx.caps.limits.max_key_bytes;
    if max >= Key::MAX_BYTES {
        // The Key type itself enforces the absolute limit.
        expect_kind(
            Key::new("m".repeat(Key::MAX_BYTES + 1)),
            ErrorKind::InvalidKey,
            "over absolute max",
        )?;
        return PASS;
    }
    let k = key(&"o".repeat(max + 1))?;
    let ctx = Context::new();
    let r = fx
        .store
        .put(&ctx, &k, Bytes::from("v"), PutOptions::default())
        .await;
    expect_kind(r, ErrorKind::InvalidKey, "put of over-long key")?;
    expect_kind(
        fx.store.get(&ctx, &k).await,
        ErrorKind::InvalidKey,
        "get of over-long key",
    )?;
    let page = fx.store.list(&ctx, &ListRequest::prefix("")).await?;
    eq(page.entries.len(), 0, "nothing written")?;
    PASS
}

async fn key_literal_segments(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let keys = [
        "a/./b", "a/../b", "a//b", "a/b/", "a b", "a*b?[c]", "{tag}x",
    ];
    for (i, s) in keys.iter().enumerate() {
        fx.store
            .put(
                &ctx,
                &key(s)?,
                Bytes::from(i.to_string()),
                PutOptions::default(),
            )
            .await?;
    }
    for (i, s) in keys.iter().enumerate() {
        let e = fx
            .store
            .get(&ctx, &key(s)?)
            .await?
            .ok_or_else(|| format!("{s:?} absent"))?;
        eq(
            e.value,
            Bytes::from(i.to_string()),
            &format!("value of {s:?}"),
        )?;
    }
    PASS
}

async fn namespaces_isolated(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let a = Namespaced::new(fx.raw.clone(), &format!("{}ns-a/", fx.prefix))?;
    let b = Namespaced::new(fx.raw.clone(), &format!("{}ns-b/", fx.prefix))?;
    let k = key("shared/name")?;
    a.put(&ctx, &k, Bytes::from("from a"), PutOptions::default())
        .await?;
    eq(b.get(&ctx, &k).await?, None, "b sees a's key")?;
    b.put(&ctx, &k, Bytes::from("from b"), PutOptions::default())
        .await?;
    let va = a.get(&ctx, &k).await?.map(|e| e.value);
    eq(va, Some(Bytes::from("from a")), "a's value after b wrote")?;
    let la = a.list(&ctx, &ListRequest::prefix("")).await?;
    eq(la.entries.len(), 1, "a lists only its own keys")?;
    PASS
}

async fn namespace_prefix_invisible(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("visible")?;
    fx.store
        .put(&ctx, &k, Bytes::from("v"), PutOptions::default())
        .await?;
    let e = fx
        .store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| "absent".to_string())?;
    eq(e.key.as_str(), "visible", "key seen through namespace")?;
    let raw_key = key(&format!("{}visible", fx.prefix))?;
    let raw = fx.raw.get(&ctx, &raw_key).await?;
    ensure(raw.is_some(), || "raw store lacks the prefixed key".into())?;
    PASS
}
