//! [`MemoryStore`], the in-memory reference backend.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capability::{Capabilities, Limits};
use crate::context::{Context, Scope};
use crate::entry::{
    Batch, BatchOp, BatchOutcome, DeleteOptions, Entry, KeyRange, ListPage, ListRequest,
    PutOptions, Revision,
};
use crate::error::{Error, ErrorKind, Op, Result};
use crate::key::Key;
use crate::lock::{LocalLocks, LockGuard, LockOptions, MemoryTokens};
use crate::store::KvStore;
use crate::watch::{
    history_scan_limit, ChangeFeed, ChangeSource, HistoryChunk, WatchEvent, WatchRequest,
    WatchStream,
};

const NAME: &str = "memory";

/// Settings of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Size limits.
    pub limits: Limits,
    /// How many past changes are kept for watch resume; older start
    /// revisions get [`ErrorKind::Compacted`].
    pub history_limit: usize,
    /// How many events a slow watcher may fall behind before it gets a
    /// resync instead.
    pub watch_buffer: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            history_limit: 10_000,
            watch_buffer: 1024,
        }
    }
}

impl MemoryConfig {
    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the history kept for watch resume.
    pub fn with_history_limit(mut self, n: usize) -> Self {
        self.history_limit = n;
        self
    }

    /// Sets the per-watcher buffer.
    pub fn with_watch_buffer(mut self, n: usize) -> Self {
        self.watch_buffer = n;
        self
    }
}

/// An ordered, revisioned in-memory store with every capability native:
/// compare-and-swap, TTL (expired entries are invisible at once and an
/// expiry produces a watch event), watch with bounded history for resume.
///
/// Use it in your own unit tests, or as the reference the conformance
/// suite is checked against. Clones share the same data.
///
/// Expiry events come from a reaper task spawned on the Tokio runtime the
/// store is created in; without a runtime, expired entries are still
/// invisible and are removed (with their event) on the next write.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    feed: ChangeFeed,
    config: MemoryConfig,
    wakeup: Arc<Notify>,
    locks: Arc<LocalLocks>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the reaper notice the store is gone.
        self.wakeup.notify_one();
    }
}

#[derive(Debug, Clone)]
struct Stored {
    value: Bytes,
    revision: Revision,
    create_revision: Revision,
    expires: Option<(Instant, SystemTime)>,
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Key, Stored>,
    revision: Revision,
    history: VecDeque<WatchEvent>,
    /// The highest revision dropped from `history`.
    compacted: Revision,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with default settings.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// An empty store with `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        let wakeup = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            feed: ChangeFeed::new(config.watch_buffer),
            config,
            wakeup: wakeup.clone(),
            locks: Arc::new(LocalLocks::new(NAME, Arc::new(MemoryTokens::default()))),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(reaper(Arc::downgrade(&inner), wakeup));
        }
        Self { inner }
    }

    /// The current (latest) revision of the store.
    pub fn revision(&self) -> Revision {
        self.inner.lock().revision
    }

    fn scope<'a>(&self, op: Op, key: Option<&'a str>) -> Scope<'a> {
        Scope {
            backend: NAME,
            op,
            key,
            timeout: None,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path leaves the state half-updated across a panic point,
        // so a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, st: &mut State, event: WatchEvent) {
        st.history.push_back(event.clone());
        while st.history.len() > self.config.history_limit {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.revision();
            }
        }
        self.feed.publish(event);
    }

    /// Removes `key` if it has expired, emitting its expiry event.
    fn reap_key(&self, st: &mut State, key: &Key, now: Instant) {
        let expired = st
            .map
            .get(key)
            .and_then(|s| s.expires)
            .is_some_and(|(at, _)| at <= now);
        if expired {
            if let Some(old) = st.map.remove(key) {
                st.revision += 1;
                let revision = st.revision;
                let prev = Some(to_entry(key, &old));
                self.record(
                    st,
                    WatchEvent::Expired {
                        key: key.clone(),
                        revision,
                        prev,
                    },
                );
            }
        }
    }

    fn reap_all(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let expired: Vec<Key> = st
            .map
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|(at, _)| at <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            self.reap_key(&mut st, &k, now);
        }
        st.map.values().filter_map(|s| s.expires.map(|e| e.0)).min()
    }

    fn put_locked(
        &self,
        st: &mut State,
        key: &Key,
        value: Bytes,
        options: &PutOptions,
        now: Instant,
    ) -> Result<Revision> {
        self.reap_key(st, key, now);
        let prev = st.map.get(key).cloned();
        options.check_condition(prev.as_ref().map(|p| p.revision))?;
        st.revision += 1;
        let revision = st.revision;
        let expires = options.ttl.map(|ttl| (now + ttl, SystemTime::now() + ttl));
        let stored = Stored {
            value,
            revision,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            expires,
        };
        let entry = to_entry(key, &stored);
        st.map.insert(key.clone(), stored);
        let prev = prev.map(|p| to_entry(key, &p));
        self.record(st, WatchEvent::Put { entry, prev });
        if expires.is_some() {
            self.wakeup.notify_one();
        }
        Ok(revision)
    }

    fn delete_locked(
        &self,
        st: &mut State,
        key: &Key,
        options: &DeleteOptions,
        now: Instant,
    ) -> Result<bool> {
        self.reap_key(st, key, now);
        let current = st.map.get(key).map(|s| s.revision);
        options.check_condition(current)?;
        let Some(old) = st.map.remove(key) else {
            return Ok(false);
        };
        st.revision += 1;
        let revision = st.revision;
        let prev = Some(to_entry(key, &old));
        self.record(
            st,
            WatchEvent::Delete {
                key: key.clone(),
                revision,
                prev,
            },
        );
        Ok(true)
    }
}

fn to_entry(key: &Key, s: &Stored) -> Entry {
    Entry::new(key.clone(), s.value.clone(), s.revision, s.create_revision)
        .with_expires_at(s.expires.map(|e| e.1))
}

fn live(s: &Stored, now: Instant) -> bool {
    s.expires.is_none_or(|(at, _)| at > now)
}

fn scan(st: &State, range: &KeyRange, lower: Bound<&str>, now: Instant) -> Vec<Entry> {
    st.map
        .range::<str, _>((lower, Bound::Unbounded))
        .take_while(|(k, _)| match range.end_bytes() {
            Some(end) => k.as_str().as_bytes() < end.as_slice(),
            None => true,
        })
        .filter(|(k, s)| range.contains(k.as_str()) && live(s, now))
        .map(|(k, s)| to_entry(k, s))
        .collect()
}

async fn reaper(inner: Weak<Inner>, wakeup: Arc<Notify>) {
    loop {
        let next = match inner.upgrade() {
            Some(inner) => inner.reap_all(Instant::now()),
            None => return,
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = wakeup.notified() => {}
        }
    }
}

#[async_trait]
impl ChangeSource for Inner {
    async fn snapshot(&self, range: &KeyRange) -> Result<(Vec<Entry>, Revision)> {
        let st = self.lock();
        let entries = scan(&st, range, Bound::Included(range.start()), Instant::now());
        Ok((entries, st.revision))
    }

    async fn history(
        &self,
        from: Revision,
        range: &KeyRange,
        max_events: usize,
    ) -> Result<HistoryChunk> {
        let st = self.lock();
        if from <= st.compacted {
            return Err(Error::new(ErrorKind::Compacted {
                oldest: st.compacted + 1,
            })
            .with_detail(format!(
                "the change history starts at revision {}",
                st.compacted + 1
            )));
        }
        let scan_limit = history_scan_limit(max_events);
        // The history is in revision order.
        let start = st.history.partition_point(|e| e.revision() < from);
        let mut events = Vec::new();
        let mut scanned_through = from.saturating_sub(1);
        for (scanned, ev) in st.history.range(start..).enumerate() {
            if events.len() >= max_events || scanned >= scan_limit {
                return Ok(HistoryChunk::new(events, scanned_through, true));
            }
            scanned_through = ev.revision();
            if ev.key().is_some_and(|k| range.contains(k.as_str())) {
                events.push(ev.clone());
            }
        }
        Ok(HistoryChunk::new(events, scanned_through, false))
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_native().with_limits(self.inner.config.limits)
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        let scope = self.scope(Op::Get, Some(key.as_str()));
        self.inner.config.limits.check_key(key)?;
        ctx.run(scope, async {
            let st = self.inner.lock();
            Ok(st
                .map
                .get(key)
                .filter(|s| live(s, Instant::now()))
                .map(|s| to_entry(key, s).with_staleness(ctx.fresh_read_staleness())))
        })
        .await
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        let scope = self.scope(Op::Put, Some(key.as_str()));
        self.inner.config.limits.check_put(key, &value)?;
        options.validate()?;
        ctx.run(scope, async {
            let mut st = self.inner.lock();
            self.inner
                .put_locked(&mut st, key, value, &options, Instant::now())
        })
        .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        let scope = self.scope(Op::Delete, Some(key.as_str()));
        self.inner.config.limits.check_key(key)?;
        ctx.run(scope, async {
            let mut st = self.inner.lock();
            self.inner
                .delete_locked(&mut st, key, &options, Instant::now())
        })
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        let scope = self.scope(Op::List, Some(request.range.start()));
        request.validate()?;
        ctx.run(scope, async {
            let st = self.inner.lock();
            let now = Instant::now();
            let limit = request.page_size();
            let mut entries: Vec<Entry> = scan(&st, &request.range, request.lower_bound(), now)
                .into_iter()
                .take(limit + 1)
                .collect();
            if request.keys_only {
                for e in &mut entries {
                    e.value = Bytes::new();
                }
            }
            Ok(ListPage::from_sorted(entries, Some(limit)))
        })
        .await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        let source: Arc<dyn ChangeSource> = self.inner.clone();
        self.inner.feed.watch(NAME, ctx, request, source).await
    }

    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        self.inner.config.limits.check_key(key)?;
        crate::lock::acquire(self.inner.locks.clone(), ctx, key, options).await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.inner.config.limits.check_keys(keys)?;
        ctx.run(self.scope(Op::GetMany, None), async {
            let st = self.inner.lock();
            let now = Instant::now();
            Ok(keys
                .iter()
                .map(|k| {
                    Ok(st
                        .map
                        .get(k)
                        .filter(|s| live(s, now))
                        .map(|s| to_entry(k, s).with_staleness(ctx.fresh_read_staleness())))
                })
                .collect())
        })
        .await
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        batch.validate(&self.inner.config.limits)?;
        ctx.run(self.scope(Op::Apply, None), async {
            let mut st = self.inner.lock();
            let now = Instant::now();
            check_batch_conditions(&st, &batch, now)?;
            let mut out = Vec::with_capacity(batch.len());
            for op in batch.ops {
                out.push(Ok(match op {
                    BatchOp::Put {
                        key,
                        value,
                        options,
                    } => BatchOutcome::Put(
                        self.inner.put_locked(&mut st, &key, value, &options, now)?,
                    ),
                    BatchOp::Delete { key, options } => BatchOutcome::Deleted(
                        self.inner.delete_locked(&mut st, &key, &options, now)?,
                    ),
                }));
            }
            Ok(out)
        })
        .await
    }
}

/// Checks every condition of a batch in order, as if the earlier
/// operations had been applied, so that the batch is all or nothing.
fn check_batch_conditions(st: &State, batch: &Batch, now: Instant) -> Result<()> {
    // The revision each touched key would have: None = absent.
    let mut overlay: HashMap<&Key, Option<Revision>> = HashMap::new();
    let mut next = st.revision;
    for op in &batch.ops {
        let key = op.key();
        let current = match overlay.get(key) {
            Some(r) => *r,
            None => st.map.get(key).filter(|s| live(s, now)).map(|s| s.revision),
        };
        let err_key = |e: Error| e.with_key(key.as_str());
        match op {
            BatchOp::Put { options, .. } => {
                options.check_condition(current).map_err(err_key)?;
                next += 1;
                overlay.insert(key, Some(next));
            }
            BatchOp::Delete { options, .. } => {
                options.check_condition(current).map_err(err_key)?;
                if current.is_some() {
                    next += 1;
                }
                overlay.insert(key, None);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::HISTORY_CHUNK_EVENTS;
    use futures::StreamExt;

    #[tokio::test(flavor = "multi_thread")]
    async fn slow_watcher_gets_resync() {
        let raw: Arc<dyn KvStore> = Arc::new(MemoryStore::with_config(
            MemoryConfig::default().with_watch_buffer(16),
        ));
        let store = crate::Namespaced::new(raw, "ns/x/").unwrap();
        let ctx = Context::new();
        let k = Key::new("k").unwrap();
        let mut s = store
            .watch(&ctx, WatchRequest::key(k.clone()))
            .await
            .unwrap();
        for i in 0..58 {
            store
                .put(&ctx, &k, Bytes::from(i.to_string()), PutOptions::default())
                .await
                .unwrap();
        }
        let ev = tokio::time::timeout(std::time::Duration::from_secs(2), s.next()).await;
        assert!(matches!(ev, Ok(Some(Ok(WatchEvent::Resync { .. })))));
    }

    /// Delegates to the store's source, counting history reads.
    struct Counting {
        inner: Arc<Inner>,
        history_calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ChangeSource for Counting {
        async fn snapshot(&self, range: &KeyRange) -> Result<(Vec<Entry>, Revision)> {
            self.inner.snapshot(range).await
        }

        async fn history(
            &self,
            from: Revision,
            range: &KeyRange,
            max_events: usize,
        ) -> Result<HistoryChunk> {
            self.history_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.history(from, range, max_events).await
        }
    }

    async fn put(store: &MemoryStore, key: &str, value: &str) -> Revision {
        store
            .put(
                &Context::new(),
                &Key::new(key).unwrap(),
                Bytes::from(value.to_owned()),
                PutOptions::default(),
            )
            .await
            .unwrap()
    }

    async fn next_event(s: &mut WatchStream) -> WatchEvent {
        tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no error")
    }

    async fn assert_quiet(s: &mut WatchStream) {
        let more = tokio::time::timeout(std::time::Duration::from_millis(100), s.next()).await;
        assert!(more.is_err(), "unexpected item {more:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn resumed_watch_replays_history_lazily_in_chunks() {
        let store = MemoryStore::with_config(MemoryConfig::default().with_history_limit(20_000));
        for i in 0..10_000 {
            let key = if i % 10 == 0 {
                format!("hit/{i:05}")
            } else {
                format!("miss/{i:05}")
            };
            put(&store, &key, &i.to_string()).await;
        }
        let counting = Arc::new(Counting {
            inner: store.inner.clone(),
            history_calls: Default::default(),
        });
        let source: Arc<dyn ChangeSource> = counting.clone();
        let ctx = Context::new();
        let mut s = store
            .inner
            .feed
            .watch(
                NAME,
                &ctx,
                WatchRequest::prefix("hit/").from_revision(1),
                source,
            )
            .await
            .unwrap();
        let calls = || {
            counting
                .history_calls
                .load(std::sync::atomic::Ordering::SeqCst)
        };
        assert_eq!(calls(), 1, "only the first chunk is read up-front");
        // Committed after the subscription: in the later history chunks
        // and in the live receiver, delivered once.
        let during = put(&store, "hit/during", "d").await;
        put(&store, "miss/during", "d").await;
        for n in 0..1000u64 {
            let ev = next_event(&mut s).await;
            let WatchEvent::Put { entry, prev } = ev else {
                panic!("expected a put, got {ev:?}");
            };
            assert_eq!(entry.revision, n * 10 + 1);
            assert_eq!(entry.key.as_str(), format!("hit/{:05}", n * 10));
            assert!(prev.is_none());
        }
        assert!(calls() >= 4, "history read in chunks ({} reads)", calls());
        let ev = next_event(&mut s).await;
        assert_eq!(ev.key().map(Key::as_str), Some("hit/during"));
        assert_eq!(ev.revision(), during);
        put(&store, "miss/live", "l").await;
        let live = put(&store, "hit/live", "l").await;
        let ev = next_event(&mut s).await;
        assert_eq!(ev.key().map(Key::as_str), Some("hit/live"));
        assert_eq!(ev.revision(), live);
        assert_quiet(&mut s).await;
    }

    #[tokio::test]
    async fn history_chunks_are_bounded_and_advance_without_matches() {
        let store = MemoryStore::new();
        for i in 0..5000 {
            put(&store, &format!("a/{i:04}"), "v").await;
        }
        let inner = &store.inner;
        let other = KeyRange::Prefix("b/".into());
        let scan = history_scan_limit(256) as Revision;
        let chunk = inner.history(1, &other, 256).await.unwrap();
        assert!(chunk.events.is_empty());
        assert_eq!(chunk.scanned_through, scan);
        assert!(chunk.more);
        let chunk = inner.history(scan + 1, &other, 256).await.unwrap();
        assert!(chunk.events.is_empty());
        assert_eq!(chunk.scanned_through, 5000);
        assert!(!chunk.more);

        let all = KeyRange::Prefix("a/".into());
        let chunk = inner.history(1, &all, 10).await.unwrap();
        let revs: Vec<Revision> = chunk.events.iter().map(WatchEvent::revision).collect();
        assert_eq!(revs, (1..=10).collect::<Vec<_>>());
        assert_eq!(chunk.scanned_through, 10);
        assert!(chunk.more);
        let chunk = inner.history(4991, &all, 10).await.unwrap();
        assert_eq!(chunk.events.len(), 10);
        assert_eq!(chunk.scanned_through, 5000);
        assert!(!chunk.more, "the last record ends the history");

        let chunk = inner.history(5001, &all, 10).await.unwrap();
        assert!(chunk.events.is_empty());
        assert_eq!(chunk.scanned_through, 5000);
        assert!(!chunk.more);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn history_compacted_during_replay_resyncs() {
        let store = MemoryStore::with_config(MemoryConfig::default().with_history_limit(1000));
        for i in 0..1000 {
            put(&store, &format!("k/{:03}", i % 100), &i.to_string()).await;
        }
        let ctx = Context::new();
        let mut s = store
            .watch(&ctx, WatchRequest::prefix("k/").from_revision(1))
            .await
            .unwrap();
        for rev in 1..=HISTORY_CHUNK_EVENTS as Revision {
            assert_eq!(next_event(&mut s).await.revision(), rev);
        }
        // The history the replay still needs is dropped, and the live
        // buffer (1024 events) overflows too: one resync covers both.
        for i in 0..2000 {
            put(&store, &format!("k/{:03}", i % 100), &format!("new{i}")).await;
        }
        let ev = next_event(&mut s).await;
        let WatchEvent::Resync { entries, revision } = ev else {
            panic!("expected a resync, got {ev:?}");
        };
        assert_eq!(revision, 3000);
        assert_eq!(entries.len(), 100);
        assert!(entries.iter().all(|e| e.value.starts_with(b"new")));
        let live = put(&store, "k/live", "l").await;
        let ev = next_event(&mut s).await;
        assert_eq!(ev.revision(), live);
        assert_eq!(ev.key().map(Key::as_str), Some("k/live"));
        assert_quiet(&mut s).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn consumer_lagging_during_replay_gets_resync() {
        let store = MemoryStore::with_config(MemoryConfig::default().with_watch_buffer(16));
        for i in 0..1000 {
            put(&store, &format!("k/{i:04}"), "v").await;
        }
        let ctx = Context::new();
        let mut s = store
            .watch(&ctx, WatchRequest::prefix("k/").from_revision(1))
            .await
            .unwrap();
        // Overflows the live buffer while history is being replayed.
        for i in 0..100 {
            put(&store, &format!("k/late{i:03}"), "v").await;
        }
        // Later chunks read a later state, so the late writes are replayed
        // too; then the overflowed receiver resyncs.
        for rev in 1..=1100 {
            assert_eq!(next_event(&mut s).await.revision(), rev);
        }
        let ev = next_event(&mut s).await;
        let WatchEvent::Resync { entries, revision } = ev else {
            panic!("expected a resync, got {ev:?}");
        };
        assert_eq!(revision, 1100);
        assert_eq!(entries.len(), 1100);
        let live = put(&store, "k/live", "l").await;
        assert_eq!(next_event(&mut s).await.revision(), live);
        assert_quiet(&mut s).await;
    }
}
