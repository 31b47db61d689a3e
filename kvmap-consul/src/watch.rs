//! Watches: Consul blocking queries on the watched key or prefix, diffed
//! against the watcher's own copy of the range, merged with this process's
//! own writes.
//!
//! A blocking query answers with the latest state once the range's index
//! moves, so writes by other clients that land between two answers are
//! coalesced: the watcher sees the latest revision of each key, in
//! revision order, never an older one after a newer. Writes made through
//! this process's stores reach its watchers at once, each of them, from
//! an in-process feed; one that a read overtook (the read already showed
//! a newer revision or the key's delete) is covered by a `Resync`, never
//! silently skipped. A watcher that falls behind its buffer, misses part
//! of the in-process feed, or sees the index go backwards (a restored
//! snapshot) gets a `Resync` with the full current state.
//!
//! Expiry: the watcher knows the expiry instant of every entry in its
//! copy, and emits `Expired` when it passes (Consul itself never changes
//! anything at that moment; the reaper deletes the entry later, and that
//! delete is not reported again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kvmap_core::{
    Context, Entry, Error, ErrorKind, Key, Op, Result, Revision, WatchEvent, WatchRequest,
    WatchStream, WatchTarget,
};
use tokio::sync::{broadcast, mpsc};

use crate::codec::decode;
use crate::list::Span;
use crate::store::Inner;

/// Tombstones remembered per watcher, to drop late in-process events of
/// deleted keys.
const MAX_TOMBSTONES: usize = 4096;

/// The in-process feed of this store's own writes.
#[derive(Debug, Clone)]
pub(crate) struct OwnFeed {
    tx: broadcast::Sender<Entry>,
}

impl OwnFeed {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.clamp(16, 65_536));
        Self { tx }
    }

    pub(crate) fn publish(&self, entry: Entry) {
        if self.tx.receiver_count() > 0 {
            // An error only means nobody listens any more.
            let _ = self.tx.send(entry);
        }
    }
}

struct Watcher {
    inner: Arc<Inner>,
    ctx: Context,
    target: WatchTarget,
    span: Span,
    with_prev: bool,
    state: BTreeMap<Key, Entry>,
    tombstones: HashMap<Key, Revision>,
    index: u64,
    tx: mpsc::Sender<Result<WatchEvent>>,
    need_resync: bool,
}

/// Starts a watch: the first read happens before this returns, so every
/// change after it is seen.
pub(crate) async fn start(
    inner: Arc<Inner>,
    ctx: Context,
    req: WatchRequest,
) -> Result<WatchStream> {
    let own_rx = inner.feed.tx.subscribe();
    let span = match &req.target {
        WatchTarget::Key(k) => Span::Exact(inner.consul_key(k.as_str())),
        WatchTarget::Prefix(p) => Span::Prefix(inner.consul_key(p)),
    };
    let scope = kvmap_core::backend::Scope::new(crate::error::BACKEND, Op::Watch)
        .key(req.target.describe())
        .timeout(Some(inner.cfg.request_timeout.saturating_mul(2)));
    let first = ctx
        .run(scope, inner.read_span(&ctx, &span, None, Op::Watch))
        .await?;
    let (tx, rx) = mpsc::channel(inner.cfg.watch_buffer);
    let mut w = Watcher {
        inner,
        ctx,
        target: req.target,
        span,
        with_prev: req.with_prev_value,
        state: BTreeMap::new(),
        tombstones: HashMap::new(),
        index: first.index.max(1),
        tx,
        need_resync: false,
    };
    w.state = w.decode_all(first.raws)?;
    tokio::spawn(w.run(own_rx));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

impl Watcher {
    fn decode_all(&self, raws: Vec<crate::codec::RawKv>) -> Result<BTreeMap<Key, Entry>> {
        let now = SystemTime::now();
        let mut out = BTreeMap::new();
        for raw in raws {
            if let Some(d) = decode(raw, &self.inner.cfg.key_prefix, false, now, Op::Watch)? {
                if !d.expired && self.target.matches(d.entry.key.as_str()) {
                    out.insert(d.entry.key.clone(), d.entry);
                }
            }
        }
        Ok(out)
    }

    fn emit(&mut self, ev: WatchEvent) {
        if self.need_resync {
            return;
        }
        let ev = if self.with_prev {
            ev
        } else {
            ev.without_prev()
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Ok(ev)) {
            self.need_resync = true;
        }
    }

    fn resync_event(&self) -> WatchEvent {
        let revision = self
            .state
            .values()
            .map(|e| e.revision)
            .max()
            .unwrap_or(0)
            .max(self.index);
        WatchEvent::Resync {
            entries: self.state.values().cloned().collect(),
            revision,
        }
    }

    /// A newer entry of a key (from either source).
    fn apply_put(&mut self, entry: Entry) {
        if self
            .tombstones
            .get(&entry.key)
            .is_some_and(|r| *r >= entry.revision)
        {
            return;
        }
        let prev = self.state.get(&entry.key);
        if prev.is_some_and(|p| p.revision >= entry.revision) {
            return;
        }
        let prev = self.state.insert(entry.key.clone(), entry.clone());
        self.emit(WatchEvent::Put { entry, prev });
    }

    /// One of this process's own writes, from the in-process feed. If a
    /// read already went past it (a newer revision or a delete of the key
    /// arrived first), its event can no longer be sent in order: that gap
    /// is made visible with a resync instead of being silent.
    fn apply_own_put(&mut self, entry: Entry) {
        let superseded = self
            .tombstones
            .get(&entry.key)
            .is_some_and(|r| *r >= entry.revision)
            || self
                .state
                .get(&entry.key)
                .is_some_and(|p| p.revision > entry.revision);
        if superseded {
            self.need_resync = true;
            return;
        }
        self.apply_put(entry);
    }

    fn apply_gone(&mut self, key: Key, revision: Revision, now: SystemTime) {
        let Some(prev) = self.state.remove(&key) else {
            return;
        };
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones.clear();
        }
        self.tombstones.insert(key.clone(), revision);
        let expired = prev.expires_at.is_some_and(|t| t <= now);
        let revision = revision.max(prev.revision + 1);
        self.emit(if expired {
            WatchEvent::Expired {
                key,
                revision,
                prev: Some(prev),
            }
        } else {
            WatchEvent::Delete {
                key,
                revision,
                prev: Some(prev),
            }
        });
    }

    /// Diffs a fresh read of the span against the watcher's copy.
    fn apply_read(&mut self, raws: Vec<crate::codec::RawKv>, index: u64) -> Result<()> {
        let fresh = self.decode_all(raws)?;
        if index < self.index {
            // Consul's index went backwards (a snapshot restore, or another
            // server with older data): start over from the fresh state.
            self.state = fresh;
            self.index = index.max(1);
            self.need_resync = true;
            return Ok(());
        }
        self.index = index.max(1);
        let now = SystemTime::now();
        // A key absent from the read is gone only if the read is not
        // older than what the watcher knows of it: an own write published
        // in-process after this read was taken is newer than the read.
        let gone: Vec<Key> = self
            .state
            .iter()
            .filter(|(k, e)| !fresh.contains_key(*k) && e.revision <= index)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.apply_gone(k, index, now);
        }
        for (_, e) in fresh {
            self.apply_put(e);
        }
        Ok(())
    }

    fn expire_due(&mut self) {
        let now = SystemTime::now();
        let due: Vec<Key> = self
            .state
            .values()
            .filter(|e| e.expires_at.is_some_and(|t| t <= now))
            .map(|e| e.key.clone())
            .collect();
        for k in due {
            let rev = self.index;
            self.apply_gone(k, rev + 1, now);
        }
    }

    fn next_expiry(&self) -> Option<Duration> {
        let now = SystemTime::now();
        self.state
            .values()
            .filter_map(|e| e.expires_at)
            .min()
            .map(|t| t.duration_since(now).unwrap_or_default() + Duration::from_millis(1))
    }

    async fn run(mut self, mut own_rx: broadcast::Receiver<Entry>) {
        let mut backoff = Duration::from_millis(100);
        let inner = self.inner.clone();
        let wait = inner.cfg.watch_wait;
        let span = self.span.clone();
        let ctx = Context::new();
        let mut pending = Box::pin(read_blocking(
            inner.clone(),
            ctx.clone(),
            span.clone(),
            self.index,
            wait,
            Duration::ZERO,
        ));
        let tx = self.tx.clone();
        let wctx = self.ctx.clone();
        loop {
            let expiry = self.next_expiry();
            let need_resync = self.need_resync;
            tokio::select! {
                biased;
                () = tx.closed() => return,
                () = cancelled(&wctx) => {
                    let e = Error::new(ErrorKind::Cancelled).with_backend(crate::error::BACKEND).with_op(Op::Watch).with_detail("the watch's context was cancelled");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                permit = tx.reserve(), if need_resync => {
                    if let Ok(permit) = permit {
                        permit.send(Ok(self.resync_event()));
                        self.need_resync = false;
                    }
                }
                own = own_rx.recv() => match own {
                    Ok(entry) => {
                        if self.target.matches(entry.key.as_str()) {
                            self.apply_own_put(entry);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.need_resync = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = sleep_opt(expiry) => self.expire_due(),
                res = &mut pending => {
                    let delay = match res {
                        Ok(read) => {
                            backoff = Duration::from_millis(100);
                            if let Err(e) = self.apply_read(read.raws, read.index) {
                                let _ = self.tx.send(Err(e)).await;
                                return;
                            }
                            Duration::ZERO
                        }
                        Err(e) if e.is_transient() || e.kind() == ErrorKind::DeadlineExceeded => {
                            tracing::debug!(target: "kvmap_consul", error = %e.report(), "watch query failed; retrying");
                            let d = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            d
                        }
                        Err(e) => {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                    };
                    pending = Box::pin(read_blocking(inner.clone(), ctx.clone(), span.clone(), self.index, wait, delay));
                }
            }
        }
    }
}

async fn read_blocking(
    inner: Arc<Inner>,
    ctx: Context,
    span: Span,
    index: u64,
    wait: Duration,
    delay: Duration,
) -> Result<crate::list::SpanRead> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    inner
        .read_span(&ctx, &span, Some((index, wait)), Op::Watch)
        .await
}

async fn cancelled(ctx: &Context) {
    match ctx.cancel_token() {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
