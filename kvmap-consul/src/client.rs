//! A thin Consul HTTP client on `reqwest`: agent failover, the token
//! header, and the three headers every answer carries (`X-Consul-Index`,
//! `X-Consul-KnownLeader`, `X-Consul-LastContact`), read on every answer,
//! 404 included.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvmap_core::{ErrorKind, Op, Result};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::ConsulConfig;
use crate::error::{own, status, transport};

/// One Consul answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: u16,
    /// `X-Consul-Index` (0 when absent).
    pub(crate) index: u64,
    /// `X-Consul-KnownLeader` (true when absent, as on write endpoints).
    pub(crate) known_leader: bool,
    /// `X-Consul-LastContact`, for stale reads.
    pub(crate) last_contact: Option<Duration>,
    /// The body.
    pub(crate) body: Bytes,
}

/// The HTTP client of one store.
#[derive(Clone)]
pub(crate) struct ConsulClient {
    http: reqwest::Client,
    addrs: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    datacenter: Option<String>,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("addrs", &self.addrs)
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

/// The rustls configuration, on the ring provider (the workspace's one
/// crypto provider; no process-wide default needed). Plain-http clients get
/// one with no roots: reqwest with rustls needs a configuration, never used.
fn tls_config(cfg: &ConsulConfig, uses_tls: bool) -> Result<rustls::ClientConfig> {
    let bad = |d: String| own(ErrorKind::InvalidArgument, Op::Open, None, d);
    let mut roots = rustls::RootCertStore::empty();
    let pem = match (&cfg.tls_ca_pem, &cfg.tls_ca_file) {
        _ if !uses_tls => None,
        (Some(p), _) => Some(p.clone().into_bytes()),
        (None, Some(path)) => Some(
            std::fs::read(path)
                .map_err(|e| bad(format!("cannot read the ca file {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    match pem {
        Some(pem) => {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| bad(format!("ca certificate is not valid pem: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("ca certificate rejected: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(bad("ca pem holds no certificate".to_owned()));
            }
        }
        None if !uses_tls => {}
        None => {
            // System roots only matter for https agents; plain-http users
            // must not fail on a machine without a CA bundle.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("tls setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl ConsulClient {
    /// Builds the client (no I/O).
    pub(crate) fn new(cfg: &ConsulConfig) -> Result<Self> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &cfg.token {
            let mut v = HeaderValue::from_str(token).map_err(|_| {
                own(
                    ErrorKind::InvalidArgument,
                    Op::Open,
                    None,
                    "the acl token holds characters not allowed in an http header",
                )
            })?;
            v.set_sensitive(true);
            headers.insert("X-Consul-Token", v);
        }
        let uses_tls = cfg.addrs.iter().any(|a| a.starts_with("https://"));
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        builder = builder.tls_backend_preconfigured(tls_config(cfg, uses_tls)?);
        let http = builder.build().map_err(|e| {
            own(
                ErrorKind::InvalidArgument,
                Op::Open,
                None,
                format!("http client: {e}"),
            )
        })?;
        Ok(Self {
            http,
            addrs: Arc::new(
                cfg.addrs
                    .iter()
                    .map(|a| a.trim_end_matches('/').to_owned())
                    .collect(),
            ),
            current: Arc::new(AtomicUsize::new(0)),
            datacenter: cfg.datacenter.clone(),
        })
    }

    /// The agent requests go to now.
    pub(crate) fn current_addr(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.addrs.len().max(1);
        self.addrs.get(i).map_or("", String::as_str)
    }

    /// Sends one request to `/v1/{path}?{query}` (`path` already encoded).
    /// A connection failure (nothing sent) moves on to the next agent.
    /// Non-2xx answers other than 404 become errors; 404 is returned.
    // One flat call per request keeps every call site a readable table of
    // the request's parts; a builder would add a type for no gain.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, Option<String>)],
        body: Option<Vec<u8>>,
        timeout: Duration,
        op: Op,
        key: Option<&str>,
    ) -> Result<Answer> {
        let n = self.addrs.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..n {
            let i = (start + attempt) % n;
            let Some(addr) = self.addrs.get(i) else {
                break;
            };
            let url = build_url(addr, path, query, self.datacenter.as_deref());
            let mut req = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    if attempt > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return read_answer(resp, op, key, addr).await;
                }
                Err(e) if e.is_connect() => last = Some(transport(e, op, key, addr)),
                Err(e) => return Err(transport(e, op, key, addr)),
            }
        }
        Err(last.unwrap_or_else(|| own(ErrorKind::Unavailable, op, key, "no consul agent address")))
    }
}

fn build_url(addr: &str, path: &str, query: &[(&str, Option<String>)], dc: Option<&str>) -> String {
    let mut url = format!("{addr}/v1/{path}");
    let mut sep = '?';
    let dc_pair = dc.map(|d| ("dc", Some(d.to_owned())));
    for (k, v) in query.iter().chain(dc_pair.iter()) {
        url.push(sep);
        sep = '&';
        url.push_str(k);
        if let Some(v) = v {
            url.push('=');
            url.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        }
    }
    url
}

async fn read_answer(
    resp: reqwest::Response,
    op: Op,
    key: Option<&str>,
    addr: &str,
) -> Result<Answer> {
    let code = resp.status().as_u16();
    let h = resp.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let index_header = header("X-Consul-Index");
    let index = index_header
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let known_leader = header("X-Consul-KnownLeader").is_none_or(|v| v == "true");
    let last_contact = header("X-Consul-LastContact")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let is_consul = index_header.is_some()
        || h.contains_key("X-Consul-Effective-Consistency")
        || h.contains_key("X-Consul-Default-ACL-Policy");
    let body = resp
        .bytes()
        .await
        .map_err(|e| transport(e, op, key, addr))?;
    if code == 404 && !is_consul {
        return Err(own(
            ErrorKind::Unavailable,
            op,
            key,
            format!("{addr} answered 404 without consul headers: is it a consul agent?"),
        ));
    }
    if !(200..300).contains(&code) && code != 404 && code != 409 {
        return Err(status(code, &body, op, key));
    }
    Ok(Answer {
        status: code,
        index,
        known_leader,
        last_contact,
        body,
    })
}
