//! Ordered `list`: `SCAN` on every master, merged and sorted client-side.
//!
//! Redis keeps no order, so every page scans every key of the namespace
//! matching the longest literal prefix of the range (`SCAN MATCH
//! ns:prefix*`) on every master, sorts the names, and reads the first
//! `limit + 1` that still exist. Cost per page: O(keys matching the
//! prefix) on the servers plus a read per returned entry; listing a large
//! range page by page is quadratic in its size.
//!
//! Slot moves and failovers: the slot map is read before and after the
//! scan; if it changed (a failover, a finished migration) the scan is
//! repeated (up to [`ATTEMPTS`] times, then `Unavailable`). A master that
//! cannot be scanned fails the page with `Unavailable`: a page never
//! silently misses a node's keys.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use kvmap_core::{Entry, ErrorKind, Key, KeyRange, ListPage, ListRequest, Op, Result};

use crate::client::NodeAddr;
use crate::error::{map, own};
use crate::store::Inner;

const ATTEMPTS: usize = 3;
const SCAN_COUNT: usize = 1000;
const FETCH_IN_FLIGHT: usize = 256;

/// Escapes the glob characters of a `SCAN MATCH` pattern.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The longest literal prefix every key of the range starts with.
pub(crate) fn literal_prefix(range: &KeyRange) -> String {
    match range {
        KeyRange::Prefix(p) => p.clone(),
        KeyRange::Range { start, end: None } => {
            let _ = start;
            String::new()
        }
        KeyRange::Range {
            start,
            end: Some(end),
        } => {
            let mut n = 0;
            for ((i, a), b) in start.char_indices().zip(end.chars()) {
                if a != b {
                    break;
                }
                n = i + a.len_utf8();
            }
            start[..n].to_owned()
        }
    }
}

async fn scan_node(inner: &Inner, node: &NodeAddr, pattern: &str) -> Result<Vec<Vec<u8>>> {
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(&cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, keys): (String, Vec<Vec<u8>>) = inner
            .client
            .query_node(node, cmd)
            .await
            .map_err(|e| map(e, Op::List, None))?;
        out.extend(keys);
        if next == "0" {
            return Ok(out);
        }
        cursor = next;
    }
}

fn ownership(slots: &[crate::client::SlotRange]) -> Vec<(u16, u16, &NodeAddr)> {
    slots.iter().map(|r| (r.start, r.end, &r.master)).collect()
}

/// Every key of the namespace in `range`, sorted, from every master.
pub(crate) async fn scan_range(inner: &Inner, range: &KeyRange) -> Result<BTreeSet<String>> {
    let ns = &inner.cfg.namespace;
    let pattern = format!(
        "{}{}*",
        glob_escape(ns),
        glob_escape(&literal_prefix(range))
    );
    for _ in 0..ATTEMPTS {
        let before = inner
            .client
            .slots()
            .await
            .map_err(|e| map(e, Op::List, None))?;
        let mut masters: Vec<&NodeAddr> = before.iter().map(|r| &r.master).collect();
        masters.sort();
        masters.dedup();
        let scans =
            futures::future::join_all(masters.iter().map(|m| scan_node(inner, m, &pattern))).await;
        let after = inner
            .client
            .slots()
            .await
            .map_err(|e| map(e, Op::List, None))?;
        // Only who owns which slots matters to a scan; nodes may list
        // replicas differently (or not yet) while the cluster settles.
        if ownership(&before) != ownership(&after) {
            tracing::debug!("redis list: slot map changed during the scan, rescanning");
            continue;
        }
        let mut keys = BTreeSet::new();
        for scan in scans {
            for raw in scan? {
                let Some(rest) = raw.strip_prefix(ns.as_bytes()) else {
                    continue;
                };
                let name = std::str::from_utf8(rest).map_err(|_| {
                    own(
                        ErrorKind::InvalidData,
                        Op::List,
                        None,
                        "a key in the namespace is not utf-8",
                    )
                })?;
                if range.contains(name) {
                    keys.insert(name.to_owned());
                }
            }
        }
        return Ok(keys);
    }
    Err(own(
        ErrorKind::Unavailable,
        Op::List,
        None,
        "the slot map kept changing during the scan",
    ))
}

/// Reads `names` in order until `want` live entries are found.
pub(crate) async fn fetch_in_order(
    inner: &Arc<Inner>,
    names: Vec<String>,
    want: usize,
    keys_only: bool,
) -> Result<Vec<Entry>> {
    let mut names = names.into_iter().peekable();
    let mut out = Vec::new();
    while out.len() < want && names.peek().is_some() {
        let chunk: Vec<Key> = names
            .by_ref()
            .take((want - out.len()).min(FETCH_IN_FLIGHT))
            .map(|n| {
                Key::new(&n).map_err(|e| {
                    own(
                        ErrorKind::InvalidData,
                        Op::List,
                        Some(&n),
                        "a key in the namespace breaks the key rules",
                    )
                    .with_source(e)
                })
            })
            .collect::<Result<_>>()?;
        let read: Vec<Result<Option<Entry>>> = futures::stream::iter(chunk)
            .map(|k| {
                let inner = inner.clone();
                async move { inner.read(&k, keys_only, Op::List).await }
            })
            .buffered(FETCH_IN_FLIGHT)
            .collect()
            .await;
        for r in read {
            // A key deleted or expired since the scan is simply not listed.
            if let Some(e) = r? {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// One page of a list.
pub(crate) async fn list_page(inner: Arc<Inner>, request: &ListRequest) -> Result<ListPage> {
    let keys = scan_range(&inner, &request.range).await?;
    let limit = request.page_size();
    let names: Vec<String> = keys.into_iter().filter(|k| request.admits(k)).collect();
    let entries = fetch_in_order(&inner, names, limit.saturating_add(1), request.keys_only).await?;
    Ok(ListPage::from_sorted(entries, Some(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix(&KeyRange::Prefix("a/".into())), "a/");
        assert_eq!(
            literal_prefix(&KeyRange::Range {
                start: "abc".into(),
                end: Some("abz".into())
            }),
            "ab"
        );
        assert_eq!(
            literal_prefix(&KeyRange::Range {
                start: "b".into(),
                end: None
            }),
            ""
        );
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
