//! URL redaction (`kvmap_core::redact_url`): never panics; for an input
//! that parses as a `url::Url`, the output never holds its password (of 4
//! bytes or more, as serialized or percent-decoded) nor the value (4 bytes
//! or more) of a secret query parameter (`kvmap_core::is_secret_param`),
//! and does not depend on the password at all.
//!
//! A secret that also appears in a public part of the URL (the host, a
//! path segment, another parameter) is legitimately printed; so a hit
//! counts as a leak only if the redaction of the same URL with every
//! secret replaced by a filler does not show the same string.
#![no_main]

use kvmap_core::{is_secret_param, redact_url};
use libfuzzer_sys::fuzz_target;
use url::Url;

const FILLER: &str = "Zq";

/// The URL with its password and secret parameter values replaced by
/// filler text that cannot form any of the secrets' strings.
fn with_fillers(url: &Url) -> Url {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some(FILLER));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    FILLER.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn form_encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let out = redact_url(raw);
    let Ok(url) = Url::parse(raw) else {
        // An unparsable URL is echoed only when it has no '@' nor '?'.
        if out == raw {
            assert!(!raw.contains('@') && !raw.contains('?'), "{raw:?} echoed");
        }
        return;
    };
    let mut secrets: Vec<String> = Vec::new();
    if let Some(pw) = url.password() {
        secrets.push(pw.to_owned());
        secrets.push(percent_decode(pw));
    }
    for (k, v) in url.query_pairs() {
        if is_secret_param(&k) {
            secrets.push(form_encode(&v));
            secrets.push(v.into_owned());
        }
    }
    secrets.retain(|s| s.len() >= 4 && !s.contains(FILLER) && s != "***");
    if secrets.is_empty() {
        return;
    }
    let public = redact_url(with_fillers(&url).as_str());
    for s in &secrets {
        if out.contains(s.as_str()) {
            assert!(
                public.contains(s.as_str()),
                "secret {s:?} of {raw:?} leaked: {out:?} (fillers: {public:?})"
            );
        }
    }
    // The password never influences the output.
    if url.password().is_some() {
        let mut other = url.clone();
        let _ = other.set_password(Some("Other"));
        let mut same = url.clone();
        let _ = same.set_password(url.password());
        assert_eq!(
            redact_url(same.as_str()),
            redact_url(other.as_str()),
            "output depends on the password of {raw:?}"
        );
    }
});
