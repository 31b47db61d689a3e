//! Conformance cases: list.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
