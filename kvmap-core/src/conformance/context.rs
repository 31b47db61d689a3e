//! Conformance cases: context.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
