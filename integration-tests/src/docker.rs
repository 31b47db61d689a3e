//! Docker engine access: availability check, image names, loopback port
//! allocation and the common container start path (host networking).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use testcontainers::bollard::Docker;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};

/// Env var overriding the Redis image (default [`DEFAULT_REDIS_IMAGE`]).
pub const REDIS_IMAGE_ENV: &str = "KVMAP_REDIS_IMAGE";
/// Env var overriding the Consul image (default [`DEFAULT_CONSUL_IMAGE`]).
pub const CONSUL_IMAGE_ENV: &str = "KVMAP_CONSUL_IMAGE";
/// When set to `1`, an unreachable Docker engine fails the test instead of skipping it.
pub const REQUIRE_DOCKER_ENV: &str = "KVMAP_REQUIRE_DOCKER";
/// Local Redis image built by `scripts/build-images.sh`.
pub const DEFAULT_REDIS_IMAGE: &str = "kvmap-test/redis:7";
/// Local Consul image built by `scripts/build-images.sh`.
pub const DEFAULT_CONSUL_IMAGE: &str = "kvmap-test/consul:1.8.7";
/// Label put on every container the harness starts (for manual cleanup:
/// `docker rm -f $(docker ps -aq --filter label=kvmap-it)`).
pub const CONTAINER_LABEL: &str = "kvmap-it";

/// A Docker image reference split into repository name and tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository, e.g. `kvmap-test/redis` or `registry:5000/hashicorp/consul`.
    pub name: String,
    /// Tag, e.g. `7`.
    pub tag: String,
}

impl ImageRef {
    /// Parses `name[:tag]` (a `:` inside a registry host:port is not a tag separator).
    pub fn parse(s: &str) -> Self {
        let slash = s.rfind('/').map_or(0, |i| i + 1);
        match s[slash..].rfind(':') {
            Some(i) => Self {
                name: s[..slash + i].to_string(),
                tag: s[slash + i + 1..].to_string(),
            },
            None => Self {
                name: s.to_string(),
                tag: "latest".to_string(),
            },
        }
    }

    /// `name:tag`.
    pub fn full(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

fn image_from_env(var: &str, default: &str) -> ImageRef {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => ImageRef::parse(v.trim()),
        _ => ImageRef::parse(default),
    }
}

/// The Redis image to use (`KVMAP_REDIS_IMAGE`, default `kvmap-test/redis:7`).
pub fn redis_image() -> ImageRef {
    image_from_env(REDIS_IMAGE_ENV, DEFAULT_REDIS_IMAGE)
}

/// The Consul image to use (`KVMAP_CONSUL_IMAGE`, default `kvmap-test/consul:1.8.7`).
pub fn consul_image() -> ImageRef {
    image_from_env(CONSUL_IMAGE_ENV, DEFAULT_CONSUL_IMAGE)
}

/// Connects to the Docker engine (honours `DOCKER_HOST`).
pub fn docker_client() -> anyhow::Result<Docker> {
    Docker::connect_with_defaults().context("cannot create a Docker client")
}

async fn ping_docker() -> anyhow::Result<()> {
    let docker = docker_client()?;
    tokio::time::timeout(Duration::from_secs(5), docker.ping())
        .await
        .context("timed out after 5s")?
        .context("ping failed")?;
    Ok(())
}

/// Checks that the Docker engine is reachable. Every test calls this first:
///
/// ```no_run
/// # async fn t() {
/// if !integration_tests::docker_available_or_skip().await {
///     return;
/// }
/// # }
/// ```
///
/// Returns `false` (after printing `skipped: docker engine not reachable: ...`)
/// when it is not, unless `KVMAP_REQUIRE_DOCKER=1`, in which case it panics so
/// the test fails.
pub async fn docker_available_or_skip() -> bool {
    match ping_docker().await {
        Ok(()) => true,
        Err(e) => {
            if std::env::var(REQUIRE_DOCKER_ENV).is_ok_and(|v| v == "1") {
                panic!("docker engine not reachable and {REQUIRE_DOCKER_ENV}=1: {e:#}");
            }
            eprintln!("skipped: docker engine not reachable: {e:#}");
            false
        }
    }
}

/// Fails with a clear message when `image` is the harness's local default
/// image and it has not been built. Non-default images (set through the env
/// vars) are left to testcontainers, which pulls them if missing.
pub async fn ensure_image(image: &ImageRef) -> anyhow::Result<()> {
    let is_local_default =
        image.full() == DEFAULT_REDIS_IMAGE || image.full() == DEFAULT_CONSUL_IMAGE;
    if !is_local_default {
        return Ok(());
    }
    let docker = docker_client()?;
    if docker.inspect_image(&image.full()).await.is_err() {
        bail!(
            "docker image {} not found: build the local test images first with \
             `scripts/build-images.sh` (from the repository root)",
            image.full()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Port allocation
// ---------------------------------------------------------------------------

/// Lowest port handed out. The range stays below Linux's ephemeral range
/// (32768+) so outgoing connections never sit on an allocated port.
const PORT_BASE: u32 = 10_000;
/// Number of ports in the range. A Redis cluster bus port is `port + 10000`,
/// which stays below 32768 too.
const PORT_SPAN: u32 = 12_000;
/// Offset added to a port for the Redis cluster bus.
pub const REDIS_BUS_OFFSET: u16 = 10_000;

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

fn port_is_free(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    TcpListener::bind(addr).is_ok()
        && TcpListener::bind(any).is_ok()
        && UdpSocket::bind(addr).is_ok()
        && UdpSocket::bind(any).is_ok()
}

/// Allocates a loopback port that is free for TCP and UDP right now.
///
/// Ports come from a counter over `10000..22000` that starts at an offset
/// derived from the process id: within a process a port is never handed out
/// twice, across processes collisions are unlikely (and every candidate is
/// checked by binding it).
pub fn free_port() -> u16 {
    allocate(&[0])
}

/// Allocates a port `p` such that `p` and `p + 10000` (its Redis cluster bus
/// port) are both free.
pub fn free_port_with_bus() -> u16 {
    allocate(&[0, REDIS_BUS_OFFSET])
}

fn allocate(offsets: &[u16]) -> u16 {
    let seed = std::process::id().wrapping_mul(7919) % PORT_SPAN;
    for _ in 0..PORT_SPAN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let candidate = PORT_BASE + (seed + n) % PORT_SPAN;
        let port = u16::try_from(candidate).expect("port range fits in u16");
        if offsets.iter().all(|off| port_is_free(port + off)) {
            return port;
        }
    }
    panic!(
        "no free loopback port left in {PORT_BASE}..{}",
        PORT_BASE + PORT_SPAN
    );
}

// ---------------------------------------------------------------------------
// Container start
// ---------------------------------------------------------------------------

/// A container started by the harness; removed (force) when dropped.
pub type Container = ContainerAsync<GenericImage>;

/// What to start: image, entrypoint binary (looked up on the image's PATH, so
/// it works for the local images and the upstream `redis` / `hashicorp/consul`
/// images alike), its arguments and optional bind mounts.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Image to run.
    pub image: ImageRef,
    /// Entrypoint binary name, e.g. `redis-server` or `consul`.
    pub entrypoint: String,
    /// Arguments passed to the entrypoint.
    pub args: Vec<String>,
    /// Container name (must be unique on the engine).
    pub name: String,
    /// Bind mounts: (host path, container path), read-only.
    pub binds: Vec<(String, String)>,
}

/// Label holding the pid of the test process that started a container.
const PID_LABEL: &str = "kvmap-it.pid";

/// Removes containers left behind by test processes that no longer exist
/// (e.g. killed by a timeout before their guards could run). Runs once per
/// process, best effort.
async fn reap_stale_containers_once() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(docker) = docker_client() else { return };
    let filters =
        std::collections::HashMap::from([("label".to_string(), vec![CONTAINER_LABEL.to_string()])]);
    let opts = testcontainers::bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let Ok(list) = docker.list_containers(Some(opts)).await else {
        return;
    };
    for c in list {
        let pid = c
            .labels
            .as_ref()
            .and_then(|l| l.get(PID_LABEL))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Some(id) = c.id {
            let rm = testcontainers::bollard::query_parameters::RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            if docker.remove_container(&id, Some(rm)).await.is_ok() {
                eprintln!("[kvmap-it] removed stale container {id} of dead test process {pid}");
            }
        }
    }
}

/// Starts a container with host networking, no readiness wait (callers poll
/// the service themselves), labelled [`CONTAINER_LABEL`].
pub async fn start_container(spec: ContainerSpec) -> anyhow::Result<Container> {
    ensure_image(&spec.image).await?;
    reap_stale_containers_once().await;
    let mut req = GenericImage::new(spec.image.name.clone(), spec.image.tag.clone())
        .with_entrypoint(&spec.entrypoint)
        .with_wait_for(WaitFor::Nothing)
        .with_cmd(spec.args.clone())
        .with_network("host")
        .with_container_name(spec.name.clone())
        .with_label(CONTAINER_LABEL, "1")
        .with_label(PID_LABEL, std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(60));
    for (host, target) in &spec.binds {
        req = req.with_mount(
            testcontainers::core::Mount::bind_mount(host.clone(), target.clone())
                .with_access_mode(testcontainers::core::AccessMode::ReadOnly),
        );
    }
    req.start().await.with_context(|| {
        format!(
            "failed to start container {} from image {} (if the image is missing, run \
             scripts/build-images.sh)",
            spec.name,
            spec.image.full()
        )
    })
}

/// Last lines of a container's stdout+stderr, for error messages.
pub async fn container_logs(container: &Container, max_lines: usize) -> String {
    let out = container.stdout_to_vec().await.unwrap_or_default();
    let err = container.stderr_to_vec().await.unwrap_or_default();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// A unique-enough suffix for container names: pid and a process counter.
pub(crate) fn unique_suffix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_refs() {
        assert_eq!(
            ImageRef::parse("kvmap-test/redis:7"),
            ImageRef {
                name: "kvmap-test/redis".into(),
                tag: "7".into()
            }
        );
        assert_eq!(ImageRef::parse("redis").tag, "latest");
        let r = ImageRef::parse("localhost:5000/hashicorp/consul:1.8.7");
        assert_eq!(r.name, "localhost:5000/hashicorp/consul");
        assert_eq!(r.tag, "1.8.7");
        assert_eq!(ImageRef::parse("localhost:5000/redis").tag, "latest");
    }

    #[test]
    fn ports_are_unique_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port_with_bus();
            assert!((10_000..22_000).contains(&p));
            assert!(seen.insert(p));
        }
    }
}
