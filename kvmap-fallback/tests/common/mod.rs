//! Test helpers: a switchable fault-injection layer over a real store.

#![allow(dead_code, clippy::unwrap_used)] // test helpers: unwrap is fine

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::{
    Batch, BatchOutcome, Capabilities, Context, DeleteOptions, Entry, Error, ErrorKind, Key,
    KvStore, ListPage, ListRequest, PutOptions, Result, Revision, WatchRequest, WatchStream,
};

/// Passes calls to `inner` unless switched down, when every call fails
/// with `Unavailable` before reaching it. Counts the calls that reached it.
#[derive(Debug)]
pub(crate) struct Switch {
    pub(crate) inner: Arc<dyn KvStore>,
    pub(crate) down: AtomicBool,
    pub(crate) calls: AtomicUsize,
    name: String,
}

impl Switch {
    pub(crate) fn new(name: &str, inner: Arc<dyn KvStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            name: name.to_owned(),
        })
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err(Error::new(ErrorKind::Unavailable)
                .with_backend(self.name.clone())
                .with_detail("switched off by the test"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl KvStore for Switch {
    fn name(&self) -> &str {
        &self.name
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.check()?;
        self.inner.get(ctx, key).await
    }
    async fn put(&self, ctx: &Context, key: &Key, value: Bytes, o: PutOptions) -> Result<Revision> {
        self.check()?;
        self.inner.put(ctx, key, value, o).await
    }
    async fn delete(&self, ctx: &Context, key: &Key, o: DeleteOptions) -> Result<bool> {
        self.check()?;
        self.inner.delete(ctx, key, o).await
    }
    async fn list(&self, ctx: &Context, r: &ListRequest) -> Result<ListPage> {
        self.check()?;
        self.inner.list(ctx, r).await
    }
    async fn watch(&self, ctx: &Context, r: WatchRequest) -> Result<WatchStream> {
        self.check()?;
        self.inner.watch(ctx, r).await
    }
    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.check()?;
        self.inner.get_many(ctx, keys).await
    }
    async fn apply(&self, ctx: &Context, b: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        self.check()?;
        self.inner.apply(ctx, b).await
    }
    async fn lock(
        &self,
        ctx: &Context,
        key: &Key,
        o: kvmap_core::LockOptions,
    ) -> Result<kvmap_core::LockGuard> {
        self.check()?;
        self.inner.lock(ctx, key, o).await
    }
}

pub(crate) fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}
