//! [`RedisStore`], the [`KvStore`] implementation.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::backend::Scope;
use kvmap_core::{
    Batch, BatchOutcome, Capabilities, Consistency, Context, DeleteOptions, Entry, ErrorKind, Key,
    KvStore, ListPage, ListRequest, LockGuard, LockOptions, Op, PutMode, PutOptions, Result,
    RetryClass, Revision, Support, WatchRequest, WatchStream,
};
use redis::{FromRedisValue, Script, ServerErrorKind as SK, Value};

use crate::client::RedisClient;
use crate::config::RedisConfig;
use crate::error::{map, own, BACKEND};
use crate::scripts::{self, DeleteReply, PutReply, FIELDS, META_FIELDS};
use crate::wid::{self, WriteId};

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
    /// The event channel (empty: no events): the channel itself on a
    /// standalone server; in a cluster the name after each slot's hash tag
    /// (see [`Inner::event_target`]).
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
            format!("{}__kvmap_events", config.key_prefix)
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

    /// How many times the store replaced its cluster connection because
    /// it stopped answering (consecutive connection failures and no
    /// answer for 2 s); always 0 on a standalone server. For diagnostics.
    pub fn connection_rebuilds(&self) -> u64 {
        self.inner.client.rebuilds()
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
        format!("{}{}", self.cfg.key_prefix, key)
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

    /// `EVALSHA` of `script` on the key (and its write record, if any)
    /// with the write id as the first argument; also returns the server
    /// key.
    fn write_cmd(
        &self,
        script: &Script,
        key: &Key,
        op: Op,
        wid: &WriteId,
    ) -> Result<(redis::Cmd, String)> {
        let skey = self.server_key(key.as_str());
        let record = wid.record_key(&self.cfg.key_prefix, &skey, op, key.as_str())?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash());
        match record {
            Some(t) => cmd.arg(2).arg(&skey).arg(t),
            None => cmd.arg(1).arg(&skey),
        };
        cmd.arg(wid.as_str());
        Ok((cmd, skey))
    }

    /// The channel and publish command of `skey`'s change events (the last
    /// two script arguments): in a cluster the key's own shard channel
    /// `{T}<key_prefix>__kvmap_events` (`T` a hash tag of the key's slot)
    /// with `SPUBLISH`, so the event is delivered by the key's master and
    /// never crosses the cluster bus; on a standalone server the one
    /// channel with `PUBLISH`. An empty channel when events are off.
    pub(crate) fn event_target(
        &self,
        skey: &str,
        op: Op,
        key: &str,
    ) -> Result<(String, &'static str)> {
        if self.channel.is_empty() {
            return Ok((String::new(), "PUBLISH"));
        }
        if !self.client.is_cluster() {
            return Ok((self.channel.clone(), "PUBLISH"));
        }
        let tag = crate::slots::slot_tag(skey, op, key)?;
        Ok((shard_channel(tag, &self.channel), "SPUBLISH"))
    }

    /// The put script call (also for pipelines).
    pub(crate) fn put_cmd(
        &self,
        key: &Key,
        value: &Bytes,
        options: &PutOptions,
        op: Op,
        wid: &WriteId,
    ) -> Result<redis::Cmd> {
        let (mode, expected, ttl_ms) = Self::put_args(options);
        let (mut cmd, skey) = self.write_cmd(&self.put, key, op, wid)?;
        let (channel, publish) = self.event_target(&skey, op, key.as_str())?;
        cmd.arg(value.as_ref())
            .arg(mode)
            .arg(expected)
            .arg(ttl_ms)
            .arg(channel)
            .arg(publish);
        Ok(cmd)
    }

    /// The delete script call (also for pipelines).
    pub(crate) fn delete_cmd(
        &self,
        key: &Key,
        options: &DeleteOptions,
        op: Op,
        wid: &WriteId,
    ) -> Result<redis::Cmd> {
        let expected = options
            .if_revision
            .map(|r| r.to_string())
            .unwrap_or_default();
        let (mut cmd, skey) = self.write_cmd(&self.delete, key, op, wid)?;
        let (channel, publish) = self.event_target(&skey, op, key.as_str())?;
        cmd.arg(expected).arg(channel).arg(publish);
        Ok(cmd)
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

    /// Runs one write script call `cmd` (of the script with source `code`) on the key's master;
    /// with `wait` in durable-write mode, `WAIT` follows in the same
    /// pipeline on the same connection (and is resent with it).
    ///
    /// A reply lost to a dropped connection or a timeout is resent with
    /// the same write id (at most [`wid::RESENDS`] times), which the
    /// script recognises; `NOSCRIPT` loads the script on that master and
    /// sends again. Returns the script's reply and, in durable mode, how
    /// many replicas the `WAIT` saw (checked by the caller only for an
    /// applied write: a refused one wrote nothing to replicate).
    pub(crate) async fn run_write(
        &self,
        code: &str,
        cmd: &redis::Cmd,
        key: &Key,
        op: Op,
        wait: bool,
    ) -> Result<(Value, Option<i64>)> {
        let skey = self.server_key(key.as_str());
        let durable = self.cfg.durable_writes.filter(|_| wait);
        let mut resends = 0;
        // A failover or a slot move can put the key on a master whose
        // script cache lacks the script (the cache is not replicated), so
        // it may need loading more than once.
        let mut loads = 0;
        loop {
            let sent = match durable {
                None => self.client.query::<Value>(cmd).await.map(|v| (v, None)),
                Some(d) => {
                    let mut pipe = redis::pipe();
                    pipe.add_command(cmd.clone());
                    pipe.add_command(crate::client::wait_cmd(d.replicas, d.timeout));
                    self.client
                        .pipeline_on_key(&pipe, &skey)
                        .await
                        .and_then(|mut v| {
                            // A pipeline's per-command errors may come back
                            // as values: they are errors all the same.
                            let acked = match v.pop() {
                                Some(Value::ServerError(e)) => return Err(e.into()),
                                Some(w) => Some(i64::from_redis_value(w)?),
                                None => None,
                            };
                            match v.pop() {
                                Some(Value::ServerError(e)) => Err(e.into()),
                                Some(reply) => Ok((reply, acked)),
                                None => Ok((Value::Nil, acked)),
                            }
                        })
                }
            };
            match sent {
                Ok(sent) => return Ok(sent),
                Err(e) if e.kind() == redis::ErrorKind::Server(SK::NoScript) && loads < 3 => {
                    loads += 1;
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(code);
                    self.client
                        .query_on_key::<String>(&load, &skey)
                        .await
                        .map_err(|e| map(e, op, Some(key.as_str())))?;
                }
                Err(e) => {
                    let mut err = map(e, op, Some(key.as_str()));
                    // A "nothing was sent" error speaks only of the last
                    // attempt. Earlier ones may have run: the cluster
                    // client resends by itself after a lost connection,
                    // and a resend of ours follows a lost reply. With the
                    // write id a resend is harmless, so such a write is
                    // resent too, and reported outcome-unknown at the end.
                    let earlier = self.client.is_cluster() || resends > 0;
                    if earlier && err.retry_class() == RetryClass::Safe {
                        let detail = format!(
                            "{}; an earlier attempt may have been applied",
                            err.detail().unwrap_or("failed")
                        );
                        err = err
                            .with_retry(RetryClass::OutcomeUnknown)
                            .with_detail(detail);
                    }
                    if err.retry_class() != RetryClass::OutcomeUnknown || resends >= wid::RESENDS {
                        return Err(err);
                    }
                    tokio::time::sleep(wid::resend_pause(resends)).await;
                    resends += 1;
                    tracing::debug!(op = ?op, resends, "redis write reply lost; resending with its write id");
                }
            }
        }
    }

    pub(crate) async fn put_one(
        &self,
        key: &Key,
        value: &Bytes,
        options: &PutOptions,
        op: Op,
        wait: bool,
        wid: &WriteId,
    ) -> Result<Revision> {
        let cmd = self.put_cmd(key, value, options, op, wid)?;
        let (v, acked) = self.run_write(scripts::PUT, &cmd, key, op, wait).await?;
        let rev = Self::put_outcome(&v, key, op)?;
        self.check_applied(acked, op, key.as_str())?;
        Ok(rev)
    }

    pub(crate) async fn delete_one(
        &self,
        key: &Key,
        options: &DeleteOptions,
        op: Op,
        wait: bool,
        wid: &WriteId,
    ) -> Result<bool> {
        let cmd = self.delete_cmd(key, options, op, wid)?;
        let (v, acked) = self.run_write(scripts::DELETE, &cmd, key, op, wait).await?;
        let deleted = Self::delete_outcome(&v, key, op)?;
        if deleted {
            self.check_applied(acked, op, key.as_str())?;
        }
        Ok(deleted)
    }

    /// In durable mode, the error of an applied write whose `WAIT` saw
    /// `acked` replicas, too few.
    pub(crate) fn check_applied(&self, acked: Option<i64>, op: Op, key: &str) -> Result<()> {
        match (self.cfg.durable_writes, acked) {
            (Some(d), Some(acked)) => self.check_acked(acked, d, op, key),
            _ => Ok(()),
        }
    }

    /// The error of a durable write whose `WAIT` saw too few replicas.
    pub(crate) fn check_acked(
        &self,
        acked: i64,
        d: crate::config::DurableWrites,
        op: Op,
        key: &str,
    ) -> Result<()> {
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

    /// The error of an applied write whose `WAIT` failed (e.g. refused
    /// by a node demoted to replica during a failover).
    pub(crate) fn wait_failed(&self, op: Op, key: &str) -> kvmap_core::Error {
        own(
            ErrorKind::Unavailable,
            op,
            Some(key),
            "durable write: applied on the master, the wait for its replicas failed",
        )
        .with_retry(RetryClass::OutcomeUnknown)
    }
}

/// `Consistency::Strong` is refused: a Redis master's reads are not
/// linearizable across a failover (asynchronous replication), so the
/// capability is declared unsupported rather than claimed.
fn refuse_strong(ctx: &Context, op: Op, key: Option<&str>) -> Result<()> {
    if ctx.consistency() == Consistency::Strong {
        return Err(own(
            ErrorKind::Unsupported {
                capability: kvmap_core::Capability::StrongRead,
            },
            op,
            key,
            "redis replicates asynchronously, so no read is linearizable across a failover; Consistency::Default reads the master",
        ));
    }
    Ok(())
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
        // Lock keys live outside the key prefix; an empty one has no outside.
        let lock = if self.inner.cfg.key_prefix.is_empty() {
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
            .with(kvmap_core::Capability::StrongRead, Support::Unsupported)
            .with(kvmap_core::Capability::Lock, lock)
            .with_limits(self.inner.cfg.limits)
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.inner.cfg.limits.check_key(key)?;
        refuse_strong(ctx, Op::Get, Some(key.as_str()))?;
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
            self.inner
                .put_one(key, &value, &options, Op::Put, true, &WriteId::new()),
        )
        .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.inner.cfg.limits.check_key(key)?;
        let scope = self.scope(Op::Delete, Some(key.as_str()));
        ctx.run(
            scope,
            self.inner
                .delete_one(key, &options, Op::Delete, true, &WriteId::new()),
        )
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        request.validate()?;
        refuse_strong(ctx, Op::List, None)?;
        // A page is many round trips (a `SCAN` walk and a topology read
        // per master, the reads of the page), each bounded by `op_timeout`
        // on its own connection; the context's deadline bounds the whole.
        let scope = Scope {
            timeout: None,
            ..self.scope(Op::List, Some(request.range.start()))
        };
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
        refuse_strong(ctx, Op::GetMany, None)?;
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

/// The shard channel of the slot whose hash tag is `tag`.
pub(crate) fn shard_channel(tag: u32, base: &str) -> String {
    format!("{{{tag}}}{base}")
}
