//! Conformance cases: the promises users rely on under load and at the
//! edges (deadlines during large writes, contended creates, watch
//! completeness, expiry events, duplicate keys, durability).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use futures::StreamExt;

use super::ttl::wait_gone;
use super::util::{ensure, eq, expect_err, expect_kind, key, next_event, Check, PASS};
use super::watch::{expect_put, open};
use super::{case, Case, CaseResult, Fixture};
use crate::{
    Batch, BatchOutcome, CancellationToken, Capability, Context, DeleteOptions, Entry, Error,
    ErrorKind, Key, ListRequest, PutOptions, RetryClass, Revision, WatchEvent, WatchRequest,
};

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case("ctx_deadline_during_large_apply", deadline_during_apply),
        case("ctx_cancel_during_large_apply", cancel_during_apply),
        case("cas_concurrent_create_one_winner", concurrent_create),
        case(
            "watch_concurrent_writers_every_write_seen",
            watch_concurrent_writers,
        ),
        case("watch_expired_follows_put_with_prev", expired_after_put),
        case("watch_no_expiry_after_ttl_cleared", no_expiry_after_clear),
        case("ttl_strictly_invisible_at_expiry", strict_invisibility),
        case("cas_update_with_ttl_expires_then_conflicts", cas_with_ttl),
        case("batch_same_key_twice_applies_in_order", same_key_twice),
        case(
            "atomic_batch_concurrent_conditional_all_or_nothing",
            atomic_contended,
        ),
        case(
            "watch_key_ignores_longer_key_with_same_prefix",
            key_watch_exact,
        ),
        case("batch_get_many_duplicate_keys", get_many_duplicates),
        case("durable_revisions_survive_reopen", revisions_survive_reopen),
    ]
}

fn unsupported(cap: Capability) -> impl Fn(ErrorKind) -> bool {
    move |k| k == ErrorKind::Unsupported { capability: cap }
}

async fn put(fx: &Fixture, k: &Key, v: &str, o: PutOptions) -> crate::Result<Revision> {
    fx.store
        .put(&Context::new(), k, Bytes::from(v.to_owned()), o)
        .await
}

/// The largest batch the store's limits allow, capped at 1000 operations
/// and 4 MiB in all, under `prefix`, with values of `size` bytes at most.
fn large_batch(fx: &Fixture, prefix: &str, size: usize) -> Check<(Batch, usize)> {
    let limits = fx.caps.limits;
    let n = limits.max_batch_ops.clamp(1, 1000);
    let size = size.min(limits.max_value_bytes).min((4 << 20) / n);
    let mut batch = Batch::new();
    for i in 0..n {
        batch = batch.put(key(&format!("{prefix}{i:04}"))?, vec![b'x'; size]);
    }
    Ok((batch, n))
}

/// Applies the largest batch the store takes under the context `make`
/// returns: a store may refuse a batch within its declared limits as too
/// large in all (Consul's transaction size) with `InvalidArgument`
/// before any I/O; the values then shrink by half and it tries again.
async fn apply_large(
    fx: &Fixture,
    prefix: &str,
    make: impl Fn() -> (Context, Option<tokio::task::JoinHandle<()>>),
) -> Check<(usize, crate::Result<Vec<crate::Result<BatchOutcome>>>)> {
    let mut size = usize::MAX;
    loop {
        let (batch, n) = large_batch(fx, prefix, size)?;
        let actual = batch.ops.first().map_or(0, |op| match op {
            crate::BatchOp::Put { value, .. } => value.len(),
            crate::BatchOp::Delete { .. } => 0,
        });
        let (ctx, helper) = make();
        let r = fx.store.apply(&ctx, batch).await;
        if let Some(h) = helper {
            h.await.map_err(|e| format!("helper task failed: {e}"))?;
        }
        match r {
            Err(e) if e.kind() == ErrorKind::InvalidArgument && actual > 1 => {
                eq(
                    listed(fx, prefix).await?.len(),
                    0,
                    "keys written by a refused batch",
                )?;
                size = actual / 2;
            }
            r => return Ok((n, r)),
        }
    }
}

/// The keys under `prefix` (first page).
async fn listed(fx: &Fixture, prefix: &str) -> Check<Vec<Entry>> {
    let page = fx
        .store
        .list(&Context::new(), &ListRequest::prefix(prefix).keys_only())
        .await?;
    Ok(page.entries)
}

/// Checks the result of a large apply interrupted by `kind` (a deadline
/// or a cancellation): success, or `kind` with an outcome-unknown or safe
/// retry class (or never-retry: refused before it started), and when it
/// says nothing ran, nothing of the batch shows up afterwards.
async fn check_interrupted_apply(
    fx: &Fixture,
    prefix: &str,
    n: usize,
    r: crate::Result<Vec<crate::Result<BatchOutcome>>>,
    kind: ErrorKind,
) -> CaseResult {
    match r {
        Ok(out) => {
            eq(out.len(), n, "outcomes of the batch")?;
            ensure(out.iter().all(|o| o.is_ok()), || {
                "an operation of the completed batch failed".into()
            })?;
            let got = listed(fx, prefix).await?;
            eq(got.len(), n.min(crate::DEFAULT_PAGE_SIZE), "keys written")?;
        }
        Err(e) => {
            eq(e.kind(), kind, "error kind of the interrupted apply")?;
            match e.retry_class() {
                RetryClass::OutcomeUnknown => {}
                RetryClass::Safe | RetryClass::Never => {
                    // Nothing ran: nothing may be committed later either.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let got = listed(fx, prefix).await?;
                    ensure(got.is_empty(), || {
                        format!(
                            "apply failed with {e} ({:?}: nothing ran) but {} keys were written",
                            e.retry_class(),
                            got.len()
                        )
                    })?;
                }
            }
        }
    }
    PASS
}

async fn deadline_during_apply(fx: Fixture) -> CaseResult {
    let (n, r) = apply_large(&fx, "dl/", || {
        (Context::new().with_timeout(Duration::from_millis(1)), None)
    })
    .await?;
    check_interrupted_apply(&fx, "dl/", n, r, ErrorKind::DeadlineExceeded).await
}

async fn cancel_during_apply(fx: Fixture) -> CaseResult {
    let (n, r) = apply_large(&fx, "cl/", || {
        let token = CancellationToken::new();
        let ctx = Context::new().with_cancel(token.clone());
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            token.cancel();
        });
        (ctx, Some(canceller))
    })
    .await?;
    check_interrupted_apply(&fx, "cl/", n, r, ErrorKind::Cancelled).await
}

async fn concurrent_create(fx: Fixture) -> CaseResult {
    let k = key("cc/k")?;
    if !fx.caps.supports(Capability::Cas) {
        expect_err(
            put(&fx, &k, "v", PutOptions::create()).await,
            unsupported(Capability::Cas),
            "create without cas",
        )?;
        return PASS;
    }
    const N: usize = 16;
    let tasks = (0..N).map(|i| {
        let store = fx.store.clone();
        let k = k.clone();
        tokio::spawn(async move {
            let v = Bytes::from(format!("writer {i}"));
            store
                .put(&Context::new(), &k, v.clone(), PutOptions::create())
                .await
                .map(|r| (r, v))
        })
    });
    let mut winners = Vec::new();
    for (i, t) in join_all(tasks).await.into_iter().enumerate() {
        match t.map_err(|e| format!("writer task {i} failed: {e}"))? {
            Ok(w) => winners.push(w),
            Err(e) => eq(
                e.kind(),
                ErrorKind::AlreadyExists,
                &format!("losing create {i}"),
            )?,
        }
    }
    eq(winners.len(), 1, "successful creates of one key")?;
    let (rev, value) = winners.pop().ok_or_else(|| "no winner".to_string())?;
    let e = fx
        .store
        .get(&Context::new(), &k)
        .await?
        .ok_or_else(|| "key absent after a successful create".to_string())?;
    eq(e.value, value, "stored value is the winner's")?;
    eq(e.revision, rev, "stored revision is the winner's")?;
    PASS
}

/// One acknowledged put of the concurrent-writers case.
type Acked = (String, Revision);

async fn writer(fx: Fixture, id: usize) -> Check<Vec<Acked>> {
    let mut acked = Vec::new();
    for i in 0..100usize {
        let k = key(&format!("cw/{:02}", (id * 7 + i * 3) % 20))?;
        if i % 4 == 3 {
            fx.store
                .delete(&Context::new(), &k, DeleteOptions::default())
                .await?;
        } else {
            let r = put(&fx, &k, &format!("{id}-{i}"), PutOptions::default()).await?;
            acked.push((k.as_str().to_owned(), r));
        }
    }
    Ok(acked)
}

type State = BTreeMap<String, (Bytes, Revision)>;

/// What a watcher knows: the state rebuilt from events, every put seen
/// and the highest resync revision.
#[derive(Default)]
struct Seen {
    state: State,
    puts: std::collections::HashSet<Acked>,
    resync: Option<Revision>,
    /// Per key, the last revision seen (to check order).
    last: BTreeMap<String, Revision>,
}

impl Seen {
    fn apply(&mut self, ev: WatchEvent) -> Check {
        match ev {
            WatchEvent::Put { entry, .. } => {
                let k = entry.key.as_str().to_owned();
                self.check_order(&k, entry.revision)?;
                self.puts.insert((k.clone(), entry.revision));
                self.state.insert(k, (entry.value, entry.revision));
            }
            WatchEvent::Delete { key, revision, .. }
            | WatchEvent::Expired { key, revision, .. } => {
                self.check_order(key.as_str(), revision)?;
                self.state.remove(key.as_str());
            }
            WatchEvent::Resync { entries, revision } => {
                self.resync = Some(self.resync.map_or(revision, |r| r.max(revision)));
                self.last.clear();
                self.state = entries
                    .into_iter()
                    .map(|e| {
                        self.last.insert(e.key.as_str().to_owned(), e.revision);
                        (e.key.as_str().to_owned(), (e.value, e.revision))
                    })
                    .collect();
            }
        }
        Ok(())
    }

    fn check_order(&mut self, k: &str, rev: Revision) -> Check {
        if let Some(prev) = self.last.insert(k.to_owned(), rev) {
            ensure(rev > prev, || {
                format!("event of {k} at revision {rev} after one at {prev}")
            })?;
        }
        Ok(())
    }

    /// Whether an acknowledged put arrived as an event or lies at or
    /// before a resync.
    fn covers(&self, (k, r): &Acked) -> bool {
        self.puts.contains(&(k.clone(), *r)) || self.resync.is_some_and(|s| s >= *r)
    }
}

async fn watch_concurrent_writers(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let Some(mut s) = open(&fx, &ctx, WatchRequest::prefix("cw/")).await? else {
        return PASS;
    };
    let writers = join_all((0..4).map(|id| tokio::spawn(writer(fx.clone(), id))));
    tokio::pin!(writers);
    let mut seen = Seen::default();
    let results = loop {
        tokio::select! {
            done = &mut writers => break done,
            ev = next_event(&mut s, fx.options.event_timeout * 6) => seen.apply(ev?)?,
        }
    };
    let mut acked = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        acked.extend(r.map_err(|e| format!("writer task {i} failed: {e}"))??);
    }
    let want: State = fx
        .store
        .list(&ctx, &ListRequest::prefix("cw/"))
        .await?
        .entries
        .into_iter()
        .map(|e| (e.key.as_str().to_owned(), (e.value, e.revision)))
        .collect();
    // Writers are done: drain until the watcher caught up, bounded.
    let deadline = tokio::time::Instant::now() + fx.options.event_timeout;
    while seen.state != want || !acked.iter().all(|a| seen.covers(a)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            let missing: Vec<_> = acked.iter().filter(|a| !seen.covers(a)).take(5).collect();
            let diff: Vec<_> = want
                .keys()
                .chain(seen.state.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| want.get(*k) != seen.state.get(*k))
                .map(|k| {
                    let rev = |m: &State| m.get(k).map(|(_, r)| *r);
                    format!("{k}: watcher {:?}, list {:?}", rev(&seen.state), rev(&want))
                })
                .collect();
            return Err(format!(
                "watcher never caught up within {:?}: keys differing (revisions) {diff:?}; \
                 acknowledged puts neither seen nor resynced (first 5): {missing:?}",
                fx.options.event_timeout,
            )
            .into());
        }
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(ev)) => seen.apply(ev.map_err(|e| format!("watch stream error: {e}"))?)?,
            Ok(None) => return Err("watch stream ended".to_string().into()),
            Err(_) => continue,
        }
    }
    ensure(!acked.is_empty(), || "no write acknowledged".into())?;
    PASS
}

/// Checks the typed `Unsupported` of a TTL put where the store declares
/// no TTL (returns `true`: the case is done).
async fn no_ttl(fx: &Fixture, k: &Key) -> Check<bool> {
    if fx.caps.supports(Capability::Ttl) {
        return Ok(false);
    }
    expect_err(
        put(fx, k, "v", PutOptions::default().with_ttl(fx.options.ttl)).await,
        unsupported(Capability::Ttl),
        "put with ttl",
    )?;
    Ok(true)
}

async fn expired_after_put(fx: Fixture) -> CaseResult {
    let k = key("xe/k")?;
    if no_ttl(&fx, &k).await? {
        return PASS;
    }
    let ctx = Context::new();
    let req = WatchRequest::key(k.clone()).with_prev_value();
    let Some(mut s) = open(&fx, &ctx, req).await? else {
        return PASS;
    };
    let rev = put(
        &fx,
        &k,
        "short",
        PutOptions::default().with_ttl(fx.options.ttl),
    )
    .await?;
    let wait = fx.options.ttl + fx.options.expiry_grace + fx.options.event_timeout;
    let resynced = || {
        Ok(Some(
            "the store resynced; event order not checkable this run".into(),
        ))
    };
    match next_event(&mut s, fx.options.event_timeout).await? {
        WatchEvent::Resync { .. } => return resynced(),
        ev => eq(expect_put(&ev, "xe/k", "short")?, rev, "put event revision")?,
    }
    match next_event(&mut s, wait).await? {
        WatchEvent::Expired {
            key,
            revision,
            prev,
        } => {
            eq(key.as_str(), "xe/k", "expired key")?;
            ensure(revision > rev, || {
                format!("expiry revision {revision} <= put revision {rev}")
            })?;
            if fx.options.expired_prev {
                let p =
                    prev.ok_or_else(|| "expired event lacks prev although asked".to_string())?;
                eq(
                    p.value,
                    Bytes::from("short"),
                    "prev value of the expired entry",
                )?;
                eq(p.revision, rev, "prev revision of the expired entry")?;
            } else {
                // Declared: this backend cannot keep the value past its
                // expiry.
                ensure(prev.is_none(), || {
                    format!("expired_prev is off but the event carries {prev:?}")
                })?;
            }
        }
        WatchEvent::Resync { .. } => return resynced(),
        other => return Err(format!("expected expired after the put, got {other:?}").into()),
    }
    eq(
        fx.store.get(&ctx, &k).await?,
        None,
        "key after its expired event",
    )?;
    PASS
}

async fn no_expiry_after_clear(fx: Fixture) -> CaseResult {
    let (kept, end) = (key("xc/kept")?, key("xc/end")?);
    if no_ttl(&fx, &kept).await? {
        return PASS;
    }
    let ctx = Context::new();
    let Some(mut s) = open(&fx, &ctx, WatchRequest::prefix("xc/")).await? else {
        return PASS;
    };
    let ttl = PutOptions::default().with_ttl(fx.options.ttl);
    put(&fx, &kept, "ttl", ttl).await?;
    put(&fx, &kept, "forever", PutOptions::default()).await?;
    // Past the first TTL and its grace, a sentinel put marks the end.
    tokio::time::sleep(fx.options.ttl + fx.options.expiry_grace).await;
    let end_rev = put(&fx, &end, "end", PutOptions::default()).await?;
    let deadline = tokio::time::Instant::now() + fx.options.event_timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(&mut s, left).await? {
            WatchEvent::Put { entry, .. } if entry.key == end && entry.revision == end_rev => break,
            WatchEvent::Resync { entries, .. }
                if entries
                    .iter()
                    .any(|e| e.key == end && e.revision == end_rev) =>
            {
                ensure(entries.iter().any(|e| e.key == kept), || {
                    "resync lacks the key whose ttl was cleared".into()
                })?;
                break;
            }
            WatchEvent::Expired { key, .. } | WatchEvent::Delete { key, .. } if key == kept => {
                return Err(
                    format!("{kept} ended although a put without ttl cleared its ttl").into(),
                )
            }
            _ => {}
        }
    }
    let e = fx
        .store
        .get(&ctx, &kept)
        .await?
        .ok_or_else(|| format!("{kept} gone although its ttl was cleared"))?;
    eq(
        e.value,
        Bytes::from("forever"),
        "value after clearing the ttl",
    )?;
    PASS
}

async fn strict_invisibility(fx: Fixture) -> CaseResult {
    if !fx.options.expiry_grace.is_zero() {
        return Ok(Some(format!(
            "the store does not promise invisibility at expiry (expiry grace {:?})",
            fx.options.expiry_grace
        )));
    }
    let k = key("si/k")?;
    let ttl = PutOptions::default().with_ttl(fx.options.ttl);
    if no_ttl(&fx, &k).await? {
        return PASS;
    }
    let ctx = Context::new();
    put(&fx, &k, "v", ttl).await?;
    let returned = tokio::time::Instant::now();
    ensure(fx.store.get(&ctx, &k).await?.is_some(), || {
        "absent right after the put".into()
    })?;
    // The expiry is at most one TTL after the put returned.
    tokio::time::sleep_until(returned + fx.options.ttl).await;
    eq(fx.store.get(&ctx, &k).await?, None, "get at expiry")?;
    let many = fx.store.get_many(&ctx, std::slice::from_ref(&k)).await?;
    eq(many.len(), 1, "get_many results")?;
    for r in many {
        eq(r?, None, "get_many at expiry")?;
    }
    eq(listed(&fx, "si/").await?.len(), 0, "listed at expiry")?;
    PASS
}

async fn cas_with_ttl(fx: Fixture) -> CaseResult {
    let k = key("ct/k")?;
    let r1 = if fx.caps.supports(Capability::Cas) {
        put(&fx, &k, "plain", PutOptions::default()).await?
    } else {
        put(&fx, &k, "plain", PutOptions::default()).await?;
        expect_err(
            put(&fx, &k, "v", PutOptions::update(1)).await,
            unsupported(Capability::Cas),
            "update without cas",
        )?;
        return PASS;
    };
    let with_ttl = PutOptions::update(r1).with_ttl(fx.options.ttl);
    if !fx.caps.supports(Capability::Ttl) {
        expect_err(
            put(&fx, &k, "v", with_ttl).await,
            unsupported(Capability::Ttl),
            "update with ttl without ttl support",
        )?;
        return PASS;
    }
    let since = tokio::time::Instant::now();
    let r2 = put(&fx, &k, "leased", with_ttl).await?;
    ensure(r2 > r1, || format!("revision {r2} after {r1}"))?;
    let e = fx
        .store
        .get(&Context::new(), &k)
        .await?
        .ok_or_else(|| "absent right after the update with ttl".to_string())?;
    ensure(e.expires_at.is_some(), || {
        "the update with ttl set no expiry".into()
    })?;
    wait_gone(&fx, &k, since).await?;
    expect_kind(
        put(&fx, &k, "late", PutOptions::update(r2)).await,
        ErrorKind::Conflict { current: None },
        "update against the revision of an expired entry",
    )?;
    expect_kind(
        fx.store
            .delete(&Context::new(), &k, DeleteOptions::if_revision(r2))
            .await,
        ErrorKind::Conflict { current: None },
        "delete against the revision of an expired entry",
    )?;
    put(&fx, &k, "again", PutOptions::create()).await?;
    PASS
}

async fn same_key_twice(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let (k, j) = (key("sk/k")?, key("sk/j")?);
    let batch = Batch::new()
        .put(k.clone(), "first")
        .put(j.clone(), "temp")
        .put(k.clone(), "second")
        .delete(j.clone());
    let out = fx.store.apply(&ctx, batch).await?;
    let out = out.into_iter().collect::<Result<Vec<_>, Error>>()?;
    let (r1, r2) = match out.as_slice() {
        [BatchOutcome::Put(r1), BatchOutcome::Put(_), BatchOutcome::Put(r2), BatchOutcome::Deleted(d)] =>
        {
            eq(*d, true, "delete of the key put earlier in the batch")?;
            (*r1, *r2)
        }
        other => return Err(format!("outcomes {other:?}").into()),
    };
    // An atomic batch may commit at one revision (a Consul transaction):
    // its puts of one key may share it; elsewhere each put is a change.
    if fx.caps.supports(Capability::AtomicBatch) {
        ensure(r2 >= r1, || {
            format!("second put of a key in an atomic batch has revision {r2}, first {r1}")
        })?;
    } else {
        ensure(r2 > r1, || {
            format!("second put of a key in a batch has revision {r2}, first {r1}")
        })?;
    }
    let e = fx
        .store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| "key put twice in a batch is absent".to_string())?;
    eq(
        e.value,
        Bytes::from("second"),
        "the last put of the batch wins",
    )?;
    eq(e.revision, r2, "revision of the last put")?;
    eq(
        fx.store.get(&ctx, &j).await?,
        None,
        "put then delete in a batch",
    )?;
    PASS
}

async fn atomic_contended(fx: Fixture) -> CaseResult {
    if !fx.caps.supports(Capability::AtomicBatch) {
        return Ok(Some(
            "store declares no atomic batch (per-operation outcomes are covered by the batch cases)"
                .into(),
        ));
    }
    if !fx.caps.supports(Capability::Cas) {
        return Ok(Some("conditional batches need compare-and-swap".into()));
    }
    // get_many and list are not snapshots, so readers during the writes
    // may see a mix; what the contract promises is that each batch is all
    // or nothing, so the pair always moves together.
    let (a, b) = (key("ab/a")?, key("ab/b")?);
    let ctx = Context::new();
    fx.store
        .apply(&ctx, Batch::new().put(a.clone(), "0").put(b.clone(), "0"))
        .await?;
    let tasks = (0..4).map(|_| {
        let fx = fx.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let ctx = Context::new();
            let mut wins = 0u64;
            for _ in 0..25 {
                let got = fx.store.get_many(&ctx, &[a.clone(), b.clone()]).await?;
                let mut it = got.into_iter();
                let (Some(ea), Some(eb)) = (it.next(), it.next()) else {
                    return Err("get_many returned fewer than 2 results".to_string().into());
                };
                let (Some(ea), Some(eb)) = (ea?, eb?) else {
                    return Err("a key of the pair vanished".to_string().into());
                };
                let next = format!("{}+", String::from_utf8_lossy(&ea.value));
                let batch = Batch::new()
                    .put_with(a.clone(), next.clone(), PutOptions::update(ea.revision))
                    .put_with(b.clone(), next, PutOptions::update(eb.revision));
                match fx.store.apply(&ctx, batch).await {
                    Ok(out) => {
                        for o in out {
                            o?;
                        }
                        wins += 1;
                    }
                    Err(e) if e.is_precondition_failed() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Check::Ok(wins)
        })
    });
    let mut wins = 0;
    for (i, t) in join_all(tasks).await.into_iter().enumerate() {
        wins += t.map_err(|e| format!("writer task {i} failed: {e}"))??;
    }
    let got = fx.store.get_many(&ctx, &[a.clone(), b.clone()]).await?;
    let vals = got
        .into_iter()
        .map(|r| r.map(|e| e.map(|e| e.value)))
        .collect::<Result<Vec<_>, _>>()?;
    let want = Some(Bytes::from(format!("0{}", "+".repeat(wins as usize))));
    eq(
        vals,
        vec![want.clone(), want],
        "both keys after every successful batch",
    )?;
    ensure(wins > 0, || "no conditional batch succeeded".into())?;
    PASS
}

async fn key_watch_exact(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let (a, ab) = (key("wk/a")?, key("wk/ab")?);
    let Some(mut s) = open(&fx, &ctx, WatchRequest::key(a.clone())).await? else {
        return PASS;
    };
    for round in ["1", "2"] {
        put(&fx, &ab, round, PutOptions::default()).await?;
        let rev = put(&fx, &a, round, PutOptions::default()).await?;
        let ev = loop {
            match next_event(&mut s, fx.options.event_timeout).await? {
                WatchEvent::Resync { entries, .. } => {
                    ensure(entries.iter().all(|e| e.key == a), || {
                        format!("key watch resync holds other keys: {entries:?}")
                    })?;
                }
                ev => break ev,
            }
        };
        eq(expect_put(&ev, "wk/a", round)?, rev, "event revision")?;
    }
    PASS
}

async fn get_many_duplicates(fx: Fixture) -> CaseResult {
    let ctx = Context::new();
    let (a, b, none) = (key("gd/a")?, key("gd/b")?, key("gd/none")?);
    put(&fx, &a, "A", PutOptions::default()).await?;
    put(&fx, &b, "B", PutOptions::default()).await?;
    let keys = [a.clone(), b.clone(), a.clone(), none.clone(), a, none, b];
    let out = fx.store.get_many(&ctx, &keys).await?;
    let vals = out
        .into_iter()
        .map(|r| r.map(|e| e.map(|e| (e.key.as_str().to_owned(), e.value))))
        .collect::<Result<Vec<_>, _>>()?;
    let e = |k: &str, v: &'static str| Some((k.to_owned(), Bytes::from(v)));
    eq(
        vals,
        vec![
            e("gd/a", "A"),
            e("gd/b", "B"),
            e("gd/a", "A"),
            None,
            e("gd/a", "A"),
            None,
            e("gd/b", "B"),
        ],
        "one result per requested key, in order",
    )?;
    PASS
}

async fn revisions_survive_reopen(fx: Fixture) -> CaseResult {
    if fx.reopen_hook.is_none() {
        return Ok(Some("no reopen hook (not a durable backend)".into()));
    }
    let (a, b, gone) = (key("rv/a")?, key("rv/b")?, key("rv/gone")?);
    let ra1 = put(&fx, &a, "a1", PutOptions::default()).await?;
    let ra2 = put(&fx, &a, "a2", PutOptions::default()).await?;
    let rb = put(&fx, &b, "b", PutOptions::default()).await?;
    put(&fx, &gone, "x", PutOptions::default()).await?;
    fx.store
        .delete(&Context::new(), &gone, DeleteOptions::default())
        .await?;
    let before_a = fx.store.get(&Context::new(), &a).await?;
    let fx = fx
        .reopen()
        .await?
        .ok_or_else(|| "reopen hook vanished".to_string())?;
    let ctx = Context::new();
    let ea = fx
        .store
        .get(&ctx, &a)
        .await?
        .ok_or_else(|| "a absent after reopen".to_string())?;
    eq(Some(&ea), before_a.as_ref(), "a after reopen")?;
    eq(ea.revision, ra2, "revision of a after reopen")?;
    eq(ea.create_revision, ra1, "create revision of a after reopen")?;
    let eb = fx
        .store
        .get(&ctx, &b)
        .await?
        .ok_or_else(|| "b absent after reopen".to_string())?;
    eq(eb.revision, rb, "revision of b after reopen")?;
    eq(
        fx.store.get(&ctx, &gone).await?,
        None,
        "deleted key after reopen",
    )?;
    let ra3 = put(&fx, &a, "a3", PutOptions::default()).await?;
    ensure(ra3 > ra2, || {
        format!("revision of a went from {ra2} to {ra3} across a reopen")
    })?;
    let rc = put(&fx, &key("rv/c")?, "c", PutOptions::default()).await?;
    ensure(rc > 0, || "revision 0 after reopen".into())?;
    if fx.caps.supports(Capability::Cas) {
        expect_kind(
            put(&fx, &a, "stale", PutOptions::update(ra2)).await,
            ErrorKind::Conflict { current: Some(ra3) },
            "update against a pre-reopen revision",
        )?;
    }
    PASS
}
