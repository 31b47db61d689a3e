//! [`RocksConfig`], the settings of a [`RocksStore`](crate::RocksStore).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmap_core::{Error, ErrorKind, Limits, Result};
use serde::{Deserialize, Serialize};

/// Settings of a [`RocksStore`](crate::RocksStore).
///
/// Build one with [`RocksConfig::new`] and the `with_*` setters, from
/// serde (every field optional, durations in milliseconds), or from the
/// environment with [`RocksConfig::from_env`].
///
/// ```
/// use std::time::Duration;
/// use kvmap_rocksdb::RocksConfig;
/// let config = RocksConfig::new("/var/lib/app/kv")
///     .with_sync(true)
///     .with_changelog_max_entries(50_000)
///     .with_changelog_max_age(Some(Duration::from_secs(3600)));
/// assert!(config.sync);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RocksConfig {
    /// The database directory.
    pub path: PathBuf,
    /// Create the directory and database if missing (default `true`).
    pub create_if_missing: bool,
    /// `fsync` the write-ahead log before a write is acknowledged (default
    /// `true`: an acknowledged write survives a power loss, so a revision
    /// is never handed out twice for different values after a crash).
    /// Concurrent writes share one `fsync` (group commit on the writer
    /// thread). `false` trades that for latency: the WAL still reaches the
    /// OS on every write, so a process crash loses nothing, but a power
    /// loss or kernel crash may lose the last acknowledged writes and
    /// their revisions may then be reissued (a compare-and-swap against a
    /// remembered revision can succeed against a different value).
    pub sync: bool,
    /// Keep at least this many changes in the change log for watch resume
    /// (default 100 000). Older start revisions get
    /// [`ErrorKind::Compacted`].
    pub changelog_max_entries: u64,
    /// Drop changes older than this from the change log (default one
    /// hour; `None`: keep by count only).
    #[serde(with = "opt_millis", rename = "changelog_max_age_ms")]
    pub changelog_max_age: Option<Duration>,
    /// The size of RocksDB's LRU block cache in bytes (default 64 MiB).
    pub block_cache_bytes: usize,
    /// How many events a slow watcher may fall behind before it gets a
    /// resync instead (default 1024).
    pub watch_buffer: usize,
    /// Run point reads (`get`, `get_many`) on a blocking thread with
    /// `spawn_blocking` instead of inline on the async worker (default
    /// `false`: a point read is a few microseconds, less than the cost of
    /// the hand-off; see the crate docs for the measurements).
    pub offload_reads: bool,
    /// Size limits, checked before any I/O.
    #[serde(skip)]
    pub limits: Limits,
}

impl Default for RocksConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("kvmap-data"),
            create_if_missing: true,
            sync: true,
            changelog_max_entries: 100_000,
            changelog_max_age: Some(Duration::from_secs(3600)),
            block_cache_bytes: 64 << 20,
            watch_buffer: 1024,
            offload_reads: false,
            limits: Limits::default(),
        }
    }
}

impl RocksConfig {
    /// Default settings for the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    /// Sets the database directory.
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets whether a missing database is created.
    pub fn with_create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Sets whether every write is fsynced before it is acknowledged.
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the change-log retention by count.
    pub fn with_changelog_max_entries(mut self, n: u64) -> Self {
        self.changelog_max_entries = n;
        self
    }

    /// Sets the change-log retention by age.
    pub fn with_changelog_max_age(mut self, age: Option<Duration>) -> Self {
        self.changelog_max_age = age;
        self
    }

    /// Sets the block cache size in bytes.
    pub fn with_block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// Sets the per-watcher buffer.
    pub fn with_watch_buffer(mut self, n: usize) -> Self {
        self.watch_buffer = n;
        self
    }

    /// Sets whether point reads run on a blocking thread.
    pub fn with_offload_reads(mut self, offload: bool) -> Self {
        self.offload_reads = offload;
        self
    }

    /// Sets the size limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads the settings from the environment, starting from the
    /// defaults:
    ///
    /// | variable | field |
    /// | --- | --- |
    /// | `KVMAP_ROCKSDB_PATH` | `path` |
    /// | `KVMAP_ROCKSDB_CREATE_IF_MISSING` | `create_if_missing` (`true`/`false`/`1`/`0`) |
    /// | `KVMAP_ROCKSDB_SYNC` | `sync` |
    /// | `KVMAP_ROCKSDB_CHANGELOG_MAX_ENTRIES` | `changelog_max_entries` |
    /// | `KVMAP_ROCKSDB_CHANGELOG_MAX_AGE_MS` | `changelog_max_age` (`0`: none) |
    /// | `KVMAP_ROCKSDB_BLOCK_CACHE_BYTES` | `block_cache_bytes` |
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming the variable that does not
    /// parse.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`RocksConfig::from_env`] over any variable lookup (for tests and
    /// other configuration sources).
    ///
    /// # Errors
    /// As [`RocksConfig::from_env`].
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Self::default();
        if let Some(p) = var("KVMAP_ROCKSDB_PATH") {
            c.path = PathBuf::from(p);
        }
        if let Some(v) = var("KVMAP_ROCKSDB_CREATE_IF_MISSING") {
            c.create_if_missing = parse_bool("KVMAP_ROCKSDB_CREATE_IF_MISSING", &v)?;
        }
        if let Some(v) = var("KVMAP_ROCKSDB_SYNC") {
            c.sync = parse_bool("KVMAP_ROCKSDB_SYNC", &v)?;
        }
        if let Some(v) = var("KVMAP_ROCKSDB_CHANGELOG_MAX_ENTRIES") {
            c.changelog_max_entries = parse_num("KVMAP_ROCKSDB_CHANGELOG_MAX_ENTRIES", &v)?;
        }
        if let Some(v) = var("KVMAP_ROCKSDB_CHANGELOG_MAX_AGE_MS") {
            let ms: u64 = parse_num("KVMAP_ROCKSDB_CHANGELOG_MAX_AGE_MS", &v)?;
            c.changelog_max_age = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(v) = var("KVMAP_ROCKSDB_BLOCK_CACHE_BYTES") {
            c.block_cache_bytes = parse_num("KVMAP_ROCKSDB_BLOCK_CACHE_BYTES", &v)?;
        }
        Ok(c)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the settings before anything is opened.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |d: &str| Err(Error::new(ErrorKind::InvalidArgument).with_detail(d.to_owned()));
        if self.path.as_os_str().is_empty() {
            return bad("the database path is empty");
        }
        if self.changelog_max_entries == 0 {
            return bad("changelog_max_entries must be positive");
        }
        if self.changelog_max_age.is_some_and(|a| a.is_zero()) {
            return bad("changelog_max_age must be positive (or none)");
        }
        if self.watch_buffer == 0 {
            return bad("watch_buffer must be positive");
        }
        Ok(())
    }
}

fn invalid_var(name: &str, value: &str, want: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument).with_detail(format!(
        "environment variable {name}={value:?} is not {want}"
    ))
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid_var(name, v, "a boolean")),
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| invalid_var(name, v, "a non-negative integer"))
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn from_vars_reads_and_rejects() {
        let vars: HashMap<&str, &str> = [
            ("KVMAP_ROCKSDB_PATH", "/tmp/x"),
            ("KVMAP_ROCKSDB_SYNC", "true"),
            ("KVMAP_ROCKSDB_CHANGELOG_MAX_AGE_MS", "0"),
            ("KVMAP_ROCKSDB_CHANGELOG_MAX_ENTRIES", "10"),
        ]
        .into();
        let c = RocksConfig::from_vars(|k| vars.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.path, PathBuf::from("/tmp/x"));
        assert!(c.sync);
        assert_eq!(c.changelog_max_age, None);
        assert_eq!(c.changelog_max_entries, 10);

        let e = RocksConfig::from_vars(|k| (k == "KVMAP_ROCKSDB_SYNC").then(|| "maybe".into()))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("KVMAP_ROCKSDB_SYNC"));
    }

    #[test]
    fn serde_uses_millis_and_defaults() {
        let c: RocksConfig =
            serde_json::from_str(r#"{"path": "/d", "changelog_max_age_ms": 1500}"#).unwrap();
        assert_eq!(c.changelog_max_age, Some(Duration::from_millis(1500)));
        assert!(c.create_if_missing);
        let back: RocksConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<RocksConfig>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(RocksConfig::new("").validate().is_err());
        assert!(RocksConfig::new("x")
            .with_changelog_max_entries(0)
            .validate()
            .is_err());
        assert!(RocksConfig::new("x").validate().is_ok());
    }
}
