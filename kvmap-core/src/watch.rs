//! Watch requests, events and streams.
//!
//! # Contract
//! - When [`KvStore::watch`](crate::KvStore::watch) returns, the watch is
//!   registered: every change committed after that is delivered.
//! - Events for a key arrive in revision order.
//! - A watch started at a revision delivers every change with a revision
//!   at or after it exactly once, or fails with
//!   [`ErrorKind::Compacted`] if that history is gone.
//! - When a backend loses continuity (reconnect, overflow, slow consumer)
//!   the stream emits [`WatchEvent::Resync`] with the full current state of
//!   the watched range, then continues: never a silent gap, never a
//!   silently closed stream. Errors arrive in the stream, typed; a stream
//!   that ends with an error yields nothing after it.
//! - Cancelling the context (or passing its deadline) ends the stream with
//!   `Cancelled` / `DeadlineExceeded`. Dropping the stream releases
//!   everything it held.
//! - Memory stays bounded for a slow consumer: the backend buffers a
//!   bounded number of events and falls back to a resync.
//! - Memory stays bounded for a resume from an old revision: stores built
//!   on [`ChangeFeed`] replay their history in chunks of
//!   [`HISTORY_CHUNK_EVENTS`] events, each read only when the previous one
//!   has been delivered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::broadcast;

use crate::context::{Context, Scope};
use crate::entry::{Entry, KeyRange, Revision};
use crate::error::{Error, ErrorKind, Op, Result};
use crate::key::{check_prefix, Key};

/// What a watch covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    /// One key.
    Key(Key),
    /// Every key starting with the prefix (empty: everything).
    Prefix(String),
}

impl WatchTarget {
    /// Whether `key` is covered.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            WatchTarget::Key(k) => k.as_str() == key,
            WatchTarget::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    /// The target as a list range (a key is a one-key range).
    pub fn as_range(&self) -> KeyRange {
        match self {
            WatchTarget::Key(k) => KeyRange::Range {
                start: k.as_str().to_owned(),
                end: Some(format!("{}\u{0}", k.as_str())),
            },
            WatchTarget::Prefix(p) => KeyRange::Prefix(p.clone()),
        }
    }

    /// A description for messages.
    pub fn describe(&self) -> &str {
        match self {
            WatchTarget::Key(k) => k.as_str(),
            WatchTarget::Prefix(p) => p,
        }
    }
}

/// A watch request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchRequest {
    /// The key or prefix.
    pub target: WatchTarget,
    /// Replay changes from this revision on (inclusive); `None`: only
    /// changes after the watch is registered.
    pub start_revision: Option<Revision>,
    /// Fill `prev` in events with the entry before the change.
    pub with_prev_value: bool,
}

impl WatchRequest {
    /// Watch one key.
    pub fn key(key: Key) -> Self {
        Self {
            target: WatchTarget::Key(key),
            start_revision: None,
            with_prev_value: false,
        }
    }

    /// Watch a prefix.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            target: WatchTarget::Prefix(prefix.into()),
            start_revision: None,
            with_prev_value: false,
        }
    }

    /// Replays from a revision.
    pub fn from_revision(mut self, revision: Revision) -> Self {
        self.start_revision = Some(revision);
        self
    }

    /// Asks for previous values.
    pub fn with_prev_value(mut self) -> Self {
        self.with_prev_value = true;
        self
    }

    /// Checks the prefix.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`].
    pub fn validate(&self) -> Result<()> {
        match &self.target {
            WatchTarget::Key(_) => Ok(()),
            WatchTarget::Prefix(p) => check_prefix(p),
        }
    }
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written.
    Put {
        /// The entry after the write.
        entry: Entry,
        /// The entry before, if asked for and it existed.
        prev: Option<Entry>,
    },
    /// A key was deleted.
    Delete {
        /// The key.
        key: Key,
        /// The revision of the delete.
        revision: Revision,
        /// The entry before, if asked for.
        prev: Option<Entry>,
    },
    /// A key's TTL ran out.
    Expired {
        /// The key.
        key: Key,
        /// The revision of the expiry.
        revision: Revision,
        /// The entry before, if asked for (Redis: when the watch delivered
        /// the key's last `Put` itself, since its server drops the value
        /// before it notifies; see its docs).
        prev: Option<Entry>,
    },
    /// Continuity was lost; this is the full current state of the watched
    /// range at `revision`. Replace what you knew with it.
    Resync {
        /// Every entry in the range.
        entries: Vec<Entry>,
        /// The revision of the state (for per-key-revision backends, the
        /// highest revision among the entries).
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key of a single-key event.
    pub fn key(&self) -> Option<&Key> {
        match self {
            WatchEvent::Put { entry, .. } => Some(&entry.key),
            WatchEvent::Delete { key, .. } | WatchEvent::Expired { key, .. } => Some(key),
            WatchEvent::Resync { .. } => None,
        }
    }

    /// The revision of the event.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { entry, .. } => entry.revision,
            WatchEvent::Delete { revision, .. }
            | WatchEvent::Expired { revision, .. }
            | WatchEvent::Resync { revision, .. } => *revision,
        }
    }

    /// The event without its previous value.
    pub fn without_prev(self) -> Self {
        match self {
            WatchEvent::Put { entry, .. } => WatchEvent::Put { entry, prev: None },
            WatchEvent::Delete { key, revision, .. } => WatchEvent::Delete {
                key,
                revision,
                prev: None,
            },
            WatchEvent::Expired { key, revision, .. } => WatchEvent::Expired {
                key,
                revision,
                prev: None,
            },
            r @ WatchEvent::Resync { .. } => r,
        }
    }
}

/// The stream a watch returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// How many matching events [`ChangeFeed`] asks a [`ChangeSource`] for per
/// history chunk: a resumed watch holds at most about this many replayed
/// events in memory at once.
pub const HISTORY_CHUNK_EVENTS: usize = 256;

/// A [`ChangeSource`] examines at most `max_events` times this many change
/// records per history chunk (see [`history_scan_limit`]), so a chunk stays
/// bounded even when nothing in it matches the watched range.
pub const HISTORY_SCAN_FACTOR: usize = 16;

/// The most change records one [`ChangeSource::history`] call examines for
/// a chunk of at most `max_events` events: `max_events * `
/// [`HISTORY_SCAN_FACTOR`] (at least [`HISTORY_SCAN_FACTOR`]).
pub fn history_scan_limit(max_events: usize) -> usize {
    max_events.max(1).saturating_mul(HISTORY_SCAN_FACTOR)
}

/// One bounded piece of a [`ChangeSource`]'s change history, read by
/// [`ChangeSource::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryChunk {
    /// The changes in the requested range, in revision order, at most the
    /// requested number.
    pub events: Vec<WatchEvent>,
    /// The highest revision examined, whether its change matched the range
    /// or not (`from - 1` if nothing was examined). Every change up to it
    /// that is in the range is in `events` or an earlier chunk.
    pub scanned_through: Revision,
    /// Whether changes above `scanned_through` may remain: read the next
    /// chunk from `scanned_through + 1`. `false` when the history was
    /// exhausted at the time of the read.
    pub more: bool,
}

impl HistoryChunk {
    /// A chunk of `events` (in range and revision order), covering every
    /// revision up to `scanned_through`, with `more` if later records may
    /// remain.
    pub fn new(events: Vec<WatchEvent>, scanned_through: Revision, more: bool) -> Self {
        Self {
            events,
            scanned_through,
            more,
        }
    }
}

/// The state and history behind an in-process change feed, implemented
/// by stores with one global revision (memory, RocksDB).
#[async_trait]
pub trait ChangeSource: Send + Sync + 'static {
    /// The current entries of the range and the revision they were read at,
    /// read consistently.
    async fn snapshot(&self, range: &KeyRange) -> Result<(Vec<Entry>, Revision)>;

    /// One chunk of the changes with a revision `>= from` whose key is in
    /// `range`, in revision order, read consistently: at most `max_events`
    /// events, after examining at most [`history_scan_limit`]`(max_events)`
    /// change records (matching or not), so a call never walks the whole
    /// history. [`HistoryChunk::scanned_through`] tells where the next
    /// chunk starts and [`HistoryChunk::more`] whether there is one.
    ///
    /// # Errors
    /// [`ErrorKind::Compacted`] if changes at `from` or later are gone
    /// (`from` is at or below the oldest dropped revision); storage errors.
    async fn history(
        &self,
        from: Revision,
        range: &KeyRange,
        max_events: usize,
    ) -> Result<HistoryChunk>;
}

/// In-process fan-out of committed changes to watch streams: the shared
/// machinery of stores with one global revision.
///
/// The store publishes every change in revision order (while holding
/// whatever lock orders its commits); [`ChangeFeed::watch`] turns a
/// subscription into a [`WatchStream`] that replays history, filters by
/// target, deduplicates, and resyncs when the consumer falls behind the
/// bounded buffer.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

impl ChangeFeed {
    /// A feed buffering up to `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// Publishes a committed change. Call in revision order.
    pub fn publish(&self, event: WatchEvent) {
        if self.tx.receiver_count() > 0 {
            // An error only means nobody listens any more.
            let _ = self.tx.send(Arc::new(event));
        }
    }

    /// Whether anybody watches.
    pub fn has_watchers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Opens a watch stream. The subscription is registered before this
    /// returns; history (for `start_revision`) is read after it, so nothing
    /// falls between the two.
    ///
    /// History is replayed lazily, in chunks of [`HISTORY_CHUNK_EVENTS`]
    /// events filtered by the source: the first chunk is read here, the
    /// next one only when the stream has delivered the previous one, and
    /// live events only after the last. Memory is bounded by a chunk, not
    /// by the retained history. If history the replay still needs is
    /// dropped while the stream is replaying (the source reports
    /// [`ErrorKind::Compacted`] for a later chunk), the stream emits a
    /// [`WatchEvent::Resync`] of the watched range and continues live.
    ///
    /// # Errors
    /// [`ErrorKind::Compacted`] if the start revision is no longer kept;
    /// context errors.
    pub async fn watch(
        &self,
        backend: &str,
        ctx: &Context,
        request: WatchRequest,
        source: Arc<dyn ChangeSource>,
    ) -> Result<WatchStream> {
        let scope = Scope::new(backend, Op::Watch).key(request.target.describe());
        ctx.check(&scope)?;
        request.validate()?;
        let rx = self.tx.subscribe();
        let range = request.target.as_range();
        let first = match request.start_revision {
            Some(from) => {
                let from = from.max(1);
                let chunk = ctx
                    .run(scope, source.history(from, &range, HISTORY_CHUNK_EVENTS))
                    .await?;
                Some((from, chunk))
            }
            None => None,
        };
        let mut state = FeedState {
            backend: backend.to_owned(),
            ctx: ctx.clone(),
            request,
            range,
            rx,
            source,
            pending: VecDeque::new(),
            last: 0,
            replay_from: None,
            done: false,
        };
        if let Some((from, chunk)) = first {
            state.absorb(from, chunk)?;
        }
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move { st.next().await.map(|item| (item, st)) },
        )))
    }
}

fn trim(ev: WatchEvent, with_prev: bool) -> WatchEvent {
    if with_prev {
        ev
    } else {
        ev.without_prev()
    }
}

struct FeedState {
    backend: String,
    ctx: Context,
    request: WatchRequest,
    /// The watched range, as asked of the source.
    range: KeyRange,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    source: Arc<dyn ChangeSource>,
    /// Events read but not yet delivered (at most one history chunk).
    pending: VecDeque<WatchEvent>,
    /// Every change up to this revision has been delivered or skipped.
    last: Revision,
    /// Where the next history chunk starts; `None` once the replay is over
    /// and the live receiver takes over.
    replay_from: Option<Revision>,
    done: bool,
}

impl FeedState {
    fn scope(&self) -> Scope<'_> {
        Scope::new(&self.backend, Op::Watch).key(self.request.target.describe())
    }

    fn end_with(&mut self, e: Error) -> Option<Result<WatchEvent>> {
        self.done = true;
        Some(Err(e))
    }

    /// Takes in a history chunk read from `from`: queues its matching
    /// events, moves `last` to what it covered, and sets where the next
    /// chunk starts (none after the last one).
    fn absorb(&mut self, from: Revision, chunk: HistoryChunk) -> Result<()> {
        let HistoryChunk {
            events,
            scanned_through,
            more,
        } = chunk;
        let floor = self.last;
        for ev in events {
            let revision = ev.revision();
            if revision < from || revision <= floor {
                continue;
            }
            self.last = self.last.max(revision);
            if ev
                .key()
                .is_some_and(|k| self.request.target.matches(k.as_str()))
            {
                self.pending
                    .push_back(trim(ev, self.request.with_prev_value));
            }
        }
        self.last = self.last.max(scanned_through);
        self.replay_from = if more {
            if scanned_through < from {
                return Err(self.scope().error(ErrorKind::Internal).with_detail(format!(
                    "history chunk from revision {from} made no progress"
                )));
            }
            Some(scanned_through + 1)
        } else {
            None
        };
        Ok(())
    }

    /// Reads the snapshot of the watched range as a resync event and moves
    /// `last` to its revision.
    async fn resync(&mut self) -> Option<Result<WatchEvent>> {
        // Everything still buffered is older than the snapshot: start from
        // the tail so the buffer does not lag (or resync) again.
        self.rx = self.rx.resubscribe();
        let source = self.source.clone();
        let snap = self
            .ctx
            .run(self.scope(), source.snapshot(&self.range))
            .await;
        match snap {
            Ok((entries, revision)) => {
                self.last = self.last.max(revision);
                Some(Ok(WatchEvent::Resync { entries, revision }))
            }
            Err(e) => self.end_with(e),
        }
    }

    /// Reads the next history chunk from `from`.
    async fn replay(&mut self, from: Revision) -> Option<Result<WatchEvent>> {
        let source = self.source.clone();
        let read = self
            .ctx
            .run(
                self.scope(),
                source.history(from, &self.range, HISTORY_CHUNK_EVENTS),
            )
            .await;
        match read {
            Ok(chunk) => match self.absorb(from, chunk) {
                Ok(()) => None,
                Err(e) => self.end_with(e),
            },
            Err(e) if matches!(e.kind(), ErrorKind::Compacted { .. }) => {
                tracing::debug!(backend = %self.backend, from, "watch history compacted during replay, resyncing");
                // The rest of the history is gone: the current state
                // replaces it, then the live receiver takes over.
                self.replay_from = None;
                self.resync().await
            }
            Err(e) => self.end_with(e),
        }
    }

    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            if let Some(from) = self.replay_from {
                if let Some(item) = self.replay(from).await {
                    return Some(item);
                }
                continue;
            }
            let received = {
                let ctx = self.ctx.clone();
                let scope = Scope::new(&self.backend, Op::Watch);
                let rx = &mut self.rx;
                ctx.run(scope, async { Ok(rx.recv().await) }).await
            };
            match received {
                Err(e) => return self.end_with(e),
                Ok(Ok(ev)) => {
                    if ev.revision() <= self.last {
                        continue;
                    }
                    self.last = ev.revision();
                    if ev
                        .key()
                        .is_some_and(|k| self.request.target.matches(k.as_str()))
                    {
                        let ev = trim((*ev).clone(), self.request.with_prev_value);
                        return Some(Ok(ev));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::debug!(backend = %self.backend, missed, "watch consumer lagged, resyncing");
                    return self.resync().await;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    let e = self
                        .scope()
                        .error(ErrorKind::Unavailable)
                        .with_detail("store closed");
                    return self.end_with(e);
                }
            }
        }
    }
}
