//! `get_many` and `apply`: commands grouped by the master that serves
//! their slot, sent as pipelines of [`CHUNK`] commands, all nodes (and
//! several chunks per node) concurrently.
//!
//! A command the server refused without running it (`MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN`, `NOSCRIPT`, ...; e.g. a slot moved since the
//! slot map was read) is retried alone through the normal path, which
//! follows redirects and loads scripts. A pipeline that fails as a whole
//! (connection lost) retries its reads; its writes fail with an
//! outcome-unknown error, since some may have been applied. Results are
//! per key: a batch is not atomic across keys.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use kvmap_core::{Batch, BatchOp, BatchOutcome, Entry, Key, Op, Result, RetryClass};
use redis::{Cmd, RedisError, ServerErrorKind as SK, Value};

use crate::client::{NodeAddr, SlotRange};
use crate::error::map;
use crate::scripts;
use crate::store::Inner;
use crate::wid::WriteId;

/// Commands per pipeline.
const CHUNK: usize = 64;
/// Pipelines in flight per batch.
const PIPELINES_IN_FLIGHT: usize = 64;

enum Outcome {
    Done(Value),
    /// Not run by the server: retry alone.
    Retry,
    Failed(RedisError),
}

/// The hash slot of a key (CRC16/XMODEM of the key or its `{hash tag}`).
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let mut k = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                k = &key[open + 1..open + 1 + len];
            }
        }
    }
    let mut crc: u16 = 0;
    for &b in k {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

fn master_of(slots: &[SlotRange], slot: u16) -> Option<&NodeAddr> {
    slots
        .iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .map(|r| &r.master)
}

fn not_run(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(
            SK::Moved
                | SK::Ask
                | SK::TryAgain
                | SK::ClusterDown
                | SK::MasterDown
                | SK::BusyLoading
                | SK::ReadOnly
                | SK::NoScript
        )
    )
}

/// Runs `cmds` (each with its server key) in per-node pipelines.
async fn exec(inner: &Arc<Inner>, cmds: Vec<(String, Cmd)>, write: bool) -> Vec<Outcome> {
    let n = cmds.len();
    let slots = if inner.client.is_cluster() {
        match inner.client.slots().await {
            Ok(s) => s,
            Err(_) => return (0..n).map(|_| Outcome::Retry).collect(),
        }
    } else {
        Vec::new()
    };
    let mut groups: HashMap<Option<NodeAddr>, Vec<(usize, Cmd)>> = HashMap::new();
    for (i, (skey, cmd)) in cmds.into_iter().enumerate() {
        let node = master_of(&slots, key_slot(skey.as_bytes())).cloned();
        groups.entry(node).or_default().push((i, cmd));
    }
    let mut jobs = Vec::new();
    for (node, members) in groups {
        let mut members = members.into_iter().peekable();
        while members.peek().is_some() {
            let chunk: Vec<(usize, Cmd)> = members.by_ref().take(CHUNK).collect();
            jobs.push((node.clone(), chunk));
        }
    }
    let mut out: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let results: Vec<(Vec<usize>, RedisResultVec)> = futures::stream::iter(jobs)
        .map(|(node, chunk)| {
            let inner = inner.clone();
            async move {
                let idx: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (_, c) in chunk {
                    pipe.add_command(c);
                }
                let r = match node {
                    // A cluster command whose slot has no known master is
                    // retried alone (the client refreshes the slot map).
                    None if inner.client.is_cluster() => Err(None),
                    None => inner.client.pipeline(&pipe, None).await.map_err(Some),
                    Some(node) => inner
                        .client
                        .pipeline(&pipe, Some(&node))
                        .await
                        .map_err(Some),
                };
                (idx, r)
            }
        })
        .buffer_unordered(PIPELINES_IN_FLIGHT)
        .collect()
        .await;
    for (idx, r) in results {
        match r {
            Ok(values) if values.len() == idx.len() => {
                for (i, v) in idx.into_iter().zip(values) {
                    out[i] = Some(match v {
                        Value::ServerError(e) => {
                            let e = RedisError::from(e);
                            if not_run(&e) {
                                Outcome::Retry
                            } else {
                                Outcome::Failed(e)
                            }
                        }
                        v => Outcome::Done(v),
                    });
                }
            }
            Err(Some(e)) if write && !not_run(&e) => {
                for i in idx {
                    out[i] = Some(Outcome::Failed(e.clone()));
                }
            }
            _ => {
                for i in idx {
                    out[i] = Some(Outcome::Retry);
                }
            }
        }
    }
    out.into_iter()
        .map(|o| o.unwrap_or(Outcome::Retry))
        .collect()
}

/// A connection-level failure after which a write may or may not have
/// run (its reply was lost): resent with its write id.
fn is_lost_reply(e: &RedisError) -> bool {
    map(e.clone(), Op::Apply, None).retry_class() == RetryClass::OutcomeUnknown
}

type RedisResultVec = std::result::Result<Vec<Value>, Option<RedisError>>;

/// Reads `keys`, one result per key.
pub(crate) async fn get_many(inner: &Arc<Inner>, keys: Vec<Key>) -> Vec<Result<Option<Entry>>> {
    let cmds = keys
        .iter()
        .map(|k| (inner.server_key(k.as_str()), inner.read_cmd(k, false)))
        .collect();
    let outcomes = exec(inner, cmds, false).await;
    let mut out = Vec::with_capacity(keys.len());
    for (k, o) in keys.iter().zip(outcomes) {
        out.push(match o {
            Outcome::Done(v) => scripts::entry_from_fields(k, &v, false, Op::GetMany),
            Outcome::Failed(e) => Err(map(e, Op::GetMany, Some(k.as_str()))),
            Outcome::Retry => inner.read(k, false, Op::GetMany).await,
        });
    }
    out
}

/// Applies the operations, one result per operation; in durable-write
/// mode one `WAIT` on every master at the end.
pub(crate) async fn apply(inner: &Arc<Inner>, batch: Batch) -> Vec<Result<BatchOutcome>> {
    let wids: Vec<WriteId> = batch.ops.iter().map(|_| WriteId::new()).collect();
    let mut cmds = Vec::with_capacity(batch.ops.len());
    for (op, wid) in batch.ops.iter().zip(&wids) {
        let cmd = match op {
            BatchOp::Put {
                key,
                value,
                options,
            } => inner.put_cmd(key, value, options, Op::Apply, wid),
            BatchOp::Delete { key, options } => inner.delete_cmd(key, options, Op::Apply, wid),
        };
        match cmd {
            Ok(cmd) => cmds.push((inner.server_key(op.key().as_str()), cmd)),
            // Only a missing slot tag fails here, before anything is sent.
            Err(e) => return batch.ops.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    let outcomes = exec(inner, cmds, true).await;
    let mut out = Vec::with_capacity(batch.ops.len());
    for ((op, o), wid) in batch.ops.iter().zip(outcomes).zip(&wids) {
        let key = op.key();
        // A write whose pipeline lost its connection is resent alone with
        // the same write id: the script applies it at most once.
        let resend = matches!(&o, Outcome::Failed(e) if is_lost_reply(e));
        out.push(match (op, o) {
            (BatchOp::Put { .. }, Outcome::Done(v)) => {
                Inner::put_outcome(&v, key, Op::Apply).map(BatchOutcome::Put)
            }
            (BatchOp::Delete { .. }, Outcome::Done(v)) => {
                Inner::delete_outcome(&v, key, Op::Apply).map(BatchOutcome::Deleted)
            }
            (_, Outcome::Failed(e)) if !resend => Err(map(e, Op::Apply, Some(key.as_str()))),
            (BatchOp::Put { value, options, .. }, _) => inner
                .put_one(key, value, options, Op::Apply, false, wid)
                .await
                .map(BatchOutcome::Put),
            (BatchOp::Delete { options, .. }, _) => inner
                .delete_one(key, options, Op::Apply, false, wid)
                .await
                .map(BatchOutcome::Deleted),
        });
    }

    if inner.cfg.durable_writes.is_some() && out.iter().any(Result::is_ok) {
        if let Err(e) = inner.durable(None, Op::Apply, "").await {
            let e = e.with_retry(RetryClass::OutcomeUnknown);
            return out
                .into_iter()
                .map(|r| r.and_then(|_| Err(e.clone())))
                .collect();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification / CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"kvmap:{user42}/a"), key_slot(b"user42"));
        assert_eq!(key_slot(b"a{}b"), key_slot(b"a{}b"));
    }
}
