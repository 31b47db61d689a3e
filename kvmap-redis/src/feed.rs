//! The subscriptions behind a watch: which connections carry its change
//! events and expiry notifications, merged into one stream of
//! [`Feed`] items.
//!
//! - **Change events, cluster**: every write `SPUBLISH`es on its key's own
//!   shard channel `{T}<key_prefix>__kvmap_events` (`T` a hash tag of the
//!   key's slot), so the key's master delivers the event to its own
//!   subscribers; nothing crosses the cluster bus. The watcher opens a
//!   cluster connection of its own (RESP3, pushes to one channel) and
//!   `SSUBSCRIBE`s the shard channel of every slot its range can touch: one
//!   slot for a key watch or for a prefix that fixes the hash tag, all
//!   16384 otherwise. The library reports a dropped node connection with a
//!   `Disconnection` push and the server ends a shard subscription whose
//!   slot it no longer serves with an `sunsubscribe` push: both are
//!   [`Feed::Lost`].
//! - **Change events, standalone**: `PUBLISH`/`SUBSCRIBE` on the one
//!   channel, on the same connection as the expiry notifications.
//! - **Expiry**: `__keyevent@<db>__:expired` on a dedicated pub/sub
//!   connection per master (Redis reports expiry only on the node that
//!   owns the key). The end of such a connection is [`Feed::Lost`].
//! - **Heartbeats** (cluster): per master, one of its subscribed shard
//!   channels is its *beacon*; the watcher publishes a heartbeat on it
//!   every poll and expects it back on the subscription (see
//!   `watch::Watcher::pump`), so a subscription that went quiet without
//!   an error is noticed too.

use std::collections::HashMap;
use std::pin::Pin;

use futures::{Stream, StreamExt, TryStreamExt};
use kvmap_core::{ErrorKind, Op, Result, WatchTarget};
use redis::cluster_async::ClusterConnection;
use redis::PushKind;

use crate::client::{NodeAddr, SlotRange};
use crate::error::{map, own};
use crate::slots::{key_slot, tag_of_slot};
use crate::store::{shard_channel, Inner};

/// How many `SSUBSCRIBE`s are in flight at once while subscribing.
const SUBSCRIBE_IN_FLIGHT: usize = 1024;

/// One item of a watch's merged subscriptions.
pub(crate) enum Feed {
    /// A message: channel and payload.
    Message(Vec<u8>, Vec<u8>),
    /// Continuity is lost: a connection ended or a subscription was
    /// dropped (why).
    Lost(&'static str),
}

pub(crate) type FeedStream = Pin<Box<dyn Stream<Item = Feed> + Send>>;

/// Live subscriptions: one merged stream, the slot map they were made
/// for, the watcher's own cluster connection (kept open while they live)
/// and each master's beacon channel.
pub(crate) struct Subs {
    pub(crate) messages: FeedStream,
    pub(crate) slots: Vec<SlotRange>,
    _sharded: Option<ClusterConnection>,
    pub(crate) beacons: Vec<(NodeAddr, String)>,
}

/// The channel of expiry notifications.
pub(crate) fn expired_channel(inner: &Inner) -> String {
    format!("__keyevent@{}__:expired", inner.client.db())
}

/// The slots whose keys `target` can match: the key's slot, the slot a
/// prefix fixes through a complete `{hash tag}`, or every slot.
pub(crate) fn target_slots(inner: &Inner, target: &WatchTarget) -> Vec<usize> {
    let fixed = match target {
        WatchTarget::Key(k) => Some(inner.server_key(k.as_str())),
        WatchTarget::Prefix(p) => {
            let s = inner.server_key(p);
            let tag_closed = s
                .find('{')
                .and_then(|open| s[open + 1..].find('}'))
                .is_some_and(|len| len > 0);
            tag_closed.then_some(s)
        }
    };
    match fixed {
        Some(s) => vec![usize::from(key_slot(s.as_bytes()))],
        None => (0..crate::slots::SLOTS).collect(),
    }
}

/// Subscribes: change events (see the module docs) and, with expiry
/// events on, the expiry channel on every master. Returns once every
/// subscription is confirmed by its server: every change committed after
/// that is delivered.
pub(crate) async fn subscribe(
    inner: &Inner,
    target: &WatchTarget,
    recheck_notifications: bool,
) -> Result<Subs> {
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
        if recheck_notifications || verified.as_deref() != Some(&slots[..]) {
            crate::watch::ensure_expiry_notifications(inner, &slots).await?;
            *verified = Some(slots.clone());
        }
    }
    let cluster = inner.client.is_cluster();
    let expired = expired_channel(inner);
    let mut streams: Vec<FeedStream> = Vec::new();
    for node in &masters {
        let mut channels = Vec::new();
        if !cluster {
            channels.push(inner.channel.clone());
        }
        if expiry {
            channels.push(expired.clone());
        }
        if channels.is_empty() {
            continue;
        }
        let mut ps = inner
            .client
            .pubsub(node)
            .await
            .map_err(|e| map(e, Op::Watch, None))?;
        ps.subscribe(&channels)
            .await
            .map_err(|e| map(e, Op::Watch, None))?;
        let s = ps
            .into_on_message()
            .map(|m| {
                Feed::Message(
                    m.get_channel_name().as_bytes().to_vec(),
                    m.get_payload_bytes().to_vec(),
                )
            })
            .chain(futures::stream::once(async {
                Feed::Lost("a subscription connection ended")
            }));
        streams.push(Box::pin(s));
    }
    let mut sharded = None;
    let mut beacons = Vec::new();
    if cluster {
        let wanted = target_slots(inner, target);
        let (conn, stream) = subscribe_shards(inner, &wanted).await?;
        sharded = Some(conn);
        streams.push(stream);
        beacons = beacons_of(inner, &slots, &wanted);
    }
    Ok(Subs {
        messages: Box::pin(futures::stream::select_all(streams)),
        slots,
        _sharded: sharded,
        beacons,
    })
}

/// Opens the watcher's cluster connection and subscribes the shard
/// channels of `wanted` slots.
async fn subscribe_shards(
    inner: &Inner,
    wanted: &[usize],
) -> Result<(ClusterConnection, FeedStream)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = inner
        .client
        .sharded_subscriber(tx)
        .await
        .map_err(|e| map(e, Op::Watch, None))?
        .ok_or_else(|| {
            own(
                ErrorKind::Internal,
                Op::Watch,
                None,
                "shard channels need a cluster connection",
            )
        })?;
    let channels: Vec<String> = wanted
        .iter()
        .filter_map(|&s| tag_of_slot(s))
        .map(|t| shard_channel(t, &inner.channel))
        .collect();
    futures::stream::iter(channels.into_iter().map(|ch| {
        let mut c = conn.clone();
        async move { c.ssubscribe(ch).await }
    }))
    .buffer_unordered(SUBSCRIBE_IN_FLIGHT)
    .try_collect::<Vec<()>>()
    .await
    .map_err(|e| map(e, Op::Watch, None))?;
    let pushes =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) });
    let stream = pushes
        .filter_map(|push| async move {
            match push.kind {
                PushKind::SMessage | PushKind::Message => {
                    let mut it = push.data.into_iter();
                    match (it.next(), it.next()) {
                        (
                            Some(redis::Value::BulkString(ch)),
                            Some(redis::Value::BulkString(payload)),
                        ) => Some(Feed::Message(ch, payload)),
                        _ => Some(Feed::Lost("an unreadable shard message")),
                    }
                }
                PushKind::Disconnection => {
                    Some(Feed::Lost("a shard subscription connection dropped"))
                }
                PushKind::SUnsubscribe => Some(Feed::Lost(
                    "the server ended a shard subscription (its slot moved)",
                )),
                _ => None,
            }
        })
        .chain(futures::stream::once(async {
            Feed::Lost("the shard subscription ended")
        }));
    Ok((conn, Box::pin(stream)))
}

/// Per master, the shard channel of the first wanted slot it serves.
fn beacons_of(inner: &Inner, slots: &[SlotRange], wanted: &[usize]) -> Vec<(NodeAddr, String)> {
    let mut out: HashMap<NodeAddr, String> = HashMap::new();
    for &s in wanted {
        let Some(range) = slots
            .iter()
            .find(|r| usize::from(r.start) <= s && s <= usize::from(r.end))
        else {
            continue;
        };
        if out.contains_key(&range.master) {
            continue;
        }
        if let Some(tag) = tag_of_slot(s) {
            out.insert(range.master.clone(), shard_channel(tag, &inner.channel));
        }
    }
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort();
    v
}
