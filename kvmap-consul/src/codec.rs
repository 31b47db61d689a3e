//! The data layout: key paths, the `Flags` expiry tag, and decoding of
//! Consul's KV JSON into kvmap [`Entry`]s.
//!
//! The value stored in Consul is exactly the user's bytes. kvmap's only
//! metadata, an expiry instant, lives in the entry's `Flags` (a `u64`
//! Consul keeps per key for clients): the top 16 bits hold the tag
//! [`FLAGS_TAG`] (`"kv"`), the low 48 bits the expiry in Unix
//! milliseconds (enough until the year 10889). Any other `Flags` value,
//! e.g. one set by `consul kv put -flags=…`, means "no expiry", so keys
//! written by other tools read back as normal entries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use kvmap_core::{Entry, ErrorKind, Key, Op, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::error::own;

/// The tag in the top 16 bits of `Flags` marking a kvmap expiry (`0x6b76`,
/// ASCII "kv").
pub const FLAGS_TAG: u64 = 0x6b76;

const MS_MASK: u64 = (1 << 48) - 1;

/// The `Flags` value kvmap writes for an entry expiring at `at` (`0`
/// without expiry).
pub fn expiry_flags(at: Option<SystemTime>) -> u64 {
    match at {
        None => 0,
        Some(t) => {
            let ms = t
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(MS_MASK));
            (FLAGS_TAG << 48) | ms.clamp(1, MS_MASK)
        }
    }
}

/// The expiry a `Flags` value encodes, `None` for untagged (foreign) flags.
pub fn flags_expiry(flags: u64) -> Option<SystemTime> {
    if flags >> 48 != FLAGS_TAG {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_millis(flags & MS_MASK))
}

/// Characters kept as they are in a key path segment (RFC 3986
/// unreserved); everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The percent-encoded path of a Consul key, `/` kept.
pub(crate) fn key_path(consul_key: &str) -> String {
    let mut out = String::with_capacity(consul_key.len() + 8);
    for (i, seg) in consul_key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.extend(utf8_percent_encode(seg, SEGMENT));
    }
    out
}

/// Whether Consul's HTTP router would rewrite the path of this key (Go's
/// `ServeMux` cleans `//`, `/./` and `/../` with a redirect, and decodes
/// percent-escapes first): such keys are read and written through
/// `/v1/txn`, where the key travels in the body.
pub(crate) fn path_unsafe(consul_key: &str) -> bool {
    let segs: Vec<&str> = consul_key.split('/').collect();
    let last = segs.len().saturating_sub(1);
    segs.iter()
        .enumerate()
        .any(|(i, s)| *s == "." || *s == ".." || (s.is_empty() && i != last))
}

/// The longest prefix of `consul_prefix` that is safe as a URL path, for
/// recursive reads (`?recurse`) that are then filtered exactly.
pub(crate) fn safe_prefix(consul_prefix: &str) -> &str {
    let mut end = 0;
    let mut start = 0;
    let bytes = consul_prefix.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'/' {
            let seg = &consul_prefix[start..i];
            if seg.is_empty() || seg == "." || seg == ".." {
                return &consul_prefix[..end];
            }
            end = i + 1;
            start = i + 1;
        }
    }
    let tail = &consul_prefix[start..];
    if tail == "." || tail == ".." {
        return &consul_prefix[..end];
    }
    consul_prefix
}

/// One KV entry as Consul's JSON has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKv {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) flags: u64,
    #[serde(default)]
    pub(crate) create_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
    /// The session holding the key as a lock, if any.
    #[serde(default)]
    pub(crate) session: Option<String>,
}

/// A decoded Consul entry: the kvmap entry, and whether its TTL has run
/// out (an expired entry is invisible but still on the server).
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub(crate) entry: Entry,
    pub(crate) expired: bool,
}

/// Decodes one raw entry under `key_prefix`. `None`: the Consul key is not
/// a valid kvmap key below the prefix (skipped by lists, never returned).
pub(crate) fn decode(
    raw: RawKv,
    key_prefix: &str,
    keys_only: bool,
    now: SystemTime,
    op: Op,
) -> Result<Option<Decoded>> {
    let Some(user) = raw.key.strip_prefix(key_prefix) else {
        return Ok(None);
    };
    // Lock keys (kvmap's and `consul lock`'s) are not data.
    if crate::lock::is_lock_entry(&raw.key, raw.flags) {
        return Ok(None);
    }
    let Ok(key) = Key::new(user) else {
        return Ok(None);
    };
    let value = if keys_only {
        Bytes::new()
    } else {
        match raw.value.as_deref() {
            None | Some("") => Bytes::new(),
            Some(b64) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| {
                        own(
                            ErrorKind::InvalidData,
                            op,
                            Some(user),
                            format!("consul returned a value that is not base64: {e}"),
                        )
                    })?,
            ),
        }
    };
    let expires_at = flags_expiry(raw.flags);
    let expired = expires_at.is_some_and(|t| t <= now);
    let entry =
        Entry::new(key, value, raw.modify_index, raw.create_index).with_expires_at(expires_at);
    Ok(Some(Decoded { entry, expired }))
}

/// Base64 of a value, for `/v1/txn` bodies.
pub(crate) fn b64(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_roundtrip_and_foreign_flags() {
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let f = expiry_flags(Some(at));
        assert_eq!(f >> 48, FLAGS_TAG);
        assert_eq!(flags_expiry(f), Some(at));
        assert_eq!(expiry_flags(None), 0);
        for foreign in [0u64, 1, 42, u64::MAX, 0x6b75 << 48] {
            assert_eq!(flags_expiry(foreign), None, "{foreign:#x}");
        }
    }

    #[test]
    fn key_paths_are_encoded_per_segment() {
        assert_eq!(key_path("a/b c/%?#"), "a/b%20c/%25%3F%23");
        assert_eq!(key_path("ü/x"), "%C3%BC/x");
        assert_eq!(key_path("dir/"), "dir/");
    }

    #[test]
    fn unsafe_paths_are_detected() {
        for k in [
            "a//b", "a/./b", "a/../b", "./a", "../a", "a/.", "a/..", "a//",
        ] {
            assert!(path_unsafe(k), "{k}");
        }
        for k in ["a/b", "a/", "a.b/c", "...", "a/.x"] {
            assert!(!path_unsafe(k), "{k}");
        }
        assert_eq!(safe_prefix("a/b//c"), "a/b/");
        assert_eq!(safe_prefix("a/./"), "a/");
        assert_eq!(safe_prefix("x/y"), "x/y");
        assert_eq!(safe_prefix("../"), "");
    }

    #[test]
    fn decode_skips_foreign_keys_and_hides_expired() {
        let now = SystemTime::now();
        let raw = |key: &str, flags: u64| RawKv {
            key: key.to_owned(),
            value: Some(b64(b"v")),
            flags,
            create_index: 3,
            modify_index: 7,
            session: None,
        };
        let d = decode(raw("p/a", 5), "p/", false, now, Op::Get)
            .unwrap()
            .unwrap();
        assert_eq!(d.entry.value, "v");
        assert_eq!((d.entry.revision, d.entry.create_revision), (7, 3));
        assert!(!d.expired && d.entry.expires_at.is_none());
        assert!(decode(raw("q/a", 0), "p/", false, now, Op::Get)
            .unwrap()
            .is_none());
        assert!(decode(raw("p//a", 0), "p/", false, now, Op::Get)
            .unwrap()
            .is_none());
        // Lock keys are hidden; a data key named `.lock` is not.
        let lock = crate::lock::LOCK_FLAGS;
        assert!(decode(raw("p/a/.lock", lock), "p/", false, now, Op::Get)
            .unwrap()
            .is_none());
        assert!(decode(raw("p/a/.lock", 0), "p/", false, now, Op::Get)
            .unwrap()
            .is_some());
        let past = expiry_flags(Some(now - Duration::from_secs(1)));
        assert!(
            decode(raw("p/a", past), "p/", false, now, Op::Get)
                .unwrap()
                .unwrap()
                .expired
        );
        let bad = RawKv {
            value: Some("!!".into()),
            ..raw("p/a", 0)
        };
        assert_eq!(
            decode(bad, "p/", false, now, Op::Get).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }
}
