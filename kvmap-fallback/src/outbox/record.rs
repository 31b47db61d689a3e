//! The binary layout of one journaled write.
//!
//! ```text
//! u8  version (1)
//! u8  op: 0 put, 1 delete
//! u8  base: 0 unknown, 1 absent, 2 revision, 3 after the previous journaled write of the key
//! u64 base revision (0 unless base = 2)
//! u64 written at, ms since the unix epoch
//! u64 expires at, ms since the unix epoch (0: no ttl)
//! u32 key length, key bytes, value bytes (the rest)
//! ```
//! Integers are big-endian.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvmap_core::{Error, ErrorKind, Key, Result, Revision};

const VERSION: u8 = 1;
const HEADER: usize = 3 + 8 * 3 + 4;

/// What the chain knew about the key on the primary when the write was
/// journaled: the replay makes its write conditional on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The chain never saw the key on the primary: the replay writes only
    /// if the key is absent there.
    Unknown,
    /// The chain last saw the key absent on the primary.
    Absent,
    /// The chain last saw the key at this revision on the primary.
    Revision(Revision),
    /// An earlier journaled write of the same key comes first: the replay
    /// builds on the revision that write produced.
    Previous,
}

/// The operation journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOp {
    /// A put of this value, expiring at this time if it had a TTL.
    Put {
        /// The value.
        value: Bytes,
        /// The expiry, if the put had a TTL.
        expires_at: Option<SystemTime>,
    },
    /// A delete.
    Delete,
}

/// One write journaled in the outbox, waiting for the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The position in the outbox (replay order).
    pub(crate) seq: u64,
    /// The key.
    pub(crate) key: Key,
    /// The operation.
    pub(crate) op: RecordOp,
    /// The primary state the write was based on.
    pub(crate) base: Base,
    /// When the write was journaled.
    pub(crate) written_at: SystemTime,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_ms(v: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(v)
}

impl Record {
    /// Encodes the record (without its sequence number, which is the
    /// outbox key).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let value: &[u8] = match &self.op {
            RecordOp::Put { value, .. } => value,
            RecordOp::Delete => &[],
        };
        let mut out = Vec::with_capacity(HEADER + self.key.len() + value.len());
        out.push(VERSION);
        out.push(match self.op {
            RecordOp::Put { .. } => 0,
            RecordOp::Delete => 1,
        });
        let (tag, rev) = match self.base {
            Base::Unknown => (0, 0),
            Base::Absent => (1, 0),
            Base::Revision(r) => (2, r),
            Base::Previous => (3, 0),
        };
        out.push(tag);
        out.extend_from_slice(&rev.to_be_bytes());
        out.extend_from_slice(&ms(self.written_at).to_be_bytes());
        let exp = match &self.op {
            RecordOp::Put {
                expires_at: Some(t),
                ..
            } => ms(*t).max(1),
            _ => 0,
        };
        out.extend_from_slice(&exp.to_be_bytes());
        let klen = u32::try_from(self.key.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&klen.to_be_bytes());
        out.extend_from_slice(self.key.as_str().as_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Decodes a record stored under sequence number `seq`.
    pub(crate) fn decode(seq: u64, data: &[u8]) -> Result<Self> {
        let bad = |why: &str| {
            Error::new(ErrorKind::InvalidData)
                .with_backend("outbox")
                .with_detail(format!("record {seq}: {why}"))
        };
        if data.len() < HEADER {
            return Err(bad("truncated header"));
        }
        if data[0] != VERSION {
            return Err(bad(&format!("unknown version {}", data[0])));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&data[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let rev = u64_at(3);
        let written = u64_at(11);
        let exp = u64_at(19);
        let mut kb = [0u8; 4];
        kb.copy_from_slice(&data[27..31]);
        let klen = u32::from_be_bytes(kb) as usize;
        let rest = &data[HEADER..];
        if rest.len() < klen {
            return Err(bad("truncated key"));
        }
        let key = std::str::from_utf8(&rest[..klen]).map_err(|_| bad("key is not utf-8"))?;
        let key = Key::new(key).map_err(|e| bad(&e.to_string()))?;
        let base = match data[2] {
            0 => Base::Unknown,
            1 => Base::Absent,
            2 => Base::Revision(rev),
            3 => Base::Previous,
            t => return Err(bad(&format!("unknown base tag {t}"))),
        };
        let op = match data[1] {
            0 => RecordOp::Put {
                value: Bytes::copy_from_slice(&rest[klen..]),
                expires_at: (exp > 0).then(|| from_ms(exp)),
            },
            1 => RecordOp::Delete,
            t => return Err(bad(&format!("unknown op tag {t}"))),
        };
        Ok(Self {
            seq,
            key,
            op,
            base,
            written_at: from_ms(written),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_shape() {
        let now = from_ms(ms(SystemTime::now()));
        let key = Key::new("users/ädä").unwrap();
        for base in [
            Base::Unknown,
            Base::Absent,
            Base::Revision(42),
            Base::Previous,
        ] {
            for op in [
                RecordOp::Delete,
                RecordOp::Put {
                    value: Bytes::from_static(b"\x00\xffv"),
                    expires_at: None,
                },
                RecordOp::Put {
                    value: Bytes::new(),
                    expires_at: Some(now + Duration::from_secs(3)),
                },
            ] {
                let r = Record {
                    seq: 7,
                    key: key.clone(),
                    op,
                    base,
                    written_at: now,
                };
                assert_eq!(Record::decode(7, &r.encode()).unwrap(), r);
            }
        }
    }

    #[test]
    fn garbage_is_invalid_data() {
        for data in [&b""[..], &[9u8; 40][..], &[1, 5, 0][..]] {
            let e = Record::decode(1, data).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidData);
            assert!(e.to_string().starts_with("outbox: "), "{e}");
        }
    }
}
