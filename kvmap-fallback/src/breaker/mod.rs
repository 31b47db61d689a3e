//! Circuit breakers: the pure state machine ([`CircuitBreaker`]), its
//! settings ([`BreakerConfig`]) and the [`Breaker`] layer that puts one
//! in front of a store.

mod clock;
mod config;
mod layer;
mod machine;

pub use clock::{Clock, ManualClock, TokioClock};
pub use config::{BreakerConfig, FailureRate};
pub use layer::{Breaker, BreakerSnapshot};
pub use machine::{Admission, BreakerState, CircuitBreaker, Outcome, Permit, Transition};
