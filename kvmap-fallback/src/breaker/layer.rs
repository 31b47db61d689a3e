//! [`Breaker`]: a circuit breaker in front of one store, itself a store.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::backend::Scope;
use kvmap_core::{
    Batch, BatchOutcome, Capabilities, Context, DeleteOptions, Entry, Error, ErrorKind, Key,
    KvStore, ListPage, ListRequest, LockGuard, LockOptions, Op, PutOptions, Result, Revision,
    WatchRequest, WatchStream,
};
use tokio::sync::watch;
use tokio::time::Instant;

use super::clock::{Clock, TokioClock};
use super::config::BreakerConfig;
use super::machine::{Admission, BreakerState, CircuitBreaker, Outcome, Permit, Transition};
use crate::metrics;

/// A circuit breaker in front of a store.
///
/// Every call asks the breaker first. While it is open the call fails at
/// once with [`ErrorKind::CircuitOpen`] and the inner store is not
/// touched. Only infrastructure errors
/// ([`Error::is_infrastructure`]) count as failures; a conflict or any
/// other answer of the backend counts as a success; bad input rejected
/// before I/O, the caller's deadline and cancellation count as nothing.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use kvmap_core::{Context, Key, KvStore, KvStoreExt, MemoryStore};
/// use kvmap_fallback::{Breaker, BreakerConfig, BreakerState};
///
/// let store = Breaker::new(Arc::new(MemoryStore::new()), BreakerConfig::default());
/// store.set(&Context::new(), &Key::new("a")?, "1").await?;
/// assert_eq!(store.state(), BreakerState::Closed);
/// # Ok::<(), kvmap_core::Error>(())
/// # }).unwrap();
/// ```
pub struct Breaker {
    inner: Arc<dyn KvStore>,
    label: Arc<str>,
    machine: Mutex<CircuitBreaker>,
    clock: Arc<dyn Clock>,
    state_tx: watch::Sender<BreakerState>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
}

/// A point-in-time view of a breaker, for dashboards and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// The state now.
    pub state: BreakerState,
    /// Trips since the breaker last closed.
    pub trips: u32,
    /// Calls admitted so far.
    pub calls: u64,
    /// Counted failures so far.
    pub failures: u64,
    /// Calls rejected while open so far.
    pub rejected: u64,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("label", &self.label)
            .field("inner", &self.inner)
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker in front of `inner`, labelled with the inner
    /// store's name in metrics.
    pub fn new(inner: Arc<dyn KvStore>, config: BreakerConfig) -> Self {
        let label: Arc<str> = Arc::from(inner.name());
        Self::with_clock(inner, config, label, Arc::new(TokioClock))
    }

    /// A breaker with a chosen metrics label and clock.
    pub fn with_clock(
        inner: Arc<dyn KvStore>,
        config: BreakerConfig,
        label: Arc<str>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let machine = CircuitBreaker::new(config, clock.now());
        let (state_tx, _) = watch::channel(BreakerState::Closed);
        metrics::record_state(&label, BreakerState::Closed);
        Self {
            inner,
            label,
            machine: Mutex::new(machine),
            clock,
            state_tx,
            counters: Counters::default(),
        }
    }

    /// A breaker with a chosen metrics label and tokio's clock.
    pub fn labelled(inner: Arc<dyn KvStore>, config: BreakerConfig, label: &str) -> Self {
        Self::with_clock(inner, config, Arc::from(label), Arc::new(TokioClock))
    }

    /// The store behind the breaker.
    pub fn inner(&self) -> &Arc<dyn KvStore> {
        &self.inner
    }

    /// The label used in metrics and messages.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The state now (an open breaker past its cool-down reads
    /// `HalfOpen`).
    pub fn state(&self) -> BreakerState {
        self.machine().state(self.clock.now())
    }

    /// State and counters now.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let m = self.machine();
        BreakerSnapshot {
            state: m.state(self.clock.now()),
            trips: m.trips(),
            calls: self.counters.calls.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
        }
    }

    /// A receiver that sees every state change (open → half-open shows
    /// when the first call after the cool-down is admitted).
    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state_tx.subscribe()
    }

    /// Whether a call made now would be admitted (without taking a probe
    /// slot).
    pub fn would_admit(&self) -> bool {
        self.state() != BreakerState::Open
    }

    fn machine(&self) -> MutexGuard<'_, CircuitBreaker> {
        // The machine has no invariant a panicking holder could break
        // half-way that matters more than staying available.
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(&self, t: Option<Transition>) {
        if let Some(t) = t {
            tracing::info!(backend = %self.label, from = %t.from, to = %t.to, "circuit breaker state change");
            metrics::record_transition(&self.label, t.to);
            self.state_tx.send_replace(t.to);
        }
    }

    fn admit(&self, ctx: &Context, op: Op, key: Option<&str>) -> Result<Ticket<'_>> {
        let mut scope = Scope::new(self.inner.name(), op);
        scope.key = key;
        ctx.check(&scope)?;
        let (admission, t) = self.machine().admit(self.clock.now());
        self.announce(t);
        match admission {
            Admission::Allowed(permit) => {
                self.counters.calls.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(backend = %self.label, op = op.as_str(), probe = permit.probe, "breaker admitted");
                Ok(Ticket {
                    breaker: self,
                    permit: Some(permit),
                    op,
                    started: Instant::now(),
                })
            }
            Admission::Rejected { retry_in } => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::record_rejected(&self.label, op);
                tracing::debug!(backend = %self.label, op = op.as_str(), "breaker rejected");
                let detail = if retry_in.is_zero() {
                    format!("breaker of {} half-open, probes in flight", self.label)
                } else {
                    format!(
                        "breaker of {} open, next probe in {}ms",
                        self.label,
                        retry_in.as_millis()
                    )
                };
                Err(scope.error(ErrorKind::CircuitOpen).with_detail(detail))
            }
        }
    }

    /// Runs `call` if the breaker admits it and records its outcome.
    async fn guarded<T, F>(&self, ctx: &Context, op: Op, key: Option<&str>, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
        T: Judged,
    {
        let ticket = self.admit(ctx, op, key)?;
        let r = call.await;
        ticket.finish(r.as_ref().map_or_else(outcome_of, Judged::outcome), &r);
        r
    }
}

/// How a successful result counts; `get_many` answers whose keys all
/// failed with infrastructure errors count as a failure.
trait Judged {
    fn outcome(&self) -> Outcome {
        Outcome::Success
    }
}

impl Judged for Option<Entry> {}
impl Judged for Revision {}
impl Judged for bool {}
impl Judged for ListPage {}
impl Judged for WatchStream {}
impl Judged for LockGuard {}
impl Judged for Vec<Result<Option<Entry>>> {
    fn outcome(&self) -> Outcome {
        all_infrastructure(self)
    }
}
impl Judged for Vec<Result<BatchOutcome>> {
    fn outcome(&self) -> Outcome {
        all_infrastructure(self)
    }
}

fn all_infrastructure<T>(results: &[Result<T>]) -> Outcome {
    let failed = !results.is_empty()
        && results
            .iter()
            .all(|r| r.as_ref().is_err_and(Error::is_infrastructure));
    if failed {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// How an error counts for the breaker.
pub(crate) fn outcome_of(e: &Error) -> Outcome {
    if e.is_infrastructure() {
        return Outcome::Failure;
    }
    match e.kind() {
        // Nothing reached the backend, or the caller gave up: no news.
        ErrorKind::DeadlineExceeded
        | ErrorKind::Cancelled
        | ErrorKind::InvalidKey
        | ErrorKind::InvalidArgument
        | ErrorKind::ValueTooLarge { .. }
        | ErrorKind::Unsupported { .. }
        | ErrorKind::CircuitOpen => Outcome::Ignored,
        // The backend answered.
        _ => Outcome::Success,
    }
}

/// An admitted call. Dropped unfinished (the caller dropped the future),
/// it reports [`Outcome::Ignored`] so a probe slot is never leaked.
struct Ticket<'a> {
    breaker: &'a Breaker,
    permit: Option<Permit>,
    op: Op,
    started: Instant,
}

impl Ticket<'_> {
    fn finish<T>(mut self, outcome: Outcome, r: &Result<T>) {
        let b = self.breaker;
        let label = match r {
            Ok(_) => "ok",
            Err(e) => metrics::kind_label(e.kind()),
        };
        metrics::record_call(&b.label, self.op, label, self.started.elapsed());
        if let (Outcome::Failure, Err(e)) = (outcome, r) {
            b.counters.failures.fetch_add(1, Ordering::Relaxed);
            metrics::record_failure(&b.label, e.kind());
        }
        if let Some(p) = self.permit.take() {
            let t = b.machine().record(b.clock.now(), p, outcome);
            b.announce(t);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            let b = self.breaker;
            let t = b.machine().record(b.clock.now(), p, Outcome::Ignored);
            b.announce(t);
        }
    }
}

#[async_trait]
impl KvStore for Breaker {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.guarded(ctx, Op::Get, Some(key.as_str()), self.inner.get(ctx, key))
            .await
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        self.guarded(
            ctx,
            Op::Put,
            Some(key.as_str()),
            self.inner.put(ctx, key, value, options),
        )
        .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.guarded(
            ctx,
            Op::Delete,
            Some(key.as_str()),
            self.inner.delete(ctx, key, options),
        )
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        self.guarded(ctx, Op::List, None, self.inner.list(ctx, request))
            .await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        let target = request.target.describe().to_owned();
        self.guarded(
            ctx,
            Op::Watch,
            Some(&target),
            self.inner.watch(ctx, request),
        )
        .await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.guarded(ctx, Op::GetMany, None, self.inner.get_many(ctx, keys))
            .await
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        self.guarded(ctx, Op::Apply, None, self.inner.apply(ctx, batch))
            .await
    }

    /// Acquisition goes through the breaker; the guard's renewals talk to
    /// the backend directly (a lease must not be lost to an open breaker
    /// while the backend still answers).
    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        self.guarded(
            ctx,
            Op::Lock,
            Some(key.as_str()),
            self.inner.lock(ctx, key, options),
        )
        .await
    }
}
