//! The demo's primary: a real `redis-server` child process (faults by
//! signals), or, when none can be found, a second RocksDB behind a
//! fault-injection layer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kvmap::{
    Batch, BatchOutcome, Bytes, Capabilities, Context, DeleteOptions, Entry, Error, ErrorKind, Key,
    KvStore, KvStoreExt, ListPage, ListRequest, PutOptions, RedisConfig, RedisStore, Result,
    Revision, RocksConfig, RocksStore, WatchRequest, WatchStream,
};

/// The Redis op timeout of the demo: a hung server costs this per call
/// until the breaker opens.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(250);

/// The `redis-server` binary, if installed.
pub(crate) fn find_redis_server() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `redis-server` child process with AOF (`appendfsync always`), so an
/// acknowledged write survives SIGKILL.
pub(crate) struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub(crate) fn start(bin: PathBuf, dir: &Path) -> std::result::Result<Self, String> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut s = Self {
            bin,
            dir,
            port,
            child: None,
        };
        s.child = Some(s.spawn(port)?);
        Ok(s)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn version(&self) -> String {
        Command::new(&self.bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| {
                v.split_whitespace()
                    .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
            })
            .unwrap_or_else(|| "?".into())
    }

    fn spawn(&self, port: u16) -> std::result::Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .map_err(|e| format!("redis log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("redis log: {e}"))?;
        let mut child = Command::new(&self.bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if ping(port) {
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status}; see {}",
                    self.dir.join("redis.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        Err(format!("redis-server on port {port} not ready within 20s"))
    }

    fn signal(&self, sig: &str) -> std::result::Result<(), String> {
        let pid = self.pid().ok_or("redis-server is not running")?;
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map_err(|e| format!("kill {sig} {pid}: {e}"))?
            .success();
        if ok {
            Ok(())
        } else {
            Err(format!("kill {sig} {pid} failed"))
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server on a side port (invisible to the chain), writes
    /// `key = value` there as another client would, shuts it down, and
    /// starts it again on the chain's port.
    async fn restart_with_conflict(
        &mut self,
        namespace: &str,
        key: &Key,
        value: &str,
    ) -> std::result::Result<(), String> {
        self.kill();
        let side = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut side_child = self.spawn(side)?;
        let other = connect(&format!("redis://127.0.0.1:{side}"), namespace)
            .await
            .map_err(|e| e.to_string())?;
        let r = other
            .set(
                &Context::new().with_timeout(Duration::from_secs(5)),
                key,
                value.to_owned(),
            )
            .await;
        drop(other);
        // appendfsync always: the write is on disk once acknowledged.
        let _ = side_child.kill();
        let _ = side_child.wait();
        r.map_err(|e| e.to_string())?;
        self.child = Some(self.spawn(self.port)?);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.signal("-CONT");
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    c.write_all(b"PING\r\n").is_ok()
        && c.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

pub(crate) async fn connect(url: &str, namespace: &str) -> Result<RedisStore> {
    RedisStore::connect(
        RedisConfig::standalone(url)
            .with_op_timeout(OP_TIMEOUT)
            .with_connect_timeout(OP_TIMEOUT)
            // The near cache over the chain keeps itself fresh by a watch.
            .with_watch_events(true)
            .with_key_prefix(namespace),
    )
    .await
}

/// Healthy, hanging (every call waits [`OP_TIMEOUT`] and times out) or
/// down (every call fails at once).
#[derive(Debug)]
pub(crate) struct FaultLayer {
    inner: Arc<dyn KvStore>,
    mode: AtomicU8,
}

const HEALTHY: u8 = 0;
const HANG: u8 = 1;
const DOWN: u8 = 2;

impl FaultLayer {
    async fn check(&self) -> Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            HANG => {
                tokio::time::sleep(OP_TIMEOUT).await;
                Err(Error::new(ErrorKind::Timeout)
                    .with_backend("rocksdb-primary")
                    .with_detail("injected hang"))
            }
            DOWN => Err(Error::new(ErrorKind::Unavailable)
                .with_backend("rocksdb-primary")
                .with_detail("injected outage")),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl KvStore for FaultLayer {
    fn name(&self) -> &str {
        "rocksdb-primary"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, ctx: &Context, key: &Key) -> Result<Option<Entry>> {
        self.check().await?;
        self.inner.get(ctx, key).await
    }
    async fn put(&self, ctx: &Context, key: &Key, v: Bytes, o: PutOptions) -> Result<Revision> {
        self.check().await?;
        self.inner.put(ctx, key, v, o).await
    }
    async fn delete(&self, ctx: &Context, key: &Key, o: DeleteOptions) -> Result<bool> {
        self.check().await?;
        self.inner.delete(ctx, key, o).await
    }
    async fn list(&self, ctx: &Context, r: &ListRequest) -> Result<ListPage> {
        self.check().await?;
        self.inner.list(ctx, r).await
    }
    async fn watch(&self, ctx: &Context, r: WatchRequest) -> Result<WatchStream> {
        self.check().await?;
        self.inner.watch(ctx, r).await
    }
    async fn get_many(&self, ctx: &Context, k: &[Key]) -> Result<Vec<Result<Option<Entry>>>> {
        self.check().await?;
        self.inner.get_many(ctx, k).await
    }
    async fn apply(&self, ctx: &Context, b: Batch) -> Result<Vec<Result<BatchOutcome>>> {
        self.check().await?;
        self.inner.apply(ctx, b).await
    }
    async fn lock(
        &self,
        ctx: &Context,
        k: &Key,
        o: kvmap::LockOptions,
    ) -> Result<kvmap::LockGuard> {
        self.check().await?;
        self.inner.lock(ctx, k, o).await
    }
}

/// The primary of the demo and its faults.
pub(crate) enum Primary {
    Redis {
        server: RedisServer,
        namespace: String,
    },
    External {
        url: String,
    },
    Simulated {
        layer: Arc<FaultLayer>,
        inner: Arc<dyn KvStore>,
    },
}

impl Primary {
    pub(crate) fn start(
        external: Option<String>,
        simulated: bool,
        dir: &Path,
        namespace: &str,
    ) -> std::result::Result<(Self, Option<String>), String> {
        if let Some(url) = external {
            return Ok((Primary::External { url }, None));
        }
        let found = if simulated { None } else { find_redis_server() };
        let why = match found {
            Some(bin) => match RedisServer::start(bin, dir) {
                Ok(server) => {
                    return Ok((
                        Primary::Redis {
                            server,
                            namespace: namespace.to_owned(),
                        },
                        None,
                    ))
                }
                Err(e) => e,
            },
            None if simulated => "--simulated-primary".to_owned(),
            None => "no redis-server binary found (apt-get install redis-server)".to_owned(),
        };
        let inner: Arc<dyn KvStore> = Arc::new(
            RocksStore::open(RocksConfig::new(dir.join("primary"))).map_err(|e| e.to_string())?,
        );
        let layer = Arc::new(FaultLayer {
            inner: inner.clone(),
            mode: AtomicU8::new(HEALTHY),
        });
        Ok((Primary::Simulated { layer, inner }, Some(why)))
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Primary::Redis { server, .. } => format!(
                "redis-server {} on 127.0.0.1:{} (child process {})",
                server.version(),
                server.port,
                server.pid().unwrap_or(0)
            ),
            Primary::External { url } => {
                format!("{} (external: no faults injected)", kvmap::redact(url))
            }
            Primary::Simulated { .. } => {
                "a second RocksDB behind a fault-injection layer".to_owned()
            }
        }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Primary::Redis { .. } | Primary::External { .. } => "redis",
            Primary::Simulated { .. } => "rocksdb-primary",
        }
    }

    /// Whether faults are real signals to a server process.
    pub(crate) fn is_process(&self) -> bool {
        matches!(self, Primary::Redis { .. })
    }

    pub(crate) fn can_inject(&self) -> bool {
        !matches!(self, Primary::External { .. })
    }

    /// The store the chain uses.
    pub(crate) async fn store(&self, namespace: &str) -> Result<Arc<dyn KvStore>> {
        Ok(match self {
            Primary::Redis { server, .. } => Arc::new(connect(&server.url(), namespace).await?),
            Primary::External { url } => Arc::new(connect(url, namespace).await?),
            Primary::Simulated { layer, .. } => layer.clone(),
        })
    }

    /// A direct connection, bypassing the chain, to check what the
    /// primary holds.
    pub(crate) async fn direct(&self, namespace: &str) -> Result<Arc<dyn KvStore>> {
        Ok(match self {
            Primary::Simulated { inner, .. } => inner.clone(),
            _ => self.store(namespace).await?,
        })
    }

    pub(crate) fn hang(&self) -> std::result::Result<(), String> {
        match self {
            Primary::Redis { server, .. } => server.signal("-STOP"),
            Primary::Simulated { layer, .. } => {
                layer.mode.store(HANG, Ordering::SeqCst);
                Ok(())
            }
            Primary::External { .. } => Ok(()),
        }
    }

    pub(crate) fn unhang(&self) -> std::result::Result<(), String> {
        match self {
            Primary::Redis { server, .. } => server.signal("-CONT"),
            Primary::Simulated { layer, .. } => {
                layer.mode.store(HEALTHY, Ordering::SeqCst);
                Ok(())
            }
            Primary::External { .. } => Ok(()),
        }
    }

    pub(crate) fn kill(&mut self) {
        match self {
            Primary::Redis { server, .. } => server.kill(),
            Primary::Simulated { layer, .. } => layer.mode.store(DOWN, Ordering::SeqCst),
            Primary::External { .. } => {}
        }
    }

    /// Restarts the primary after another client wrote `key = value` on
    /// it while the chain could not reach it.
    pub(crate) async fn restart_with_conflict(
        &mut self,
        key: &Key,
        value: &str,
    ) -> std::result::Result<(), String> {
        match self {
            Primary::Redis { server, namespace } => {
                let ns = namespace.clone();
                server.restart_with_conflict(&ns, key, value).await
            }
            Primary::Simulated { layer, inner } => {
                inner
                    .set(&Context::new(), key, value.to_owned())
                    .await
                    .map_err(|e| e.to_string())?;
                layer.mode.store(HEALTHY, Ordering::SeqCst);
                Ok(())
            }
            Primary::External { .. } => Ok(()),
        }
    }
}
