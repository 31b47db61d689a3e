//! Conformance cases: cas.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
