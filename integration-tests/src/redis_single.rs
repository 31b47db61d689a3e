//! Single-node Redis topologies: plain ([`RedisStandalone`]), with ACL users
//! ([`RedisAcl`]) and TLS-only ([`RedisTls`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::{AsyncConnectionConfig, FromRedisValue, TlsCertificates};

use crate::docker::{free_port, redis_image, start_container, unique_suffix, ContainerSpec};
use crate::fault::Node;
use crate::tls::{install_crypto_provider, TlsMaterial};
use crate::wait::{poll_until, report_ready};

/// How long a Redis node may take to answer PING after its container starts.
pub(crate) const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout used by the harness's own readiness probes.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Options for single-node Redis topologies.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Value of `notify-keyspace-events` (e.g. `"KEA"`); `None` keeps Redis's
    /// default (disabled).
    pub notify_keyspace_events: Option<String>,
    /// Extra `redis-server` arguments, e.g. `["--maxmemory", "10mb"]`.
    pub extra_args: Vec<String>,
}

/// `redis-server` arguments common to every topology: loopback only, no
/// persistence, no protected mode.
pub(crate) fn base_args(port: u16, notify: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        // Replicas sync at once instead of after the default 5 s delay.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(n) = notify {
        args.extend(["--notify-keyspace-events".to_string(), n.to_string()]);
    }
    args.extend(extra.iter().cloned());
    args
}

/// Runs one command against one Redis node on a fresh connection, with the
/// harness's probe timeouts.
pub(crate) async fn query<T: FromRedisValue>(
    client: &redis::Client,
    cmd: &redis::Cmd,
) -> anyhow::Result<T> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    Ok(cmd.query_async(&mut conn).await?)
}

/// Waits until `client` answers PING.
pub(crate) async fn wait_ping(client: &redis::Client, what: &str) -> anyhow::Result<()> {
    poll_until(what, REDIS_READY_TIMEOUT, || async {
        let pong: String = query(client, &redis::cmd("PING")).await?;
        Ok((pong == "PONG").then_some(()))
    })
    .await
}

async fn start_redis_node(
    kind: &str,
    port: u16,
    args: Vec<String>,
    binds: Vec<(String, String)>,
) -> anyhow::Result<Node> {
    let name = format!("kvmap-it-{kind}-{port}-{}", unique_suffix());
    let container = start_container(ContainerSpec {
        image: redis_image(),
        entrypoint: "redis-server".into(),
        args,
        name: name.clone(),
        binds,
    })
    .await?;
    Ok(Node::new(container, name, port))
}

async fn fail_with_logs<T>(node: &Node, r: anyhow::Result<T>) -> anyhow::Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(e.context(format!(
            "container {} logs:\n{}",
            node.name(),
            node.logs(30).await
        ))),
    }
}

/// A single Redis server on `127.0.0.1:PORT` (no auth, no TLS).
#[derive(Debug)]
pub struct RedisStandalone {
    node: Node,
}

impl RedisStandalone {
    /// Starts Redis with default options and waits until it answers PING.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts Redis with `opts` and waits until it answers PING.
    pub async fn start_with(opts: RedisOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let port = free_port();
        let args = base_args(
            port,
            opts.notify_keyspace_events.as_deref(),
            &opts.extra_args,
        );
        let node = start_redis_node("redis", port, args, vec![]).await?;
        let this = Self { node };
        let r = this.wait_ready().await;
        fail_with_logs(&this.node, r).await?;
        report_ready("RedisStandalone", t0, &this.url());
        Ok(this)
    }

    /// Waits until the server answers PING (e.g. after [`Node::start`]).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_ping(&self.client()?, "redis PING").await
    }

    /// Client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// A `redis` crate client for [`RedisStandalone::url`].
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        redis::Client::open(self.url()).context("redis client")
    }

    /// The container, for fault injection.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

/// Redis with ACL users: the `default` user is disabled, [`RedisAcl::USER`]
/// may do everything, [`RedisAcl::NOKEYS_USER`] may run commands but access
/// no key (every key command fails with `NOPERM`).
#[derive(Debug)]
pub struct RedisAcl {
    node: Node,
}

impl RedisAcl {
    /// Full-rights user.
    pub const USER: &'static str = "kvmap";
    /// Password of [`RedisAcl::USER`].
    pub const PASSWORD: &'static str = "kvmap-secret";
    /// User with all commands but no key patterns.
    pub const NOKEYS_USER: &'static str = "nokeys";
    /// Password of [`RedisAcl::NOKEYS_USER`].
    pub const NOKEYS_PASSWORD: &'static str = "nokeys-secret";

    /// Starts Redis with the ACL users and waits until [`RedisAcl::USER`] can PING.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    /// Like [`RedisAcl::start`] with extra options.
    pub async fn start_with(opts: RedisOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let port = free_port();
        let mut args = base_args(
            port,
            opts.notify_keyspace_events.as_deref(),
            &opts.extra_args,
        );
        for user in [
            "default off".to_string(),
            format!("{} on >{} ~* &* +@all", Self::USER, Self::PASSWORD),
            format!("{} on >{} +@all", Self::NOKEYS_USER, Self::NOKEYS_PASSWORD),
        ] {
            args.push("--user".into());
            args.extend(user.split(' ').map(String::from));
        }
        let node = start_redis_node("redis-acl", port, args, vec![]).await?;
        let this = Self { node };
        let r = this.wait_ready().await;
        fail_with_logs(&this.node, r).await?;
        report_ready("RedisAcl", t0, &this.url());
        Ok(this)
    }

    /// Waits until [`RedisAcl::USER`] can PING.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_ping(&self.client()?, "redis (ACL) PING").await
    }

    /// Client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// URL with [`RedisAcl::USER`]'s credentials.
    pub fn url(&self) -> String {
        self.url_as(Self::USER, Self::PASSWORD)
    }

    /// URL without credentials (the disabled `default` user).
    pub fn url_no_auth(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// URL with arbitrary credentials (e.g. a wrong password).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.port())
    }

    /// Client authenticated as [`RedisAcl::USER`].
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        redis::Client::open(self.url()).context("redis client")
    }

    /// The container, for fault injection.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

/// Redis reachable only over TLS (`--port 0 --tls-port PORT`), with a server
/// certificate signed by a CA generated for this instance. Clients need not
/// present a certificate.
#[derive(Debug)]
pub struct RedisTls {
    node: Node,
    tls: TlsMaterial,
}

impl RedisTls {
    /// Generates certificates, starts Redis with TLS and waits until a client
    /// trusting [`RedisTls::ca_pem`] can PING.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    /// Like [`RedisTls::start`] with extra options.
    pub async fn start_with(opts: RedisOptions) -> anyhow::Result<Self> {
        install_crypto_provider();
        let t0 = Instant::now();
        let tls = TlsMaterial::generate()?;
        let port = free_port();
        let mut args = base_args(0, opts.notify_keyspace_events.as_deref(), &opts.extra_args);
        args.extend([
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".into(),
            format!("/tls/{}", TlsMaterial::CERT_FILE),
            "--tls-key-file".into(),
            format!("/tls/{}", TlsMaterial::KEY_FILE),
            "--tls-ca-cert-file".into(),
            format!("/tls/{}", TlsMaterial::CA_FILE),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
        let binds = vec![(tls.dir().display().to_string(), "/tls".to_string())];
        let node = start_redis_node("redis-tls", port, args, binds).await?;
        let this = Self { node, tls };
        let r = this.wait_ready().await;
        fail_with_logs(&this.node, r).await?;
        report_ready("RedisTls", t0, &this.url());
        Ok(this)
    }

    /// Waits until a client trusting the CA can PING.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_ping(&self.client()?, "redis (TLS) PING").await
    }

    /// TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }

    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        self.tls.ca_pem()
    }

    /// The generated certificate files.
    pub fn tls_material(&self) -> &TlsMaterial {
        &self.tls
    }

    /// Client trusting only the generated CA.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        self.client_with_ca(self.ca_pem())
    }

    /// Client trusting only `ca_pem` (pass [`crate::wrong_ca_pem`] for a
    /// handshake that must fail).
    pub fn client_with_ca(&self, ca_pem: &str) -> anyhow::Result<redis::Client> {
        install_crypto_provider();
        redis::Client::build_with_tls(
            self.url(),
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca_pem.as_bytes().to_vec()),
            },
        )
        .context("redis TLS client")
    }

    /// The container, for fault injection.
    pub fn node(&self) -> &Node {
        &self.node
    }
}
