//! Security on real Consul: an ACL agent with `default_policy = "deny"`
//! (no token, a wrong token, a read-only token on a prefix), the token
//! never shown (errors, `Debug`, serialized config, log lines), and what is
//! not a Consul agent (a raw TCP service, HTTP servers answering 404 or
//! HTML, a listener that never answers, a closed port, plain HTTP behind
//! `https://`).

#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use common::{all_text, wait_for, Lazy, Watcher, WAIT};
use integration_tests::wait::with_timeout;
use integration_tests::{ConsulAcl, ConsulDev};
use kvmap_consul::{ConsulConfig, ConsulStore};
use kvmap_core::{
    Batch, Context, DeleteOptions, Error, ErrorKind, Key, KvStore, KvStoreExt, ListRequest,
    WatchRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------
// Every log line of the process, to check that no token is ever logged.
// ---------------------------------------------------------------------------

static LOG: Mutex<String> = Mutex::new(String::new());

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = format!("span {}:", span.metadata().name());
        span.record(&mut Fields(&mut line));
        line.push('\n');
        LOG.lock().unwrap().push_str(&line);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::from("record:");
        values.record(&mut Fields(&mut line));
        line.push('\n');
        LOG.lock().unwrap().push_str(&line);
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = format!(
            "{} {}:",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Fields(&mut line));
        line.push('\n');
        LOG.lock().unwrap().push_str(&line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn log_text() -> String {
    LOG.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------

fn config(addr: String) -> ConsulConfig {
    ConsulConfig::new(addr)
        .with_request_timeout(Duration::from_secs(3))
        .with_watch_wait(Duration::from_secs(2))
}

/// The token must appear nowhere in `texts`.
fn hidden(token: &str, what: &str, text: &str) -> anyhow::Result<()> {
    ensure!(!text.contains(token), "the token leaked in {what}: {text}");
    Ok(())
}

fn random_token() -> String {
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

/// Creates a policy with `rules` and a token for it through the ACL HTTP
/// API; returns the token's secret.
async fn make_token(acl: &ConsulAcl, name: &str, rules: &str) -> anyhow::Result<String> {
    let client = integration_tests::consul::http_client();
    let base = acl.http_addr();
    let resp = client
        .put(format!("{base}/v1/acl/policy"))
        .header("X-Consul-Token", acl.master_token())
        .json(&serde_json::json!({ "Name": name, "Rules": rules }))
        .send()
        .await?;
    let status = resp.status();
    ensure!(
        status.is_success(),
        "create policy: {status} {}",
        resp.text().await?
    );
    let resp = client
        .put(format!("{base}/v1/acl/token"))
        .header("X-Consul-Token", acl.master_token())
        .json(&serde_json::json!({
            "Description": format!("kvmap test token {name}"),
            "Policies": [{ "Name": name }],
        }))
        .send()
        .await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    ensure!(status.is_success(), "create token: {status} {body}");
    body["SecretID"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no SecretID in {body}"))
}

fn denied(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unauthenticated | ErrorKind::PermissionDenied
    )
}

async fn no_token(acl: &ConsulAcl) -> anyhow::Result<()> {
    let e = ConsulStore::connect(config(acl.http_addr()))
        .await
        .err()
        .ok_or_else(|| anyhow!("connected to a deny-by-default agent without a token"))?;
    eprintln!("no token: {e}");
    ensure!(denied(&e), "no token: {e} ({e:?})");
    ensure!(
        e.retry_class() == kvmap_core::RetryClass::Never,
        "no token: retry class {:?}",
        e.retry_class()
    );
    hidden(acl.master_token(), "the no-token error", &all_text(&e))?;
    Ok(())
}

async fn wrong_token(acl: &ConsulAcl) -> anyhow::Result<()> {
    let token = random_token();
    let cfg = config(acl.http_addr()).with_token(token.clone());
    let e = ConsulStore::connect(cfg.clone())
        .await
        .err()
        .ok_or_else(|| anyhow!("connected with an unknown token"))?;
    eprintln!("wrong token: {e}");
    ensure!(denied(&e), "wrong token: {e} ({e:?})");
    hidden(&token, "the wrong-token error", &all_text(&e))?;
    hidden(&token, "the config's Debug", &format!("{cfg:?} {cfg:#?}"))?;
    hidden(
        &token,
        "the serialized config",
        &serde_json::to_string(&cfg)?,
    )?;
    hidden(&token, "the log", &log_text())?;
    Ok(())
}

/// A token that may only read `prefix`: reads work, every write is
/// `PermissionDenied` and writes nothing; the token is never shown.
async fn read_only_token(acl: &ConsulAcl, tag: &str) -> anyhow::Result<()> {
    let prefix = format!("kvmap-sec/{tag}/ro/");
    let rules = format!(r#"key_prefix "{prefix}" {{ policy = "read" }}"#);
    let token = make_token(acl, &format!("kvmap-ro-{tag}"), &rules).await?;
    let admin = ConsulStore::connect(
        config(acl.http_addr())
            .with_token(acl.master_token())
            .with_key_prefix(prefix.clone()),
    )
    .await?;
    let ctx = Context::new();
    let a = Key::new("a")?;
    let rev = admin.set(&ctx, &a, "v1").await?;
    let cfg = config(acl.http_addr())
        .with_token(token.clone())
        .with_key_prefix(prefix.clone())
        .with_reaper_interval(Some(Duration::from_millis(200)));
    let ro = ConsulStore::connect(cfg.clone())
        .await
        .with_context(|| format!("connect with a token that may read {prefix:?}"))?;
    // Reads.
    let e = ro
        .get(&ctx, &a)
        .await?
        .ok_or_else(|| anyhow!("read-only get lost a"))?;
    ensure!(e.value == "v1" && e.revision == rev, "read-only get: {e:?}");
    let listed = ro
        .list_all(&ctx, ListRequest::prefix(""), usize::MAX)
        .await?;
    ensure!(
        listed.len() == 1 && listed[0].key == a,
        "read-only list: {listed:?}"
    );
    let many = ro.get_many(&ctx, std::slice::from_ref(&a)).await?;
    ensure!(
        matches!(&many[0], Ok(Some(e)) if e.value == "v1"),
        "read-only get_many: {many:?}"
    );
    let strong = Context::new().with_consistency(kvmap_core::Consistency::Strong);
    ensure!(ro.get(&strong, &a).await?.is_some(), "read-only strong get");
    // A watch with the read-only token sees the admin's writes.
    let w = Watcher::spawn(ro.watch(&ctx, WatchRequest::prefix("")).await?);
    admin.set(&ctx, &Key::new("watched")?, "w").await?;
    wait_for("the read-only watch to see a write", WAIT, || async {
        Ok(w.view().state.contains_key("watched").then_some(()))
    })
    .await?;
    // Writes: every kind refused, nothing written. Every wrong answer is
    // collected, so one run reports all of them.
    let mut errors: Vec<Error> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    let mut refused = |what: &str, r: kvmap_core::Result<()>| match r {
        Ok(()) => wrong.push(format!("{what} succeeded")),
        Err(e) => {
            if e.kind() != ErrorKind::PermissionDenied {
                wrong.push(format!(
                    "{what}: {:?}, want PermissionDenied: {e}",
                    e.kind()
                ));
            } else if e.retry_class() != kvmap_core::RetryClass::Never {
                wrong.push(format!("{what}: retry class {:?}", e.retry_class()));
            }
            errors.push(e);
        }
    };
    refused("put", ro.set(&ctx, &a, "v2").await.map(drop));
    refused(
        "create",
        ro.create(&ctx, &Key::new("new")?, "x").await.map(drop),
    );
    refused("update", ro.update(&ctx, &a, "v3", rev).await.map(drop));
    refused(
        "put with ttl",
        ro.set_with_ttl(&ctx, &Key::new("ttl")?, "x", Duration::from_secs(60))
            .await
            .map(drop),
    );
    refused("delete", ro.remove(&ctx, &a).await.map(drop));
    refused(
        "conditional delete",
        ro.delete(&ctx, &a, DeleteOptions::if_revision(rev))
            .await
            .map(drop),
    );
    let batch = Batch::new()
        .put(Key::new("b1")?, "x")
        .put(Key::new("b2")?, "y");
    match ro.apply(&ctx, batch).await {
        Err(e) => refused("batch", Err(e)),
        Ok(out) => {
            for (i, r) in out.into_iter().enumerate() {
                refused(&format!("batch op {i}"), r.map(drop));
            }
        }
    }
    // A lock needs `session:write` (and key write on the lock key): refused
    // at the session create, typed, nothing left behind.
    refused(
        "lock",
        ro.lock(
            &ctx,
            &Key::new("locked")?,
            kvmap_core::LockOptions::try_lock(Duration::from_secs(10)),
        )
        .await
        .map(drop),
    );
    // With `session:write` but only key read, the lock txn is refused.
    let session_rules = format!(
        r#"key_prefix "{prefix}" {{ policy = "read" }}
session_prefix "" {{ policy = "write" }}"#
    );
    let session_token = make_token(acl, &format!("kvmap-ro-session-{tag}"), &session_rules).await?;
    let ro_session = ConsulStore::connect(
        config(acl.http_addr())
            .with_token(session_token.clone())
            .with_key_prefix(prefix.clone()),
    )
    .await?;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        ro_session.lock(
            &ctx,
            &Key::new("locked")?,
            kvmap_core::LockOptions::try_lock(Duration::from_secs(10)),
        ),
    )
    .await
    .map_err(|_| anyhow!("a lock refused by the acl waited instead of failing"))?;
    if let Err(e) = &r {
        hidden(&session_token, "a lock permission error", &all_text(e))?;
    }
    refused("lock with session:write only", r.map(drop));
    let e = admin
        .get(&ctx, &a)
        .await?
        .ok_or_else(|| anyhow!("a was deleted"))?;
    ensure!(
        e.value == "v1" && e.revision == rev,
        "a refused write changed a: {e:?}"
    );
    for k in ["new", "ttl", "b1", "b2"] {
        ensure!(
            admin.get(&ctx, &Key::new(k)?).await?.is_none(),
            "a refused write created {k:?}"
        );
    }
    // The token nowhere.
    for e in &errors {
        hidden(&token, "a permission error", &all_text(e))?;
    }
    hidden(&token, "the store's Debug", &format!("{ro:?} {ro:#?}"))?;
    hidden(&token, "the config's Debug", &format!("{cfg:?} {cfg:#?}"))?;
    hidden(
        &token,
        "the serialized config",
        &serde_json::to_string(&cfg)?,
    )?;
    hidden(
        &token,
        "the store config's Debug",
        &format!("{:?}", ro.config()),
    )?;
    hidden(&token, "the log", &log_text())?;
    hidden(acl.master_token(), "the log", &log_text())?;
    ensure!(
        wrong.is_empty(),
        "writes with a read-only token:\n{}",
        wrong.join("\n")
    );
    // The master token passes where the read-only one was refused.
    admin.set(&ctx, &a, "v2").await?;
    let g = admin
        .lock(
            &ctx,
            &Key::new("locked")?,
            kvmap_core::LockOptions::try_lock(Duration::from_secs(10)),
        )
        .await?;
    g.release().await?;
    Ok(())
}

/// A toy server on loopback: `answer` gets each connection.
async fn serve<F, Fut>(answer: F) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(answer(sock));
        }
    });
    Ok((addr, task))
}

/// Reads one HTTP request head, then writes `response`.
async fn http_answer(mut sock: tokio::net::TcpStream, response: &'static str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found";
const HTML: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 20\r\nConnection: close\r\n\r\n<html>hello</html>\r\n";

/// Whether an error message says the server is not a Consul agent.
fn says_not_consul(msg: &str) -> bool {
    let m = msg.to_lowercase();
    [
        "not a consul",
        "is it a consul",
        "like a consul",
        "not consul",
    ]
    .iter()
    .any(|p| m.contains(p))
}

async fn connect_err(addr: String) -> anyhow::Result<Error> {
    connect_err_cfg(config(addr)).await
}

async fn connect_err_cfg(cfg: ConsulConfig) -> anyhow::Result<Error> {
    let addrs = cfg.addrs.clone();
    with_timeout("connect", Duration::from_secs(30), async {
        ConsulStore::connect(cfg)
            .await
            .err()
            .ok_or_else(|| anyhow!("connected to {addrs:?}, which should fail"))
    })
    .await
}

async fn not_consul() -> anyhow::Result<()> {
    let (ssh, t1) = serve(|mut s| async move {
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let _ = s.shutdown().await;
    })
    .await?;
    let (nf, t2) = serve(|s| http_answer(s, NOT_FOUND)).await?;
    let (html, t3) = serve(|s| http_answer(s, HTML)).await?;
    let mut failures = Vec::new();
    for (what, addr) in [
        ("raw tcp service", ssh),
        ("http 404", nf),
        ("html page", html),
    ] {
        let e = connect_err(addr.clone()).await?;
        eprintln!("{what}: {e}");
        if !matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::InvalidData) {
            failures.push(format!("{what}: kind {:?}: {e}", e.kind()));
        } else if !says_not_consul(&e.to_string()) {
            failures.push(format!(
                "{what}: the message does not say it is no consul agent: {e}"
            ));
        }
    }
    for t in [t1, t2, t3] {
        t.abort();
    }
    ensure!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

async fn silent_listener() -> anyhow::Result<()> {
    let held: Arc<Mutex<Vec<tokio::net::TcpStream>>> = Arc::default();
    let h = held.clone();
    let (addr, task) = serve(move |s| {
        // Accept and keep the connection open, never answer.
        h.lock().unwrap().push(s);
        async {}
    })
    .await?;
    let e = connect_err(addr).await?;
    task.abort();
    eprintln!("silent listener: {e}");
    ensure!(
        matches!(
            e.kind(),
            ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::InvalidData
        ),
        "a listener that never answers: {e} ({e:?})"
    );
    Ok(())
}

async fn unreachable() -> anyhow::Result<()> {
    let port = integration_tests::free_port();
    let e = connect_err(format!("http://127.0.0.1:{port}")).await?;
    eprintln!("closed port: {e}");
    ensure!(
        e.kind() == ErrorKind::Unavailable,
        "closed port: {e} ({e:?})"
    );
    ensure!(
        e.to_string().contains(&port.to_string()),
        "the message does not name the address: {e}"
    );
    // Several closed ports: still one typed error.
    let (p1, p2) = (
        integration_tests::free_port(),
        integration_tests::free_port(),
    );
    let cfg = config(format!("http://127.0.0.1:{p1}")).with_addrs(vec![
        format!("http://127.0.0.1:{p1}"),
        format!("http://127.0.0.1:{p2}"),
    ]);
    let e = with_timeout("connect", Duration::from_secs(30), async {
        ConsulStore::connect(cfg)
            .await
            .err()
            .ok_or_else(|| anyhow!("connected to closed ports"))
    })
    .await?;
    ensure!(
        e.kind() == ErrorKind::Unavailable,
        "closed ports: {e} ({e:?})"
    );
    Ok(())
}

/// `https://` in front of a plain-HTTP agent fails clearly, not as a hang.
async fn https_to_plain_http(dev: &ConsulDev) -> anyhow::Result<()> {
    let addr = dev.http_addr().replacen("http://", "https://", 1);
    let e = connect_err(addr).await?;
    eprintln!("https to a plain http agent: {e}");
    ensure!(
        matches!(
            e.kind(),
            ErrorKind::Unavailable | ErrorKind::InvalidData | ErrorKind::Unauthenticated
        ),
        "https to plain http: {e} ({e:?})"
    );
    ensure!(
        e.to_string().to_lowercase().contains("tls"),
        "the message does not name tls: {e}"
    );
    // The same agent over http works.
    let store = ConsulStore::connect(config(dev.http_addr())).await?;
    store
        .set(&Context::new(), &Key::new("sec/http")?, "ok")
        .await?;
    Ok(())
}

/// A dev agent serving HTTPS with the harness's generated certificates
/// (the harness has no Consul TLS topology yet, so it is started here on
/// the harness's container start path, with the certificates mounted).
struct ConsulTls {
    _container: integration_tests::docker::Container,
    https_port: u16,
    tls: integration_tests::TlsMaterial,
}

impl ConsulTls {
    async fn start() -> anyhow::Result<Self> {
        use integration_tests::TlsMaterial;
        let tls = TlsMaterial::generate()?;
        let p = integration_tests::ConsulPorts::allocate();
        let https_port = integration_tests::free_port();
        let name = format!("kvmap-it-consul-tls-{https_port}-{}", std::process::id());
        let mut args: Vec<String> = [
            "agent",
            "-dev",
            "-client",
            "127.0.0.1",
            "-bind",
            "127.0.0.1",
            "-node",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(name.clone());
        for (flag, port) in [
            ("-http-port", p.http),
            ("-dns-port", p.dns),
            ("-serf-lan-port", p.serf_lan),
            ("-serf-wan-port", p.serf_wan),
            ("-server-port", p.server),
            ("-grpc-port", p.grpc),
        ] {
            args.extend([flag.to_owned(), port.to_string()]);
        }
        args.extend([
            "-hcl".to_owned(),
            format!(
                r#"ports {{ https = {https_port} }} ca_file = "/tls/{}" cert_file = "/tls/{}" key_file = "/tls/{}" verify_incoming = false"#,
                TlsMaterial::CA_FILE,
                TlsMaterial::CERT_FILE,
                TlsMaterial::KEY_FILE
            ),
        ]);
        let container =
            integration_tests::docker::start_container(integration_tests::docker::ContainerSpec {
                image: integration_tests::consul_image(),
                entrypoint: "consul".into(),
                args,
                name,
                binds: vec![(tls.dir().display().to_string(), "/tls".to_owned())],
            })
            .await?;
        Ok(Self {
            _container: container,
            https_port,
            tls,
        })
    }

    fn https_addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }
}

/// HTTPS with the generated CA works; a wrong CA fails clearly.
async fn tls_ca(agent: &ConsulTls) -> anyhow::Result<()> {
    let cfg = config(agent.https_addr()).with_ca_pem(agent.tls.ca_pem());
    let store = wait_for("the https agent to accept kvmap", WAIT, || async {
        Ok(Some(ConsulStore::connect(cfg.clone()).await?))
    })
    .await?;
    let ctx = Context::new();
    let k = Key::new("sec/tls")?;
    let rev = store.set(&ctx, &k, "over tls").await?;
    let e = store
        .get(&ctx, &k)
        .await?
        .ok_or_else(|| anyhow!("missing"))?;
    ensure!(e.value == "over tls" && e.revision == rev, "{e:?}");
    let wrong = config(agent.https_addr()).with_ca_pem(integration_tests::wrong_ca_pem()?);
    let e = connect_err_cfg(wrong).await?;
    eprintln!("wrong ca: {e}");
    ensure!(
        e.kind() == ErrorKind::Unauthenticated,
        "wrong ca: {e} ({e:?})"
    );
    let m = e.to_string().to_lowercase();
    ensure!(
        m.contains("tls") && m.contains("certificate"),
        "the message does not name tls and the certificate: {e}"
    );
    Ok(())
}

struct Env {
    acl: Lazy<ConsulAcl>,
    dev: Lazy<ConsulDev>,
    tls: Lazy<ConsulTls>,
    tag: String,
}

fn main() -> std::process::ExitCode {
    // Installed before any store exists, so every log line is captured.
    if tracing::subscriber::set_global_default(Capture).is_err() {
        eprintln!("a tracing subscriber was already set; log lines are not checked");
    }
    let infra = Arc::new(common::runtime());
    if let Some(code) = common::skip_without_docker(&infra) {
        return code;
    }
    let env = Arc::new(Env {
        acl: Lazy::new(ConsulAcl::start),
        dev: Lazy::new(ConsulDev::start),
        tls: Lazy::new(ConsulTls::start),
        tag: common::run_tag(),
    });
    let (e1, e2, e3, e4, e5) = (
        env.clone(),
        env.clone(),
        env.clone(),
        env.clone(),
        env.clone(),
    );
    let trials = vec![
        (
            "consul_acl_no_token_is_refused_at_connect",
            common::trial(&infra, move || async move {
                no_token(e1.acl.get().await?).await
            }),
        ),
        (
            "consul_acl_wrong_token_is_refused_and_never_shown",
            common::trial(&infra, move || async move {
                wrong_token(e2.acl.get().await?).await
            }),
        ),
        (
            "consul_acl_read_only_token_reads_and_is_denied_writes",
            common::trial(&infra, move || async move {
                read_only_token(e3.acl.get().await?, &e3.tag).await
            }),
        ),
        (
            "consul_not_consul_servers_are_typed_errors",
            common::trial(&infra, not_consul),
        ),
        (
            "consul_silent_listener_times_out_typed",
            common::trial(&infra, silent_listener),
        ),
        (
            "consul_unreachable_agent_is_unavailable",
            common::trial(&infra, unreachable),
        ),
        (
            "consul_https_to_plain_http_agent_names_tls",
            common::trial(&infra, move || async move {
                https_to_plain_http(e4.dev.get().await?).await
            }),
        ),
        (
            "consul_tls_generated_ca_works_wrong_ca_is_unauthenticated",
            common::trial(
                &infra,
                move || async move { tls_ca(e5.tls.get().await?).await },
            ),
        ),
    ];
    let code = common::run_trials(trials);
    infra.block_on(async move { drop(env) });
    code
}
