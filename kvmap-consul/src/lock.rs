//! [`ConsulLocks`]: kvmap leases on Consul sessions, with fencing tokens
//! from Consul's Raft index.
//!
//! Layout: the lock of kvmap key `k` is the Consul key
//! `<key_prefix>k/.lock` — the key `consul lock <key_prefix>k …` uses —
//! acquired by a session created for the acquisition:
//!
//! - session: `Name` "kvmap lock", `TTL` the lease's TTL (10 s ..= 1 day,
//!   Consul's bounds), `Behavior` `delete` (an invalidated or destroyed
//!   session deletes its lock key, so nothing is left behind), `LockDelay`
//!   `0s` (Consul's default of 15 s would block the next holder after an
//!   invalidation), no health checks (`Checks: []`: the lease ends by its
//!   TTL or its release only, never because the agent that created it went
//!   away while the holder still renews);
//! - the lock key holds `Flags` `0x2ddccbc058a50c18` (the Consul API's
//!   `LockFlagValue`, what `consul lock` checks) and a small JSON value
//!   naming the holder's owner id (so a resent attempt of the same owner
//!   finds its lease);
//! - data operations never see such keys: every decode skips a key whose
//!   last segment is `.lock` and whose flags are `LockFlagValue`.
//!
//! One attempt ([`LockDriver::try_acquire`]): a read of the lock key; if it
//! is free (absent, or present with no session), the owner's session is
//! created (once per owner, reused by its later attempts) and one `/v1/txn`
//! sends `check-not-exists` / `check-index` (guarding against a change since
//! the read, and so against overwriting a key that is not a lock) and
//! `lock`. The fencing token is the lock key's `ModifyIndex` after that
//! `lock`: a Raft index, so it is above the index of every earlier write to
//! the cluster, every earlier holder's acquisition included, and it keeps
//! growing across restarts of the servers (the Raft log and its snapshots
//! persist it).
//!
//! Sessions of attempts that did not get the lock are destroyed once the
//! acquisition stops trying (no attempt for [`PENDING_IDLE`]); a released
//! lease's session is destroyed by the release, which also deletes the
//! lock key (behavior `delete`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kvmap_core::lock::{FencingToken, Lease, LockDriver};
use kvmap_core::{Context, ErrorKind, Key, Op, Result};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::batch::{TxnOp, TxnOutcome};
use crate::codec::RawKv;
use crate::error::{own, BACKEND};
use crate::store::Inner;

/// The `Flags` of a lock key: the Consul API's `LockFlagValue`, the value
/// `consul lock` writes and checks.
pub const LOCK_FLAGS: u64 = 0x2ddc_cbc0_58a5_0c18;

/// The last path segment of a lock key (`consul lock`'s `.lock` suffix).
pub const LOCK_SUFFIX: &str = "/.lock";

/// The session name kvmap's lock sessions carry.
pub const SESSION_NAME: &str = "kvmap lock";

/// How long an acquisition may go without an attempt before the session
/// it created is destroyed (the core's back-off between attempts is at
/// most 260 ms).
pub const PENDING_IDLE: Duration = Duration::from_secs(2);

/// Consul's shortest session TTL.
pub const MIN_TTL: Duration = Duration::from_secs(10);

/// Consul's longest session TTL (its default `session_ttl_max`).
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// Whether a Consul entry is a lock key (kvmap's or `consul lock`'s): the
/// data layer skips these.
pub(crate) fn is_lock_entry(consul_key: &str, flags: u64) -> bool {
    flags == LOCK_FLAGS && (consul_key == ".lock" || consul_key.ends_with(LOCK_SUFFIX))
}

/// A session created for one acquisition that does not hold the lock yet.
#[derive(Debug)]
struct Pending {
    session: String,
    last_used: Instant,
    /// When the session was created or last renewed (request sent).
    renewed_at: Instant,
    in_flight: usize,
}

type PendingMap = Arc<Mutex<HashMap<String, Pending>>>;

/// The [`LockDriver`] of [`ConsulStore`](crate::ConsulStore): leases on
/// Consul sessions, fencing tokens from the lock key's `ModifyIndex`; the
/// layout and guarantees are in the crate docs, section "Locks".
pub struct ConsulLocks {
    inner: Arc<Inner>,
    /// Owner id → its session, until the owner gets the lock or gives up.
    pending: PendingMap,
}

impl std::fmt::Debug for ConsulLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulLocks")
            .field("key_prefix", &self.inner.cfg.key_prefix)
            .field("pending_sessions", &self.table().len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Deserialize)]
struct LockValue {
    #[serde(default)]
    owner: Option<String>,
}

impl ConsulLocks {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The Consul key of the lock of kvmap key `key`.
    pub(crate) fn lock_key(&self, key: &Key) -> String {
        format!("{}{}{LOCK_SUFFIX}", self.inner.cfg.key_prefix, key.as_str())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock key's current entry (one read transaction, so every key
    /// shape works).
    async fn read_lock(&self, lock_key: &str, key: &Key) -> Result<Option<RawKv>> {
        let outcome = self
            .inner
            .txn(
                &Context::new(),
                &[TxnOp::GetTree(lock_key.to_owned())],
                Op::Lock,
                Some(key.as_str()),
            )
            .await?;
        let TxnOutcome::Done(raws) = outcome else {
            return Err(own(
                ErrorKind::Internal,
                Op::Lock,
                Some(key.as_str()),
                "a read-only transaction of the lock key was rolled back",
            ));
        };
        Ok(raws.into_iter().find(|r| r.key == lock_key))
    }

    /// Creates a session for one acquisition.
    async fn create_session(&self, key: &Key, ttl: Duration) -> Result<String> {
        let body = json!({
            "Name": SESSION_NAME,
            "TTL": ttl_text(ttl),
            "Behavior": "delete",
            "LockDelay": "0s",
            "Checks": [],
        });
        let body = serde_json::to_vec(&body).map_err(|e| {
            own(
                ErrorKind::Internal,
                Op::Lock,
                Some(key.as_str()),
                format!("encoding a session request: {e}"),
            )
        })?;
        let ans = self
            .inner
            .client
            .send(
                Method::PUT,
                "session/create",
                &[],
                Some(body),
                self.inner.cfg.request_timeout,
                Op::Lock,
                Some(key.as_str()),
            )
            .await?;
        let created: Created = serde_json::from_slice(&ans.body)
            .ok()
            .filter(|_| ans.status == 200)
            .ok_or_else(|| {
                own(
                    ErrorKind::InvalidData,
                    Op::Lock,
                    Some(key.as_str()),
                    format!(
                        "consul answered {} to a session create without a session id",
                        ans.status
                    ),
                )
            })?;
        Ok(created.id)
    }

    /// The owner's pending session, created on its first free-looking
    /// attempt, and renewed before reuse once a third of its TTL has
    /// passed (so a lock taken with it has at least the full TTL on the
    /// server, as the core assumes from the attempt on). Marks it in
    /// flight (`marked`).
    async fn session_for(
        &self,
        key: &Key,
        owner: &str,
        ttl: Duration,
        marked: &mut bool,
    ) -> Result<String> {
        let reuse = self.table().get_mut(owner).map(|p| {
            p.in_flight += 1;
            p.last_used = Instant::now();
            (p.session.clone(), p.renewed_at.elapsed() >= ttl / 3)
        });
        if let Some((session, stale)) = reuse {
            *marked = true;
            if !stale {
                return Ok(session);
            }
            let sent = Instant::now();
            if renew_session(&self.inner, &session, key).await? {
                if let Some(p) = self.table().get_mut(owner) {
                    p.renewed_at = sent;
                }
                return Ok(session);
            }
            // Consul dropped it (it was never renewed while waiting):
            // start over with a new one.
            *marked = false;
            self.table().remove(owner);
        }
        let sent = Instant::now();
        let session = self.create_session(key, ttl).await?;
        let mut table = self.table();
        *marked = true;
        if let Some(p) = table.get_mut(owner) {
            // A concurrent attempt of the same owner made one first.
            p.in_flight += 1;
            p.last_used = Instant::now();
            let theirs = p.session.clone();
            drop(table);
            self.destroy_in_background(session);
            return Ok(theirs);
        }
        table.insert(
            owner.to_owned(),
            Pending {
                session: session.clone(),
                last_used: Instant::now(),
                renewed_at: sent,
                in_flight: 1,
            },
        );
        drop(table);
        self.watch_pending(owner.to_owned(), session.clone());
        Ok(session)
    }

    /// Ends an attempt: `took` true hands the session to the lease,
    /// `gone` true forgets a session Consul no longer knows; `marked`:
    /// the attempt counted itself in flight.
    fn attempt_done(&self, owner: &str, took: bool, gone: bool, marked: bool) {
        let mut table = self.table();
        if took || gone {
            table.remove(owner);
        } else if let Some(p) = table.get_mut(owner) {
            if marked {
                p.in_flight = p.in_flight.saturating_sub(1);
            }
            p.last_used = Instant::now();
        }
    }

    /// Destroys the owner's session once it has gone [`PENDING_IDLE`]
    /// without an attempt (the acquisition gave up or timed out).
    fn watch_pending(&self, owner: String, session: String) {
        let pending = self.pending.clone();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PENDING_IDLE / 2).await;
                let drop_it = {
                    let mut table = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    match table.get(&owner) {
                        Some(p) if p.session == session => {
                            if p.in_flight == 0 && p.last_used.elapsed() >= PENDING_IDLE {
                                table.remove(&owner);
                                true
                            } else {
                                false
                            }
                        }
                        // Taken by a lease (its release destroys it) or gone.
                        _ => return,
                    }
                };
                if drop_it {
                    if let Err(e) = destroy(&inner, &session, None).await {
                        tracing::debug!(error = %e.report(), "destroying an idle lock session failed; it expires by its ttl");
                    }
                    return;
                }
            }
        });
    }

    fn destroy_in_background(&self, session: String) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _ = destroy(&inner, &session, None).await;
        });
    }

    async fn attempt(
        &self,
        key: &Key,
        lock_key: &str,
        owner: &str,
        ttl: Duration,
        marked: &mut bool,
    ) -> Result<Attempt> {
        let current = self.read_lock(lock_key, key).await?;
        let guard = match &current {
            Some(raw) => {
                if let Some(s) = raw.session.as_deref().filter(|s| !s.is_empty()) {
                    if held_by_owner(raw, owner) {
                        // A resent attempt that already took it.
                        return Ok(Attempt::Took(Lease {
                            token: FencingToken::new(raw.modify_index),
                            handle: s.to_owned(),
                        }));
                    }
                    return Ok(Attempt::Held);
                }
                if raw.flags != LOCK_FLAGS {
                    return Err(own(
                        ErrorKind::InvalidData,
                        Op::Lock,
                        Some(key.as_str()),
                        format!(
                            "the consul key {lock_key:?} holds data that is not a lock (flags {:#x}); kvmap does not overwrite it",
                            raw.flags
                        ),
                    ));
                }
                TxnOp::CheckIndex {
                    key: lock_key.to_owned(),
                    index: raw.modify_index,
                }
            }
            None => TxnOp::CheckNotExists(lock_key.to_owned()),
        };
        let session = self.session_for(key, owner, ttl, marked).await?;
        let value = json!({ "kvmap": "lock", "owner": owner }).to_string();
        let ops = [
            guard,
            TxnOp::Lock {
                key: lock_key.to_owned(),
                value: Bytes::from(value),
                flags: LOCK_FLAGS,
                session: session.clone(),
            },
        ];
        let outcome = self
            .inner
            .txn(&Context::new(), &ops, Op::Lock, Some(key.as_str()))
            .await;
        match outcome {
            Ok(TxnOutcome::Done(results)) => {
                let index = results
                    .iter()
                    .rev()
                    .find(|r| r.key == lock_key)
                    .map(|r| r.modify_index)
                    .filter(|i| *i > 0);
                match index {
                    Some(i) => Ok(Attempt::Took(Lease {
                        token: FencingToken::new(i),
                        handle: session,
                    })),
                    // Committed without an index in the answer: read it.
                    None => match self.read_lock(lock_key, key).await? {
                        Some(raw) if raw.session.as_deref() == Some(session.as_str()) => {
                            Ok(Attempt::Took(Lease {
                                token: FencingToken::new(raw.modify_index),
                                handle: session,
                            }))
                        }
                        _ => Ok(Attempt::Held),
                    },
                }
            }
            Ok(TxnOutcome::Failed(errors)) => {
                // An ACL refusal is an error, not "held" (waiting would
                // never end).
                let acl: Vec<(usize, String)> = errors
                    .iter()
                    .filter(|(_, what)| {
                        let w = what.to_ascii_lowercase();
                        w.contains("permission denied")
                            || w.contains("acl not found")
                            || w.contains("token not found")
                    })
                    .cloned()
                    .collect();
                if let Some(e) = crate::batch::refusal(&acl, Op::Lock, Some(key.as_str())) {
                    return Err(e);
                }
                if errors
                    .iter()
                    .any(|(_, what)| what.to_ascii_lowercase().contains("invalid session"))
                {
                    Ok(Attempt::SessionGone)
                } else {
                    // Held, or changed since the read: try again later.
                    Ok(Attempt::Held)
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// What one attempt found.
enum Attempt {
    Took(Lease),
    Held,
    SessionGone,
}

/// A TTL as Consul's duration text: whole seconds as `10s`, else ms.
fn ttl_text(ttl: Duration) -> String {
    if ttl.subsec_millis() == 0 {
        format!("{}s", ttl.as_secs())
    } else {
        format!("{}ms", ttl.as_millis())
    }
}

/// Whether the lock entry's value names `owner` (kvmap's lock value).
fn held_by_owner(raw: &RawKv, owner: &str) -> bool {
    use base64::Engine as _;
    let Some(bytes) = raw
        .value
        .as_deref()
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
    else {
        return false;
    };
    serde_json::from_slice::<LockValue>(&bytes)
        .ok()
        .and_then(|v| v.owner)
        .is_some_and(|o| o == owner)
}

/// Renews a session: `false` if Consul no longer knows it (404, or an
/// empty answer).
async fn renew_session(inner: &Inner, session: &str, key: &Key) -> Result<bool> {
    let ans = inner
        .client
        .send(
            Method::PUT,
            &format!("session/renew/{}", session_path(session)),
            &[],
            None,
            inner.cfg.request_timeout,
            Op::Lock,
            Some(key.as_str()),
        )
        .await?;
    if ans.status == 404 {
        return Ok(false);
    }
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&ans.body).unwrap_or_default();
    Ok(!sessions.is_empty())
}

/// How long a release keeps retrying a destroy that Consul could not
/// serve (no leader during an election, an unreachable agent): a few
/// elections' worth. Destroying is idempotent.
pub const RELEASE_RETRY: Duration = Duration::from_secs(10);

/// Destroys a session (with behavior `delete`, its lock key goes with it),
/// retrying transient failures for up to [`RELEASE_RETRY`]. A session
/// Consul no longer knows is not an error.
async fn destroy(inner: &Inner, session: &str, key: Option<&Key>) -> Result<()> {
    let start = Instant::now();
    let mut nap = Duration::from_millis(100);
    loop {
        match destroy_once(inner, session, key).await {
            Err(e)
                if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout)
                    && start.elapsed() + nap < RELEASE_RETRY =>
            {
                tracing::debug!(error = %e.report(), "destroying a lock session failed; retrying");
                tokio::time::sleep(nap).await;
                nap = (nap * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

async fn destroy_once(inner: &Inner, session: &str, key: Option<&Key>) -> Result<()> {
    inner
        .client
        .send(
            Method::PUT,
            &format!("session/destroy/{}", session_path(session)),
            &[],
            None,
            inner.cfg.request_timeout,
            Op::Lock,
            key.map(Key::as_str),
        )
        .await?;
    Ok(())
}

/// A session id as a path segment (Consul's ids are UUIDs; anything else
/// is encoded rather than trusted).
fn session_path(session: &str) -> String {
    const ID: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-');
    percent_encoding::utf8_percent_encode(session, ID).to_string()
}

#[async_trait]
impl LockDriver for ConsulLocks {
    fn backend(&self) -> &str {
        BACKEND
    }

    fn ttl_range(&self) -> (Duration, Duration) {
        (MIN_TTL, MAX_TTL)
    }

    async fn try_acquire(&self, key: &Key, owner: &str, ttl: Duration) -> Result<Option<Lease>> {
        let lock_key = self.lock_key(key);
        let mut marked = false;
        let res = self.attempt(key, &lock_key, owner, ttl, &mut marked).await;
        match res {
            Ok(Attempt::Took(lease)) => {
                self.attempt_done(owner, true, false, marked);
                Ok(Some(lease))
            }
            Ok(Attempt::Held) => {
                self.attempt_done(owner, false, false, marked);
                Ok(None)
            }
            Ok(Attempt::SessionGone) => {
                self.attempt_done(owner, false, true, marked);
                Ok(None)
            }
            Err(e) => {
                self.attempt_done(owner, false, false, marked);
                Err(e)
            }
        }
    }

    async fn renew(&self, key: &Key, lease: &Lease, _ttl: Duration) -> Result<bool> {
        if !renew_session(&self.inner, &lease.handle, key).await? {
            return Ok(false);
        }
        // Still ours? (A session can outlive its key: an operator may
        // have deleted the lock key.)
        let lock_key = self.lock_key(key);
        Ok(self
            .read_lock(&lock_key, key)
            .await?
            .is_some_and(|raw| raw.session.as_deref() == Some(lease.handle.as_str())))
    }

    async fn release(&self, key: &Key, lease: &Lease) -> Result<()> {
        self.table().retain(|_, p| p.session != lease.handle);
        destroy(&self.inner, &lease.handle, Some(key)).await
    }
}
