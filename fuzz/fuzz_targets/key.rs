//! Key validation (`kvmap_core::Key::new`, `check_prefix`, `prefix_end`):
//! never panics; acceptance is exactly the documented key rules; an
//! accepted key round-trips (as_str, Display, serde, TryFrom) and orders
//! by its bytes; a rejection is `InvalidKey` naming a bounded prefix.
#![no_main]

use kvmap_core::{ErrorKind, Key};
use kvmap_core::backend::{check_prefix, prefix_end};
use libfuzzer_sys::fuzz_target;

/// The key rules of kvmap-core/src/key.rs, written independently.
fn follows_rules(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= Key::MAX_BYTES
        && !s.starts_with('/')
        && !s
            .chars()
            .any(|c| matches!(c as u32, 0x00..=0x1f | 0x7f..=0x9f))
}

fn check_one(s: &str) -> Option<Key> {
    let res = Key::new(s);
    assert_eq!(res.is_ok(), follows_rules(s), "{s:?}: {res:?}");
    assert_eq!(
        check_prefix(s).is_ok(),
        s.is_empty() || res.is_ok(),
        "prefix {s:?}"
    );
    match res {
        Ok(k) => {
            assert_eq!(k.as_str(), s);
            assert_eq!(k.len(), s.len());
            assert!(!k.is_empty());
            assert!(k.has_prefix(s));
            assert_eq!(k.to_string(), s);
            assert_eq!(Key::try_from(s.to_owned()).ok().as_ref(), Some(&k));
            let json = serde_json::to_string(&k).unwrap();
            let back: Key = serde_json::from_str(&json).unwrap();
            assert_eq!(back, k);
            Some(k)
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidKey);
            // serde must refuse what Key::new refuses.
            let json = serde_json::to_string(s).unwrap();
            assert!(serde_json::from_str::<Key>(&json).is_err());
            // The key in the message is cut to 128 bytes (+ "...").
            if let Some(shown) = e.key() {
                assert!(shown.len() <= 131, "{} bytes shown", shown.len());
                let shown = shown.strip_suffix("...").filter(|_| s.len() > 128).unwrap_or(shown);
                assert!(s.starts_with(shown), "{shown:?} not a prefix of {s:?}");
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Two keys: split at the first 0xff byte (never valid UTF-8).
    let (a, b) = match data.iter().position(|&x| x == 0xff) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let ka = std::str::from_utf8(a).ok().and_then(check_one);
    let kb = b
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(check_one);
    if let (Some(ka), Some(kb)) = (&ka, &kb) {
        assert_eq!(ka.cmp(kb), ka.as_str().as_bytes().cmp(kb.as_str().as_bytes()));
        assert_eq!(ka == kb, ka.as_str() == kb.as_str());
    }

    // prefix_end: the smallest byte string after every extension of the prefix.
    match prefix_end(a) {
        Some(end) => {
            assert!(end.as_slice() > a);
            let mut ext = a.to_vec();
            ext.extend_from_slice(&[0xff; 4]);
            assert!(ext < end, "{a:?} -> {end:?}");
            assert!(!end.starts_with(a), "{a:?} -> {end:?}");
        }
        None => assert!(a.iter().all(|&x| x == 0xff)),
    }
});
