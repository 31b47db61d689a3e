//! The metric names and their labels, emitted through the `metrics`
//! facade (the application installs the exporter, e.g. Prometheus).

use std::sync::Arc;
use std::time::Duration;

use kvmap_core::{ErrorKind, Op};

use crate::breaker::BreakerState;

/// Gauge per `backend`: 0 closed, 1 half-open, 2 open.
pub const CB_STATE: &str = "kvmap_cb_state";
/// Counter per `backend`, `to`: breaker transitions.
pub const CB_TRANSITIONS: &str = "kvmap_cb_transitions_total";
/// Counter per `backend`, `kind`: counted (infrastructure) failures.
pub const CB_FAILURES: &str = "kvmap_cb_failures_total";
/// Counter per `backend`, `op`: calls rejected by an open breaker.
pub const CB_REJECTED: &str = "kvmap_cb_rejected_total";
/// Histogram per `backend`, `op`, `outcome`: call duration in seconds.
pub const REQUEST_DURATION: &str = "kvmap_request_duration_seconds";
/// Counter per `backend`, `op`: reads and writes served by a backend
/// other than the primary.
pub const FALLBACK_SERVED: &str = "kvmap_fallback_served_total";
/// Gauge: writes journaled in the outbox, not yet replayed.
pub const OUTBOX_DEPTH: &str = "kvmap_outbox_depth";
/// Counter: outbox writes replayed to the primary.
pub const OUTBOX_REPLAYED: &str = "kvmap_outbox_replayed_total";
/// Counter: outbox writes not replayed because the key changed on the
/// primary meanwhile.
pub const OUTBOX_CONFLICTS: &str = "kvmap_outbox_conflicts_total";
/// Counter per `backend`: copies of primary writes to a fallback that failed.
pub const MIRROR_FAILURES: &str = "kvmap_mirror_failures_total";

/// A short, stable label for an error kind.
pub(crate) fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::CircuitOpen => "circuit_open",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Locked => "locked",
        ErrorKind::Conflict { .. } | ErrorKind::AlreadyExists => "precondition",
        ErrorKind::InvalidKey | ErrorKind::InvalidArgument | ErrorKind::ValueTooLarge { .. } => {
            "bad_input"
        }
        _ => "other",
    }
}

/// A label value sharing the backend's name: no allocation per call.
fn shared(backend: &Arc<str>) -> metrics::SharedString {
    metrics::SharedString::from_shared(backend.clone())
}

pub(crate) fn record_call(backend: &Arc<str>, op: Op, outcome: &'static str, took: Duration) {
    metrics::histogram!(REQUEST_DURATION, "backend" => shared(backend), "op" => op.as_str(), "outcome" => outcome)
        .record(took.as_secs_f64());
}

pub(crate) fn record_state(backend: &Arc<str>, state: BreakerState) {
    metrics::gauge!(CB_STATE, "backend" => shared(backend)).set(state.as_gauge());
}

pub(crate) fn record_transition(backend: &Arc<str>, to: BreakerState) {
    metrics::counter!(CB_TRANSITIONS, "backend" => shared(backend), "to" => to.as_str())
        .increment(1);
    record_state(backend, to);
}

pub(crate) fn record_failure(backend: &Arc<str>, kind: ErrorKind) {
    metrics::counter!(CB_FAILURES, "backend" => shared(backend), "kind" => kind_label(kind))
        .increment(1);
}

pub(crate) fn record_rejected(backend: &Arc<str>, op: Op) {
    metrics::counter!(CB_REJECTED, "backend" => shared(backend), "op" => op.as_str()).increment(1);
}

pub(crate) fn record_fallback_served(backend: &Arc<str>, op: Op) {
    metrics::counter!(FALLBACK_SERVED, "backend" => shared(backend), "op" => op.as_str())
        .increment(1);
}
