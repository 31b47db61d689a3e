//! Bounded-staleness reads (`Consistency::Stale { max_staleness }`) from
//! cluster replicas.
//!
//! Replication in Redis is asynchronous and reports offsets, not times.
//! The bound is derived like this: at `t0` the master's
//! `master_repl_offset` is read, then the replica's processed offset; if
//! the replica has reached the master's offset of `t0`, it holds every
//! write acknowledged before `t0`, so anything it serves later is at most
//! `now - t0` stale (offsets only grow while the replica stays attached).
//! The last such `t0` per replica is cached; when it is older than the
//! caller's bound the probe runs again (two `INFO replication` round
//! trips). A replica that cannot be shown fresh enough yields
//! `StaleTooOld`; a slot without replica, or a replica that answers
//! `MOVED`, is read from the master (staleness zero). Standalone stores
//! always read the master.

use std::collections::HashMap;
use std::time::Duration;

use kvmap_core::{Entry, ErrorKind, Key, Op, Result};
use redis::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::{NodeAddr, SlotRange};
use crate::error::{map, own};
use crate::scripts;
use crate::slots::key_slot;
use crate::store::Inner;

/// How long a cached slot map is used for routing stale reads.
const SLOT_MAP_TTL: Duration = Duration::from_secs(1);

/// Per-store state of stale reads.
#[derive(Default)]
pub(crate) struct StaleState {
    slots: Mutex<Option<(Instant, Vec<SlotRange>)>>,
    verified: Mutex<HashMap<NodeAddr, Instant>>,
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(name)?
            .strip_prefix(':')
            .map(str::to_owned)
    })
}

/// Healthy replicas per master address, from a `CLUSTER NODES` reply.
pub(crate) fn replicas_by_master(text: &str) -> HashMap<NodeAddr, Vec<NodeAddr>> {
    let mut addr_of: HashMap<&str, NodeAddr> = HashMap::new();
    let mut replicas: Vec<(&str, NodeAddr)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let addr = f[1].split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        let node = NodeAddr {
            host: host.to_owned(),
            port,
        };
        let flags = f[2];
        if flags
            .split(',')
            .any(|x| x == "fail" || x == "fail?" || x == "handshake" || x == "noaddr")
        {
            continue;
        }
        if flags.split(',').any(|x| x == "slave") && f[3] != "-" && f[7] == "connected" {
            replicas.push((f[3], node.clone()));
        }
        addr_of.insert(f[0], node);
    }
    let mut out: HashMap<NodeAddr, Vec<NodeAddr>> = HashMap::new();
    for (master_id, r) in replicas {
        if let Some(m) = addr_of.get(master_id) {
            out.entry(m.clone()).or_default().push(r);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

impl StaleState {
    async fn slot_map(&self, inner: &Inner) -> Result<Vec<SlotRange>> {
        let mut cached = self.slots.lock().await;
        if let Some((at, s)) = cached.as_ref() {
            if at.elapsed() < SLOT_MAP_TTL {
                return Ok(s.clone());
            }
        }
        let mut s = inner
            .client
            .slots()
            .await
            .map_err(|e| map(e, Op::Get, None))?;
        // CLUSTER SLOTS leaves out replicas that have not reported an
        // offset yet; CLUSTER NODES lists every attached replica.
        if s.iter().any(|r| r.replicas.is_empty()) {
            let text: String = inner
                .client
                .query(redis::cmd("CLUSTER").arg("NODES"))
                .await
                .map_err(|e| map(e, Op::Get, None))?;
            let replicas = replicas_by_master(&text);
            for r in &mut s {
                if r.replicas.is_empty() {
                    r.replicas = replicas.get(&r.master).cloned().unwrap_or_default();
                }
            }
        }
        *cached = Some((Instant::now(), s.clone()));
        Ok(s)
    }

    /// Proves the replica fresh as of a new `t0`; returns it, or `None`
    /// if the replica lags behind (or is detached).
    async fn probe(
        &self,
        inner: &Inner,
        master: &NodeAddr,
        replica: &NodeAddr,
    ) -> Result<Option<Instant>> {
        let info = |node: &NodeAddr| {
            let node = node.clone();
            async move {
                let mut cmd = redis::cmd("INFO");
                cmd.arg("replication");
                inner
                    .client
                    .node_query::<String>(&node, &cmd)
                    .await
                    .map_err(|e| map(e, Op::Get, None))
            }
        };
        let t0 = Instant::now();
        let m = info(master).await?;
        let m_off: u64 = info_field(&m, "master_repl_offset")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                own(
                    ErrorKind::Internal,
                    Op::Get,
                    None,
                    "no master_repl_offset in INFO",
                )
            })?;
        let r = info(replica).await?;
        let up = info_field(&r, "master_link_status").is_some_and(|v| v == "up");
        let r_off: u64 = info_field(&r, "slave_repl_offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !up || r_off < m_off {
            return Ok(None);
        }
        self.verified.lock().await.insert(replica.clone(), t0);
        Ok(Some(t0))
    }
}

/// A read that may be up to `max` stale.
pub(crate) async fn read(inner: &Inner, key: &Key, max: Duration) -> Result<Option<Entry>> {
    let master_read = || async {
        Ok(inner
            .read(key, false, Op::Get)
            .await?
            .map(|e| e.with_staleness(Some(Duration::ZERO))))
    };
    if !inner.client.is_cluster() {
        return master_read().await;
    }
    let st = &inner.stale;
    let skey = inner.server_key(key.as_str());
    let slot = key_slot(skey.as_bytes());
    let slots = st.slot_map(inner).await?;
    let Some(range) = slots.iter().find(|r| r.start <= slot && slot <= r.end) else {
        return master_read().await;
    };
    let Some(replica) = range.replicas.first() else {
        return master_read().await;
    };
    let known = st.verified.lock().await.get(replica).copied();
    let t0 = match known {
        Some(t) if t.elapsed() <= max => t,
        _ => match st.probe(inner, &range.master, replica).await? {
            Some(t) => t,
            None => {
                let staleness = known.map_or(Duration::MAX, |t| t.elapsed());
                return Err(own(
                    ErrorKind::StaleTooOld { staleness, max },
                    Op::Get,
                    Some(key.as_str()),
                    "the replica has not caught up with its master",
                ));
            }
        },
    };
    let v: Value = match inner
        .client
        .node_query(replica, &inner.read_cmd(key, false))
        .await
    {
        Ok(v) => v,
        Err(e) if e.redirect_node().is_some() => return master_read().await,
        Err(e) => return Err(map(e, Op::Get, Some(key.as_str()))),
    };
    let staleness = t0.elapsed();
    if staleness > max {
        return Err(own(
            ErrorKind::StaleTooOld { staleness, max },
            Op::Get,
            Some(key.as_str()),
            "the replica read took longer than the bound",
        ));
    }
    Ok(scripts::entry_from_fields(key, &v, false, Op::Get)?
        .map(|e| e.with_staleness(Some(staleness))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_from_cluster_nodes() {
        let text = "aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    bbb 127.0.0.1:7003@17003 slave aaa 0 0 1 connected\n\
                    ccc 127.0.0.1:7004@17004 slave,fail aaa 0 0 1 disconnected\n";
        let m = replicas_by_master(text);
        let master = NodeAddr {
            host: "127.0.0.1".into(),
            port: 7000,
        };
        assert_eq!(
            m[&master],
            vec![NodeAddr {
                host: "127.0.0.1".into(),
                port: 7003
            }]
        );
        assert_eq!(
            info_field(
                "# Replication\r\nrole:slave\r\nslave_repl_offset:42\r\n",
                "slave_repl_offset"
            )
            .as_deref(),
            Some("42")
        );
    }
}
