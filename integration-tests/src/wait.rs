//! Polling helpers: readiness is always a condition checked in a loop against
//! a deadline, never a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Default poll interval of [`poll_until`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Ok(Some(value))`,
/// and returns that value. `Ok(None)` and `Err(_)` mean "not yet"; the last
/// error or reason is reported if `timeout` passes first.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `fut` with a timeout, turning the elapsed timeout into an error.
pub async fn with_timeout<T>(
    what: &str,
    timeout: Duration,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => bail!("{what}: no answer within {timeout:?}"),
    }
}

/// Prints how long a topology took to become ready (shown with `--nocapture`
/// or on failure).
pub(crate) fn report_ready(what: &str, started: Instant, detail: &str) {
    eprintln!(
        "[kvmap-it] {what} ready in {:.2}s ({detail})",
        started.elapsed().as_secs_f64()
    );
}
