//! Smoke tests of the Redis Cluster topology with the raw `redis` client.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests, including their helpers

use std::collections::HashMap;
use std::time::{Duration, Instant};

use integration_tests::redis_cluster::key_slot;
use integration_tests::{docker_available_or_skip, RedisCluster, RedisClusterOptions, Role};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_spread_over_all_three_masters() {
    if !docker_available_or_skip().await {
        return;
    }
    let cluster = RedisCluster::start_with(RedisClusterOptions {
        notify_keyspace_events: Some("KEA".into()),
        ..Default::default()
    })
    .await
    .unwrap();

    let nodes = cluster.nodes().await.unwrap();
    assert_eq!(nodes.len(), 6);
    assert_eq!(nodes.iter().filter(|n| n.role == Role::Master).count(), 3);
    assert_eq!(nodes.iter().filter(|n| n.role == Role::Replica).count(), 3);
    let masters = cluster.masters().await.unwrap();
    assert_eq!(masters.len(), 3);

    let client = cluster.client().unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let mut per_master: HashMap<u16, usize> = HashMap::new();
    for i in 0..60 {
        let key = format!("spread:{i}");
        let _: () = conn.set(&key, format!("v{i}")).await.unwrap();
        let owner = masters
            .iter()
            .find(|m| m.owns_slot(key_slot(key.as_bytes())))
            .expect("every slot is owned");
        *per_master.entry(owner.port).or_default() += 1;
    }
    for i in 0..60 {
        let v: String = conn.get(format!("spread:{i}")).await.unwrap();
        assert_eq!(v, format!("v{i}"));
    }
    assert_eq!(per_master.len(), 3, "keys hit every master: {per_master:?}");

    // Each master really holds its share (checked on the node itself).
    for m in &masters {
        let c = redis::Client::open(m.url()).unwrap();
        let mut direct = c.get_multiplexed_async_connection().await.unwrap();
        let n: usize = redis::cmd("DBSIZE").query_async(&mut direct).await.unwrap();
        assert_eq!(n, per_master[&m.port], "master {}", m.port);
        let cfg: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut direct)
            .await
            .unwrap();
        assert_eq!(cfg[0], "notify-keyspace-events");
        assert!(cfg[1].contains('K') && cfg[1].contains('E'), "{cfg:?}");
    }
    let m0 = cluster.master_for_key(b"spread:0").await.unwrap();
    assert!(m0.owns_slot(key_slot(b"spread:0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_master_promotes_its_replica() {
    if !docker_available_or_skip().await {
        return;
    }
    let cluster = RedisCluster::start().await.unwrap();
    let victim = cluster.masters().await.unwrap()[0].clone();
    let key = (0..)
        .map(|i| format!("failover:{i}"))
        .find(|k| victim.owns_slot(key_slot(k.as_bytes())))
        .unwrap();
    let client = cluster.client().unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let _: () = conn.set(&key, "before").await.unwrap();
    // Let the replica copy the write before its master dies.
    let replica_has_it = async {
        loop {
            let nodes = cluster.nodes().await.unwrap();
            let replica = nodes
                .iter()
                .find(|n| n.master_id.as_deref() == Some(victim.id.as_str()))
                .unwrap()
                .clone();
            let c = redis::Client::open(replica.url()).unwrap();
            let mut rc = c.get_multiplexed_async_connection().await.unwrap();
            let _: () = redis::cmd("READONLY").query_async(&mut rc).await.unwrap();
            let v: Option<String> = rc.get(&key).await.unwrap();
            if v.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), replica_has_it)
        .await
        .unwrap();

    let recovery = cluster.kill_master(0).await.unwrap();
    eprintln!("redis master failover: cluster_state:ok again after {recovery:?}");
    let promoted = cluster.master_for_key(key.as_bytes()).await.unwrap();
    assert_ne!(promoted.id, victim.id);

    // The cluster client follows the new topology (may need a few retries
    // while it refreshes its slot map).
    let t0 = Instant::now();
    let v: String = loop {
        let r: redis::RedisResult<String> = conn.get(&key).await;
        match r {
            Ok(v) => break v,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                eprintln!("retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cluster client did not recover: {e}"),
        }
    };
    assert_eq!(v, "before");
    let _: () = conn.set(&key, "after").await.unwrap();
    eprintln!(
        "client served by the new master {:?} after the failover",
        t0.elapsed()
    );

    // The old master comes back as a replica and the cluster is whole again.
    let idx = victim.index.unwrap();
    let rejoin = cluster.restart_node(idx).await.unwrap();
    eprintln!("old master rejoined as replica in {rejoin:?}");
    let back = cluster
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.id == victim.id)
        .unwrap();
    assert_eq!(back.role, Role::Replica);
}
