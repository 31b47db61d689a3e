//! [`ConsulStore`], the [`KvStore`] implementation.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::backend::Scope;
use kvmap_core::{
    Batch, BatchOp, BatchOutcome, Capabilities, Context, DeleteOptions, Entry, ErrorKind, Key,
    KvStore, Limits, ListPage, ListRequest, LockGuard, LockOptions, Op, PutMode, PutOptions,
    Result, Revision, Support, WatchRequest, WatchStream,
};
use reqwest::Method;

use crate::batch::{TxnOp, TxnOutcome};
use crate::client::ConsulClient;
use crate::codec::{self, decode, RawKv};
use crate::config::{ConsulConfig, MAX_TXN_OPS};
use crate::error::{own, BACKEND};
use crate::reaper::Reaper;
use crate::watch::OwnFeed;

/// A kvmap store on Consul KV. Cheap to clone.
///
/// See the crate docs for the data layout, capabilities and costs.
#[derive(Clone)]
pub struct ConsulStore {
    pub(crate) inner: Arc<Inner>,
    /// The lock driver (sessions; see the crate docs, "Locks").
    pub(crate) locks: Arc<crate::lock::ConsulLocks>,
}

pub(crate) struct Inner {
    pub(crate) client: ConsulClient,
    pub(crate) cfg: ConsulConfig,
    /// This process's own writes, for its watchers.
    pub(crate) feed: OwnFeed,
    /// Expired entries to delete on the server.
    pub(crate) reaper: Reaper,
}

impl std::fmt::Debug for ConsulStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulStore")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl ConsulStore {
    /// Connects: checks the configuration, that the agent is a Consul
    /// agent with a known leader, and that the token may read the key
    /// prefix. Starts the reaper (if configured).
    ///
    /// # Errors
    /// `InvalidArgument` for a bad configuration; `Unauthenticated` for a
    /// missing, unknown or expired token or an untrusted certificate;
    /// `PermissionDenied` if the token may not read the prefix;
    /// `Unavailable` if no agent answers, the answer is not Consul's, or
    /// the cluster has no leader.
    pub async fn connect(config: ConsulConfig) -> Result<Self> {
        config.validate()?;
        let client = ConsulClient::new(&config)?;
        let inner = Arc::new(Inner {
            client,
            feed: OwnFeed::new(config.watch_buffer),
            reaper: Reaper::default(),
            cfg: config,
        });
        inner.probe().await?;
        if let Some(interval) = inner.cfg.reaper_interval {
            crate::reaper::spawn(Arc::downgrade(&inner), interval);
        }
        let locks = Arc::new(crate::lock::ConsulLocks::new(inner.clone()));
        Ok(Self { inner, locks })
    }

    /// The configuration.
    pub fn config(&self) -> &ConsulConfig {
        &self.inner.cfg
    }

    /// Deletes every expired entry under the key prefix now (one full
    /// scan), returning how many were deleted. The reaper does this on its
    /// own; this is for tools and tests.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn reap_now(&self) -> Result<usize> {
        self.inner.sweep().await?;
        Ok(self.inner.reap_due().await)
    }

    pub(crate) fn scope<'a>(&self, op: Op, key: Option<&'a str>) -> Scope<'a> {
        Scope::new(BACKEND, op)
            .timeout(Some(
                self.inner
                    .cfg
                    .request_timeout
                    .saturating_mul(if op.is_write() { 3 } else { 2 }),
            ))
            .key_opt(key)
    }
}

trait ScopeExt<'a> {
    fn key_opt(self, key: Option<&'a str>) -> Self;
}

impl<'a> ScopeExt<'a> for Scope<'a> {
    fn key_opt(self, key: Option<&'a str>) -> Self {
        match key {
            Some(k) => self.key(k),
            None => self,
        }
    }
}

impl Inner {
    /// The Consul key of a kvmap key.
    pub(crate) fn consul_key(&self, key: &str) -> String {
        format!("{}{}", self.cfg.key_prefix, key)
    }

    async fn probe(&self) -> Result<()> {
        let ans = self
            .client
            .send(
                Method::GET,
                "status/leader",
                &[],
                None,
                self.cfg.request_timeout,
                Op::Open,
                None,
            )
            .await?;
        let addr = self.client.current_addr().to_owned();
        let leader: String = serde_json::from_slice(&ans.body).map_err(|_| {
            own(
                ErrorKind::Unavailable,
                Op::Open,
                None,
                format!("{addr} did not answer /v1/status/leader like a consul agent"),
            )
        })?;
        if ans.status != 200 {
            return Err(own(
                ErrorKind::Unavailable,
                Op::Open,
                None,
                format!("{addr} answered {} to /v1/status/leader", ans.status),
            ));
        }
        if leader.is_empty() {
            return Err(own(
                ErrorKind::Unavailable,
                Op::Open,
                None,
                "the consul cluster has no leader",
            ));
        }
        // The token must be known and may read the prefix: a read of one
        // key answers 403 otherwise.
        let probe = format!("{}__kvmap_probe", self.cfg.key_prefix);
        self.client
            .send(
                Method::GET,
                &format!("kv/{}", codec::key_path(&probe)),
                &[],
                None,
                self.cfg.request_timeout,
                Op::Open,
                None,
            )
            .await?;
        Ok(())
    }

    /// Reads one key (expired entries as `None`).
    pub(crate) async fn read(&self, ctx: &Context, key: &Key, op: Op) -> Result<Option<Entry>> {
        let ck = self.consul_key(key.as_str());
        let raws: Vec<RawKv> = if codec::path_unsafe(&ck) {
            let TxnOutcome::Done(raws) = self
                .txn(ctx, &[TxnOp::GetTree(ck.clone())], op, Some(key.as_str()))
                .await?
            else {
                return Err(own(
                    ErrorKind::Internal,
                    op,
                    Some(key.as_str()),
                    "read txn rolled back",
                ));
            };
            raws.into_iter().filter(|r| r.key == ck).collect()
        } else {
            let ans = self
                .client
                .send(
                    Method::GET,
                    &format!("kv/{}", codec::key_path(&ck)),
                    &self.consistency_query(ctx),
                    None,
                    self.cfg.request_timeout,
                    op,
                    Some(key.as_str()),
                )
                .await?;
            self.check_fresh(
                ctx,
                ans.known_leader,
                ans.last_contact,
                op,
                Some(key.as_str()),
            )?;
            if ans.status == 404 {
                return Ok(None);
            }
            parse_kvs(&ans.body, op, Some(key.as_str()))?
        };
        let Some(raw) = raws.into_iter().find(|r| r.key == ck) else {
            return Ok(None);
        };
        let Some(d) = decode(raw, &self.cfg.key_prefix, false, SystemTime::now(), op)? else {
            return Ok(None);
        };
        if d.expired {
            self.reaper.note(&d.entry);
            return Ok(None);
        }
        Ok(Some(d.entry.with_staleness(self.staleness_marker(ctx))))
    }

    /// A put: a plain `set`, a `cas` on 0 for a create, or the planned
    /// path (pre-read and guarded cas) for an update and for a create over
    /// an expired entry.
    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        let ck = self.consul_key(key.as_str());
        let flags = crate::batch::ttl_flags(&options, key)?;
        let fast = match options.mode {
            PutMode::Overwrite => Some(TxnOp::Set {
                key: ck,
                value: value.clone(),
                flags,
            }),
            PutMode::Create => Some(TxnOp::Cas {
                key: ck,
                value: value.clone(),
                flags,
                index: 0,
            }),
            PutMode::Update(_) => None,
        };
        let op = BatchOp::Put {
            key: key.clone(),
            value,
            options,
        };
        if let Some(t) = fast {
            if let TxnOutcome::Done(results) =
                self.txn(ctx, &[t], Op::Put, Some(key.as_str())).await?
            {
                let rev = results.first().map(|r| r.modify_index).ok_or_else(|| {
                    own(
                        ErrorKind::Internal,
                        Op::Put,
                        Some(key.as_str()),
                        "consul txn returned no result for a set",
                    )
                })?;
                self.after_put(&op, rev, results.first());
                return Ok(rev);
            }
            // A create found the key: absent-but-expired is still a
            // create; the planned path decides.
        }
        match self
            .write_ops(ctx, std::slice::from_ref(&op), Op::Put)
            .await?
            .first()
        {
            Some(BatchOutcome::Put(rev)) => Ok(*rev),
            _ => Err(own(
                ErrorKind::Internal,
                Op::Put,
                Some(key.as_str()),
                "no put outcome",
            )),
        }
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        let op = BatchOp::Delete {
            key: key.clone(),
            options,
        };
        match self
            .write_ops(ctx, std::slice::from_ref(&op), Op::Delete)
            .await?
            .first()
        {
            Some(BatchOutcome::Deleted(existed)) => Ok(*existed),
            _ => Err(own(
                ErrorKind::Internal,
                Op::Delete,
                Some(key.as_str()),
                "no delete outcome",
            )),
        }
    }
}

/// Parses a KV read answer (a JSON array of entries).
pub(crate) fn parse_kvs(body: &[u8], op: Op, key: Option<&str>) -> Result<Vec<RawKv>> {
    serde_json::from_slice(body).map_err(|e| {
        own(
            ErrorKind::InvalidData,
            op,
            key,
            format!("consul kv answer is not the expected json: {e}"),
        )
    })
}

#[async_trait]
impl KvStore for ConsulStore {
    fn name(&self) -> &str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_native()
            .with(kvmap_core::Capability::Ttl, Support::Emulated)
            .with(kvmap_core::Capability::OrderedList, Support::Emulated)
            .with(kvmap_core::Capability::Watch, Support::Emulated)
            .with(kvmap_core::Capability::WatchResume, Support::Unsupported)
            .with(kvmap_core::Capability::Lock, Support::Native)
            .with_limits(Limits {
                max_key_bytes: 2048,
                max_value_bytes: self.inner.cfg.max_value_bytes,
                max_batch_ops: MAX_TXN_OPS,
            })
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.capabilities().limits.check_key(key)?;
        ctx.run(
            self.scope(Op::Get, Some(key.as_str())),
            self.inner.read(ctx, key, Op::Get),
        )
        .await
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        let scope = self.scope(Op::Put, Some(key.as_str()));
        self.capabilities()
            .limits
            .check_put(key, &value)
            .and_then(|()| options.validate())
            .and_then(|()| crate::batch::ttl_flags(&options, key).map(|_| ()))
            .map_err(|e| e.in_context(BACKEND, Op::Put, Some(key.as_str())))?;
        ctx.run(scope, self.inner.put(ctx, key, value, options))
            .await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        self.capabilities()
            .limits
            .check_key(key)
            .map_err(|e| e.in_context(BACKEND, Op::Delete, Some(key.as_str())))?;
        ctx.run(
            self.scope(Op::Delete, Some(key.as_str())),
            self.inner.delete(ctx, key, options),
        )
        .await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        request
            .validate()
            .map_err(|e| e.in_context(BACKEND, Op::List, None))?;
        ctx.run(self.scope(Op::List, None), self.inner.list(ctx, request))
            .await
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        request
            .validate()
            .map_err(|e| e.in_context(BACKEND, Op::Watch, None))?;
        if request.start_revision.is_some() {
            return Err(own(
                ErrorKind::Unsupported {
                    capability: kvmap_core::Capability::WatchResume,
                },
                Op::Watch,
                None,
                "consul keeps no change history to resume from; watch from now and resync from a list",
            ));
        }
        ctx.check(&self.scope(Op::Watch, None))?;
        crate::watch::start(self.inner.clone(), ctx.clone(), request).await
    }

    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        // The same key limits as data (the lock key is `<prefix>key/.lock`).
        self.capabilities()
            .limits
            .check_key(key)
            .map_err(|e| e.in_context(BACKEND, Op::Lock, Some(key.as_str())))?;
        kvmap_core::lock::acquire(self.locks.clone(), ctx, key, options).await
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        let limits = self.capabilities().limits;
        limits
            .check_batch(keys.len())
            .and_then(|()| limits.check_keys(keys))
            .map_err(|e| e.in_context(BACKEND, Op::GetMany, None))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        ctx.run(
            self.scope(Op::GetMany, None),
            self.inner.get_many_txn(ctx, keys),
        )
        .await
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        batch
            .validate(&self.capabilities().limits)
            .and_then(|()| {
                batch.ops.iter().try_for_each(|op| match op {
                    BatchOp::Put { key, options, .. } => {
                        crate::batch::ttl_flags(options, key).map(|_| ())
                    }
                    BatchOp::Delete { .. } => Ok(()),
                })
            })
            .map_err(|e| e.in_context(BACKEND, Op::Apply, None))?;
        ctx.run(
            self.scope(Op::Apply, None),
            crate::batch::apply(&self.inner, ctx, batch),
        )
        .await
    }
}
