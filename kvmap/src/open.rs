//! [`open`]: a store from a URL.

use std::sync::Arc;

use kvmap_core::{Error, ErrorKind, KvStore, MemoryStore, Op, Result, SharedStoreExt};

/// The URL forms [`open`] understands, for help texts.
pub const URL_FORMS: &str = "\
memory:                                   in-process, lost at exit
rocksdb:PATH | rocksdb:///ABS/PATH        embedded RocksDB (feature `rocksdb`)
redis://[USER:PASS@]HOST:PORT[/DB]        Redis standalone (feature `redis`)
rediss://...                              Redis standalone over TLS
redis+cluster://HOST:PORT[,HOST:PORT...]  Redis Cluster seeds
optional query: ?namespace=PREFIX/        scope every key under PREFIX/";

/// Opens a store from a URL (see [`URL_FORMS`]).
///
/// A `namespace=PREFIX/` query parameter scopes the store to that prefix
/// with [`Namespaced`](kvmap_core::Namespaced), for any backend.
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] for an unknown scheme, a malformed URL or
/// a backend this build was compiled without; the backend's own errors
/// for opening or connecting (a locked RocksDB path, an unreachable
/// server: `Unavailable`, wrong credentials: `Unauthenticated`).
pub async fn open(url: &str) -> Result<Arc<dyn KvStore>> {
    let (base, namespace) = split_query(url)?;
    let (scheme, rest) = base.split_once(':').ok_or_else(|| {
        invalid(
            url,
            "missing scheme (expected e.g. rocksdb:./data or redis://host:6379)",
        )
    })?;
    let store: Arc<dyn KvStore> = match scheme {
        "memory" => Arc::new(MemoryStore::new()),
        "rocksdb" => open_rocksdb(url, rest).await?,
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            open_redis(url, scheme, rest).await?
        }
        other => {
            return Err(invalid(
                url,
                &format!(
                "unknown scheme {other:?}; known: memory, rocksdb, redis, rediss, redis+cluster"
            ),
            ))
        }
    };
    match namespace {
        Some(ns) => Ok(Arc::new(store.namespaced(&ns)?)),
        None => Ok(store),
    }
}

fn invalid(url: &str, why: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument)
        .with_backend("kvmap")
        .with_op(Op::Open)
        .with_detail(format!("url {:?}: {why}", redact(url)))
}

/// The URL with any password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

fn split_query(url: &str) -> Result<(&str, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url, None));
    };
    let mut namespace = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("namespace", v)) if !v.is_empty() => namespace = Some(v.to_owned()),
            _ => return Err(invalid(url, &format!("unknown query parameter {pair:?}"))),
        }
    }
    Ok((base, namespace))
}

#[cfg(feature = "rocksdb")]
async fn open_rocksdb(url: &str, rest: &str) -> Result<Arc<dyn KvStore>> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(invalid(url, "missing path"));
    }
    let config = kvmap_rocksdb::RocksConfig::new(path);
    Ok(Arc::new(
        kvmap_rocksdb::RocksStore::open_async(config).await?,
    ))
}

#[cfg(not(feature = "rocksdb"))]
async fn open_rocksdb(url: &str, _rest: &str) -> Result<Arc<dyn KvStore>> {
    Err(invalid(url, "this build of kvmap has no `rocksdb` feature"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str, scheme: &str, rest: &str) -> Result<Arc<dyn KvStore>> {
    use kvmap_redis::{RedisConfig, RedisStore};
    let hosts = rest
        .strip_prefix("//")
        .ok_or_else(|| invalid(url, "expected scheme://host"))?;
    let config = match scheme.strip_suffix("+cluster") {
        Some(base) => {
            // Credentials, if any, are on the first seed; they apply to all.
            let (auth, seeds) = match hosts.rsplit_once('@') {
                Some((a, s)) => (Some(a), s),
                None => (None, hosts),
            };
            let urls: Vec<String> = seeds
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| match auth {
                    Some(a) => format!("{base}://{a}@{s}"),
                    None => format!("{base}://{s}"),
                })
                .collect();
            if urls.is_empty() {
                return Err(invalid(url, "no cluster seed"));
            }
            RedisConfig::cluster(urls)
        }
        None => RedisConfig::standalone(format!("{scheme}:{rest}")),
    };
    Ok(Arc::new(RedisStore::connect(config).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str, _scheme: &str, _rest: &str) -> Result<Arc<dyn KvStore>> {
    Err(invalid(url, "this build of kvmap has no `redis` feature"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmap_core::{Context, Key, KvStoreExt};

    #[tokio::test]
    async fn memory_with_namespace() {
        let s = open("memory:?namespace=app/").await.unwrap();
        let k = Key::new("a").unwrap();
        s.set(&Context::new(), &k, "v").await.unwrap();
        assert!(s.get(&Context::new(), &k).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bad_urls_are_typed() {
        for url in [
            "nothing",
            "ftp://x",
            "memory:?foo=bar",
            "memory:?namespace=noslash",
            "rocksdb:",
        ] {
            let e = open(url).await.unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::InvalidArgument | ErrorKind::InvalidKey),
                "{url}: {e}"
            );
            assert!(
                e.to_string().starts_with("kvmap: open") || e.kind() == ErrorKind::InvalidKey,
                "{e}"
            );
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[cfg(feature = "rocksdb")]
    #[tokio::test]
    async fn rocksdb_path() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("rocksdb:{}", dir.path().join("db").display());
        let s = open(&url).await.unwrap();
        assert_eq!(s.name(), "rocksdb");
    }
}
