//! The RocksDB on-disk codec (value envelope, change-log record, expiry
//! index, meta counters; `kvmap_rocksdb::fuzzing`): the decoders never
//! panic on arbitrary bytes, and encode -> decode round-trips.
#![no_main]

use kvmap_core::{Key, WatchEvent};
use kvmap_rocksdb::fuzzing as codec;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Raw bytes for every decoder.
    raw: Vec<u8>,
    revision: u64,
    /// A structured value to encode and decode again.
    header: (u64, u64, u64),
    value: Vec<u8>,
    prev_header: Option<(u64, u64, u64)>,
    prev_value: Vec<u8>,
    kind: u8,
    at: u64,
    key: String,
}

fn header(h: (u64, u64, u64)) -> codec::EnvelopeHeader {
    codec::EnvelopeHeader {
        revision: h.0.max(1),
        create_revision: h.1,
        expires: h.2,
    }
}

fn check_entry(e: &kvmap_core::Entry, key: &Key, h: &codec::EnvelopeHeader, value: &[u8]) {
    assert_eq!(&e.key, key);
    assert_eq!(e.value.as_ref(), value);
    assert_eq!((e.revision, e.create_revision), (h.revision, h.create_revision));
    let want = (h.expires != 0).then(|| UNIX_EPOCH + Duration::from_nanos(h.expires));
    assert_eq!(e.expires_at, want);
}

fuzz_target!(|input: Input| {
    // Decoders on arbitrary bytes: errors, never panics.
    let raw = &input.raw;
    if let Ok(h) = codec::decode_envelope(raw) {
        assert_ne!(h.revision, 0);
        assert!(raw.len() >= codec::ENVELOPE_HEADER_BYTES);
        // Re-encoding what was decoded gives back the input.
        let value = &raw[codec::ENVELOPE_HEADER_BYTES..];
        assert_eq!(&codec::encode_envelope(&h, value), raw);
    }
    let k = Key::new("k").unwrap();
    let _ = codec::decode_entry(k.clone(), raw);
    let _ = codec::record_time(raw);
    let _ = codec::decode_record(input.revision, raw);
    if let Ok((at, key)) = codec::split_expiry_key(raw) {
        assert_eq!(&codec::expiry_key(at, key.as_str()), raw);
    }
    if let Ok(key) = codec::decode_key(raw) {
        assert_eq!(key.as_str().as_bytes(), raw.as_slice());
    }
    if let Ok(n) = codec::decode_u64(raw) {
        assert_eq!(n.to_be_bytes().as_slice(), raw.as_slice());
    }

    // Round trips of structured values.
    let h = header(input.header);
    let env = codec::encode_envelope(&h, &input.value);
    assert_eq!(codec::decode_envelope(&env).unwrap(), h);
    check_entry(&codec::decode_entry(k.clone(), &env).unwrap(), &k, &h, &input.value);

    let Ok(key) = Key::new(&input.key) else {
        return;
    };
    let ex = codec::expiry_key(input.at, key.as_str());
    assert_eq!(codec::split_expiry_key(&ex).unwrap(), (input.at, key.clone()));
    assert_eq!(codec::decode_key(key.as_str().as_bytes()).unwrap(), key);

    let kind = 1 + input.kind % 3;
    let prev = input.prev_header.map(header);
    let prev_env = prev.map(|p| codec::encode_envelope(&p, &input.prev_value));
    let current = (kind == 1).then_some(env.as_slice());
    let rec = codec::encode_record(kind, input.at, key.as_str(), current, prev_env.as_deref())
        .unwrap();
    assert_eq!(codec::record_time(&rec).unwrap(), input.at);
    let ev = codec::decode_record(input.revision, &rec).unwrap();
    let prev_of = |p: &Option<kvmap_core::Entry>| match (p, &prev) {
        (Some(e), Some(ph)) => check_entry(e, &key, ph, &input.prev_value),
        (None, None) => {}
        (got, want) => panic!("prev {got:?}, want {want:?}"),
    };
    match (&ev, kind) {
        (WatchEvent::Put { entry, prev }, 1) => {
            check_entry(entry, &key, &h, &input.value);
            prev_of(prev);
        }
        (WatchEvent::Delete { key: k2, revision, prev }, 2)
        | (WatchEvent::Expired { key: k2, revision, prev }, 3) => {
            assert_eq!(k2, &key);
            assert_eq!(*revision, input.revision);
            prev_of(prev);
        }
        _ => panic!("kind {kind} decoded as {ev:?}"),
    }
    // Every strict prefix of a record is refused.
    for cut in [0, 1, rec.len() / 2, rec.len() - 1] {
        assert!(codec::decode_record(input.revision, &rec[..cut]).is_err());
    }
    assert!(codec::encode_record(0, 0, "k", None, None).is_none());
});
