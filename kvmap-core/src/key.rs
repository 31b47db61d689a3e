//! Validated keys.
//!
//! # Key rules
//! A key is a UTF-8 string that
//! - is not empty;
//! - is at most [`Key::MAX_BYTES`] bytes long (a store may declare a lower
//!   limit in [`Limits::max_key_bytes`](crate::Limits::max_key_bytes),
//!   checked by the store before any I/O);
//! - holds no control character (U+0000–U+001F, U+007F–U+009F);
//! - does not start with `/`.
//!
//! `/` is the hierarchy separator: list and watch by the prefix `users/`
//! to see everything below `users`. Keys sort by their UTF-8 bytes.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};

/// A key that satisfies the key rules.
///
/// # Key rules
/// A key is a UTF-8 string that
/// - is not empty;
/// - is at most [`Key::MAX_BYTES`] bytes long (a store may declare a lower
///   limit in [`Limits::max_key_bytes`](crate::Limits::max_key_bytes),
///   checked by the store before any I/O);
/// - holds no control character (U+0000–U+001F, U+007F–U+009F);
/// - does not start with `/`.
///
/// `/` is the hierarchy separator: list and watch by the prefix `users/`
/// to see everything below `users`. Keys sort by their UTF-8 bytes.
///
/// Cheap to clone (reference counted).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Arc<str>);

impl Key {
    /// The largest key any store accepts, in bytes.
    pub const MAX_BYTES: usize = 4096;

    /// Validates `key` against the key rules.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] with a detail naming the broken rule.
    pub fn new(key: impl AsRef<str>) -> Result<Self> {
        let key = key.as_ref();
        check_key(key)?;
        Ok(Self(Arc::from(key)))
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: keys are never empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the key starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }
}

fn invalid(key: &str, why: &str) -> Error {
    Error::new(ErrorKind::InvalidKey)
        .with_key(truncate_for_message(key))
        .with_detail(why.to_owned())
}

/// Keys in messages are cut to 128 bytes so a huge key cannot flood a log.
pub(crate) fn truncate_for_message(key: &str) -> String {
    if key.len() <= 128 {
        return key.to_owned();
    }
    let mut end = 128;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &key[..end])
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(key, "key is empty"));
    }
    check_prefix(key)
}

/// Validates a list or watch prefix: the key rules, except that the empty
/// prefix (everything) is allowed.
///
/// # Errors
/// [`ErrorKind::InvalidKey`] naming the broken rule.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > Key::MAX_BYTES {
        return Err(invalid(
            prefix,
            &format!("key is {} bytes, max {}", prefix.len(), Key::MAX_BYTES),
        ));
    }
    if prefix.starts_with('/') {
        return Err(invalid(prefix, "key starts with '/'"));
    }
    if let Some(c) = prefix.chars().find(|c| c.is_control()) {
        return Err(invalid(
            prefix,
            &format!("key holds control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        Key::new(s)
    }
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Key::new(s)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Key::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(Key::new("a").is_ok());
        assert!(Key::new("users/7/name").is_ok());
        assert!(Key::new("ключ/ü/日本").is_ok());
        for bad in ["", "/a", "a\0b", "a\nb", "a\u{7f}", "a\u{85}"] {
            let e = Key::new(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidKey, "{bad:?}");
        }
        assert!(Key::new("x".repeat(Key::MAX_BYTES)).is_ok());
        assert!(Key::new("x".repeat(Key::MAX_BYTES + 1)).is_err());
        assert!(check_prefix("").is_ok());
    }

    /// Moved from the conformance suite (`key_empty_is_invalid`,
    /// `key_with_control_characters_is_invalid`,
    /// `key_with_leading_slash_is_invalid`): `Key::new` enforces these for
    /// every backend.
    #[test]
    fn invalid_keys_are_typed() {
        assert_eq!(Key::new("").unwrap_err().kind(), ErrorKind::InvalidKey);
        for bad in ["a\0b", "line\nbreak", "tab\there", "del\u{7f}", "c1\u{9b}"] {
            let e = Key::new(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidKey, "{bad:?}");
        }
        assert_eq!(Key::new("/abs").unwrap_err().kind(), ErrorKind::InvalidKey);
    }

    /// Dots, slashes, spaces and glob or hash-tag characters are literal
    /// (the conformance case `key_dots_and_slashes_are_literal` checks
    /// that every backend stores them as given).
    #[test]
    fn segments_are_literal() {
        for s in [
            "a/./b", "a/../b", "a//b", "a/b/", "a b", "a*b?[c]", "{tag}x",
        ] {
            assert_eq!(Key::new(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn long_keys_are_truncated_in_messages() {
        let e = Key::new(format!("é{}", "x".repeat(9000))).unwrap_err();
        assert!(e.key().is_some_and(|k| k.len() < 140));
    }
}
