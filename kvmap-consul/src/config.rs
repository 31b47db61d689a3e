//! [`ConsulConfig`]: where the agents are, how to authenticate, and how the
//! store behaves.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kvmap_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Consul 1.8's default `txn_max_req_len` (512 KiB): the largest `/v1/txn`
/// request body an agent accepts.
pub const DEFAULT_TXN_MAX_BYTES: usize = 512 * 1024;

/// The largest value kvmap writes by default: one value must fit a
/// transaction body after base64 (4/3) and JSON framing, so 512 KiB × 3/4
/// minus headroom. Consul's own per-value limit is 512 KiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 381 * 1024;

/// Consul 1.8's limit of operations in one transaction.
pub const MAX_TXN_OPS: usize = 64;

/// Settings of a [`ConsulStore`](crate::ConsulStore).
///
/// Build with [`ConsulConfig::new`] and the `with_*` setters, or
/// deserialize it (every field but `addrs` has a default). `Debug` and
/// `Serialize` never print the token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// Agent HTTP addresses, `http://host:port` or `https://host:port`.
    /// Requests go to the first that answers; on a connection error
    /// (nothing was sent) the next one is tried.
    pub addrs: Vec<String>,
    /// ACL token (sent as `X-Consul-Token`); `None`: the agent's default.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// Datacenter (`?dc=`); `None`: the agent's own.
    pub datacenter: Option<String>,
    /// Consul key prefix under which every kvmap key is stored, e.g.
    /// `apps/web/` (empty: keys are stored as they are). Must be empty or
    /// end with `/`.
    pub key_prefix: String,
    /// PEM file of the CA that signed the agents' certificates (for
    /// `https://`); `None`: the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM text of the CA (takes precedence over `tls_ca_file`).
    pub tls_ca_pem: Option<String>,
    /// Timeout of one request (connect + answer), not of blocking queries.
    pub request_timeout: Duration,
    /// Timeout of connecting to an agent.
    pub connect_timeout: Duration,
    /// How long one blocking query of a watch waits on the server (`?wait=`).
    pub watch_wait: Duration,
    /// Events buffered per watcher before it is resynced.
    pub watch_buffer: usize,
    /// How often the reaper deletes expired entries on the server
    /// (`None`: never; expired entries are still invisible to kvmap).
    pub reaper_interval: Option<Duration>,
    /// The largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// The agents' `txn_max_req_len`, to refuse a batch the agent would
    /// reject before sending it.
    pub txn_max_bytes: usize,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            addrs: vec!["http://127.0.0.1:8500".to_owned()],
            token: None,
            datacenter: None,
            key_prefix: String::new(),
            tls_ca_file: None,
            tls_ca_pem: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            watch_wait: Duration::from_secs(30),
            watch_buffer: 1024,
            reaper_interval: Some(Duration::from_secs(1)),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            txn_max_bytes: DEFAULT_TXN_MAX_BYTES,
        }
    }
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|a| kvmap_core::redact_url(a))
            .collect();
        f.debug_struct("ConsulConfig")
            .field("addrs", &addrs)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("key_prefix", &self.key_prefix)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|_| "<pem>"))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("watch_wait", &self.watch_wait)
            .field("watch_buffer", &self.watch_buffer)
            .field("reaper_interval", &self.reaper_interval)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("txn_max_bytes", &self.txn_max_bytes)
            .finish()
    }
}

impl ConsulConfig {
    /// One agent at `addr` (`http://host:port` or `https://host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addrs: vec![addr.into()],
            ..Self::default()
        }
    }

    /// Several agents (e.g. the servers of a cluster), tried in order.
    pub fn with_addrs(mut self, addrs: Vec<String>) -> Self {
        self.addrs = addrs;
        self
    }

    /// The ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The datacenter.
    pub fn with_datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// The Consul key prefix of every kvmap key (empty or ending with `/`).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The CA certificate (PEM text) for `https://` agents.
    pub fn with_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// The CA certificate file (PEM) for `https://` agents.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// The timeout of one request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one blocking query of a watch waits on the server.
    pub fn with_watch_wait(mut self, wait: Duration) -> Self {
        self.watch_wait = wait;
        self
    }

    /// Events buffered per watcher.
    pub fn with_watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events;
        self
    }

    /// How often expired entries are deleted on the server (`None`: never).
    pub fn with_reaper_interval(mut self, interval: Option<Duration>) -> Self {
        self.reaper_interval = interval;
        self
    }

    /// The largest value accepted.
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::new(ErrorKind::InvalidArgument)
                .with_backend("consul")
                .with_op(kvmap_core::Op::Open)
                .with_detail(why))
        };
        if self.addrs.is_empty() {
            return bad("no consul agent address given".to_owned());
        }
        for a in &self.addrs {
            match url::Url::parse(a) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    if !u.username().is_empty() || u.password().is_some() {
                        return bad(format!(
                            "consul address {} must not carry credentials; use the token setting",
                            kvmap_core::redact_url(a)
                        ));
                    }
                }
                _ => {
                    return bad(format!(
                        "consul address {} is not an http:// or https:// url with a host",
                        kvmap_core::redact_url(a)
                    ))
                }
            }
        }
        if !self.key_prefix.is_empty() {
            if !self.key_prefix.ends_with('/') {
                return bad(format!(
                    "key prefix {:?} must end with '/'",
                    self.key_prefix
                ));
            }
            kvmap_core::backend::check_prefix(&self.key_prefix)?;
        }
        if let Some(t) = &self.token {
            if t.is_empty() || t.chars().any(|c| c.is_control()) {
                return bad("token is empty or holds control characters".to_owned());
            }
        }
        for (name, d) in [
            ("request timeout", self.request_timeout),
            ("connect timeout", self.connect_timeout),
            ("watch wait", self.watch_wait),
        ] {
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return bad(format!("{name} must be between 1ms and 24h, got {d:?}"));
            }
        }
        if self.watch_wait > Duration::from_secs(600) {
            return bad("watch wait above consul's maximum of 10 minutes".to_owned());
        }
        if self.watch_buffer == 0 || self.watch_buffer > 1 << 20 {
            return bad(format!(
                "watch buffer must be between 1 and 1048576, got {}",
                self.watch_buffer
            ));
        }
        if let Some(i) = self.reaper_interval {
            if i.is_zero() {
                return bad("reaper interval must not be zero".to_owned());
            }
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 512 * 1024 {
            return bad(format!(
                "max value bytes must be between 1 and 524288 (consul's limit), got {}",
                self.max_value_bytes
            ));
        }
        if self.txn_max_bytes < 1024 {
            return bad("txn max bytes below 1 KiB".to_owned());
        }
        Ok(())
    }
}
