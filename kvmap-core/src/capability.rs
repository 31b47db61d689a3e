//! Capability discovery: what a store can do, how, and its limits.

use std::fmt;

use crate::error::{Error, ErrorKind, Result};
use crate::key::{truncate_for_message, Key};

/// How a store provides a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Support {
    /// The server provides it directly.
    Native,
    /// kvmap builds it on top of the server (e.g. an atomic script, a scan
    /// with merge-sort); the backend docs say at what cost.
    Emulated,
    /// Not available: calls needing it return [`ErrorKind::Unsupported`].
    Unsupported,
}

impl Support {
    /// Whether calls needing the capability work (native or emulated).
    pub fn is_supported(self) -> bool {
        !matches!(self, Support::Unsupported)
    }
}

/// A capability a store may or may not offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Compare-and-swap: create-only, update-if-revision, delete-if-revision.
    Cas,
    /// Time-to-live on put.
    Ttl,
    /// `list` returns keys in lexicographic byte order with cursors.
    OrderedList,
    /// `watch` streams changes.
    Watch,
    /// `watch` can start at a past revision.
    WatchResume,
    /// `apply` is all-or-nothing.
    AtomicBatch,
    /// Linearizable reads (`Consistency::Strong`).
    StrongRead,
    /// Bounded-staleness reads (`Consistency::Stale`).
    StaleRead,
    /// Leases and locks with fencing tokens ([`KvStore::lock`](crate::KvStore::lock)).
    Lock,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Cas => "compare-and-swap",
            Capability::Ttl => "ttl",
            Capability::OrderedList => "ordered list",
            Capability::Watch => "watch",
            Capability::WatchResume => "watch resume",
            Capability::AtomicBatch => "atomic batch",
            Capability::StrongRead => "strong read",
            Capability::StaleRead => "stale read",
            Capability::Lock => "lock",
        })
    }
}

/// Size limits of a store. Checked by the store before any I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest key in bytes (at most [`Key::MAX_BYTES`]).
    pub max_key_bytes: usize,
    /// The largest value in bytes.
    pub max_value_bytes: usize,
    /// The most operations in one [`Batch`](crate::Batch) or `get_many`.
    pub max_batch_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_batch_ops: 1024,
        }
    }
}

impl Limits {
    /// Checks a key against `max_key_bytes`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`].
    pub fn check_key(&self, key: &Key) -> Result<()> {
        if key.len() > self.max_key_bytes {
            return Err(Error::new(ErrorKind::InvalidKey)
                .with_key(truncate_for_message(key.as_str()))
                .with_detail(format!(
                    "key is {} bytes, max {}",
                    key.len(),
                    self.max_key_bytes
                )));
        }
        Ok(())
    }

    /// Checks a key and a value to be written.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] or [`ErrorKind::ValueTooLarge`].
    pub fn check_put(&self, key: &Key, value: &[u8]) -> Result<()> {
        self.check_key(key)?;
        if value.len() > self.max_value_bytes {
            return Err(Error::new(ErrorKind::ValueTooLarge {
                size: value.len(),
                max: self.max_value_bytes,
            })
            .with_key(truncate_for_message(key.as_str())));
        }
        Ok(())
    }

    /// Checks the keys of a `get_many`: their number and each key.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] or [`ErrorKind::InvalidKey`].
    pub fn check_keys(&self, keys: &[Key]) -> Result<()> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|k| self.check_key(k))
    }

    /// Checks the number of operations of a batch.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`].
    pub fn check_batch(&self, ops: usize) -> Result<()> {
        if ops > self.max_batch_ops {
            return Err(Error::new(ErrorKind::InvalidArgument).with_detail(format!(
                "batch has {ops} operations, max {}",
                self.max_batch_ops
            )));
        }
        Ok(())
    }
}

/// What a store can do: one [`Support`] level per capability, plus limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Compare-and-swap.
    pub cas: Support,
    /// Time-to-live.
    pub ttl: Support,
    /// Ordered list with cursors.
    pub ordered_list: Support,
    /// Watch.
    pub watch: Support,
    /// Watch from a past revision.
    pub watch_resume: Support,
    /// All-or-nothing batches.
    pub atomic_batch: Support,
    /// Linearizable reads.
    pub strong_read: Support,
    /// Bounded-staleness reads.
    pub stale_read: Support,
    /// Leases and locks with fencing tokens.
    pub lock: Support,
    /// Size limits.
    pub limits: Limits,
}

impl Capabilities {
    /// Every capability native, default limits: what the in-memory store
    /// offers. Backends start from this and lower what they lack.
    pub fn all_native() -> Self {
        Self {
            cas: Support::Native,
            ttl: Support::Native,
            ordered_list: Support::Native,
            watch: Support::Native,
            watch_resume: Support::Native,
            atomic_batch: Support::Native,
            strong_read: Support::Native,
            stale_read: Support::Native,
            lock: Support::Native,
            limits: Limits::default(),
        }
    }

    /// The support level of one capability.
    pub fn get(&self, cap: Capability) -> Support {
        match cap {
            Capability::Cas => self.cas,
            Capability::Ttl => self.ttl,
            Capability::OrderedList => self.ordered_list,
            Capability::Watch => self.watch,
            Capability::WatchResume => self.watch_resume,
            Capability::AtomicBatch => self.atomic_batch,
            Capability::StrongRead => self.strong_read,
            Capability::StaleRead => self.stale_read,
            Capability::Lock => self.lock,
        }
    }

    /// Sets the support level of one capability.
    pub fn with(mut self, cap: Capability, support: Support) -> Self {
        let slot = match cap {
            Capability::Cas => &mut self.cas,
            Capability::Ttl => &mut self.ttl,
            Capability::OrderedList => &mut self.ordered_list,
            Capability::Watch => &mut self.watch,
            Capability::WatchResume => &mut self.watch_resume,
            Capability::AtomicBatch => &mut self.atomic_batch,
            Capability::StrongRead => &mut self.strong_read,
            Capability::StaleRead => &mut self.stale_read,
            Capability::Lock => &mut self.lock,
        };
        *slot = support;
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether a capability is usable (native or emulated).
    pub fn supports(&self, cap: Capability) -> bool {
        self.get(cap).is_supported()
    }

    /// Fails with [`ErrorKind::Unsupported`] if `cap` is unsupported.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`].
    pub fn require(&self, cap: Capability) -> Result<()> {
        if self.supports(cap) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Unsupported { capability: cap }))
        }
    }

    /// All capabilities with their support level, for tables and
    /// `kvmap info`.
    pub fn table(&self) -> [(Capability, Support); 9] {
        [
            Capability::Cas,
            Capability::Ttl,
            Capability::OrderedList,
            Capability::Watch,
            Capability::WatchResume,
            Capability::AtomicBatch,
            Capability::StrongRead,
            Capability::StaleRead,
            Capability::Lock,
        ]
        .map(|c| (c, self.get(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_unsupported_is_typed() {
        let caps = Capabilities::all_native().with(Capability::Watch, Support::Unsupported);
        let e = caps.require(Capability::Watch).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Unsupported {
                capability: Capability::Watch
            }
        );
        assert!(caps.require(Capability::Cas).is_ok());
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_key_bytes: 3,
            max_value_bytes: 2,
            max_batch_ops: 1,
        };
        let k = Key::new("abcd").unwrap();
        assert_eq!(l.check_key(&k).unwrap_err().kind(), ErrorKind::InvalidKey);
        let k = Key::new("ab").unwrap();
        assert_eq!(
            l.check_put(&k, b"xyz").unwrap_err().kind(),
            ErrorKind::ValueTooLarge { size: 3, max: 2 }
        );
        assert!(l.check_batch(2).is_err());
    }
}
