//! Conformance cases: basic.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
