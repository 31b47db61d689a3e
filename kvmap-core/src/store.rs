//! The [`KvStore`] contract and its conveniences in [`KvStoreExt`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::capability::Capabilities;
use crate::capability::Capability;
use crate::context::Context;
use crate::entry::{
    Batch, BatchOp, BatchOutcome, DeleteOptions, Entry, ListRequest, PutOptions, Revision,
};
use crate::error::{Error, ErrorKind, Op, Result};
use crate::key::Key;
use crate::lock::{LockGuard, LockOptions};
use crate::namespace::Namespaced;
use crate::typed::{Codec, Json, Typed};
use crate::watch::{WatchRequest, WatchStream};

/// An async key-value map with revisions, compare-and-swap, TTL, ordered
/// listing, watches and batches.
///
/// Object safe: use it as `Arc<dyn KvStore>`. Implementations are cheap to
/// share across tasks (`Send + Sync`).
///
/// # Errors
/// Every method returns the one [`Error`](crate::Error) type. Input is
/// checked before any I/O: keys against the store's
/// [`Limits`](crate::Limits) ([`ErrorKind::InvalidKey`]), values against
/// the size limit ([`ErrorKind::ValueTooLarge`]); a bad call changes
/// nothing. A capability the store lacks yields
/// [`ErrorKind::Unsupported`], never a silent no-op.
///
/// # Cancellation
/// Every method honours the [`Context`]: an already expired or cancelled
/// context fails with [`ErrorKind::DeadlineExceeded`] /
/// [`ErrorKind::Cancelled`] and performs no side effect. Cancellation
/// during a write, or dropping the returned future, may leave the write
/// applied or not: such errors carry
/// [`RetryClass::OutcomeUnknown`](crate::RetryClass::OutcomeUnknown). A
/// single-key write is never applied partially.
///
/// # Consistency
/// Reads follow [`Context::consistency`]. `Strong` is linearizable where
/// the store declares `strong_read`; `Stale { max_staleness }` may be
/// served by a replica lagging at most that much, else
/// [`ErrorKind::StaleTooOld`]; `Default` is the backend's documented
/// default. Writes are always made on the primary.
#[async_trait]
pub trait KvStore: Send + Sync + fmt::Debug + 'static {
    /// A short name of the backend (`"memory"`, `"rocksdb"`, `"redis"`,
    /// `"consul"`, or a composite's name), used in errors and metrics.
    fn name(&self) -> &str;

    /// What the store can do and its limits.
    fn capabilities(&self) -> Capabilities;

    /// Reads a key. Returns `None` if it is absent or expired.
    ///
    /// # Errors
    /// Key rules; context; `StaleTooOld` / `Unsupported` for a consistency
    /// the store cannot give; backend failures.
    ///
    /// # Cancellation
    /// Safe to cancel: a read has no side effect.
    ///
    /// # Consistency
    /// As the context asks (see the trait docs).
    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>>;

    /// Writes a value and returns the new revision.
    ///
    /// `options.mode` makes the write conditional (create-only,
    /// update-if-revision); `options.ttl` sets an expiry (a put without TTL
    /// clears an earlier one). Value and revision (and TTL) are written
    /// atomically.
    ///
    /// # Errors
    /// `InvalidKey`, `ValueTooLarge`, `InvalidArgument` (zero TTL);
    /// `AlreadyExists` / `Conflict { current }` when the condition fails
    /// (nothing written); `Unsupported` for CAS or TTL on a store without
    /// them; context; backend failures (`Timeout` after sending is
    /// outcome-unknown).
    ///
    /// # Cancellation
    /// Cancelled before it starts: nothing written. Cancelled while in
    /// flight: written or not, never partially.
    ///
    /// # Consistency
    /// Conditions are checked against the latest state on the primary.
    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision>;

    /// Deletes a key. Returns whether it existed.
    ///
    /// # Errors
    /// `InvalidKey`; `Conflict { current }` when `options.if_revision`
    /// does not match (nothing deleted); context; backend failures.
    ///
    /// # Cancellation
    /// As [`KvStore::put`].
    ///
    /// # Consistency
    /// As [`KvStore::put`].
    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool>;

    /// Lists a page of entries of a prefix or range in ascending byte order
    /// of the keys.
    ///
    /// Pagination: pass the returned cursor to get the next page. Keys
    /// written or deleted between pages appear or vanish according to
    /// their position relative to the cursor; no key present through the
    /// whole iteration is skipped or returned twice.
    ///
    /// # Errors
    /// `InvalidKey` / `InvalidArgument` for a bad range, limit or cursor;
    /// context; backend failures.
    ///
    /// # Cancellation
    /// Safe to cancel.
    ///
    /// # Consistency
    /// Each page is read as the context asks; pages are not a snapshot.
    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<crate::ListPage>;

    /// Watches a key or prefix. See [`watch`](crate::watch) for the stream
    /// contract (ordering, resume, resync, bounded memory).
    ///
    /// # Errors
    /// `Unsupported` if the store cannot watch (or resume, for a start
    /// revision); `Compacted` if the start revision is gone; context.
    /// Later errors arrive in the stream.
    ///
    /// # Cancellation
    /// The context stays attached to the stream: cancelling it ends the
    /// stream with `Cancelled`. Dropping the stream releases it.
    ///
    /// # Consistency
    /// Events of a key arrive in revision order.
    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream>;

    /// Reads several keys. Returns one result per key, in order, so a
    /// partial failure (one node down) is reported per key.
    ///
    /// The default reads the keys one by one; backends override it with
    /// pipelined or multi-get reads.
    ///
    /// # Errors
    /// The outer error is for the call as a whole (bad key, too many keys,
    /// context); inner errors are per key.
    ///
    /// # Cancellation
    /// Safe to cancel.
    ///
    /// # Consistency
    /// Each key as [`KvStore::get`]; the reads are not a snapshot unless
    /// the backend docs say so.
    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.capabilities().limits.check_batch(keys.len())?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(ctx, key).await);
        }
        Ok(out)
    }

    /// Applies a batch of puts and deletes. Returns one outcome per
    /// operation, in order.
    ///
    /// Where the store declares `atomic_batch`, the batch is all or
    /// nothing: any failed condition fails the whole call with that error
    /// and nothing is written. Elsewhere each operation succeeds or fails
    /// on its own, reported per operation. The default applies the
    /// operations one by one (not atomic).
    ///
    /// # Errors
    /// Input errors of any operation fail the whole call before any I/O;
    /// context; backend failures.
    ///
    /// # Cancellation
    /// Cancelled in flight: some, all or none of a non-atomic batch may
    /// be applied; an atomic one is all or nothing.
    ///
    /// # Consistency
    /// As [`KvStore::put`].
    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        batch.validate(&self.capabilities().limits)?;
        let mut out = Vec::with_capacity(batch.len());
        for op in batch.ops {
            out.push(match op {
                BatchOp::Put {
                    key,
                    value,
                    options,
                } => self
                    .put(ctx, &key, value, options)
                    .await
                    .map(BatchOutcome::Put),
                BatchOp::Delete { key, options } => self
                    .delete(ctx, &key, options)
                    .await
                    .map(BatchOutcome::Deleted),
            });
        }
        Ok(out)
    }

    /// Acquires an exclusive lease on `key` with a fencing token. See
    /// [`lock`](crate::lock) for the guard's contract (renewal, lost
    /// signal, release on drop) and each backend's docs for its guarantee.
    ///
    /// Locks live in a space of their own: locking a key does not create,
    /// read or change the data entry of that key (backend docs say where
    /// the lease is stored).
    ///
    /// The default returns [`ErrorKind::Unsupported`].
    ///
    /// # Errors
    /// `Unsupported` where the store declares no `lock`; `InvalidKey`;
    /// `InvalidArgument` for a TTL outside the backend's range; `Locked`
    /// when `options.wait` runs out; `DeadlineExceeded` / `Cancelled`;
    /// backend failures (`Timeout` is outcome-unknown: a lease may have
    /// been taken and then expires by its TTL).
    ///
    /// # Cancellation
    /// Cancelled or timed out while waiting: no lease is left behind
    /// beyond, at worst, its TTL.
    ///
    /// # Consistency
    /// Mutual exclusion as the backend documents it (a Redis failover can
    /// break it; fencing tokens let resources reject the stale holder).
    async fn lock(&self, ctx: &Context, key: &Key, options: LockOptions) -> Result<LockGuard> {
        let _ = (ctx, options);
        Err(Error::new(ErrorKind::Unsupported {
            capability: Capability::Lock,
        })
        .in_context(self.name(), Op::Lock, Some(key.as_str())))
    }
}

/// Conveniences over any [`KvStore`], so implementors only write the
/// required methods.
#[async_trait]
pub trait KvStoreExt: KvStore {
    /// Unconditional put.
    async fn set(
        &self,
        ctx: &Context,
        key: &Key,
        value: impl Into<Bytes> + Send,
    ) -> Result<Revision> {
        self.put(ctx, key, value.into(), PutOptions::default())
            .await
    }

    /// Put with a TTL.
    async fn set_with_ttl(
        &self,
        ctx: &Context,
        key: &Key,
        value: impl Into<Bytes> + Send,
        ttl: Duration,
    ) -> Result<Revision> {
        self.put(ctx, key, value.into(), PutOptions::default().with_ttl(ttl))
            .await
    }

    /// Create-only put.
    async fn create(
        &self,
        ctx: &Context,
        key: &Key,
        value: impl Into<Bytes> + Send,
    ) -> Result<Revision> {
        self.put(ctx, key, value.into(), PutOptions::create()).await
    }

    /// Update-if-revision put.
    async fn update(
        &self,
        ctx: &Context,
        key: &Key,
        value: impl Into<Bytes> + Send,
        revision: Revision,
    ) -> Result<Revision> {
        self.put(ctx, key, value.into(), PutOptions::update(revision))
            .await
    }

    /// Unconditional delete.
    async fn remove(&self, ctx: &Context, key: &Key) -> Result<bool> {
        self.delete(ctx, key, DeleteOptions::default()).await
    }

    /// Follows cursors until the range is exhausted (or `max` entries).
    async fn list_all(
        &self,
        ctx: &Context,
        request: ListRequest,
        max: usize,
    ) -> Result<Vec<Entry>> {
        let mut request = request;
        let mut out = Vec::new();
        loop {
            let page = self.list(ctx, &request).await?;
            out.extend(page.entries);
            match page.cursor {
                Some(c) if out.len() < max => request.cursor = Some(c),
                _ => break,
            }
        }
        out.truncate(max);
        Ok(out)
    }

    /// Read-modify-write with compare-and-swap, retried on conflict up to
    /// `attempts` times. `f` gets the current value (`None` if absent) and
    /// returns the new one. Returns the written revision.
    ///
    /// # Errors
    /// The last `Conflict` / `AlreadyExists` after `attempts` tries, or any
    /// other error at once.
    async fn update_with<F>(
        &self,
        ctx: &Context,
        key: &Key,
        attempts: usize,
        f: F,
    ) -> Result<Revision>
    where
        F: Fn(Option<&Bytes>) -> Bytes + Send + Sync,
    {
        let mut last = None;
        for _ in 0..attempts.max(1) {
            let current = self.get(ctx, key).await?;
            let (value, options) = match &current {
                Some(e) => (f(Some(&e.value)), PutOptions::update(e.revision)),
                None => (f(None), PutOptions::create()),
            };
            match self.put(ctx, key, value, options).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_precondition_failed() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ErrorKind::Internal.into()))
    }
}

impl<S: KvStore + ?Sized> KvStoreExt for S {}

/// Wrapping conveniences that need an owned, shared store.
pub trait SharedStoreExt {
    /// Scopes the store to a namespace: every key is stored under
    /// `prefix` (which must end with `/`), and the prefix is invisible to
    /// the caller. Two namespaces never see each other's keys.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad prefix.
    fn namespaced(&self, prefix: &str) -> Result<Namespaced>;

    /// A typed view with the JSON codec.
    fn typed<T>(&self) -> Typed<T, Json>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync;

    /// A typed view with a chosen codec.
    fn typed_with<T, C: Codec<T>>(&self, codec: C) -> Typed<T, C>;
}

impl SharedStoreExt for Arc<dyn KvStore> {
    fn namespaced(&self, prefix: &str) -> Result<Namespaced> {
        Namespaced::new(self.clone(), prefix)
    }

    fn typed<T>(&self) -> Typed<T, Json>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync,
    {
        Typed::new(self.clone())
    }

    fn typed_with<T, C: Codec<T>>(&self, codec: C) -> Typed<T, C> {
        Typed::with_codec(self.clone(), codec)
    }
}
