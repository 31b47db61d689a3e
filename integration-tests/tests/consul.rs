//! Smoke tests of the Consul topologies over plain HTTP.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests, including their helpers

use std::time::{Duration, Instant};

use integration_tests::consul::http_client;
use integration_tests::{docker_available_or_skip, ConsulAcl, ConsulCluster, ConsulDev};

async fn kv_index(c: &reqwest::Client, base: &str, key: &str) -> u64 {
    let r = c.get(format!("{base}/v1/kv/{key}")).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_get_and_blocking_query() {
    if !docker_available_or_skip().await {
        return;
    }
    let consul = ConsulDev::start().await.unwrap();
    let base = consul.http_addr();
    let c = http_client();

    let ok: bool = c
        .put(format!("{base}/v1/kv/smoke/a"))
        .body("one")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ok);
    let raw = c
        .get(format!("{base}/v1/kv/smoke/a?raw"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw, "one");

    let index = kv_index(&c, &base, "smoke/a").await;
    let waiter = {
        let (c, base) = (c.clone(), base.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c
                .get(format!("{base}/v1/kv/smoke/a?raw&index={index}&wait=5s"))
                .send()
                .await
                .unwrap();
            let new_index: u64 = r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            (t0.elapsed(), new_index, r.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok: bool = c
        .put(format!("{base}/v1/kv/smoke/a"))
        .body("two")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ok);
    let (took, new_index, body) = waiter.await.unwrap();
    eprintln!("blocking query returned after {took:?} with index {new_index}");
    assert_eq!(body, "two");
    assert!(new_index > index);
    assert!(
        took >= Duration::from_millis(400),
        "did not block: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "did not wake on change: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_agent_makes_requests_time_out() {
    if !docker_available_or_skip().await {
        return;
    }
    let consul = ConsulDev::start().await.unwrap();
    let url = format!("{}/v1/kv/p?raw", consul.http_addr());
    let c = http_client();
    consul.node().pause().await.unwrap();
    let t0 = Instant::now();
    let err = c
        .get(&url)
        .timeout(Duration::from_millis(800))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(t0.elapsed() >= Duration::from_millis(700));
    consul.node().unpause().await.unwrap();
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND); // answers again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_wrong_token_is_denied_master_token_works() {
    if !docker_available_or_skip().await {
        return;
    }
    let consul = ConsulAcl::start().await.unwrap();
    let url = format!("{}/v1/kv/acl/k", consul.http_addr());
    let c = http_client();

    let wrong = c
        .put(&url)
        .header("X-Consul-Token", "00000000-0000-4000-a000-000000000000")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), reqwest::StatusCode::FORBIDDEN);
    let anonymous = c.put(&url).body("x").send().await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::FORBIDDEN);

    let put = c
        .put(&url)
        .header("X-Consul-Token", consul.master_token())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::OK);
    let got = c
        .get(format!("{url}?raw"))
        .header("X-Consul-Token", consul.master_token())
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "x");
    // Reads without a token are denied too (default policy deny): 404/403.
    let anon_get = c.get(format!("{url}?raw")).send().await.unwrap();
    assert!(!anon_get.status().is_success(), "{}", anon_get.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_elects_a_new_one() {
    if !docker_available_or_skip().await {
        return;
    }
    let cluster = ConsulCluster::start().await.unwrap();
    let c = http_client();
    let old = cluster.leader().await.unwrap();
    let follower = (old + 1) % 3;
    let put = c
        .put(format!("{}/v1/kv/ha/k", cluster.http_addr(follower)))
        .body("before")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());

    let took = cluster.stop_leader().await.unwrap();
    eprintln!("consul leader failover: new leader after {took:?}");
    let new = cluster.leader().await.unwrap();
    assert_ne!(new, old);

    let put = c
        .put(format!("{}/v1/kv/ha/k", cluster.http_addr(follower)))
        .body("after")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let v = c
        .get(format!("{}/v1/kv/ha/k?raw", cluster.http_addr(new)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(v, "after");

    let back = cluster.restart_server(old).await.unwrap();
    eprintln!("old leader rejoined, 3 peers agree after {back:?}");
}
