//! Consul topologies: a dev agent ([`ConsulDev`]), a 3-server cluster
//! ([`ConsulCluster`]) and a dev agent with ACLs enabled ([`ConsulAcl`]).
//!
//! Every agent binds and serves on 127.0.0.1 with its own six ports (HTTP,
//! DNS, Serf LAN, Serf WAN, server RPC, gRPC), all allocated per instance.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};

use crate::docker::{consul_image, free_port, start_container, unique_suffix, ContainerSpec};
use crate::fault::Node;
use crate::wait::{poll_until, report_ready};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The six ports of one Consul agent, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsulPorts {
    /// HTTP API.
    pub http: u16,
    /// DNS interface.
    pub dns: u16,
    /// Serf LAN gossip.
    pub serf_lan: u16,
    /// Serf WAN gossip.
    pub serf_wan: u16,
    /// Server RPC (Raft).
    pub server: u16,
    /// gRPC (xDS).
    pub grpc: u16,
}

impl ConsulPorts {
    /// Allocates six distinct free ports.
    pub fn allocate() -> Self {
        Self {
            http: free_port(),
            dns: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            server: free_port(),
            grpc: free_port(),
        }
    }

    fn args(&self) -> Vec<String> {
        [
            ("-http-port", self.http),
            ("-dns-port", self.dns),
            ("-serf-lan-port", self.serf_lan),
            ("-serf-wan-port", self.serf_wan),
            ("-server-port", self.server),
            ("-grpc-port", self.grpc),
        ]
        .iter()
        .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
        .collect()
    }
}

/// Options for Consul topologies.
#[derive(Debug, Clone, Default)]
pub struct ConsulOptions {
    /// Extra HCL snippets, each passed as `-hcl <snippet>`.
    pub extra_hcl: Vec<String>,
    /// Extra `consul agent` arguments.
    pub extra_args: Vec<String>,
}

/// A plain HTTP client for the Consul API (no proxy, 10 s timeout).
pub fn http_client() -> reqwest::Client {
    // Other crates of the workspace (kvmap-consul) turn on reqwest's
    // rustls without a provider; feature unification then needs one
    // installed. "Already installed" is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("building a plain-HTTP reqwest client cannot fail")
}

/// `GET /v1/status/leader` on `base` (`http://127.0.0.1:PORT`): the leader's
/// server address, or `""` while there is none.
pub async fn leader_of(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = client
        .get(format!("{base}/v1/status/leader"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// `GET /v1/status/peers` on `base`: the Raft peers' server addresses, sorted.
pub async fn peers_of(client: &reqwest::Client, base: &str) -> anyhow::Result<Vec<String>> {
    let v: Vec<String> = client
        .get(format!("{base}/v1/status/peers"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut v = v;
    v.sort();
    Ok(v)
}

async fn start_agent(kind: &str, ports: ConsulPorts, args: Vec<String>) -> anyhow::Result<Node> {
    let name = format!("kvmap-it-{kind}-{}-{}", ports.http, unique_suffix());
    let mut full = vec![
        "agent".to_string(),
        "-client".into(),
        "127.0.0.1".into(),
        "-bind".into(),
        "127.0.0.1".into(),
        "-node".into(),
        name.clone(),
        "-log-level".into(),
        "info".into(),
    ];
    full.extend(ports.args());
    full.extend(args);
    let c = start_container(ContainerSpec {
        image: consul_image(),
        entrypoint: "consul".into(),
        args: full,
        name: name.clone(),
        binds: vec![],
    })
    .await?;
    Ok(Node::new(c, name, ports.http))
}

fn hcl_args(opts: &ConsulOptions) -> Vec<String> {
    let mut v = Vec::new();
    for h in &opts.extra_hcl {
        v.extend(["-hcl".to_string(), h.clone()]);
    }
    v.extend(opts.extra_args.iter().cloned());
    v
}

async fn with_logs<T>(nodes: &[&Node], r: anyhow::Result<T>) -> anyhow::Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => {
            let mut msg = String::new();
            for n in nodes {
                msg.push_str(&format!("--- {} ---\n{}\n", n.name(), n.logs(20).await));
            }
            Err(e.context(format!("consul logs:\n{msg}")))
        }
    }
}

/// Waits until the agent at `base` knows a leader and has registered itself
/// in the catalog (so KV writes are accepted).
async fn wait_dev_ready(base: &str, token: Option<&str>) -> anyhow::Result<()> {
    let client = http_client();
    poll_until("consul leader + catalog", READY_TIMEOUT, || async {
        if leader_of(&client, base).await?.is_empty() {
            return Ok(None);
        }
        let mut req = client
            .get(format!("{base}/v1/catalog/nodes"))
            .timeout(PROBE_TIMEOUT);
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        let nodes: Vec<serde_json::Value> = req.send().await?.error_for_status()?.json().await?;
        Ok((!nodes.is_empty()).then_some(()))
    })
    .await
}

/// A single Consul agent in `-dev` mode (in-memory server, leader of itself).
#[derive(Debug)]
pub struct ConsulDev {
    node: Node,
    ports: ConsulPorts,
}

impl ConsulDev {
    /// Starts a dev agent and waits until it has a leader and a catalog.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    /// Starts a dev agent with extra options.
    pub async fn start_with(opts: ConsulOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let ports = ConsulPorts::allocate();
        let mut args = vec!["-dev".to_string()];
        args.extend(hcl_args(&opts));
        let node = start_agent("consul-dev", ports, args).await?;
        let this = Self { node, ports };
        let r = this.wait_ready().await;
        with_logs(&[&this.node], r).await?;
        report_ready("ConsulDev", t0, &this.http_addr());
        Ok(this)
    }

    /// Waits until the agent has a leader and a catalog (e.g. after a restart).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_dev_ready(&self.http_addr(), None).await
    }

    /// HTTP API base URL, `http://127.0.0.1:PORT`.
    pub fn http_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// HTTP API port.
    pub fn http_port(&self) -> u16 {
        self.ports.http
    }

    /// All ports of the agent.
    pub fn ports(&self) -> ConsulPorts {
        self.ports
    }

    /// The container, for fault injection.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

/// A dev agent with ACLs enabled, `default_policy = "deny"`, and a known
/// master (bootstrap) token.
#[derive(Debug)]
pub struct ConsulAcl {
    node: Node,
    ports: ConsulPorts,
    master_token: String,
}

impl ConsulAcl {
    /// Starts the agent with a random master token and waits until the token
    /// is usable.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    /// Like [`ConsulAcl::start`] with extra options.
    pub async fn start_with(opts: ConsulOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let ports = ConsulPorts::allocate();
        let master_token = random_uuid();
        let mut args = vec![
            "-dev".to_string(),
            "-hcl".into(),
            format!(
                r#"acl {{ enabled = true default_policy = "deny" down_policy = "extend-cache" tokens {{ master = "{master_token}" agent = "{master_token}" }} }}"#
            ),
        ];
        args.extend(hcl_args(&opts));
        let node = start_agent("consul-acl", ports, args).await?;
        let this = Self {
            node,
            ports,
            master_token,
        };
        let r = this.wait_ready().await;
        with_logs(&[&this.node], r).await?;
        report_ready("ConsulAcl", t0, &this.http_addr());
        Ok(this)
    }

    /// Waits until the master token can read its own ACL token.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let base = self.http_addr();
        wait_dev_ready(&base, Some(&self.master_token)).await?;
        let client = http_client();
        poll_until("consul ACL master token usable", READY_TIMEOUT, || async {
            let status = client
                .get(format!("{base}/v1/acl/token/self"))
                .header("X-Consul-Token", &self.master_token)
                .timeout(PROBE_TIMEOUT)
                .send()
                .await?
                .status();
            Ok(status.is_success().then_some(()))
        })
        .await
    }

    /// The master token (full rights), sent as `X-Consul-Token`.
    pub fn master_token(&self) -> &str {
        &self.master_token
    }

    /// HTTP API base URL.
    pub fn http_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// All ports of the agent.
    pub fn ports(&self) -> ConsulPorts {
        self.ports
    }

    /// The container, for fault injection.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

fn random_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Three Consul servers (`-server -bootstrap-expect 3`) joined over Serf on
/// loopback, with `raft_multiplier = 1` for fast elections.
#[derive(Debug)]
pub struct ConsulCluster {
    nodes: Vec<Node>,
    ports: Vec<ConsulPorts>,
}

impl ConsulCluster {
    /// Starts the three servers and waits until a leader is elected and all
    /// three agree on it and on the 3 Raft peers.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ConsulOptions::default()).await
    }

    /// Like [`ConsulCluster::start`] with extra options.
    pub async fn start_with(opts: ConsulOptions) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let ports: Vec<ConsulPorts> = (0..3).map(|_| ConsulPorts::allocate()).collect();
        let starts = ports.iter().enumerate().map(|(i, p)| {
            let mut args = vec![
                "-server".to_string(),
                "-bootstrap-expect".into(),
                "3".into(),
                "-data-dir".into(),
                "/tmp/consul-data".into(),
                "-retry-interval".into(),
                "1s".into(),
                "-hcl".into(),
                "performance { raft_multiplier = 1 }".into(),
            ];
            for (j, other) in ports.iter().enumerate() {
                if j != i {
                    args.extend([
                        "-retry-join".to_string(),
                        format!("127.0.0.1:{}", other.serf_lan),
                    ]);
                }
            }
            args.extend(hcl_args(&opts));
            start_agent("consul-srv", *p, args)
        });
        let results = futures::future::join_all(starts).await;
        let mut nodes = Vec::new();
        let mut first_err = None;
        for r in results {
            match r {
                Ok(n) => nodes.push(n),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        let this = Self { nodes, ports };
        if let Some(e) = first_err {
            return Err(e);
        }
        let r = this.wait_converged(&[0, 1, 2], 3).await;
        let refs: Vec<&Node> = this.nodes.iter().collect();
        with_logs(&refs, r).await?;
        report_ready(
            "ConsulCluster (3 servers)",
            t0,
            &format!("http {:?}", this.http_ports()),
        );
        Ok(this)
    }

    /// HTTP base URL of server `i`.
    pub fn http_addr(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i].http)
    }

    /// HTTP base URLs of all servers.
    pub fn http_addrs(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.http_addr(i)).collect()
    }

    /// HTTP ports of all servers.
    pub fn http_ports(&self) -> Vec<u16> {
        self.ports.iter().map(|p| p.http).collect()
    }

    /// Ports of server `i`.
    pub fn ports(&self, i: usize) -> ConsulPorts {
        self.ports[i]
    }

    /// Server `i`'s container, for fault injection.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Number of servers (3).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false; present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn index_of_server_addr(&self, addr: &str) -> Option<usize> {
        let port: u16 = addr.rsplit(':').next()?.parse().ok()?;
        self.ports.iter().position(|p| p.server == port)
    }

    /// Index of the current leader as seen by server `observer`.
    pub async fn leader_seen_by(&self, observer: usize) -> anyhow::Result<Option<usize>> {
        let l = leader_of(&http_client(), &self.http_addr(observer)).await?;
        Ok(if l.is_empty() {
            None
        } else {
            self.index_of_server_addr(&l)
        })
    }

    /// Index of the leader that all running servers agree on.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut running = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_running().await? {
                running.push(i);
            }
        }
        self.agreed_leader(&running).await
    }

    async fn agreed_leader(&self, observers: &[usize]) -> anyhow::Result<usize> {
        let mut leader = None;
        for &i in observers {
            let l = self
                .leader_seen_by(i)
                .await?
                .ok_or_else(|| anyhow!("server {i} sees no leader"))?;
            ensure!(
                leader.is_none() || leader == Some(l),
                "servers disagree on the leader"
            );
            leader = Some(l);
        }
        leader.ok_or_else(|| anyhow!("no observer"))
    }

    async fn wait_converged(&self, observers: &[usize], peers: usize) -> anyhow::Result<usize> {
        let client = http_client();
        poll_until("consul cluster leader + peers", READY_TIMEOUT, || async {
            let leader = self.agreed_leader(observers).await?;
            ensure!(
                observers.contains(&leader),
                "leader {leader} is not running"
            );
            let mut first: Option<Vec<String>> = None;
            for &i in observers {
                let p = peers_of(&client, &self.http_addr(i)).await?;
                ensure!(p.len() == peers, "server {i} has {} peers", p.len());
                ensure!(
                    first.is_none() || first.as_ref() == Some(&p),
                    "peer sets differ"
                );
                first = Some(p);
            }
            Ok(Some(leader))
        })
        .await
    }

    /// Crashes (SIGKILL) the current leader and waits until the two other
    /// servers agree on a new leader. Returns the time from the kill until
    /// then. The old leader stays a Raft peer (it did not leave), so it can be
    /// brought back with [`ConsulCluster::restart_server`].
    pub async fn stop_leader(&self) -> anyhow::Result<Duration> {
        let old = self.leader().await?;
        let survivors: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != old).collect();
        let t0 = Instant::now();
        self.nodes[old].kill().await?;
        let new = poll_until("new consul leader", READY_TIMEOUT, || async {
            let l = self.agreed_leader(&survivors).await?;
            Ok((l != old).then_some(l))
        })
        .await?;
        let took = t0.elapsed();
        eprintln!(
            "[kvmap-it] ConsulCluster: killed leader {old}, new leader {new} after {:.2}s",
            took.as_secs_f64()
        );
        Ok(took)
    }

    /// Starts server `i` again and waits until all three agree on a leader
    /// and peers. Returns the time taken.
    pub async fn restart_server(&self, i: usize) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.nodes[i].start().await?;
        self.wait_converged(&[0, 1, 2], 3).await?;
        Ok(t0.elapsed())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_shape() {
        let u = super::random_uuid();
        let parts: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
    }
}
