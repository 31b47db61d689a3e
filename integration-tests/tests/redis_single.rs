//! Smoke tests of the single-node Redis topologies: pause (hang) fault, ACL
//! errors, TLS handshakes.

#![allow(clippy::unwrap_used)] // unwrap is fine in tests, including their helpers

use std::time::{Duration, Instant};

use integration_tests::{
    docker_available_or_skip, wrong_ca_pem, RedisAcl, RedisOptions, RedisStandalone, RedisTls,
};
use redis::{AsyncCommands, AsyncConnectionConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_makes_requests_time_out_then_recovers() {
    if !docker_available_or_skip().await {
        return;
    }
    let redis = RedisStandalone::start_with(RedisOptions {
        notify_keyspace_events: Some("Ex".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)));
    let client = redis.client().unwrap();
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap();
    let _: () = conn.set("k", "v").await.unwrap();
    let notify: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(notify[1].contains('x'), "{notify:?}");

    redis.node().pause().await.unwrap();
    let t0 = Instant::now();
    let r: redis::RedisResult<String> = conn.get("k").await;
    let waited = t0.elapsed();
    let err = r.expect_err("a paused server must not answer");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");
    assert!(
        waited >= Duration::from_millis(450),
        "failed fast: {waited:?}"
    );
    eprintln!("request to paused redis timed out after {waited:?}: {err}");

    redis.node().unpause().await.unwrap();
    let mut fresh = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .unwrap();
    let v: String = fresh.get("k").await.unwrap();
    assert_eq!(v, "v");
    // The old connection also works again.
    let v: String = conn.get("k").await.unwrap();
    assert_eq!(v, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_refuses_and_restarts() {
    if !docker_available_or_skip().await {
        return;
    }
    let redis = RedisStandalone::start().await.unwrap();
    redis.node().stop().await.unwrap();
    let r = redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    assert!(r.is_err(), "stopped server must refuse connections");
    redis.node().start().await.unwrap();
    redis.wait_ready().await.unwrap();
    // Host networking cannot be cut off: the engine refuses the disconnect.
    let e = redis.node().disconnect_network().await.unwrap_err();
    eprintln!("network disconnect with host networking: {e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_wrong_password_and_no_key_rights() {
    if !docker_available_or_skip().await {
        return;
    }
    let redis = RedisAcl::start().await.unwrap();

    let mut ok = redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = ok.set("acl:k", "v").await.unwrap();

    let wrong = redis::Client::open(redis.url_as(RedisAcl::USER, "not-the-password")).unwrap();
    let err = wrong.get_multiplexed_async_connection().await.unwrap_err();
    assert_eq!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{err:?}"
    );
    // The server's own answer to a wrong password is WRONGPASS.
    let anon = redis::Client::open(redis.url_no_auth()).unwrap();
    let mut an = anon.get_multiplexed_async_connection().await.unwrap();
    let err = redis::cmd("AUTH")
        .arg(RedisAcl::USER)
        .arg("not-the-password")
        .query_async::<()>(&mut an)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("WRONGPASS"), "{err:?}");

    let nokeys =
        redis::Client::open(redis.url_as(RedisAcl::NOKEYS_USER, RedisAcl::NOKEYS_PASSWORD))
            .unwrap();
    let mut nk = nokeys.get_multiplexed_async_connection().await.unwrap();
    let err = nk.get::<_, String>("acl:k").await.unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err:?}");

    let err = an.get::<_, String>("acl:k").await.unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_needs_the_generated_ca() {
    if !docker_available_or_skip().await {
        return;
    }
    let redis = RedisTls::start().await.unwrap();
    let mut conn = redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = conn.set("tls:k", "v").await.unwrap();
    let v: String = conn.get("tls:k").await.unwrap();
    assert_eq!(v, "v");

    let wrong = redis.client_with_ca(&wrong_ca_pem().unwrap()).unwrap();
    let err = wrong.get_multiplexed_async_connection().await.unwrap_err();
    eprintln!("handshake with the wrong CA failed as expected: {err}");
    let msg = format!("{err:?}").to_lowercase();
    assert!(
        msg.contains("certificate") || msg.contains("unknownissuer"),
        "{err:?}"
    );

    // Plain TCP to the TLS port does not get a RESP answer.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port())).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    })
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "plain text must not work on the TLS port"
    );
}
