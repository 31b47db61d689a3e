//! The subcommands other than `demo`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvmap::{
    Context, DeleteOptions, Entry, Key, KvStore, ListRequest, PutOptions, Result, WatchEvent,
    WatchRequest,
};

use crate::output::{self, Format};
use crate::Command;

/// Opens the store of one `--url`, or a fallback chain of several.
pub(crate) async fn open(
    urls: &[String],
    policy: &str,
    outbox: Option<&std::path::Path>,
) -> Result<Arc<dyn KvStore>> {
    use kvmap::fallback::{ChainConfig, FallbackChain, OutboxConfig, WritePolicy};
    if let [url] = urls {
        return kvmap::open(url).await;
    }
    let invalid = |why: String| {
        kvmap::Error::new(kvmap::ErrorKind::InvalidArgument)
            .with_backend("kvmap")
            .with_op(kvmap::Op::Open)
            .with_detail(why)
    };
    let policy = match (policy, outbox) {
        ("reject", _) => WritePolicy::Reject,
        ("write-through", _) => WritePolicy::WriteThrough,
        ("outbox", Some(dir)) => WritePolicy::Outbox(OutboxConfig::new(dir)),
        ("outbox", None) => return Err(invalid("--write-policy outbox needs --outbox DIR".into())),
        (other, _) => {
            return Err(invalid(format!(
                "unknown write policy {other:?} (reject, write-through, outbox)"
            )))
        }
    };
    let mut builder = FallbackChain::builder();
    for (i, url) in urls.iter().enumerate() {
        let store = kvmap::open(url).await?;
        builder = builder.backend(&format!("{}#{i}", store.name()), store);
    }
    let chain = builder
        .config(ChainConfig::default().with_write_policy(policy))
        .build()
        .await?;
    Ok(Arc::new(chain))
}

/// `url` with `create=false` added when it is a RocksDB URL without a
/// `create` parameter (for commands that only read).
pub(crate) fn never_create(url: &str) -> String {
    let is_rocksdb = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("rocksdb:"));
    let has_create = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("create=")));
    match (is_rocksdb, has_create, url.contains('?')) {
        (true, false, true) => format!("{url}&create=false"),
        (true, false, false) => format!("{url}?create=false"),
        _ => url.to_owned(),
    }
}

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It did what was asked.
    Done,
    /// `get` or `delete` found no such key (exit status 3).
    Absent,
}

pub(crate) async fn run(
    store: Arc<dyn KvStore>,
    command: Command,
    timeout: Duration,
    format: Format,
) -> Result<Outcome> {
    let json = format == Format::Json;
    let ctx = || Context::new().with_timeout(timeout);
    match command {
        Command::Tour => crate::tour::run(store).await.map(|()| Outcome::Done),
        Command::Demo(_) | Command::Lock(_) => Ok(Outcome::Done),
        Command::Get { key, verbose, raw } => match store.get(&ctx(), &Key::new(key)?).await? {
            Some(e) if raw => {
                let mut out = std::io::stdout().lock();
                out.write_all(&e.value)
                    .and_then(|()| out.flush())
                    .map_err(|e| io_error("writing the value to stdout", &e))?;
                Ok(Outcome::Done)
            }
            Some(e) if json => {
                println!("{}", output::entry(&e, true));
                Ok(Outcome::Done)
            }
            Some(e) if verbose => {
                println!("{}", describe(&e));
                Ok(Outcome::Done)
            }
            Some(e) => {
                println!("{}", String::from_utf8_lossy(&e.value));
                Ok(Outcome::Done)
            }
            None => {
                eprintln!("(absent)");
                Ok(Outcome::Absent)
            }
        },
        Command::Put {
            key,
            value,
            value_file,
            ttl,
            create,
            if_revision,
        } => {
            let mut options = match (create, if_revision) {
                (true, _) => PutOptions::create(),
                (false, Some(r)) => PutOptions::update(r),
                (false, None) => PutOptions::overwrite(),
            };
            options.ttl = ttl;
            let key = Key::new(key)?;
            let value = match (value, value_file) {
                (Some(v), _) => bytes::Bytes::from(v),
                (None, Some(path)) => read_value(&path)?,
                (None, None) => {
                    return Err(kvmap::Error::new(kvmap::ErrorKind::InvalidArgument)
                        .with_op(kvmap::Op::Put)
                        .with_detail("give a value or --value-file"))
                }
            };
            let rev = store.put(&ctx(), &key, value, options).await?;
            if json {
                println!("{}", serde_json::json!({ "revision": rev }));
            } else {
                println!("revision {rev}");
            }
            Ok(Outcome::Done)
        }
        Command::Delete { key, if_revision } => {
            let mut options = DeleteOptions::default();
            options.if_revision = if_revision;
            if store.delete(&ctx(), &Key::new(key)?, options).await? {
                if json {
                    println!("{}", serde_json::json!({ "deleted": true }));
                } else {
                    println!("deleted");
                }
                Ok(Outcome::Done)
            } else {
                eprintln!("(absent)");
                Ok(Outcome::Absent)
            }
        }
        Command::List {
            prefix,
            limit,
            all,
            keys_only,
        } => {
            let mut req = ListRequest::prefix(prefix);
            if keys_only {
                req = req.keys_only();
            }
            let limit = if all { usize::MAX } else { limit };
            let mut printed = 0usize;
            let mut out = std::io::stdout().lock();
            let more = loop {
                let page = store.list(&ctx(), &req).await?;
                let mut entries = page.entries.into_iter();
                for e in entries.by_ref().take(limit - printed) {
                    let line = if json {
                        output::entry(&e, !keys_only).to_string()
                    } else if keys_only {
                        e.key.to_string()
                    } else {
                        describe(&e)
                    };
                    writeln!(out, "{line}").map_err(|e| io_error("writing to stdout", &e))?;
                    printed += 1;
                }
                if entries.next().is_some() {
                    break true;
                }
                match page.cursor {
                    None => break false,
                    Some(c) if printed == limit => {
                        // A cursor says "maybe more": look at one entry.
                        req.cursor = Some(c);
                        req.limit = Some(1);
                        break !store.list(&ctx(), &req).await?.entries.is_empty();
                    }
                    Some(c) => req.cursor = Some(c),
                }
            };
            let _ = out.flush();
            if more {
                eprintln!("(stopped at --limit {limit}; more entries follow: use --all or a higher --limit)");
            }
            Ok(Outcome::Done)
        }
        Command::Watch {
            prefix,
            from_revision,
            count,
        } => {
            let mut req = WatchRequest::prefix(prefix);
            req.start_revision = from_revision;
            let mut stream = store.watch(&Context::new(), req).await?;
            let mut seen = 0;
            while let Some(ev) = stream.next().await {
                let ev = ev?;
                if json {
                    println!("{}", output::event(&ev));
                } else {
                    println!("{}", describe_event(&ev));
                }
                let _ = std::io::stdout().flush();
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            Ok(Outcome::Done)
        }
        Command::Info => {
            let caps = store.capabilities();
            if json {
                println!("{}", output::info(store.name(), &caps));
                return Ok(Outcome::Done);
            }
            println!("backend: {}", store.name());
            for (cap, support) in caps.table() {
                println!("  {:<18} {support:?}", cap.to_string());
            }
            let l = caps.limits;
            println!("  max key bytes      {}", l.max_key_bytes);
            println!("  max value bytes    {}", l.max_value_bytes);
            println!("  max batch ops      {}", l.max_batch_ops);
            Ok(Outcome::Done)
        }
    }
}

/// A value from a file, or standard input for `-`.
fn read_value(path: &std::path::Path) -> Result<bytes::Bytes> {
    let read = if path == std::path::Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    };
    read.map(bytes::Bytes::from).map_err(|e| {
        kvmap::Error::new(kvmap::ErrorKind::InvalidArgument)
            .with_op(kvmap::Op::Put)
            .with_detail(format!(
                "cannot read the value from {}: {e}",
                path.display()
            ))
    })
}

fn io_error(what: &str, e: &std::io::Error) -> kvmap::Error {
    kvmap::Error::new(kvmap::ErrorKind::Internal).with_detail(format!("{what}: {e}"))
}

pub(crate) fn describe(e: &Entry) -> String {
    let mut s = format!(
        "{} = {:?} (revision {}, created {})",
        e.key,
        String::from_utf8_lossy(&e.value),
        e.revision,
        e.create_revision
    );
    if let Some(at) = e.expires_at {
        match at.duration_since(std::time::SystemTime::now()) {
            Ok(left) => s.push_str(&format!(", expires in {}ms", left.as_millis())),
            Err(_) => s.push_str(", ttl ran out"),
        }
    }
    s
}

pub(crate) fn describe_event(ev: &WatchEvent) -> String {
    match ev {
        WatchEvent::Put { entry, .. } => format!("put     {}", describe(entry)),
        WatchEvent::Delete { key, revision, .. } => format!("delete  {key} (revision {revision})"),
        WatchEvent::Expired { key, revision, .. } => format!("expired {key} (revision {revision})"),
        WatchEvent::Resync { entries, revision } => {
            format!("resync  {} entries at revision {revision}", entries.len())
        }
    }
}
