//! Fault injection on a single container ("node"): stop/kill/start and
//! pause/unpause. Every helper returns once the fault is in effect.
//!
//! With host networking a container cannot be disconnected from the network
//! (`docker network disconnect host ...` is refused by the engine), so
//! [`Node::pause`] is the "hang" fault: the process is frozen, its sockets stay
//! open, connections are accepted by the kernel but nothing is answered.

use std::time::Duration;

use anyhow::Context as _;
use testcontainers::core::ExecCommand;

use crate::docker::{container_logs, docker_client, Container};
use crate::wait::poll_until;

/// One container of a topology, with its fault-injection handles.
pub struct Node {
    container: Container,
    name: String,
    port: u16,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("id", &self.container.id())
            .finish()
    }
}

impl Node {
    pub(crate) fn new(container: Container, name: String, port: u16) -> Self {
        Self {
            container,
            name,
            port,
        }
    }

    /// Container name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Container id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The node's main client port on 127.0.0.1 (Redis port, Consul HTTP port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The underlying testcontainers handle.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Graceful stop (SIGTERM, SIGKILL after 10 s); returns when the container
    /// has exited.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.container
            .stop_with_timeout(Some(10))
            .await
            .with_context(|| format!("stop {}", self.name))?;
        self.wait_running(false).await
    }

    /// Crash: SIGKILL; returns when the container has exited.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let docker = docker_client()?;
        docker
            .kill_container(
                self.id(),
                None::<testcontainers::bollard::query_parameters::KillContainerOptions>,
            )
            .await
            .with_context(|| format!("kill {}", self.name))?;
        self.wait_running(false).await
    }

    /// Starts a stopped/killed container again (same file system, same
    /// ports); returns when the container is running. The service inside may
    /// still be starting: use the topology's readiness wait.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.container
            .start()
            .await
            .with_context(|| format!("start {}", self.name))?;
        self.wait_running(true).await
    }

    /// Freezes every process of the container (cgroup freezer). Requests to it
    /// hang (connections are still accepted by the kernel) until
    /// [`Node::unpause`].
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.container
            .pause()
            .await
            .with_context(|| format!("pause {}", self.name))
    }

    /// Thaws a paused container.
    pub async fn unpause(&self) -> anyhow::Result<()> {
        self.container
            .unpause()
            .await
            .with_context(|| format!("unpause {}", self.name))
    }

    /// Whether the container is running (a paused container counts as running).
    pub async fn is_running(&self) -> anyhow::Result<bool> {
        Ok(self.container.is_running().await?)
    }

    /// The last `lines` lines of the container's output.
    pub async fn logs(&self, lines: usize) -> String {
        container_logs(&self.container, lines).await
    }

    /// Runs a command inside the container; returns (exit code, stdout, stderr).
    pub async fn exec(&self, cmd: &[&str]) -> anyhow::Result<(i64, String, String)> {
        let mut res = self
            .container
            .exec(ExecCommand::new(cmd.iter().copied()))
            .await
            .with_context(|| format!("exec {cmd:?} in {}", self.name))?;
        let stdout = String::from_utf8_lossy(&res.stdout_to_vec().await?).into_owned();
        let stderr = String::from_utf8_lossy(&res.stderr_to_vec().await?).into_owned();
        let code = poll_until("exec exit code", Duration::from_secs(10), || async {
            Ok(res.exit_code().await?)
        })
        .await?;
        Ok((code, stdout, stderr))
    }

    /// Tries to cut the node off the network with `docker network disconnect`.
    /// With host networking (what the harness uses) the engine refuses; this
    /// returns that error. Kept so the limitation is checked, not assumed.
    pub async fn disconnect_network(&self) -> anyhow::Result<()> {
        let docker = docker_client()?;
        docker
            .disconnect_network(
                "host",
                testcontainers::bollard::models::NetworkDisconnectRequest {
                    container: self.id().to_string(),
                    force: Some(true),
                },
            )
            .await
            .with_context(|| format!("docker network disconnect host {}", self.name))
    }

    async fn wait_running(&self, want: bool) -> anyhow::Result<()> {
        let what = format!(
            "{} to be {}",
            self.name,
            if want { "running" } else { "stopped" }
        );
        poll_until(&what, Duration::from_secs(30), || async {
            Ok((self.container.is_running().await? == want).then_some(()))
        })
        .await
    }
}
