//! The pure breaker state machine: it takes "now" and outcomes and returns
//! decisions; it does no I/O and reads no clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::config::BreakerConfig;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass; failures are counted.
    Closed,
    /// A bounded number of probe calls pass; the first probe success
    /// closes the breaker, a probe failure opens it again.
    HalfOpen,
    /// Calls fail at once with `CircuitOpen` until the cool-down ends.
    Open,
}

impl BreakerState {
    /// The value of the `kvmap_cb_state` gauge: 0 closed, 1 half-open,
    /// 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// The lowercase name used in metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a finished call tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered (a value, or an error that is not the
    /// backend's fault such as a conflict or bad input).
    Success,
    /// An infrastructure failure
    /// ([`Error::is_infrastructure`](kvmap_core::Error::is_infrastructure)).
    Failure,
    /// No information about the backend: the caller's own deadline or
    /// cancellation, or the call was dropped.
    Ignored,
}

/// Permission to make one call, handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Whether the call is a half-open probe.
    pub probe: bool,
    generation: u64,
}

/// The answer to "may I call?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call, then report the outcome with this permit.
    Allowed(Permit),
    /// Do not call. `retry_in` is the time until the breaker admits a
    /// probe (zero when half-open probes are all in flight).
    Rejected {
        /// Time until a probe may be admitted.
        retry_in: Duration,
    },
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// The breaker state machine. Not thread safe by itself: the
/// [`Breaker`](crate::Breaker) layer keeps it behind a mutex.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Bumped on every transition, so outcomes of calls admitted in an
    /// earlier state are not counted in the new one.
    generation: u64,
    consecutive_failures: u32,
    /// Outcomes in the closed state within the rate window: (time, failed).
    window: VecDeque<(Instant, bool)>,
    window_failures: usize,
    open_until: Instant,
    /// How many times the breaker opened since it was last closed.
    trips: u32,
    probes_in_flight: u32,
    rng: u64,
}

/// Most outcomes kept for the failure-rate window, whatever its length,
/// so memory stays bounded under any load.
const MAX_WINDOW_SAMPLES: usize = 4096;

impl CircuitBreaker {
    /// A closed breaker. `now` is only used as a starting point.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        let seed = config.jitter_seed.unwrap_or_else(rand::random);
        Self {
            config,
            state: BreakerState::Closed,
            generation: 0,
            consecutive_failures: 0,
            window: VecDeque::new(),
            window_failures: 0,
            open_until: now,
            trips: 0,
            probes_in_flight: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state as of `now`: an open breaker whose cool-down has ended
    /// reports `HalfOpen` (the transition itself happens on the next
    /// [`CircuitBreaker::admit`]).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// How many times the breaker opened since it last closed.
    pub fn trips(&self) -> u32 {
        self.trips
    }

    /// Consecutive counted failures in the closed state.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When an open breaker admits its next probe.
    pub fn open_until(&self) -> Option<Instant> {
        (self.state == BreakerState::Open).then_some(self.open_until)
    }

    /// May a call be made now? A transition from open to half-open is
    /// returned with the admission.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return (
                    Admission::Rejected {
                        retry_in: self.open_until - now,
                    },
                    None,
                );
            }
            transition = Some(self.enter(BreakerState::HalfOpen));
        }
        match self.state {
            BreakerState::Closed => (Admission::Allowed(self.permit(false)), transition),
            BreakerState::HalfOpen => {
                if self.probes_in_flight < self.config.half_open_probes.max(1) {
                    self.probes_in_flight += 1;
                    (Admission::Allowed(self.permit(true)), transition)
                } else {
                    (
                        Admission::Rejected {
                            retry_in: Duration::ZERO,
                        },
                        transition,
                    )
                }
            }
            BreakerState::Open => (
                Admission::Rejected {
                    retry_in: self.open_until.saturating_duration_since(now),
                },
                transition,
            ),
        }
    }

    /// Records the outcome of an admitted call; returns the transition it
    /// caused, if any.
    pub fn record(&mut self, now: Instant, permit: Permit, outcome: Outcome) -> Option<Transition> {
        if permit.generation != self.generation {
            // Admitted in an earlier state: says nothing about this one.
            return None;
        }
        match self.state {
            BreakerState::Closed => self.record_closed(now, outcome),
            BreakerState::HalfOpen if permit.probe => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Success => {
                        self.trips = 0;
                        Some(self.enter(BreakerState::Closed))
                    }
                    Outcome::Failure => Some(self.trip(now)),
                    Outcome::Ignored => None,
                }
            }
            BreakerState::HalfOpen | BreakerState::Open => None,
        }
    }

    fn record_closed(&mut self, now: Instant, outcome: Outcome) -> Option<Transition> {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return None,
        };
        if failed {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
        if self.consecutive_failures >= self.config.failure_threshold.max(1) {
            return Some(self.trip(now));
        }
        let rate = self.config.failure_rate?;
        self.window.push_back((now, failed));
        if failed {
            self.window_failures += 1;
        }
        while let Some(&(at, f)) = self.window.front() {
            let too_old = now.saturating_duration_since(at) > rate.window;
            if !too_old && self.window.len() <= MAX_WINDOW_SAMPLES {
                break;
            }
            self.window.pop_front();
            if f {
                self.window_failures -= 1;
            }
        }
        let calls = self.window.len();
        if calls >= rate.min_calls.max(1) as usize
            && self.window_failures as f64 >= rate.threshold * calls as f64
        {
            return Some(self.trip(now));
        }
        None
    }

    fn trip(&mut self, now: Instant) -> Transition {
        self.trips = self.trips.saturating_add(1);
        let cool_down = self.cool_down(self.trips);
        // A cool-down too long for the clock (a configured `Duration::MAX`)
        // keeps the breaker open for a century instead of overflowing.
        self.open_until = now
            .checked_add(cool_down)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        self.enter(BreakerState::Open)
    }

    /// The cool-down after the `trips`-th consecutive trip: the base
    /// cool-down times `backoff_factor^(trips-1)`, capped at
    /// `max_cool_down`, then shortened by up to `jitter` (a fraction), so
    /// breakers of many clients do not probe in lockstep. Never above the
    /// cap, never below `(1 - jitter)` of the un-jittered value.
    fn cool_down(&mut self, trips: u32) -> Duration {
        let u = self.next_unit();
        let c = &self.config;
        let exp = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = c.cool_down.as_secs_f64() * c.backoff_factor.max(1.0).powi(exp);
        let capped = grown.min(c.max_cool_down.max(c.cool_down).as_secs_f64());
        let jitter = c.jitter.clamp(0.0, 1.0);
        // `try_from`: a cap near `Duration::MAX` does not fit back exactly.
        Duration::try_from_secs_f64((capped * (1.0 - jitter * u)).max(0.0))
            .unwrap_or(c.max_cool_down.max(c.cool_down))
    }

    /// A uniform number in [0, 1) from a xorshift64 generator.
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn enter(&mut self, to: BreakerState) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation = self.generation.wrapping_add(1);
        self.consecutive_failures = 0;
        self.window.clear();
        self.window_failures = 0;
        self.probes_in_flight = 0;
        Transition { from, to }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            probe,
            generation: self.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::config::FailureRate;

    fn config() -> BreakerConfig {
        BreakerConfig::default().with_jitter(0.0)
    }

    fn allowed(b: &mut CircuitBreaker, now: Instant) -> Permit {
        match b.admit(now).0 {
            Admission::Allowed(p) => p,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    fn fail(b: &mut CircuitBreaker, now: Instant) -> Option<Transition> {
        let p = allowed(b, now);
        b.record(now, p, Outcome::Failure)
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        for _ in 0..4 {
            assert_eq!(fail(&mut b, t0), None);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        let t = fail(&mut b, t0).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        match b.admit(t0).0 {
            Admission::Rejected { retry_in } => assert_eq!(retry_in, Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_cool_down_neither_panics_nor_closes() {
        let t0 = Instant::now();
        let cfg = config()
            .with_cool_down(Duration::MAX)
            .with_max_cool_down(Duration::MAX)
            .with_backoff_factor(f64::MAX);
        let mut b = CircuitBreaker::new(cfg, t0);
        for _ in 0..5 {
            fail(&mut b, t0);
        }
        let later = t0 + Duration::from_secs(365 * 24 * 3600);
        assert_eq!(b.state(later), BreakerState::Open);
        assert!(matches!(b.admit(later).0, Admission::Rejected { .. }));
    }

    #[test]
    fn a_success_resets_the_count_and_ignored_counts_nothing() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        for _ in 0..4 {
            fail(&mut b, t0);
        }
        let p = allowed(&mut b, t0);
        b.record(t0, p, Outcome::Success);
        for _ in 0..4 {
            fail(&mut b, t0);
            let p = allowed(&mut b, t0);
            b.record(t0, p, Outcome::Ignored);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 4);
    }

    #[test]
    fn half_open_after_cool_down_bounded_probes_success_closes() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config().with_half_open_probes(2), t0);
        for _ in 0..5 {
            fail(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let (a, tr) = b.admit(t1);
        assert_eq!(tr.map(|t| t.to), Some(BreakerState::HalfOpen));
        let Admission::Allowed(p1) = a else {
            panic!("{a:?}")
        };
        assert!(p1.probe);
        let p2 = allowed(&mut b, t1);
        assert!(
            matches!(b.admit(t1).0, Admission::Rejected { .. }),
            "third probe admitted"
        );
        // An ignored probe frees its slot without deciding anything.
        assert_eq!(b.record(t1, p2, Outcome::Ignored), None);
        let _p3 = allowed(&mut b, t1);
        let tr = b.record(t1, p1, Outcome::Success).unwrap();
        assert_eq!(tr.to, BreakerState::Closed);
        assert_eq!(b.trips(), 0);
    }

    #[test]
    fn probe_failure_reopens_with_growing_capped_cool_down() {
        let t0 = Instant::now();
        let cfg = config()
            .with_cool_down(Duration::from_secs(1))
            .with_max_cool_down(Duration::from_secs(5));
        let mut b = CircuitBreaker::new(cfg, t0);
        for _ in 0..5 {
            fail(&mut b, t0);
        }
        let mut now = t0;
        let mut seen = Vec::new();
        for _ in 0..5 {
            let until = b.open_until().unwrap();
            seen.push(until - now);
            now = until;
            let tr = fail(&mut b, now).unwrap();
            assert_eq!(
                (tr.from, tr.to),
                (BreakerState::HalfOpen, BreakerState::Open)
            );
        }
        let secs: Vec<u64> = seen.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let t0 = Instant::now();
        for seed in 0..50 {
            let cfg = BreakerConfig::default()
                .with_jitter(0.2)
                .with_jitter_seed(seed);
            let mut b = CircuitBreaker::new(cfg, t0);
            for _ in 0..5 {
                fail(&mut b, t0);
            }
            let d = b.open_until().unwrap() - t0;
            assert!(d <= Duration::from_secs(10), "{d:?}");
            assert!(d >= Duration::from_secs(8), "{d:?}");
        }
    }

    #[test]
    fn outcomes_of_an_earlier_state_do_not_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config(), t0);
        let slow = allowed(&mut b, t0);
        for _ in 0..5 {
            fail(&mut b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        let probe = allowed(&mut b, t1);
        // The slow call admitted while closed ends now: it neither closes
        // nor reopens the half-open breaker.
        assert_eq!(b.record(t1, slow, Outcome::Success), None);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(
            b.record(t1, probe, Outcome::Failure).map(|t| t.to),
            Some(BreakerState::Open)
        );
    }

    #[test]
    fn failure_rate_window_opens_without_consecutive_failures() {
        let t0 = Instant::now();
        let cfg = config().with_failure_rate(Some(FailureRate {
            window: Duration::from_secs(10),
            min_calls: 10,
            threshold: 0.5,
        }));
        let mut b = CircuitBreaker::new(cfg, t0);
        let mut opened = None;
        for i in 0..10u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 100);
            let p = allowed(&mut b, now);
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            if let Some(t) = b.record(now, p, outcome) {
                opened = Some((i, t.to));
            }
        }
        assert_eq!(opened, Some((9, BreakerState::Open)));
    }

    #[test]
    fn failure_rate_window_forgets_old_outcomes() {
        let t0 = Instant::now();
        let cfg = config().with_failure_rate(Some(FailureRate {
            window: Duration::from_secs(1),
            min_calls: 4,
            threshold: 0.5,
        }));
        let mut b = CircuitBreaker::new(cfg, t0);
        let run = |b: &mut CircuitBreaker, now: Instant, pattern: &str| {
            pattern
                .chars()
                .map(|c| {
                    let p = allowed(b, now);
                    let o = if c == 'f' {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    b.record(now, p, o).map(|t| t.to)
                })
                .collect::<Vec<_>>()
        };
        // 2 failures in 8 calls: below the rate.
        assert!(run(&mut b, t0, "fsssfsss").iter().all(Option::is_none));
        // Later, 3 of 4: above the rate only if the 8 old calls are forgotten
        // (with them it would be 5 of 12).
        let later = t0 + Duration::from_secs(5);
        let got = run(&mut b, later, "ffsf");
        assert_eq!(got, vec![None, None, None, Some(BreakerState::Open)]);
    }
}
