//! Leases and locks with fencing tokens.
//!
//! [`KvStore::lock`](crate::KvStore::lock) acquires an exclusive lease on a
//! key and returns a [`LockGuard`]:
//!
//! - the guard carries a [`FencingToken`] that strictly increases for each
//!   new holder of that key, across processes and restarts of the backend
//!   (where the backend persists it; see its docs), so a resource can reject
//!   a stale holder ([`Fence`] does that in memory);
//! - it renews the lease in the background every third of its TTL and
//!   exposes a *lost* signal ([`LockGuard::lost`], [`LockGuard::is_lost`])
//!   that fires as soon as the lease is known lost or can no longer be
//!   proven held: a renewal said the lease is gone (expired, session
//!   invalidated, deleted by someone else), or no renewal succeeded within
//!   the TTL;
//! - [`LockGuard::release`] releases it; dropping the guard releases it in a
//!   spawned task without blocking, leaving at worst a lease that expires
//!   by its TTL.
//!
//! Waiting for a held lock honours the [`Context`]: it stops at the
//! deadline ([`ErrorKind::DeadlineExceeded`]) or on cancellation
//! ([`ErrorKind::Cancelled`]); [`LockOptions::wait`] bounds it further
//! ([`ErrorKind::Locked`] when it runs out), and a zero wait is a try-lock.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use kvmap_core::{Context, ErrorKind, Key, KvStore, LockOptions, MemoryStore};
//!
//! let store = MemoryStore::new();
//! let ctx = Context::new();
//! let key = Key::new("jobs/migrate")?;
//! let guard = store.lock(&ctx, &key, LockOptions::new(Duration::from_secs(10))).await?;
//! // A second holder is refused while the first one holds the lease.
//! let busy = store.lock(&ctx, &key, LockOptions::try_lock(Duration::from_secs(10))).await;
//! assert_eq!(busy.unwrap_err().kind(), ErrorKind::Locked);
//! let first = guard.token();
//! guard.release().await?;
//! let next = store.lock(&ctx, &key, LockOptions::try_lock(Duration::from_secs(10))).await?;
//! assert!(next.token() > first);
//! # Ok::<(), kvmap_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # For backend authors
//! A backend implements [`LockDriver`] (three single-round-trip operations
//! on its server) and answers `lock` with [`acquire`]. The waiting, the
//! renewal task, the lost signal, the release on drop and the context
//! handling are written once, here.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::context::{Context, Scope};
use crate::error::{Error, ErrorKind, Op, Result, RetryClass};
use crate::key::Key;

mod local;

pub use local::{LocalLocks, MemoryTokens, TokenSource};

/// A number that strictly increases for each new holder of a lock key.
///
/// Pass it along with every write the holder makes to a shared resource;
/// the resource remembers the highest token it has seen and rejects lower
/// ones ([`Fence`]), so a holder that lost its lease without noticing (a
/// long pause, a partition) cannot overwrite the work of its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token.
    pub const fn new(token: u64) -> Self {
        Self(token)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How to acquire a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// How long the lease lasts without renewal. A holder that stops
    /// renewing (crash, pause, partition) loses the lock after at most
    /// this long plus the backend's documented slack.
    pub ttl: Duration,
    /// How long to wait for a held lock: `None` waits until the context's
    /// deadline or cancellation, `Some(Duration::ZERO)` tries once.
    pub wait: Option<Duration>,
    /// Whether the guard renews the lease in the background (default).
    /// Without it the lease is lost at its TTL unless
    /// [`LockGuard::renew`] is called.
    pub auto_renew: bool,
}

impl LockOptions {
    /// A lease of `ttl`, waiting as long as the context allows, renewed in
    /// the background.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            wait: None,
            auto_renew: true,
        }
    }

    /// A try-lock: fails with [`ErrorKind::Locked`] at once if held.
    pub fn try_lock(ttl: Duration) -> Self {
        Self::new(ttl).with_wait(Duration::ZERO)
    }

    /// Waits at most `wait` for a held lock.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Turns background renewal on or off.
    pub fn with_auto_renew(mut self, on: bool) -> Self {
        self.auto_renew = on;
        self
    }
}

/// What a [`LockDriver`] returns for an acquired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's fencing token.
    pub token: FencingToken,
    /// The backend's handle of the lease (an owner id, a session id), passed
    /// back to [`LockDriver::renew`] and [`LockDriver::release`].
    pub handle: String,
}

/// The server side of locks, implemented by each backend; see the module
/// docs. Each call is one attempt; [`acquire`] does the waiting and
/// renewing.
///
/// Calls may be sent twice by client retries: `try_acquire` with the same
/// `owner` must return the same lease if the first attempt took it;
/// `renew` and `release` must only touch a lease whose handle matches.
#[async_trait]
pub trait LockDriver: Send + Sync + fmt::Debug + 'static {
    /// The backend name used in errors.
    fn backend(&self) -> &str;

    /// The shortest and longest TTL the backend accepts.
    fn ttl_range(&self) -> (Duration, Duration) {
        (Duration::from_millis(100), LockOptions::MAX_TTL)
    }

    /// One attempt to take the lease of `key` for `owner` (a random id
    /// unique to this acquisition) for `ttl`. `Ok(None)`: someone else
    /// holds it.
    async fn try_acquire(&self, key: &Key, owner: &str, ttl: Duration) -> Result<Option<Lease>>;

    /// Extends the lease to `ttl` from now. `Ok(false)`: the lease is no
    /// longer this holder's (expired, invalidated, taken over, deleted).
    async fn renew(&self, key: &Key, lease: &Lease, ttl: Duration) -> Result<bool>;

    /// Releases the lease if it is still this holder's; a lease that is
    /// already gone is not an error.
    async fn release(&self, key: &Key, lease: &Lease) -> Result<()>;
}

impl LockOptions {
    /// The longest TTL any backend is asked for (one day).
    pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
}

/// The state a guard shares with its renewal task.
#[derive(Debug)]
struct Shared {
    driver: Arc<dyn LockDriver>,
    /// The key as the driver knows it.
    driver_key: Key,
    lease: Lease,
    ttl: Duration,
    /// Until when the lease is proven held: the send time of the last
    /// successful acquire or renewal plus the TTL.
    valid_until: Mutex<Instant>,
    /// Fired when the lease is lost or released.
    lost: CancellationToken,
    /// Why it was lost, if it was.
    reason: Mutex<Option<String>>,
    /// Stops the renewal task.
    stop: CancellationToken,
}

impl Shared {
    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn extend(&self, sent: Instant) {
        let mut v = self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = sent + self.ttl;
        if until > *v {
            *v = until;
        }
    }

    fn mark_lost(&self, reason: impl Into<String>) {
        {
            let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.lost.cancel();
        self.stop.cancel();
    }

    fn error(&self, kind: ErrorKind) -> Error {
        Error::new(kind).in_context(
            self.driver.backend(),
            Op::Lock,
            Some(self.driver_key.as_str()),
        )
    }
}

/// A held lock. See the [module docs](self).
///
/// Dropping it releases the lease in a spawned task (when a Tokio runtime
/// is running), without blocking.
#[derive(Debug)]
pub struct LockGuard {
    key: Key,
    shared: Arc<Shared>,
    done: bool,
}

impl LockGuard {
    /// The locked key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// This holder's fencing token.
    pub fn token(&self) -> FencingToken {
        self.shared.lease.token
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Whether the lease is lost, or can no longer be proven held (its
    /// last successful renewal is older than the TTL, e.g. after the
    /// process was paused).
    pub fn is_lost(&self) -> bool {
        if self.shared.lost.is_cancelled() {
            return true;
        }
        if Instant::now() >= self.shared.valid_until() {
            self.shared.mark_lost("no renewal succeeded within the ttl");
            return true;
        }
        false
    }

    /// Why the lease was lost, once it was.
    pub fn lost_reason(&self) -> Option<String> {
        self.shared
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves when the lease is lost (or released). Tie the critical
    /// section to it, e.g. `tokio::select!` on the work and this.
    pub async fn lost(&self) {
        let until = self.shared.valid_until();
        tokio::select! {
            () = self.shared.lost.cancelled() => {}
            () = tokio::time::sleep_until(until) => {
                // The deadline may have moved on with a renewal.
                if self.is_lost() {
                    return;
                }
                self.shared.lost.cancelled().await;
            }
        }
    }

    /// A token cancelled when the lease is lost or released, for tasks
    /// that outlive a borrow of the guard. It fires at the latest when the
    /// renewal task notices the expiry; [`LockGuard::is_lost`] is exact.
    pub fn lost_token(&self) -> CancellationToken {
        self.shared.lost.child_token()
    }

    /// Renews the lease now (for guards without auto-renewal).
    ///
    /// # Errors
    /// [`ErrorKind::Locked`] (with [`RetryClass::Never`]) if the lease is
    /// lost; the backend's error if the renewal could not be made (the
    /// lease may still be held until its TTL).
    pub async fn renew(&self) -> Result<()> {
        if self.is_lost() {
            return Err(self
                .shared
                .error(ErrorKind::Locked)
                .with_detail("the lease is lost")
                .with_retry(RetryClass::Never));
        }
        renew_once(&self.shared).await
    }

    /// Releases the lease (if still held) and stops renewing.
    ///
    /// # Errors
    /// The backend's error; the lease then expires by its TTL.
    pub async fn release(mut self) -> Result<()> {
        self.done = true;
        let shared = self.shared.clone();
        shared.stop.cancel();
        let res = shared
            .driver
            .release(&shared.driver_key, &shared.lease)
            .await
            .map_err(|e| {
                e.in_context(
                    shared.driver.backend(),
                    Op::Lock,
                    Some(shared.driver_key.as_str()),
                )
            });
        shared.mark_lost("released");
        res
    }

    /// Stops renewing without releasing: the lease expires by its TTL.
    /// For hand-over on shutdown paths, and to test expiry.
    pub fn abandon(mut self) {
        self.done = true;
        self.shared.stop.cancel();
    }

    /// Replaces the key shown to the caller (for layers that rename keys,
    /// such as [`Namespaced`](crate::Namespaced)).
    pub(crate) fn with_key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = self.shared.clone();
        shared.stop.cancel();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = shared
                    .driver
                    .release(&shared.driver_key, &shared.lease)
                    .await;
                shared.mark_lost("released on drop");
            });
        } else {
            shared.mark_lost("dropped without a runtime; the lease expires by its ttl");
        }
    }
}

/// Keeps the highest fencing token seen and rejects lower ones: the check
/// a fenced resource makes. In memory; a real resource stores the highest
/// token next to the data it protects.
#[derive(Debug, Default)]
pub struct Fence {
    highest: Mutex<Option<FencingToken>>,
}

impl Fence {
    /// A fence that has seen no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `token` if it is at least the highest seen (and records it);
    /// returns `false` for a stale token.
    pub fn admit(&self, token: FencingToken) -> bool {
        let mut h = self.highest.lock().unwrap_or_else(PoisonError::into_inner);
        match *h {
            Some(top) if token < top => false,
            _ => {
                *h = Some(token);
                true
            }
        }
    }

    /// The highest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        *self.highest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A random owner id for one acquisition (128 bits, hex).
fn owner_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Checks lock options against the driver's TTL range.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`].
pub fn check_options(driver: &dyn LockDriver, key: &Key, options: &LockOptions) -> Result<()> {
    let (min, max) = driver.ttl_range();
    if options.ttl < min || options.ttl > max {
        return Err(Error::new(ErrorKind::InvalidArgument)
            .in_context(driver.backend(), Op::Lock, Some(key.as_str()))
            .with_detail(format!(
                "lock ttl {:?} outside {:?}..={:?} for this backend",
                options.ttl, min, max
            )));
    }
    Ok(())
}

/// Acquires `key` through `driver` as [`KvStore::lock`](crate::KvStore::lock)
/// documents: validates the options, tries, waits with back-off while the
/// lock is held (bounded by `options.wait` and the context), then starts
/// the renewal task.
///
/// An attempt still in flight when the context fires is left to finish in
/// the background and its lease, if it got one, is released: a failed call
/// never leaves a lease behind (beyond, at worst, its TTL).
/// A call whose future is dropped mid-attempt (rather than stopped through
/// its context) may leave a lease that expires by its TTL.
///
/// # Errors
/// `InvalidArgument` for a TTL outside the backend's range; `Locked` when
/// the wait runs out; `DeadlineExceeded` / `Cancelled` from the context;
/// the backend's errors.
pub async fn acquire(
    driver: Arc<dyn LockDriver>,
    ctx: &Context,
    key: &Key,
    options: LockOptions,
) -> Result<LockGuard> {
    check_options(driver.as_ref(), key, &options)?;
    let backend = driver.backend().to_owned();
    let scope = Scope::new(&backend, Op::Lock).key(key.as_str());
    ctx.check(&scope)?;
    let owner = owner_id();
    let wait_until = options.wait.and_then(|w| Instant::now().checked_add(w));
    let mut backoff = Duration::from_millis(10);
    let max_backoff =
        (options.ttl / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        let sent = Instant::now();
        let got = if ctx.deadline().is_none() && ctx.cancel_token().is_none() {
            // Nothing can interrupt the attempt: no task hop needed.
            driver
                .try_acquire(key, &owner, options.ttl)
                .await
                .map_err(|e| e.in_context(scope.backend, scope.op, scope.key))?
        } else {
            let attempt = {
                let driver = driver.clone();
                let key = key.clone();
                let owner = owner.clone();
                tokio::spawn(async move { driver.try_acquire(&key, &owner, options.ttl).await })
            };
            match wait_ctx(ctx, &scope, attempt).await {
                Ok(got) => got?,
                Err((e, attempt)) => {
                    // Let the attempt finish and give back what it took.
                    let driver = driver.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        if let Ok(Ok(Some(lease))) = attempt.await {
                            let _ = driver.release(&key, &lease).await;
                        }
                    });
                    return Err(e);
                }
            }
        };
        if let Some(lease) = got {
            return Ok(start(driver, key.clone(), lease, options, sent));
        }
        let now = Instant::now();
        if wait_until.is_some_and(|w| now >= w) {
            return Err(scope
                .error(ErrorKind::Locked)
                .with_detail("held by another holder"));
        }
        let jitter = Duration::from_micros(rand::random::<u64>() % 10_000);
        let mut nap = backoff + jitter;
        if let Some(w) = wait_until {
            nap = nap.min(w.saturating_duration_since(now));
        }
        wait_ctx_plain(ctx, &scope, tokio::time::sleep(nap)).await?;
        backoff = (backoff * 2).min(max_backoff);
    }
}

type Attempt = tokio::task::JoinHandle<Result<Option<Lease>>>;

/// Awaits an attempt under the context; on deadline or cancel hands the
/// attempt back so its lease can be released.
async fn wait_ctx(
    ctx: &Context,
    scope: &Scope<'_>,
    mut attempt: Attempt,
) -> std::result::Result<Result<Option<Lease>>, (Error, Attempt)> {
    let res = wait_ctx_plain(ctx, scope, &mut attempt).await;
    match res {
        Ok(Ok(r)) => Ok(r.map_err(|e| e.in_context(scope.backend, scope.op, scope.key))),
        Ok(Err(join)) => Ok(Err(scope
            .error(ErrorKind::Internal)
            .with_detail(format!("lock attempt task failed: {join}")))),
        Err(e) => Err((e.with_retry(RetryClass::Never), attempt)),
    }
}

/// Awaits `fut` unless the context's deadline passes or it is cancelled.
async fn wait_ctx_plain<F: std::future::Future>(
    ctx: &Context,
    scope: &Scope<'_>,
    fut: F,
) -> Result<F::Output> {
    let deadline = async {
        match ctx.deadline() {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        match ctx.cancel_token() {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = cancelled => Err(scope.error(ErrorKind::Cancelled).with_detail("while acquiring the lock")),
        () = deadline => Err(scope.error(ErrorKind::DeadlineExceeded).with_detail("while acquiring the lock")),
        out = fut => Ok(out),
    }
}

fn start(
    driver: Arc<dyn LockDriver>,
    key: Key,
    lease: Lease,
    options: LockOptions,
    sent: Instant,
) -> LockGuard {
    let shared = Arc::new(Shared {
        driver,
        driver_key: key.clone(),
        lease,
        ttl: options.ttl,
        valid_until: Mutex::new(sent + options.ttl),
        lost: CancellationToken::new(),
        reason: Mutex::new(None),
        stop: CancellationToken::new(),
    });
    let task = shared.clone();
    if options.auto_renew {
        tokio::spawn(renew_loop(task));
    } else {
        tokio::spawn(expiry_watch(task));
    }
    LockGuard {
        key,
        shared,
        done: false,
    }
}

/// One renewal, extending `valid_until` on success.
async fn renew_once(shared: &Shared) -> Result<()> {
    let sent = Instant::now();
    let left = shared.valid_until().saturating_duration_since(sent);
    let res = tokio::time::timeout(
        left,
        shared
            .driver
            .renew(&shared.driver_key, &shared.lease, shared.ttl),
    )
    .await;
    match res {
        Ok(Ok(true)) => {
            shared.extend(sent);
            Ok(())
        }
        Ok(Ok(false)) => {
            shared.mark_lost("the lease is no longer held (expired, invalidated or taken over)");
            Err(shared
                .error(ErrorKind::Locked)
                .with_detail("the lease is lost")
                .with_retry(RetryClass::Never))
        }
        Ok(Err(e)) => Err(e.in_context(
            shared.driver.backend(),
            Op::Lock,
            Some(shared.driver_key.as_str()),
        )),
        Err(_) => {
            shared.mark_lost("no renewal succeeded within the ttl");
            Err(shared
                .error(ErrorKind::Locked)
                .with_detail("no renewal succeeded within the ttl")
                .with_retry(RetryClass::Never))
        }
    }
}

/// Renews every third of the TTL (sooner after a failed renewal) until
/// stopped or lost.
async fn renew_loop(shared: Arc<Shared>) {
    let period = shared.ttl / 3;
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= shared.valid_until() {
            shared.mark_lost("no renewal succeeded within the ttl");
            return;
        }
        match renew_once(&shared).await {
            Ok(()) => next = Instant::now() + period,
            Err(_) if shared.lost.is_cancelled() => return,
            Err(e) => {
                tracing::debug!(error = %e.report(), "lock renewal failed; retrying");
                next = Instant::now() + (period / 4).max(Duration::from_millis(5));
            }
        }
    }
}

/// For guards without auto-renewal: fires the lost signal at expiry.
async fn expiry_watch(shared: Arc<Shared>) {
    loop {
        let until = shared.valid_until();
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = shared.lost.cancelled() => return,
            () = tokio::time::sleep_until(until) => {}
        }
        if Instant::now() >= shared.valid_until() {
            shared.mark_lost("the lease expired (no auto-renewal)");
            return;
        }
    }
}
