//! ACL users on a standalone server and on a 3 + 3 cluster (the `default`
//! user stays open for the harness; the store connects as these users):
//!
//! - `app` (`~* &* +@all`): writes, reads and watches work; on the cluster
//!   the watcher's own sharded-subscription connection authenticates too;
//! - a wrong password is `Unauthenticated` on the cluster as well;
//! - `nochan` (`~* resetchannels +@all`, what Redis 7 gives a new user by
//!   default): a write fails `PermissionDenied` and **writes nothing** —
//!   before, the script's `HSET` ran and its `PUBLISH` was refused, a half
//!   write reported as a failure; with watch events off the same user
//!   writes;
//! - `norecords` (`~kvmap:* &* +@all`: no access to the write records
//!   outside the key prefix): `PermissionDenied`, nothing written.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, ensure};
use futures::StreamExt;
use integration_tests::{RedisCluster, RedisClusterOptions, RedisOptions, RedisStandalone};
use kvmap_core::{Context, ErrorKind, Key, KvStore, KvStoreExt, WatchEvent, WatchRequest};
use kvmap_redis::{RedisConfig, RedisStore};

const USERS: [&str; 3] = [
    "app on >app-secret ~* &* +@all",
    "nochan on >nochan-secret ~* resetchannels +@all",
    "norecords on >norecords-secret ~kvmap:* &* +@all",
];

fn user_args() -> Vec<String> {
    let mut args = Vec::new();
    for u in USERS {
        args.push("--user".to_owned());
        args.extend(u.split(' ').map(String::from));
    }
    args
}

/// How a test binary reaches one topology.
#[derive(Clone)]
struct Target {
    name: &'static str,
    config: Arc<dyn Fn() -> RedisConfig + Send + Sync>,
    /// Standalone: the URL; cluster: the seed URLs.
    urls: Vec<String>,
    cluster: bool,
}

impl Target {
    fn as_user(&self, user: &str, password: &str) -> RedisConfig {
        (self.config)()
            .with_credentials(Some(user.into()), password)
            .with_op_timeout(Duration::from_secs(2))
    }

    /// Whether the server key exists, asked as the open `default` user.
    async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        let skey = format!("kvmap:{key}");
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(&skey);
        let n: i64 = if self.cluster {
            let mut c = redis::cluster::ClusterClient::new(self.urls.clone())?
                .get_async_connection()
                .await?;
            cmd.query_async(&mut c).await?
        } else {
            let url = self.urls.first().ok_or_else(|| anyhow!("no url"))?;
            let mut c = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            cmd.query_async(&mut c).await?
        };
        Ok(n > 0)
    }
}

async fn app_user_works(t: &Target) -> anyhow::Result<()> {
    let store = RedisStore::connect(t.as_user("app", "app-secret")).await?;
    let ctx = Context::new();
    let k = Key::new("acl/app")?;
    let mut w = store.watch(&ctx, WatchRequest::key(k.clone())).await?;
    let rev = store.set(&ctx, &k, "v").await?;
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .map_err(|_| anyhow!("no event"))?
        .ok_or_else(|| anyhow!("watch ended"))??;
    ensure!(
        matches!(&ev, WatchEvent::Put { entry, .. } if entry.revision == rev),
        "{}: {ev:?}",
        t.name
    );
    let e = RedisStore::connect(t.as_user("app", "wrong"))
        .await
        .err()
        .ok_or_else(|| anyhow!("connected with a wrong password"))?;
    ensure!(
        e.kind() == ErrorKind::Unauthenticated,
        "{}: wrong password: {e}",
        t.name
    );
    Ok(())
}

async fn refused_writes_nothing(t: &Target, user: &str, password: &str) -> anyhow::Result<()> {
    let store = RedisStore::connect(t.as_user(user, password)).await?;
    let ctx = Context::new();
    let k = Key::new(format!("acl/{user}"))?;
    let e = store
        .set(&ctx, &k, "v")
        .await
        .err()
        .ok_or_else(|| anyhow!("{}: {user} wrote", t.name))?;
    eprintln!("[acl {}] {user}: {e}", t.name);
    ensure!(
        e.kind() == ErrorKind::PermissionDenied,
        "{}: {user}: kind {:?}: {e}",
        t.name,
        e.kind()
    );
    ensure!(
        !t.exists(k.as_str()).await?,
        "{}: {user}'s refused write was applied (a half write)",
        t.name
    );
    let e = store
        .delete(&ctx, &k, Default::default())
        .await
        .err()
        .ok_or_else(|| anyhow!("{}: {user} deleted", t.name))?;
    ensure!(
        e.kind() == ErrorKind::PermissionDenied,
        "{}: delete: {e}",
        t.name
    );
    Ok(())
}

async fn nochan_without_events_writes(t: &Target) -> anyhow::Result<()> {
    let cfg = t
        .as_user("nochan", "nochan-secret")
        .with_watch_events(false);
    let store = RedisStore::connect(cfg).await?;
    let k = Key::new("acl/nochan-no-events")?;
    store.set(&Context::new(), &k, "v").await?;
    ensure!(t.exists(k.as_str()).await?, "{}: write missing", t.name);
    Ok(())
}

type Trials = Vec<(&'static str, Box<dyn FnOnce() -> Result<(), String> + Send>)>;

fn trials_for(infra: &Arc<tokio::runtime::Runtime>, t: Target, names: [&'static str; 4]) -> Trials {
    let (t1, t2, t3, t4) = (t.clone(), t.clone(), t.clone(), t);
    vec![
        (
            names[0],
            common::trial(infra, move || async move { app_user_works(&t1).await }),
        ),
        (
            names[1],
            common::trial(infra, move || async move {
                refused_writes_nothing(&t2, "nochan", "nochan-secret").await
            }),
        ),
        (
            names[2],
            common::trial(infra, move || async move {
                refused_writes_nothing(&t3, "norecords", "norecords-secret").await
            }),
        ),
        (
            names[3],
            common::trial(infra, move || async move {
                nochan_without_events_writes(&t4).await
            }),
        ),
    ]
}

fn main() -> std::process::ExitCode {
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let started = infra.block_on(async {
        let single = RedisStandalone::start_with(RedisOptions {
            extra_args: user_args(),
            ..RedisOptions::default()
        })
        .await?;
        let cluster = RedisCluster::start_with(RedisClusterOptions {
            extra_args: user_args(),
            ..RedisClusterOptions::default()
        })
        .await?;
        anyhow::Ok((single, cluster))
    });
    let (single, cluster) = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the ACL topologies: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let (url, urls) = (single.url(), cluster.urls());
    let url2 = url.clone();
    let standalone = Target {
        name: "standalone",
        config: Arc::new(move || RedisConfig::standalone(url2.clone())),
        urls: vec![url],
        cluster: false,
    };
    let urls2 = urls.clone();
    let clustered = Target {
        name: "cluster",
        config: Arc::new(move || RedisConfig::cluster(urls2.clone())),
        urls,
        cluster: true,
    };
    let mut trials = trials_for(
        &infra,
        standalone,
        [
            "standalone_acl_user_writes_reads_and_watches",
            "standalone_user_without_channel_rights_writes_nothing",
            "standalone_user_without_record_rights_writes_nothing",
            "standalone_user_without_channel_rights_writes_with_events_off",
        ],
    );
    trials.extend(trials_for(
        &infra,
        clustered,
        [
            "cluster_acl_user_writes_reads_and_watches",
            "cluster_user_without_channel_rights_writes_nothing",
            "cluster_user_without_record_rights_writes_nothing",
            "cluster_user_without_channel_rights_writes_with_events_off",
        ],
    ));
    let code = common::run_trials(trials);
    infra.block_on(async move { drop((single, cluster)) });
    code
}
