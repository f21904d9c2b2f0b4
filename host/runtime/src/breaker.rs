//! A plugin's circuit breaker, sans-IO: every step takes the time as a parameter and
//! returns the transition it made, so the plugin logs it and the tests need no clock.
//!
//! Closed: calls go through; `crash_budget` consecutive crashes open it. Open: calls are
//! refused until the back-off has passed, then it is half-open. Half-open: one trial call
//! goes through (the others are refused); its success closes the breaker and resets the
//! back-off, its crash re-opens it with the back-off doubled (up to the cap). An outcome
//! that says nothing about the plugin's health (a deadline, the CPU budget, the host's own
//! exhaustion) neither closes nor opens it: a trial ending so frees the trial slot.

use std::time::{Duration, Instant};

/// The breaker's settings, from the manifest's `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BreakerLimits {
    /// Consecutive crashes that open it (`crash_budget`).
    pub crash_budget: u32,
    /// How long it stays open the first time (`breaker_backoff`).
    pub backoff: Duration,
    /// The most the back-off doubles to (`breaker_backoff_max`).
    pub backoff_max: Duration,
}

/// The state of a circuit breaker, as the plugin's stats report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the back-off has passed.
    Open,
    /// One trial call may go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

/// What the breaker says about one call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The breaker is closed: call.
    Call,
    /// The breaker just went half-open (or its last trial ended without a verdict): this
    /// call is the trial.
    Trial,
    /// Refused: open (for `retry_in` more), or half-open with a trial running.
    Refused { retry_in: Option<Duration> },
}

/// A change of state, for the log and the flow record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Opened after this many consecutive crashes, for this long.
    Opened { crashes: u32, backoff: Duration },
    /// The back-off passed: one trial call goes through.
    HalfOpened,
    /// The trial call succeeded.
    Closed,
    /// The trial call crashed: open again, for this (doubled) long.
    Reopened { backoff: Duration },
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transition::Opened { crashes, backoff } => write!(
                f,
                "circuit breaker opened after {crashes} consecutive failures (limits.crash_budget); \
                 half-open in {backoff:?}"
            ),
            Transition::HalfOpened => write!(f, "circuit breaker half-open: one trial call goes through"),
            Transition::Closed => write!(f, "circuit breaker closed: the trial call succeeded"),
            Transition::Reopened { backoff } => {
                write!(f, "circuit breaker re-opened: the trial call failed; half-open in {backoff:?}")
            }
        }
    }
}

/// One plugin's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    limits: BreakerLimits,
    state: State,
    consecutive: u32,
    backoff: Duration,
}

impl Breaker {
    pub fn new(limits: BreakerLimits) -> Breaker {
        Breaker { limits, state: State::Closed, consecutive: 0, backoff: limits.backoff }
    }

    /// The state as of `now` (open turns half-open once its back-off has passed).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Decides whether a call may be made at `now`.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        match self.state {
            State::Closed => (Admission::Call, None),
            State::Open { until } if now < until => (Admission::Refused { retry_in: Some(until - now) }, None),
            State::Open { .. } => {
                self.state = State::HalfOpen { trial_running: true };
                (Admission::Trial, Some(Transition::HalfOpened))
            }
            State::HalfOpen { trial_running: true } => (Admission::Refused { retry_in: None }, None),
            State::HalfOpen { trial_running: false } => {
                self.state = State::HalfOpen { trial_running: true };
                (Admission::Trial, None)
            }
        }
    }

    /// Closed with no crash counted: a call is admitted, and a success changes nothing.
    /// The plugin keeps this in an atomic, so its calls need no lock while it holds.
    pub fn is_clean(&self) -> bool {
        self.state == State::Closed && self.consecutive == 0
    }

    /// A call succeeded.
    pub fn success(&mut self) -> Option<Transition> {
        self.consecutive = 0;
        match self.state {
            State::HalfOpen { .. } => {
                self.state = State::Closed;
                self.backoff = self.limits.backoff;
                Some(Transition::Closed)
            }
            // A call admitted before the breaker opened says nothing about the back-off.
            State::Closed | State::Open { .. } => None,
        }
    }

    /// A call crashed at `now`.
    pub fn crash(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Closed => {
                self.consecutive = self.consecutive.saturating_add(1);
                if self.consecutive < self.limits.crash_budget {
                    return None;
                }
                self.state = State::Open { until: now + self.backoff };
                Some(Transition::Opened { crashes: self.consecutive, backoff: self.backoff })
            }
            State::HalfOpen { .. } => {
                self.backoff = self.backoff.saturating_mul(2).min(self.limits.backoff_max);
                self.state = State::Open { until: now + self.backoff };
                Some(Transition::Reopened { backoff: self.backoff })
            }
            State::Open { .. } => None,
        }
    }

    /// A trial call ended without saying anything about the plugin's health (or was
    /// never made): the next call may be the trial.
    pub fn release_trial(&mut self) {
        if let State::HalfOpen { trial_running: true } = self.state {
            self.state = State::HalfOpen { trial_running: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BreakerLimits =
        BreakerLimits { crash_budget: 3, backoff: Duration::from_secs(1), backoff_max: Duration::from_secs(3) };

    fn crashes(b: &mut Breaker, now: Instant, n: u32) -> Option<Transition> {
        (0..n).map(|_| b.crash(now)).last().flatten()
    }

    #[test]
    fn opens_after_the_budget_and_a_success_in_between_resets_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(LIMITS);
        assert_eq!(crashes(&mut b, t0, 2), None);
        assert_eq!(b.success(), None);
        assert_eq!(crashes(&mut b, t0, 2), None);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert_eq!(b.crash(t0), Some(Transition::Opened { crashes: 3, backoff: Duration::from_secs(1) }));
        assert_eq!(b.state(t0), BreakerState::Open);
        let ms = Duration::from_millis(400);
        assert_eq!(b.admit(t0 + ms), (Admission::Refused { retry_in: Some(Duration::from_millis(600)) }, None));
    }

    #[test]
    fn half_open_lets_one_trial_through_and_its_success_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(LIMITS);
        crashes(&mut b, t0, 3);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), (Admission::Trial, Some(Transition::HalfOpened)));
        assert_eq!(b.admit(t1), (Admission::Refused { retry_in: None }, None), "one trial at a time");
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.admit(t1), (Admission::Call, None));
    }

    #[test]
    fn a_failed_trial_doubles_the_backoff_up_to_the_cap_and_closing_resets_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(LIMITS);
        crashes(&mut b, t0, 3);
        let mut now = t0 + Duration::from_secs(1);
        for expected in [2, 3, 3] {
            assert_eq!(b.admit(now).0, Admission::Trial);
            let backoff = Duration::from_secs(expected);
            assert_eq!(b.crash(now), Some(Transition::Reopened { backoff }));
            assert_eq!(
                b.admit(now + backoff - Duration::from_millis(1)).0,
                Admission::Refused { retry_in: Some(Duration::from_millis(1)) }
            );
            now += backoff;
        }
        assert_eq!(b.admit(now).0, Admission::Trial);
        assert_eq!(b.success(), Some(Transition::Closed));
        assert_eq!(b.crash(now), None, "the crash count starts again");
        crashes(&mut b, now, 2);
        assert_eq!(b.admit(now + Duration::from_secs(1)).0, Admission::Trial, "back to the first back-off");
    }

    #[test]
    fn a_trial_without_a_verdict_frees_the_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(LIMITS);
        crashes(&mut b, t0, 3);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1).0, Admission::Trial);
        b.release_trial();
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), (Admission::Trial, None));
    }
}
