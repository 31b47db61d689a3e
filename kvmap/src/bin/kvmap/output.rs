//! `--output json`: one JSON document per result (per line for `list` and
//! `watch`), so scripts never parse the text form.

use base64::Engine as _;
use kvmap::{Capabilities, Entry, WatchEvent};
use serde_json::{json, Map, Value};

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document per result (JSON lines for `list` and `watch`).
    Json,
}

/// An entry: `value` when it is UTF-8, else `value_base64`; no value for
/// keys-only listings.
pub(crate) fn entry(e: &Entry, with_value: bool) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), json!(e.key.as_str()));
    if with_value {
        match std::str::from_utf8(&e.value) {
            Ok(s) => m.insert("value".into(), json!(s)),
            Err(_) => m.insert(
                "value_base64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(&e.value)),
            ),
        };
    }
    m.insert("revision".into(), json!(e.revision));
    m.insert("create_revision".into(), json!(e.create_revision));
    let expires = e
        .expires_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    m.insert("expires_at_unix_ms".into(), json!(expires));
    Value::Object(m)
}

/// A watch event.
pub(crate) fn event(ev: &WatchEvent) -> Value {
    match ev {
        WatchEvent::Put { entry: e, .. } => json!({"event": "put", "entry": entry(e, true)}),
        WatchEvent::Delete { key, revision, .. } => {
            json!({"event": "delete", "key": key.as_str(), "revision": revision})
        }
        WatchEvent::Expired { key, revision, .. } => {
            json!({"event": "expired", "key": key.as_str(), "revision": revision})
        }
        WatchEvent::Resync { entries, revision } => json!({
            "event": "resync",
            "revision": revision,
            "entries": entries.iter().map(|e| entry(e, true)).collect::<Vec<_>>(),
        }),
    }
}

/// A store's capabilities and limits.
pub(crate) fn info(backend: &str, caps: &Capabilities) -> Value {
    let table: Map<String, Value> = caps
        .table()
        .iter()
        .map(|(c, s)| (c.to_string(), json!(format!("{s:?}").to_lowercase())))
        .collect();
    json!({
        "backend": backend,
        "capabilities": table,
        "limits": {
            "max_key_bytes": caps.limits.max_key_bytes,
            "max_value_bytes": caps.limits.max_value_bytes,
            "max_batch_ops": caps.limits.max_batch_ops,
        },
    })
}
