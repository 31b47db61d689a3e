//! Exit statuses by error class, so that scripts can branch on them.

use std::process::ExitCode;

use kvmap::{ErrorKind, RetryClass};

/// Any other error (a bug, an unexpected answer, a cancelled call).
/// (2, a usage error, is clap's own.)
pub(crate) const OTHER: u8 = 1;
/// `get` or `delete` of an absent key.
pub(crate) const NOT_FOUND: u8 = 3;
/// A condition did not hold: `put --create` on an existing key, a stale
/// `--if-revision`, `watch --from-revision` of compacted history.
pub(crate) const PRECONDITION: u8 = 4;
/// The store cannot be reached, timed out, or its breaker is open.
pub(crate) const UNAVAILABLE: u8 = 5;
/// Bad input: the key, another argument or the URL, a value too large.
pub(crate) const BAD_INPUT: u8 = 6;
/// Missing or wrong credentials, or a missing permission.
pub(crate) const AUTH: u8 = 7;
/// The store does not offer what the command needs.
pub(crate) const UNSUPPORTED: u8 = 8;
/// The server holds data kvmap cannot read.
pub(crate) const INVALID_DATA: u8 = 9;

/// The table as `--help` shows it (after the URL forms).
const TABLE: &str = "\
exit status:
  0  success
  1  other error
  2  usage error
  3  not found (get or delete of an absent key; nothing on stdout)
  4  precondition failed (put --create on an existing key, stale
     --if-revision, watch --from-revision of compacted history)
  5  unavailable or timed out (a write may have happened if stderr says so)
  6  bad input (invalid key, argument or url, value too large)
  7  unauthenticated or permission denied
  8  unsupported by the store
  9  invalid data on the server
  lock: the command's own status, 75 lock held past --wait, 76 lease lost";

/// The top-level `--help` epilogue: the URL forms, then the exit statuses.
pub(crate) fn after_help() -> String {
    format!("{}\n\n{TABLE}", kvmap::URL_FORMS.trim_end())
}

/// The exit status of a failed command.
pub(crate) fn code_for(e: &kvmap::Error) -> u8 {
    match e.kind() {
        ErrorKind::InvalidKey | ErrorKind::InvalidArgument | ErrorKind::ValueTooLarge { .. } => {
            BAD_INPUT
        }
        ErrorKind::AlreadyExists | ErrorKind::Conflict { .. } | ErrorKind::Compacted { .. } => {
            PRECONDITION
        }
        ErrorKind::Unavailable
        | ErrorKind::Timeout
        | ErrorKind::CircuitOpen
        | ErrorKind::DeadlineExceeded
        | ErrorKind::StaleTooOld { .. } => UNAVAILABLE,
        ErrorKind::Unauthenticated | ErrorKind::PermissionDenied => AUTH,
        ErrorKind::Unsupported { .. } => UNSUPPORTED,
        ErrorKind::InvalidData | ErrorKind::Codec => INVALID_DATA,
        ErrorKind::Locked => crate::lock::EXIT_BUSY,
        ErrorKind::Cancelled | ErrorKind::Internal => OTHER,
        _ => OTHER,
    }
}

/// Prints the error (and whether a write may have happened) on stderr and
/// returns its exit status.
pub(crate) fn report(e: &kvmap::Error) -> ExitCode {
    eprintln!("error: {}", e.report());
    if let Some(note) = note_for(e) {
        eprintln!("{note}");
    }
    ExitCode::from(code_for(e))
}

/// The extra stderr line of an error whose outcome is unknown.
fn note_for(e: &kvmap::Error) -> Option<&'static str> {
    (e.retry_class() == RetryClass::OutcomeUnknown).then_some(
        "note: the outcome is unknown: the write may have happened; re-read before retrying",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_by_kind() {
        let cases = [
            (ErrorKind::InvalidKey, BAD_INPUT),
            (ErrorKind::ValueTooLarge { size: 2, max: 1 }, BAD_INPUT),
            (ErrorKind::AlreadyExists, PRECONDITION),
            (ErrorKind::Conflict { current: Some(3) }, PRECONDITION),
            (ErrorKind::Timeout, UNAVAILABLE),
            (ErrorKind::CircuitOpen, UNAVAILABLE),
            (ErrorKind::PermissionDenied, AUTH),
            (ErrorKind::InvalidData, INVALID_DATA),
            (ErrorKind::Internal, OTHER),
            (ErrorKind::Locked, crate::lock::EXIT_BUSY),
        ];
        for (kind, want) in cases {
            assert_eq!(code_for(&kvmap::Error::new(kind)), want, "{kind:?}");
        }
    }

    #[test]
    fn a_write_that_timed_out_may_have_happened() {
        let put = kvmap::Error::new(ErrorKind::Timeout).with_op(kvmap::Op::Put);
        assert_eq!(code_for(&put), UNAVAILABLE);
        assert!(note_for(&put).is_some_and(|n| n.contains("the write may have happened")));
        let get = kvmap::Error::new(ErrorKind::Timeout).with_op(kvmap::Op::Get);
        assert_eq!(note_for(&get), None);
        // A write a backend knows never ran is marked Safe: no note.
        let refused = kvmap::Error::new(ErrorKind::Unavailable)
            .with_op(kvmap::Op::Put)
            .with_retry(RetryClass::Safe);
        assert_eq!(note_for(&refused), None);
        // Unmarked, an unavailable write may have happened.
        let unmarked = kvmap::Error::new(ErrorKind::Unavailable).with_op(kvmap::Op::Put);
        assert!(note_for(&unmarked).is_some());
    }
}
