//! The Redis parsers (`kvmap_redis::fuzzing`): stored hashes (`HMGET` of
//! v, r, c, e) into entries, put/delete script replies, published change
//! events, `CLUSTER SLOTS` and `CLUSTER NODES`: never panic on arbitrary
//! replies, and what the scripts write parses back to what was written.
#![no_main]

use kvmap_core::{ErrorKind, Key};
use kvmap_redis::fuzzing as redis_fuzz;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use redis::Value;
use std::time::{Duration, UNIX_EPOCH};

/// An arbitrary RESP value, biased towards what the parsers look at.
#[derive(Arbitrary, Debug)]
enum V {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    /// A decimal number as a bulk string.
    Num(u64),
    Tag(Tag),
    Simple(String),
    Okay,
    Array(Vec<V>),
    Double(f64),
    Boolean(bool),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Tag {
    Ok,
    Exists,
    Conflict,
    Absent,
}

impl V {
    fn to_value(&self, depth: usize) -> Value {
        match self {
            V::Nil => Value::Nil,
            V::Int(n) => Value::Int(*n),
            V::Bulk(b) => Value::BulkString(b.clone()),
            V::Num(n) => Value::BulkString(n.to_string().into_bytes()),
            V::Tag(t) => Value::BulkString(
                match t {
                    Tag::Ok => "ok",
                    Tag::Exists => "exists",
                    Tag::Conflict => "conflict",
                    Tag::Absent => "absent",
                }
                .into(),
            ),
            V::Simple(s) => Value::SimpleString(s.clone()),
            V::Okay => Value::Okay,
            V::Array(a) if depth < 4 => {
                Value::Array(a.iter().map(|v| v.to_value(depth + 1)).collect())
            }
            V::Array(_) => Value::Nil,
            V::Double(d) => Value::Double(*d),
            V::Boolean(b) => Value::Boolean(*b),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    reply: V,
    payload: Vec<u8>,
    text: String,
    /// A stored hash to write and read back.
    value: Vec<u8>,
    rev: u64,
    crev: Option<u64>,
    exp: Option<u64>,
    /// A change event to publish and parse back.
    put: bool,
    server_key: Vec<u8>,
    prev: Option<(u64, u64, u64, Vec<u8>)>,
}

fn bulk(s: impl ToString) -> Value {
    Value::BulkString(s.to_string().into_bytes())
}

fn expiry(ms: u64) -> Option<std::time::SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

fuzz_target!(|input: Input| {
    let key = Key::new("k").unwrap();
    let reply = input.reply.to_value(0);

    // Arbitrary replies: results or errors, never panics.
    for keys_only in [false, true] {
        match redis_fuzz::entry_from_fields(&key, &reply, keys_only) {
            Ok(Some(e)) => assert_eq!(e.key, key),
            Ok(None) => {}
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidData),
        }
    }
    if let Err(e) = redis_fuzz::put_reply(&reply) {
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
    if let Err(e) = redis_fuzz::delete_reply(&reply) {
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
    let _ = redis_fuzz::parse_slots(&reply);
    let _ = redis_fuzz::parse_myself(&input.text);
    if let Ok(text) = std::str::from_utf8(&input.payload) {
        let _ = redis_fuzz::parse_myself(text);
    }
    let _ = redis_fuzz::parse_change(&input.payload);

    // A stored hash, as HMGET v r c e replies it, reads back.
    let field = |o: Option<u64>| o.map_or(Value::Nil, bulk);
    let meta = vec![bulk(input.rev), field(input.crev), field(input.exp)];
    let mut full = vec![Value::BulkString(input.value.clone())];
    full.extend(meta.iter().cloned());
    for (keys_only, hmget) in [(false, full), (true, meta)] {
        let e = redis_fuzz::entry_from_fields(&key, &Value::Array(hmget), keys_only)
            .unwrap()
            .unwrap();
        assert_eq!(e.revision, input.rev);
        assert_eq!(e.create_revision, input.crev.unwrap_or(input.rev));
        assert_eq!(e.expires_at, expiry(input.exp.unwrap_or(0)));
        let want: &[u8] = if keys_only { b"" } else { &input.value };
        assert_eq!(e.value.as_ref(), want);
    }
    // An absent key.
    let nils = Value::Array(vec![Value::Nil; 4]);
    assert!(redis_fuzz::entry_from_fields(&key, &nils, false).unwrap().is_none());

    // Script replies.
    let ok = Value::Array(vec![bulk("ok"), bulk(input.rev)]);
    assert_eq!(
        redis_fuzz::put_reply(&ok).unwrap(),
        redis_fuzz::WriteReply::Put(input.rev)
    );
    let conflict = Value::Array(vec![bulk("conflict"), field(input.crev)]);
    assert_eq!(
        redis_fuzz::delete_reply(&conflict).unwrap(),
        redis_fuzz::WriteReply::Conflict(input.crev)
    );

    // A change event as the scripts publish it:
    // "P|D rev crev exp klen prev_rev prev_crev prev_exp plen\n" key prev value.
    let (rev, crev, exp, value) = if input.put {
        (input.rev, input.crev.unwrap_or(0), input.exp.unwrap_or(0), &input.value[..])
    } else {
        (0, 0, 0, &b""[..])
    };
    let (prev_rev, prev_crev, prev_exp, prev_value) = match &input.prev {
        Some((r, c, e, v)) => (*r, *c, *e, &v[..]),
        None => (0, 0, 0, &b""[..]),
    };
    let mut payload = format!(
        "{} {rev} {crev} {exp} {} {prev_rev} {prev_crev} {prev_exp} {}\n",
        if input.put { "P" } else { "D" },
        input.server_key.len(),
        prev_value.len()
    )
    .into_bytes();
    payload.extend_from_slice(&input.server_key);
    payload.extend_from_slice(prev_value);
    payload.extend_from_slice(value);
    let c = redis_fuzz::parse_change(&payload).unwrap();
    assert_eq!(c.put, input.put);
    assert_eq!(c.server_key, input.server_key);
    assert_eq!((c.rev, c.crev, c.exp), (rev, crev, exp));
    assert_eq!(c.value.as_ref(), value);
    match (&c.prev, prev_rev) {
        (None, 0) => assert!(c.prev_entry.is_none()),
        (Some((r, cr, e, v)), _) => {
            assert_eq!((*r, *cr, *e, v.as_ref()), (prev_rev, prev_crev, prev_exp, prev_value));
            let pe = c.prev_entry.as_ref().unwrap();
            assert_eq!((pe.revision, pe.expires_at), (prev_rev, expiry(prev_exp)));
        }
        (got, _) => panic!("prev {got:?} for prev_rev {prev_rev}"),
    }
    let e = c.entry.as_ref().unwrap();
    assert_eq!((e.revision, e.create_revision, e.expires_at), (rev, crev, expiry(exp)));
});
