//! Conformance cases: ttl.

use super::Case;

pub(crate) fn cases() -> Vec<Case> {
    vec![]
}
