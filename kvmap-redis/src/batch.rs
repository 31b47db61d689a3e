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
use crate::slots::key_slot;
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

/// Runs `cmds` (each with its server key) in per-node pipelines; with
/// `wait` (a `WAIT`), each pipeline ends with it, on the same connection
/// as its writes, and each command also gets the replica count its
/// pipeline's `WAIT` answered (`None`: no `WAIT`, or it failed).
async fn exec(
    inner: &Arc<Inner>,
    cmds: Vec<(String, Cmd)>,
    write: bool,
    wait: Option<Cmd>,
) -> (Vec<Outcome>, Vec<Option<i64>>) {
    let n = cmds.len();
    let slots = if inner.client.is_cluster() {
        match inner.client.slots().await {
            Ok(s) => s,
            Err(_) => return ((0..n).map(|_| Outcome::Retry).collect(), vec![None; n]),
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
            let wait = wait.clone();
            async move {
                let idx: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for (_, c) in chunk {
                    pipe.add_command(c);
                }
                if let Some(w) = wait {
                    pipe.add_command(w);
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
    let mut acked: Vec<Option<i64>> = vec![None; n];
    let waited = usize::from(wait.is_some());
    for (idx, r) in results {
        match r {
            Ok(mut values) if values.len() == idx.len() + waited => {
                let replicas = if waited == 1 {
                    match values.pop() {
                        Some(Value::Int(r)) => Some(r),
                        _ => None,
                    }
                } else {
                    None
                };
                for &i in &idx {
                    acked[i] = replicas;
                }
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
    let out = out
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Retry))
        .collect();
    (out, acked)
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
    let (outcomes, _) = exec(inner, cmds, false, None).await;
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
/// mode every pipeline ends with a `WAIT` on its own connection, which
/// covers exactly the writes before it (a resent write is resent alone,
/// with its own `WAIT`).
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
    let durable = inner.cfg.durable_writes;
    let wait = durable.map(|d| crate::client::wait_cmd(d.replicas, d.timeout));
    let (outcomes, acked) = exec(inner, cmds, true, wait).await;
    let mut out = Vec::with_capacity(batch.ops.len());
    for (((op, o), wid), acked) in batch.ops.iter().zip(outcomes).zip(&wids).zip(acked) {
        let key = op.key();
        // A write whose pipeline lost its connection is resent alone with
        // the same write id: the script applies it at most once.
        let resend = matches!(&o, Outcome::Failed(e) if is_lost_reply(e));
        let replicated = |applied: bool| match (durable, applied) {
            (Some(d), true) => match acked {
                Some(n) => inner.check_acked(n, d, Op::Apply, key.as_str()),
                None => Err(inner.wait_failed(Op::Apply, key.as_str())),
            },
            _ => Ok(()),
        };
        out.push(match (op, o) {
            (BatchOp::Put { .. }, Outcome::Done(v)) => Inner::put_outcome(&v, key, Op::Apply)
                .and_then(|r| replicated(true).map(|()| BatchOutcome::Put(r))),
            (BatchOp::Delete { .. }, Outcome::Done(v)) => Inner::delete_outcome(&v, key, Op::Apply)
                .and_then(|d| replicated(d).map(|()| BatchOutcome::Deleted(d))),
            (_, Outcome::Failed(e)) if !resend => Err(map(e, Op::Apply, Some(key.as_str()))),
            (BatchOp::Put { value, options, .. }, _) => inner
                .put_one(key, value, options, Op::Apply, true, wid)
                .await
                .map(BatchOutcome::Put),
            (BatchOp::Delete { options, .. }, _) => inner
                .delete_one(key, options, Op::Apply, true, wid)
                .await
                .map(BatchOutcome::Deleted),
        });
    }
    out
}
