//! **Unstable, not part of the public API**: the on-disk codec, exposed
//! for the fuzz targets in `fuzz/` only. Anything here may change or
//! disappear in any release, without notice; do not use it.

use kvmap_core::{Entry, Key, Result, Revision, WatchEvent};

use crate::codec;

/// The header of a stored value (see the crate's on-disk layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Revision of the last change (never 0 in a valid envelope).
    pub revision: Revision,
    /// Revision of the creation.
    pub create_revision: Revision,
    /// Expiry in nanoseconds since the Unix epoch, 0 for none.
    pub expires: u64,
}

/// The number of bytes before the value in an envelope.
pub const ENVELOPE_HEADER_BYTES: usize = codec::HEADER;

/// Encodes a value envelope: the header, then `value`.
pub fn encode_envelope(header: &EnvelopeHeader, value: &[u8]) -> Vec<u8> {
    codec::encode_envelope(
        &codec::Meta {
            revision: header.revision,
            create_revision: header.create_revision,
            expires: header.expires,
        },
        value,
    )
}

/// Decodes an envelope's header.
///
/// # Errors
/// `InvalidData` for anything but a well-formed envelope.
pub fn decode_envelope(raw: &[u8]) -> Result<EnvelopeHeader> {
    let m = codec::decode_meta(raw)?;
    Ok(EnvelopeHeader {
        revision: m.revision,
        create_revision: m.create_revision,
        expires: m.expires,
    })
}

/// Decodes a whole envelope into the entry of `key`.
///
/// # Errors
/// `InvalidData` for anything but a well-formed envelope.
pub fn decode_entry(key: Key, raw: &[u8]) -> Result<Entry> {
    codec::decode_entry(key, raw)
}

/// Encodes a change record. `kind` is 1 (put), 2 (delete) or 3
/// (expired); `None` for any other kind.
pub fn encode_record(
    kind: u8,
    at: u64,
    key: &str,
    current: Option<&[u8]>,
    prev: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let kind = match kind {
        1 => codec::ChangeKind::Put,
        2 => codec::ChangeKind::Delete,
        3 => codec::ChangeKind::Expired,
        _ => return None,
    };
    Some(codec::encode_record(kind, at, key, current, prev))
}

/// The wall time (ns since the epoch) of a change record.
///
/// # Errors
/// `InvalidData` for a record of another format.
pub fn record_time(raw: &[u8]) -> Result<u64> {
    codec::record_time(raw)
}

/// Decodes the change record of `revision` into its watch event.
///
/// # Errors
/// `InvalidData` for anything but a well-formed record.
pub fn decode_record(revision: Revision, raw: &[u8]) -> Result<WatchEvent> {
    codec::decode_record(revision, raw)
}

/// The expiry-index key of `key` expiring at `expires`.
pub fn expiry_key(expires: u64, key: &str) -> Vec<u8> {
    codec::expiry_key(expires, key)
}

/// Splits an expiry-index key into the expiry and the user key.
///
/// # Errors
/// `InvalidData` for a malformed index key.
pub fn split_expiry_key(raw: &[u8]) -> Result<(u64, Key)> {
    codec::split_expiry_key(raw)
}

/// Decodes a data column family key.
///
/// # Errors
/// `InvalidData` unless `raw` is a valid key.
pub fn decode_key(raw: &[u8]) -> Result<Key> {
    codec::decode_key(raw)
}

/// Decodes a u64 meta value.
///
/// # Errors
/// `InvalidData` unless `raw` is 8 bytes.
pub fn decode_u64(raw: &[u8]) -> Result<u64> {
    codec::decode_u64(raw)
}
