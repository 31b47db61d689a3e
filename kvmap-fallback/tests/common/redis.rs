//! A real `redis-server` child process on a free loopback port, with
//! fault injection by signals (SIGSTOP, SIGCONT, SIGKILL) and restart on
//! the same port and data directory (AOF with `appendfsync always`, so
//! acknowledged writes survive SIGKILL).

#![allow(clippy::unwrap_used)] // test helper: unwrap is fine

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    pub(crate) port: u16,
    child: Option<Child>,
}

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

/// The server for a test, or `None` after printing why the test is
/// skipped (`KVMAP_REQUIRE_REDIS=1` turns the skip into a failure).
pub(crate) fn server_or_skip(dir: &Path) -> Option<RedisServer> {
    match find_redis_server() {
        Some(bin) => Some(RedisServer::start(bin, dir)),
        None => {
            if std::env::var("KVMAP_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
                panic!("redis-server not found and KVMAP_REQUIRE_REDIS=1");
            }
            eprintln!("skipped: redis-server not found (apt-get install redis-server)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    pub(crate) fn start(bin: PathBuf, dir: &Path) -> Self {
        let mut s = Self {
            bin,
            dir: dir.join("redis"),
            port: free_port(),
            child: None,
        };
        std::fs::create_dir_all(&s.dir).unwrap();
        s.spawn();
        s
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 64];
                if c.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = c.read(&mut buf) {
                        if buf[..n].starts_with(b"+PONG") {
                            return;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} not ready within 20s", self.port);
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGSTOP: the server hangs, connections stay open.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process ignores SIGKILL only until continued; be safe.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}
