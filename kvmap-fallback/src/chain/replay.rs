//! Replaying the outbox to the primary, in order, with compare-and-swap.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use kvmap_core::{Context, DeleteOptions, Entry, Error, Key, KvStore, PutMode, PutOptions, Result};

use super::{falls_through, metrics_depth, Inner};
use crate::breaker::Breaker;
use crate::metrics;
use crate::outbox::{Base, Known, Outbox, Record, RecordOp};

/// A write from the outbox that was not applied to the primary because
/// the key changed there meanwhile (or the primary refused it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictReport {
    /// The key.
    pub key: Key,
    /// The position of the write in the outbox.
    pub seq: u64,
    /// The primary state the write was based on.
    pub base: Base,
    /// The write that was not applied.
    pub write: RecordOp,
    /// The key on the primary when the conflict was found (`None`: absent).
    pub current: Option<Entry>,
    /// When the write was journaled.
    pub written_at: SystemTime,
    /// Why, in words.
    pub reason: String,
}

/// What one replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Writes applied to the primary.
    pub replayed: usize,
    /// Writes found already applied (their answer was lost before).
    pub already_applied: usize,
    /// Writes whose TTL ran out while they waited.
    pub expired: usize,
    /// Writes not applied because of a conflict (each also reported as a
    /// [`ConflictReport`]).
    pub conflicts: usize,
    /// Writes still in the outbox.
    pub remaining: usize,
    /// Why the replay stopped early: the primary's error (unavailable, or
    /// its breaker not admitting yet).
    pub stalled: Option<Error>,
}

impl ReplayReport {
    /// Whether the outbox is empty and the primary serves again.
    pub fn drained(&self) -> bool {
        self.remaining == 0 && self.stalled.is_none()
    }
}

enum Step {
    Applied(Known),
    AlreadyApplied(Known),
    Expired,
    Conflict {
        current: Option<Entry>,
        reason: String,
    },
}

pub(crate) async fn auto(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let waiting =
            inner.outbox.as_ref().is_some_and(|o| o.depth() > 0) || !inner.is_primary_active();
        if waiting && inner.backends[0].breaker.would_admit() {
            if let Err(e) = replay(&inner).await {
                tracing::warn!(error = %e.report(), "outbox replay failed");
            }
        }
    }
}

pub(crate) async fn replay(inner: &Arc<Inner>) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let Some(outbox) = &inner.outbox else {
        return Ok(report);
    };
    let _one = inner.replaying.lock().await;
    let primary = inner.backends[0].breaker.clone();
    'pages: loop {
        let records = outbox.peek(64).await?;
        if records.is_empty() {
            // Decide "drained" under the outage lock, so no outage write
            // slips in between the check and the switch.
            let _outage = inner.outage.lock().await;
            if outbox.depth() == 0 {
                outbox.clear_known().await?;
                inner.known.clear_conflicts();
                inner.set_primary_active(true);
                break 'pages;
            }
            continue;
        }
        for record in records {
            let ctx = Context::new().with_timeout(inner.replay_timeout);
            let step = match replay_one(inner, outbox, &primary, &ctx, &record).await {
                Ok(step) => step,
                Err(e) if falls_through(&e) => {
                    report.stalled = Some(e);
                    break 'pages;
                }
                Err(e) => Step::Conflict {
                    current: None,
                    reason: format!("the primary refused the write: {e}"),
                },
            };
            let known = match step {
                Step::Applied(k) => {
                    report.replayed += 1;
                    ::metrics::counter!(metrics::OUTBOX_REPLAYED).increment(1);
                    inner.known.observe(&record.key, known_revision(k));
                    Some(k)
                }
                Step::AlreadyApplied(k) => {
                    report.already_applied += 1;
                    inner.known.observe(&record.key, known_revision(k));
                    Some(k)
                }
                Step::Expired => {
                    report.expired += 1;
                    outbox.known(&record.key).await?
                }
                Step::Conflict { current, reason } => {
                    report.conflicts += 1;
                    inner.known.mark_conflicted(&record.key);
                    inner
                        .known
                        .observe(&record.key, current.as_ref().map(|e| e.revision));
                    report_conflict(inner, &record, current, reason);
                    Some(Known::Conflicted)
                }
            };
            outbox.complete(&record, known).await?;
            metrics_depth(outbox.depth());
        }
    }
    report.remaining = outbox.depth();
    if report.replayed + report.conflicts + report.already_applied > 0 {
        tracing::info!(
            replayed = report.replayed,
            conflicts = report.conflicts,
            already_applied = report.already_applied,
            remaining = report.remaining,
            "outbox replay"
        );
    }
    Ok(report)
}

fn known_revision(k: Known) -> Option<u64> {
    match k {
        Known::Revision(r) => Some(r),
        _ => None,
    }
}

fn report_conflict(inner: &Inner, record: &Record, current: Option<Entry>, reason: String) {
    tracing::warn!(
        key = %record.key,
        seq = record.seq,
        base = ?record.base,
        current_revision = current.as_ref().map(|e| e.revision),
        "outbox replay conflict: {reason}; the outbox write is not applied and the primary keeps its value"
    );
    ::metrics::counter!(metrics::OUTBOX_CONFLICTS).increment(1);
    let report = ConflictReport {
        key: record.key.clone(),
        seq: record.seq,
        base: record.base,
        write: record.op.clone(),
        current,
        written_at: record.written_at,
        reason,
    };
    let _ = inner.conflicts_tx.send(report.clone());
    let mut recent = inner
        .recent_conflicts
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if recent.len() >= 1000 {
        recent.remove(0);
    }
    recent.push(report);
}

/// The primary state a record is conditioned on (`None`: unknown).
async fn condition(inner: &Inner, outbox: &Outbox, record: &Record) -> Result<Option<Known>> {
    Ok(match record.base {
        Base::Unknown => None,
        Base::Absent => Some(Known::Absent),
        Base::Revision(r) => Some(Known::Revision(r)),
        Base::Previous => match inner.known.get(&record.key) {
            Some(k) => Some(k),
            None => outbox.known(&record.key).await?,
        },
    })
}

async fn replay_one(
    inner: &Inner,
    outbox: &Outbox,
    primary: &Breaker,
    ctx: &Context,
    record: &Record,
) -> Result<Step> {
    let cond = condition(inner, outbox, record).await?;
    if cond == Some(Known::Conflicted) {
        let current = primary.get(ctx, &record.key).await?;
        return Ok(Step::Conflict {
            current,
            reason: "an earlier outbox write of this key conflicted".into(),
        });
    }
    match &record.op {
        RecordOp::Put { value, expires_at } => {
            let ttl = match expires_at {
                Some(at) => match at.duration_since(SystemTime::now()) {
                    Ok(left) if !left.is_zero() => Some(left),
                    _ => return Ok(Step::Expired),
                },
                None => None,
            };
            let mode = match cond {
                Some(Known::Revision(r)) => PutMode::Update(r),
                _ => PutMode::Create,
            };
            let r = primary
                .put(ctx, &record.key, value.clone(), PutOptions::with(mode, ttl))
                .await;
            match r {
                Ok(rev) => Ok(Step::Applied(Known::Revision(rev))),
                Err(e) if e.is_precondition_failed() => {
                    let current = primary.get(ctx, &record.key).await?;
                    match current {
                        Some(c) if c.value == *value => {
                            Ok(Step::AlreadyApplied(Known::Revision(c.revision)))
                        }
                        current => Ok(Step::Conflict {
                            reason: conflict_reason(cond, current.as_ref()),
                            current,
                        }),
                    }
                }
                Err(e) => Err(e),
            }
        }
        RecordOp::Delete => match cond {
            Some(Known::Revision(r)) => {
                match primary
                    .delete(ctx, &record.key, DeleteOptions::if_revision(r))
                    .await
                {
                    Ok(_) => Ok(Step::Applied(Known::Absent)),
                    Err(e) if e.is_precondition_failed() => {
                        match primary.get(ctx, &record.key).await? {
                            None => Ok(Step::AlreadyApplied(Known::Absent)),
                            current => Ok(Step::Conflict {
                                reason: conflict_reason(cond, current.as_ref()),
                                current,
                            }),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            _ => match primary.get(ctx, &record.key).await? {
                None => Ok(Step::AlreadyApplied(Known::Absent)),
                current => Ok(Step::Conflict {
                    reason: conflict_reason(cond, current.as_ref()),
                    current,
                }),
            },
        },
    }
}

fn conflict_reason(cond: Option<Known>, current: Option<&Entry>) -> String {
    let now = match current {
        Some(e) => format!("is at revision {}", e.revision),
        None => "is absent".to_owned(),
    };
    match cond {
        Some(Known::Revision(r)) => {
            format!("the key changed on the primary meanwhile (based on revision {r}, it {now})")
        }
        Some(Known::Absent) => {
            format!("the key was created on the primary meanwhile (it {now})")
        }
        _ => format!(
            "the chain never saw the key on the primary before the outage and it {now} there"
        ),
    }
}
