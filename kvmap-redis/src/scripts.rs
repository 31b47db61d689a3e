//! The Lua scripts behind every write, and the parsing of their replies,
//! of stored hashes and of published change events.
//!
//! # Layout
//! One Redis hash per key, at `key prefix + key`:
//!
//! | field | content |
//! | --- | --- |
//! | `v` | the value (bytes) |
//! | `r` | the revision (decimal) |
//! | `c` | the create revision (decimal) |
//! | `e` | expiry in Unix milliseconds (only with a TTL; the hash also has a `PEXPIRE`) |
//!
//! Each applied write also leaves a **write record** for 60 s,
//! `{T}__kvmap_w:<write id>` (a string in the key's slot, outside the
//! key prefix): `p<revision>` for a put, `d` for a delete. No records with
//! an empty key prefix (see the crate docs, *Exactly-once writes*).
//!
//! A key of another type fails the script's `HMGET` with `WRONGTYPE`
//! (Redis 7 keeps the error code); a hash without the `r` field, or with
//! fields kvmap cannot read, fails with `KVMAP_BADDATA` before anything
//! is written.
//!
//! A revision is `max(previous + 1, server time in µs)`: strictly
//! increasing per key, and still increasing across a delete and re-create
//! (as long as the master's clock does not step back, e.g. after a
//! failover to a node with a slower clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kvmap_core::{Entry, ErrorKind, Key, Op, Result, Revision};
use redis::Value;

use crate::error::own;

/// The Lua both write scripts start with: argument checks, the read of the
/// hash, validation of every field before the first write, and the write
/// record (see the crate docs, *Exactly-once writes*).
///
/// Defines `key`, `wid`, `rs`/`r` (revision string/number or nil), `c`
/// (create revision string, `'0'` if absent), `pv`, `pe` (previous value
/// and expiry), `now_us`, `done` (this write's record if this call is a
/// resend of a write already applied: `p<revision>` or `d`), and the
/// functions `record(outcome)` (stores this write's record for 60 s) and
/// `touch()` (a resend's write: the record's expiry again).
macro_rules! write_prelude {
    () => {
        r#"
local key, rec = KEYS[1], KEYS[2]
local wid = ARGV[1]
if rec and #wid ~= 16 then return redis.error_reply('KVMAP_BADARG write id') end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('HMGET', key, 'r', 'c', 'v', 'e')
local rs, r, c, pv, pe = cur[1], nil, '0', cur[3] or '', cur[4] or '0'
if rs then
  if not string.match(rs, '^%d+$') or (cur[2] and not string.match(cur[2], '^%d+$'))
      or not string.match(pe, '^%d+$') then
    return redis.error_reply('KVMAP_BADDATA unreadable revision fields')
  end
  r = tonumber(rs); c = cur[2] or rs
elseif redis.call('EXISTS', key) == 1 then
  return redis.error_reply('KVMAP_BADDATA hash without revision field')
end
local done = rec and redis.call('GET', rec)
local function record(outcome)
  if rec then redis.call('SET', rec, outcome, 'PX', 60000) end
end
-- A resend changes nothing, so it writes its record's expiry again: one
-- write on this connection, so a WAIT after it covers the first send.
local function touch() redis.call('PEXPIRE', rec, 60000) end
-- Redis checks ACL rights per call and does not undo a script's earlier
-- writes, so every right the script needs is checked before its first
-- write (redis.acl_check_cmd exists from Redis 7.0; Redis 6 publishes on
-- any channel by default).
local function may(...) return not redis.acl_check_cmd or redis.acl_check_cmd(...) end
local function refused(channel, publish, may_write)
  if not may_write or (rec and not (may('SET', rec, 'x') and may('PEXPIRE', rec, '1'))) then
    return 'NOPERM kvmap: this user may not write the key or its write record (nothing written)'
  end
  if channel ~= '' and not may(publish, channel, 'x') then
    return 'NOPERM kvmap: this user may not publish change events on ' .. channel ..
      ' (grant the channel, or turn watch events off; nothing written)'
  end
end
"#
    };
}

/// Put: KEYS[1] = key, KEYS[2] = the write record (optional); ARGV =
/// write id, value, mode (`o`/`c`/`u`), expected revision, ttl in ms
/// (`0`: none), channel (empty: do not publish), publish command
/// (`SPUBLISH` to the key's own shard channel in a cluster, `PUBLISH` on
/// a standalone server).
///
/// Replies `{'ok', rev, crev, exp}` (a resend of an applied write:
/// `{'ok', rev}`), `{'exists', rev}` or `{'conflict', rev or ''}`.
/// Nothing is written before every argument and field is checked.
pub(crate) const PUT: &str = concat!(
    write_prelude!(),
    r#"
local mode, ttl = ARGV[3], tonumber(ARGV[5])
if not ttl or ttl < 0 or ttl > 4503599627370496 or (mode ~= 'o' and mode ~= 'c' and mode ~= 'u') then
  return redis.error_reply('KVMAP_BADARG put mode or ttl')
end
if ARGV[6] ~= '' and ARGV[7] ~= 'PUBLISH' and ARGV[7] ~= 'SPUBLISH' then
  return redis.error_reply('KVMAP_BADARG publish command')
end
local no = refused(ARGV[6], ARGV[7], may('HSET', key, 'v', 'x')
  and (ttl == 0 or may('PEXPIRE', key, '1'))
  and (pe == '0' or (may('HDEL', key, 'e') and may('PERSIST', key))))
if no then return redis.error_reply(no) end
if done and string.sub(done, 1, 1) == 'p' then touch(); return {'ok', string.sub(done, 2)} end
if mode == 'c' and r then return {'exists', rs} end
if mode == 'u' and rs ~= ARGV[4] then return {'conflict', rs or ''} end
local nr = now_us
if r and r + 1 > nr then nr = r + 1 end
local nrs = string.format('%.0f', nr)
local cs = rs and c or nrs
local e = '0'
if ttl > 0 then
  e = string.format('%.0f', math.floor(now_us / 1000) + ttl)
  redis.call('HSET', key, 'v', ARGV[2], 'r', nrs, 'c', cs, 'e', e)
  redis.call('PEXPIRE', key, ttl)
else
  redis.call('HSET', key, 'v', ARGV[2], 'r', nrs, 'c', cs)
  if pe ~= '0' then
    redis.call('HDEL', key, 'e')
    redis.call('PERSIST', key)
  end
end
record('p' .. nrs)
if ARGV[6] ~= '' then
  redis.call(ARGV[7], ARGV[6], 'P ' .. nrs .. ' ' .. cs .. ' ' .. e .. ' ' .. #key .. ' ' ..
    (rs or '0') .. ' ' .. c .. ' ' .. pe .. ' ' .. #pv .. '\n' .. key .. pv .. ARGV[2])
end
return {'ok', nrs, cs, e}
"#
);

/// Delete: KEYS[1] = key, KEYS[2] = the write record (optional); ARGV =
/// write id, expected revision (empty: any), channel, publish command
/// (as for [`PUT`]).
///
/// Replies `{'ok'}` (also for a resend of an applied delete), `{'absent'}`
/// or `{'conflict', rev or ''}`.
pub(crate) const DELETE: &str = concat!(
    write_prelude!(),
    r#"
if ARGV[3] ~= '' and ARGV[4] ~= 'PUBLISH' and ARGV[4] ~= 'SPUBLISH' then
  return redis.error_reply('KVMAP_BADARG publish command')
end
local no = refused(ARGV[3], ARGV[4], may('DEL', key))
if no then return redis.error_reply(no) end
if done == 'd' then touch(); return {'ok'} end
if ARGV[2] ~= '' and rs ~= ARGV[2] then return {'conflict', rs or ''} end
if not r then return {'absent'} end
redis.call('DEL', key)
record('d')
if ARGV[3] ~= '' then
  local nr = now_us
  if r + 1 > nr then nr = r + 1 end
  redis.call(ARGV[4], ARGV[3], 'D ' .. string.format('%.0f', nr) .. ' 0 0 ' .. #key .. ' ' ..
    rs .. ' ' .. c .. ' ' .. pe .. ' ' .. #pv .. '\n' .. key .. pv)
end
return {'ok'}
"#
);

/// Lock acquire: KEYS[1] = lease, KEYS[2] = fencing counter (same slot);
/// ARGV = owner id, ttl in ms.
///
/// The lease holds `<owner>:<token>`. Replies the token (integer) when the
/// lease is taken now or was already this owner's (a resent attempt),
/// nil when another owner holds it. Everything is checked before the first
/// write, so a refused call changes nothing. The token is
/// `max(counter + 1, server time in µs)` (see the crate docs, *Locks*).
pub(crate) const LOCK_ACQUIRE: &str = r#"
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if owner == '' or string.find(owner, ':', 1, true) or not ttl or ttl < 1 then
  return redis.error_reply('KVMAP_BADARG lock owner or ttl')
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  local tok = sep and tonumber(string.sub(cur, sep + 1))
  if not tok then return redis.error_reply('KVMAP_BADDATA lease without owner:token') end
  if string.sub(cur, 1, sep - 1) == owner then return tok end
  return false
end
local last = redis.call('GET', KEYS[2])
if last and not string.match(last, '^%d+$') then
  return redis.error_reply('KVMAP_BADDATA fencing counter is not a number')
end
-- max(last + 1, server time in us): strictly increasing while the counter
-- survives, and still increasing after a failover that lost the counter's
-- last write, unless the new master's clock is behind the old one's by more
-- than the time since that token was handed out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tok = math.max((tonumber(last) or 0) + 1, now)
local s = string.format('%.0f', tok)
redis.call('SET', KEYS[2], s)
redis.call('SET', KEYS[1], owner .. ':' .. s, 'PX', ttl)
return tok
"#;

/// Lock renew: KEYS[1] = lease; ARGV = owner id, ttl in ms. `PEXPIRE`s the
/// lease if this owner holds it. Replies 1 (renewed) or 0 (not held).
pub(crate) const LOCK_RENEW: &str = r#"
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if owner == '' or not ttl or ttl < 1 then
  return redis.error_reply('KVMAP_BADARG lock owner or ttl')
end
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local sep = string.find(cur, ':', 1, true)
if not sep then return redis.error_reply('KVMAP_BADDATA lease without owner:token') end
if string.sub(cur, 1, sep - 1) ~= owner then return 0 end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// Lock release: KEYS[1] = lease; ARGV = owner id. Deletes the lease if
/// this owner holds it. Replies 1 (released) or 0 (not held).
pub(crate) const LOCK_RELEASE: &str = r#"
local owner = ARGV[1]
if owner == '' then return redis.error_reply('KVMAP_BADARG lock owner') end
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local sep = string.find(cur, ':', 1, true)
if not sep then return redis.error_reply('KVMAP_BADDATA lease without owner:token') end
if string.sub(cur, 1, sep - 1) ~= owner then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// The hash fields a read asks for, in order.
pub(crate) const FIELDS: [&str; 4] = ["v", "r", "c", "e"];
/// The fields of a keys-only read.
pub(crate) const META_FIELDS: [&str; 3] = ["r", "c", "e"];

/// The outcome of the put script.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutReply {
    Ok(Revision),
    Exists,
    Conflict(Option<Revision>),
}

/// The outcome of the delete script.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeleteReply {
    Deleted,
    Absent,
    Conflict(Option<Revision>),
}

fn bulk_str(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn parse_rev(b: &[u8]) -> Option<Revision> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn bad_reply(op: Op, key: &str, what: &str) -> kvmap_core::Error {
    own(
        ErrorKind::Internal,
        op,
        Some(key),
        format!("unexpected script reply: {what}"),
    )
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

fn opt_rev(v: Option<&Value>) -> Option<Revision> {
    v.and_then(bulk_str).and_then(parse_rev)
}

/// Parses the put script's reply.
pub(crate) fn put_reply(v: &Value, key: &str) -> Result<PutReply> {
    let a = items(v);
    let tag = a.first().and_then(bulk_str).unwrap_or_default();
    match tag {
        b"ok" => opt_rev(a.get(1))
            .map(PutReply::Ok)
            .ok_or_else(|| bad_reply(Op::Put, key, "no revision")),
        b"exists" => Ok(PutReply::Exists),
        b"conflict" => Ok(PutReply::Conflict(opt_rev(a.get(1)))),
        _ => Err(bad_reply(Op::Put, key, "unknown tag")),
    }
}

/// Parses the delete script's reply.
pub(crate) fn delete_reply(v: &Value, key: &str) -> Result<DeleteReply> {
    let a = items(v);
    match a.first().and_then(bulk_str).unwrap_or_default() {
        b"ok" => Ok(DeleteReply::Deleted),
        b"absent" => Ok(DeleteReply::Absent),
        b"conflict" => Ok(DeleteReply::Conflict(opt_rev(a.get(1)))),
        _ => Err(bad_reply(Op::Delete, key, "unknown tag")),
    }
}

fn expiry(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

/// Builds an entry from an `HMGET` of [`FIELDS`] (`keys_only`: of
/// [`META_FIELDS`]). `None` if the key is absent.
pub(crate) fn entry_from_fields(
    key: &Key,
    v: &Value,
    keys_only: bool,
    op: Op,
) -> Result<Option<Entry>> {
    let a = items(v);
    let (val, rest) = if keys_only {
        (None, a)
    } else {
        (a.first().and_then(bulk_str), a.get(1..).unwrap_or_default())
    };
    let rev = rest.first().and_then(bulk_str);
    let Some(rev) = rev else {
        if val.is_some() || rest.iter().any(|x| !matches!(x, Value::Nil)) {
            return Err(own(
                ErrorKind::InvalidData,
                op,
                Some(key.as_str()),
                "a foreign hash without kvmap's revision field holds this name",
            ));
        }
        return Ok(None);
    };
    let bad = || {
        own(
            ErrorKind::InvalidData,
            op,
            Some(key.as_str()),
            "unreadable revision fields",
        )
    };
    let rev = parse_rev(rev).ok_or_else(bad)?;
    let crev = match rest.get(1).and_then(bulk_str) {
        Some(c) => parse_rev(c).ok_or_else(bad)?,
        None => rev,
    };
    let exp = match rest.get(2).and_then(bulk_str) {
        Some(e) => parse_rev(e).ok_or_else(bad)?,
        None => 0,
    };
    let value = val.map(Bytes::copy_from_slice).unwrap_or_default();
    Ok(Some(
        Entry::new(key.clone(), value, rev, crev).with_expires_at(expiry(exp)),
    ))
}

/// A change event as published by the scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// `true` for a put, `false` for a delete.
    pub(crate) put: bool,
    /// The server key.
    pub(crate) server_key: Vec<u8>,
    /// Revision, create revision, expiry (ms) after the change (zeros for a delete).
    pub(crate) rev: Revision,
    pub(crate) crev: Revision,
    pub(crate) exp: u64,
    /// The value after a put.
    pub(crate) value: Bytes,
    /// The entry before: revision (0: absent), create revision, expiry, value.
    pub(crate) prev: Option<(Revision, Revision, u64, Bytes)>,
}

impl Change {
    /// Parses a published event; `None` if it is not one of ours.
    pub(crate) fn parse(payload: &[u8]) -> Option<Self> {
        let nl = payload.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&payload[..nl]).ok()?;
        let mut f = header.split(' ');
        let put = match f.next()? {
            "P" => true,
            "D" => false,
            _ => return None,
        };
        let mut num = || f.next().and_then(|s| s.parse::<u64>().ok());
        let (rev, crev, exp, klen) = (num()?, num()?, num()?, num()?);
        let (prev_rev, prev_crev, prev_exp, plen) = (num()?, num()?, num()?, num()?);
        let body = &payload[nl + 1..];
        let klen = usize::try_from(klen).ok()?;
        let plen = usize::try_from(plen).ok()?;
        let server_key = body.get(..klen)?.to_vec();
        let prev_value = body.get(klen..klen.checked_add(plen)?)?;
        let value = body.get(klen + plen..)?;
        let prev = (prev_rev > 0).then(|| {
            (
                prev_rev,
                prev_crev,
                prev_exp,
                Bytes::copy_from_slice(prev_value),
            )
        });
        Some(Self {
            put,
            server_key,
            rev,
            crev,
            exp,
            value: Bytes::copy_from_slice(value),
            prev,
        })
    }

    /// The entry after a put.
    pub(crate) fn entry(&self, key: &Key) -> Entry {
        Entry::new(key.clone(), self.value.clone(), self.rev, self.crev)
            .with_expires_at(expiry(self.exp))
    }

    /// The entry before the change, if any.
    pub(crate) fn prev_entry(&self, key: &Key) -> Option<Entry> {
        self.prev.as_ref().map(|(r, c, e, v)| {
            Entry::new(key.clone(), v.clone(), *r, *c).with_expires_at(expiry(*e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_replies() {
        let ok = Value::Array(vec![
            bulk("ok"),
            bulk("1700000000000001"),
            bulk("5"),
            bulk("0"),
        ]);
        assert_eq!(
            put_reply(&ok, "k").unwrap(),
            PutReply::Ok(1_700_000_000_000_001)
        );
        let c = Value::Array(vec![bulk("conflict"), bulk("")]);
        assert_eq!(put_reply(&c, "k").unwrap(), PutReply::Conflict(None));
        assert!(put_reply(&Value::Nil, "k").is_err());
        assert_eq!(
            delete_reply(&Value::Array(vec![bulk("absent")]), "k").unwrap(),
            DeleteReply::Absent
        );
    }

    #[test]
    fn parses_fields() {
        let k = Key::new("a").unwrap();
        let v = Value::Array(vec![bulk("x"), bulk("7"), bulk("3"), Value::Nil]);
        let e = entry_from_fields(&k, &v, false, Op::Get).unwrap().unwrap();
        assert_eq!(
            (e.revision, e.create_revision, e.value.as_ref()),
            (7, 3, &b"x"[..])
        );
        assert!(e.expires_at.is_none());
        let none = Value::Array(vec![Value::Nil, Value::Nil, Value::Nil, Value::Nil]);
        assert!(entry_from_fields(&k, &none, false, Op::Get)
            .unwrap()
            .is_none());
        let foreign = Value::Array(vec![bulk("x"), Value::Nil, Value::Nil, Value::Nil]);
        let err = entry_from_fields(&k, &foreign, false, Op::Get).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
    }

    #[test]
    fn parses_events() {
        let p = b"P 10 4 0 4 9 4 0 2\nns:aabcd";
        let c = Change::parse(p).unwrap();
        assert!(c.put);
        assert_eq!(c.server_key, b"ns:a");
        assert_eq!((c.rev, c.crev), (10, 4));
        assert_eq!(c.value.as_ref(), b"cd");
        assert_eq!(c.prev.as_ref().map(|p| p.3.as_ref()), Some(&b"ab"[..]));
        let d = Change::parse(b"D 11 0 0 4 10 4 0 2\nns:acd").unwrap();
        assert!(!d.put);
        assert_eq!(d.prev.unwrap().0, 10);
        assert!(Change::parse(b"junk").is_none());
        assert!(Change::parse(b"P 1 1 0 99 0 0 0 0\nshort").is_none());
    }
}
