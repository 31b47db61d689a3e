//! Conformance cases: watch.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::util::{ensure, eq, expect_err, key, next_change, next_event, Check, PASS};
use super::{case, Case, CaseResult, Fixture};
use crate::{
    Capability, Context, DeleteOptions, ErrorKind, Key, PutOptions, WatchEvent, WatchRequest,
    WatchStream,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("watch_key_put_event", key_put),
        case("watch_key_delete_event", key_delete),
        case("watch_prefix_sees_only_prefix", prefix_only),
        case("watch_events_in_revision_order", revision_order),
        case("watch_prev_value_when_asked", prev_when_asked),
        case("watch_no_prev_value_by_default", no_prev_by_default),
        case("watch_expiry_event", expiry_event),
        case("watch_resume_from_revision_exactly_once", resume),
        case("watch_resume_compacted_is_typed", compacted),
        case("watch_slow_consumer_gets_resync", slow_consumer),
        case("watch_drop_releases", drop_releases),
        case("watch_cancel_ends_stream", cancel_ends),
    ]
}

/// Opens a watch, or checks the typed `Unsupported` when the store does
/// not declare watch (returns `None`: the case is done).
pub(crate) async fn open(
    fx: &Fixture,
    ctx: &Context,
    req: WatchRequest,
) -> Check<Option<WatchStream>> {
    let needs_resume = req.start_revision.is_some();
    let r = fx.store.watch(ctx, req).await;
    if !fx.caps.supports(Capability::Watch) {
        expect_err(
            r.map(|_| "a stream"),
            |k| {
                k == ErrorKind::Unsupported {
                    capability: Capability::Watch,
                }
            },
            "watch",
        )?;
        return Ok(None);
    }
    if needs_resume && !fx.caps.supports(Capability::WatchResume) {
        expect_err(
            r.map(|_| "a stream"),
            |k| {
                k == ErrorKind::Unsupported {
                    capability: Capability::WatchResume,
                }
            },
            "watch resume",
        )?;
        return Ok(None);
    }
    Ok(Some(r?))
}

async fn put(fx: &Fixture, k: &Key, v: &str) -> Check<u64> {
    Ok(fx
        .store
        .put(
            &Context::new(),
            k,
            Bytes::from(v.to_owned()),
            PutOptions::default(),
        )
        .await?)
}

pub(crate) fn expect_put(ev: &WatchEvent, k: &str, v: &str) -> Check<u64> {
    match ev {
        WatchEvent::Put { entry, .. } if entry.key.as_str() == k && entry.value == v.as_bytes() => {
            Ok(entry.revision)
        }
        other => Err(format!("expected put {k}={v}, got {other:?}").into()),
    }
}

async fn key_put(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("w/k")?;
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone())).await? else {
        return PASS;
    };
    let rev = put(&fx, &k, "v1").await?;
    let ev = next_change(&mut s, fx.options.event_timeout).await?;
    eq(expect_put(&ev, "w/k", "v1")?, rev, "event revision")?;
    PASS
}

async fn key_delete(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("w/d")?;
    put(&fx, &k, "x").await?;
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone())).await? else {
        return PASS;
    };
    fx.store.delete(&ctx, &k, DeleteOptions::default()).await?;
    match next_change(&mut s, fx.options.event_timeout).await? {
        WatchEvent::Delete { key, revision, .. } => {
            eq(key.as_str(), "w/d", "deleted key")?;
            ensure(revision > 0, || "delete revision 0".into())?;
        }
        other => return Err(format!("expected delete, got {other:?}").into()),
    }
    PASS
}

async fn prefix_only(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let Some(mut s) = open(&fx, &ctx, WatchRequest::prefix("wp/")).await? else {
        return PASS;
    };
    put(&fx, &key("wpx")?, "outside").await?;
    put(&fx, &key("other/1")?, "outside").await?;
    put(&fx, &key("wp/1")?, "inside").await?;
    let ev = next_change(&mut s, fx.options.event_timeout).await?;
    expect_put(&ev, "wp/1", "inside")?;
    PASS
}

async fn revision_order(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let Some(mut s) = open(&fx, &ctx, WatchRequest::prefix("wo/")).await? else {
        return PASS;
    };
    let (a, b) = (key("wo/a")?, key("wo/b")?);
    let mut want = Vec::new();
    // Stay within the watch buffer: this case checks order, not overflow.
    let burst = fx.options.watch_buffer.map_or(20, |b| (b / 2).clamp(4, 20));
    for i in 0..burst {
        let k = if i % 2 == 0 { &a } else { &b };
        want.push((k.as_str().to_owned(), put(&fx, k, &i.to_string()).await?));
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        match next_event(&mut s, fx.options.event_timeout).await? {
            WatchEvent::Put { entry, .. } => {
                got.push((entry.key.as_str().to_owned(), entry.revision))
            }
            WatchEvent::Resync { .. } => {
                return Ok(Some(
                    "the store resynced during the burst; order not checkable this run".into(),
                ))
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    for k in [&a, &b] {
        let g: Vec<u64> = got
            .iter()
            .filter(|(x, _)| x == k.as_str())
            .map(|(_, r)| *r)
            .collect();
        let w: Vec<u64> = want
            .iter()
            .filter(|(x, _)| x == k.as_str())
            .map(|(_, r)| *r)
            .collect();
        eq(g, w, &format!("revisions of {k} in order, exactly once"))?;
    }
    PASS
}

async fn prev_when_asked(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("wv/k")?;
    put(&fx, &k, "old").await?;
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone()).with_prev_value()).await? else {
        return PASS;
    };
    put(&fx, &k, "new").await?;
    match next_change(&mut s, fx.options.event_timeout).await? {
        WatchEvent::Put { entry, prev } => {
            eq(entry.value, Bytes::from("new"), "value")?;
            let p = prev.ok_or_else(|| "prev missing although asked".to_string())?;
            eq(p.value, Bytes::from("old"), "prev value")?;
        }
        other => return Err(format!("expected put, got {other:?}").into()),
    }
    PASS
}

async fn no_prev_by_default(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("wn/k")?;
    put(&fx, &k, "old").await?;
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone())).await? else {
        return PASS;
    };
    put(&fx, &k, "new").await?;
    match next_change(&mut s, fx.options.event_timeout).await? {
        WatchEvent::Put { prev, .. } => eq(prev, None, "prev without asking")?,
        other => return Err(format!("expected put, got {other:?}").into()),
    }
    PASS
}

async fn expiry_event(fx: Fixture) -> CaseResult {
    if !fx.caps.supports(Capability::Ttl) {
        return Ok(Some(
            "store declares no ttl; covered by the ttl cases".into(),
        ));
    }
    let ctx = Context::new();
    let k = key("we/k")?;
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone())).await? else {
        return PASS;
    };
    let rev = fx
        .store
        .put(
            &ctx,
            &k,
            Bytes::from("v"),
            PutOptions::default().with_ttl(fx.options.ttl),
        )
        .await?;
    expect_put(
        &next_change(&mut s, fx.options.event_timeout).await?,
        "we/k",
        "v",
    )?;
    let wait = fx.options.ttl + fx.options.expiry_grace + fx.options.event_timeout;
    match next_change(&mut s, wait).await? {
        WatchEvent::Expired { key, revision, .. } => {
            eq(key.as_str(), "we/k", "expired key")?;
            ensure(revision > rev, || {
                format!("expiry revision {revision} <= put revision {rev}")
            })?;
        }
        other => return Err(format!("expected expired, got {other:?}").into()),
    }
    PASS
}

async fn resume(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("wr/k")?;
    put(&fx, &k, "1").await?;
    let r2 = put(&fx, &k, "2").await?;
    let r3 = put(&fx, &k, "3").await?;
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone()).from_revision(r2)).await? else {
        return PASS;
    };
    eq(
        expect_put(
            &next_change(&mut s, fx.options.event_timeout).await?,
            "wr/k",
            "2",
        )?,
        r2,
        "replayed r2",
    )?;
    eq(
        expect_put(
            &next_change(&mut s, fx.options.event_timeout).await?,
            "wr/k",
            "3",
        )?,
        r3,
        "replayed r3",
    )?;
    let r4 = put(&fx, &k, "4").await?;
    eq(
        expect_put(
            &next_change(&mut s, fx.options.event_timeout).await?,
            "wr/k",
            "4",
        )?,
        r4,
        "live r4 after replay",
    )?;
    let r5 = put(&fx, &k, "5").await?;
    eq(
        expect_put(
            &next_change(&mut s, fx.options.event_timeout).await?,
            "wr/k",
            "5",
        )?,
        r5,
        "no duplicate before r5",
    )?;
    PASS
}

async fn compacted(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("wc/k")?;
    let first = put(&fx, &k, "first").await?;
    if !fx.caps.supports(Capability::Watch) || !fx.caps.supports(Capability::WatchResume) {
        open(&fx, &ctx, WatchRequest::key(k).from_revision(first)).await?;
        return PASS;
    }
    let Some(limit) = fx.options.history_limit else {
        return Ok(Some(
            "history retention of this configuration is not bounded by a count".into(),
        ));
    };
    for i in 0..limit + 10 {
        put(&fx, &k, &i.to_string()).await?;
    }
    let r = fx
        .store
        .watch(&ctx, WatchRequest::key(k).from_revision(first))
        .await;
    let r = match r {
        Ok(mut s) => match s.next().await {
            Some(Err(e)) => Err(e),
            other => return Err(format!("resume from compacted revision gave {other:?}").into()),
        },
        Err(e) => Err::<(), _>(e),
    };
    let e = expect_err(
        r,
        |k| matches!(k, ErrorKind::Compacted { .. }),
        "resume from compacted revision",
    )?;
    if let ErrorKind::Compacted { oldest } = e.kind() {
        ensure(oldest > first, || {
            format!("oldest {oldest} <= compacted start {first}")
        })?;
    }
    PASS
}

async fn slow_consumer(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("ws/k")?;
    if !fx.caps.supports(Capability::Watch) {
        open(&fx, &ctx, WatchRequest::key(k)).await?;
        return PASS;
    }
    let Some(buffer) = fx.options.watch_buffer else {
        return Ok(Some(
            "watch buffer of this configuration is too large to overflow in a test".into(),
        ));
    };
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone())).await? else {
        return PASS;
    };
    let n = buffer * 3 + 10;
    for i in 0..n {
        put(&fx, &k, &i.to_string()).await?;
    }
    let last = (n - 1).to_string();
    let mut saw_resync = false;
    let mut events = 0usize;
    loop {
        match next_event(&mut s, fx.options.event_timeout).await? {
            WatchEvent::Resync { entries, .. } => {
                saw_resync = true;
                let e = entries.iter().find(|e| e.key == k);
                let e = e.ok_or_else(|| "resync lacks the key".to_string())?;
                if e.value == last.as_bytes() {
                    break;
                }
            }
            WatchEvent::Put { entry, .. } => {
                events += 1;
                if entry.value == last.as_bytes() {
                    break;
                }
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
        ensure(events <= n, || "more events than writes".into())?;
    }
    ensure(saw_resync, || {
        format!("{n} writes into a buffer of {buffer} gave no resync")
    })?;
    // The stream goes on after a resync: the next write arrives as a put
    // (or inside another resync).
    put(&fx, &k, "after").await?;
    match next_event(&mut s, fx.options.event_timeout).await? {
        WatchEvent::Resync { entries, .. }
            if entries.iter().any(|e| e.key == k && e.value == "after") => {}
        ev => {
            expect_put(&ev, "ws/k", "after")?;
        }
    }
    PASS
}

async fn drop_releases(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let k = key("wd/k")?;
    let mut streams = Vec::new();
    for _ in 0..20 {
        match open(&fx, &ctx, WatchRequest::prefix("wd/")).await? {
            Some(s) => streams.push(s),
            None => return PASS,
        }
    }
    drop(streams);
    // Writes still work, quickly, with nobody reading the dropped streams.
    for i in 0..50 {
        put(&fx, &k, &i.to_string()).await?;
    }
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(k.clone())).await? else {
        return PASS;
    };
    put(&fx, &k, "fresh").await?;
    expect_put(
        &next_change(&mut s, fx.options.event_timeout).await?,
        "wd/k",
        "fresh",
    )?;
    drop(s);
    PASS
}

async fn cancel_ends(fx: Fixture) -> CaseResult {
    let token = crate::CancellationToken::new();
    let ctx = Context::new().with_cancel(token.clone());
    let Some(mut s) = open(&fx, &ctx, WatchRequest::prefix("wx/")).await? else {
        return PASS;
    };
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
    });
    let end = loop {
        match tokio::time::timeout(fx.options.event_timeout, s.next()).await {
            Err(_) => return Err("stream still open after cancellation".to_string().into()),
            Ok(Some(Ok(WatchEvent::Resync { .. }))) => continue,
            Ok(other) => break other,
        }
    };
    match end {
        Some(Err(e)) => eq(e.kind(), ErrorKind::Cancelled, "error kind at cancellation")?,
        other => return Err(format!("expected a Cancelled error, got {other:?}").into()),
    }
    let after = tokio::time::timeout(fx.options.event_timeout, s.next()).await;
    ensure(matches!(after, Ok(None)), || {
        "stream yielded after its final error".into()
    })?;
    PASS
}
