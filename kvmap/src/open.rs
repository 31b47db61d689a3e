//! [`open`]: a store from a URL.

use std::sync::Arc;

use kvmap_core::{Error, ErrorKind, KvStore, MemoryStore, Op, Result, SharedStoreExt};

/// The URL forms [`open`] understands, for help texts.
pub const URL_FORMS: &str = "\
memory:                                   in-process, lost at exit
rocksdb:PATH | rocksdb:///ABS/PATH        embedded RocksDB (feature `rocksdb`)
  rocksdb query: create=false (fail if the database is missing) sync=true|false (fsync each write; default true)
redis://[USER:PASS@]HOST:PORT[/DB]        Redis standalone (feature `redis`)
rediss://...                              Redis standalone over TLS
redis+cluster://HOST:PORT[,HOST:PORT...]  Redis Cluster seeds (rediss+cluster:// over TLS)
  redis query: prefix=KEYPREFIX (kvmap:) op_timeout_ms=N (5000) connect_timeout_ms=N (5000)
               ca_file=PEM wait_replicas=N wait_timeout_ms=N (1000: durable writes via WAIT)
               watch_events=true|false expiry_events=true|false
consul://HOST:PORT[,HOST:PORT...]         Consul KV over http (feature `consul`)
consul+https://HOST:PORT[,...]            Consul KV over https
  consul query: token=T dc=DC prefix=KEYPREFIX/ ca_file=PEM
optional query: ?namespace=PREFIX/        scope every key under PREFIX/
optional query: ?cache=near               a watch-invalidated near cache in front (feature `fallback`)
  cache query: cache_entries=N (1024) cache_bytes=N (2097152) cache_scope=PREFIX/
               cache_max_staleness_ms=N (30000) cache_max_lag_ms=N (1000)";

/// Opens a store from a URL (see [`URL_FORMS`]).
///
/// A `namespace=PREFIX/` query parameter scopes the store to that prefix
/// with [`Namespaced`](kvmap_core::Namespaced), for any backend.
///
/// `cache=near` puts a near cache (`kvmap_fallback::NearCache`, feature
/// `fallback`) in front of the store (after the namespace), tuned with
/// `cache_entries`, `cache_bytes`, `cache_scope`, `cache_max_staleness_ms`
/// and `cache_max_lag_ms`. Use it on a single store: inside a fallback
/// chain, a cache per backend would answer for a failed backend instead of
/// letting the chain fall back (wrap the chain with
/// `NearCache::over_chain` instead).
///
/// # Errors
/// [`ErrorKind::InvalidArgument`] for an unknown scheme, a malformed URL or
/// a backend this build was compiled without; the backend's own errors
/// for opening or connecting (a locked RocksDB path, an unreachable
/// server: `Unavailable`, wrong credentials: `Unauthenticated`).
pub async fn open(url: &str) -> Result<Arc<dyn KvStore>> {
    let (base, namespace, params) = split_query(url)?;
    let (cache, params): (Params, Params) = params
        .into_iter()
        .partition(|(k, _)| k == "cache" || k.starts_with("cache_"));
    let (scheme, rest) = base.split_once(':').ok_or_else(|| {
        invalid(
            url,
            "missing scheme (expected e.g. rocksdb:./data or redis://host:6379)",
        )
    })?;
    let scheme = scheme.to_ascii_lowercase();
    let scheme = scheme.as_str();
    if !params.is_empty() && !known_scheme(scheme) {
        let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
        return Err(invalid(
            url,
            &format!("unknown query parameter(s) {names:?} for {scheme}"),
        ));
    }
    let store: Arc<dyn KvStore> = match scheme {
        "memory" => Arc::new(MemoryStore::new()),
        "consul" | "consul+http" | "consul+https" => open_consul(url, scheme, rest, params).await?,
        "rocksdb" => open_rocksdb(url, rest, params).await?,
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => {
            open_redis(url, scheme, rest, params).await?
        }
        other => {
            return Err(invalid(
                url,
                &format!(
                "unknown scheme {other:?}; known: memory, rocksdb, redis, rediss, redis+cluster, consul, consul+https"
            ),
            ))
        }
    };
    let store: Arc<dyn KvStore> = match namespace {
        Some(ns) => Arc::new(store.namespaced(&ns)?),
        None => store,
    };
    if cache.is_empty() {
        Ok(store)
    } else {
        with_cache(url, store, cache).await
    }
}

#[cfg(feature = "fallback")]
async fn with_cache(
    url: &str,
    store: Arc<dyn KvStore>,
    params: Params,
) -> Result<Arc<dyn KvStore>> {
    use kvmap_fallback::{NearCache, NearCacheConfig};
    use std::time::Duration;
    let mut config = NearCacheConfig::default();
    let mut enabled = false;
    for (k, v) in params {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| invalid(url, &format!("{k}={v:?} is not a number")))
        };
        match k.as_str() {
            "cache" if v == "near" => enabled = true,
            "cache" if v == "off" || v == "none" => enabled = false,
            "cache" => {
                return Err(invalid(
                    url,
                    &format!("cache={v:?}: expected cache=near (or off)"),
                ))
            }
            "cache_entries" => config = config.with_max_entries(number(&v)?),
            "cache_bytes" => config = config.with_max_bytes(number(&v)?),
            "cache_scope" => config = config.with_scope(v),
            "cache_max_staleness_ms" => {
                config = config.with_max_staleness(Duration::from_millis(number(&v)?))
            }
            "cache_max_lag_ms" => {
                let lag = Duration::from_millis(number(&v)?);
                let probe = config.probe_interval.min(lag);
                config = config.with_max_lag(lag).with_probe_interval(probe);
            }
            other => {
                return Err(invalid(
                    url,
                    &format!("unknown query parameter {other:?} (the cache knows cache, cache_entries, cache_bytes, cache_scope, cache_max_staleness_ms, cache_max_lag_ms)"),
                ))
            }
        }
    }
    if !enabled {
        return Ok(store);
    }
    let cache = NearCache::builder(store).config(config).build().await?;
    Ok(Arc::new(cache))
}

#[cfg(not(feature = "fallback"))]
async fn with_cache(
    url: &str,
    _store: Arc<dyn KvStore>,
    _params: Params,
) -> Result<Arc<dyn KvStore>> {
    Err(invalid(
        url,
        "this build of kvmap has no `fallback` feature (cache=near)",
    ))
}

/// Whether `scheme` names a backend that takes its own query parameters.
fn known_scheme(scheme: &str) -> bool {
    matches!(
        scheme,
        "rocksdb"
            | "consul"
            | "consul+http"
            | "consul+https"
            | "redis"
            | "rediss"
            | "redis+cluster"
            | "rediss+cluster"
    )
}

fn invalid(url: &str, why: &str) -> Error {
    Error::new(ErrorKind::InvalidArgument)
        .with_backend("kvmap")
        .with_op(Op::Open)
        .with_detail(format!("url {:?}: {why}", redact(url)))
}

/// The URL with any password and secret query parameter replaced by
/// `***`, for messages (the one routine of [`kvmap_core::redact_url`]).
pub fn redact(url: &str) -> String {
    kvmap_core::redact_url(url)
}

type Params = Vec<(String, String)>;

/// Splits off the query: `namespace` for every backend, the rest for the
/// backend. Values are percent-decoded.
fn split_query(url: &str) -> Result<(&str, Option<String>, Params)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url, None, Vec::new()));
    };
    let mut namespace = None;
    let mut params = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "namespace" if !v.is_empty() => namespace = Some(v.into_owned()),
            "namespace" => return Err(invalid(url, "empty namespace")),
            _ => params.push((k.into_owned(), v.into_owned())),
        }
    }
    Ok((base, namespace, params))
}

#[cfg(feature = "consul")]
async fn open_consul(
    url: &str,
    scheme: &str,
    rest: &str,
    params: Params,
) -> Result<Arc<dyn KvStore>> {
    use kvmap_consul::{ConsulConfig, ConsulStore};
    let hosts = rest
        .strip_prefix("//")
        .ok_or_else(|| invalid(url, "expected consul://host:port"))?;
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('@') {
        return Err(invalid(
            url,
            "consul urls carry no credentials; pass the token as ?token=",
        ));
    }
    let http = if scheme == "consul+https" {
        "https"
    } else {
        "http"
    };
    let addrs: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{http}://{h}"))
        .collect();
    if addrs.is_empty() {
        return Err(invalid(url, "no consul agent address"));
    }
    let mut config = ConsulConfig::default().with_addrs(addrs);
    for (k, v) in params {
        config = match k.as_str() {
            "token" => config.with_token(v),
            "dc" => config.with_datacenter(v),
            "prefix" => config.with_key_prefix(v),
            "ca_file" => config.with_ca_file(v),
            other => {
                return Err(invalid(
                    url,
                    &format!("unknown query parameter {other:?} (consul knows token, dc, prefix, ca_file, namespace)"),
                ))
            }
        };
    }
    Ok(Arc::new(ConsulStore::connect(config).await?))
}

#[cfg(not(feature = "consul"))]
async fn open_consul(
    url: &str,
    _scheme: &str,
    _rest: &str,
    _params: Params,
) -> Result<Arc<dyn KvStore>> {
    Err(invalid(url, "this build of kvmap has no `consul` feature"))
}

#[cfg(feature = "rocksdb")]
async fn open_rocksdb(url: &str, rest: &str, params: Params) -> Result<Arc<dyn KvStore>> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(invalid(url, "missing path"));
    }
    let mut config = kvmap_rocksdb::RocksConfig::new(path);
    for (k, v) in &params {
        let flag = match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(invalid(
                    url,
                    &format!("query parameter {k:?} takes true or false"),
                ))
            }
        };
        config = match k.as_str() {
            "create" => config.with_create_if_missing(flag),
            "sync" => config.with_sync(flag),
            other => {
                return Err(invalid(
                    url,
                    &format!(
                        "unknown query parameter {other:?} (rocksdb knows create, sync, namespace)"
                    ),
                ))
            }
        };
    }
    Ok(Arc::new(
        kvmap_rocksdb::RocksStore::open_async(config).await?,
    ))
}

#[cfg(not(feature = "rocksdb"))]
async fn open_rocksdb(url: &str, _rest: &str, _params: Params) -> Result<Arc<dyn KvStore>> {
    Err(invalid(url, "this build of kvmap has no `rocksdb` feature"))
}

#[cfg(feature = "redis")]
async fn open_redis(
    url: &str,
    scheme: &str,
    rest: &str,
    params: Params,
) -> Result<Arc<dyn KvStore>> {
    use kvmap_redis::{RedisConfig, RedisStore};
    use std::time::Duration;
    let hosts = rest
        .strip_prefix("//")
        .ok_or_else(|| invalid(url, "expected scheme://host"))?;
    let mut config = match scheme.strip_suffix("+cluster") {
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
    let mut wait_replicas = None;
    let mut wait_timeout = Duration::from_millis(1000);
    for (k, v) in &params {
        let millis = || {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| invalid(url, &format!("{k}={v:?} is not a number of milliseconds")))
        };
        let flag = || match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(invalid(
                url,
                &format!("query parameter {k:?} takes true or false"),
            )),
        };
        config = match k.as_str() {
            "prefix" => config.with_key_prefix(v.clone()),
            "op_timeout_ms" => config.with_op_timeout(millis()?),
            "connect_timeout_ms" => config.with_connect_timeout(millis()?),
            "ca_file" => config.with_tls_ca_file(v.clone()),
            "watch_events" => config.with_watch_events(flag()?),
            "expiry_events" => config.with_expiry_events(flag()?),
            "wait_replicas" => {
                wait_replicas = Some(v.parse::<u32>().map_err(|_| {
                    invalid(url, &format!("wait_replicas={v:?} is not a replica count"))
                })?);
                config
            }
            "wait_timeout_ms" => {
                wait_timeout = millis()?;
                config
            }
            other => {
                return Err(invalid(
                    url,
                    &format!("unknown query parameter {other:?} (redis knows prefix, op_timeout_ms, connect_timeout_ms, ca_file, wait_replicas, wait_timeout_ms, watch_events, expiry_events, namespace)"),
                ))
            }
        };
    }
    if let Some(replicas) = wait_replicas {
        config = config.with_durable_writes(replicas, wait_timeout);
    } else if params.iter().any(|(k, _)| k == "wait_timeout_ms") {
        return Err(invalid(url, "wait_timeout_ms needs wait_replicas"));
    }
    // `connect` validates the config before it dials.
    Ok(Arc::new(RedisStore::connect(config).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    url: &str,
    _scheme: &str,
    _rest: &str,
    _params: Params,
) -> Result<Arc<dyn KvStore>> {
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
            "consul://",
            "consul://h:1?bogus=1",
            "consul://u:p@h:1",
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

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_query_options_are_checked_before_dialing() {
        // Port 1 is never a Redis server: a URL that got past its options
        // fails with Unavailable, a bad option with InvalidArgument.
        for bad in [
            "redis://127.0.0.1:1?op_timeout_ms=soon",
            "redis://127.0.0.1:1?op_timeout_ms=0",
            "redis://127.0.0.1:1?wait_replicas=-1",
            "redis://127.0.0.1:1?wait_timeout_ms=10",
            "redis://127.0.0.1:1?watch_events=maybe",
            "redis://127.0.0.1:1?prefix=a*b",
            "redis://u:s3cr%40t@127.0.0.1:1?password=hunter22",
            "redis+cluster://u:s3cr%40t@127.0.0.1:1,127.0.0.1:2?bogus=1",
        ] {
            let e = open(bad).await.map(|_| ()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
            let shown = format!("{e} {e:?}");
            for secret in ["s3cr", "hunter22"] {
                assert!(!shown.contains(secret), "{bad}: {shown}");
            }
        }
        let good = "REDIS://127.0.0.1:1?prefix=app:&op_timeout_ms=200&connect_timeout_ms=200\
                    &wait_replicas=1&wait_timeout_ms=50&watch_events=false&expiry_events=no";
        let e = open(good).await.map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
        assert!(!redact("consul://h:1?token=abc").contains("abc"));
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[cfg(feature = "fallback")]
    #[tokio::test]
    async fn memory_with_a_near_cache() {
        let s = open("memory:?namespace=app/&cache=near&cache_entries=10&cache_bytes=4096")
            .await
            .unwrap();
        assert_eq!(s.name(), "near-cache");
        let k = Key::new("a").unwrap();
        s.set(&Context::new(), &k, "v").await.unwrap();
        assert_eq!(
            s.get(&Context::new(), &k).await.unwrap().unwrap().value,
            "v"
        );
        for bad in [
            "memory:?cache=far",
            "memory:?cache=near&cache_entries=x",
            "memory:?cache=near&cache_bogus=1",
            "memory:?cache=near&cache_entries=0",
        ] {
            assert!(open(bad).await.is_err(), "{bad}");
        }
    }

    #[cfg(feature = "rocksdb")]
    #[tokio::test]
    async fn rocksdb_path() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("rocksdb:{}", dir.path().join("db").display());
        let s = open(&url).await.unwrap();
        assert_eq!(s.name(), "rocksdb");
    }

    #[cfg(feature = "rocksdb")]
    #[tokio::test]
    async fn rocksdb_query_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let missing = format!("rocksdb:{}?create=false", path.display());
        let e = open(&missing).await.map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(!path.exists(), "create=false created the database");
        let s = open(&format!("rocksdb:{}?sync=true&create=true", path.display())).await;
        drop(s.unwrap());
        for bad in ["?sync=maybe", "?fsync=true"] {
            let e = open(&format!("rocksdb:{}{bad}", path.display()))
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        }
    }
}
