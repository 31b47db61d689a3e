//! Conformance cases: ordered listing and pagination.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::util::{ensure, eq, expect_err, key, Check, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{
    Capability, Context, DeleteOptions, ErrorKind, Key, KvStoreExt, ListRequest, PutOptions,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("list_prefix_sorted", prefix_sorted),
        case("list_order_non_ascii_bytes", non_ascii_order),
        case("list_prefix_isolation", prefix_isolation),
        case("list_range_is_half_open", range_half_open),
        case("list_limit_and_cursor_paginate", paginate),
        case(
            "list_pagination_stable_under_concurrent_writes",
            paginate_concurrent,
        ),
        case(
            "list_pages_under_truly_concurrent_writers_skip_and_repeat_nothing",
            paginate_with_writers,
        ),
        case("list_keys_only_has_empty_values", keys_only),
        case("list_empty_prefix_returns_empty_page", empty),
        case("list_bad_arguments_are_typed", bad_args),
        case("list_entries_carry_revisions", carry_revisions),
        case("list_deleted_keys_vanish", deleted_vanish),
    ]
}

async fn put_all(fx: &Fixture, keys: &[&str]) -> Check {
    let ctx = Context::new();
    for k in keys {
        fx.store
            .put(
                &ctx,
                &key(k)?,
                Bytes::from(format!("v:{k}")),
                PutOptions::default(),
            )
            .await?;
    }
    Ok(())
}

async fn list_keys(fx: &Fixture, req: ListRequest) -> Check<Vec<String>> {
    let entries = fx.store.list_all(&Context::new(), req, usize::MAX).await?;
    Ok(entries
        .into_iter()
        .map(|e| e.key.as_str().to_owned())
        .collect())
}

fn sorted(keys: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Ordering is only promised where `ordered_list` is declared.
fn order_or_set(fx: &Fixture, mut got: Vec<String>) -> Vec<String> {
    if !fx.caps.supports(Capability::OrderedList) {
        got.sort();
    }
    got
}

async fn prefix_sorted(fx: Fixture) -> CaseResult {
    let keys = ["p/c", "p/a", "p/b/x", "p/b", "q/a"];
    put_all(&fx, &keys).await?;
    let got = list_keys(&fx, ListRequest::prefix("p/")).await?;
    eq(
        order_or_set(&fx, got),
        sorted(&["p/a", "p/b", "p/b/x", "p/c"]),
        "keys",
    )?;
    PASS
}

async fn non_ascii_order(fx: Fixture) -> CaseResult {
    let keys = ["u/z", "u/ä", "u/A", "u/日", "u/é", "u/~", "u/a"];
    put_all(&fx, &keys).await?;
    let got = list_keys(&fx, ListRequest::prefix("u/")).await?;
    // Byte order of UTF-8 equals code point order.
    eq(order_or_set(&fx, got), sorted(&keys), "byte order")?;
    PASS
}

async fn prefix_isolation(fx: Fixture) -> CaseResult {
    put_all(&fx, &["a/1", "a/2", "ab", "ab/1", "a"]).await?;
    let got = list_keys(&fx, ListRequest::prefix("a/")).await?;
    eq(
        order_or_set(&fx, got),
        sorted(&["a/1", "a/2"]),
        "a/ never returns ab",
    )?;
    PASS
}

async fn range_half_open(fx: Fixture) -> CaseResult {
    put_all(&fx, &["r/a", "r/b", "r/c", "r/d"]).await?;
    let got = list_keys(&fx, ListRequest::range("r/b", Some("r/d".into()))).await?;
    eq(
        order_or_set(&fx, got),
        sorted(&["r/b", "r/c"]),
        "[r/b, r/d)",
    )?;
    let got = list_keys(&fx, ListRequest::range("r/c", None)).await?;
    eq(order_or_set(&fx, got), sorted(&["r/c", "r/d"]), "[r/c, ..)")?;
    PASS
}

async fn paginate(fx: Fixture) -> CaseResult {
    let keys: Vec<String> = (0..25).map(|i| format!("pg/{i:03}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    put_all(&fx, &refs).await?;
    let ctx = Context::new();
    let mut req = ListRequest::prefix("pg/").with_limit(10);
    let mut pages = Vec::new();
    loop {
        let page = fx.store.list(&ctx, &req).await?;
        ensure(page.entries.len() <= 10, || {
            format!("page of {} over limit 10", page.entries.len())
        })?;
        pages.push(page.entries.len());
        match page.cursor {
            Some(c) => req.cursor = Some(c),
            None => break,
        }
        ensure(pages.len() <= 10, || "pagination does not end".into())?;
    }
    let total: usize = pages.iter().sum();
    eq(total, 25, "total over pages")?;
    if fx.caps.supports(Capability::OrderedList) {
        eq(pages, vec![10, 10, 5], "page sizes")?;
    }
    let got = list_keys(&fx, ListRequest::prefix("pg/").with_limit(7)).await?;
    eq(order_or_set(&fx, got), keys, "keys over pages")?;
    PASS
}

async fn paginate_concurrent(fx: Fixture) -> CaseResult {
    // Stable keys are the even numbers; odd ones are written between pages.
    let stable: Vec<String> = (0..60).step_by(2).map(|i| format!("cc/{i:03}")).collect();
    let refs: Vec<&str> = stable.iter().map(String::as_str).collect();
    put_all(&fx, &refs).await?;
    let ctx = Context::new();
    let mut req = ListRequest::prefix("cc/").with_limit(7);
    let mut seen = Vec::new();
    let mut odd = 1;
    loop {
        let page = fx.store.list(&ctx, &req).await?;
        seen.extend(page.entries.iter().map(|e| e.key.as_str().to_owned()));
        // Write before and after the cursor, and delete a transient key.
        for _ in 0..3 {
            let k = key(&format!("cc/{odd:03}"))?;
            fx.store
                .put(&ctx, &k, Bytes::from("new"), PutOptions::default())
                .await?;
            odd = ((odd + 17) % 60) | 1;
        }
        fx.store
            .delete(&ctx, &key("cc/transient")?, DeleteOptions::default())
            .await?;
        match page.cursor {
            Some(c) => req.cursor = Some(c),
            None => break,
        }
        ensure(seen.len() < 500, || "pagination does not end".into())?;
    }
    check_pages(&fx, &seen, &stable)?;
    PASS
}

async fn paginate_with_writers(fx: Fixture) -> CaseResult {
    // Stable keys are the multiples of 3; two tasks keep writing and
    // deleting the others while the pages are read, at the same time.
    let stable: Vec<String> = (0..90).step_by(3).map(|i| format!("tw/{i:03}")).collect();
    let refs: Vec<&str> = stable.iter().map(String::as_str).collect();
    put_all(&fx, &refs).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let (store, stop, progress) = (fx.store.clone(), stop.clone(), progress.clone());
            tokio::spawn(async move {
                let ctx = Context::new();
                let mut n = 0u32;
                let mut i = 1 + w;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                    let k = Key::new(format!("tw/{:03}", i % 90))?;
                    if n % 3 == 2 {
                        store.delete(&ctx, &k, DeleteOptions::default()).await?;
                    } else {
                        store
                            .put(&ctx, &k, Bytes::from("x"), PutOptions::default())
                            .await?;
                    }
                    n += 1;
                    progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Only keys that are not multiples of 3.
                    i += 3;
                    tokio::task::yield_now().await;
                }
                Ok::<u32, crate::Error>(n)
            })
        })
        .collect();
    // The writers are running before the first page is read.
    for _ in 0..500 {
        if progress.load(std::sync::atomic::Ordering::Relaxed) >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let ctx = Context::new();
    let mut req = ListRequest::prefix("tw/").with_limit(4);
    let mut seen = Vec::new();
    let listed = async {
        loop {
            // Let the writers run between pages on any runtime.
            tokio::task::yield_now().await;
            let page = fx.store.list(&ctx, &req).await?;
            seen.extend(page.entries.iter().map(|e| e.key.as_str().to_owned()));
            match page.cursor {
                Some(c) => req.cursor = Some(c),
                None => break,
            }
            ensure(seen.len() < 1000, || "pagination does not end".into())?;
        }
        Ok::<(), super::util::Failure>(())
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w
            .await
            .map_err(|e| format!("writer task failed: {e}"))?
            .map_err(|e| format!("concurrent writer: {e}"))?;
    }
    listed?;
    ensure(writes > 0, || "the writers wrote nothing".into())?;
    check_pages(&fx, &seen, &stable)?;
    PASS
}

/// Pages read under concurrent writes: no key twice, every stable key,
/// ascending where the store orders its list.
fn check_pages(fx: &Fixture, seen: &[String], stable: &[String]) -> Check {
    let unique: BTreeSet<&String> = seen.iter().collect();
    eq(unique.len(), seen.len(), "no key returned twice")?;
    for s in stable {
        ensure(unique.contains(s), || format!("stable key {s} skipped"))?;
    }
    if fx.caps.supports(Capability::OrderedList) {
        ensure(seen.windows(2).all(|w| w[0] < w[1]), || {
            "keys not ascending across pages".into()
        })?;
    }
    Ok(())
}

async fn keys_only(fx: Fixture) -> CaseResult {
    put_all(&fx, &["ko/1", "ko/2"]).await?;
    let page = fx
        .store
        .list(&Context::new(), &ListRequest::prefix("ko/").keys_only())
        .await?;
    eq(page.entries.len(), 2, "entries")?;
    for e in &page.entries {
        ensure(e.value.is_empty(), || {
            format!("{} has a value in a keys-only list", e.key)
        })?;
        ensure(e.revision > 0, || "keys-only entry without revision".into())?;
    }
    PASS
}

async fn empty(fx: Fixture) -> CaseResult {
    let page = fx
        .store
        .list(&Context::new(), &ListRequest::prefix("nothing-here/"))
        .await?;
    eq(page.entries.len(), 0, "entries")?;
    eq(page.cursor, None, "cursor")?;
    PASS
}

async fn bad_args(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let r = fx
        .store
        .list(&ctx, &ListRequest::prefix("x/").with_limit(0))
        .await;
    expect_err(r, |k| k == ErrorKind::InvalidArgument, "limit 0")?;
    let r = fx
        .store
        .list(&ctx, &ListRequest::range("b", Some("a".into())))
        .await;
    expect_err(r, |k| k == ErrorKind::InvalidArgument, "end before start")?;
    let r = fx.store.list(&ctx, &ListRequest::prefix("/abs")).await;
    expect_err(r, |k| k == ErrorKind::InvalidKey, "bad prefix")?;
    PASS
}

async fn carry_revisions(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let r = fx
        .store
        .put(&ctx, &key("cr/a")?, Bytes::from("1"), PutOptions::default())
        .await?;
    let page = fx.store.list(&ctx, &ListRequest::prefix("cr/")).await?;
    let e = page
        .entries
        .first()
        .ok_or_else(|| "empty list".to_string())?;
    eq(e.revision, r, "listed revision")?;
    eq(e.value.clone(), Bytes::from("1"), "listed value")?;
    PASS
}

async fn deleted_vanish(fx: Fixture) -> CaseResult {
    put_all(&fx, &["dv/1", "dv/2", "dv/3"]).await?;
    fx.store
        .delete(&Context::new(), &key("dv/2")?, DeleteOptions::default())
        .await?;
    let got = list_keys(&fx, ListRequest::prefix("dv/")).await?;
    eq(
        order_or_set(&fx, got),
        sorted(&["dv/1", "dv/3"]),
        "keys after delete",
    )?;
    PASS
}
