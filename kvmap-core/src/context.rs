//! The request context: deadline, cancellation, consistency and labels.
//!
//! Every [`KvStore`](crate::KvStore) method takes a `&Context`. Deadline and
//! cancellation are enforced once, here, by [`Context::run`], which every
//! backend wraps its I/O in: an expired or cancelled context fails the call
//! with [`ErrorKind::DeadlineExceeded`] / [`ErrorKind::Cancelled`] before
//! any side effect.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Op, Result, RetryClass};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// The backend's default (documented in each backend's capability
    /// table).
    #[default]
    Default,
    /// Linearizable where the backend can (reads from the leader/master);
    /// a backend that cannot declares `strong_read` unsupported and
    /// returns [`ErrorKind::Unsupported`].
    Strong,
    /// The read may be served by a replica or cache that lags by at most
    /// `max_staleness`. A backend that cannot bound the lag within it
    /// returns [`ErrorKind::StaleTooOld`].
    Stale {
        /// The largest lag the caller accepts.
        max_staleness: Duration,
    },
}

/// A request context, the Rust answer to Go's `context.Context`.
///
/// Cheap to clone. Build one with the `with_*` setters:
/// ```
/// use std::time::Duration;
/// use kvmap_core::{Consistency, Context};
/// let ctx = Context::new()
///     .with_timeout(Duration::from_secs(2))
///     .with_consistency(Consistency::Strong)
///     .with_label("request_id", "42");
/// assert!(ctx.deadline().is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Context {
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    consistency: Consistency,
    labels: Vec<(String, String)>,
}

/// Where a guarded call comes from: the backend, the operation, the key
/// and the backend's own operation timeout. Used in error messages.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The backend name.
    pub backend: &'a str,
    /// The operation.
    pub op: Op,
    /// The key, if the operation is about one.
    pub key: Option<&'a str>,
    /// The backend's per-operation timeout; reaching it yields
    /// [`ErrorKind::Timeout`] (counted by circuit breakers), whereas the
    /// caller's deadline yields [`ErrorKind::DeadlineExceeded`].
    pub timeout: Option<Duration>,
}

impl<'a> Scope<'a> {
    /// A scope without key or timeout.
    pub fn new(backend: &'a str, op: Op) -> Self {
        Self {
            backend,
            op,
            key: None,
            timeout: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the backend's operation timeout.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// An error of `kind` in this scope.
    pub fn error(&self, kind: ErrorKind) -> Error {
        Error::new(kind).in_context(self.backend, self.op, self.key)
    }
}

impl Context {
    /// A context with no deadline, no cancellation and default consistency.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline to `timeout` from now.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let deadline = Instant::now().checked_add(timeout);
        Self { deadline, ..self }
    }

    /// Sets an absolute deadline.
    pub fn with_deadline(self, deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            ..self
        }
    }

    /// Attaches a cancellation token: cancelling it fails pending calls
    /// with [`ErrorKind::Cancelled`] and ends watch streams.
    pub fn with_cancel(self, token: CancellationToken) -> Self {
        Self {
            cancel: Some(token),
            ..self
        }
    }

    /// Sets the read consistency.
    pub fn with_consistency(self, consistency: Consistency) -> Self {
        Self {
            consistency,
            ..self
        }
    }

    /// Adds a label (for tracing spans and metrics).
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left until the deadline (zero if passed), if any.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The cancellation token, if any.
    pub fn cancel_token(&self) -> Option<&CancellationToken> {
        self.cancel.as_ref()
    }

    /// The requested consistency.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// The [`Entry::staleness`](crate::Entry::staleness) of a read served
    /// fresh (by a primary or an embedded store): `Some(0)` when the
    /// caller asked for a stale read, so it learns the bound held, else
    /// `None`.
    pub fn fresh_read_staleness(&self) -> Option<Duration> {
        match self.consistency {
            Consistency::Stale { .. } => Some(Duration::ZERO),
            _ => None,
        }
    }

    /// The labels.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// Whether the context is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Fails if the context is already cancelled or past its deadline.
    /// Backends call this (through [`Context::run`]) before any side effect.
    ///
    /// # Errors
    /// [`ErrorKind::Cancelled`] or [`ErrorKind::DeadlineExceeded`], with
    /// [`RetryClass::Never`]: nothing was done.
    pub fn check(&self, scope: &Scope<'_>) -> Result<()> {
        if self.is_cancelled() {
            return Err(scope
                .error(ErrorKind::Cancelled)
                .with_detail("before the call started")
                .with_retry(RetryClass::Never));
        }
        if self.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(scope
                .error(ErrorKind::DeadlineExceeded)
                .with_detail("before the call started")
                .with_retry(RetryClass::Never));
        }
        Ok(())
    }

    /// Runs a synchronous backend call under this context: the entry check
    /// of [`Context::run`] (an expired or cancelled context fails before
    /// `f` runs), then `f`, with the scope filled into its error.
    ///
    /// For calls that finish without awaiting (an embedded store's point
    /// read from memory): a context cannot fire in the middle of a
    /// synchronous call, so this is [`Context::run`] without its timer and
    /// select, on the hottest paths.
    ///
    /// # Errors
    /// `Cancelled` or `DeadlineExceeded` before the call; the error of `f`.
    pub fn run_sync<T>(&self, scope: Scope<'_>, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check(&scope)?;
        f().map_err(|e| e.in_context(scope.backend, scope.op, scope.key))
    }

    /// Runs a backend future under this context and the scope's timeout.
    ///
    /// - An already cancelled or expired context fails at once; `fut` is
    ///   never polled, so nothing happens.
    /// - Cancellation or the deadline during the call drops `fut` and
    ///   fails with `Cancelled` / `DeadlineExceeded`; for a write the retry
    ///   class is then [`RetryClass::OutcomeUnknown`], since the request
    ///   may have reached the server.
    /// - The backend's own timeout (`scope.timeout`) fails with
    ///   [`ErrorKind::Timeout`].
    ///
    /// Errors returned by `fut` get the scope's backend, op and key filled
    /// in where missing.
    ///
    /// # Errors
    /// As above, or the error of `fut`.
    pub async fn run<T, F>(&self, scope: Scope<'_>, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        self.check(&scope)?;
        let during = |kind: ErrorKind| {
            let retry = if scope.op.is_write() {
                RetryClass::OutcomeUnknown
            } else {
                RetryClass::Never
            };
            scope
                .error(kind)
                .with_detail("during the call")
                .with_retry(retry)
        };
        let own_deadline = scope.timeout.and_then(|t| Instant::now().checked_add(t));
        let (limit, limit_kind) = match (self.deadline, own_deadline) {
            (Some(c), Some(o)) if o < c => (Some(o), ErrorKind::Timeout),
            (Some(c), _) => (Some(c), ErrorKind::DeadlineExceeded),
            (None, Some(o)) => (Some(o), ErrorKind::Timeout),
            (None, None) => (None, ErrorKind::DeadlineExceeded),
        };
        let sleep = async {
            match limit {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match &self.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let span = tracing::debug_span!(
            "kvmap",
            backend = scope.backend,
            op = scope.op.as_str(),
            key = scope.key,
            labels = ?self.labels,
        );
        let fut = tracing::Instrument::instrument(fut, span);
        tokio::select! {
            biased;
            () = cancelled => Err(during(ErrorKind::Cancelled)),
            res = fut => res.map_err(|e| e.in_context(scope.backend, scope.op, scope.key)),
            () = sleep => Err(match limit_kind {
                ErrorKind::Timeout => {
                    let e = scope.error(ErrorKind::Timeout).with_detail("no answer within the backend's operation timeout");
                    if scope.op.is_write() { e.with_retry(RetryClass::OutcomeUnknown) } else { e }
                }
                kind => during(kind),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn scope(op: Op) -> Scope<'static> {
        Scope::new("test", op).key("k")
    }

    #[tokio::test]
    async fn expired_context_never_polls_the_future() {
        let ctx = Context::new().with_timeout(Duration::ZERO);
        let polled = Arc::new(AtomicBool::new(false));
        let p = polled.clone();
        let e = ctx
            .run(scope(Op::Put), async move {
                p.store(true, Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(e.retry_class(), RetryClass::Never);
        assert!(!polled.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn cancelled_context_never_polls_the_future() {
        let token = CancellationToken::new();
        token.cancel();
        let ctx = Context::new().with_cancel(token);
        let e = ctx
            .run(scope(Op::Get), async { Ok::<_, Error>(1) })
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_mid_call_is_outcome_unknown_for_writes() {
        let token = CancellationToken::new();
        let ctx = Context::new().with_cancel(token.clone());
        let t = tokio::spawn(async move {
            ctx.run(scope(Op::Put), std::future::pending::<Result<()>>())
                .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        token.cancel();
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert_eq!(e.retry_class(), RetryClass::OutcomeUnknown);
    }

    #[tokio::test(start_paused = true)]
    async fn backend_timeout_is_timeout_and_caller_deadline_is_deadline() {
        let ctx = Context::new().with_timeout(Duration::from_secs(10));
        let e = ctx
            .run(
                scope(Op::Get).timeout(Some(Duration::from_secs(1))),
                std::future::pending::<Result<()>>(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_infrastructure());

        let ctx = Context::new().with_timeout(Duration::from_secs(1));
        let e = ctx
            .run(
                scope(Op::Get).timeout(Some(Duration::from_secs(10))),
                std::future::pending::<Result<()>>(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
        assert!(!e.is_infrastructure());
    }

    #[test]
    fn run_sync_checks_first_and_fills_context() {
        let called = std::cell::Cell::new(false);
        let e = Context::new()
            .with_timeout(Duration::ZERO)
            .run_sync(scope(Op::Get), || {
                called.set(true);
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
        assert!(!called.get());
        let e = Context::new()
            .run_sync(scope(Op::Get), || Err::<(), _>(ErrorKind::Internal.into()))
            .unwrap_err();
        assert_eq!(e.to_string(), "test: get \"k\": internal error");
    }

    #[tokio::test]
    async fn errors_get_scope_context() {
        let e = Context::new()
            .run(scope(Op::Get), async {
                Err::<(), _>(Error::new(ErrorKind::Unavailable))
            })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "test: get \"k\": backend unavailable");
    }
}
