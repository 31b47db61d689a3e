//! The on-disk layout: column families, the value envelope and the
//! change-log record. Every integer is big-endian so that keys sort
//! numerically and values are portable.
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `data` | the user key (UTF-8 bytes) | [`Envelope`]: format, revision, create revision, expiry, value |
//! | `log` | revision (u64 BE) | change record: kind, wall time, key, entry, previous entry |
//! | `expiry` | expiry (u64 BE ns since the epoch) ++ user key | empty |
//! | `meta` | `revision`, `compacted`, `format` | u64 BE |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvmap_core::{Entry, Error, ErrorKind, Key, Result, Revision, WatchEvent};

/// The column family of the entries.
pub(crate) const CF_DATA: &str = "data";
/// The column family of the change log.
pub(crate) const CF_LOG: &str = "log";
/// The column family of the expiry index.
pub(crate) const CF_EXPIRY: &str = "expiry";
/// The column family of the store's own counters.
pub(crate) const CF_META: &str = "meta";

/// Meta key of the latest revision.
pub(crate) const META_REVISION: &[u8] = b"revision";
/// Meta key of the highest revision dropped from the change log.
pub(crate) const META_COMPACTED: &[u8] = b"compacted";
/// Meta key of the high-water mark of lock fencing tokens.
pub(crate) const META_LOCK_TOKENS: &[u8] = b"lock_tokens";
/// Meta key of the format version.
pub(crate) const META_FORMAT: &[u8] = b"format";
/// The format version this code writes and reads.
pub(crate) const FORMAT: u64 = 1;

const ENVELOPE_V1: u8 = 1;
const RECORD_V1: u8 = 1;
/// Bytes before the value in an envelope.
pub(crate) const HEADER: usize = 1 + 8 + 8 + 8;

fn corrupt(what: &str) -> Error {
    Error::new(ErrorKind::InvalidData).with_detail(format!("corrupted {what}"))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Decodes a u64 meta value.
pub(crate) fn decode_u64(b: &[u8]) -> Result<u64> {
    if b.len() != 8 {
        return Err(corrupt("counter"));
    }
    u64_at(b, 0).ok_or_else(|| corrupt("counter"))
}

/// Nanoseconds since the Unix epoch, saturating; 0 is reserved for "no
/// expiry" and never produced for a real instant after 1970.
pub(crate) fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
    })
}

/// The instant of `to_nanos`.
pub(crate) fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// The current wall time in nanoseconds since the epoch.
pub(crate) fn now_nanos() -> u64 {
    to_nanos(SystemTime::now())
}

/// The header of a stored value (the value itself stays in the slice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Revision of the last change.
    pub(crate) revision: Revision,
    /// Revision of the creation.
    pub(crate) create_revision: Revision,
    /// Expiry in ns since the epoch, 0 for none.
    pub(crate) expires: u64,
}

impl Meta {
    /// Whether the entry is expired at `now` (ns since the epoch).
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        self.expires != 0 && self.expires <= now
    }
}

/// Encodes an envelope.
pub(crate) fn encode_envelope(meta: &Meta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.push(ENVELOPE_V1);
    out.extend_from_slice(&meta.revision.to_be_bytes());
    out.extend_from_slice(&meta.create_revision.to_be_bytes());
    out.extend_from_slice(&meta.expires.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes an envelope's header; the value is `raw[HEADER..]`.
pub(crate) fn decode_meta(raw: &[u8]) -> Result<Meta> {
    if raw.first() != Some(&ENVELOPE_V1) {
        return Err(corrupt("value envelope"));
    }
    match (u64_at(raw, 1), u64_at(raw, 9), u64_at(raw, 17)) {
        (Some(revision), Some(create_revision), Some(expires)) if revision != 0 => Ok(Meta {
            revision,
            create_revision,
            expires,
        }),
        _ => Err(corrupt("value envelope")),
    }
}

/// Builds an [`Entry`] from a key and an envelope.
pub(crate) fn to_entry(key: Key, meta: &Meta, raw: &[u8], with_value: bool) -> Entry {
    let value = if with_value {
        Bytes::copy_from_slice(raw.get(HEADER..).unwrap_or_default())
    } else {
        Bytes::new()
    };
    Entry::new(key, value, meta.revision, meta.create_revision)
        .with_expires_at((meta.expires != 0).then(|| from_nanos(meta.expires)))
}

/// Decodes a whole envelope into an entry.
pub(crate) fn decode_entry(key: Key, raw: &[u8]) -> Result<Entry> {
    let meta = decode_meta(raw)?;
    Ok(to_entry(key, &meta, raw, true))
}

/// The kind of a change record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Put = 1,
    Delete = 2,
    Expired = 3,
}

/// Encodes a change record: the wall time of the change (for retention by
/// age), the key, the new envelope (puts) and the previous one.
pub(crate) fn encode_record(
    kind: ChangeKind,
    at: u64,
    key: &str,
    current: Option<&[u8]>,
    prev: Option<&[u8]>,
) -> Vec<u8> {
    let len = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(2 + 8 + 12 + key.len() + len(current) + len(prev));
    out.push(RECORD_V1);
    out.push(kind as u8);
    out.extend_from_slice(&at.to_be_bytes());
    for part in [Some(key.as_bytes()), current, prev] {
        let part = part.unwrap_or_default();
        // Keys and values are bounded by the store's limits (far below
        // 4 GiB), so the length always fits.
        let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The wall time of a change record.
pub(crate) fn record_time(raw: &[u8]) -> Result<u64> {
    if raw.first() != Some(&RECORD_V1) {
        return Err(corrupt("change record"));
    }
    u64_at(raw, 2).ok_or_else(|| corrupt("change record"))
}

/// Decodes a change record of `revision` into its watch event.
pub(crate) fn decode_record(revision: Revision, raw: &[u8]) -> Result<WatchEvent> {
    record_time(raw)?;
    let mut parts = [&[][..]; 3];
    let mut at = 10;
    for part in &mut parts {
        let n = u32_at(raw, at).ok_or_else(|| corrupt("change record"))? as usize;
        *part = raw
            .get(at + 4..at + 4 + n)
            .ok_or_else(|| corrupt("change record"))?;
        at += 4 + n;
    }
    let [key, current, prev] = parts;
    let key = std::str::from_utf8(key)
        .ok()
        .and_then(|k| Key::new(k).ok())
        .ok_or_else(|| corrupt("change record key"))?;
    let prev = if prev.is_empty() {
        None
    } else {
        Some(decode_entry(key.clone(), prev)?)
    };
    Ok(match raw.get(1) {
        Some(1) => WatchEvent::Put {
            entry: decode_entry(key, current)?,
            prev,
        },
        Some(2) => WatchEvent::Delete {
            key,
            revision,
            prev,
        },
        Some(3) => WatchEvent::Expired {
            key,
            revision,
            prev,
        },
        _ => return Err(corrupt("change record kind")),
    })
}

/// The expiry-index key of `key` expiring at `expires`.
pub(crate) fn expiry_key(expires: u64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Splits an expiry-index key into the expiry and the user key.
pub(crate) fn split_expiry_key(raw: &[u8]) -> Result<(u64, Key)> {
    let at = u64_at(raw, 0).ok_or_else(|| corrupt("expiry index"))?;
    let key = raw
        .get(8..)
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| Key::new(k).ok())
        .ok_or_else(|| corrupt("expiry index"))?;
    Ok((at, key))
}

/// Decodes a data-CF key.
pub(crate) fn decode_key(raw: &[u8]) -> Result<Key> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|k| Key::new(k).ok())
        .ok_or_else(|| corrupt("key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        let m = Meta {
            revision: 7,
            create_revision: 3,
            expires: 99,
        };
        let raw = encode_envelope(&m, b"hello");
        assert_eq!(decode_meta(&raw).unwrap(), m);
        let e = decode_entry(Key::new("a").unwrap(), &raw).unwrap();
        assert_eq!(e.value, "hello");
        assert_eq!(e.revision, 7);
        assert_eq!(e.create_revision, 3);
        assert_eq!(e.expires_at, Some(from_nanos(99)));
    }

    #[test]
    fn corrupted_envelopes_are_invalid_data() {
        for raw in [&b""[..], b"\x02", b"\x01\x00\x00", &[1u8; 24]] {
            assert_eq!(decode_meta(raw).unwrap_err().kind(), ErrorKind::InvalidData);
        }
        let zero_rev = encode_envelope(
            &Meta {
                revision: 0,
                create_revision: 0,
                expires: 0,
            },
            b"",
        );
        assert!(decode_meta(&zero_rev).is_err());
    }

    #[test]
    fn record_round_trip() {
        let key = Key::new("k").unwrap();
        let cur = encode_envelope(
            &Meta {
                revision: 5,
                create_revision: 4,
                expires: 0,
            },
            b"new",
        );
        let prev = encode_envelope(
            &Meta {
                revision: 4,
                create_revision: 4,
                expires: 0,
            },
            b"old",
        );
        let raw = encode_record(ChangeKind::Put, 1234, "k", Some(&cur), Some(&prev));
        assert_eq!(record_time(&raw).unwrap(), 1234);
        match decode_record(5, &raw).unwrap() {
            WatchEvent::Put { entry, prev } => {
                assert_eq!(entry.key, key);
                assert_eq!(entry.value, "new");
                assert_eq!(prev.unwrap().value, "old");
            }
            other => panic!("{other:?}"),
        }
        let raw = encode_record(ChangeKind::Expired, 1, "k", None, Some(&prev));
        assert!(matches!(
            decode_record(9, &raw).unwrap(),
            WatchEvent::Expired { revision: 9, .. }
        ));
        assert!(decode_record(9, &raw[..raw.len() - 1]).is_err());
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        let a = expiry_key(5, "z");
        let b = expiry_key(256, "a");
        assert!(a < b);
        let (at, k) = split_expiry_key(&b).unwrap();
        assert_eq!((at, k.as_str()), (256, "a"));
    }
}
