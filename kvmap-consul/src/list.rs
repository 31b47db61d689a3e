//! Ordered `list` and the prefix reads shared with watches and the reaper.
//!
//! Consul 1.8 has no pagination: one page reads the whole Consul prefix
//! that covers the requested range (`?recurse`), then filters, sorts and
//! cuts the page client-side. A page of a prefix holding N keys costs one
//! round trip carrying all N entries; the cursor keeps paging correct
//! (keys strictly after the cursor), not cheap.

use std::time::{Duration, SystemTime};

use kvmap_core::{Context, Entry, KeyRange, ListPage, ListRequest, Op, Result};
use reqwest::Method;

use crate::codec::{self, decode, RawKv};
use crate::store::{parse_kvs, Inner};

/// What a read covers on the server.
#[derive(Debug, Clone)]
pub(crate) enum Span {
    /// One Consul key.
    Exact(String),
    /// Every Consul key starting with this.
    Prefix(String),
}

impl Span {
    fn matches(&self, consul_key: &str) -> bool {
        match self {
            Span::Exact(k) => consul_key == k,
            Span::Prefix(p) => consul_key.starts_with(p.as_str()),
        }
    }
}

/// One read of a span: the raw entries and the answer's index.
pub(crate) struct SpanRead {
    pub(crate) raws: Vec<RawKv>,
    pub(crate) index: u64,
}

impl Inner {
    /// Reads a span, optionally as a blocking query (`index`, `wait`).
    /// Paths Consul's router would rewrite are read through their longest
    /// safe prefix and filtered exactly.
    pub(crate) async fn read_span(
        &self,
        ctx: &Context,
        span: &Span,
        block: Option<(u64, Duration)>,
        op: Op,
    ) -> Result<SpanRead> {
        let (path, recurse) = match span {
            Span::Exact(k) if !codec::path_unsafe(k) => (k.as_str(), false),
            Span::Exact(k) => (codec::safe_prefix(k), true),
            Span::Prefix(p) => (codec::safe_prefix(p), true),
        };
        let mut query = self.consistency_query(ctx);
        if recurse {
            query.push(("recurse", None));
        }
        let mut timeout = self.cfg.request_timeout;
        if let Some((index, wait)) = block {
            query.push(("index", Some(index.to_string())));
            query.push(("wait", Some(format!("{}ms", wait.as_millis()))));
            // Consul adds up to wait/16 of jitter to a blocking query.
            timeout = wait + wait / 16 + self.cfg.request_timeout;
        }
        let ans = self
            .client
            .send(
                Method::GET,
                &format!("kv/{}", codec::key_path(path)),
                &query,
                None,
                timeout,
                op,
                None,
            )
            .await?;
        self.check_fresh(ctx, ans.known_leader, ans.last_contact, op, None)?;
        let raws = if ans.status == 404 {
            Vec::new()
        } else {
            parse_kvs(&ans.body, op, None)?
                .into_iter()
                .filter(|r| span.matches(&r.key))
                .collect()
        };
        Ok(SpanRead {
            raws,
            index: ans.index,
        })
    }

    /// The span covering a list request.
    fn list_span(&self, range: &KeyRange) -> Span {
        let common = match range {
            KeyRange::Prefix(p) => p.clone(),
            KeyRange::Range {
                start,
                end: Some(end),
            } => common_prefix(start, end).to_owned(),
            KeyRange::Range { end: None, .. } => String::new(),
        };
        Span::Prefix(format!("{}{}", self.cfg.key_prefix, common))
    }

    /// One page of a list.
    pub(crate) async fn list(&self, ctx: &Context, request: &ListRequest) -> Result<ListPage> {
        let span = self.list_span(&request.range);
        let read = self.read_span(ctx, &span, None, Op::List).await?;
        let now = SystemTime::now();
        let staleness = self.staleness_marker(ctx);
        let mut entries: Vec<Entry> = Vec::new();
        for raw in read.raws {
            let Some(d) = decode(raw, &self.cfg.key_prefix, request.keys_only, now, Op::List)?
            else {
                continue;
            };
            if d.expired {
                self.reaper.note(&d.entry);
                continue;
            }
            if request.admits(d.entry.key.as_str()) {
                entries.push(d.entry.with_staleness(staleness));
            }
        }
        entries.sort_by(|a, b| a.key.as_str().as_bytes().cmp(b.key.as_str().as_bytes()));
        let limit = request.page_size();
        entries.truncate(limit.saturating_add(1));
        Ok(ListPage::from_sorted(entries, Some(limit)))
    }
}

/// The longest common prefix of two strings, at a char boundary.
fn common_prefix<'a>(a: &'a str, b: &str) -> &'a str {
    let mut end = 0;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            break;
        }
        end = i + ca.len_utf8();
    }
    &a[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix("abc", "abd"), "ab");
        assert_eq!(common_prefix("é1", "é2"), "é");
        assert_eq!(common_prefix("x", "y"), "");
        assert_eq!(common_prefix("a", "a"), "a");
    }
}
