//! Conformance cases: keys.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
