//! One redaction routine for every URL kvmap prints: backends, the facade
//! and the CLI all use [`redact_url`], so a secret is hidden the same way
//! everywhere.

/// Whether a URL query parameter carries a secret (its value is redacted).
pub fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password", "passwd", "pass", "token", "secret", "auth", "key",
    ]
    .iter()
    .any(|s| n == *s || n.ends_with(&format!("_{s}")) || n.ends_with(&format!("-{s}")))
}

/// The URL with its password and secret query parameters replaced by
/// `***`, for messages and logs.
///
/// Parsed with the `url` crate, so a password holding `@ ? # / :` or
/// percent-escapes is hidden whole. A string that does not parse as a URL
/// is not echoed: only its scheme (if any) is kept.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return match raw.split_once("://") {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                format!("{scheme}://<unparsable url redacted>")
            }
            _ if raw.contains('@') || raw.contains('?') => "<unparsable url redacted>".to_owned(),
            _ => raw.to_owned(),
        };
    };
    if url.password().is_some() {
        // Setting a password can only fail on URLs that cannot have one
        // (`cannot-be-a-base`), which have none to hide.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    if url.fragment().is_some() {
        url.set_fragment(None);
    }
    url.to_string().replace("%2A%2A%2A", "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_special_characters_are_hidden_whole() {
        for pw in ["p@ss", "p%3Fss", "p%23ss", "p%2Fss", "p:ss", "s3cr%40t"] {
            let raw = format!("redis://user:{pw}@host:6379/0");
            let r = redact_url(&raw);
            assert!(!r.contains(pw), "{r}");
            assert!(r.contains("user:***@host:6379"), "{r}");
        }
    }

    #[test]
    fn raw_at_sign_in_password_is_hidden() {
        let r = redact_url("redis://u:p@ss@host:1");
        assert!(!r.contains("p@ss") && !r.contains("ss@"), "{r}");
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        let r = redact_url("consul://h:8500?token=abc123&dc=eu");
        assert!(!r.contains("abc123"), "{r}");
        assert!(r.contains("dc=eu"), "{r}");
        let r = redact_url("redis://h?password=zz%26top");
        assert!(!r.contains("zz"), "{r}");
    }

    #[test]
    fn unparsable_urls_are_not_echoed() {
        let r = redact_url("redis://u:sec ret@[bad");
        assert!(!r.contains("sec"), "{r}");
        assert_eq!(redact_url("memory:"), "memory:");
    }
}
