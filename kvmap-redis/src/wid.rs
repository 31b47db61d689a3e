//! Write ids: what makes a resent write script harmless.
//!
//! Every write (`put`, `delete`, each operation of `apply`) gets a random
//! 64-bit id, sent as 16 hex digits with every attempt of that write: the
//! redis crate's own resend after a dropped connection, and this crate's
//! resend of a write whose reply was lost ([`RESENDS`]). The write script
//! stores its outcome under the id (a write record, 60 s, in the key's
//! slot); a script that finds its own record replies the recorded outcome
//! and applies nothing. See the crate docs,
//! *Exactly-once writes*.

use std::time::Duration;

use kvmap_core::{Op, Result};

use crate::slots::slot_tag;

/// The prefix of write record keys (after the hash tag).
pub(crate) const RECORD_PREFIX: &str = "__kvmap_w:";

/// How many times a write whose reply was lost is sent again (with the
/// same id) before its error says the outcome is unknown.
pub(crate) const RESENDS: usize = 2;

/// The pause before each resend.
pub(crate) fn resend_pause(attempt: usize) -> Duration {
    Duration::from_millis(50 << attempt.min(4))
}

/// One write's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteId(String);

impl WriteId {
    /// A fresh random id.
    pub(crate) fn new() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()))
    }

    /// The id as sent to the script.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of this write's record for a write of data key
    /// `server_key`: in its slot and outside the key prefix; `None` with an
    /// empty key prefix (no outside to put it in).
    pub(crate) fn record_key(
        &self,
        key_prefix: &str,
        server_key: &str,
        op: Op,
        key: &str,
    ) -> Result<Option<String>> {
        if key_prefix.is_empty() {
            return Ok(None);
        }
        let tag = slot_tag(server_key, op, key)?;
        Ok(Some(format!("{{{tag}}}{RECORD_PREFIX}{}", self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (WriteId::new(), WriteId::new());
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn records_share_the_slot_and_leave_the_namespace() {
        let w = WriteId::new();
        let r = w
            .record_key("ns:", "ns:a/b", Op::Delete, "a/b")
            .unwrap()
            .unwrap();
        assert!(r.starts_with('{') && r.ends_with(&format!("__kvmap_w:{}", w.as_str())));
        assert_eq!(
            crate::slots::key_slot(r.as_bytes()),
            crate::slots::key_slot(b"ns:a/b")
        );
        assert_eq!(w.record_key("", "a/b", Op::Delete, "a/b").unwrap(), None);
    }
}
