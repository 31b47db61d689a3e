//! The process's table of open databases.
//!
//! RocksDB allows one open handle per database directory. Dropping the
//! last [`RocksStore`](crate::RocksStore) clone stops its background
//! threads and closes the database on a blocking thread (never on an async
//! worker), so the close may still be running when the same code opens the
//! path again, as "drop, then reopen" code and tests do. This table makes
//! that reopen wait (up to [`CLOSE_WAIT`]) for the closing handle instead
//! of failing on RocksDB's `LOCK` file, and makes opening a path that a
//! live handle of this process holds fail at once with a clear message.
//!
//! Hand-written: it is a mutex-protected list and a condition variable,
//! specific to this close protocol.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kvmap_core::{Error, ErrorKind, Op, Result};

use crate::error::{LOCKED, NAME};

/// The longest an open waits for a handle of the same path to close.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// An open database: its canonical path and whether its store was dropped
/// (the database is closing).
struct Slot {
    path: PathBuf,
    closing: bool,
}

static OPEN: Mutex<Vec<Slot>> = Mutex::new(Vec::new());
static CLOSED: Condvar = Condvar::new();

fn table() -> MutexGuard<'static, Vec<Slot>> {
    // Every update leaves the list consistent, so a poisoned lock is fine.
    OPEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The path as the table knows it: canonical (so two spellings of one
/// directory match), through its parent while it does not exist yet.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(p), Some(name)) => p.join(name),
        _ => path.to_path_buf(),
    }
}

/// A database's entry in the table; removed when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    path: PathBuf,
}

impl Registration {
    /// Registers `path` as open: waits while a dropped store of this
    /// process still closes it.
    ///
    /// # Errors
    /// `Unavailable` (the locked-database detail) if a live store of this
    /// process has it open, or its close takes longer than [`CLOSE_WAIT`].
    pub(crate) fn acquire(path: &Path) -> Result<Self> {
        let path = canonical(path);
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut t = table();
        loop {
            let Some(slot) = t.iter().find(|s| s.path == path) else {
                t.push(Slot {
                    path: path.clone(),
                    closing: false,
                });
                return Ok(Self { path });
            };
            let now = Instant::now();
            if !slot.closing || now >= deadline {
                let why = if slot.closing {
                    "a dropped store of this process is still closing it"
                } else {
                    "a store of this process has it open"
                };
                return Err(Error::new(ErrorKind::Unavailable)
                    .with_backend(NAME)
                    .with_op(Op::Open)
                    .with_detail(format!("{LOCKED} ({why}): {}", path.display())));
            }
            t = CLOSED
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Marks the database as closing: its last store was dropped.
    pub(crate) fn closing(&self) {
        if let Some(slot) = table().iter_mut().find(|s| s.path == self.path) {
            slot.closing = true;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut t = table();
        if let Some(i) = t.iter().position(|s| s.path == self.path) {
            t.swap_remove(i);
        }
        drop(t);
        CLOSED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_path_is_refused_and_a_closing_one_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let first = Registration::acquire(dir.path()).unwrap();
        let e = Registration::acquire(dir.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("has it open"), "{e}");

        first.closing();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first);
        });
        let started = Instant::now();
        let second = Registration::acquire(dir.path()).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        closer.join().unwrap();
        drop(second);
        // Removed on drop: a third open goes through at once.
        drop(Registration::acquire(dir.path()).unwrap());
    }
}
