//! Entries, write options, list requests and batches.

use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::capability::Limits;
use crate::error::{Error, ErrorKind, Result};
use crate::key::{check_prefix, Key};

/// A revision: a number that increases every time a key changes.
///
/// Revisions of one key increase strictly on every change. Whether they
/// are global (one counter for the whole store, as in etcd, RocksDB and
/// the in-memory store) or per key (Redis) is in each backend's docs;
/// either way `0` never names a stored entry.
pub type Revision = u64;

/// A stored key with its value and versions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// The value (empty for a keys-only list).
    pub value: Bytes,
    /// The revision of the last change to this key.
    pub revision: Revision,
    /// The revision at which the key was created (since it last did not
    /// exist).
    pub create_revision: Revision,
    /// When the entry expires, if it was written with a TTL.
    pub expires_at: Option<SystemTime>,
    /// The store that served the read, when a composite store (a fallback
    /// chain, a cache) answered; `None` means the store called.
    pub served_by: Option<Arc<str>>,
    /// For a stale read, the bound on how old the data may be.
    pub staleness: Option<Duration>,
}

impl Entry {
    /// A new entry without expiry.
    pub fn new(key: Key, value: Bytes, revision: Revision, create_revision: Revision) -> Self {
        Self {
            key,
            value,
            revision,
            create_revision,
            expires_at: None,
            served_by: None,
            staleness: None,
        }
    }

    /// Sets the expiry.
    pub fn with_expires_at(mut self, at: Option<SystemTime>) -> Self {
        self.expires_at = at;
        self
    }

    /// Marks the store that served the read.
    pub fn with_served_by(mut self, by: Arc<str>) -> Self {
        self.served_by = Some(by);
        self
    }

    /// Sets the staleness bound of a stale read.
    pub fn with_staleness(mut self, staleness: Option<Duration>) -> Self {
        self.staleness = staleness;
        self
    }
}

/// The condition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Write whatever is there.
    #[default]
    Overwrite,
    /// Write only if the key is absent, else [`ErrorKind::AlreadyExists`].
    Create,
    /// Write only if the key's current revision is this one, else
    /// [`ErrorKind::Conflict`] with the current revision (or `None` if the
    /// key is absent).
    Update(Revision),
}

/// Options of a put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PutOptions {
    /// The condition.
    pub mode: PutMode,
    /// Time to live. A put without TTL clears an earlier TTL; a put with a
    /// TTL sets it anew.
    pub ttl: Option<Duration>,
}

impl PutOptions {
    /// Unconditional write, no TTL.
    pub fn overwrite() -> Self {
        Self::default()
    }

    /// Create-only write.
    pub fn create() -> Self {
        Self {
            mode: PutMode::Create,
            ttl: None,
        }
    }

    /// Update-if-revision write.
    pub fn update(revision: Revision) -> Self {
        Self {
            mode: PutMode::Update(revision),
            ttl: None,
        }
    }

    /// Sets the TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// A write with this condition and TTL (`None`: no TTL).
    pub fn with(mode: PutMode, ttl: Option<Duration>) -> Self {
        Self { mode, ttl }
    }

    /// The longest TTL any store accepts: 100 years. Longer TTLs are an
    /// error, never silently capped; below it a backend keeps the TTL
    /// exactly (to its documented granularity).
    pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

    /// Checks the TTL is positive and at most [`PutOptions::MAX_TTL`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`].
    pub fn validate(&self) -> Result<()> {
        match self.ttl {
            Some(t) if t.is_zero() => {
                Err(Error::new(ErrorKind::InvalidArgument).with_detail("ttl must be positive"))
            }
            Some(t) if t > Self::MAX_TTL => Err(Error::new(ErrorKind::InvalidArgument)
                .with_detail(format!("ttl {t:?} is above the maximum of 100 years"))),
            _ => Ok(()),
        }
    }

    /// Checks the mode against the current revision of the key (`None` if
    /// absent). Shared by every backend that evaluates conditions itself.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] or [`ErrorKind::Conflict`].
    pub fn check_condition(&self, current: Option<Revision>) -> Result<()> {
        match (self.mode, current) {
            (PutMode::Overwrite, _) => Ok(()),
            (PutMode::Create, None) => Ok(()),
            (PutMode::Create, Some(_)) => Err(Error::new(ErrorKind::AlreadyExists)),
            (PutMode::Update(want), Some(cur)) if want == cur => Ok(()),
            (PutMode::Update(_), cur) => Err(Error::new(ErrorKind::Conflict { current: cur })),
        }
    }
}

/// Options of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeleteOptions {
    /// Delete only if the key's current revision is this one, else
    /// [`ErrorKind::Conflict`].
    pub if_revision: Option<Revision>,
}

impl DeleteOptions {
    /// Delete-if-revision.
    pub fn if_revision(revision: Revision) -> Self {
        Self {
            if_revision: Some(revision),
        }
    }

    /// Checks the condition against the current revision (`None` if absent).
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`].
    pub fn check_condition(&self, current: Option<Revision>) -> Result<()> {
        match (self.if_revision, current) {
            (None, _) => Ok(()),
            (Some(want), Some(cur)) if want == cur => Ok(()),
            (Some(_), cur) => Err(Error::new(ErrorKind::Conflict { current: cur })),
        }
    }
}

/// Which keys a list covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRange {
    /// Every key starting with the prefix (the empty prefix is every key).
    /// `a/` never matches `ab`.
    Prefix(String),
    /// Keys `k` with `start <= k < end` in byte order (`end: None` is
    /// unbounded).
    Range {
        /// Inclusive start.
        start: String,
        /// Exclusive end.
        end: Option<String>,
    },
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &str) -> bool {
        match self {
            KeyRange::Prefix(p) => key.starts_with(p.as_str()),
            KeyRange::Range { start, end } => {
                key >= start.as_str() && end.as_deref().is_none_or(|e| key < e)
            }
        }
    }

    /// The lowest key of the range (inclusive).
    pub fn start(&self) -> &str {
        match self {
            KeyRange::Prefix(p) => p,
            KeyRange::Range { start, .. } => start,
        }
    }

    /// The exclusive upper bound of the range as bytes, `None` if
    /// unbounded. For a prefix it is the prefix with its last byte
    /// incremented (trailing `0xff` bytes dropped).
    pub fn end_bytes(&self) -> Option<Vec<u8>> {
        match self {
            KeyRange::Prefix(p) => prefix_end(p.as_bytes()),
            KeyRange::Range { end, .. } => end.as_ref().map(|e| e.as_bytes().to_vec()),
        }
    }
}

/// The smallest byte string greater than every string starting with
/// `prefix`, `None` if there is none (empty or all-`0xff` prefix).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The page size of a list without a limit.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// A list request: a range, an optional limit, a continuation cursor and
/// a keys-only switch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListRequest {
    /// The keys covered.
    pub range: KeyRange,
    /// At most this many entries per page (`None`: [`DEFAULT_PAGE_SIZE`]).
    pub limit: Option<usize>,
    /// Continue after the page that returned this cursor.
    pub cursor: Option<String>,
    /// Return keys and revisions only, with empty values.
    pub keys_only: bool,
}

impl ListRequest {
    /// Every key under `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            range: KeyRange::Prefix(prefix.into()),
            limit: None,
            cursor: None,
            keys_only: false,
        }
    }

    /// Keys in `[start, end)`.
    pub fn range(start: impl Into<String>, end: Option<String>) -> Self {
        Self {
            range: KeyRange::Range {
                start: start.into(),
                end,
            },
            limit: None,
            cursor: None,
            keys_only: false,
        }
    }

    /// Sets the page size.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continues from a cursor.
    pub fn with_cursor(mut self, cursor: Option<String>) -> Self {
        self.cursor = cursor;
        self
    }

    /// A request for every entry of `range`, first page, default size.
    pub fn over(range: KeyRange) -> Self {
        Self {
            range,
            limit: None,
            cursor: None,
            keys_only: false,
        }
    }

    /// Keys only.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Checks prefix, bounds, limit and cursor. Every backend calls this
    /// before any I/O.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] or [`ErrorKind::InvalidArgument`].
    pub fn validate(&self) -> Result<()> {
        match &self.range {
            KeyRange::Prefix(p) => check_prefix(p)?,
            KeyRange::Range { start, end } => {
                check_prefix(start)?;
                if let Some(e) = end {
                    check_prefix(e)?;
                    if e.as_str() < start.as_str() {
                        return Err(Error::new(ErrorKind::InvalidArgument)
                            .with_detail(format!("range end {e:?} is before start {start:?}")));
                    }
                }
            }
        }
        if self.limit == Some(0) {
            return Err(
                Error::new(ErrorKind::InvalidArgument).with_detail("limit must be positive")
            );
        }
        if let Some(c) = &self.cursor {
            check_prefix(c)?;
        }
        Ok(())
    }

    /// The lower bound to scan from: after the cursor if there is one,
    /// else the range start.
    pub fn lower_bound(&self) -> Bound<&str> {
        match &self.cursor {
            Some(c) if c.as_str() >= self.range.start() => Bound::Excluded(c.as_str()),
            _ => Bound::Included(self.range.start()),
        }
    }

    /// The page size: the limit, or [`DEFAULT_PAGE_SIZE`].
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_PAGE_SIZE)
    }

    /// Whether `key` falls in this page's window (in the range and after
    /// the cursor).
    pub fn admits(&self, key: &str) -> bool {
        self.range.contains(key) && self.cursor.as_deref().is_none_or(|c| key > c)
    }
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// Entries in ascending key order.
    pub entries: Vec<Entry>,
    /// Pass to [`ListRequest::with_cursor`] to get the next page; `None`
    /// when this is the last page.
    pub cursor: Option<String>,
}

impl ListPage {
    /// Builds a page from up to `limit + 1` sorted entries: keeps `limit`,
    /// and sets the cursor when there were more.
    pub fn from_sorted(mut entries: Vec<Entry>, limit: Option<usize>) -> Self {
        let cursor = match limit {
            Some(l) if entries.len() > l => {
                entries.truncate(l);
                entries.last().map(|e| e.key.as_str().to_owned())
            }
            _ => None,
        };
        Self { entries, cursor }
    }
}

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// A put.
    Put {
        /// The key.
        key: Key,
        /// The value.
        value: Bytes,
        /// Condition and TTL.
        options: PutOptions,
    },
    /// A delete.
    Delete {
        /// The key.
        key: Key,
        /// Condition.
        options: DeleteOptions,
    },
}

impl BatchOp {
    /// The key of the operation.
    pub fn key(&self) -> &Key {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }
}

/// A list of writes applied by [`KvStore::apply`](crate::KvStore::apply).
///
/// Operations apply in order, as if one after the other: several
/// operations on one key are allowed and the last one wins (a put then a
/// delete leaves the key absent, a second put's value is the one stored).
/// Each put's outcome is its revision; in an atomic batch the puts of one
/// key may share the batch's single commit revision (Consul), elsewhere
/// they increase.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// The operations, in order.
    pub ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an unconditional put.
    pub fn put(self, key: Key, value: impl Into<Bytes>) -> Self {
        self.put_with(key, value, PutOptions::default())
    }

    /// Adds a put with options.
    pub fn put_with(mut self, key: Key, value: impl Into<Bytes>, options: PutOptions) -> Self {
        self.ops.push(BatchOp::Put {
            key,
            value: value.into(),
            options,
        });
        self
    }

    /// Adds an unconditional delete.
    pub fn delete(self, key: Key) -> Self {
        self.delete_with(key, DeleteOptions::default())
    }

    /// Adds a delete with options.
    pub fn delete_with(mut self, key: Key, options: DeleteOptions) -> Self {
        self.ops.push(BatchOp::Delete { key, options });
        self
    }

    /// Checks the whole batch before any I/O: the number of operations,
    /// every key and value against `limits`, every TTL. Every backend calls
    /// this first, so a bad batch writes nothing.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`], [`ErrorKind::InvalidKey`] or
    /// [`ErrorKind::ValueTooLarge`] of the first bad operation.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        limits.check_batch(self.len())?;
        for op in &self.ops {
            match op {
                BatchOp::Put {
                    key,
                    value,
                    options,
                } => {
                    limits.check_put(key, value)?;
                    options.validate()?;
                }
                BatchOp::Delete { key, .. } => limits.check_key(key)?,
            }
        }
        Ok(())
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The outcome of one batch operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// A put wrote this revision.
    Put(Revision),
    /// A delete removed the key (`true`) or found none (`false`).
    Deleted(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn prefix_isolation() {
        let r = KeyRange::Prefix("a/".into());
        assert!(r.contains("a/b"));
        assert!(!r.contains("ab"));
    }

    #[test]
    fn conditions() {
        assert!(PutOptions::create().check_condition(None).is_ok());
        assert_eq!(
            PutOptions::update(3)
                .check_condition(Some(4))
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict { current: Some(4) }
        );
        assert_eq!(
            DeleteOptions::if_revision(3)
                .check_condition(None)
                .unwrap_err()
                .kind(),
            ErrorKind::Conflict { current: None }
        );
    }

    #[test]
    fn list_validation() {
        assert!(ListRequest::prefix("").validate().is_ok());
        assert!(ListRequest::prefix("a").with_limit(0).validate().is_err());
        assert!(ListRequest::range("b", Some("a".into()))
            .validate()
            .is_err());
    }
}
