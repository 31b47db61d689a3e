//! The store's cluster connection, replaced by a fresh one when it stops
//! answering.
//!
//! The `redis` crate's `ClusterConnection` reconnects single nodes by
//! itself, but under repeated connection kills (`CLIENT KILL` on every
//! master every 150 ms, `tests/exactly_once.rs`) it was seen to stop
//! answering for good: every later call timed out (compare upstream
//! redis-rs issue #2277, commands failing once enough connections go
//! stale). No option of the crate brings it back, so kvmap watches the
//! outcomes: after [`FAILURES`] consecutive connection-level failures
//! (timeouts, dropped or refused connections) with no answer for at least
//! [`QUIET`], it opens a new cluster connection from the seeds in the
//! background and swaps it in. Calls in flight finish (or time out) on the
//! old one; writes are safe to resend on the new one (write ids).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::RedisResult;

/// Consecutive connection-level failures before a rebuild.
pub(crate) const FAILURES: u32 = 6;
/// How long without any answer before a rebuild.
pub(crate) const QUIET: Duration = Duration::from_secs(2);

/// Failures since the last answer.
struct Health {
    failures: u32,
    last_answer: Instant,
}

impl Health {
    /// Records one outcome at `now`; `true` when the connection should be
    /// replaced.
    fn record(&mut self, lost: bool, now: Instant) -> bool {
        if lost {
            self.failures = self.failures.saturating_add(1);
            self.failures >= FAILURES && now.saturating_duration_since(self.last_answer) >= QUIET
        } else {
            self.failures = 0;
            self.last_answer = now;
            false
        }
    }
}

/// A cluster connection that replaces itself when it stops answering.
pub(crate) struct SharedCluster {
    current: RwLock<ClusterConnection>,
    client: ClusterClient,
    connect_timeout: Duration,
    health: Mutex<Health>,
    rebuilding: AtomicBool,
    rebuilds: std::sync::atomic::AtomicU64,
}

impl SharedCluster {
    pub(crate) fn new(
        conn: ClusterConnection,
        client: ClusterClient,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            current: RwLock::new(conn),
            client,
            connect_timeout,
            health: Mutex::new(Health {
                failures: 0,
                last_answer: Instant::now(),
            }),
            rebuilding: AtomicBool::new(false),
            rebuilds: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The connection to use now.
    pub(crate) fn get(&self) -> ClusterConnection {
        // A poisoned lock only means a panic elsewhere while swapping;
        // the connection in it is still whole.
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// How many times the connection was replaced.
    pub(crate) fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// Records a call's outcome; may start a rebuild.
    pub(crate) fn observe<T>(self: &Arc<Self>, r: &RedisResult<T>) {
        let lost = match r {
            Ok(_) => false,
            Err(e) => {
                e.is_timeout()
                    || e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
            }
        };
        let rebuild = {
            let mut h = match self.health.lock() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            h.record(lost, Instant::now())
        };
        if rebuild && !self.rebuilding.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move { this.rebuild().await });
        }
    }

    async fn rebuild(self: Arc<Self>) {
        let fut = self.client.get_async_connection();
        match tokio::time::timeout(self.connect_timeout.saturating_mul(2), fut).await {
            Ok(Ok(conn)) => {
                match self.current.write() {
                    Ok(mut c) => *c = conn,
                    Err(p) => *p.into_inner() = conn,
                }
                if let Ok(mut h) = self.health.lock() {
                    h.failures = 0;
                    h.last_answer = Instant::now();
                }
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "redis: the cluster connection stopped answering; replaced it with a new one"
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis: rebuilding the cluster connection failed; will try again");
            }
            Err(_) => tracing::debug!(
                "redis: rebuilding the cluster connection timed out; will try again"
            ),
        }
        self.rebuilding.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_only_after_enough_failures_and_quiet() {
        let t0 = Instant::now();
        let mut h = Health {
            failures: 0,
            last_answer: t0,
        };
        // Many failures right after an answer: not yet quiet long enough.
        for _ in 0..10 {
            assert!(!h.record(true, t0 + Duration::from_millis(500)));
        }
        // Quiet long enough and enough failures.
        assert!(h.record(true, t0 + QUIET));
        // One answer resets both.
        assert!(!h.record(false, t0 + QUIET));
        let later = t0 + QUIET * 3;
        for _ in 0..FAILURES - 1 {
            assert!(!h.record(true, later));
        }
        assert!(h.record(true, later));
    }
}
