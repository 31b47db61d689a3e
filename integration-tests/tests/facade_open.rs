//! Cross-crate scenarios: `kvmap::open(url)` against real Redis servers,
//! and the typed errors of bad URLs, unreachable servers and wrong
//! credentials.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests

use integration_tests::{docker_available_or_skip, RedisAcl, RedisCluster, RedisStandalone};
use kvmap::{Context, ErrorKind, Key, KvStoreExt, ListRequest};

async fn round_trip(url: &str) {
    let store = kvmap::open(url).await.unwrap();
    let ctx = Context::new();
    let k = Key::new("facade/a").unwrap();
    let rev = store.set(&ctx, &k, "v1").await.unwrap();
    store.update(&ctx, &k, "v2", rev).await.unwrap();
    let e = store.get(&ctx, &k).await.unwrap().unwrap();
    assert_eq!(e.value, "v2");
    let page = store
        .list(&ctx, &ListRequest::prefix("facade/"))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(store.name(), "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redis_standalone_url_with_namespace() {
    if !docker_available_or_skip().await {
        return;
    }
    let redis = RedisStandalone::start().await.unwrap();
    round_trip(&format!("{}?namespace=facade-test/", redis.url())).await;
    // The namespace is a real prefix on the server.
    let raw = kvmap::open(&redis.url()).await.unwrap();
    let keys = raw
        .list_all(&Context::new(), ListRequest::prefix("facade-test/"), 10)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redis_cluster_url() {
    if !docker_available_or_skip().await {
        return;
    }
    let cluster = RedisCluster::start().await.unwrap();
    let seeds: Vec<String> = cluster
        .ports()
        .iter()
        .take(2)
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    round_trip(&format!("redis+cluster://{}", seeds.join(","))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let e = kvmap::open("redis://127.0.0.1:1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unauthenticated_and_not_printed() {
    if !docker_available_or_skip().await {
        return;
    }
    let acl = RedisAcl::start().await.unwrap();
    let url = acl.url_as(integration_tests::RedisAcl::USER, "not-the-password");
    let e = kvmap::open(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    assert!(!format!("{e:?}").contains("not-the-password"), "{e:?}");
}

#[tokio::test]
async fn bad_urls_are_invalid_argument() {
    for url in [
        "redis+cluster://",
        "redis:no-slashes",
        "mysql://x",
        "redis://h:1?color=red",
    ] {
        let e = kvmap::open(url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{url}: {e}");
    }
}
