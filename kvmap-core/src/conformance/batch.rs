//! Conformance cases: batch.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
