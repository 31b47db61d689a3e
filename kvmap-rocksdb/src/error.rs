//! The mapping of RocksDB errors to kvmap [`ErrorKind`]s.
//!
//! RocksDB reports a status code (parsed by the `rocksdb` crate into
//! [`rocksdb::ErrorKind`]) and a message. The code alone is too coarse
//! (`IOError` covers a held lock, a missing permission and a full disk), so
//! [`classify`] looks at both. The table is tested in this module.

use kvmap_core::{Error, ErrorKind, Op, RetryClass};
use rocksdb::ErrorKind as Rk;

pub(crate) const NAME: &str = "rocksdb";

/// The detail of a database whose `LOCK` file is held.
pub(crate) const LOCKED: &str = "database is locked by another process or handle";

/// The kvmap kind and a detail message for a RocksDB status.
pub(crate) fn classify(kind: Rk, message: &str) -> (ErrorKind, &'static str) {
    let m = message.to_ascii_lowercase();
    match kind {
        // Before the lock rule: "While open a file for locking: ...:
        // Permission denied" is a permission problem.
        Rk::IOError if m.contains("permission denied") || m.contains("read-only file system") => (
            ErrorKind::PermissionDenied,
            "no permission on the database path",
        ),
        Rk::IOError if m.contains("lock") => (ErrorKind::Unavailable, LOCKED),
        Rk::IOError if m.contains("not a directory") => (
            ErrorKind::InvalidArgument,
            "the database path is not a directory",
        ),
        Rk::IOError if m.contains("no space left") => (ErrorKind::Unavailable, "the disk is full"),
        Rk::IOError => (ErrorKind::Unavailable, "i/o error"),
        Rk::InvalidArgument if m.contains("does not exist") => (
            ErrorKind::InvalidArgument,
            "the database does not exist and create_if_missing is off",
        ),
        Rk::InvalidArgument if m.contains("column famil") => (
            ErrorKind::InvalidData,
            "the database was not written by kvmap (unexpected column families)",
        ),
        Rk::InvalidArgument => (ErrorKind::InvalidArgument, "rejected by rocksdb"),
        Rk::Corruption => (ErrorKind::InvalidData, "the database is corrupted"),
        Rk::NotFound => (ErrorKind::InvalidData, "a database file is missing"),
        Rk::TimedOut => (ErrorKind::Timeout, "rocksdb timed out"),
        Rk::Busy | Rk::TryAgain => (ErrorKind::Unavailable, "rocksdb is busy"),
        Rk::ShutdownInProgress => (ErrorKind::Unavailable, "the database is shutting down"),
        Rk::ColumnFamilyDropped => (ErrorKind::Unavailable, "a column family was dropped"),
        Rk::NotSupported => (ErrorKind::Internal, "operation not supported by rocksdb"),
        Rk::MergeInProgress
        | Rk::Incomplete
        | Rk::Aborted
        | Rk::Expired
        | Rk::CompactionTooLarge
        | Rk::Unknown => (ErrorKind::Internal, "unexpected rocksdb status"),
    }
}

/// Whether a status means RocksDB refused the operation before it did
/// anything.
fn refused_before_start(kind: &Rk) -> bool {
    matches!(
        kind,
        Rk::Busy | Rk::TryAgain | Rk::ShutdownInProgress | Rk::ColumnFamilyDropped
    )
}

/// Converts a RocksDB error, keeping it as the source.
///
/// Retry class: a write refused before it started (`Busy`, `TryAgain`, a
/// shutdown, a dropped column family) is [`RetryClass::Safe`]; any other
/// failure of a write, an i/o error during the WAL sync above all, keeps
/// core's default for writes, [`RetryClass::OutcomeUnknown`]: the record
/// may be in the log and come back after a restart.
pub(crate) fn from_rocks(e: rocksdb::Error, op: Op) -> Error {
    let (kind, detail) = classify(e.kind(), e.as_ref());
    let refused = refused_before_start(&e.kind());
    let err = Error::new(kind)
        .with_backend(NAME)
        .with_op(op)
        .with_detail(detail)
        .with_source(e);
    if refused {
        err.with_retry(RetryClass::Safe)
    } else {
        err
    }
}

/// An internal error of this backend (a bug or a lost worker thread).
pub(crate) fn internal(op: Op, detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::Internal)
        .with_backend(NAME)
        .with_op(op)
        .with_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real messages as RocksDB prints them.
    #[test]
    fn mapping_table() {
        let table: &[(Rk, &str, ErrorKind, &str)] = &[
            (
                Rk::IOError,
                "IO error: While lock file: /d/LOCK: Resource temporarily unavailable",
                ErrorKind::Unavailable,
                LOCKED,
            ),
            (
                Rk::IOError,
                "IO error: lock hold by current process, acquire time 1 acquiring thread 2: /d/LOCK: No locks available",
                ErrorKind::Unavailable,
                LOCKED,
            ),
            (
                Rk::IOError,
                "IO error: While open a file for locking: /d/LOCK: Permission denied",
                ErrorKind::PermissionDenied,
                "no permission",
            ),
            (
                Rk::IOError,
                "IO error: While mkdir if missing: /d: Permission denied",
                ErrorKind::PermissionDenied,
                "no permission",
            ),
            (
                Rk::IOError,
                "IO error: While open a file for appending: /d/000001.log: Read-only file system",
                ErrorKind::PermissionDenied,
                "no permission",
            ),
            (
                Rk::IOError,
                "IO error: While mkdir if missing: /f: Not a directory",
                ErrorKind::InvalidArgument,
                "not a directory",
            ),
            (
                Rk::IOError,
                "IO error: No space left on device",
                ErrorKind::Unavailable,
                "disk is full",
            ),
            (
                Rk::IOError,
                "IO error: Input/output error",
                ErrorKind::Unavailable,
                "i/o error",
            ),
            (
                Rk::InvalidArgument,
                "Invalid argument: /d/CURRENT: does not exist (create_if_missing is false)",
                ErrorKind::InvalidArgument,
                "does not exist",
            ),
            (
                Rk::InvalidArgument,
                "Invalid argument: Column families not opened: x",
                ErrorKind::InvalidData,
                "not written by kvmap",
            ),
            (
                Rk::InvalidArgument,
                "Invalid argument: bad option",
                ErrorKind::InvalidArgument,
                "rejected",
            ),
            (
                Rk::Corruption,
                "Corruption: CURRENT file corrupted",
                ErrorKind::InvalidData,
                "corrupted",
            ),
            (
                Rk::NotFound,
                "NotFound: /d/000004.sst",
                ErrorKind::InvalidData,
                "missing",
            ),
            (
                Rk::TimedOut,
                "Operation timed out: x",
                ErrorKind::Timeout,
                "timed out",
            ),
            (Rk::Busy, "Resource busy: x", ErrorKind::Unavailable, "busy"),
            (
                Rk::TryAgain,
                "Operation failed. Try again.: x",
                ErrorKind::Unavailable,
                "busy",
            ),
            (
                Rk::ShutdownInProgress,
                "Shutdown in progress: x",
                ErrorKind::Unavailable,
                "shutting down",
            ),
            (
                Rk::ColumnFamilyDropped,
                "Column family dropped: x",
                ErrorKind::Unavailable,
                "dropped",
            ),
            (
                Rk::NotSupported,
                "Not implemented: x",
                ErrorKind::Internal,
                "not supported",
            ),
            (Rk::Aborted, "Operation aborted: x", ErrorKind::Internal, "unexpected"),
            (Rk::Unknown, "???", ErrorKind::Internal, "unexpected"),
        ];
        for (rk, msg, want, detail) in table {
            let (kind, d) = classify(rk.clone(), msg);
            assert_eq!(kind, *want, "{msg}");
            assert!(d.contains(detail), "{msg}: detail {d:?} lacks {detail:?}");
            assert_eq!(d, d.to_lowercase(), "details are lowercase");
        }
    }

    #[test]
    fn transient_kinds_are_infrastructure() {
        let e = Error::new(classify(Rk::IOError, "IO error: x").0);
        assert!(e.is_infrastructure());
        let e = Error::new(classify(Rk::Corruption, "Corruption: x").0);
        assert!(!e.is_transient());
    }

    #[test]
    fn a_failed_write_is_outcome_unknown_unless_refused() {
        // An i/o error while writing or syncing the WAL: the record may be
        // in the log, so the write may have happened.
        let io =
            Error::new(classify(Rk::IOError, "IO error: Input/output error").0).with_op(Op::Put);
        assert!(!refused_before_start(&Rk::IOError));
        assert_eq!(io.retry_class(), RetryClass::OutcomeUnknown);
        for kind in [Rk::Busy, Rk::TryAgain, Rk::ShutdownInProgress] {
            assert!(refused_before_start(&kind), "{kind:?}");
        }
        for kind in [Rk::Corruption, Rk::Incomplete, Rk::Aborted] {
            assert!(!refused_before_start(&kind), "{kind:?}");
        }
    }
}
