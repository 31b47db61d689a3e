//! The connection behind a store: a standalone `ConnectionManager` or a
//! cluster `ClusterConnection`, behind one enum, plus per-node clients for
//! pub/sub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvmap_core::{Error, ErrorKind, Op, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, RedisResult,
    ScriptInvocation, TlsCertificates, Value,
};

use crate::config::{redact_url, RedisConfig, Topology};
use crate::error::{map, own};
use crate::rebuild::SharedCluster;

/// A node address as announced by the server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct NodeAddr {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// One slot range of a cluster and who serves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) master: NodeAddr,
    pub(crate) replicas: Vec<NodeAddr>,
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(Arc<SharedCluster>),
}

/// The store's connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisClient {
    conn: Conn,
    /// The seed URLs (for the watcher's own cluster connection).
    urls: Vec<String>,
    /// The seed's connection info (credentials, TLS kind) for per-node clients.
    seed: ConnectionInfo,
    certs: Option<TlsCertificates>,
    op_timeout: Duration,
    connect_timeout: Duration,
    /// Direct connections to single nodes (replicas for stale reads,
    /// masters for replication probes), in `READONLY` mode.
    node_conns: Arc<tokio::sync::Mutex<HashMap<NodeAddr, MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Standalone(_) => "standalone",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisClient")
            .field("topology", &kind)
            .finish_non_exhaustive()
    }
}

/// Installs rustls's ring crypto provider once; "already installed" is fine.
fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn open_err(e: redis::RedisError, what: &str) -> Error {
    let err = map(e, Op::Open, None);
    let detail = match err.detail() {
        Some(d) => format!("{what}: {d}"),
        None => what.to_owned(),
    };
    err.with_detail(detail)
}

/// [`open_err`] for a failed connect. A plain connection that the server
/// drops at once is typically a port that serves only TLS, so the message
/// says so.
fn connect_err(e: redis::RedisError, seed: &ConnectionInfo) -> Error {
    let plain = matches!(seed.addr(), ConnectionAddr::Tcp(..));
    if plain && e.is_connection_dropped() {
        open_err(
            e,
            "connect: the server dropped the connection (a server that serves only tls needs rediss:// urls)",
        )
    } else {
        open_err(e, "connect")
    }
}

impl RedisClient {
    /// Connects and authenticates (a wrong password fails here).
    pub(crate) async fn connect(cfg: &RedisConfig) -> Result<Self> {
        cfg.validate()?;
        install_crypto_provider();
        let certs = load_certs(cfg)?;
        let first = cfg.urls.first().ok_or_else(|| {
            own(
                ErrorKind::InvalidArgument,
                Op::Open,
                None,
                "no redis url given",
            )
        })?;
        let mut seed = first
            .as_str()
            .into_connection_info()
            .map_err(|e| open_err(e, &format!("bad url {}", redact_url(first))))?;
        let mut settings = seed.redis_settings().clone();
        if let Some(u) = &cfg.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &cfg.password {
            settings = settings.set_password(p);
        }
        seed = seed.set_redis_settings(settings);
        let conn = match cfg.topology {
            Topology::Standalone => {
                let client =
                    node_client(&seed, certs.as_ref()).map_err(|e| open_err(e, "client"))?;
                let mcfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.connect_timeout))
                    .set_response_timeout(Some(cfg.op_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let fut = ConnectionManager::new_with_config(client, mcfg);
                let cm = tokio::time::timeout(cfg.connect_timeout.saturating_mul(2), fut)
                    .await
                    .map_err(|_| connect_timeout())?
                    .map_err(|e| connect_err(e, &seed))?;
                Conn::Standalone(cm)
            }
            Topology::Cluster => {
                let b = cluster_builder(&cfg.urls, &seed, certs.as_ref(), cfg)
                    .retries(6)
                    .min_retry_wait(50)
                    .max_retry_wait(1000);
                let client = b.build().map_err(|e| open_err(e, "cluster client"))?;
                let fut = client.get_async_connection();
                let cc = match tokio::time::timeout(cfg.connect_timeout.saturating_mul(2), fut)
                    .await
                    .map_err(|_| connect_timeout())?
                {
                    Ok(cc) => cc,
                    Err(e) => {
                        return Err(diagnose_cluster_connect(&seed, certs.as_ref(), cfg)
                            .await
                            .unwrap_or_else(|| connect_err(e, &seed)))
                    }
                };
                Conn::Cluster(Arc::new(SharedCluster::new(
                    cc,
                    client,
                    cfg.connect_timeout,
                )))
            }
        };
        let this = Self {
            conn,
            urls: cfg.urls.clone(),
            seed,
            certs,
            op_timeout: cfg.op_timeout,
            connect_timeout: cfg.connect_timeout,
            node_conns: Arc::default(),
        };
        // Authentication and reachability are checked now, not at first use.
        this.query::<String>(&redis::cmd("PING"))
            .await
            .map_err(|e| open_err(e, "ping"))?;
        Ok(this)
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// How many times the cluster connection was replaced after it
    /// stopped answering (see `rebuild`); 0 for a standalone server.
    pub(crate) fn rebuilds(&self) -> u64 {
        match &self.conn {
            Conn::Cluster(c) => c.rebuilds(),
            Conn::Standalone(_) => 0,
        }
    }

    /// Runs a command (routed by its key in a cluster).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match &self.conn {
            Conn::Standalone(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                let r = cmd.query_async(&mut c.get()).await;
                c.observe(&r);
                r
            }
        }
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT).
    pub(crate) async fn invoke(&self, inv: &ScriptInvocation<'_>) -> RedisResult<Value> {
        match &self.conn {
            Conn::Standalone(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                let r = inv.invoke_async(&mut c.get()).await;
                c.observe(&r);
                r
            }
        }
    }

    /// Runs a command on one node (by address); standalone: on the server.
    pub(crate) async fn query_node<T: FromRedisValue>(
        &self,
        node: &NodeAddr,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match &self.conn {
            Conn::Standalone(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                });
                let r = c.get().route_command(cmd, routing).await;
                c.observe(&r);
                T::from_redis_value(r?).map_err(Into::into)
            }
        }
    }

    /// Runs a pipeline on one node (standalone: on the server); with
    /// `ignore_errors` set, per-command errors come back as values.
    pub(crate) async fn pipeline(
        &self,
        pipe: &redis::Pipeline,
        node: Option<&NodeAddr>,
    ) -> RedisResult<Vec<Value>> {
        match (&self.conn, node) {
            (Conn::Standalone(c), _) => pipe.query_async(&mut c.clone()).await,
            (Conn::Cluster(c), Some(node)) => {
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                };
                let r = c
                    .get()
                    .route_pipeline(pipe.clone(), 0, pipe.len(), route)
                    .await;
                c.observe(&r);
                r
            }
            (Conn::Cluster(c), None) => {
                let r = pipe.query_async(&mut c.get()).await;
                c.observe(&r);
                r
            }
        }
    }

    /// Runs a pipeline on the master serving `skey`'s slot (standalone: on
    /// the server), all of it on one connection. Redirects and resends
    /// after a dropped connection apply to the whole pipeline.
    pub(crate) async fn pipeline_on_key(
        &self,
        pipe: &redis::Pipeline,
        skey: &str,
    ) -> RedisResult<Vec<Value>> {
        match &self.conn {
            Conn::Standalone(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    skey.as_bytes(),
                    SlotAddr::Master,
                ));
                let r = c
                    .get()
                    .route_pipeline(pipe.clone(), 0, pipe.len(), route)
                    .await;
                c.observe(&r);
                r
            }
        }
    }

    /// Runs a command on the master serving `skey`'s slot (standalone: on
    /// the server), whatever keys the command names.
    pub(crate) async fn query_on_key<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        skey: &str,
    ) -> RedisResult<T> {
        match &self.conn {
            Conn::Standalone(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(skey.as_bytes(), SlotAddr::Master),
                ));
                let r = c.get().route_command(cmd.clone(), routing).await;
                c.observe(&r);
                T::from_redis_value(r?).map_err(Into::into)
            }
        }
    }

    /// The slot map (cluster), or one range served by the seed (standalone).
    pub(crate) async fn slots(&self) -> RedisResult<Vec<SlotRange>> {
        if !self.is_cluster() {
            return Ok(vec![SlotRange {
                start: 0,
                end: 16383,
                master: self.seed_addr(),
                replicas: vec![],
            }]);
        }
        let v: Value = self.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut out = parse_slots(&v);
        out.sort();
        Ok(out)
    }

    fn seed_addr(&self) -> NodeAddr {
        match self.seed.addr() {
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => NodeAddr {
                host: h.clone(),
                port: *p,
            },
            _ => NodeAddr {
                host: "unix".into(),
                port: 0,
            },
        }
    }

    fn node_info(&self, node: &NodeAddr) -> ConnectionInfo {
        if !self.is_cluster() {
            return self.seed.clone();
        }
        let addr = match self.seed.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: node.host.clone(),
                port: node.port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(node.host.clone(), node.port),
        };
        self.seed.clone().set_addr(addr)
    }

    /// A dedicated pub/sub connection to one node, with the store's
    /// credentials and TLS settings.
    pub(crate) async fn pubsub(&self, node: &NodeAddr) -> RedisResult<redis::aio::PubSub> {
        let client = node_client(&self.node_info(node), self.certs.as_ref())?;
        let fut = client.get_async_pubsub();
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "pubsub connect timed out",
            )
            .into()),
        }
    }

    /// A cluster connection of its own for sharded pub/sub (RESP3): every
    /// push — shard channel messages, subscription confirmations, the
    /// library's `Disconnection` notice — goes to `push`. Standalone:
    /// `Ok(None)`.
    pub(crate) async fn sharded_subscriber(
        &self,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<Option<ClusterConnection>> {
        if !self.is_cluster() {
            return Ok(None);
        }
        let client = cluster_builder(&self.urls, &self.seed, self.certs.as_ref(), self.timeouts())
            .retries(0)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()?;
        let fut = client.get_async_connection();
        match tokio::time::timeout(self.connect_timeout.saturating_mul(2), fut).await {
            Ok(r) => r.map(Some),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "sharded subscriber connect timed out",
            )
            .into()),
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
        }
    }

    /// Runs one command on a fresh direct connection to `node` (any role,
    /// replicas included).
    pub(crate) async fn direct_query<T: FromRedisValue>(
        &self,
        node: &NodeAddr,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        let client = node_client(&self.node_info(node), self.certs.as_ref())?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        cmd.query_async(&mut conn).await
    }

    /// Runs a command on a cached direct connection to `node`, opened in
    /// `READONLY` mode (so a replica serves reads of its master's slots).
    pub(crate) async fn node_query<T: FromRedisValue>(
        &self,
        node: &NodeAddr,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        let cached = self.node_conns.lock().await.get(node).cloned();
        let mut conn = match cached {
            Some(c) => c,
            None => {
                let client = node_client(&self.node_info(node), self.certs.as_ref())?;
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.op_timeout));
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                if self.is_cluster() {
                    let _: () = redis::cmd("READONLY").query_async(&mut c).await?;
                }
                self.node_conns.lock().await.insert(node.clone(), c.clone());
                c
            }
        };
        let r = cmd.query_async(&mut conn).await;
        if r.as_ref()
            .is_err_and(|e| e.is_io_error() || e.is_unrecoverable_error())
        {
            self.node_conns.lock().await.remove(node);
        }
        r
    }

    /// The database number (0 in a cluster).
    pub(crate) fn db(&self) -> i64 {
        self.seed.redis_settings().db()
    }
}

/// Why a cluster connection failed, when the cluster client only says
/// "connection lost": a direct connection to the first seed shows a wrong
/// password or user (`Unauthenticated`, `PermissionDenied`) or a TLS
/// mismatch as what it is. `None` when the seed answers or fails for
/// another reason (the original error is the better one then).
async fn diagnose_cluster_connect(
    seed: &ConnectionInfo,
    certs: Option<&TlsCertificates>,
    cfg: &RedisConfig,
) -> Option<Error> {
    let client = node_client(seed, certs).ok()?;
    let acfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.op_timeout));
    let probe = async {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&acfg)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(cfg.connect_timeout.saturating_mul(2), probe).await {
        Ok(Err(e)) => {
            let err = open_err(e, "connect (seed checked directly)");
            matches!(
                err.kind(),
                ErrorKind::Unauthenticated | ErrorKind::PermissionDenied
            )
            .then_some(err)
        }
        _ => None,
    }
}

/// The timeouts a cluster client is built with.
struct Timeouts {
    connect_timeout: Duration,
    op_timeout: Duration,
}

impl From<&RedisConfig> for Timeouts {
    fn from(cfg: &RedisConfig) -> Self {
        Self {
            connect_timeout: cfg.connect_timeout,
            op_timeout: cfg.op_timeout,
        }
    }
}

/// A cluster client builder with the store's seeds, credentials, TLS and
/// timeouts.
fn cluster_builder(
    urls: &[String],
    seed: &ConnectionInfo,
    certs: Option<&TlsCertificates>,
    timeouts: impl Into<Timeouts>,
) -> redis::cluster::ClusterClientBuilder {
    let t = timeouts.into();
    let mut b = ClusterClient::builder(urls.to_vec())
        .connection_timeout(t.connect_timeout)
        .response_timeout(t.op_timeout);
    if let Some(u) = seed.redis_settings().username() {
        b = b.username(u);
    }
    if let Some(p) = seed.redis_settings().password() {
        b = b.password(p);
    }
    if let Some(c) = certs {
        b = b.certs(clone_certs(c));
    }
    b
}

/// `WAIT replicas timeout-ms`.
pub(crate) fn wait_cmd(replicas: u32, timeout: Duration) -> Cmd {
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas)
        .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    cmd
}

fn connect_timeout() -> Error {
    own(ErrorKind::Unavailable, Op::Open, None, "connect timed out")
}

fn clone_certs(c: &TlsCertificates) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: c.root_cert.clone(),
    }
}

fn node_client(info: &ConnectionInfo, certs: Option<&TlsCertificates>) -> RedisResult<Client> {
    match (info.addr(), certs) {
        (ConnectionAddr::TcpTls { .. }, Some(c)) => {
            Client::build_with_tls(info.clone(), clone_certs(c))
        }
        _ => Client::open(info.clone()),
    }
}

fn load_certs(cfg: &RedisConfig) -> Result<Option<TlsCertificates>> {
    let pem = match (&cfg.tls_ca_pem, &cfg.tls_ca_file) {
        (Some(p), _) => p.clone().into_bytes(),
        (None, Some(path)) => std::fs::read(path).map_err(|e| {
            own(
                ErrorKind::InvalidArgument,
                Op::Open,
                None,
                format!("cannot read tls ca file {}", path.display()),
            )
            .with_source(e)
        })?,
        (None, None) => return Ok(None),
    };
    if !cfg.is_tls() {
        return Err(own(
            ErrorKind::InvalidArgument,
            Op::Open,
            None,
            "a tls ca is configured but no url is rediss://",
        ));
    }
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

fn node_of(v: &Value) -> Option<NodeAddr> {
    let Value::Array(a) = v else { return None };
    let host = match a.first()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let port = match a.get(1)? {
        Value::Int(p) => u16::try_from(*p).ok()?,
        _ => return None,
    };
    Some(NodeAddr { host, port })
}

/// Parses a `CLUSTER SLOTS` reply; malformed rows are skipped.
pub(crate) fn parse_slots(v: &Value) -> Vec<SlotRange> {
    let Value::Array(rows) = v else { return vec![] };
    rows.iter()
        .filter_map(|row| {
            let Value::Array(f) = row else { return None };
            let num = |i: usize| match f.get(i) {
                Some(Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            Some(SlotRange {
                start: num(0)?,
                end: num(1)?,
                master: node_of(f.get(2)?)?,
                replicas: f.iter().skip(3).filter_map(node_of).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_slots() {
        let node = |p: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Nil,
        ]);
        let s = parse_slots(&v);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].master.port, 7000);
        assert_eq!(s[0].replicas[0].port, 7003);
    }
}
