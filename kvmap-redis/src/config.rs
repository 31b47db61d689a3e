//! [`RedisConfig`]: where the servers are, how to authenticate, and how the
//! store behaves.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kvmap_core::{Error, ErrorKind, Limits, Result};
use serde::{Deserialize, Serialize};

/// Standalone server or Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One server (with optional replicas that kvmap does not use).
    #[default]
    Standalone,
    /// A Redis Cluster; the URLs are seed nodes.
    Cluster,
}

/// Durable-write mode: after every write, `WAIT replicas timeout` on the
/// master that took it. A write acknowledged in this mode has reached
/// `replicas` replicas; if fewer acknowledge in time the call fails with
/// [`ErrorKind::Timeout`] and an outcome-unknown retry class (the master
/// applied it, a failover may still lose it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableWrites {
    /// How many replicas must acknowledge.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// Settings of a [`RedisStore`](crate::RedisStore).
///
/// Build with [`RedisConfig::standalone`] / [`RedisConfig::cluster`] and
/// the `with_*` setters, deserialize it (every field but `urls` has a
/// default), or read it from the environment with [`RedisConfig::from_env`].
/// `Debug` never prints the password (nor a password inside a URL), and
/// neither does `Serialize`: it skips `password` and writes the URLs
/// redacted, so a serialized config is safe to log but carries no
/// credentials (set them again after deserializing).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://host:port` or `rediss://host:port` (TLS) URLs; for a cluster,
    /// one or more seed nodes. Credentials in the URL are used unless
    /// `username` / `password` are set.
    #[serde(serialize_with = "serialize_redacted")]
    pub urls: Vec<String>,
    /// Standalone or cluster.
    pub topology: Topology,
    /// ACL user name (Redis 6+); `None`: the URL's, or `default`.
    pub username: Option<String>,
    /// Password; `None`: the URL's, if any. Never serialized.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// PEM file of the CA that signed the servers' certificates (for
    /// `rediss://`); `None`: the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM text of the CA (takes precedence over `tls_ca_file`).
    pub tls_ca_pem: Option<String>,
    /// Prefix of every server key kvmap writes, e.g. `kvmap:`. Must not
    /// contain `{`, `}` or glob characters (`*?[]\`), so hash tags in keys
    /// keep working and SCAN patterns stay exact. (Not a "namespace": in
    /// kvmap that word means the logical key scope of
    /// [`Namespaced`](kvmap_core::Namespaced) and the `namespace=` URL
    /// parameter; this is the physical server-side prefix, named like
    /// Consul's `key_prefix`.)
    #[serde(alias = "namespace")]
    pub key_prefix: String,
    /// Timeout of each Redis round trip of a call. A single-key call is
    /// one round trip (with its resends, all within this timeout); a
    /// `list` page and the set-up of a watch are many, each bounded by
    /// it, and as a whole only by the context's deadline; a batch is
    /// bounded by it times its number of pipeline rounds.
    pub op_timeout: Duration,
    /// Timeout of establishing a connection.
    pub connect_timeout: Duration,
    /// Optional durable-write mode (`WAIT`).
    pub durable_writes: Option<DurableWrites>,
    /// Whether writes publish change events (needed by `watch`; off makes
    /// writes cheaper and `watch` unsupported).
    pub watch_events: bool,
    /// Whether watches report TTL expiry (needs keyspace notifications
    /// `notify-keyspace-events Ex`, which kvmap enables with `CONFIG SET`
    /// if allowed, else the watch fails with a typed error). Off: an
    /// expired key just disappears; it is absent from the next resync.
    pub expiry_events: bool,
    /// Events a slow watcher may fall behind before it gets a resync.
    pub watch_buffer: usize,
    /// Key, value and batch size limits.
    #[serde(skip, default = "default_limits")]
    pub limits: Limits,
}

/// Writes the URLs with their passwords replaced by `***`.
fn serialize_redacted<S: serde::Serializer>(
    urls: &[String],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|u| redact_url(u)))
}

fn default_limits() -> Limits {
    Limits {
        max_key_bytes: 1024,
        max_value_bytes: 1024 * 1024,
        max_batch_ops: 10_000,
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            urls: vec!["redis://127.0.0.1:6379".into()],
            topology: Topology::Standalone,
            username: None,
            password: None,
            tls_ca_file: None,
            tls_ca_pem: None,
            key_prefix: "kvmap:".into(),
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            durable_writes: None,
            watch_events: true,
            expiry_events: true,
            watch_buffer: 1024,
            limits: default_limits(),
        }
    }
}

impl RedisConfig {
    /// A standalone server at `url`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            ..Self::default()
        }
    }

    /// A cluster reached through the seed `urls`.
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            topology: Topology::Cluster,
            ..Self::default()
        }
    }

    /// Reads the configuration from the environment:
    ///
    /// | variable | meaning |
    /// | --- | --- |
    /// | `KVMAP_REDIS_URLS` | comma-separated URLs (required) |
    /// | `KVMAP_REDIS_CLUSTER` | `1`/`true`: cluster |
    /// | `KVMAP_REDIS_USERNAME`, `KVMAP_REDIS_PASSWORD` | credentials |
    /// | `KVMAP_REDIS_TLS_CA` | path of the CA PEM |
    /// | `KVMAP_REDIS_KEY_PREFIX` | `key_prefix` (default `kvmap:`; the old name `KVMAP_REDIS_NAMESPACE` is still read) |
    /// | `KVMAP_REDIS_OP_TIMEOUT_MS` | per-operation timeout |
    /// | `KVMAP_REDIS_WAIT_REPLICAS`, `KVMAP_REDIS_WAIT_TIMEOUT_MS` | durable writes |
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for a missing URL list or a bad number.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let urls = get("KVMAP_REDIS_URLS").ok_or_else(|| invalid("KVMAP_REDIS_URLS is not set"))?;
        let cluster = get("KVMAP_REDIS_CLUSTER").is_some_and(|v| v == "1" || v == "true");
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let mut c = if cluster {
            Self::cluster(urls)
        } else {
            Self {
                urls,
                ..Self::default()
            }
        };
        c.username = get("KVMAP_REDIS_USERNAME");
        c.password = get("KVMAP_REDIS_PASSWORD");
        c.tls_ca_file = get("KVMAP_REDIS_TLS_CA").map(PathBuf::from);
        if let Some(ns) = get("KVMAP_REDIS_KEY_PREFIX").or_else(|| get("KVMAP_REDIS_NAMESPACE")) {
            c.key_prefix = ns;
        }
        let ms = |name: &str| -> Result<Option<u64>> {
            get(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| invalid(&format!("{name} is not a number: {v:?}")))
                })
                .transpose()
        };
        if let Some(t) = ms("KVMAP_REDIS_OP_TIMEOUT_MS")? {
            c.op_timeout = Duration::from_millis(t);
        }
        if let Some(n) = ms("KVMAP_REDIS_WAIT_REPLICAS")? {
            let timeout = ms("KVMAP_REDIS_WAIT_TIMEOUT_MS")?.unwrap_or(1000);
            c.durable_writes = Some(DurableWrites {
                replicas: u32::try_from(n).map_err(|_| invalid("too many wait replicas"))?,
                timeout: Duration::from_millis(timeout),
            });
        }
        c.validate()?;
        Ok(c)
    }

    /// Sets the credentials.
    pub fn with_credentials(
        mut self,
        username: Option<String>,
        password: impl Into<String>,
    ) -> Self {
        self.username = username;
        self.password = Some(password.into());
        self
    }

    /// Trusts this CA (PEM text) for `rediss://`.
    pub fn with_tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Trusts the CA in this PEM file for `rediss://`.
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Sets the key prefix on the server.
    pub fn with_key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    /// Sets the per-operation timeout.
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Enables durable writes: `WAIT replicas timeout` after every write.
    pub fn with_durable_writes(mut self, replicas: u32, timeout: Duration) -> Self {
        self.durable_writes = Some(DurableWrites { replicas, timeout });
        self
    }

    /// Turns change-event publishing (and so `watch`) on or off.
    pub fn with_watch_events(mut self, on: bool) -> Self {
        self.watch_events = on;
        self
    }

    /// Turns expiry events of watches on or off.
    pub fn with_expiry_events(mut self, on: bool) -> Self {
        self.expiry_events = on;
        self
    }

    /// Sets the per-watcher event buffer.
    pub fn with_watch_buffer(mut self, n: usize) -> Self {
        self.watch_buffer = n;
        self
    }

    /// Sets the size limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.urls.is_empty() {
            return Err(invalid("no redis url given"));
        }
        for u in &self.urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(invalid(&format!(
                    "url {:?} must start with redis:// or rediss://",
                    redact_url(u)
                )));
            }
        }
        if self.topology == Topology::Standalone && self.urls.len() > 1 {
            return Err(invalid("a standalone store takes exactly one url"));
        }
        if let Some(c) = self
            .key_prefix
            .chars()
            .find(|c| matches!(c, '{' | '}' | '*' | '?' | '[' | ']' | '\\') || c.is_control())
        {
            return Err(invalid(&format!("key_prefix must not contain {c:?}")));
        }
        if self.op_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(invalid("timeouts must be positive"));
        }
        if self.watch_buffer == 0 {
            return Err(invalid("watch buffer must be positive"));
        }
        Ok(())
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("rediss://"))
    }
}

fn invalid(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument)
        .with_backend("redis")
        .with_detail(format!("config: {msg}"))
}

pub(crate) use kvmap_core::redact_url;

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("RedisConfig")
            .field("urls", &urls)
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|_| "<pem>"))
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("durable_writes", &self.durable_writes)
            .field("watch_events", &self.watch_events)
            .field("expiry_events", &self.expiry_events)
            .field("watch_buffer", &self.watch_buffer)
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn debug_never_prints_secrets() {
        let c = RedisConfig::standalone("redis://bob:hunter2@127.0.0.1:1")
            .with_credentials(Some("bob".into()), "s3cret");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("s3cret"), "{d}");
        assert!(d.contains("bob"));
    }

    #[test]
    fn from_env_reads_everything() {
        let env: HashMap<&str, &str> = [
            ("KVMAP_REDIS_URLS", "redis://a:1, redis://b:2"),
            ("KVMAP_REDIS_CLUSTER", "1"),
            ("KVMAP_REDIS_PASSWORD", "pw"),
            ("KVMAP_REDIS_OP_TIMEOUT_MS", "250"),
            ("KVMAP_REDIS_WAIT_REPLICAS", "1"),
        ]
        .into_iter()
        .collect();
        let c = RedisConfig::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.urls, vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(c.topology, Topology::Cluster);
        assert_eq!(c.op_timeout, Duration::from_millis(250));
        assert_eq!(c.durable_writes.unwrap().replicas, 1);
        let e = RedisConfig::from_lookup(|_| None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn validation() {
        assert!(RedisConfig::standalone("http://x").validate().is_err());
        assert!(RedisConfig::standalone("redis://x:1")
            .with_key_prefix("a{b")
            .validate()
            .is_err());
        assert!(RedisConfig::cluster(["redis://a:1", "rediss://b:2"])
            .validate()
            .is_ok());
        let c: RedisConfig = serde_json::from_str(r#"{"urls":["redis://x:1"]}"#).unwrap();
        let secret = RedisConfig::standalone("redis://u:p%40ss%3Fw0rd@h:1")
            .with_credentials(Some("u".into()), "hunter22");
        let json = serde_json::to_string(&secret).unwrap();
        assert!(
            !json.contains("hunter22") && !json.contains("w0rd"),
            "{json}"
        );
        assert!(json.contains("redis://u:***@h:1"), "{json}");
        assert_eq!(c.key_prefix, "kvmap:");
    }
}
