//! Conformance cases: watch.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
