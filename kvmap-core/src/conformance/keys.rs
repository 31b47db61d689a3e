//! Conformance cases: keys at the backend's limits and stored literally.
//!
//! The rules `Key::new` enforces for every backend (empty, control
//! characters, leading slash) and the `Namespaced` view are unit tests in
//! `key.rs` and `namespace.rs`: they test no backend.

use bytes::Bytes;

use super::util::{eq, expect_kind, key, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{Context, ErrorKind, Key, ListRequest, PutOptions};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("key_at_declared_max_length_works", key_at_max),
        case(
            "key_over_declared_max_rejected_nothing_written",
            key_over_max,
        ),
        case("key_dots_and_slashes_are_literal", key_literal_segments),
    ]
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
