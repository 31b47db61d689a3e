//! Watch: change events published by the write scripts, plus keyspace
//! notifications for TTL expiry (the subscriptions are in [`crate::feed`]).
//!
//! # Design
//! - Every write script publishes `(kind, key, revision, create revision,
//!   expiry, previous entry, value)` atomically with the write: in a
//!   cluster with `SPUBLISH` on the key's own shard channel (delivered by
//!   the key's master, never over the cluster bus), on a standalone
//!   server with `PUBLISH`.
//! - Expiry is not a write: Redis reports it only as a keyspace
//!   notification (`__keyevent@<db>__:expired`), on the node that owns the
//!   key. With `expiry_events` on, the watcher subscribes to it on every
//!   master and makes sure `notify-keyspace-events` has `E` and `x` (set
//!   with `CONFIG SET` if needed, on masters and replicas; if refused the
//!   watch fails with a typed error), again after every lost connection
//!   (a restarted server forgets a `CONFIG SET`). The expiry's revision is
//!   its expiry time in µs on the master's clock (the revision scheme of
//!   the scripts), at least the last revision seen plus one; its `prev`
//!   is the entry of the key's last `Put` this watch delivered, when asked
//!   for (the server drops the value before it notifies).
//! - In a cluster the expiry notification and the key's change events
//!   arrive on two connections to the key's master, so an `Expired` could
//!   overtake the `Put` it ends. It is therefore held: the watcher
//!   publishes a marker on the key's shard channel and delivers the
//!   `Expired` when the marker comes back; the server sent every earlier
//!   event of the key before it, so the `Put` has been delivered by then.
//!   If an event of the same key arrives while the `Expired` is held (a
//!   late `Put`, or the key written again right after it expired), which
//!   came first cannot be told: the watch resyncs instead.
//! - Events of a key are delivered in revision order: an event whose
//!   revision is not above the last one seen for its key is dropped. A
//!   deleted or expired key is forgotten; the map is bounded (see
//!   [`KEY_MEMORY`]): past the bound it is cleared and a `Resync` follows.
//! - Pub/sub is fire-and-forget, so continuity is lost whenever a
//!   subscription connection drops, the server ends a shard subscription,
//!   the slot map changes (failover, slot move; checked every
//!   [`TOPOLOGY_POLL`]), a master's heartbeat does not come back on its
//!   shard channel within two polls, a message cannot be read, or the
//!   consumer falls more than `watch_buffer` events behind. Each time, the
//!   watcher resubscribes, then emits [`WatchEvent::Resync`] with the
//!   range's current state read after the new subscription is in place:
//!   never a silent gap.
//! - No history is kept: `start_revision` is `Unsupported`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use kvmap_core::backend::Scope;
use kvmap_core::{
    Capability, Context, Entry, Error, ErrorKind, Key, Op, Result, Revision, WatchEvent,
    WatchRequest, WatchStream,
};
use tokio::sync::mpsc;

use crate::client::{NodeAddr, SlotRange};
use crate::error::{map, own, BACKEND};
use crate::feed::{expired_channel, subscribe, Feed, Subs};
use crate::list::{fetch_in_order, scan_range};
use crate::scripts::Change;
use crate::slots::{slot_index, tag_of_slot};
use crate::store::{shard_channel, Inner, RedisStore};

/// How often a cluster watcher compares the slot map.
pub(crate) const TOPOLOGY_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How many keys a watcher remembers the last revision of before it
/// forgets them all and resyncs (or twice the keys of its last resync,
/// if more).
pub(crate) const KEY_MEMORY: usize = 100_000;

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
    // Setting up is many round trips (one `SSUBSCRIBE` per slot of the
    // range in a cluster), each bounded by `op_timeout` on its own; the
    // context's deadline bounds the whole.
    let scope = Scope {
        timeout: None,
        ..scope
    };
    let subs = ctx
        .run(scope, subscribe(&inner, &request.target, false))
        .await?;
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

/// Makes sure every node reports expiry (`notify-keyspace-events` with `E`
/// and `x`), enabling it where needed.
pub(crate) async fn ensure_expiry_notifications(inner: &Inner, slots: &[SlotRange]) -> Result<()> {
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

struct Watcher {
    inner: Arc<Inner>,
    request: WatchRequest,
    tx: mpsc::Sender<Result<WatchEvent>>,
    /// The last revision delivered per key (bounded, see [`KEY_MEMORY`]).
    last: HashMap<Key, Revision>,
    /// The entry of the last `Put` delivered per key that has an expiry
    /// (its value only with `with_prev_value`): the revision and `prev`
    /// of its `Expired`. Its keys are a subset of `last`'s.
    expiring: HashMap<Key, Entry>,
    /// The keys of the last resync.
    resynced: usize,
    expired: String,
}

enum Broke {
    Lost(&'static str),
    Overflow,
    Forgot,
    Closed,
}

/// What a message is to this watch.
enum Step {
    Deliver(WatchEvent),
    /// A key in range expired (its event is built when delivered).
    Expiry(Key),
    Skip,
    /// A heartbeat of ours came back.
    Heartbeat(String),
    Lost(&'static str),
}

/// An expiry held until its marker comes back (cluster).
struct Held {
    marker: String,
    key: Key,
    /// The watch had delivered the key's last `Put` (with its expiry)
    /// when the notification came.
    known: bool,
    /// The events of the same key that arrived meanwhile (`true`: a
    /// `Put` with an expiry).
    crossed: Vec<bool>,
}

/// Heartbeat payloads start with this (no change event does).
const HEARTBEAT: &str = "H ";

impl Watcher {
    fn new(inner: Arc<Inner>, request: WatchRequest, tx: mpsc::Sender<Result<WatchEvent>>) -> Self {
        let expired = expired_channel(&inner);
        Self {
            inner,
            request,
            tx,
            last: HashMap::new(),
            expiring: HashMap::new(),
            resynced: 0,
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
                // After a lost connection the notification settings are
                // checked again: a restarted server forgets `CONFIG SET`.
                None => match subscribe(&self.inner, &self.request.target, true).await {
                    Ok(s) => s,
                    Err(e) if Self::permanent(&e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e.report(), "redis watch: resubscribe failed, retrying");
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
                        tracing::debug!(error = %e.report(), "redis watch: resync failed, retrying");
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
                Broke::Forgot => {
                    tracing::debug!(
                        keys = self.last.len(),
                        "redis watch: key memory full, resyncing"
                    );
                    self.last.clear();
                    self.expiring.clear();
                    resync = true;
                }
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
        self.resynced = entries.len();
        self.expiring.clear();
        for e in &entries {
            revision = revision.max(e.revision);
            let last = self.last.entry(e.key.clone()).or_insert(0);
            *last = (*last).max(e.revision);
            if e.expires_at.is_some() {
                let mut kept = e.clone();
                if !self.request.with_prev_value {
                    kept.value = Bytes::new();
                }
                self.expiring.insert(e.key.clone(), kept);
            }
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

    /// The most keys remembered before they are all forgotten.
    fn key_memory(&self) -> usize {
        KEY_MEMORY.max(self.resynced.saturating_mul(2))
    }

    /// Delivers events until continuity is lost or the consumer leaves.
    async fn pump(&mut self, mut subs: Subs) -> Broke {
        let cluster = self.inner.client.is_cluster();
        let mut tick = tokio::time::interval(TOPOLOGY_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // Heartbeats and markers sent and not yet back: payload -> polls
        // since sent.
        let mut pending: HashMap<String, u32> = HashMap::new();
        // Cluster: `Expired` events waiting for their marker.
        let mut held: Vec<Held> = Vec::new();
        loop {
            tokio::select! {
                () = self.tx.closed() => return Broke::Closed,
                m = subs.messages.next() => match m {
                    Some(Feed::Message(channel, payload)) => {
                        match self.event(&channel, &payload) {
                            Step::Deliver(ev) => {
                                if let Some(k) = ev.key() {
                                    let timed = matches!(
                                        &ev,
                                        WatchEvent::Put { entry, .. } if entry.expires_at.is_some()
                                    );
                                    for h in held.iter_mut().filter(|h| &h.key == k) {
                                        h.crossed.push(timed);
                                    }
                                }
                                if let Some(b) = self.deliver(ev) {
                                    return b;
                                }
                            }
                            Step::Expiry(key) if cluster => {
                                let Some(marker) = self.marker(&key).await else {
                                    return Broke::Lost("an expiry's marker could not be published");
                                };
                                pending.insert(marker.clone(), 0);
                                let known = self.expiring.contains_key(&key);
                                held.push(Held { marker, key, known, crossed: Vec::new() });
                            }
                            Step::Expiry(key) => {
                                let ev = self.expired(key);
                                if let Some(b) = self.deliver(ev) {
                                    return b;
                                }
                            }
                            Step::Skip => {}
                            Step::Heartbeat(h) => {
                                pending.remove(&h);
                                if let Some(i) = held.iter().position(|x| x.marker == h) {
                                    let x = held.remove(i);
                                    let again = held.iter().any(|o| o.key == x.key);
                                    if !self.in_order(&x, again).await {
                                        return Broke::Lost(
                                            "an expiry crossed another event of the same key",
                                        );
                                    }
                                    let ev = self.expired(x.key);
                                    if let Some(b) = self.deliver(ev) {
                                        return b;
                                    }
                                }
                            }
                            Step::Lost(why) => return Broke::Lost(why),
                        }
                        if self.last.len() > self.key_memory() {
                            return Broke::Forgot;
                        }
                    }
                    Some(Feed::Lost(why)) => return Broke::Lost(why),
                    None => return Broke::Lost("every subscription ended"),
                },
                _ = tick.tick(), if cluster => {
                    match self.inner.client.slots().await {
                        Ok(now) if now == subs.slots => {}
                        Ok(_) => return Broke::Lost("the slot map changed"),
                        Err(_) => return Broke::Lost("the slot map cannot be read"),
                    }
                    if let Some(why) = self.heartbeat(&subs.beacons, &mut pending).await {
                        return Broke::Lost(why);
                    }
                }
            }
        }
    }

    /// Sends `ev` to the consumer; `Some` if the watch must stop or
    /// resync.
    fn deliver(&self, ev: WatchEvent) -> Option<Broke> {
        match self.tx.try_send(Ok(ev)) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => Some(Broke::Overflow),
            Err(mpsc::error::TrySendError::Closed(_)) => Some(Broke::Closed),
        }
    }

    /// Checks that every heartbeat (or marker) sent two polls ago came
    /// back, then publishes one on every master's beacon channel.
    async fn heartbeat(
        &self,
        beacons: &[(NodeAddr, String)],
        pending: &mut HashMap<String, u32>,
    ) -> Option<&'static str> {
        for polls in pending.values_mut() {
            *polls += 1;
            if *polls > 2 {
                return Some("a master's heartbeat did not come back on its shard channel");
            }
        }
        for (_, channel) in beacons {
            let Some(payload) = self.publish_heartbeat(channel).await else {
                return Some("a heartbeat could not be published");
            };
            pending.insert(payload, 0);
        }
        None
    }

    /// Publishes a heartbeat payload on a shard channel; returns it.
    async fn publish_heartbeat(&self, channel: &str) -> Option<String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let payload = format!(
            "{HEARTBEAT}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, AtomicOrdering::Relaxed)
        );
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(&payload);
        let sent = self.inner.client.query_on_key::<i64>(&cmd, channel).await;
        sent.ok().map(|_| payload)
    }

    /// Whether a held expiry whose marker came back can be delivered now,
    /// in order: no other event of its key came meanwhile, or exactly
    /// one `Put` with an expiry the watch had not seen before the
    /// notification (the late `Put` this expiry ends) and the key is
    /// absent now. `again`: another expiry of the key is still held.
    /// Anything else cannot be ordered (the key was written again right
    /// after it expired): the caller resyncs.
    async fn in_order(&self, held: &Held, again: bool) -> bool {
        match held.crossed.as_slice() {
            [] => true,
            [true] if !held.known && !again => {
                let server_key = self.inner.server_key(held.key.as_str());
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(&server_key);
                let n = self
                    .inner
                    .client
                    .query_on_key::<i64>(&cmd, &server_key)
                    .await;
                matches!(n, Ok(0))
            }
            _ => false,
        }
    }

    /// Publishes the marker of a held expiry on its key's shard channel
    /// (which this watch subscribes: the key is in its range).
    async fn marker(&self, key: &Key) -> Option<String> {
        let server_key = self.inner.server_key(key.as_str());
        let tag = tag_of_slot(slot_index(server_key.as_bytes()))?;
        let channel = shard_channel(tag, &self.inner.channel);
        self.publish_heartbeat(&channel).await
    }

    /// What a message is to this watch.
    fn event(&mut self, channel: &[u8], payload: &[u8]) -> Step {
        if channel == self.expired.as_bytes() {
            return self.expired_event(payload);
        }
        if let Some(h) = payload.strip_prefix(HEARTBEAT.as_bytes()) {
            return match std::str::from_utf8(h) {
                Ok(h) => Step::Heartbeat(format!("{HEARTBEAT}{h}")),
                Err(_) => Step::Skip,
            };
        }
        // Anything else on an event channel must be a change event: one
        // that cannot be read may hide a change, so it costs a resync.
        let Some(change) = Change::parse(payload) else {
            return Step::Lost("a change event could not be read");
        };
        let ns = self.inner.cfg.key_prefix.as_bytes();
        let Some(key) = change
            .server_key
            .strip_prefix(ns)
            .and_then(|raw| self.key_of(raw))
        else {
            return Step::Skip;
        };
        if !self.advance(&key, change.rev) {
            return Step::Skip;
        }
        let prev = if self.request.with_prev_value {
            change.prev_entry(&key)
        } else {
            None
        };
        Step::Deliver(if change.put {
            let entry = change.entry(&key);
            if entry.expires_at.is_some() {
                let mut kept = entry.clone();
                if !self.request.with_prev_value {
                    kept.value = Bytes::new();
                }
                self.expiring.insert(key.clone(), kept);
            } else {
                self.expiring.remove(&key);
            }
            WatchEvent::Put { entry, prev }
        } else {
            self.last.remove(&key);
            self.expiring.remove(&key);
            WatchEvent::Delete {
                key,
                revision: change.rev,
                prev,
            }
        })
    }

    fn expired_event(&self, payload: &[u8]) -> Step {
        let ns = self.inner.cfg.key_prefix.as_bytes();
        match payload.strip_prefix(ns).and_then(|raw| self.key_of(raw)) {
            Some(key) => Step::Expiry(key),
            None => Step::Skip,
        }
    }

    /// The `Expired` event of `key`, which is forgotten.
    fn expired(&mut self, key: Key) -> WatchEvent {
        let after_last = self.last.remove(&key).map_or(1, |r| r + 1);
        let seen = self.expiring.remove(&key);
        let at = seen
            .as_ref()
            .and_then(|e| e.expires_at)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| Revision::try_from(d.as_micros()).ok())
            .unwrap_or(0);
        let prev = seen.filter(|_| self.request.with_prev_value);
        WatchEvent::Expired {
            key,
            revision: after_last.max(at),
            prev,
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
