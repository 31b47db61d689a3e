//! Ordered `list`: `SCAN` on every master, merged and sorted client-side.
//!
//! Redis keeps no order, so every page scans every key under the key prefix
//! matching the longest literal prefix of the range (`SCAN MATCH
//! ns:prefix*`) on every master and reads the first `limit + 1` names
//! that still exist. Cost per page: O(keys matching the prefix) on the
//! servers plus a read per returned entry; listing a large range page by
//! page is quadratic in its size.
//!
//! **Memory per page is bounded by the page, not the prefix**: while a
//! node is scanned only the smallest `limit + 1` names after the cursor
//! are kept ([`TopK`], a bounded ordered set; larger names are dropped as
//! they arrive), so a page holds O(`limit` × masters) names whatever the
//! number of keys under the prefix. If some of the kept names were deleted
//! before they are read and names were dropped, the page continues with
//! another scan after the largest name already considered, so pages stay
//! full and no key is skipped. (The watch's resync still asks for the whole
//! range: it needs every key.)
//!
//! **Slot moves and failovers.** A scan is only accepted when it is known
//! to have seen every key that existed throughout it exactly once in the
//! result set (names are deduplicated):
//!
//! - the slot map (`CLUSTER SLOTS`) is read before and after, and must
//!   not have changed (a failover, a finished migration);
//! - each scanned master's own line of `CLUSTER NODES` (node id, role,
//!   config epoch, owned slots, and its `[slot->-id]` / `[slot-<-id]`
//!   migrating/importing markers) is read before and after the scan, and
//!   its ownership part must not have changed. During a migration
//!   (`redis-cli --cluster reshard`, or `SETSLOT .. MIGRATING/IMPORTING`
//!   plus `MIGRATE`) the slot map does not change until the end, but the
//!   markers show it. When any marker is seen, every master is scanned a
//!   second time after the first pass has finished: a key moves once per
//!   migration, from the source to the target, so it is either on the
//!   source during the whole first pass or on the target during the whole
//!   second pass. Two moves of one key within a scan need the first
//!   migration to finish, which changes the owners' lines and is rejected.
//!   A marker naming a node that is not a scanned master (a migration to a
//!   master that owns no slot yet) is rejected too.
//!
//! A rejected scan is repeated after a short back-off (10 ms, doubling,
//! [`ATTEMPTS`] attempts within the operation), then the page fails with
//! `Unavailable` (retry class `Safe`): a page never silently misses or
//! duplicates a key. A migration that is aborted after keys moved (`SETSLOT
//! STABLE` on both sides with keys left on the target) is outside this
//! guarantee, as it is outside Redis's. A master that cannot be scanned
//! fails the page with `Unavailable`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kvmap_core::{Entry, ErrorKind, Key, KeyRange, ListPage, ListRequest, Op, Result};

use crate::client::{NodeAddr, SlotRange};
use crate::error::{map, own};
use crate::store::Inner;

/// Scans tried per page before it fails with `Unavailable`.
const ATTEMPTS: usize = 6;
/// First back-off after a rejected scan (doubled after each attempt).
const BACKOFF: Duration = Duration::from_millis(10);
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

/// The smallest `cap` distinct names offered, in order; remembers whether
/// a name was dropped for being larger than every kept one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopK {
    cap: usize,
    names: BTreeSet<String>,
    truncated: bool,
}

impl TopK {
    /// An empty set keeping at most `cap` names.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            names: BTreeSet::new(),
            truncated: false,
        }
    }

    /// Offers a name; keeps it if it is among the `cap` smallest so far.
    pub(crate) fn offer(&mut self, name: &str) {
        if self.names.contains(name) {
            return;
        }
        if self.names.len() < self.cap {
            self.names.insert(name.to_owned());
            return;
        }
        self.truncated = true;
        match self.names.last() {
            Some(last) if name < last.as_str() => {
                self.names.insert(name.to_owned());
                self.names.pop_last();
            }
            _ => {}
        }
    }

    /// Adds every name of `other` (the result is the top `cap` of both).
    pub(crate) fn merge(&mut self, other: TopK) {
        self.truncated |= other.truncated;
        for n in other.names {
            if self.names.len() < self.cap {
                self.names.insert(n);
            } else {
                self.truncated = true;
                match self.names.last() {
                    Some(last) if n < *last => {
                        if self.names.insert(n) {
                            self.names.pop_last();
                        }
                    }
                    Some(last) if n == *last => {}
                    _ => break, // `other` is sorted: every later name is larger
                }
            }
        }
    }

    /// Whether some offered name was dropped: names larger than the last
    /// kept one may exist.
    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    /// The kept names, ascending.
    pub(crate) fn into_names(self) -> BTreeSet<String> {
        self.names
    }
}

/// Which names a scan keeps.
struct Window<'a> {
    range: &'a KeyRange,
    /// Only names strictly after this one.
    after: Option<&'a str>,
    cap: usize,
}

impl Window<'_> {
    fn admits(&self, name: &str) -> bool {
        self.range.contains(name) && self.after.is_none_or(|c| name > c)
    }
}

async fn scan_node(
    inner: &Inner,
    node: &NodeAddr,
    pattern: &str,
    window: &Window<'_>,
) -> Result<TopK> {
    let ns = inner.cfg.key_prefix.as_bytes();
    let mut cursor = "0".to_owned();
    let mut top = TopK::new(window.cap);
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
        for raw in keys {
            let Some(rest) = raw.strip_prefix(ns) else {
                continue;
            };
            let name = std::str::from_utf8(rest).map_err(|_| {
                own(
                    ErrorKind::InvalidData,
                    Op::List,
                    None,
                    "a key in the key_prefix is not utf-8",
                )
            })?;
            if window.admits(name) {
                top.offer(name);
            }
        }
        if next == "0" {
            return Ok(top);
        }
        cursor = next;
    }
}

/// One pass over every master; the per-node results merged.
async fn scan_pass(
    inner: &Inner,
    masters: &[&NodeAddr],
    pattern: &str,
    window: &Window<'_>,
) -> Result<TopK> {
    let scans =
        futures::future::join_all(masters.iter().map(|m| scan_node(inner, m, pattern, window)))
            .await;
    let mut top = TopK::new(window.cap);
    for scan in scans {
        top.merge(scan?);
    }
    Ok(top)
}

/// The masters serving slots in a `CLUSTER SLOTS` reply, sorted.
fn masters_of(slots: &[SlotRange]) -> Vec<&NodeAddr> {
    let mut masters: Vec<&NodeAddr> = slots.iter().map(|r| &r.master).collect();
    masters.sort();
    masters.dedup();
    masters
}

/// A slot migration marker: `slot` moves from node `from` to node `to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Migration {
    /// The slot.
    pub(crate) slot: u16,
    /// Source node id.
    pub(crate) from: String,
    /// Target node id.
    pub(crate) to: String,
}

/// A master's own line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeView {
    /// Node id.
    pub(crate) id: String,
    /// Flags include `master`.
    pub(crate) master: bool,
    /// Config epoch.
    pub(crate) epoch: u64,
    /// Owned slot ranges, in the order listed.
    pub(crate) slots: Vec<(u16, u16)>,
    /// `[slot->-to]` (this node is the source) and `[slot-<-from]` (this
    /// node is the target) markers.
    pub(crate) migrations: Vec<Migration>,
}

impl NodeView {
    fn owned(&self) -> BTreeSet<u16> {
        self.slots.iter().flat_map(|&(a, b)| a..=b).collect()
    }
}

/// Parses the `myself` line of a `CLUSTER NODES` reply.
pub(crate) fn parse_myself(text: &str) -> Option<NodeView> {
    let line = text.lines().find(|l| {
        l.split_whitespace()
            .nth(2)
            .is_some_and(|f| f.split(',').any(|x| x == "myself"))
    })?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let id = f[0].to_owned();
    let mut view = NodeView {
        id: id.clone(),
        master: f[2].split(',').any(|x| x == "master"),
        epoch: f[6].parse().ok()?,
        slots: Vec::new(),
        migrations: Vec::new(),
    };
    for tok in &f[8..] {
        if let Some(marker) = tok.strip_prefix('[') {
            let marker = marker.strip_suffix(']')?;
            let m = if let Some((slot, to)) = marker.split_once("->-") {
                Migration {
                    slot: slot.parse().ok()?,
                    from: id.clone(),
                    to: to.to_owned(),
                }
            } else {
                let (slot, from) = marker.split_once("-<-")?;
                Migration {
                    slot: slot.parse().ok()?,
                    from: from.to_owned(),
                    to: id.clone(),
                }
            };
            view.migrations.push(m);
        } else {
            let (a, b) = tok.split_once('-').unwrap_or((tok, tok));
            view.slots.push((a.parse().ok()?, b.parse().ok()?));
        }
    }
    Some(view)
}

/// The own view of every master (cluster only).
async fn node_views(inner: &Inner, masters: &[&NodeAddr]) -> Result<Vec<NodeView>> {
    let replies = futures::future::join_all(masters.iter().map(|m| async move {
        let text: String = inner
            .client
            .query_node(m, redis::cmd("CLUSTER").arg("NODES").clone())
            .await
            .map_err(|e| map(e, Op::List, None))?;
        parse_myself(&text).ok_or_else(|| {
            own(
                ErrorKind::Unavailable,
                Op::List,
                None,
                format!("unreadable cluster nodes reply from {}:{}", m.host, m.port),
            )
        })
    }))
    .await;
    replies.into_iter().collect()
}

/// Whether any master reports a migrating or importing slot.
fn migrating(views: &[NodeView]) -> bool {
    views.iter().any(|v| !v.migrations.is_empty())
}

/// Whether every migration names scanned masters on both ends.
fn peers_scanned(views: &[NodeView], scanned: &[NodeView]) -> bool {
    let known = |id: &String| scanned.iter().any(|s| &s.id == id);
    views
        .iter()
        .flat_map(|v| &v.migrations)
        .all(|m| known(&m.from) && known(&m.to))
}

/// Whether the masters' own views `later` can follow `first` with every
/// key moved at most once: same nodes and roles; a slot changed owner only
/// by a migration already marked in `first` (its source loses it, its
/// target gains it), and no other migration of that slot is marked in
/// `later`; a config epoch changed only on such a target. Migrations
/// started after `first` are fine while they have not finished.
pub(crate) fn single_moves(first: &[NodeView], later: &[NodeView]) -> bool {
    if first.len() != later.len() {
        return false;
    }
    let known: BTreeSet<&Migration> = first.iter().flat_map(|v| &v.migrations).collect();
    let known_slots: BTreeSet<u16> = known.iter().map(|m| m.slot).collect();
    for (a, b) in first.iter().zip(later) {
        if a.id != b.id || a.master != b.master {
            return false;
        }
        if a.epoch != b.epoch && !known.iter().any(|m| m.to == a.id) {
            return false;
        }
        if a.slots != b.slots {
            let (was, is) = (a.owned(), b.owned());
            let gained_ok = is
                .difference(&was)
                .all(|&slot| known.iter().any(|m| m.slot == slot && m.to == a.id));
            let lost_ok = was
                .difference(&is)
                .all(|&slot| known.iter().any(|m| m.slot == slot && m.from == a.id));
            if !gained_ok || !lost_ok {
                return false;
            }
        }
        // A slot that was migrating may only still be migrating the same
        // way (a second migration could move a key twice).
        let consistent = b
            .migrations
            .iter()
            .all(|m| !known_slots.contains(&m.slot) || known.contains(m));
        if !consistent {
            return false;
        }
    }
    true
}

/// Why a scan attempt was rejected.
enum Rejected {
    SlotMap,
    Migration,
    Unscanned,
}

/// One scan attempt: the names, or why the cluster changed under it.
async fn scan_attempt(
    inner: &Inner,
    pattern: &str,
    window: &Window<'_>,
) -> Result<std::result::Result<TopK, Rejected>> {
    let cluster = inner.client.is_cluster();
    let before = inner
        .client
        .slots()
        .await
        .map_err(|e| map(e, Op::List, None))?;
    let masters = masters_of(&before);
    let v0 = if cluster {
        node_views(inner, &masters).await?
    } else {
        Vec::new()
    };
    if !peers_scanned(&v0, &v0) {
        return Ok(Err(Rejected::Unscanned));
    }
    let mut top = scan_pass(inner, &masters, pattern, window).await?;
    if cluster {
        let v1 = node_views(inner, &masters).await?;
        if !single_moves(&v0, &v1) {
            return Ok(Err(Rejected::Migration));
        }
        if !peers_scanned(&v1, &v0) {
            return Ok(Err(Rejected::Unscanned));
        }
        if migrating(&v0) || migrating(&v1) {
            // A key that moved during the first pass is on its target for
            // the whole second pass.
            top.merge(scan_pass(inner, &masters, pattern, window).await?);
            let v2 = node_views(inner, &masters).await?;
            if !single_moves(&v0, &v2) {
                return Ok(Err(Rejected::Migration));
            }
            if !peers_scanned(&v2, &v0) {
                return Ok(Err(Rejected::Unscanned));
            }
        }
    }
    let after = inner
        .client
        .slots()
        .await
        .map_err(|e| map(e, Op::List, None))?;
    // The node views cover who owns what; the slot map must still name
    // the masters that were scanned (no failover, no new master).
    if masters_of(&before) != masters_of(&after) {
        return Ok(Err(Rejected::SlotMap));
    }
    Ok(Ok(top))
}

/// The smallest `window.cap` names of the window, from every master.
async fn scan_window(inner: &Inner, range: &KeyRange, window: &Window<'_>) -> Result<TopK> {
    let ns = &inner.cfg.key_prefix;
    let pattern = format!(
        "{}{}*",
        glob_escape(ns),
        glob_escape(&literal_prefix(range))
    );
    let mut last = Rejected::SlotMap;
    let mut backoff = BACKOFF;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
        match scan_attempt(inner, &pattern, window).await? {
            Ok(top) => return Ok(top),
            Err(why) => {
                tracing::debug!(
                    attempt,
                    "redis list: the cluster changed during the scan, rescanning"
                );
                last = why;
            }
        }
    }
    let detail = match last {
        Rejected::SlotMap => "the slot map kept changing during the scan",
        Rejected::Migration => "slot migrations kept changing slot owners during the scan",
        Rejected::Unscanned => "a slot is migrating to or from a node that is not a serving master",
    };
    Err(own(ErrorKind::Unavailable, Op::List, None, detail))
}

/// Every key under the key prefix in `range`, sorted, from every master.
pub(crate) async fn scan_range(inner: &Inner, range: &KeyRange) -> Result<BTreeSet<String>> {
    let window = Window {
        range,
        after: None,
        cap: usize::MAX,
    };
    Ok(scan_window(inner, range, &window).await?.into_names())
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
                        "a key in the key_prefix breaks the key rules",
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

/// One page of a list: the first `limit + 1` live entries after the
/// cursor, with O(limit) names held per master.
pub(crate) async fn list_page(inner: Arc<Inner>, request: &ListRequest) -> Result<ListPage> {
    let limit = request.page_size();
    let want = limit.saturating_add(1);
    let mut after = request.cursor.clone();
    let mut entries: Vec<Entry> = Vec::new();
    loop {
        let need = want - entries.len();
        let window = Window {
            range: &request.range,
            after: after.as_deref(),
            cap: need,
        };
        let top = scan_window(&inner, &request.range, &window).await?;
        let truncated = top.truncated();
        let names: Vec<String> = top.into_names().into_iter().collect();
        let last = names.last().cloned();
        entries.extend(fetch_in_order(&inner, names, need, request.keys_only).await?);
        // Some kept names were deleted before they were read, and larger
        // names were dropped by the scan: continue after the largest
        // name considered.
        match last {
            Some(last) if truncated && entries.len() < want => after = Some(last),
            _ => break,
        }
    }
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

    fn names(t: &TopK) -> Vec<&str> {
        t.names.iter().map(String::as_str).collect()
    }

    #[test]
    fn top_k_keeps_the_smallest_names() {
        let mut t = TopK::new(3);
        for n in ["k5", "k1", "k9", "k1", "k3"] {
            t.offer(n);
        }
        assert!(t.truncated(), "k9 or k5 was dropped");
        assert_eq!(names(&t), ["k1", "k3", "k5"]);
        t.offer("k0");
        assert_eq!(names(&t), ["k0", "k1", "k3"]);
        t.offer("k3"); // already kept: nothing dropped, nothing changes
        assert_eq!(names(&t), ["k0", "k1", "k3"]);
        assert!(t.names.len() <= 3);

        let mut small = TopK::new(3);
        small.offer("b");
        small.offer("a");
        small.offer("a");
        assert!(!small.truncated(), "a duplicate is not a dropped name");
        assert_eq!(names(&small), ["a", "b"]);

        let mut zero = TopK::new(0);
        zero.offer("a");
        assert!(zero.truncated() && zero.names.is_empty());
    }

    #[test]
    fn top_k_matches_a_full_sort_in_any_order() {
        // Pseudo-random names, offered to three "nodes" and merged: the
        // result equals the first `cap` of the full sorted set.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut all = BTreeSet::new();
        let mut nodes = [TopK::new(7), TopK::new(7), TopK::new(7)];
        for i in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = format!("p/{:05}", x % 3000);
            all.insert(n.clone());
            nodes[i % 3].offer(&n);
            // a key seen on two nodes at once (mid-migration) is one name
            nodes[(i + 1) % 3].offer(&n);
            assert!(nodes.iter().all(|t| t.names.len() <= 7));
        }
        let mut merged = TopK::new(7);
        for t in nodes {
            merged.merge(t);
        }
        let want: Vec<&str> = all.iter().take(7).map(String::as_str).collect();
        assert_eq!(names(&merged), want);
        assert!(merged.truncated());

        let mut a = TopK::new(5);
        let mut b = TopK::new(5);
        for n in ["a", "c"] {
            a.offer(n);
        }
        for n in ["b", "c", "d"] {
            b.offer(n);
        }
        a.merge(b);
        assert_eq!(names(&a), ["a", "b", "c", "d"]);
        assert!(!a.truncated(), "everything fit");
    }

    #[test]
    fn window_admits_after_the_cursor_only() {
        let range = KeyRange::Prefix("p/".into());
        let w = Window {
            range: &range,
            after: Some("p/5"),
            cap: 10,
        };
        assert!(!w.admits("p/5") && !w.admits("p/4") && !w.admits("q/9"));
        assert!(w.admits("p/6"));
    }

    #[test]
    fn parses_own_cluster_nodes_line() {
        let text = "\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 slave 07c3 0 1426238316232 1 connected
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 myself,master - 0 1426238317239 4 connected 0-5460 5462 [5461->-abc] [7000-<-def]
";
        let v = parse_myself(text).expect("myself line");
        assert_eq!(v.id, "07c37dfeb235213a872192d90877d0cd55635b91");
        assert!(v.master);
        assert_eq!(v.epoch, 4);
        assert_eq!(v.slots, vec![(0, 5460), (5462, 5462)]);
        let id = "07c37dfeb235213a872192d90877d0cd55635b91".to_owned();
        assert_eq!(
            v.migrations,
            vec![
                Migration {
                    slot: 5461,
                    from: id.clone(),
                    to: "abc".into()
                },
                Migration {
                    slot: 7000,
                    from: "def".into(),
                    to: id
                }
            ]
        );
        let stable = parse_myself("abc 127.0.0.1:1@2 myself,master - 0 0 7 connected 0-16383\n")
            .expect("stable");
        assert!(stable.migrations.is_empty());
        let (stable, v) = (vec![stable], vec![v]);
        assert!(!migrating(&stable) && migrating(&v));
        assert!(peers_scanned(&stable, &[]));
        assert!(!peers_scanned(&v, &stable));
        assert!(parse_myself("abc 127.0.0.1:1@2 master - 0 0 7 connected\n").is_none());
    }

    fn view(id: &str, epoch: u64, slots: &str) -> NodeView {
        parse_myself(&format!(
            "{id} 127.0.0.1:1@2 myself,master - 0 0 {epoch} connected {slots}\n"
        ))
        .expect("view")
    }

    #[test]
    fn a_scan_survives_one_move_per_slot_only() {
        let stable = vec![view("a", 1, "0-99"), view("b", 2, "100-199")];
        assert!(single_moves(&stable, &stable));
        // Slot 5 migrating a -> b, marked on both sides.
        let mig = vec![
            view("a", 1, "0-99 [5->-b]"),
            view("b", 2, "100-199 [5-<-a]"),
        ];
        assert!(single_moves(&mig, &mig));
        // A migration started after the first view, not finished: fine.
        assert!(single_moves(&stable, &mig));
        // It finished: b owns 5 with a new epoch; allowed only if marked first.
        let done = vec![view("a", 1, "0-4 6-99"), view("b", 3, "5 100-199")];
        assert!(single_moves(&mig, &done));
        assert!(!single_moves(&stable, &done), "an unmarked move");
        // Half finished (b took it, a not told yet).
        let half = vec![view("a", 1, "0-99 [5->-b]"), view("b", 3, "5 100-199")];
        assert!(single_moves(&mig, &half));
        // Moved on again to c, or back: a second move of the slot.
        let again = vec![view("a", 1, "0-4 6-99"), view("b", 3, "5 100-199 [5->-a]")];
        assert!(!single_moves(&mig, &again));
        let back = vec![view("a", 4, "0-99"), view("b", 3, "100-199")];
        assert!(!single_moves(&mig, &back), "a re-imported the slot");
        // Another slot changing owner unmarked, or a failover (role, id).
        let other = vec![view("a", 1, "0-3 5-99 [5->-b]"), view("b", 3, "4 100-199")];
        assert!(!single_moves(&mig, &other));
        let mut replica = stable.clone();
        replica[0].master = false;
        assert!(!single_moves(&stable, &replica));
        assert!(!single_moves(&stable, &stable[..1]));
    }
}
