//! [`RedisStore`], the [`KvStore`] implementation.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::{
    Batch, BatchOutcome, Capabilities, Consistency, Context, DeleteOptions, Entry, ErrorKind, Key,
    KvStore, ListPage, ListRequest, LockGuard, LockOptions, Op, PutMode, PutOptions, Result,
    RetryClass, Revision, Scope, Support, WatchRequest, WatchStream,
};
use redis::cluster_routing::{Route, SlotAddr};
use redis::{Script, Value};

use crate::client::RedisClient;
use crate::config::RedisConfig;
use crate::error::{map, own, BACKEND};
use crate::scripts::{self, DeleteReply, PutReply, FIELDS, META_FIELDS};

/// How many requests of one batch are in flight at once (they are
/// pipelined on each node's connection).
const BATCH_IN_FLIGHT: usize = 1024;

/// A kvmap store on Redis (standalone or Cluster). Cheap to clone.
///
/// See the crate docs for the data layout, capabilities and costs.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: RedisClient,
    pub(crate) cfg: RedisConfig,
    put: Script,
    delete: Script,
    /// The channel writes publish change events on (empty: none).
    pub(crate) channel: String,
    /// The slot map for which keyspace notifications were last checked.
    pub(crate) notifications_verified: tokio::sync::Mutex<Option<Vec<crate::client::SlotRange>>>,
    /// Replica freshness for stale reads.
    pub(crate) stale: crate::stale::StaleState,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("client", &self.inner.client)
            .field("config", &self.inner.cfg)
            .finish()
    }
}

impl RedisStore {
    /// Connects to the servers of `config` and checks the credentials.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad configuration; `Unauthenticated` for
    /// wrong credentials or an untrusted TLS certificate; `Unavailable` if
    /// no server answers.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let client = RedisClient::connect(&config).await?;
        let channel = if config.watch_events {
            format!("{}__kvmap_events", config.namespace)
        } else {
            String::new()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                cfg: config,
                put: Script::new(scripts::PUT),
                delete: Script::new(scripts::DELETE),
                channel,
                notifications_verified: tokio::sync::Mutex::new(None),
                stale: crate::stale::StaleState::default(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    pub(crate) fn scope<'a>(&self, op: Op, key: Option<&'a str>) -> Scope<'a> {
        Scope {
            backend: BACKEND,
            op,
            key,
            timeout: Some(self.inner.cfg.op_timeout),
        }
    }

    /// The batch scope: a batch may take many round trips, so its timeout
    /// grows with the number of operations.
    fn batch_scope(&self, op: Op, n: usize) -> Scope<'static> {
        let rounds = u32::try_from(n / BATCH_IN_FLIGHT + 1).unwrap_or(u32::MAX);
        Scope {
            backend: BACKEND,
            op,
            key: None,
            timeout: Some(self.inner.cfg.op_timeout.saturating_mul(rounds)),
        }
    }
}

impl Inner {
    pub(crate) fn server_key(&self, key: &str) -> String {
        format!("{}{}", self.cfg.namespace, key)
    }

    /// The `HMGET` of a read.
    pub(crate) fn read_cmd(&self, key: &Key, keys_only: bool) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.server_key(key.as_str()));
        if keys_only {
            cmd.arg(&META_FIELDS[..]);
        } else {
            cmd.arg(&FIELDS[..]);
        }
        cmd
    }

    /// Reads one key from the master.
    pub(crate) async fn read(&self, key: &Key, keys_only: bool, op: Op) -> Result<Option<Entry>> {
        let v: Value = self
            .client
            .query(&self.read_cmd(key, keys_only))
            .await
            .map_err(|e| map(e, op, Some(key.as_str())))?;
        scripts::entry_from_fields(key, &v, keys_only, op)
    }

    fn put_args(options: &PutOptions) -> (&'static str, String, u64) {
        let (mode, expected) = match options.mode {
            PutMode::Overwrite => ("o", String::new()),
            PutMode::Create => ("c", String::new()),
            PutMode::Update(r) => ("u", r.to_string()),
        };
        let ttl_ms = options.ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        (mode, expected, ttl_ms)
    }

    /// The put script as a plain `EVALSHA` (for pipelines).
    pub(crate) fn put_cmd(&self, key: &Key, value: &Bytes, options: &PutOptions) -> redis::Cmd {
        let (mode, expected, ttl_ms) = Self::put_args(options);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.put.get_hash())
            .arg(1)
            .arg(self.server_key(key.as_str()))
            .arg(value.as_ref())
            .arg(mode)
            .arg(expected)
            .arg(ttl_ms)
            .arg(&self.channel);
        cmd
    }

    /// The delete script as a plain `EVALSHA` (for pipelines).
    pub(crate) fn delete_cmd(&self, key: &Key, options: &DeleteOptions) -> redis::Cmd {
        let expected = options
            .if_revision
            .map(|r| r.to_string())
            .unwrap_or_default();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.delete.get_hash())
            .arg(1)
            .arg(self.server_key(key.as_str()))
            .arg(expected)
            .arg(&self.channel);
        cmd
    }

    pub(crate) fn put_outcome(v: &Value, key: &Key, op: Op) -> Result<Revision> {
        match scripts::put_reply(v, key.as_str())? {
            PutReply::Ok(r) => Ok(r),
            PutReply::Exists => Err(own(
                ErrorKind::AlreadyExists,
                op,
                Some(key.as_str()),
                "create-only put",
            )),
            PutReply::Conflict(current) => Err(own(
                ErrorKind::Conflict { current },
                op,
                Some(key.as_str()),
                "update-if-revision put",
            )),
        }
    }

    pub(crate) fn delete_outcome(v: &Value, key: &Key, op: Op) -> Result<bool> {
        match scripts::delete_reply(v, key.as_str())? {
            DeleteReply::Deleted => Ok(true),
            DeleteReply::Absent => Ok(false),
            DeleteReply::Conflict(current) => Err(own(
                ErrorKind::Conflict { current },
                op,
                Some(key.as_str()),
                "delete-if-revision",
            )),
        }
    }

    pub(crate) async fn put_one(
        &self,
        key: &Key,
        value: &Bytes,
        options: &PutOptions,
        op: Op,
        wait: bool,
    ) -> Result<Revision> {
        let skey = self.server_key(key.as_str());
        let (mode, expected, ttl_ms) = Self::put_args(options);
        let mut inv = self.put.key(&skey);
        inv.arg(value.as_ref())
            .arg(mode)
            .arg(expected)
            .arg(ttl_ms)
            .arg(&self.channel);
        let v = self
            .client
            .invoke(&inv)
            .await
            .map_err(|e| map(e, op, Some(key.as_str())))?;
        let rev = Self::put_outcome(&v, key, op)?;
        if wait {
            self.durable(Some(&skey), op, key.as_str()).await?;
        }
        Ok(rev)
    }

    pub(crate) async fn delete_one(
        &self,
        key: &Key,
        options: &DeleteOptions,
        op: Op,
        wait: bool,
    ) -> Result<bool> {
        let skey = self.server_key(key.as_str());
        let expected = options
            .if_revision
            .map(|r| r.to_string())
            .unwrap_or_default();
        let mut inv = self.delete.key(&skey);
        inv.arg(expected).arg(&self.channel);
        let v = self
            .client
            .invoke(&inv)
            .await
            .map_err(|e| map(e, op, Some(key.as_str())))?;
        let deleted = Self::delete_outcome(&v, key, op)?;
        if deleted && wait {
            self.durable(Some(&skey), op, key.as_str()).await?;
        }
        Ok(deleted)
    }

    /// In durable-write mode, waits for the replicas of the master that
    /// took the write (`skey: None`: of every master).
    pub(crate) async fn durable(&self, skey: Option<&str>, op: Op, key: &str) -> Result<()> {
        let Some(d) = self.cfg.durable_writes else {
            return Ok(());
        };
        let route = skey.map(|k| Route::with_key(k.as_bytes(), SlotAddr::Master));
        let acked = self
            .client
            .wait(route, d.replicas, d.timeout)
            .await
            .map_err(|e| {
                // The write was applied; only its replication is unknown.
                // A `WAIT` refused by a node demoted to replica during a
                // failover ("ERR WAIT cannot be used with replica
                // instances") is unavailability, not a bug.
                let err = map(e, op, Some(key));
                let err = if err.kind() == ErrorKind::Internal {
                    own(
                        ErrorKind::Unavailable,
                        op,
                        Some(key),
                        "durable write: wait failed",
                    )
                    .with_source(err)
                } else {
                    err
                };
                err.with_retry(RetryClass::OutcomeUnknown)
            })?;
        if acked < i64::from(d.replicas) {
            return Err(own(
                ErrorKind::Timeout,
                op,
                Some(key),
                format!(
                    "durable write: {acked} of {} replicas acknowledged within {:?} (applied on the master, may be lost on failover)",
                    d.replicas, d.timeout
                ),
            )
            .with_retry(RetryClass::OutcomeUnknown));
        }
        Ok(())
    }
}

fn check_put(
    limits: &kvmap_core::Limits,
    key: &Key,
    value: &Bytes,
    options: &PutOptions,
) -> Result<()> {
    limits.check_put(key, value)?;
    options.validate()
}

#[async_trait]
impl KvStore for RedisStore {
    fn name(&self) -> &str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let watch = if self.inner.cfg.watch_events {
            Support::Emulated
        } else {
            Support::Unsupported
        };
        // Lock keys live outside the namespace; an empty one has no outside.
        let lock = if self.inner.cfg.namespace.is_empty() {
            Support::Unsupported
        } else {
            Support::Native
        };
        Capabilities::all_native()
            .with(kvmap_core::Capability::OrderedList, Support::Emulated)
            .with(kvmap_core::Capability::Watch, watch)
            .with(kvmap_core::Capability::WatchResume, Support::Unsupported)
            .with(kvmap_core::Capability::AtomicBatch, Support::Unsupported)
            .with(kvmap_core::Capability::Cas, Support::Emulated)
            .with(kvmap_core::Capability::StaleRead, Support::Emulated)
            .with(kvmap_core::Capability::Lock, lock)
            .with_limits(self.inner.cfg.limits)
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.inner.cfg.limits.check_key(key)?;
        let scope = self.scope(Op::Get, Some(key.as_str()));
        match ctx.consistency() {
            Consistency::Stale { max_staleness } => {
                ctx.run(scope, crate::stale::read(&self.inner, key, max_staleness))
                    .await
            }
            _ => ctx.run(scope, self.inner.read(key, false, Op::Get)).await,
        }
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        check_put(&self.inner.cfg.limits, key, &value, &options)?;
        let scope = self.scope(Op::Put, Some(key.as_str()));
        ctx.run(
            scope,
            self.inner.put_one(key, &value, &options, Op::Put, true),
        )
        .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.inner.cfg.limits.check_key(key)?;
        let scope = self.scope(Op::Delete, Some(key.as_str()));
        ctx.run(
            scope,
            self.inner.delete_one(key, &options, Op::Delete, true),
        )
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        request.validate()?;
        let scope = self.scope(Op::List, Some(request.range.start()));
        ctx.run(scope, crate::list::list_page(self.inner.clone(), request))
            .await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        crate::watch::watch(self, ctx, request).await
    }

    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        self.inner.cfg.limits.check_key(key)?;
        let driver = crate::lock::RedisLocks::new(self.inner.clone(), key)?;
        kvmap_core::lock::acquire(Arc::new(driver), ctx, key, options).await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.inner.cfg.limits.check_keys(keys)?;
        let marker = ctx.fresh_read_staleness();
        let inner = self.inner.clone();
        let keys = keys.to_vec();
        ctx.run(self.batch_scope(Op::GetMany, keys.len()), async move {
            let out = crate::batch::get_many(&inner, keys).await;
            Ok(out
                .into_iter()
                .map(|r| r.map(|e| e.map(|e| e.with_staleness(marker))))
                .collect())
        })
        .await
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        batch.validate(&self.inner.cfg.limits)?;
        let inner = self.inner.clone();
        let n = batch.len();
        ctx.run(self.batch_scope(Op::Apply, n), async move {
            Ok(crate::batch::apply(&inner, batch).await)
        })
        .await
    }
}
