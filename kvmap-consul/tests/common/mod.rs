//! Shared setup of the real-server test binaries of kvmap-consul: the
//! runtime, the docker check, libtest-mimic trials, the `consul` CLI inside
//! an agent's container, and a watcher's view of a range.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::Bytes;
use futures::StreamExt;
use integration_tests::Node;
use kvmap_core::{WatchEvent, WatchStream};

/// Generous limit of every "wait until" of the tests: conditions are polled,
/// never timed, so this only bounds a hang.
pub const WAIT: Duration = Duration::from_secs(60);

/// A multi-thread runtime for a `harness = false` test binary.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Whether the binary was only asked to list its tests (no server needed).
pub fn list_only() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// `Some(exit code)` when the test binary must stop before starting servers:
/// docker is missing (skipped, unless `KVMAP_REQUIRE_DOCKER=1`). `--list`
/// never needs docker.
pub fn skip_without_docker(rt: &tokio::runtime::Runtime) -> Option<ExitCode> {
    if list_only() {
        return None;
    }
    if rt.block_on(integration_tests::docker_available_or_skip()) {
        None
    } else {
        eprintln!("skipped: every kvmap-consul real-server test of this binary needs docker");
        Some(ExitCode::SUCCESS)
    }
}

type TrialFn = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Runs named checks as libtest trials, one at a time (they share servers
/// and may inject faults), and returns the exit code.
pub fn run_trials(trials: Vec<(&'static str, TrialFn)>) -> ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let trials = trials
        .into_iter()
        .map(|(name, f)| libtest_mimic::Trial::test(name, move || f().map_err(Into::into)))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Wraps an async check on a shared runtime as a trial body.
pub fn trial<F, Fut>(rt: &Arc<tokio::runtime::Runtime>, f: F) -> TrialFn
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = rt.clone();
    Box::new(move || rt.block_on(f()).map_err(|e| format!("{e:#}")))
}

/// A random tag for this run, so keys of runs against one server never
/// collide.
pub fn run_tag() -> String {
    let n: u32 = rand::random();
    format!("{}-{n:08x}", std::process::id())
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// Polls `check` every 100 ms until it returns `Ok(Some(v))`; `Ok(None)`
/// and errors mean "not yet". Fails after `timeout` with the last reason.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    integration_tests::wait::poll_until(what, timeout, check).await
}

/// The `consul` CLI inside an agent's container, pointed at its HTTP port.
#[derive(Clone, Copy)]
pub struct Cli<'a> {
    node: &'a Node,
    http_addr_flag: &'a str,
}

/// What `consul kv get -detailed` prints of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detailed {
    /// `CreateIndex`.
    pub create_index: u64,
    /// `ModifyIndex`.
    pub modify_index: u64,
    /// `Flags`.
    pub flags: u64,
}

impl<'a> Cli<'a> {
    /// The CLI of `node`; `http_addr_flag` is `-http-addr=http://127.0.0.1:PORT`.
    pub fn new(node: &'a Node, http_addr_flag: &'a str) -> Self {
        Self {
            node,
            http_addr_flag,
        }
    }

    /// `-http-addr=...` of an agent at `base` (`http://127.0.0.1:PORT`).
    pub fn addr_flag(base: &str) -> String {
        format!("-http-addr={base}")
    }

    /// Runs `consul kv <sub> -http-addr=... <rest...>`: (exit code, stdout,
    /// stderr).
    pub async fn kv(&self, sub: &str, rest: &[&str]) -> anyhow::Result<(i64, String, String)> {
        let mut cmd = vec!["consul", "kv", sub, self.http_addr_flag];
        cmd.extend_from_slice(rest);
        self.node.exec(&cmd).await
    }

    /// Runs a kv command that must succeed; returns stdout.
    pub async fn kv_ok(&self, sub: &str, rest: &[&str]) -> anyhow::Result<String> {
        let (code, out, err) = self.kv(sub, rest).await?;
        ensure!(
            code == 0,
            "consul kv {sub} {rest:?} exited {code}: stdout {out:?} stderr {err:?}"
        );
        Ok(out)
    }

    /// `consul kv put -base64 KEY B64`: writes exactly `value`.
    pub async fn put_bytes(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let b64 = b64(value);
        self.kv_ok("put", &["-base64", key, &b64]).await.map(|_| ())
    }

    /// `consul kv put -flags=F KEY VALUE`.
    pub async fn put_flags(&self, key: &str, value: &str, flags: u64) -> anyhow::Result<()> {
        let f = format!("-flags={flags}");
        self.kv_ok("put", &[&f, key, value]).await.map(|_| ())
    }

    /// `consul kv get -base64 KEY`: the exact value bytes, `None` if the
    /// key does not exist.
    pub async fn get_bytes(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let (code, out, err) = self.kv("get", &["-base64", key]).await?;
        if code != 0 {
            ensure!(
                err.contains("No key exists"),
                "consul kv get {key:?} exited {code}: {err:?}"
            );
            return Ok(None);
        }
        Ok(Some(unb64(out.trim_end_matches('\n'))?))
    }

    /// `consul kv get -detailed KEY`, `None` if the key does not exist.
    pub async fn detailed(&self, key: &str) -> anyhow::Result<Option<Detailed>> {
        let (code, out, err) = self.kv("get", &["-detailed", key]).await?;
        if code != 0 {
            ensure!(
                err.contains("No key exists"),
                "consul kv get -detailed {key:?} exited {code}: {err:?}"
            );
            return Ok(None);
        }
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .ok_or_else(|| anyhow!("no {name} in {out:?}"))?;
            let v = line
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| anyhow!("no value of {name} in {line:?}"))?;
            v.parse().with_context(|| format!("{name} {v:?}"))
        };
        Ok(Some(Detailed {
            create_index: field("CreateIndex")?,
            modify_index: field("ModifyIndex")?,
            flags: field("Flags")?,
        }))
    }

    /// `consul kv export PREFIX`: every key under the prefix with its exact
    /// value bytes and flags.
    pub async fn export(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, (Vec<u8>, u64)>> {
        let out = self.kv_ok("export", &[prefix]).await?;
        let v: Vec<serde_json::Value> =
            serde_json::from_str(&out).with_context(|| format!("export output {out:?}"))?;
        let mut m = BTreeMap::new();
        for e in v {
            let key = e["key"]
                .as_str()
                .ok_or_else(|| anyhow!("export entry without key: {e}"))?;
            let value = unb64(e["value"].as_str().unwrap_or_default())?;
            let flags = e["flags"].as_u64().unwrap_or_default();
            m.insert(key.to_owned(), (value, flags));
        }
        Ok(m)
    }

    /// `consul kv delete KEY`.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.kv_ok("delete", &[key]).await.map(|_| ())
    }
}

/// Standard base64 of `b`.
pub fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes standard base64.
pub fn unb64(s: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .with_context(|| format!("base64 {s:?}"))
}

/// What a watcher knows of its range, built only from the events it
/// received (a `Resync` replaces it), and counts of the event kinds.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Key → value as the events say.
    pub state: BTreeMap<String, Bytes>,
    /// Put events.
    pub puts: usize,
    /// Delete events.
    pub deletes: usize,
    /// Expired events.
    pub expired: usize,
    /// Resync events.
    pub resyncs: usize,
    /// Errors the stream yielded (it went on after them).
    pub errors: Vec<String>,
    /// Whether the stream ended.
    pub ended: bool,
    /// Every (key, value) a put or resync ever showed.
    pub ever: Vec<(String, Bytes)>,
    /// Per key, the revisions of its put/delete/expired events in arrival
    /// order.
    pub revisions: BTreeMap<String, Vec<u64>>,
}

impl View {
    fn apply(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Put { entry, .. } => {
                self.puts += 1;
                let k = entry.key.as_str().to_owned();
                self.revisions
                    .entry(k.clone())
                    .or_default()
                    .push(entry.revision);
                self.ever.push((k.clone(), entry.value.clone()));
                self.state.insert(k, entry.value);
            }
            WatchEvent::Delete { key, revision, .. } => {
                self.deletes += 1;
                self.revisions
                    .entry(key.as_str().to_owned())
                    .or_default()
                    .push(revision);
                self.state.remove(key.as_str());
            }
            WatchEvent::Expired { key, revision, .. } => {
                self.expired += 1;
                self.revisions
                    .entry(key.as_str().to_owned())
                    .or_default()
                    .push(revision);
                self.state.remove(key.as_str());
            }
            WatchEvent::Resync { entries, .. } => {
                self.resyncs += 1;
                self.state.clear();
                for e in entries {
                    let k = e.key.as_str().to_owned();
                    self.ever.push((k.clone(), e.value.clone()));
                    self.state.insert(k, e.value);
                }
            }
        }
    }
}

/// A watch stream consumed by a background task into a shared [`View`].
pub struct Watcher {
    view: Arc<Mutex<View>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Starts consuming `stream`.
    pub fn spawn(mut stream: WatchStream) -> Self {
        let view: Arc<Mutex<View>> = Arc::default();
        let v = view.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let mut g = v.lock().unwrap();
                match ev {
                    Ok(ev) => g.apply(ev),
                    Err(e) => g.errors.push(format!("{e} ({:?})", e.kind())),
                }
            }
            v.lock().unwrap().ended = true;
        });
        Self { view, task }
    }

    /// A copy of the view now.
    pub fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// Waits until the view's state equals `want` (key → value).
    pub async fn wait_state(
        &self,
        what: &str,
        want: &BTreeMap<String, Bytes>,
        timeout: Duration,
    ) -> anyhow::Result<View> {
        let start = tokio::time::Instant::now();
        loop {
            let v = self.view();
            if &v.state == want {
                return Ok(v);
            }
            if v.ended {
                bail!("{what}: the watch stream ended; view {v:?}, want {want:?}");
            }
            if start.elapsed() > timeout {
                bail!("{what}: the watch never showed {want:?} within {timeout:?}; view {v:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Key → value of `entries`.
pub fn state_of(entries: &[kvmap_core::Entry]) -> BTreeMap<String, Bytes> {
    entries
        .iter()
        .map(|e| (e.key.as_str().to_owned(), e.value.clone()))
        .collect()
}

/// Builds a key → value map from pairs.
pub fn state<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, Bytes> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

type StartFn<T> =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, anyhow::Result<T>> + Send + Sync>;

/// A topology started on first use (so `--list` and filtered runs start
/// only what they need), shared by the trials of a binary.
pub struct Lazy<T> {
    cell: tokio::sync::OnceCell<T>,
    start: StartFn<T>,
}

impl<T> Lazy<T> {
    /// A topology that `start` brings up on first use.
    pub fn new<F, Fut>(start: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        Self {
            cell: tokio::sync::OnceCell::new(),
            start: Box::new(move || Box::pin(start())),
        }
    }

    /// The topology, started now if it is not yet.
    pub async fn get(&self) -> anyhow::Result<&T> {
        self.cell.get_or_try_init(|| (self.start)()).await
    }
}

/// Every error message of `e` and its sources, and its `Debug`.
pub fn all_text(e: &kvmap_core::Error) -> String {
    let mut s = format!("{e} | {e:?} | {e:#}");
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(" | {x} | {x:?}"));
        src = x.source();
    }
    s
}
