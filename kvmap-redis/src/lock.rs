//! Locks with fencing tokens: [`RedisLocks`], the [`LockDriver`] behind
//! [`RedisStore::lock`](kvmap_core::KvStore::lock).
//!
//! # Layout
//! Two string keys per lock key, both in the hash slot of the data key
//! (`key prefix + key`) and both outside the key prefix:
//!
//! | key | content | expiry |
//! | --- | --- | --- |
//! | `{T}__kvmap_lock:<key_prefix><key>` | the lease: `<owner id>:<token>` | `PX` = the lock's TTL |
//! | `{T}__kvmap_fence:<key_prefix><key>` | the fencing counter: the last token, `max(last + 1, server time in µs)` | never |
//!
//! `T` is a decimal hash tag whose CRC16 slot is the data key's slot, so
//! the two keys sit on the master of the data key (one script touches
//! both without crossing slots) and fail over with it. The names start
//! with `{`, which a key prefix may not contain: `list`'s `SCAN MATCH
//! <key_prefix>*`, the watch's key filter (change events and expiry
//! notifications are matched by the key prefix) and reads of data
//! keys never meet them. An empty key prefix would put every key of the
//! database under the key prefix, so locks are unsupported then.
//!
//! Every call is one script (`EVALSHA`), see `scripts::LOCK_*`: acquire
//! returns the stored token when the lease is already this owner's (a
//! resent attempt) and otherwise takes a free lease with a fresh token;
//! renew and release only touch a lease whose owner matches. With durable
//! writes, the acquire or renew script and a `WAIT` go in one pipeline on
//! the key's master, as for data writes, so the `WAIT` covers that write.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use kvmap_core::lock::{Lease, LockDriver, LockOptions};
use kvmap_core::{Capability, ErrorKind, FencingToken, Key, Op, Result, RetryClass};
use redis::{Script, Value};

use crate::error::{map, own, BACKEND};
use crate::scripts::{LOCK_ACQUIRE, LOCK_RELEASE, LOCK_RENEW};
use crate::slots::slot_tag;
use crate::store::Inner;

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(LOCK_ACQUIRE));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(LOCK_RENEW));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(LOCK_RELEASE));

/// The prefix of lease keys (after the hash tag).
pub(crate) const LEASE_PREFIX: &str = "__kvmap_lock:";
/// The prefix of fencing counter keys (after the hash tag).
pub(crate) const FENCE_PREFIX: &str = "__kvmap_fence:";

/// The server keys of one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockKeys {
    /// The lease key.
    pub(crate) lease: String,
    /// The fencing counter key.
    pub(crate) fence: String,
}

impl LockKeys {
    /// The lock keys of data key `server_key` (`key prefix + key`).
    pub(crate) fn of(server_key: &str, key: &str) -> Result<Self> {
        let tag = slot_tag(server_key, Op::Lock, key)?;
        Ok(Self {
            lease: format!("{{{tag}}}{LEASE_PREFIX}{server_key}"),
            fence: format!("{{{tag}}}{FENCE_PREFIX}{server_key}"),
        })
    }
}

/// The lease's TTL in whole milliseconds, rounded up (the server never
/// expires a lease before the holder stops believing in it).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The [`LockDriver`] of a [`RedisStore`](crate::RedisStore): leases as
/// `PX` keys, fencing tokens from a per-key counter, both in the
/// data key's slot. See the module docs for the layout. Cheap to clone.
#[derive(Clone)]
pub(crate) struct RedisLocks {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLocks")
            .field("key_prefix", &self.inner.cfg.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLocks {
    /// The lock driver of the store behind `inner`.
    ///
    /// # Errors
    /// `Unsupported { Lock }` with an empty key prefix (the lock keys could
    /// not be kept out of it).
    pub(crate) fn new(inner: Arc<Inner>, key: &Key) -> Result<Self> {
        if inner.cfg.key_prefix.is_empty() {
            return Err(own(
                ErrorKind::Unsupported {
                    capability: Capability::Lock,
                },
                Op::Lock,
                Some(key.as_str()),
                "locks need a non-empty key_prefix (their keys live outside it)",
            ));
        }
        Ok(Self { inner })
    }

    fn keys(&self, key: &Key) -> Result<LockKeys> {
        LockKeys::of(&self.inner.server_key(key.as_str()), key.as_str())
    }

    /// Runs the release script for `owner`; `true` if it held the lease.
    async fn release_owner(&self, key: &Key, owner: &str) -> Result<bool> {
        let keys = self.keys(key)?;
        let mut inv = RELEASE.key(&keys.lease);
        inv.arg(owner);
        let v = self
            .inner
            .client
            .invoke(&inv)
            .await
            .map_err(|e| map(e, Op::Lock, Some(key.as_str())))?;
        flag(&v, key)
    }

    /// After an acquire whose outcome is unknown, gives back whatever it
    /// may have taken, in the background (the caller gets the error now).
    fn give_back(&self, key: &Key, owner: &str) {
        let (this, key, owner) = (self.clone(), key.clone(), owner.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.release_owner(&key, &owner).await {
                tracing::debug!(error = %e.report(), "redis lock: releasing an uncertain acquisition failed; it expires by its ttl");
            }
        });
    }
}

/// Parses a 1/0 script reply.
fn flag(v: &Value, key: &Key) -> Result<bool> {
    match v {
        Value::Int(1) => Ok(true),
        Value::Int(0) => Ok(false),
        _ => Err(own(
            ErrorKind::Internal,
            Op::Lock,
            Some(key.as_str()),
            "unexpected lock script reply",
        )),
    }
}

/// Parses the acquire script's reply: the token, or `None` if held.
fn token_reply(v: &Value, key: &Key) -> Result<Option<u64>> {
    match v {
        Value::Nil => Ok(None),
        Value::Int(t) if *t > 0 => Ok(u64::try_from(*t).ok()),
        _ => Err(own(
            ErrorKind::Internal,
            Op::Lock,
            Some(key.as_str()),
            "unexpected lock acquire reply",
        )),
    }
}

#[async_trait]
impl LockDriver for RedisLocks {
    fn backend(&self) -> &str {
        BACKEND
    }

    fn ttl_range(&self) -> (Duration, Duration) {
        (Duration::from_millis(10), LockOptions::MAX_TTL)
    }

    async fn try_acquire(&self, key: &Key, owner: &str, ttl: Duration) -> Result<Option<Lease>> {
        let locks = self;
        let keys = locks.keys(key)?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(ACQUIRE.get_hash())
            .arg(2)
            .arg(&keys.lease)
            .arg(&keys.fence)
            .arg(owner)
            .arg(ttl_ms(ttl));
        // In durable mode the script and its `WAIT` go in one pipeline on
        // the key's master, so the `WAIT` covers this very write.
        let (v, acked) = match locks
            .inner
            .run_write(LOCK_ACQUIRE, &cmd, key, Op::Lock, true)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if e.retry_class() == RetryClass::OutcomeUnknown {
                    locks.give_back(key, owner);
                }
                return Err(e);
            }
        };
        let Some(token) = token_reply(&v, key)? else {
            return Ok(None);
        };
        if let Err(e) = locks.inner.check_applied(acked, Op::Lock, key.as_str()) {
            // Taken on the master but not proven replicated: give it back
            // rather than hand out a lease a failover may forget.
            locks.give_back(key, owner);
            return Err(e);
        }
        Ok(Some(Lease {
            token: FencingToken::new(token),
            handle: owner.to_owned(),
        }))
    }

    async fn renew(&self, key: &Key, lease: &Lease, ttl: Duration) -> Result<bool> {
        let locks = self;
        let keys = locks.keys(key)?;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(RENEW.get_hash())
            .arg(1)
            .arg(&keys.lease)
            .arg(&lease.handle)
            .arg(ttl_ms(ttl));
        let (v, acked) = locks
            .inner
            .run_write(LOCK_RENEW, &cmd, key, Op::Lock, true)
            .await?;
        let renewed = flag(&v, key)?;
        if renewed {
            // A renewal a promoted replica never saw would let the lease
            // expire early there: only a replicated renewal counts.
            locks.inner.check_applied(acked, Op::Lock, key.as_str())?;
        }
        Ok(renewed)
    }

    async fn release(&self, key: &Key, lease: &Lease) -> Result<()> {
        self.release_owner(key, &lease.handle).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::key_slot;

    #[test]
    fn lock_keys_share_the_data_slot_and_leave_the_namespace() {
        for name in [
            "kvmap:users/ada",
            "kvmap:{user42}/cart",
            "kvmap:a}b",
            "kvmap:a{}b}",
            "kvmap:x{",
        ] {
            let k = LockKeys::of(name, name).unwrap();
            let slot = key_slot(name.as_bytes());
            assert_eq!(key_slot(k.lease.as_bytes()), slot, "{name}");
            assert_eq!(key_slot(k.fence.as_bytes()), slot, "{name}");
            assert!(k.lease.starts_with('{') && k.fence.starts_with('{'));
            assert!(k.lease.ends_with(name) && k.lease.contains(LEASE_PREFIX));
            assert_ne!(k.lease, k.fence);
        }
    }

    #[test]
    fn documented_layout() {
        let k = LockKeys::of("kvmap:users/ada", "users/ada").unwrap();
        assert_eq!(key_slot(b"kvmap:users/ada"), 8485);
        assert_eq!(k.lease, "{10789}__kvmap_lock:kvmap:users/ada");
        assert_eq!(k.fence, "{10789}__kvmap_fence:kvmap:users/ada");
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(ttl_ms(Duration::from_millis(10)), 10);
        assert_eq!(ttl_ms(Duration::from_micros(10_001)), 11);
        assert_eq!(ttl_ms(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn replies() {
        let k = Key::new("a").unwrap();
        assert_eq!(token_reply(&Value::Int(7), &k).unwrap(), Some(7));
        assert_eq!(token_reply(&Value::Nil, &k).unwrap(), None);
        assert!(token_reply(&Value::Int(0), &k).is_err());
        assert!(flag(&Value::Int(1), &k).unwrap());
        assert!(flag(&Value::Okay, &k).is_err());
    }
}
