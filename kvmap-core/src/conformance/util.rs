//! Assertion helpers shared by the cases.

use std::fmt;
use std::time::Duration;

use futures::StreamExt;

use crate::error::{Error, ErrorKind, Result};
use crate::key::Key;
use crate::watch::{WatchEvent, WatchStream};

/// Why a case failed.
#[derive(Debug)]
pub struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(format!("unexpected error: {e} ({e:?})"))
    }
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s)
    }
}

pub(crate) type Check<T = ()> = std::result::Result<T, Failure>;

/// Passed.
pub(crate) const PASS: super::CaseResult = Ok(None);

pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(Failure(msg()))
    }
}

pub(crate) fn eq<T: PartialEq + fmt::Debug>(got: T, want: T, what: &str) -> Check {
    ensure(got == want, || {
        format!("{what}: got {got:?}, want {want:?}")
    })
}

/// Expects an error whose kind satisfies `pred`.
pub(crate) fn expect_err<T: fmt::Debug>(
    r: Result<T>,
    pred: impl Fn(ErrorKind) -> bool,
    what: &str,
) -> Check<Error> {
    match r {
        Ok(v) => Err(Failure(format!("{what}: expected an error, got Ok({v:?})"))),
        Err(e) if pred(e.kind()) => Ok(e),
        Err(e) => Err(Failure(format!("{what}: wrong error kind: {e} ({e:?})"))),
    }
}

/// Expects exactly `kind`.
pub(crate) fn expect_kind<T: fmt::Debug>(
    r: Result<T>,
    kind: ErrorKind,
    what: &str,
) -> Check<Error> {
    expect_err(r, |k| k == kind, what)
}

/// Expects `k` to be absent (read with a fresh context).
pub(crate) async fn expect_absent(fx: &super::Fixture, k: &Key, what: &str) -> Check {
    let got = fx.store.get(&crate::Context::new(), k).await?;
    eq(got, None, what)
}

pub(crate) fn key(s: &str) -> Check<Key> {
    Key::new(s).map_err(|e| Failure(format!("bad test key {s:?}: {e}")))
}

/// The next event within `timeout`.
pub(crate) async fn next_event(stream: &mut WatchStream, timeout: Duration) -> Check<WatchEvent> {
    match tokio::time::timeout(timeout, stream.next()).await {
        Err(_) => Err(Failure(format!("no watch event within {timeout:?}"))),
        Ok(None) => Err(Failure("watch stream ended".into())),
        Ok(Some(Err(e))) => Err(Failure(format!("watch stream error: {e}"))),
        Ok(Some(Ok(ev))) => Ok(ev),
    }
}

/// The next event that is not a resync, within `timeout` (backends may
/// resync at any time; a resync is never wrong).
pub(crate) async fn next_change(stream: &mut WatchStream, timeout: Duration) -> Check<WatchEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_event(stream, left).await? {
            WatchEvent::Resync { .. } => continue,
            ev => return Ok(ev),
        }
    }
}

/// A random id for this run, so runs against a shared server never
/// collide.
pub(crate) fn run_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{:x}-{n:016x}", std::process::id())
}
