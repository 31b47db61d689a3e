//! Every mapping of a `redis` crate error to a kvmap [`Error`], in one
//! place (and tested as a table below).
//!
//! | Redis condition | kvmap kind | retry class |
//! | --- | --- | --- |
//! | `MOVED` / `ASK` / `TRYAGAIN` / `CLUSTERDOWN` / `MASTERDOWN` / `LOADING` / `READONLY` (left after the client's own retries) | `Unavailable` | safe (the server refused) |
//! | connection refused, cluster node not found | `Unavailable` | safe (nothing sent) |
//! | connection reset / closed / broken pipe | `Unavailable` | outcome unknown for writes |
//! | I/O timeout | `Timeout` | outcome unknown for writes |
//! | `NOAUTH` / `WRONGPASS` / authentication failed | `Unauthenticated` | never |
//! | TLS certificate not trusted | `Unauthenticated` (detail names TLS) | never |
//! | `NOPERM` | `PermissionDenied` | never |
//! | `OOM` | `Unavailable` | safe (the write was refused) |
//! | `NOSCRIPT` (left after loading the script again) | `Unavailable` | safe (the script did not run) |
//! | `NOREPLICAS` / `BUSY` (a script still running) | `Unavailable` | safe (the server refused) |
//! | `WRONGTYPE`, `KVMAP_BADDATA` (foreign key under the key prefix) | `InvalidData` | never |
//! | bad client configuration | `InvalidArgument` | never |
//! | anything else | `Internal` | never |

use kvmap_core::{Error, ErrorKind, Op, RetryClass};
use redis::{ErrorKind as RK, RedisError, ServerErrorKind as SK};

/// The backend name in every error.
pub(crate) const BACKEND: &str = "redis";

/// The error code our scripts raise for data kvmap cannot read.
pub(crate) const BAD_DATA: &str = "KVMAP_BADDATA";

/// Maps a `redis` error of operation `op` on `key`.
pub(crate) fn map(e: RedisError, op: Op, key: Option<&str>) -> Error {
    let (kind, retry, detail) = classify(&e, op.is_write());
    let mut err = Error::new(kind)
        .with_backend(BACKEND)
        .with_op(op)
        .with_retry(retry);
    if let Some(k) = key {
        err = err.with_key(k);
    }
    if let Some(d) = detail {
        err = err.with_detail(d);
    }
    err.with_source(e)
}

/// An error of our own (bad reply shape, foreign data), not from Redis.
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

fn is_tls_trust_failure(e: &RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("certificate") || text.contains("unknownissuer") || text.contains("tls handshake")
}

fn classify(e: &RedisError, write: bool) -> (ErrorKind, RetryClass, Option<String>) {
    let unknown = if write {
        RetryClass::OutcomeUnknown
    } else {
        RetryClass::Safe
    };
    let code = e.code().unwrap_or_default();
    match (e.kind(), code) {
        (RK::AuthenticationFailed, _) | (_, "WRONGPASS" | "NOAUTH") => (
            ErrorKind::Unauthenticated,
            RetryClass::Never,
            Some("authentication failed".into()),
        ),
        (RK::Server(SK::NoPerm), _) | (_, "NOPERM") => (
            ErrorKind::PermissionDenied,
            RetryClass::Never,
            // The write scripts' own refusals say which right is missing.
            Some(
                e.detail()
                    .and_then(|d| d.strip_prefix("kvmap: "))
                    .map_or_else(|| "the redis user lacks a permission".into(), str::to_owned),
            ),
        ),
        (_, "OOM") => (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            Some("server out of memory (maxmemory reached)".into()),
        ),
        (_, "WRONGTYPE") => (
            ErrorKind::InvalidData,
            RetryClass::Never,
            Some("a foreign key of another type holds this name".into()),
        ),
        (_, BAD_DATA) => (
            ErrorKind::InvalidData,
            RetryClass::Never,
            Some("a foreign hash without kvmap's fields holds this name".into()),
        ),
        (
            RK::Server(
                SK::Moved
                | SK::Ask
                | SK::TryAgain
                | SK::ClusterDown
                | SK::MasterDown
                | SK::BusyLoading
                | SK::ReadOnly,
            ),
            _,
        ) => (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            Some(format!("cluster not ready ({code})")),
        ),
        // Replies of a server that refused the command before running it:
        // too few replicas for `min-replicas-to-write`, a script still
        // running, a replica without its master, a server loading its
        // dataset.
        (_, "NOREPLICAS" | "BUSY" | "MASTERDOWN" | "LOADING") => (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            Some(format!("server refused the command ({code})")),
        ),
        // The script cache is not replicated: after a failover the new
        // master may lack the script (loaded again, see `run_write`).
        (RK::Server(SK::NoScript), _) => (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            Some("the write script is not loaded on the node serving the key".into()),
        ),
        (RK::ClusterConnectionNotFound, _) => (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            Some("no connection to the node serving the slot".into()),
        ),
        (RK::InvalidClientConfig, _) => (ErrorKind::InvalidArgument, RetryClass::Never, None),
        (RK::Io, _) => classify_io(e, unknown),
        _ => (ErrorKind::Internal, RetryClass::Never, None),
    }
}

fn classify_io(e: &RedisError, unknown: RetryClass) -> (ErrorKind, RetryClass, Option<String>) {
    if is_tls_trust_failure(e) {
        return (
            ErrorKind::Unauthenticated,
            RetryClass::Never,
            Some("tls: the server certificate is not trusted by the configured ca".into()),
        );
    }
    if e.is_timeout() {
        return (ErrorKind::Timeout, unknown, Some("i/o timeout".into()));
    }
    if e.is_connection_refusal() {
        return (
            ErrorKind::Unavailable,
            RetryClass::Safe,
            Some("connection refused".into()),
        );
    }
    (
        ErrorKind::Unavailable,
        unknown,
        Some("connection lost".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn server(reply: &str) -> RedisError {
        match redis::parse_redis_value(reply.as_bytes()).and_then(|v| v.extract_error()) {
            Err(e) => e,
            Ok(v) => panic!("not an error reply: {v:?}"),
        }
    }

    fn io(kind: io::ErrorKind) -> RedisError {
        RedisError::from(io::Error::new(kind, "x"))
    }

    #[test]
    fn mapping_table() {
        use ErrorKind as K;
        use RetryClass as R;
        let cases: Vec<(RedisError, Op, K, R)> = vec![
            (
                server("-MOVED 3999 127.0.0.1:6381\r\n"),
                Op::Get,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-ASK 3999 127.0.0.1:6381\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (server("-TRYAGAIN x\r\n"), Op::Put, K::Unavailable, R::Safe),
            (
                server("-NOSCRIPT No matching script\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-CLUSTERDOWN The cluster is down\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-MASTERDOWN link down\r\n"),
                Op::Get,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-LOADING loading\r\n"),
                Op::Get,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-NOREPLICAS Not enough good replicas to write.\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-BUSY Redis is busy running a script.\r\n"),
                Op::Delete,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-MASTERDOWN Link with MASTER is down\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-LOADING Redis is loading the dataset in memory\r\n"),
                Op::Apply,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-READONLY replica\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                io(io::ErrorKind::ConnectionRefused),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                io(io::ErrorKind::ConnectionReset),
                Op::Get,
                K::Unavailable,
                R::Safe,
            ),
            (
                io(io::ErrorKind::ConnectionReset),
                Op::Put,
                K::Unavailable,
                R::OutcomeUnknown,
            ),
            (
                io(io::ErrorKind::BrokenPipe),
                Op::Delete,
                K::Unavailable,
                R::OutcomeUnknown,
            ),
            (io(io::ErrorKind::TimedOut), Op::Get, K::Timeout, R::Safe),
            (
                io(io::ErrorKind::TimedOut),
                Op::Put,
                K::Timeout,
                R::OutcomeUnknown,
            ),
            (
                io(io::ErrorKind::TimedOut),
                Op::Apply,
                K::Timeout,
                R::OutcomeUnknown,
            ),
            (
                server("-NOAUTH Authentication required.\r\n"),
                Op::Get,
                K::Unauthenticated,
                R::Never,
            ),
            (
                server("-WRONGPASS invalid username-password pair\r\n"),
                Op::Open,
                K::Unauthenticated,
                R::Never,
            ),
            (
                RedisError::from((RK::AuthenticationFailed, "Password authentication failed")),
                Op::Open,
                K::Unauthenticated,
                R::Never,
            ),
            (
                server("-NOPERM this user has no permissions to access one of the keys\r\n"),
                Op::Put,
                K::PermissionDenied,
                R::Never,
            ),
            (
                server("-OOM command not allowed when used memory > 'maxmemory'.\r\n"),
                Op::Put,
                K::Unavailable,
                R::Safe,
            ),
            (
                server("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
                Op::Get,
                K::InvalidData,
                R::Never,
            ),
            (
                server("-KVMAP_BADDATA no revision field\r\n"),
                Op::Put,
                K::InvalidData,
                R::Never,
            ),
            (
                RedisError::from(io::Error::other("invalid peer certificate: UnknownIssuer")),
                Op::Open,
                K::Unauthenticated,
                R::Never,
            ),
            (
                RedisError::from((RK::InvalidClientConfig, "bad url")),
                Op::Open,
                K::InvalidArgument,
                R::Never,
            ),
            (
                server("-ERR something odd\r\n"),
                Op::Get,
                K::Internal,
                R::Never,
            ),
        ];
        for (e, op, kind, retry) in cases {
            let text = e.to_string();
            let got = map(e, op, Some("k"));
            assert_eq!(got.kind(), kind, "{text}");
            assert_eq!(got.retry_class(), retry, "{text}");
            assert_eq!(got.backend(), "redis");
            let msg = got.to_string();
            assert!(msg.starts_with(&format!("redis: {op} \"k\": ")), "{msg}");
        }
    }

    #[test]
    fn infrastructure_flag() {
        assert!(map(io(io::ErrorKind::ConnectionRefused), Op::Get, None).is_infrastructure());
        assert!(!map(server("-NOPERM x\r\n"), Op::Get, None).is_infrastructure());
    }
}
