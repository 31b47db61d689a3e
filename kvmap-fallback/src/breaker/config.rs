//! [`BreakerConfig`]: thresholds, cool-down, back-off and probes.

use std::time::Duration;

/// Open the breaker when the share of failed calls over a sliding window
/// reaches a threshold (in addition to the consecutive-failure rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// The length of the sliding window.
    pub window: Duration,
    /// The fewest calls in the window before the rate is judged.
    pub min_calls: u32,
    /// The failed share (0.0–1.0) that opens the breaker.
    pub threshold: f64,
}

/// Settings of one circuit breaker.
///
/// ```
/// use std::time::Duration;
/// use kvmap_fallback::BreakerConfig;
/// let config = BreakerConfig::default()
///     .with_failure_threshold(3)
///     .with_cool_down(Duration::from_secs(2));
/// assert_eq!(config.failure_threshold, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive counted failures that open a closed breaker (default 5).
    pub failure_threshold: u32,
    /// An optional failure-rate rule (default none).
    pub failure_rate: Option<FailureRate>,
    /// The cool-down after the first trip before a probe is admitted
    /// (default 10 s).
    pub cool_down: Duration,
    /// Each further trip without a close in between multiplies the
    /// cool-down by this (default 2.0).
    pub backoff_factor: f64,
    /// The longest cool-down (default 60 s).
    pub max_cool_down: Duration,
    /// Each cool-down is shortened by a random share of up to this
    /// fraction (default 0.2), so many clients do not probe in lockstep.
    pub jitter: f64,
    /// A fixed seed for the jitter (tests); `None`: random.
    pub jitter_seed: Option<u64>,
    /// Probe calls admitted at once while half-open (default 1).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_rate: None,
            cool_down: Duration::from_secs(10),
            backoff_factor: 2.0,
            max_cool_down: Duration::from_secs(60),
            jitter: 0.2,
            jitter_seed: None,
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Sets the consecutive-failure threshold.
    pub fn with_failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// Sets the failure-rate rule.
    pub fn with_failure_rate(mut self, rate: Option<FailureRate>) -> Self {
        self.failure_rate = rate;
        self
    }

    /// Sets the first cool-down.
    pub fn with_cool_down(mut self, d: Duration) -> Self {
        self.cool_down = d;
        self
    }

    /// Sets the back-off factor of repeated trips.
    pub fn with_backoff_factor(mut self, f: f64) -> Self {
        self.backoff_factor = f;
        self
    }

    /// Sets the longest cool-down.
    pub fn with_max_cool_down(mut self, d: Duration) -> Self {
        self.max_cool_down = d;
        self
    }

    /// Sets the jitter fraction (0 disables it).
    pub fn with_jitter(mut self, j: f64) -> Self {
        self.jitter = j;
        self
    }

    /// Fixes the jitter seed.
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Sets the number of concurrent half-open probes.
    pub fn with_half_open_probes(mut self, n: u32) -> Self {
        self.half_open_probes = n;
        self
    }
}
