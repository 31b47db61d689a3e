//! Every mapping of a Consul HTTP answer or transport failure to a kvmap
//! [`Error`], in one place (tested as a table below).
//!
//! | condition | kvmap kind | retry class |
//! | --- | --- | --- |
//! | connection refused / DNS failure (nothing sent) | `Unavailable` | safe |
//! | connection reset or body cut after sending | `Unavailable` | outcome unknown for writes |
//! | no answer within the request timeout | `Timeout` | outcome unknown for writes |
//! | 403 "ACL not found" / "token not found" | `Unauthenticated` | never |
//! | 403 "Permission denied" | `PermissionDenied` | never |
//! | 500 "No cluster leader", 429, 503 | `Unavailable` | safe (refused before applying) |
//! | 500 "rpc error … leadership lost" and other raft errors | `Unavailable` | outcome unknown for writes |
//! | 413 request too large | `ValueTooLarge` / `InvalidArgument` | never |
//! | 400 bad request | `InvalidArgument` | never |
//! | TLS certificate not trusted | `Unauthenticated` (detail names TLS) | never |
//! | plaintext agent behind `https://`, or a non-Consul server | `Unavailable` with a hint | safe |
//! | anything else | `Internal` | never |

use kvmap_core::{Error, ErrorKind, Op, RetryClass};

/// The backend name in every error.
pub(crate) const BACKEND: &str = "consul";

/// An error of this backend.
pub(crate) fn own(kind: ErrorKind, op: Op, key: Option<&str>, detail: impl Into<String>) -> Error {
    let mut err = Error::new(kind)
        .with_backend(BACKEND)
        .with_op(op)
        .with_detail(detail);
    if let Some(k) = key {
        err = err.with_key(k);
    }
    err
}

/// Maps a transport failure of `op`.
pub(crate) fn transport(e: reqwest::Error, op: Op, key: Option<&str>, addr: &str) -> Error {
    let text = error_chain(&e).to_ascii_lowercase();
    let write = op.is_write();
    let (kind, retry, detail) = if text.contains("certificate")
        || text.contains("unknownissuer")
        || text.contains("invalid peer certificate")
    {
        (
            ErrorKind::Unauthenticated,
            RetryClass::Never,
            format!("tls: the certificate of {addr} is not trusted (set the ca certificate)"),
        )
    } else if text.contains("invalidcontenttype")
        || text.contains("corrupt message")
        || text.contains("received corrupt")
        || text.contains("peer is incompatible")
        || (text.contains("tls") && text.contains("handshake"))
    {
        (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            format!(
                "tls handshake with {addr} failed: is the agent serving plain http on this port?"
            ),
        )
    } else if op == Op::Open && !e.is_connect() && !e.is_timeout() {
        (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            format!("{addr} did not answer like a consul agent (is it one? is it http, not another protocol?): {}", short(&text)),
        )
    } else if e.is_connect() {
        (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            format!("cannot connect to consul agent {addr}"),
        )
    } else if e.is_timeout() {
        (
            ErrorKind::Timeout,
            if write {
                RetryClass::OutcomeUnknown
            } else {
                RetryClass::Safe
            },
            format!("consul agent {addr} did not answer in time"),
        )
    } else {
        (
            ErrorKind::Unavailable,
            if write {
                RetryClass::OutcomeUnknown
            } else {
                RetryClass::Safe
            },
            format!("request to consul agent {addr} failed: {}", short(&text)),
        )
    };
    own(kind, op, key, detail).with_retry(retry)
}

fn short(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Maps a non-success HTTP answer of `op`.
pub(crate) fn status(code: u16, body: &[u8], op: Op, key: Option<&str>) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    let lower = text.to_ascii_lowercase();
    let (kind, mut retry) = classify_status(code, &lower);
    // Leadership lost while committing: the write may or may not have been
    // committed by the new leader. Only "no cluster leader" is a refusal.
    if op.is_write()
        && code == 500
        && kind == ErrorKind::Unavailable
        && !lower.contains("no cluster leader")
    {
        retry = RetryClass::OutcomeUnknown;
    }
    let detail = match kind {
        ErrorKind::Unauthenticated => "the acl token is missing, unknown or expired".to_owned(),
        ErrorKind::PermissionDenied => {
            "the acl token lacks a permission (consul: permission denied)".to_owned()
        }
        _ => format!("consul answered {code}: {}", text.trim()),
    };
    own(kind, op, key, detail).with_retry(retry)
}

fn classify_status(code: u16, lower: &str) -> (ErrorKind, RetryClass) {
    match code {
        403 if lower.contains("acl not found")
            || lower.contains("token not found")
            || lower.contains("not found") =>
        {
            (ErrorKind::Unauthenticated, RetryClass::Never)
        }
        401 => (ErrorKind::Unauthenticated, RetryClass::Never),
        403 => (ErrorKind::PermissionDenied, RetryClass::Never),
        429 | 503 => (ErrorKind::Unavailable, RetryClass::Safe),
        500 if lower.contains("no cluster leader")
            || lower.contains("leadership lost")
            || lower.contains("no path to datacenter")
            || lower.contains("rpc error")
            || lower.contains("raft") =>
        {
            (ErrorKind::Unavailable, RetryClass::Safe)
        }
        413 => (ErrorKind::InvalidArgument, RetryClass::Never),
        400 => (ErrorKind::InvalidArgument, RetryClass::Never),
        _ => (ErrorKind::Internal, RetryClass::Never),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases: &[(u16, &str, ErrorKind, RetryClass)] = &[
            (
                403,
                "ACL not found",
                ErrorKind::Unauthenticated,
                RetryClass::Never,
            ),
            (
                403,
                "rpc error making call: token not found",
                ErrorKind::Unauthenticated,
                RetryClass::Never,
            ),
            (
                403,
                "Permission denied",
                ErrorKind::PermissionDenied,
                RetryClass::Never,
            ),
            (
                500,
                "No cluster leader",
                ErrorKind::Unavailable,
                RetryClass::Safe,
            ),
            (
                500,
                "rpc error making call: leadership lost while committing log",
                ErrorKind::Unavailable,
                RetryClass::OutcomeUnknown,
            ),
            (
                429,
                "too many requests",
                ErrorKind::Unavailable,
                RetryClass::Safe,
            ),
            (
                413,
                "request body too large",
                ErrorKind::InvalidArgument,
                RetryClass::Never,
            ),
            (
                400,
                "bad request",
                ErrorKind::InvalidArgument,
                RetryClass::Never,
            ),
            (500, "something odd", ErrorKind::Internal, RetryClass::Never),
        ];
        for (code, body, kind, retry) in cases {
            let e = status(*code, body.as_bytes(), Op::Put, Some("k"));
            assert_eq!(e.kind(), *kind, "{code} {body}");
            assert_eq!(e.retry_class(), *retry, "{code} {body}");
            assert_eq!(e.backend(), "consul");
        }
    }
}
