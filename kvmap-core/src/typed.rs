//! [`Typed`]: a view of a store that stores serde values.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;

use crate::context::Context;
use crate::entry::{DeleteOptions, PutOptions, Revision};
use crate::error::{Error, ErrorKind, Op, Result};
use crate::key::Key;
use crate::store::KvStore;

/// Turns values into bytes and back.
pub trait Codec<T>: Send + Sync + 'static {
    /// Encodes a value.
    ///
    /// # Errors
    /// [`ErrorKind::Codec`].
    fn encode(&self, value: &T) -> Result<Bytes>;

    /// Decodes a value.
    ///
    /// # Errors
    /// [`ErrorKind::Codec`].
    fn decode(&self, bytes: &[u8]) -> Result<T>;
}

/// The JSON codec (serde_json), the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T> Codec<T> for Json
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn encode(&self, value: &T) -> Result<Bytes> {
        serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
            Error::new(ErrorKind::Codec)
                .with_op(Op::Codec)
                .with_detail("json encode")
                .with_source(e)
        })
    }

    fn decode(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::new(ErrorKind::Codec)
                .with_op(Op::Codec)
                .with_detail("json decode")
                .with_source(e)
        })
    }
}

/// A decoded value with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its revision (for [`Typed::update`]).
    pub revision: Revision,
}

/// A typed view over any store: values of `T` encoded with codec `C`.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::sync::Arc;
/// use kvmap_core::{Context, Key, KvStore, MemoryStore, SharedStoreExt};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct User { name: String }
///
/// let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
/// let users = store.typed::<User>();
/// let ctx = Context::new();
/// let key = Key::new("users/1")?;
/// users.put(&ctx, &key, &User { name: "ada".into() }).await?;
/// let got = users.get(&ctx, &key).await?.expect("present");
/// assert_eq!(got.value.name, "ada");
/// # Ok::<(), kvmap_core::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub struct Typed<T, C = Json> {
    store: Arc<dyn KvStore>,
    codec: C,
    _marker: PhantomData<fn() -> T>,
}

impl<T, C: fmt::Debug> fmt::Debug for Typed<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Typed")
            .field("store", &self.store)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<T, C: Clone> Clone for Typed<T, C> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            codec: self.codec.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T> Typed<T, Json>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    /// A JSON view of `store`.
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        Self::with_codec(store, Json)
    }
}

impl<T, C: Codec<T>> Typed<T, C> {
    /// A view of `store` with `codec`.
    pub fn with_codec(store: Arc<dyn KvStore>, codec: C) -> Self {
        Self {
            store,
            codec,
            _marker: PhantomData,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// Reads and decodes a value.
    ///
    /// # Errors
    /// As [`KvStore::get`], plus [`ErrorKind::Codec`] (with the key) for a
    /// value that does not decode.
    pub async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Versioned<T>>> {
        let Some(entry) = self.store.get(ctx, key).await? else {
            return Ok(None);
        };
        let value = self
            .codec
            .decode(&entry.value)
            .map_err(|e| e.in_context(self.store.name(), Op::Get, Some(key.as_str())))?;
        Ok(Some(Versioned {
            value,
            revision: entry.revision,
        }))
    }

    /// Encodes and writes a value unconditionally.
    ///
    /// # Errors
    /// As [`KvStore::put`], plus [`ErrorKind::Codec`].
    pub async fn put(&self, ctx: &Context, key: &Key, value: &T) -> Result<Revision> {
        self.put_with(ctx, key, value, PutOptions::default()).await
    }

    /// Encodes and writes a value with options (condition, TTL).
    ///
    /// # Errors
    /// As [`KvStore::put`], plus [`ErrorKind::Codec`].
    pub async fn put_with(
        &self,
        ctx: &Context,
        key: &Key,
        value: &T,
        options: PutOptions,
    ) -> Result<Revision> {
        let bytes = self
            .codec
            .encode(value)
            .map_err(|e| e.in_context(self.store.name(), Op::Put, Some(key.as_str())))?;
        self.store.put(ctx, key, bytes, options).await
    }

    /// Writes only if the revision still matches.
    ///
    /// # Errors
    /// As [`KvStore::put`] with `PutMode::Update`.
    pub async fn update(
        &self,
        ctx: &Context,
        key: &Key,
        value: &T,
        revision: Revision,
    ) -> Result<Revision> {
        self.put_with(ctx, key, value, PutOptions::update(revision))
            .await
    }

    /// Deletes a key.
    ///
    /// # Errors
    /// As [`KvStore::delete`].
    pub async fn delete(&self, ctx: &Context, key: &Key) -> Result<bool> {
        self.store.delete(ctx, key, DeleteOptions::default()).await
    }
}
