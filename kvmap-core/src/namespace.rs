//! [`Namespaced`]: a store scoped to a key prefix.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::capability::Capabilities;
use crate::context::Context;
use crate::entry::{
    prefix_end, Batch, BatchOp, BatchOutcome, DeleteOptions, Entry, KeyRange, ListPage,
    ListRequest, PutOptions, Revision,
};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{check_prefix, Key};
use crate::store::KvStore;
use crate::watch::{WatchEvent, WatchRequest, WatchStream, WatchTarget};

/// A store whose keys all live under a prefix that the caller never sees.
///
/// `Namespaced::new(store, "app1/")` maps the caller's key `users/7` to
/// `app1/users/7` on the inner store and strips the prefix from every
/// answer (entries, cursors, watch events). Lists and watches cannot reach
/// outside the prefix. The key length limit shrinks by the prefix length.
#[derive(Debug, Clone)]
pub struct Namespaced {
    inner: Arc<dyn KvStore>,
    prefix: Arc<str>,
}

impl Namespaced {
    /// Scopes `inner` to `prefix`, which must be a valid, non-empty key
    /// prefix ending with `/`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`].
    pub fn new(inner: Arc<dyn KvStore>, prefix: &str) -> Result<Self> {
        check_prefix(prefix)?;
        if !prefix.ends_with('/') {
            return Err(Error::new(ErrorKind::InvalidKey)
                .with_key(prefix)
                .with_detail("namespace prefix must end with '/'"));
        }
        Ok(Self {
            inner,
            prefix: Arc::from(prefix),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The inner store.
    pub fn get_ref(&self) -> &Arc<dyn KvStore> {
        &self.inner
    }

    fn outer_limit(&self) -> usize {
        self.inner
            .capabilities()
            .limits
            .max_key_bytes
            .saturating_sub(self.prefix.len())
    }

    fn wrap(&self, key: &Key) -> Result<Key> {
        self.capabilities().limits.check_key(key)?;
        Key::new(format!("{}{}", self.prefix, key.as_str()))
    }

    fn unwrap_key(&self, key: &Key) -> Result<Key> {
        match key.as_str().strip_prefix(&*self.prefix) {
            Some(k) => Key::new(k),
            None => Err(Error::new(ErrorKind::Internal)
                .with_key(key.as_str())
                .with_detail("inner store returned a key outside the namespace")),
        }
    }

    fn unwrap_entry(&self, mut e: Entry) -> Result<Entry> {
        e.key = self.unwrap_key(&e.key)?;
        Ok(e)
    }

    fn unwrap_event(&self, ev: WatchEvent) -> Result<WatchEvent> {
        let prev = |p: Option<Entry>| p.map(|p| self.unwrap_entry(p)).transpose();
        Ok(match ev {
            WatchEvent::Put { entry, prev: p } => WatchEvent::Put {
                entry: self.unwrap_entry(entry)?,
                prev: prev(p)?,
            },
            WatchEvent::Delete {
                key,
                revision,
                prev: p,
            } => WatchEvent::Delete {
                key: self.unwrap_key(&key)?,
                revision,
                prev: prev(p)?,
            },
            WatchEvent::Expired {
                key,
                revision,
                prev: p,
            } => WatchEvent::Expired {
                key: self.unwrap_key(&key)?,
                revision,
                prev: prev(p)?,
            },
            WatchEvent::Resync { entries, revision } => WatchEvent::Resync {
                entries: entries
                    .into_iter()
                    .map(|e| self.unwrap_entry(e))
                    .collect::<Result<_>>()?,
                revision,
            },
        })
    }

    fn wrap_request(&self, req: &ListRequest) -> ListRequest {
        let p = &*self.prefix;
        let range = match &req.range {
            KeyRange::Prefix(x) => KeyRange::Prefix(format!("{p}{x}")),
            KeyRange::Range { start, end } => KeyRange::Range {
                start: format!("{p}{start}"),
                end: Some(match end {
                    Some(e) => format!("{p}{e}"),
                    // The prefix ends with '/', so its end is the prefix
                    // with '/' replaced by '0': still valid UTF-8.
                    None => prefix_end(p.as_bytes())
                        .and_then(|b| String::from_utf8(b).ok())
                        .unwrap_or_default(),
                }),
            },
        };
        ListRequest {
            range,
            limit: req.limit,
            cursor: req.cursor.as_ref().map(|c| format!("{p}{c}")),
            keys_only: req.keys_only,
        }
    }
}

#[async_trait]
impl KvStore for Namespaced {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.inner.capabilities();
        caps.limits.max_key_bytes = self.outer_limit();
        caps
    }

    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        let k = self.wrap(key)?;
        self.inner
            .get(ctx, &k)
            .await?
            .map(|e| self.unwrap_entry(e))
            .transpose()
    }

    async fn put(
        &self,
        ctx: &Context,
        key: &Key,
        value: Bytes,
        options: PutOptions,
    ) -> Result<Revision> {
        let k = self.wrap(key)?;
        self.inner.put(ctx, &k, value, options).await
    }

    async fn delete(&self, ctx: &Context, key: &Key, options: DeleteOptions) -> Result<bool> {
        let k = self.wrap(key)?;
        self.inner.delete(ctx, &k, options).await
    }

    async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        request.validate()?;
        let page = self.inner.list(ctx, &self.wrap_request(request)).await?;
        Ok(ListPage {
            entries: page
                .entries
                .into_iter()
                .map(|e| self.unwrap_entry(e))
                .collect::<Result<_>>()?,
            cursor: page
                .cursor
                .map(|c| c.strip_prefix(&*self.prefix).unwrap_or_default().to_owned()),
        })
    }

    async fn watch(&self, ctx: &Context, request: WatchRequest) -> Result<WatchStream> {
        request.validate()?;
        let target = match &request.target {
            WatchTarget::Key(k) => WatchTarget::Key(self.wrap(k)?),
            WatchTarget::Prefix(p) => WatchTarget::Prefix(format!("{}{p}", self.prefix)),
        };
        let inner = self
            .inner
            .watch(ctx, WatchRequest { target, ..request })
            .await?;
        let this = self.clone();
        Ok(Box::pin(
            inner.map(move |ev| ev.and_then(|ev| this.unwrap_event(ev))),
        ))
    }

    async fn get_many(&self, ctx: &Context, keys: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        let keys = keys
            .iter()
            .map(|k| self.wrap(k))
            .collect::<Result<Vec<_>>>()?;
        let out = self.inner.get_many(ctx, &keys).await?;
        Ok(out
            .into_iter()
            .map(|r| r.and_then(|e| e.map(|e| self.unwrap_entry(e)).transpose()))
            .collect())
    }

    async fn lock(
        &self,
        ctx: &Context,
        key: &Key,
        options: crate::lock::LockOptions,
    ) -> Result<crate::lock::LockGuard> {
        let guard = self.inner.lock(ctx, &self.wrap(key)?, options).await?;
        Ok(guard.with_key(key.clone()))
    }

    async fn apply(&self, ctx: &Context, batch: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        let ops = batch
            .ops
            .into_iter()
            .map(|op| {
                Ok(match op {
                    BatchOp::Put {
                        key,
                        value,
                        options,
                    } => BatchOp::Put {
                        key: self.wrap(&key)?,
                        value,
                        options,
                    },
                    BatchOp::Delete { key, options } => BatchOp::Delete {
                        key: self.wrap(&key)?,
                        options,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.inner.apply(ctx, Batch { ops }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvStoreExt, MemoryStore};

    fn ns(prefix: &str) -> (Arc<dyn KvStore>, Namespaced) {
        let raw: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let n = Namespaced::new(raw.clone(), prefix).unwrap();
        (raw, n)
    }

    #[test]
    fn prefix_must_end_with_slash() {
        let raw: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        assert!(Namespaced::new(raw.clone(), "app").is_err());
        assert!(Namespaced::new(raw, "/app/").is_err());
    }

    #[tokio::test]
    async fn open_range_stays_inside_namespace() {
        let (raw, n) = ns("app/");
        let ctx = Context::new();
        raw.set(&ctx, &Key::new("app/a").unwrap(), "in")
            .await
            .unwrap();
        raw.set(&ctx, &Key::new("app0").unwrap(), "out")
            .await
            .unwrap();
        raw.set(&ctx, &Key::new("b").unwrap(), "out").await.unwrap();
        let page = n.list(&ctx, &ListRequest::range("", None)).await.unwrap();
        let keys: Vec<_> = page.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a"]);
    }

    #[tokio::test]
    async fn cursors_are_unprefixed() {
        let (_, n) = ns("app/");
        let ctx = Context::new();
        for k in ["a", "b", "c"] {
            n.set(&ctx, &Key::new(k).unwrap(), "v").await.unwrap();
        }
        let page = n
            .list(&ctx, &ListRequest::prefix("").with_limit(2))
            .await
            .unwrap();
        assert_eq!(page.cursor.as_deref(), Some("b"));
        let next = ListRequest::prefix("")
            .with_limit(2)
            .with_cursor(page.cursor);
        let page = n.list(&ctx, &next).await.unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].key.as_str(), "c");
    }

    /// Moved from the conformance suite (`namespaces_are_isolated`): it
    /// tests `Namespaced`, not a backend.
    #[tokio::test]
    async fn namespaces_are_isolated() {
        let raw: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let ctx = Context::new();
        let a = Namespaced::new(raw.clone(), "ns-a/").unwrap();
        let b = Namespaced::new(raw.clone(), "ns-b/").unwrap();
        let k = Key::new("shared/name").unwrap();
        a.set(&ctx, &k, "from a").await.unwrap();
        assert_eq!(b.get(&ctx, &k).await.unwrap(), None, "b sees a's key");
        b.set(&ctx, &k, "from b").await.unwrap();
        let va = a.get(&ctx, &k).await.unwrap().map(|e| e.value);
        assert_eq!(va, Some(Bytes::from("from a")), "a's value after b wrote");
        let la = a.list(&ctx, &ListRequest::prefix("")).await.unwrap();
        assert_eq!(la.entries.len(), 1, "a lists only its own keys");
        let lb = b.list(&ctx, &ListRequest::prefix("")).await.unwrap();
        assert_eq!(lb.entries.len(), 1, "b lists only its own keys");
    }

    /// Moved from the conformance suite (`namespace_prefix_is_invisible`).
    #[tokio::test]
    async fn namespace_prefix_is_invisible() {
        let (raw, n) = ns("app/");
        let ctx = Context::new();
        let k = Key::new("visible").unwrap();
        n.set(&ctx, &k, "v").await.unwrap();
        let e = n.get(&ctx, &k).await.unwrap().expect("present");
        assert_eq!(e.key.as_str(), "visible", "key seen through namespace");
        let raw_entry = raw.get(&ctx, &Key::new("app/visible").unwrap()).await;
        assert!(
            raw_entry.unwrap().is_some(),
            "raw store lacks the prefixed key"
        );
    }

    #[tokio::test]
    async fn key_limit_shrinks_by_prefix() {
        let (raw, n) = ns("app/");
        assert_eq!(
            n.capabilities().limits.max_key_bytes,
            raw.capabilities().limits.max_key_bytes - 4
        );
    }
}
