//! Redis Cluster of 3 masters + 3 replicas on host networking.
//!
//! Node `i` listens on `127.0.0.1:ports[i]` (cluster bus `ports[i] + 10000`)
//! and announces `127.0.0.1`, so the addresses in `CLUSTER SLOTS` / `MOVED`
//! replies are reachable from the test process. The cluster is created with
//! `redis-cli --cluster create ... --cluster-replicas 1` run inside node 0.
//!
//! With [`RedisClusterOptions::tls`] every node serves clients, the cluster
//! bus and replication over TLS only (`--port 0 --tls-port PORT
//! --tls-cluster yes --tls-replication yes`), with a server certificate
//! signed by a CA generated for this cluster ([`RedisCluster::ca_pem`]);
//! clients need not present a certificate.

use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use redis::cluster::ClusterClient;

use crate::docker::{
    free_port_with_bus, redis_image, start_container, unique_suffix, ContainerSpec,
};
use crate::fault::Node;
use crate::redis_single::{base_args, query, wait_ping};
use crate::tls::{install_crypto_provider, TlsMaterial};
use crate::wait::{poll_until, report_ready};

/// Number of hash slots in Redis Cluster.
pub const SLOTS: u16 = 16384;
const MASTERS: usize = 3;
const REPLICAS_PER_MASTER: usize = 1;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`RedisCluster::start_with`].
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    /// Value of `notify-keyspace-events` on every node (e.g. `"KEA"`).
    pub notify_keyspace_events: Option<String>,
    /// `cluster-node-timeout`: how long a master must be unreachable before a
    /// failover starts. Default 2 s (Redis's default is 15 s).
    pub node_timeout: Duration,
    /// Extra `redis-server` arguments for every node.
    pub extra_args: Vec<String>,
    /// TLS only, for clients, the cluster bus and replication (see the
    /// module docs).
    pub tls: bool,
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        Self {
            notify_keyspace_events: None,
            node_timeout: Duration::from_secs(2),
            extra_args: Vec::new(),
            tls: false,
        }
    }
}

/// Role of a cluster node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Owns slots.
    Master,
    /// Replicates a master.
    Replica,
}

/// One line of `CLUSTER NODES`, as seen by some node.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// Cluster node id (40 hex chars).
    pub id: String,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Index of the container in [`RedisCluster::node`] (`None` if unknown).
    pub index: Option<usize>,
    /// Current role.
    pub role: Role,
    /// For a replica, the id of its master.
    pub master_id: Option<String>,
    /// Slot ranges owned (masters only).
    pub slots: Vec<RangeInclusive<u16>>,
    /// Flagged `fail` or `fail?` by the observing node.
    pub failing: bool,
    /// Link state `connected` from the observing node.
    pub connected: bool,
}

impl ClusterNode {
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether this node owns `slot`.
    pub fn owns_slot(&self, slot: u16) -> bool {
        self.slots.iter().any(|r| r.contains(&slot))
    }
}

/// A running 3-master/3-replica Redis Cluster; containers are removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    opts: RedisClusterOptions,
    tls: Option<TlsMaterial>,
}

impl RedisCluster {
    /// Starts the cluster with default options and waits until it is healthy
    /// (see [`RedisCluster::wait_healthy`]).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisClusterOptions::default()).await
    }

    /// Starts the cluster with `opts` and waits until it is healthy.
    pub async fn start_with(opts: RedisClusterOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let tls = if opts.tls {
            install_crypto_provider();
            Some(TlsMaterial::generate()?)
        } else {
            None
        };
        let binds: Vec<(String, String)> = tls
            .iter()
            .map(|t| (t.dir().display().to_string(), "/tls".to_string()))
            .collect();
        let count = MASTERS * (1 + REPLICAS_PER_MASTER);
        let ports: Vec<u16> = (0..count).map(|_| free_port_with_bus()).collect();
        let suffix = unique_suffix();
        let starts = ports.iter().enumerate().map(|(i, &port)| {
            let mut args = base_args(
                if opts.tls { 0 } else { port },
                opts.notify_keyspace_events.as_deref(),
                &opts.extra_args,
            );
            if opts.tls {
                args.extend(tls_args(port));
            }
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    &opts.node_timeout.as_millis().to_string(),
                    "--cluster-announce-ip",
                    "127.0.0.1",
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            let name = format!("kvmap-it-rcluster-{i}-{port}-{suffix}");
            let binds = binds.clone();
            async move {
                let c = start_container(ContainerSpec {
                    image: redis_image(),
                    entrypoint: "redis-server".into(),
                    args,
                    name: name.clone(),
                    binds,
                })
                .await?;
                anyhow::Ok(Node::new(c, name, port))
            }
        });
        // Start sequentially-joined futures; any error drops (removes) the
        // containers already started.
        let results = futures::future::join_all(starts).await;
        let mut nodes = Vec::with_capacity(count);
        let mut first_err = None;
        for r in results {
            match r {
                Ok(n) => nodes.push(n),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        let this = Self { nodes, opts, tls };
        if let Some(e) = first_err {
            return Err(e);
        }
        if let Err(e) = this.create().await {
            return Err(this.with_logs(e).await);
        }
        report_ready(
            "RedisCluster (3 masters + 3 replicas)",
            t0,
            &format!("ports {:?}", this.ports()),
        );
        Ok(this)
    }

    async fn create(&self) -> anyhow::Result<()> {
        for n in &self.nodes {
            wait_ping(&self.node_client(n.port())?, &format!("PING {}", n.name())).await?;
        }
        let mut cmd: Vec<String> = vec!["redis-cli".into()];
        if self.tls.is_some() {
            cmd.extend(["--tls", "--cacert", "/tls/ca.crt"].map(String::from));
        }
        cmd.extend(["--cluster", "create"].map(String::from));
        cmd.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        cmd.extend(
            ["--cluster-replicas", "1", "--cluster-yes"]
                .iter()
                .map(|s| s.to_string()),
        );
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let (code, out, err) = self.nodes[0].exec(&argv).await?;
        ensure!(
            code == 0,
            "redis-cli --cluster create failed (exit {code}):\n{out}\n{err}"
        );
        self.wait_healthy(READY_TIMEOUT).await
    }

    async fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let mut msg = String::new();
        for n in &self.nodes {
            msg.push_str(&format!("--- {} ---\n{}\n", n.name(), n.logs(15).await));
        }
        e.context(format!("cluster container logs:\n{msg}"))
    }

    /// Client ports of the six nodes, by container index.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Node::port).collect()
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` with TLS) of every node (seed
    /// list for cluster clients).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.ports()
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect()
    }

    /// With TLS: the CA certificate (PEM) that signed the nodes'
    /// certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(TlsMaterial::ca_pem)
    }

    /// A client of the node on `port` (trusting the cluster's CA with TLS).
    fn node_client(&self, port: u16) -> anyhow::Result<redis::Client> {
        match &self.tls {
            None => {
                redis::Client::open(format!("redis://127.0.0.1:{port}")).context("redis client")
            }
            Some(t) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(t.ca_pem().as_bytes().to_vec()),
                },
            )
            .context("redis tls client"),
        }
    }

    /// Number of containers (6).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (a cluster has nodes); present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Container `i`, for fault injection ([`Node::pause`], [`Node::kill`], ...).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &RedisClusterOptions {
        &self.opts
    }

    /// A `redis` cluster client seeded with every node.
    pub fn client(&self) -> anyhow::Result<ClusterClient> {
        let mut b = ClusterClient::builder(self.urls())
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2));
        if let Some(t) = &self.tls {
            b = b.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(t.ca_pem().as_bytes().to_vec()),
            });
        }
        b.build().context("cluster client")
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// `CLUSTER NODES` as seen by container `observer`.
    pub async fn nodes_seen_by(&self, observer: usize) -> anyhow::Result<Vec<ClusterNode>> {
        let text: String = query(
            &self.node_client(self.nodes[observer].port())?,
            redis::cmd("CLUSTER").arg("NODES"),
        )
        .await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut n = parse_cluster_nodes_line(l)?;
                n.index = self.index_of_port(n.port);
                Ok(n)
            })
            .collect()
    }

    /// The node list with roles, as seen by the first node that answers.
    pub async fn nodes(&self) -> anyhow::Result<Vec<ClusterNode>> {
        let mut last = anyhow!("no node answered");
        for i in 0..self.nodes.len() {
            match self.nodes_seen_by(i).await {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Current masters that own slots, sorted by their lowest slot (so
    /// `masters()[0]` owns slot 0).
    pub async fn masters(&self) -> anyhow::Result<Vec<ClusterNode>> {
        let mut m: Vec<ClusterNode> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.role == Role::Master && !n.slots.is_empty() && !n.failing)
            .collect();
        m.sort_by_key(|n| n.slots.iter().map(|r| *r.start()).min());
        Ok(m)
    }

    /// The master currently serving `slot`.
    pub async fn master_for_slot(&self, slot: u16) -> anyhow::Result<ClusterNode> {
        self.masters()
            .await?
            .into_iter()
            .find(|n| n.owns_slot(slot))
            .ok_or_else(|| anyhow!("no live master owns slot {slot}"))
    }

    /// The master currently serving `key`.
    pub async fn master_for_key(&self, key: &[u8]) -> anyhow::Result<ClusterNode> {
        self.master_for_slot(key_slot(key)).await
    }

    /// Waits until the cluster is fully healthy: on every running node
    /// `cluster_state:ok`, all 16384 slots served by 3 masters that each have
    /// a replica, and `master_link_status:up` on every replica.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        poll_until("redis cluster healthy", timeout, || async {
            self.check_healthy(true).await.map(|()| Some(()))
        })
        .await
    }

    /// Waits until every running node reports `cluster_state:ok` and all
    /// slots are served by non-failing masters (replicas not required, e.g.
    /// after a failover).
    pub async fn wait_state_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        poll_until("redis cluster_state:ok", timeout, || async {
            self.check_healthy(false).await.map(|()| Some(()))
        })
        .await
    }

    async fn running_indices(&self) -> anyhow::Result<Vec<usize>> {
        let mut v = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.is_running().await? {
                v.push(i);
            }
        }
        Ok(v)
    }

    async fn check_healthy(&self, full: bool) -> anyhow::Result<()> {
        let running = self.running_indices().await?;
        for &i in &running {
            let client = self.node_client(self.nodes[i].port())?;
            let info: String = query(&client, redis::cmd("CLUSTER").arg("INFO")).await?;
            ensure!(
                info.contains("cluster_state:ok"),
                "node {i} reports {}",
                info.lines().next().unwrap_or_default()
            );
            let view = self.nodes_seen_by(i).await?;
            check_view(&view, full).with_context(|| format!("as seen by node {i}"))?;
            let me = view
                .iter()
                .find(|n| n.index == Some(i))
                .ok_or_else(|| anyhow!("node {i} missing from its own view"))?;
            if me.role == Role::Replica {
                let repl: String = query(&client, redis::cmd("INFO").arg("replication")).await?;
                ensure!(
                    repl.contains("master_link_status:up"),
                    "replica {i}: master link not up"
                );
            }
        }
        Ok(())
    }

    /// Crashes (SIGKILL) the `i`-th master (`masters()[i]`, by lowest slot)
    /// and waits until its replica has been promoted and every surviving node
    /// reports `cluster_state:ok` again. Returns the time from the kill to
    /// that point.
    pub async fn kill_master(&self, i: usize) -> anyhow::Result<Duration> {
        let masters = self.masters().await?;
        let victim = masters
            .get(i)
            .ok_or_else(|| anyhow!("no master #{i} (have {})", masters.len()))?
            .clone();
        let idx = victim
            .index
            .ok_or_else(|| anyhow!("master {} is not one of our containers", victim.port))?;
        let t0 = Instant::now();
        self.nodes[idx].kill().await?;
        let timeout = self.opts.node_timeout * 5 + Duration::from_secs(30);
        let victim_slots = victim.slots.clone();
        let res = poll_until("replica promotion", timeout, || async {
            let view = self.nodes().await?;
            for r in &victim_slots {
                let owner = view
                    .iter()
                    .find(|n| n.owns_slot(*r.start()))
                    .ok_or_else(|| anyhow!("slot {} unowned", r.start()))?;
                ensure!(
                    owner.id != victim.id,
                    "slot {} still on killed master",
                    r.start()
                );
                ensure!(
                    owner.role == Role::Master && !owner.failing,
                    "new owner not a live master"
                );
            }
            self.check_healthy(false).await?;
            Ok(Some(()))
        })
        .await;
        res?;
        let took = t0.elapsed();
        let promoted = self.master_for_slot(*victim_slots[0].start()).await?;
        eprintln!(
            "[kvmap-it] RedisCluster: killed master #{i} (container {idx}, port {}), replica on port {} promoted; cluster_state:ok after {:.2}s",
            victim.port,
            promoted.port,
            took.as_secs_f64()
        );
        Ok(took)
    }

    /// Starts container `i` again (after [`Node::stop`]/[`Node::kill`]) and
    /// waits until the cluster is fully healthy (a former master rejoins as a
    /// replica). Returns the time taken.
    pub async fn restart_node(&self, i: usize) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.nodes[i].start().await?;
        wait_ping(
            &self.node_client(self.nodes[i].port())?,
            "restarted node PING",
        )
        .await?;
        self.wait_healthy(READY_TIMEOUT).await?;
        Ok(t0.elapsed())
    }
}

/// `redis-server` arguments of a TLS-only cluster node on `port`.
fn tls_args(port: u16) -> Vec<String> {
    [
        "--tls-port",
        &port.to_string(),
        "--tls-cluster",
        "yes",
        "--tls-replication",
        "yes",
        "--tls-cert-file",
        &format!("/tls/{}", TlsMaterial::CERT_FILE),
        "--tls-key-file",
        &format!("/tls/{}", TlsMaterial::KEY_FILE),
        "--tls-ca-cert-file",
        &format!("/tls/{}", TlsMaterial::CA_FILE),
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn check_view(view: &[ClusterNode], full: bool) -> anyhow::Result<()> {
    let masters: Vec<&ClusterNode> = view
        .iter()
        .filter(|n| n.role == Role::Master && !n.slots.is_empty())
        .collect();
    ensure!(
        masters.len() == MASTERS,
        "{} slot-owning masters",
        masters.len()
    );
    let mut covered = BTreeSet::new();
    for m in &masters {
        ensure!(!m.failing, "master {} flagged failing", m.port);
        for r in &m.slots {
            covered.extend(r.clone());
        }
    }
    ensure!(
        covered.len() == usize::from(SLOTS),
        "{} of {SLOTS} slots covered",
        covered.len()
    );
    if full {
        let mut replicas: HashMap<&str, usize> = HashMap::new();
        for n in view
            .iter()
            .filter(|n| n.role == Role::Replica && !n.failing)
        {
            if let Some(m) = &n.master_id {
                *replicas.entry(m.as_str()).or_default() += 1;
            }
        }
        for m in &masters {
            ensure!(
                replicas.get(m.id.as_str()).copied().unwrap_or(0) >= REPLICAS_PER_MASTER,
                "master {} has no replica",
                m.port
            );
        }
    }
    Ok(())
}

/// Parses one `CLUSTER NODES` line.
fn parse_cluster_nodes_line(line: &str) -> anyhow::Result<ClusterNode> {
    let f: Vec<&str> = line.split_whitespace().collect();
    ensure!(f.len() >= 8, "short CLUSTER NODES line: {line}");
    // ip:port@cport[,hostname]
    let addr = f[1].split(['@', ',']).next().unwrap_or_default();
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("bad address in {line}"))?;
    let flags: Vec<&str> = f[2].split(',').collect();
    let role = if flags.contains(&"master") {
        Role::Master
    } else if flags.contains(&"slave") {
        Role::Replica
    } else {
        bail!("node without role in {line}")
    };
    let master_id = (f[3] != "-").then(|| f[3].to_string());
    let mut slots = Vec::new();
    for s in &f[8..] {
        if s.starts_with('[') {
            continue; // migrating/importing marker
        }
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        slots.push(a.parse()?..=b.parse()?);
    }
    Ok(ClusterNode {
        id: f[0].to_string(),
        port,
        index: None,
        role,
        master_id,
        slots,
        failing: flags.iter().any(|fl| *fl == "fail" || *fl == "fail?"),
        connected: f[7] == "connected",
    })
}

/// Hash slot of `key` (CRC16/XMODEM mod 16384, honouring `{hash tags}`).
pub fn key_slot(key: &[u8]) -> u16 {
    let mut k = key;
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                k = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16::State::<crc16::XMODEM>::calculate(k) % SLOTS
}

/// Slot migration by hand, step by step (the protocol `redis-cli --cluster
/// reshard` runs): [`RedisCluster::begin_slot_migration`], then
/// [`RedisCluster::migrate_slot_keys`] until it returns 0, then
/// [`RedisCluster::finish_slot_migration`]. Between the steps the slot is
/// `MIGRATING` on the source and `IMPORTING` on the target while the slot
/// map still names the source.
impl RedisCluster {
    /// `CLUSTER SETSLOT slot IMPORTING` on `to`, then `MIGRATING` on `from`.
    pub async fn begin_slot_migration(
        &self,
        slot: u16,
        from: &ClusterNode,
        to: &ClusterNode,
    ) -> anyhow::Result<()> {
        let _: () = query(
            &self.node_client(to.port)?,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("IMPORTING")
                .arg(&from.id),
        )
        .await
        .with_context(|| format!("setslot {slot} importing on {}", to.port))?;
        let _: () = query(
            &self.node_client(from.port)?,
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("MIGRATING")
                .arg(&to.id),
        )
        .await
        .with_context(|| format!("setslot {slot} migrating on {}", from.port))?;
        Ok(())
    }

    /// Moves up to `max` keys of `slot` from `from` to `to` with one
    /// `MIGRATE ... KEYS`; returns how many were moved (0: the slot is
    /// empty on the source).
    pub async fn migrate_slot_keys(
        &self,
        slot: u16,
        from: &ClusterNode,
        to: &ClusterNode,
        max: usize,
    ) -> anyhow::Result<usize> {
        let src = self.node_client(from.port)?;
        let keys: Vec<Vec<u8>> = query(
            &src,
            redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(max),
        )
        .await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("MIGRATE");
        cmd.arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys);
        let reply: String = query(&src, &cmd)
            .await
            .with_context(|| format!("migrate slot {slot} {} -> {}", from.port, to.port))?;
        ensure!(reply == "OK" || reply == "NOKEY", "migrate replied {reply}");
        Ok(keys.len())
    }

    /// `CLUSTER SETSLOT slot NODE to` on `to`, then `from`, then every
    /// other master (the order `redis-cli` uses), ending the migration.
    pub async fn finish_slot_migration(
        &self,
        slot: u16,
        from: &ClusterNode,
        to: &ClusterNode,
    ) -> anyhow::Result<()> {
        let masters = self.masters().await?;
        let mut order = vec![to.port, from.port];
        order.extend(
            masters
                .iter()
                .map(|m| m.port)
                .filter(|p| *p != to.port && *p != from.port),
        );
        for port in order {
            let _: () = query(
                &self.node_client(port)?,
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&to.id),
            )
            .await
            .with_context(|| format!("setslot {slot} node on {port}"))?;
        }
        Ok(())
    }

    /// Moves every key of `slot` from `from` to `to`, `keys_per_step` per
    /// `MIGRATE`, calling `between` after each step; returns the keys moved.
    pub async fn migrate_slot<F, Fut>(
        &self,
        slot: u16,
        from: &ClusterNode,
        to: &ClusterNode,
        keys_per_step: usize,
        mut between: F,
    ) -> anyhow::Result<usize>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        self.begin_slot_migration(slot, from, to).await?;
        between().await;
        let mut moved = 0;
        loop {
            let n = self
                .migrate_slot_keys(slot, from, to, keys_per_step.max(1))
                .await?;
            if n == 0 {
                break;
            }
            moved += n;
            between().await;
        }
        self.finish_slot_migration(slot, from, to).await?;
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from the Redis Cluster specification / CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"123456789"), 0x31C3 % SLOTS);
    }

    #[test]
    fn parses_nodes_lines() {
        let m = parse_cluster_nodes_line(
            "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 myself,master - 0 1426238317239 4 connected 0-5460 5462 [5461->-abc]",
        )
        .expect("parse");
        assert_eq!(m.port, 30004);
        assert_eq!(m.role, Role::Master);
        assert_eq!(m.slots, vec![0..=5460, 5462..=5462]);
        assert!(m.owns_slot(5462) && !m.owns_slot(5461));
        let r = parse_cluster_nodes_line(
            "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 slave,fail 07c37dfeb235213a872192d90877d0cd55635b91 0 1426238316232 1 disconnected",
        )
        .expect("parse");
        assert_eq!(r.role, Role::Replica);
        assert!(r.failing && !r.connected);
        assert_eq!(
            r.master_id.as_deref(),
            Some("07c37dfeb235213a872192d90877d0cd55635b91")
        );
    }
}
