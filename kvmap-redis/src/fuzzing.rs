//! **Unstable, not part of the public API**: the parsers of script
//! replies, stored hashes, change events and cluster topology, exposed for
//! the fuzz targets in `fuzz/` only. Anything here may change or disappear
//! in any release, without notice; do not use it.

use bytes::Bytes;
use kvmap_core::{Entry, Key, Op, Result, Revision};
use redis::Value;

use crate::scripts::{self, DeleteReply, PutReply};

/// The hash fields a read asks for, in the order
/// [`entry_from_fields`] expects them (`keys_only`: without the first).
pub const FIELDS: [&str; 4] = scripts::FIELDS;

/// Builds an entry from an `HMGET` reply of [`FIELDS`] (`keys_only`:
/// without `v`); `None` if the key is absent.
///
/// # Errors
/// `InvalidData` for a foreign or unreadable hash.
pub fn entry_from_fields(key: &Key, reply: &Value, keys_only: bool) -> Result<Option<Entry>> {
    scripts::entry_from_fields(key, reply, keys_only, Op::Get)
}

/// A parsed reply of the put or delete script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteReply {
    /// Put applied, at this revision.
    Put(Revision),
    /// Delete applied.
    Deleted,
    /// Create refused: the key exists.
    Exists,
    /// Delete of an absent key.
    Absent,
    /// Compare-and-swap refused; the current revision if any.
    Conflict(Option<Revision>),
}

/// Parses the put script's reply.
///
/// # Errors
/// `Internal` for a reply the script never sends.
pub fn put_reply(reply: &Value) -> Result<WriteReply> {
    Ok(match scripts::put_reply(reply, "fuzz")? {
        PutReply::Ok(r) => WriteReply::Put(r),
        PutReply::Exists => WriteReply::Exists,
        PutReply::Conflict(r) => WriteReply::Conflict(r),
    })
}

/// Parses the delete script's reply.
///
/// # Errors
/// `Internal` for a reply the script never sends.
pub fn delete_reply(reply: &Value) -> Result<WriteReply> {
    Ok(match scripts::delete_reply(reply, "fuzz")? {
        DeleteReply::Deleted => WriteReply::Deleted,
        DeleteReply::Absent => WriteReply::Absent,
        DeleteReply::Conflict(r) => WriteReply::Conflict(r),
    })
}

/// A published change event, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `true` for a put, `false` for a delete.
    pub put: bool,
    /// The server key (key prefix + key).
    pub server_key: Vec<u8>,
    /// Revision after the change.
    pub rev: Revision,
    /// Create revision after the change.
    pub crev: Revision,
    /// Expiry (Unix ms, 0 for none) after the change.
    pub exp: u64,
    /// The value after a put.
    pub value: Bytes,
    /// The entry before: revision, create revision, expiry, value.
    pub prev: Option<(Revision, Revision, u64, Bytes)>,
    /// [`Change::entry`] of the key `k`, if `k` is a valid key.
    pub entry: Option<Entry>,
    /// [`Change::prev_entry`] of the key `k`, if `k` is a valid key.
    pub prev_entry: Option<Entry>,
}

/// Parses a published change event; `None` if it is not one of kvmap's.
pub fn parse_change(payload: &[u8]) -> Option<Change> {
    let c = scripts::Change::parse(payload)?;
    let key = Key::new("k").ok();
    Some(Change {
        entry: key.as_ref().map(|k| c.entry(k)),
        prev_entry: key.as_ref().and_then(|k| c.prev_entry(k)),
        put: c.put,
        server_key: c.server_key,
        rev: c.rev,
        crev: c.crev,
        exp: c.exp,
        value: c.value,
        prev: c.prev,
    })
}

/// Parses a `CLUSTER SLOTS` reply into `(start, end, replica count)` per
/// well-formed row.
pub fn parse_slots(reply: &Value) -> Vec<(u16, u16, usize)> {
    crate::client::parse_slots(reply)
        .into_iter()
        .map(|r| (r.start, r.end, r.replicas.len()))
        .collect()
}

/// Parses the `myself` line of a `CLUSTER NODES` reply into its node id,
/// master flag, epoch, owned slot count and migration count.
pub fn parse_myself(text: &str) -> Option<(String, bool, u64, usize, usize)> {
    let v = crate::list::parse_myself(text)?;
    let owned: std::collections::BTreeSet<u16> = v.slots.iter().flat_map(|&(a, b)| a..=b).collect();
    let owned = owned.len();
    Some((v.id, v.master, v.epoch, owned, v.migrations.len()))
}
