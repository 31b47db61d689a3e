//! The two background tasks of a near cache: the one watch over the cached
//! scope, and the probe that verifies the store answers.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvmap_core::CancellationToken;
use kvmap_core::{Context, Key, WatchRequest};

use super::state::Shared;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Keeps one watch open over the scope; applies its events; on an error,
/// the end of the stream or a lapse, stops serving and registers anew.
pub(crate) async fn run_watch(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let ctx = Context::new().with_cancel(cancel.clone());
        let request = WatchRequest::prefix(shared.config.scope.clone());
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            r = shared.inner.watch(&ctx, request) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                shared.mark_broken();
                failures += 1;
                if failures == 1 {
                    tracing::warn!(cache = %shared.config.label, error = %e.report(), "near cache cannot open its watch; not serving until it can");
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(cache = %shared.config.label, "near cache watch open again");
        }
        failures = 0;
        backoff = MIN_BACKOFF;
        shared.registered();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = shared.resubscribe.notified() => {
                    shared.mark_broken();
                    break;
                }
                item = stream.next() => match item {
                    Some(Ok(event)) => shared.apply(event).await,
                    Some(Err(e)) => {
                        shared.mark_broken();
                        if cancel.is_cancelled() {
                            return;
                        }
                        tracing::warn!(cache = %shared.config.label, error = %e.report(), "near cache watch failed; not serving until it is registered again");
                        break;
                    }
                    None => {
                        shared.mark_broken();
                        tracing::warn!(cache = %shared.config.label, "near cache watch ended; not serving until it is registered again");
                        break;
                    }
                }
            }
        }
    }
}

/// The key the probe reads: in the scope, so a namespaced or ACL-limited
/// store allows it; absent in practice (its value does not matter).
pub(crate) fn probe_key(scope: &str) -> Option<Key> {
    Key::new(format!("{scope}__kvmap_near_cache_probe")).ok()
}

/// Reads the probe key every `probe_interval` (or when asked); a read that
/// succeeds within `max_lag` while the watch is registered extends the
/// window in which the cache serves `Default` reads. Publishes the metrics.
pub(crate) async fn run_probe(shared: Arc<Shared>, cancel: CancellationToken) {
    let key = probe_key(&shared.config.scope);
    loop {
        let t0 = shared.now_us();
        let ok = match &key {
            Some(k) => {
                let ctx = Context::new()
                    .with_timeout(shared.config.max_lag)
                    .with_cancel(cancel.clone());
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = shared.inner.get(&ctx, k) => r.is_ok(),
                }
            }
            None => false,
        };
        shared.after_probe(t0, ok);
        shared.stats.publish(&shared.config.label, shared.healthy());
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(shared.config.probe_interval) => {}
            () = shared.probe_now.notified() => {}
        }
    }
}

/// Closes the serving window when it passes (so a hit reads a flag, not
/// the clock); a probe that extends it wakes this task.
pub(crate) async fn run_window(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let wait = shared.check_window();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = shared.window_changed.notified() => {}
            () = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}
