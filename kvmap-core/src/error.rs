//! The one public error type, its kinds and retry classes.
//!
//! Every fallible kvmap call returns [`Error`]. Callers branch on
//! [`Error::kind`] (what went wrong), [`Error::retry_class`] (may I send the
//! request again?) and [`Error::is_infrastructure`] (should a circuit breaker
//! count it?). The source error of the backend is kept and reachable through
//! [`std::error::Error::source`]; dependency types never appear in the kinds.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::capability::Capability;
use crate::Revision;

/// The result type of every kvmap call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Callers branch on this; it is `Copy` and carries only
/// plain data.
///
/// Each variant's doc says whether the condition is *transient* (the same
/// request may succeed later) or *permanent* (it will fail the same way
/// until something else changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key breaks a key rule (empty, too long, control characters, ...).
    /// Permanent. Checked before any I/O.
    InvalidKey,
    /// An argument other than the key is invalid (bad range, zero limit,
    /// malformed cursor, bad URL or configuration). Permanent.
    InvalidArgument,
    /// The value is larger than the store accepts. Permanent; nothing was
    /// written.
    ValueTooLarge {
        /// Size of the rejected value in bytes.
        size: usize,
        /// The store's limit in bytes.
        max: usize,
    },
    /// A create-only write found the key present. Permanent for this request.
    AlreadyExists,
    /// A conditional write or delete found another revision than expected.
    /// Permanent for this request: re-read, then decide.
    Conflict {
        /// The key's current revision, `None` when the key is absent.
        current: Option<Revision>,
    },
    /// The request context's deadline passed. If it passed before the call
    /// started, nothing was done.
    DeadlineExceeded,
    /// The request context was cancelled. If it was cancelled before the
    /// call started, nothing was done.
    Cancelled,
    /// A stale read could not be served within the requested staleness
    /// bound. Transient: retry, or read with `Consistency::Strong`.
    StaleTooOld {
        /// The staleness the store could guarantee.
        staleness: Duration,
        /// The bound the caller asked for.
        max: Duration,
    },
    /// The backend cannot be reached or refused service (connection
    /// refused or reset, cluster down, failover in progress, out of
    /// memory). Transient.
    Unavailable,
    /// The backend did not answer within its own operation timeout.
    /// Transient; a write that timed out has an unknown outcome.
    Timeout,
    /// The credentials were missing or wrong. Permanent until they change.
    Unauthenticated,
    /// The credentials are valid but lack a permission. Permanent until
    /// the grants change.
    PermissionDenied,
    /// The store does not offer this capability (see
    /// [`Capabilities`](crate::Capabilities)). Permanent.
    Unsupported {
        /// The missing capability.
        capability: Capability,
    },
    /// A watch asked to start at a revision whose history is gone.
    /// Permanent for that revision: start again from a fresh read.
    Compacted {
        /// The oldest revision the store can still replay from.
        oldest: Revision,
    },
    /// A circuit breaker is open and rejected the call without trying.
    /// Transient.
    CircuitOpen,
    /// A lock is held by another holder and the wait for it ran out, or
    /// this holder's lease is lost. Transient: try again later.
    Locked,
    /// A value could not be encoded or decoded by a typed view. Permanent.
    Codec,
    /// The server holds data under a kvmap key that kvmap cannot read (a
    /// foreign key of another type inside the namespace, a corrupted
    /// envelope). Permanent.
    InvalidData,
    /// A bug or an unexpected answer of the backend. Permanent.
    Internal,
}

impl ErrorKind {
    fn describe(&self) -> Cow<'static, str> {
        match self {
            Self::InvalidKey => "invalid key".into(),
            Self::InvalidArgument => "invalid argument".into(),
            Self::ValueTooLarge { size, max } => {
                format!("value too large ({size} bytes, max {max})").into()
            }
            Self::AlreadyExists => "key already exists".into(),
            Self::Conflict { current: Some(r) } => {
                format!("revision conflict (current revision {r})").into()
            }
            Self::Conflict { current: None } => "revision conflict (key absent)".into(),
            Self::DeadlineExceeded => "deadline exceeded".into(),
            Self::Cancelled => "cancelled".into(),
            Self::StaleTooOld { staleness, max } => {
                format!("stale read too old (staleness {staleness:?}, max {max:?})").into()
            }
            Self::Unavailable => "backend unavailable".into(),
            Self::Timeout => "backend timed out".into(),
            Self::Unauthenticated => "unauthenticated".into(),
            Self::PermissionDenied => "permission denied".into(),
            Self::Unsupported { capability } => format!("unsupported: {capability}").into(),
            Self::Compacted { oldest } => {
                format!("history compacted (oldest revision {oldest})").into()
            }
            Self::CircuitOpen => "circuit open".into(),
            Self::Locked => "locked".into(),
            Self::Codec => "codec error".into(),
            Self::InvalidData => "invalid data on server".into(),
            Self::Internal => "internal error".into(),
        }
    }
}

/// May the same request be sent again?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// Nothing happened, or the operation is idempotent: retrying is safe
    /// (after a back-off for transient kinds).
    Safe,
    /// A write may or may not have been applied (for example a timeout or
    /// a dropped connection after the request was sent). Retry only if the
    /// write is idempotent, or re-read first.
    OutcomeUnknown,
    /// Retrying the same request fails the same way.
    Never,
}

/// The operation an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Opening or connecting a store.
    Open,
    /// [`KvStore::get`](crate::KvStore::get).
    Get,
    /// [`KvStore::put`](crate::KvStore::put).
    Put,
    /// [`KvStore::delete`](crate::KvStore::delete).
    Delete,
    /// [`KvStore::list`](crate::KvStore::list).
    List,
    /// [`KvStore::watch`](crate::KvStore::watch) and its stream.
    Watch,
    /// [`KvStore::get_many`](crate::KvStore::get_many).
    GetMany,
    /// [`KvStore::apply`](crate::KvStore::apply).
    Apply,
    /// Encoding or decoding a typed value.
    Codec,
    /// [`KvStore::lock`](crate::KvStore::lock) and the lease it returns.
    Lock,
}

impl Op {
    /// Whether the operation changes data.
    pub fn is_write(self) -> bool {
        matches!(self, Op::Put | Op::Delete | Op::Apply | Op::Lock)
    }

    /// The lowercase name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Watch => "watch",
            Op::GetMany => "get_many",
            Op::Apply => "apply",
            Op::Codec => "codec",
            Op::Lock => "lock",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The kvmap error: a kind, the backend, the operation, the key, a detail
/// message and the kept source.
///
/// Messages are lowercase with context, e.g.
/// `redis: put "users/7": value too large (2000000 bytes, max 1048576)`.
///
/// `Display` shows this error only; the underlying cause (a RocksDB
/// status, an I/O or HTTP error) is [`std::error::Error::source`], as the
/// Rust API guidelines ask, so error reporters do not print it twice.
/// [`Error::report`] displays the whole chain on one line, for logs and
/// command-line output.
#[derive(Clone)]
pub struct Error(Box<Inner>);

/// [`Error::report`]: an error and its chain of sources, `: `-separated.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = std::error::Error::source(self.0);
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    backend: Cow<'static, str>,
    op: Option<Op>,
    key: Option<String>,
    detail: Option<String>,
    retry: Option<RetryClass>,
    source: Option<Source>,
}

impl Error {
    /// Displays this error followed by its chain of sources, e.g.
    /// `rocksdb: open: backend unavailable: i/o error: IO error: ...`:
    /// for logs and command-line output, where the cause matters.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    /// A new error of `kind` with no context yet.
    pub fn new(kind: ErrorKind) -> Self {
        Self(Box::new(Inner {
            kind,
            backend: Cow::Borrowed(""),
            op: None,
            key: None,
            detail: None,
            retry: None,
            source: None,
        }))
    }

    /// Sets the backend name (`"redis"`, `"rocksdb"`, ...).
    pub fn with_backend(mut self, backend: impl Into<Cow<'static, str>>) -> Self {
        self.0.backend = backend.into();
        self
    }

    /// Sets the operation.
    pub fn with_op(mut self, op: Op) -> Self {
        self.0.op = Some(op);
        self
    }

    /// Sets the key the operation was about.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.0.key = Some(key.into());
        self
    }

    /// Adds a detail message (lowercase, no trailing period).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Keeps the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// Overrides the retry class derived from the kind and operation, for
    /// backends that know more (e.g. a request that was never sent).
    pub fn with_retry(mut self, retry: RetryClass) -> Self {
        self.0.retry = Some(retry);
        self
    }

    /// Fills backend, operation and key where they are not set yet.
    pub fn in_context(mut self, backend: &str, op: Op, key: Option<&str>) -> Self {
        if self.0.backend.is_empty() {
            self.0.backend = Cow::Owned(backend.to_owned());
        }
        if self.0.op.is_none() {
            self.0.op = Some(op);
        }
        if self.0.key.is_none() {
            self.0.key = key.map(str::to_owned);
        }
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The backend that produced the error (empty if unknown).
    pub fn backend(&self) -> &str {
        &self.0.backend
    }

    /// The operation, if known.
    pub fn op(&self) -> Option<Op> {
        self.0.op
    }

    /// The key, if the operation was about one.
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// The detail message, if any.
    pub fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }

    /// Whether the same request may be sent again.
    ///
    /// Derived from the kind and whether the operation writes, unless the
    /// backend set it explicitly: a timeout or an `Unavailable` error
    /// during a write (a dropped connection, an i/o error while syncing)
    /// is [`RetryClass::OutcomeUnknown`] unless the backend marks it
    /// [`RetryClass::Safe`] because it knows nothing ran;
    /// transient kinds on reads are [`RetryClass::Safe`]; bad input,
    /// conflicts and permission errors are [`RetryClass::Never`].
    pub fn retry_class(&self) -> RetryClass {
        if let Some(r) = self.0.retry {
            return r;
        }
        let write = self.0.op.is_some_and(Op::is_write);
        match self.0.kind {
            // A backend that knows nothing ran (a refused connection, a
            // server that rejected the command) says so with `with_retry`.
            ErrorKind::Timeout | ErrorKind::Unavailable if write => RetryClass::OutcomeUnknown,
            ErrorKind::Timeout
            | ErrorKind::Unavailable
            | ErrorKind::CircuitOpen
            | ErrorKind::Locked
            | ErrorKind::StaleTooOld { .. } => RetryClass::Safe,
            ErrorKind::InvalidKey
            | ErrorKind::InvalidArgument
            | ErrorKind::ValueTooLarge { .. }
            | ErrorKind::AlreadyExists
            | ErrorKind::Conflict { .. }
            | ErrorKind::DeadlineExceeded
            | ErrorKind::Cancelled
            | ErrorKind::Unauthenticated
            | ErrorKind::PermissionDenied
            | ErrorKind::Unsupported { .. }
            | ErrorKind::Compacted { .. }
            | ErrorKind::Codec
            | ErrorKind::InvalidData
            | ErrorKind::Internal => RetryClass::Never,
        }
    }

    /// Whether the error is transient (the same request may succeed later).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::CircuitOpen
                | ErrorKind::Locked
                | ErrorKind::StaleTooOld { .. }
        )
    }

    /// Whether a circuit breaker should count this error as a failure of
    /// the backend: unavailability and backend timeouts are; bad input,
    /// conflicts, missing capabilities, auth errors and the caller's own
    /// deadline or cancellation are not.
    pub fn is_infrastructure(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
    }

    /// Whether the kind is [`ErrorKind::Conflict`] or
    /// [`ErrorKind::AlreadyExists`]: a condition of a write did not hold.
    pub fn is_precondition_failed(&self) -> bool {
        matches!(
            self.0.kind,
            ErrorKind::Conflict { .. } | ErrorKind::AlreadyExists
        )
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.backend.is_empty() {
            write!(f, "{}: ", self.0.backend)?;
        }
        if let Some(op) = self.0.op {
            write!(f, "{op}")?;
            match &self.0.key {
                Some(k) => write!(f, " {k:?}: ")?,
                None => f.write_str(": ")?,
            }
        }
        f.write_str(&self.0.kind.describe())?;
        if let Some(d) = &self.0.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind);
        if !self.0.backend.is_empty() {
            d.field("backend", &self.0.backend);
        }
        if let Some(op) = self.0.op {
            d.field("op", &op);
        }
        if let Some(k) = &self.0.key {
            d.field("key", k);
        }
        if let Some(m) = &self.0.detail {
            d.field("detail", m);
        }
        if let Some(s) = &self.0.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_lowercase_with_context() {
        let e = Error::new(ErrorKind::ValueTooLarge { size: 10, max: 5 })
            .with_backend("memory")
            .with_op(Op::Put)
            .with_key("a/b");
        assert_eq!(
            e.to_string(),
            "memory: put \"a/b\": value too large (10 bytes, max 5)"
        );
    }

    #[test]
    fn retry_class_table() {
        let cases = [
            (ErrorKind::Timeout, Op::Get, RetryClass::Safe),
            (ErrorKind::Timeout, Op::Put, RetryClass::OutcomeUnknown),
            (ErrorKind::Unavailable, Op::Put, RetryClass::OutcomeUnknown),
            (
                ErrorKind::Unavailable,
                Op::Apply,
                RetryClass::OutcomeUnknown,
            ),
            (ErrorKind::Unavailable, Op::Get, RetryClass::Safe),
            (ErrorKind::Unavailable, Op::List, RetryClass::Safe),
            (
                ErrorKind::Conflict { current: None },
                Op::Put,
                RetryClass::Never,
            ),
            (ErrorKind::InvalidKey, Op::Get, RetryClass::Never),
            (ErrorKind::CircuitOpen, Op::Delete, RetryClass::Safe),
            (ErrorKind::Cancelled, Op::Get, RetryClass::Never),
            (ErrorKind::Locked, Op::Lock, RetryClass::Safe),
            (ErrorKind::Timeout, Op::Lock, RetryClass::OutcomeUnknown),
        ];
        for (kind, op, want) in cases {
            assert_eq!(
                Error::new(kind).with_op(op).retry_class(),
                want,
                "{kind:?} {op}"
            );
        }
        let e = Error::new(ErrorKind::Unavailable)
            .with_op(Op::Put)
            .with_retry(RetryClass::Safe);
        assert_eq!(
            e.retry_class(),
            RetryClass::Safe,
            "a backend's explicit class wins"
        );
    }

    #[test]
    fn breaker_counts_only_infrastructure() {
        assert!(Error::new(ErrorKind::Unavailable).is_infrastructure());
        assert!(Error::new(ErrorKind::Timeout).is_infrastructure());
        assert!(!Error::new(ErrorKind::Cancelled).is_infrastructure());
        assert!(!Error::new(ErrorKind::DeadlineExceeded).is_infrastructure());
        assert!(!Error::new(ErrorKind::Conflict { current: Some(1) }).is_infrastructure());
        assert!(!Error::new(ErrorKind::InvalidKey).is_infrastructure());
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::Unavailable).with_source(io);
        assert!(std::error::Error::source(&e).is_some());
        // Display does not repeat the source; the report shows the chain.
        assert!(!e.to_string().contains("boom"), "{e}");
        assert_eq!(e.report().to_string(), format!("{e}: boom"));
    }
}
