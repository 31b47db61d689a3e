//! Writes of a chain: the primary first; on its failure, the policy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use kvmap_core::{
    Batch, BatchOp, BatchOutcome, Context, DeleteOptions, Error, Key, KvStore, Op, PutOptions,
    Result, Revision,
};

use super::{falls_through, metrics_depth, Inner, Policy, CHAIN_NAME};
use crate::breaker::Breaker;
use crate::metrics;
use crate::outbox::{Base, Known, Outbox, Record, RecordOp};

impl Inner {
    fn record_of(&self, outbox: &Outbox, key: &Key, op: RecordOp) -> Record {
        let base = if outbox.has_pending(key) {
            Base::Previous
        } else {
            match self.known.get_seen(key) {
                Some(Known::Revision(r)) => Base::Revision(r),
                Some(Known::Absent) => Base::Absent,
                _ => Base::Unknown,
            }
        };
        Record {
            seq: 0,
            key: key.clone(),
            op,
            base,
            written_at: SystemTime::now(),
        }
    }

    /// Runs a write on the fallbacks in order until one takes it.
    async fn on_fallback<T, F, Fut>(&self, op: Op, key: Option<&str>, call: F) -> Result<(usize, T)>
    where
        F: Fn(Arc<Breaker>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut last = None;
        for (i, b) in self.backends.iter().enumerate().skip(1) {
            match call(b.breaker.clone()).await {
                Ok(v) => {
                    metrics::record_fallback_served(&b.label, op);
                    b.writes.fetch_add(1, Ordering::Relaxed);
                    return Ok((i, v));
                }
                Err(e) if falls_through(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            self.scope(op, key)
                .error(kvmap_core::ErrorKind::Unavailable)
                .with_detail("no fallback backend")
                // Nothing was sent to any backend.
                .with_retry(kvmap_core::RetryClass::Safe)
        }))
    }

    /// Copies a primary write to the fallbacks that admit calls. Failures
    /// are counted and logged, never returned: the write is acknowledged
    /// by the primary.
    async fn mirror(&self, ctx: &Context, batch: Batch) {
        if !self.mirrors() || batch.is_empty() {
            return;
        }
        for b in self.backends.iter().skip(1) {
            if !b.breaker.would_admit() {
                continue;
            }
            let failed = match b.breaker.apply(ctx, batch.clone()).await {
                Ok(results) => results.iter().filter(|r| r.is_err()).count(),
                Err(_) => batch.len(),
            };
            if failed > 0 {
                ::metrics::counter!(metrics::MIRROR_FAILURES, "backend" => ::metrics::SharedString::from_shared(b.label.clone()))
                    .increment(failed as u64);
                tracing::debug!(backend = %b.label, failed, "copy of primary writes to a fallback failed");
            }
        }
    }

    /// Whether primary writes are copied to fallbacks.
    fn mirrors(&self) -> bool {
        self.mirror && self.backends.len() > 1
    }

    fn primary_wrote(&self) {
        self.primary_answered();
        self.backends[0].writes.fetch_add(1, Ordering::Relaxed);
    }

    async fn journal(&self, records: Vec<Record>, label: &str) -> Result<()> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        if records.is_empty() {
            return Ok(());
        }
        let r = outbox.append(records).await;
        metrics_depth(outbox.depth());
        r.map_err(|e| {
            let detail = format!(
                "written to fallback {label} but not journaled in the outbox, so it would not reach the primary: {}",
                e.detail().unwrap_or("outbox write failed")
            );
            e.with_detail(detail)
        })
    }

    pub(crate) async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        let ctx_err = |e: Error| e.in_context(CHAIN_NAME, Op::Put, Some(key.as_str()));
        ctx.check(&self.scope(Op::Put, Some(key.as_str())))?;
        self.caps.limits.check_put(key, &value).map_err(ctx_err)?;
        options.validate().map_err(ctx_err)?;
        let mut primary_err = None;
        if self.is_primary_active() {
            let p = &self.backends[0];
            match p.breaker.put(ctx, key, value.clone(), options).await {
                Ok(rev) => {
                    self.primary_wrote();
                    self.known.observe(key, Some(rev));
                    if self.mirrors() {
                        let copy = Batch::new().put_with(
                            key.clone(),
                            value,
                            PutOptions::with(kvmap_core::PutMode::Overwrite, options.ttl),
                        );
                        self.mirror(ctx, copy).await;
                    }
                    return Ok(rev);
                }
                Err(e) if falls_through(&e) && self.policy != Policy::Reject => {
                    primary_err = Some(e)
                }
                Err(e) => {
                    if !falls_through(&e) {
                        self.primary_answered();
                    }
                    return Err(e);
                }
            }
        }
        if let Some(e) = &primary_err {
            tracing::debug!(error = %e.report(), "primary write failed, falling back");
        }
        let call = |b: Arc<Breaker>| {
            let value = value.clone();
            async move { b.put(ctx, key, value, options).await }
        };
        match self.policy {
            Policy::Outbox => {
                let Some(outbox) = &self.outbox else {
                    return Err(no_outbox());
                };
                let _outage = self.outage.lock().await;
                self.set_primary_active(false);
                let record = self.record_of(
                    outbox,
                    key,
                    RecordOp::Put {
                        value: value.clone(),
                        expires_at: options.ttl.map(|t| SystemTime::now() + t),
                    },
                );
                let (i, rev) = self.on_fallback(Op::Put, Some(key.as_str()), call).await?;
                self.journal(vec![record], &self.backends[i].label).await?;
                Ok(rev)
            }
            _ => {
                let (_, rev) = self.on_fallback(Op::Put, Some(key.as_str()), call).await?;
                Ok(rev)
            }
        }
    }

    pub(crate) async fn delete(
        &self,
        ctx: &Context,
        key: &Key,
        options: DeleteOptions,
    ) -> Result<bool> {
        ctx.check(&self.scope(Op::Delete, Some(key.as_str())))?;
        self.caps
            .limits
            .check_key(key)
            .map_err(|e| e.in_context(CHAIN_NAME, Op::Delete, Some(key.as_str())))?;
        if self.is_primary_active() {
            let p = &self.backends[0];
            match p.breaker.delete(ctx, key, options).await {
                Ok(existed) => {
                    self.primary_wrote();
                    self.known.observe(key, None);
                    if self.mirrors() {
                        self.mirror(ctx, Batch::new().delete(key.clone())).await;
                    }
                    return Ok(existed);
                }
                Err(e) if falls_through(&e) && self.policy != Policy::Reject => {}
                Err(e) => {
                    if !falls_through(&e) {
                        self.primary_answered();
                    }
                    return Err(e);
                }
            }
        }
        let call = |b: Arc<Breaker>| async move { b.delete(ctx, key, options).await };
        match self.policy {
            Policy::Outbox => {
                let Some(outbox) = &self.outbox else {
                    return Err(no_outbox());
                };
                let _outage = self.outage.lock().await;
                self.set_primary_active(false);
                let record = self.record_of(outbox, key, RecordOp::Delete);
                let (i, existed) = self
                    .on_fallback(Op::Delete, Some(key.as_str()), call)
                    .await?;
                self.journal(vec![record], &self.backends[i].label).await?;
                Ok(existed)
            }
            _ => Ok(self
                .on_fallback(Op::Delete, Some(key.as_str()), call)
                .await?
                .1),
        }
    }

    pub(crate) async fn apply(
        &self,
        ctx: &Context,
        batch: Batch,
    ) -> Result<Vec<Result<BatchOutcome>>> {
        ctx.check(&self.scope(Op::Apply, None))?;
        batch
            .validate(&self.caps.limits)
            .map_err(|e| e.in_context(CHAIN_NAME, Op::Apply, None))?;
        if self.is_primary_active() {
            let p = &self.backends[0];
            match p.breaker.apply(ctx, batch.clone()).await {
                Ok(results) if !all_fall_through(&results) => {
                    self.primary_wrote();
                    let mut copy = Batch::new();
                    for (op, r) in batch.ops.iter().zip(&results) {
                        match (op, r) {
                            (
                                BatchOp::Put {
                                    key,
                                    value,
                                    options,
                                },
                                Ok(BatchOutcome::Put(rev)),
                            ) => {
                                self.known.observe(key, Some(*rev));
                                copy = copy.put_with(
                                    key.clone(),
                                    value.clone(),
                                    PutOptions::with(kvmap_core::PutMode::Overwrite, options.ttl),
                                );
                            }
                            (BatchOp::Delete { key, .. }, Ok(BatchOutcome::Deleted(_))) => {
                                self.known.observe(key, None);
                                copy = copy.delete(key.clone());
                            }
                            _ => {}
                        }
                    }
                    self.mirror(ctx, copy).await;
                    return Ok(results);
                }
                Ok(results) if self.policy == Policy::Reject => return Ok(results),
                Ok(_) => {}
                Err(e) if falls_through(&e) && self.policy != Policy::Reject => {}
                Err(e) => {
                    if !falls_through(&e) {
                        self.primary_answered();
                    }
                    return Err(e);
                }
            }
        }
        let call = |b: Arc<Breaker>| {
            let batch = batch.clone();
            async move {
                let r = b.apply(ctx, batch).await?;
                if all_fall_through(&r) {
                    if let Some(Err(e)) = r.first() {
                        return Err(e.clone());
                    }
                }
                Ok(r)
            }
        };
        match self.policy {
            Policy::Outbox => {
                let Some(outbox) = &self.outbox else {
                    return Err(no_outbox());
                };
                let _outage = self.outage.lock().await;
                self.set_primary_active(false);
                // Bases are taken before the batch, in order: a key written
                // twice in one batch builds on its own earlier record.
                let mut records = Vec::new();
                let mut pending_here: Vec<Key> = Vec::new();
                for op in &batch.ops {
                    let (key, rop) = match op {
                        BatchOp::Put {
                            key,
                            value,
                            options,
                        } => (
                            key,
                            RecordOp::Put {
                                value: value.clone(),
                                expires_at: options.ttl.map(|t| SystemTime::now() + t),
                            },
                        ),
                        BatchOp::Delete { key, .. } => (key, RecordOp::Delete),
                    };
                    let mut r = self.record_of(outbox, key, rop);
                    if pending_here.contains(key) {
                        r.base = Base::Previous;
                    }
                    pending_here.push(key.clone());
                    records.push(r);
                }
                let (i, results) = self.on_fallback(Op::Apply, None, call).await?;
                let records = records
                    .into_iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(rec, _)| rec)
                    .collect();
                self.journal(records, &self.backends[i].label).await?;
                Ok(results)
            }
            _ => Ok(self.on_fallback(Op::Apply, None, call).await?.1),
        }
    }
}

fn all_fall_through<T>(results: &[Result<T>]) -> bool {
    !results.is_empty() && results.iter().all(|r| r.as_ref().is_err_and(falls_through))
}

fn no_outbox() -> Error {
    Error::new(kvmap_core::ErrorKind::Internal)
        .with_backend(CHAIN_NAME)
        .with_detail("outbox policy without an outbox")
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("policy", &self.policy)
            .finish()
    }
}
