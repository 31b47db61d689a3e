//! Watch: change events published by the write scripts, plus keyspace
//! notifications for TTL expiry.
//!
//! # Design
//! - Every write script `PUBLISH`es `(kind, key, revision, create
//!   revision, expiry, previous entry, value)` on the namespace's event
//!   channel, atomically with the write. In a cluster a `PUBLISH` reaches
//!   every node over the cluster bus, so one subscription on any node sees
//!   the writes of all masters.
//! - Expiry is not a write: Redis reports it only as a keyspace
//!   notification (`__keyevent@<db>__:expired`), on the node that owns the
//!   key. With `expiry_events` on, the watcher subscribes to it on every
//!   master and makes sure `notify-keyspace-events` has `E` and `x` (set
//!   with `CONFIG SET` if needed, on masters and replicas; if refused the
//!   watch fails with a typed error). The expiry's revision is the last
//!   revision seen for the key plus one.
//! - In a cluster, `watch` returns after a barrier published by every
//!   master has come back over the bus (see `barrier`), so no event of a
//!   write made before the watch can be delivered as if it were new.
//! - Events of a key are delivered in revision order: an event whose
//!   revision is not above the last one seen for its key is dropped.
//! - Pub/sub is fire-and-forget, so continuity is lost whenever a
//!   subscription connection drops, the slot map changes (failover, slot
//!   move; checked every [`TOPOLOGY_POLL`]) or the consumer falls more than
//!   `watch_buffer` events behind. Each time, the watcher resubscribes,
//!   then emits [`WatchEvent::Resync`] with the range's current state read
//!   after the new subscription is in place: never a silent gap.
//! - No history is kept: `start_revision` is `Unsupported`.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kvmap_core::{
    Capability, Context, Entry, Error, ErrorKind, Key, Op, Result, Revision, Scope, WatchEvent,
    WatchRequest, WatchStream,
};
use redis::Msg;
use tokio::sync::mpsc;

use crate::client::{NodeAddr, SlotRange};
use crate::error::{map, own, BACKEND};
use crate::list::{fetch_in_order, scan_range};
use crate::scripts::Change;
use crate::store::{Inner, RedisStore};

/// How often a cluster watcher compares the slot map.
pub(crate) const TOPOLOGY_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

type MsgStream = Pin<Box<dyn Stream<Item = Option<Msg>> + Send>>;

/// Live subscriptions: one merged message stream (`None` items mark a
/// connection that ended) and the slot map they were made for.
struct Subs {
    messages: MsgStream,
    slots: Vec<SlotRange>,
}

pub(crate) async fn watch(
    store: &RedisStore,
    ctx: &Context,
    request: WatchRequest,
) -> Result<WatchStream> {
    let scope = store.scope(Op::Watch, Some(request.target.describe()));
    ctx.check(&scope)?;
    request.validate()?;
    if let kvmap_core::WatchTarget::Key(k) = &request.target {
        store.inner.cfg.limits.check_key(k)?;
    }
    if !store.inner.cfg.watch_events {
        return Err(own(
            ErrorKind::Unsupported {
                capability: Capability::Watch,
            },
            Op::Watch,
            Some(request.target.describe()),
            "change events are off in this configuration (watch_events = false)",
        ));
    }
    if request.start_revision.is_some() {
        return Err(own(
            ErrorKind::Unsupported {
                capability: Capability::WatchResume,
            },
            Op::Watch,
            Some(request.target.describe()),
            "redis keeps no change history",
        ));
    }
    let inner = store.inner.clone();
    let subs = ctx.run(scope, subscribe(&inner)).await?;
    let (tx, rx) = mpsc::channel(inner.cfg.watch_buffer);
    let what = request.target.describe().to_owned();
    tokio::spawn(Watcher::new(inner, request, tx).run(subs));
    let state = (rx, ctx.clone(), what, false);
    Ok(Box::pin(futures::stream::unfold(
        state,
        |(mut rx, ctx, what, done)| async move {
            if done {
                return None;
            }
            let scope = Scope::new(BACKEND, Op::Watch).key(&what);
            let item = match ctx.run(scope, async { Ok(rx.recv().await) }).await {
                Err(e) => Err(e),
                Ok(Some(item)) => item,
                Ok(None) => Err(own(
                    ErrorKind::Unavailable,
                    Op::Watch,
                    Some(&what),
                    "watch task ended",
                )),
            };
            let done = item.is_err();
            Some((item, (rx, ctx, what, done)))
        },
    )))
}

fn expired_channel(inner: &Inner) -> String {
    format!("__keyevent@{}__:expired", inner.client.db())
}

/// Makes sure every node reports expiry (`notify-keyspace-events` with `E`
/// and `x`), enabling it where needed.
async fn ensure_expiry_notifications(inner: &Inner, slots: &[SlotRange]) -> Result<()> {
    let mut nodes: Vec<&NodeAddr> = slots
        .iter()
        .flat_map(|r| std::iter::once(&r.master).chain(r.replicas.iter()))
        .collect();
    nodes.sort();
    nodes.dedup();
    let cannot = |e: redis::RedisError| {
        let err = map(e, Op::Watch, None);
        let kind = match err.kind() {
            ErrorKind::Internal => ErrorKind::Unsupported {
                capability: Capability::Watch,
            },
            k => k,
        };
        let mut out = own(
            kind,
            Op::Watch,
            None,
            "expiry events need keyspace notifications (notify-keyspace-events Ex), which are off and cannot be enabled; enable them on the servers or set expiry_events = false",
        );
        if let Some(s) = std::error::Error::source(&err) {
            out = out.with_detail(format!(
                "expiry events need keyspace notifications (notify-keyspace-events Ex), which are off and cannot be enabled ({s}); enable them on the servers or set expiry_events = false"
            ));
        }
        out
    };
    for node in nodes {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET").arg("notify-keyspace-events");
        let (_, flags): (String, String) = inner
            .client
            .direct_query(node, &get)
            .await
            .map_err(cannot)?;
        let has_x = flags.contains('x') || flags.contains('A');
        if flags.contains('E') && has_x {
            continue;
        }
        let mut set = redis::cmd("CONFIG");
        set.arg("SET")
            .arg("notify-keyspace-events")
            .arg(format!("{flags}Ex"));
        let _: () = inner
            .client
            .direct_query(node, &set)
            .await
            .map_err(cannot)?;
    }
    Ok(())
}

/// Subscribes: the event channel on one node, the expiry channel on every
/// master. Returns once every subscription is confirmed.
async fn subscribe(inner: &Inner) -> Result<Subs> {
    let slots = inner
        .client
        .slots()
        .await
        .map_err(|e| map(e, Op::Watch, None))?;
    let mut masters: Vec<NodeAddr> = slots.iter().map(|r| r.master.clone()).collect();
    masters.sort();
    masters.dedup();
    if masters.is_empty() {
        return Err(own(
            ErrorKind::Unavailable,
            Op::Watch,
            None,
            "no master serves any slot",
        ));
    }
    let expiry = inner.cfg.expiry_events;
    if expiry {
        let mut verified = inner.notifications_verified.lock().await;
        if verified.as_deref() != Some(&slots[..]) {
            ensure_expiry_notifications(inner, &slots).await?;
            *verified = Some(slots.clone());
        }
    }
    let expired = expired_channel(inner);
    let mut streams: Vec<MsgStream> = Vec::new();
    for (i, node) in masters.iter().enumerate() {
        if i > 0 && !expiry {
            break;
        }
        let mut ps = inner
            .client
            .pubsub(node)
            .await
            .map_err(|e| map(e, Op::Watch, None))?;
        let mut channels = Vec::new();
        if i == 0 {
            channels.push(inner.channel.clone());
        }
        if expiry {
            channels.push(expired.clone());
        }
        ps.subscribe(&channels)
            .await
            .map_err(|e| map(e, Op::Watch, None))?;
        let s = ps
            .into_on_message()
            .map(Some)
            .chain(futures::stream::once(async { None }));
        streams.push(Box::pin(s));
    }
    let mut messages: MsgStream = Box::pin(futures::stream::select_all(streams));
    if inner.client.is_cluster() {
        barrier(inner, &masters, &mut messages).await?;
    }
    Ok(Subs { messages, slots })
}

/// In a cluster, events reach the subscribed node over the cluster bus
/// after the writer got its reply, so events of writes made before the
/// subscription may still be in flight. Each master publishes a barrier
/// on the event channel; it travels over the same bus link as that
/// master's earlier events, so once every barrier has arrived nothing from
/// before the subscription can follow. Everything received until then is
/// dropped (those changes were committed before `watch` returned).
async fn barrier(inner: &Inner, masters: &[NodeAddr], messages: &mut MsgStream) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nonce = format!(
        "B {}-{}",
        std::process::id(),
        SEQ.fetch_add(1, AtomicOrdering::Relaxed)
    );
    for m in masters {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&inner.channel)
            .arg(format!("{nonce} {}:{}", m.host, m.port));
        let _: i64 = inner
            .client
            .query_node(m, cmd)
            .await
            .map_err(|e| map(e, Op::Watch, None))?;
    }
    let mut pending: HashSet<String> = masters
        .iter()
        .map(|m| format!("{nonce} {}:{}", m.host, m.port))
        .collect();
    let wait = async {
        while !pending.is_empty() {
            match messages.next().await {
                Some(Some(msg)) => {
                    if let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) {
                        pending.remove(text);
                    }
                }
                _ => {
                    return Err(own(
                        ErrorKind::Unavailable,
                        Op::Watch,
                        None,
                        "a subscription ended while waiting for the barrier",
                    ))
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout(inner.cfg.op_timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(own(
            ErrorKind::Timeout,
            Op::Watch,
            None,
            "the subscription barrier did not come back over the cluster bus",
        )),
    }
}

struct Watcher {
    inner: Arc<Inner>,
    request: WatchRequest,
    tx: mpsc::Sender<Result<WatchEvent>>,
    /// The last revision delivered per key.
    last: HashMap<Key, Revision>,
    expired: String,
}

enum Broke {
    Lost(&'static str),
    Overflow,
    Closed,
}

impl Watcher {
    fn new(inner: Arc<Inner>, request: WatchRequest, tx: mpsc::Sender<Result<WatchEvent>>) -> Self {
        let expired = expired_channel(&inner);
        Self {
            inner,
            request,
            tx,
            last: HashMap::new(),
            expired,
        }
    }

    fn permanent(e: &Error) -> bool {
        matches!(
            e.kind(),
            ErrorKind::Unauthenticated
                | ErrorKind::PermissionDenied
                | ErrorKind::Unsupported { .. }
                | ErrorKind::InvalidData
                | ErrorKind::InvalidArgument
        )
    }

    async fn run(mut self, first: Subs) {
        let mut subs = Some(first);
        let mut resync = false;
        let mut backoff = Duration::from_millis(50);
        loop {
            let current = match subs.take() {
                Some(s) => s,
                None => match subscribe(&self.inner).await {
                    Ok(s) => s,
                    Err(e) if Self::permanent(&e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis watch: resubscribe failed, retrying");
                        if !self.pause(backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            if resync {
                match self.resync().await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) if Self::permanent(&e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis watch: resync failed, retrying");
                        if !self.pause(backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            backoff = Duration::from_millis(50);
            match self.pump(current).await {
                Broke::Closed => return,
                Broke::Lost(why) => {
                    tracing::debug!(why, "redis watch: continuity lost, resubscribing");
                    resync = true;
                }
                Broke::Overflow => resync = true,
            }
        }
    }

    /// Sleeps, unless the consumer goes away first (then `false`).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.tx.closed() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// Sends a resync of the watched range. `Ok(false)`: the consumer is gone.
    async fn resync(&mut self) -> Result<bool> {
        let permit = tokio::select! {
            () = self.tx.closed() => return Ok(false),
            p = self.tx.reserve() => match p { Ok(p) => p, Err(_) => return Ok(false) },
        };
        let range = self.request.target.as_range();
        let entries = self.snapshot(&range).await?;
        let mut revision = 0;
        for e in &entries {
            revision = revision.max(e.revision);
            let last = self.last.entry(e.key.clone()).or_insert(0);
            *last = (*last).max(e.revision);
        }
        permit.send(Ok(WatchEvent::Resync { entries, revision }));
        Ok(true)
    }

    async fn snapshot(&self, range: &kvmap_core::KeyRange) -> Result<Vec<Entry>> {
        let names = scan_range(&self.inner, range).await?;
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| self.request.target.matches(n))
            .collect();
        let timeout = self.inner.cfg.op_timeout.saturating_mul(4);
        match tokio::time::timeout(
            timeout,
            fetch_in_order(&self.inner, names, usize::MAX, false),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(own(
                ErrorKind::Timeout,
                Op::Watch,
                None,
                "resync read timed out",
            )),
        }
    }

    /// Delivers events until continuity is lost or the consumer leaves.
    async fn pump(&mut self, mut subs: Subs) -> Broke {
        let cluster = self.inner.client.is_cluster();
        let mut tick = tokio::time::interval(TOPOLOGY_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = self.tx.closed() => return Broke::Closed,
                m = subs.messages.next() => match m {
                    Some(Some(msg)) => {
                        if let Some(ev) = self.event(&msg) {
                            match self.tx.try_send(Ok(ev)) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => return Broke::Overflow,
                                Err(mpsc::error::TrySendError::Closed(_)) => return Broke::Closed,
                            }
                        }
                    }
                    _ => return Broke::Lost("a subscription connection ended"),
                },
                _ = tick.tick(), if cluster => {
                    match self.inner.client.slots().await {
                        Ok(now) if now == subs.slots => {}
                        Ok(_) => return Broke::Lost("the slot map changed"),
                        Err(_) => return Broke::Lost("the slot map cannot be read"),
                    }
                }
            }
        }
    }

    /// Turns a message into an event for this watch, if it is one.
    fn event(&mut self, msg: &Msg) -> Option<WatchEvent> {
        let ns = self.inner.cfg.namespace.as_bytes();
        let channel = msg.get_channel_name();
        if channel == self.inner.channel {
            let change = Change::parse(msg.get_payload_bytes())?;
            let key = self.key_of(change.server_key.strip_prefix(ns)?)?;
            if !self.advance(&key, change.rev) {
                return None;
            }
            let prev = if self.request.with_prev_value {
                change.prev_entry(&key)
            } else {
                None
            };
            Some(if change.put {
                WatchEvent::Put {
                    entry: change.entry(&key),
                    prev,
                }
            } else {
                WatchEvent::Delete {
                    key,
                    revision: change.rev,
                    prev,
                }
            })
        } else if channel == self.expired {
            let key = self.key_of(msg.get_payload_bytes().strip_prefix(ns)?)?;
            let revision = self.last.get(&key).map_or(1, |r| r + 1);
            self.last.insert(key.clone(), revision);
            Some(WatchEvent::Expired {
                key,
                revision,
                prev: None,
            })
        } else {
            None
        }
    }

    fn key_of(&self, raw: &[u8]) -> Option<Key> {
        let name = std::str::from_utf8(raw).ok()?;
        if !self.request.target.matches(name) {
            return None;
        }
        Key::new(name).ok()
    }

    /// Records `rev` for `key`; `false` if it is not newer than the last.
    fn advance(&mut self, key: &Key, rev: Revision) -> bool {
        match self.last.get_mut(key) {
            Some(last) if *last >= rev => false,
            Some(last) => {
                *last = rev;
                true
            }
            None => {
                self.last.insert(key.clone(), rev);
                true
            }
        }
    }
}
