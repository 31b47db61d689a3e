//! Hash slots: the slot of a key, and for every slot a decimal hash tag
//! that lands in it (so kvmap's own keys and shard channels can sit in
//! the slot of a data key).
//!
//! The `redis` crate's `cluster_routing::Slot::for_key` does not expose
//! the slot number, so the slot is computed here with the `crc16` crate
//! (the one the `redis` crate uses); the unit test uses `Slot::for_key`
//! as the oracle.

use std::fmt::Write as _;
use std::sync::OnceLock;

use kvmap_core::{ErrorKind, Op, Result};

use crate::error::own;

/// The hash slot of a key (CRC16/XMODEM of the key or its `{hash tag}`).
pub(crate) fn key_slot(key: &[u8]) -> u16 {
    let mut k = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                k = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16::State::<crc16::XMODEM>::calculate(k) % 16384
}

/// Redis Cluster's number of hash slots.
pub(crate) const SLOTS: usize = 16384;
/// The search for slot tags stops here (all slots are covered far below:
/// see the unit test).
const TAG_SEARCH_LIMIT: u32 = 10_000_000;

/// The hash slot of a server key (honouring a `{hash tag}`), as an index.
pub(crate) fn slot_index(key: &[u8]) -> usize {
    usize::from(key_slot(key))
}

/// For every slot, the smallest decimal number whose CRC16 lands in it
/// (`u32::MAX`: none found, which the unit test rules out).
fn slot_tags() -> &'static [u32] {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut left = SLOTS;
        let mut buf = String::new();
        let mut n = 0u32;
        while left > 0 && n < TAG_SEARCH_LIMIT {
            buf.clear();
            let _ = write!(buf, "{n}");
            let slot = slot_index(buf.as_bytes());
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                left -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// A decimal hash tag whose slot is the slot of `server_key`: a key
/// `{tag}...` lives on the same master (used for lock keys and write
/// records).
pub(crate) fn slot_tag(server_key: &str, op: Op, key: &str) -> Result<u32> {
    let slot = slot_index(server_key.as_bytes());
    match slot_tags().get(slot).copied() {
        Some(tag) if tag != u32::MAX => Ok(tag),
        _ => Err(own(
            ErrorKind::Internal,
            op,
            Some(key),
            format!("no hash tag found for slot {slot}"),
        )),
    }
}

/// The hash tag of `slot` (`None` only for a slot out of range).
pub(crate) fn tag_of_slot(slot: usize) -> Option<u32> {
    slot_tags().get(slot).copied().filter(|&t| t != u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // From the Redis Cluster specification, and the redis crate's own
        // slot function as the oracle (it exposes no slot number itself).
        assert_eq!(slot_index(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        for k in [
            &b"foo{}{bar}"[..],
            b"foo{{bar}}zap",
            b"{10789}__kvmap_lock:x",
            b"a}b{",
        ] {
            let ours = redis::cluster_routing::Slot::new(key_slot(k));
            assert_eq!(
                ours,
                Some(redis::cluster_routing::Slot::for_key(k)),
                "{k:?}"
            );
        }
    }

    #[test]
    fn every_slot_has_a_tag() {
        let tags = slot_tags();
        assert!(tags.iter().all(|&t| t != u32::MAX));
        for (slot, t) in tags.iter().enumerate().step_by(97) {
            assert_eq!(slot_index(format!("{{{t}}}x").as_bytes()), slot);
        }
    }

    #[test]
    fn spec_values() {
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"kvmap:{user42}/a"), key_slot(b"user42"));
    }
}
