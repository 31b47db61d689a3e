//! Security on a TLS-only 3 + 3 cluster (clients, the cluster bus and
//! replication over TLS; the harness's `RedisClusterOptions::tls`):
//!
//! - `cluster_tls_with_generated_ca_works`: trusting the cluster's CA, a
//!   store writes, reads, lists, deletes and watches (the sharded change
//!   feed and the expiry notifications both over TLS, on every master);
//! - `cluster_tls_wrong_ca_fails_clearly`: trusting another CA, connect
//!   fails with `Unauthenticated` and a message that names TLS;
//! - `cluster_tls_plain_url_fails_typed`: `redis://` seeds against the
//!   TLS-only ports fail with a typed error (not an internal one) within
//!   the connect timeout, whose message points to `rediss://`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _};
use bytes::Bytes;
use futures::StreamExt;
use integration_tests::{RedisCluster, RedisClusterOptions};
use kvmap_core::{
    Context, DeleteOptions, ErrorKind, Key, KvStore, KvStoreExt, ListRequest, PutOptions,
    WatchEvent, WatchRequest,
};
use kvmap_redis::{RedisConfig, RedisStore};

async fn works(urls: Vec<String>, ca: String) -> anyhow::Result<()> {
    let store = RedisStore::connect(
        RedisConfig::cluster(urls)
            .with_tls_ca_pem(ca)
            .with_op_timeout(Duration::from_secs(2)),
    )
    .await?;
    let ctx = Context::new();
    let mut stream = store
        .watch(&ctx, WatchRequest::prefix("tlsc/"))
        .await
        .context("watch over tls")?;
    // Keys on every master (they hash to different slots).
    let keys: Vec<Key> = (0..12)
        .map(|i| Key::new(format!("tlsc/{i:02}")))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        let rev = store.set(&ctx, k, format!("v-{k}")).await?;
        let e = store
            .get(&ctx, k)
            .await?
            .ok_or_else(|| anyhow!("{k} missing"))?;
        ensure!(e.revision == rev && e.value == format!("v-{k}").as_bytes());
    }
    let listed = store
        .list_all(&ctx, ListRequest::prefix("tlsc/"), usize::MAX)
        .await?;
    ensure!(listed.len() == keys.len(), "listed {} keys", listed.len());
    let short = Key::new("tlsc/short")?;
    store
        .put(
            &ctx,
            &short,
            Bytes::from_static(b"s"),
            PutOptions::default().with_ttl(Duration::from_millis(200)),
        )
        .await?;
    ensure!(
        store
            .delete(&ctx, &keys[0], DeleteOptions::default())
            .await?
    );
    // Every write's event, then the delete and the expiry.
    let (mut puts, mut deleted, mut expired) = (0, false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(puts == keys.len() + 1 && deleted && expired) {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| {
                anyhow!("events over tls: {puts} puts, delete {deleted}, expiry {expired} in 15 s")
            })?
            .ok_or_else(|| anyhow!("the watch ended"))??;
        match ev {
            WatchEvent::Put { .. } => puts += 1,
            WatchEvent::Delete { key, .. } => deleted |= key == keys[0],
            WatchEvent::Expired { key, .. } => expired |= key == short,
            WatchEvent::Resync { .. } => return Err(anyhow!("a resync on a quiet tls cluster")),
        }
    }
    eprintln!(
        "[tls cluster] {} keys written, read and listed over tls; watch: {puts} puts, the delete \
         and the expiry",
        keys.len()
    );
    Ok(())
}

async fn plain_url(urls: Vec<String>) -> anyhow::Result<()> {
    let plain: Vec<String> = urls
        .iter()
        .map(|u| u.replacen("rediss://", "redis://", 1))
        .collect();
    let t = Instant::now();
    let cfg = RedisConfig::cluster(plain).with_op_timeout(Duration::from_secs(2));
    let e = RedisStore::connect(cfg)
        .await
        .err()
        .ok_or_else(|| anyhow!("a plain connection to tls-only ports succeeded"))?;
    eprintln!(
        "[tls cluster] plain redis:// seeds: {e} (after {:?})",
        t.elapsed()
    );
    ensure!(
        e.kind() != ErrorKind::Internal,
        "an internal error for a plain url to tls ports: {e}"
    );
    ensure!(
        e.to_string().contains("rediss://"),
        "the message does not point to rediss://: {e}"
    );
    ensure!(
        t.elapsed() < Duration::from_secs(30),
        "connect took {:?}",
        t.elapsed()
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let listing = std::env::args().any(|a| a == "--list");
    let cluster = if listing {
        None
    } else {
        Some(Arc::new(
            infra
                .block_on(RedisCluster::start_with(RedisClusterOptions {
                    tls: true,
                    ..RedisClusterOptions::default()
                }))
                .expect("start the tls cluster"),
        ))
    };
    let seeds = |c: &Option<Arc<RedisCluster>>| -> anyhow::Result<(Vec<String>, String)> {
        let c = c.as_ref().context("no cluster")?;
        let ca = c.ca_pem().context("no ca")?.to_owned();
        Ok((c.urls(), ca))
    };
    let (c1, c2, c3) = (cluster.clone(), cluster.clone(), cluster.clone());
    let trials = vec![
        (
            "cluster_tls_with_generated_ca_works",
            common::trial(&infra, move || async move {
                let (urls, ca) = seeds(&c1)?;
                works(urls, ca).await
            }),
        ),
        (
            "cluster_tls_wrong_ca_fails_clearly",
            common::trial(&infra, move || async move {
                let (urls, _) = seeds(&c2)?;
                common::wrong_ca_is_refused(RedisConfig::cluster(urls)).await
            }),
        ),
        (
            "cluster_tls_plain_url_fails_typed",
            common::trial(&infra, move || async move {
                let (urls, _) = seeds(&c3)?;
                plain_url(urls).await
            }),
        ),
    ];
    let code = common::run_trials(trials);
    infra.block_on(async move { drop(cluster) });
    code
}
