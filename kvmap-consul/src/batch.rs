//! `/v1/txn`: the transaction machinery every write goes through, atomic
//! batches ([`KvStore::apply`](kvmap_core::KvStore::apply)) and
//! `get_many` as one read transaction.
//!
//! A write is planned against a pre-read of the keys whose outcome depends
//! on their current state (conditional writes, deletes, creates over an
//! expired entry). Every planned operation carries a guard on the state it
//! was planned from (`cas` / `delete-cas` on the read `ModifyIndex`,
//! `check-not-exists` for an absent key), so the transaction commits only
//! if nothing changed since the read; if something did, nothing was
//! written and the plan is made again from a fresh read.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use kvmap_core::{
    Batch, BatchOp, BatchOutcome, Consistency, Context, DeleteOptions, Entry, Error, ErrorKind,
    Key, Op, PutMode, PutOptions, Result, Revision,
};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::codec::{b64, decode, expiry_flags, RawKv};
use crate::error::own;
use crate::store::Inner;

/// How often a write is planned again when its guards failed because the
/// key changed between the pre-read and the transaction.
const REPLAN_ATTEMPTS: usize = 8;

/// One operation of a Consul transaction.
#[derive(Debug, Clone)]
pub(crate) enum TxnOp {
    /// `get-tree` on a key or prefix (read-only; never fails).
    GetTree(String),
    /// `set` unconditionally.
    Set {
        key: String,
        value: Bytes,
        flags: u64,
    },
    /// `cas` on `index` (0: create only).
    Cas {
        key: String,
        value: Bytes,
        flags: u64,
        index: u64,
    },
    /// `delete` unconditionally.
    Delete(String),
    /// `delete-cas` on `index`.
    DeleteCas { key: String, index: u64 },
    /// `check-not-exists`.
    CheckNotExists(String),
    /// `check-index` on `index`.
    CheckIndex { key: String, index: u64 },
    /// `lock` with `session` (Consul's `?acquire=`), setting value and flags.
    Lock {
        key: String,
        value: Bytes,
        flags: u64,
        session: String,
    },
}

impl TxnOp {
    fn to_json(&self) -> Value {
        let kv = match self {
            TxnOp::GetTree(k) => json!({"Verb": "get-tree", "Key": k}),
            TxnOp::Set { key, value, flags } => {
                json!({"Verb": "set", "Key": key, "Value": b64(value), "Flags": flags})
            }
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => {
                json!({"Verb": "cas", "Key": key, "Value": b64(value), "Flags": flags, "Index": index})
            }
            TxnOp::Delete(k) => json!({"Verb": "delete", "Key": k}),
            TxnOp::DeleteCas { key, index } => {
                json!({"Verb": "delete-cas", "Key": key, "Index": index})
            }
            TxnOp::CheckNotExists(k) => json!({"Verb": "check-not-exists", "Key": k}),
            TxnOp::CheckIndex { key, index } => {
                json!({"Verb": "check-index", "Key": key, "Index": index})
            }
            TxnOp::Lock {
                key,
                value,
                flags,
                session,
            } => {
                json!({"Verb": "lock", "Key": key, "Value": b64(value), "Flags": flags, "Session": session})
            }
        };
        json!({ "KV": kv })
    }

    fn is_read(&self) -> bool {
        matches!(self, TxnOp::GetTree(_))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default)]
    results: Option<Vec<TxnResultKv>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResultKv {
    #[serde(rename = "KV")]
    kv: Option<RawKv>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// What a transaction returned.
pub(crate) enum TxnOutcome {
    /// Committed (or read); the result entries in order.
    Done(Vec<RawKv>),
    /// Rolled back: the failing operations (index, reason). Nothing was
    /// written.
    Failed(Vec<(usize, String)>),
}

impl Inner {
    /// Sends one transaction.
    pub(crate) async fn txn(
        &self,
        ctx: &Context,
        ops: &[TxnOp],
        op: Op,
        key: Option<&str>,
    ) -> Result<TxnOutcome> {
        let body = Value::Array(ops.iter().map(TxnOp::to_json).collect());
        let body = serde_json::to_vec(&body)
            .map_err(|e| own(ErrorKind::Internal, op, key, format!("encoding a txn: {e}")))?;
        if body.len() > self.cfg.txn_max_bytes {
            return Err(own(
                ErrorKind::InvalidArgument,
                op,
                key,
                format!(
                    "the transaction would be {} bytes, above consul's txn_max_req_len of {} bytes; nothing was sent",
                    body.len(),
                    self.cfg.txn_max_bytes
                ),
            ));
        }
        let read_only = ops.iter().all(TxnOp::is_read);
        let query = if read_only {
            self.consistency_query(ctx)
        } else {
            Vec::new()
        };
        let ans = self
            .client
            .send(
                Method::PUT,
                "txn",
                &query,
                Some(body),
                self.cfg.request_timeout,
                op,
                key,
            )
            .await?;
        if read_only {
            self.check_fresh(ctx, ans.known_leader, ans.last_contact, op, key)?;
        }
        let resp: TxnResponse = serde_json::from_slice(&ans.body).map_err(|e| {
            own(
                ErrorKind::InvalidData,
                op,
                key,
                format!("consul txn answer ({}) is not json: {e}", ans.status),
            )
        })?;
        if let Some(errors) = resp.errors.filter(|e| !e.is_empty()) {
            return Ok(TxnOutcome::Failed(
                errors.into_iter().map(|e| (e.op_index, e.what)).collect(),
            ));
        }
        let results = resp
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .collect();
        Ok(TxnOutcome::Done(results))
    }

    /// Reads the current entries of `keys` in one read transaction (a
    /// snapshot), expired ones included and marked.
    pub(crate) async fn pre_read(
        &self,
        ctx: &Context,
        keys: &[&Key],
        op: Op,
    ) -> Result<HashMap<Key, Current>> {
        let mut out = HashMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        let ops: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::GetTree(self.consul_key(k.as_str())))
            .collect();
        let first = keys.first().map(|k| k.as_str());
        let TxnOutcome::Done(raws) = self.txn(ctx, &ops, op, first).await? else {
            return Err(own(
                ErrorKind::Internal,
                op,
                first,
                "a read-only transaction was rolled back",
            ));
        };
        let now = SystemTime::now();
        for raw in raws {
            let consul_key = raw.key.clone();
            let Some(d) = decode(raw, &self.cfg.key_prefix, false, now, op)? else {
                continue;
            };
            if keys
                .iter()
                .any(|k| self.consul_key(k.as_str()) == consul_key)
            {
                if d.expired {
                    self.reaper.note(&d.entry);
                }
                out.insert(
                    d.entry.key.clone(),
                    Current {
                        revision: d.entry.revision,
                        live: !d.expired,
                        entry: d.entry,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Applies `ops` atomically: plans against a pre-read, sends one
    /// guarded transaction, plans again if a guard failed.
    pub(crate) async fn write_ops(
        &self,
        ctx: &Context,
        ops: &[BatchOp],
        op: Op,
    ) -> Result<Vec<BatchOutcome>> {
        let key = (ops.len() == 1).then(|| ops[0].key().as_str());
        let mut last_conflict = None;
        for _ in 0..REPLAN_ATTEMPTS {
            let keys: Vec<&Key> = needs_read(ops);
            let current = self.pre_read(ctx, &keys, op).await?;
            let plan = plan(self, ops, &current).map_err(|e| e.in_context("consul", op, key))?;
            match self.txn(ctx, &plan.txn, op, key).await? {
                TxnOutcome::Done(results) => {
                    let outcomes = plan.outcomes(&results, op, key)?;
                    self.after_write(ops, &outcomes, &results);
                    return Ok(outcomes);
                }
                TxnOutcome::Failed(errors) => {
                    if let Some(e) = refusal(&errors, op, key) {
                        return Err(e);
                    }
                    // A guard failed: the key changed since the pre-read.
                    // Nothing was written; plan again from a fresh read.
                    let what = errors
                        .iter()
                        .map(|(i, w)| format!("op {i}: {w}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::debug!(target: "kvmap_consul", %what, "txn guard failed, planning again");
                    last_conflict = Some(what);
                }
            }
        }
        Err(own(
            ErrorKind::Unavailable,
            op,
            key,
            format!(
                "the keys kept changing between read and write ({REPLAN_ATTEMPTS} attempts); nothing was written: {}",
                last_conflict.unwrap_or_default()
            ),
        ))
    }

    /// Publishes own writes to this process's watchers and tells the
    /// reaper about TTL entries.
    fn after_write(&self, ops: &[BatchOp], outcomes: &[BatchOutcome], results: &[RawKv]) {
        let mut r = results.iter();
        for (op, outcome) in ops.iter().zip(outcomes) {
            if let BatchOutcome::Put(rev) = outcome {
                self.after_put(op, *rev, r.next());
            }
        }
    }

    /// Publishes one own put to this process's watchers and tells the
    /// reaper about a TTL entry. `raw` is the txn's result entry.
    pub(crate) fn after_put(&self, op: &BatchOp, rev: Revision, raw: Option<&RawKv>) {
        if let BatchOp::Put {
            key,
            value,
            options,
        } = op
        {
            let create = raw.map_or(rev, |r| r.create_index);
            let expires_at = options.ttl.and_then(|t| SystemTime::now().checked_add(t));
            let entry =
                Entry::new(key.clone(), value.clone(), rev, create).with_expires_at(expires_at);
            if expires_at.is_some() {
                self.reaper.note(&entry);
            }
            self.feed.publish(entry);
        }
    }

    /// `get_many` as one read transaction: a snapshot of all the keys.
    pub(crate) async fn get_many_txn(
        &self,
        ctx: &Context,
        keys: &[Key],
    ) -> Result<Vec<Result<Option<Entry>>>> {
        let refs: Vec<&Key> = keys.iter().collect();
        let current = self.pre_read(ctx, &refs, Op::GetMany).await?;
        let staleness = self.staleness_marker(ctx);
        Ok(keys
            .iter()
            .map(|k| {
                Ok(current
                    .get(k)
                    .filter(|c| c.live)
                    .map(|c| c.entry.clone().with_staleness(staleness)))
            })
            .collect())
    }
}

/// An operation error of a rolled-back transaction that is not a failed
/// guard: an ACL refusal or a bad operation. Nothing was written.
pub(crate) fn refusal(errors: &[(usize, String)], op: Op, key: Option<&str>) -> Option<Error> {
    for (i, what) in errors {
        let lower = what.to_ascii_lowercase();
        let kind = if lower.contains("permission denied") {
            ErrorKind::PermissionDenied
        } else if lower.contains("acl not found") || lower.contains("token not found") {
            ErrorKind::Unauthenticated
        } else if lower.contains("index is stale")
            || lower.contains("doesn't exist")
            || lower.contains("exists")
        {
            continue;
        } else {
            ErrorKind::InvalidArgument
        };
        return Some(
            own(
                kind,
                op,
                key,
                format!("consul refused txn op {i}: {what}; nothing was written"),
            )
            .with_retry(kvmap_core::RetryClass::Never),
        );
    }
    None
}

/// A key's state as read before a write.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) revision: Revision,
    /// False for an entry whose TTL ran out (logically absent).
    pub(crate) live: bool,
    pub(crate) entry: Entry,
}

fn needs_read(ops: &[BatchOp]) -> Vec<&Key> {
    let mut keys: Vec<&Key> = Vec::new();
    for op in ops {
        let read = match op {
            BatchOp::Put { options, .. } => options.mode != PutMode::Overwrite,
            BatchOp::Delete { .. } => true,
        };
        if read && !keys.contains(&op.key()) {
            keys.push(op.key());
        }
    }
    keys
}

/// The state of a key while planning: as read, or written earlier in the
/// same batch.
#[derive(Clone, Copy)]
enum Sim {
    Absent { expired_rev: Option<Revision> },
    Live(Revision),
    WrittenInBatch,
}

struct Plan {
    txn: Vec<TxnOp>,
    /// Per batch op: `Put` (revision from the results) or `Deleted(existed)`.
    kinds: Vec<Option<bool>>,
}

impl Plan {
    fn outcomes(&self, results: &[RawKv], op: Op, key: Option<&str>) -> Result<Vec<BatchOutcome>> {
        let mut r = results.iter();
        let mut out = Vec::with_capacity(self.kinds.len());
        for kind in &self.kinds {
            out.push(match kind {
                Some(existed) => BatchOutcome::Deleted(*existed),
                None => {
                    let raw = r.next().ok_or_else(|| {
                        own(
                            ErrorKind::Internal,
                            op,
                            key,
                            "consul txn returned fewer results than writes",
                        )
                    })?;
                    BatchOutcome::Put(raw.modify_index)
                }
            });
        }
        Ok(out)
    }
}

fn plan(inner: &Inner, ops: &[BatchOp], current: &HashMap<Key, Current>) -> Result<Plan> {
    let mut sim: HashMap<&Key, Sim> = HashMap::new();
    let mut txn = Vec::with_capacity(ops.len());
    let mut kinds = Vec::with_capacity(ops.len());
    for op in ops {
        let key = op.key();
        let state = *sim.entry(key).or_insert_with(|| match current.get(key) {
            Some(c) if c.live => Sim::Live(c.revision),
            Some(c) => Sim::Absent {
                expired_rev: Some(c.revision),
            },
            None => Sim::Absent { expired_rev: None },
        });
        let ck = inner.consul_key(key.as_str());
        match op {
            BatchOp::Put { value, options, .. } => {
                let flags = ttl_flags(options, key)?;
                let visible = match state {
                    Sim::Live(r) => Some(r),
                    Sim::Absent { .. } => None,
                    Sim::WrittenInBatch => Some(0),
                };
                match (options.mode, state) {
                    (PutMode::Overwrite, _) => txn.push(TxnOp::Set {
                        key: ck,
                        value: value.clone(),
                        flags,
                    }),
                    (PutMode::Update(_), Sim::WrittenInBatch) => {
                        return Err(Error::new(ErrorKind::Conflict { current: None })
                            .with_key(key.as_str())
                            .with_detail("the key is written earlier in the same batch; its new revision is not known yet"));
                    }
                    (mode, _) => {
                        PutOptions::with(mode, None)
                            .check_condition(visible)
                            .map_err(|e| e.with_key(key.as_str()))?;
                        let index = match state {
                            Sim::Live(r) => r,
                            Sim::Absent { expired_rev } => expired_rev.unwrap_or(0),
                            Sim::WrittenInBatch => 0,
                        };
                        txn.push(TxnOp::Cas {
                            key: ck,
                            value: value.clone(),
                            flags,
                            index,
                        });
                    }
                }
                kinds.push(None);
                sim.insert(key, Sim::WrittenInBatch);
            }
            BatchOp::Delete { options, .. } => {
                let visible = match state {
                    Sim::Live(r) => Some(r),
                    Sim::Absent { .. } | Sim::WrittenInBatch => None,
                };
                if let Some(want) = options.if_revision {
                    if matches!(state, Sim::WrittenInBatch) {
                        return Err(Error::new(ErrorKind::Conflict { current: None })
                            .with_key(key.as_str())
                            .with_detail("the key is written earlier in the same batch"));
                    }
                    DeleteOptions::if_revision(want)
                        .check_condition(visible)
                        .map_err(|e| e.with_key(key.as_str()))?;
                }
                let existed = match state {
                    Sim::Live(r) => {
                        txn.push(TxnOp::DeleteCas { key: ck, index: r });
                        true
                    }
                    Sim::Absent {
                        expired_rev: Some(r),
                    } => {
                        txn.push(TxnOp::DeleteCas { key: ck, index: r });
                        false
                    }
                    Sim::Absent { expired_rev: None } => {
                        txn.push(TxnOp::CheckNotExists(ck));
                        false
                    }
                    Sim::WrittenInBatch => {
                        txn.push(TxnOp::Delete(ck));
                        true
                    }
                };
                kinds.push(Some(existed));
                sim.insert(key, Sim::Absent { expired_rev: None });
            }
        }
    }
    Ok(Plan { txn, kinds })
}

/// The `Flags` of a put: the expiry instant of its TTL, checked.
pub(crate) fn ttl_flags(options: &PutOptions, key: &Key) -> Result<u64> {
    let Some(ttl) = options.ttl else {
        return Ok(0);
    };
    let at = SystemTime::now().checked_add(ttl);
    let ms = at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis());
    match ms {
        Some(ms) if ms < (1u128 << 48) => Ok(expiry_flags(at)),
        _ => Err(Error::new(ErrorKind::InvalidArgument)
            .with_key(key.as_str())
            .with_detail(format!(
                "ttl {ttl:?} is beyond what consul flags can hold (year 10889)"
            ))),
    }
}

impl Inner {
    /// The query parameters of a read under the context's consistency.
    pub(crate) fn consistency_query(&self, ctx: &Context) -> Vec<(&'static str, Option<String>)> {
        match ctx.consistency() {
            Consistency::Default => Vec::new(),
            Consistency::Strong => vec![("consistent", None)],
            Consistency::Stale { .. } => vec![("stale", None)],
        }
    }

    /// Checks an answer's freshness against the context's consistency.
    pub(crate) fn check_fresh(
        &self,
        ctx: &Context,
        known_leader: bool,
        last_contact: Option<std::time::Duration>,
        op: Op,
        key: Option<&str>,
    ) -> Result<()> {
        match ctx.consistency() {
            Consistency::Stale { max_staleness } => {
                let staleness = last_contact.unwrap_or_default();
                if !known_leader || staleness > max_staleness {
                    return Err(own(
                        ErrorKind::StaleTooOld {
                            staleness,
                            max: max_staleness,
                        },
                        op,
                        key,
                        if known_leader {
                            "the serving agent's last contact with the leader is older than the bound".to_owned()
                        } else {
                            "the serving agent knows no leader; its data may be arbitrarily old"
                                .to_owned()
                        },
                    ));
                }
                Ok(())
            }
            _ if !known_leader => Err(own(
                ErrorKind::Unavailable,
                op,
                key,
                "the consul agent knows no cluster leader",
            )),
            _ => Ok(()),
        }
    }

    /// The staleness bound to put on entries of a stale read.
    pub(crate) fn staleness_marker(&self, ctx: &Context) -> Option<std::time::Duration> {
        match ctx.consistency() {
            Consistency::Stale { max_staleness } => Some(max_staleness),
            _ => None,
        }
    }
}

/// `apply` of a batch.
pub(crate) async fn apply(
    inner: &Inner,
    ctx: &Context,
    batch: Batch,
) -> Result<Vec<Result<BatchOutcome>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let outcomes = inner.write_ops(ctx, &batch.ops, Op::Apply).await?;
    Ok(outcomes.into_iter().map(Ok).collect())
}
