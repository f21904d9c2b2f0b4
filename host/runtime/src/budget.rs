//! A plugin's CPU budget: how many of its calls may be in progress at once
//! (`limits.max_concurrent_calls`) and how much CPU time its calls may use per second
//! (`limits.cpu_per_second`, a token bucket holding at most one second's worth).
//!
//! The time a call is charged is the time its future spends being polled: running guest
//! code and the host functions it calls, not time spent waiting (for the executor, or for
//! an outbound call to answer). Past either limit a new call is refused at once, and a call
//! in progress is interrupted at its next epoch tick once the bucket is empty. The bucket
//! itself is sans-IO (time is a parameter); the budget around it is shared by every task.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The budget's settings, from the manifest's `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuLimits {
    /// Calls in progress at once (`max_concurrent_calls`).
    pub max_concurrent_calls: u32,
    /// CPU time per second of wall-clock time (`cpu_per_second`).
    pub cpu_per_second: Duration,
}

/// Why a call was refused before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_concurrent_calls` calls are already in progress.
    Busy { max: u32 },
    /// The CPU time of the last second is spent.
    Spent { per_second: Duration },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Busy { max } => {
                write!(f, "not called: {max} calls already in progress (limits.max_concurrent_calls)")
            }
            Refusal::Spent { per_second } => {
                write!(f, "not called: its {per_second:?} of CPU time per second is spent (limits.cpu_per_second)")
            }
        }
    }
}

/// A token bucket of CPU time in nanoseconds: filled at `per_second` per second up to
/// `per_second`, drained by what calls use. It may go below zero (a call is charged
/// after it ran); nothing is admitted until it is above zero again.
#[derive(Debug)]
pub(crate) struct Bucket {
    per_second: u128,
    tokens: i128,
    at: Instant,
}

impl Bucket {
    pub fn new(per_second: Duration, now: Instant) -> Bucket {
        let per_second = per_second.as_nanos();
        Bucket { per_second, tokens: i128::try_from(per_second).unwrap_or(i128::MAX), at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        if elapsed == 0 {
            return;
        }
        self.at = now;
        let cap = i128::try_from(self.per_second).unwrap_or(i128::MAX);
        let added = i128::try_from(elapsed.saturating_mul(self.per_second) / 1_000_000_000).unwrap_or(i128::MAX);
        self.tokens = self.tokens.saturating_add(added).min(cap);
    }

    /// Takes `used` out at `now`.
    pub fn charge(&mut self, used: Duration, now: Instant) {
        self.refill(now);
        self.tokens = self.tokens.saturating_sub(i128::try_from(used.as_nanos()).unwrap_or(i128::MAX));
    }

    /// Whether anything is left at `now`.
    pub fn has_time(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0
    }
}

/// One plugin's budget, shared by every call of it.
#[derive(Debug)]
pub(crate) struct CpuBudget {
    limits: CpuLimits,
    in_progress: AtomicU32,
    bucket: Mutex<Bucket>,
    used_nanos: AtomicU64,
}

/// A call slot taken from the budget; gives it back when dropped.
#[derive(Debug)]
pub(crate) struct InProgress<'a>(&'a CpuBudget);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CpuBudget {
    pub fn new(limits: CpuLimits, now: Instant) -> CpuBudget {
        CpuBudget {
            limits,
            in_progress: AtomicU32::new(0),
            bucket: Mutex::new(Bucket::new(limits.cpu_per_second, now)),
            used_nanos: AtomicU64::new(0),
        }
    }

    /// Takes a call slot at `now`, or says why not.
    pub fn start(&self, now: Instant) -> Result<InProgress<'_>, Refusal> {
        let before = self.in_progress.fetch_add(1, Ordering::AcqRel);
        let slot = InProgress(self);
        if before >= self.limits.max_concurrent_calls {
            return Err(Refusal::Busy { max: self.limits.max_concurrent_calls });
        }
        if !self.has_time(now) {
            return Err(Refusal::Spent { per_second: self.limits.cpu_per_second });
        }
        Ok(slot)
    }

    /// Charges `used` of CPU time at `now`.
    pub fn charge(&self, used: Duration, now: Instant) {
        self.used_nanos.fetch_add(u64::try_from(used.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner).charge(used, now);
    }

    /// Whether any CPU time is left at `now`; a running call is interrupted when not.
    pub fn has_time(&self, now: Instant) -> bool {
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner).has_time(now)
    }

    /// All the CPU time charged so far.
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.used_nanos.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_bucket_holds_one_second_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100 * MS, t0);
        assert!(b.has_time(t0));
        b.charge(100 * MS, t0);
        assert!(!b.has_time(t0), "spent");
        // 10 ms of wall-clock time gives back 1 ms.
        assert!(b.has_time(t0 + 10 * MS));
        b.charge(5 * MS, t0 + 10 * MS);
        assert!(!b.has_time(t0 + 49 * MS), "4 ms in debt, 3.9 ms back");
        assert!(b.has_time(t0 + 51 * MS));
        // Idle for long: no more than one second's worth.
        let later = t0 + Duration::from_secs(60);
        b.charge(100 * MS, later);
        assert!(!b.has_time(later));
    }

    #[test]
    fn calls_past_the_concurrency_limit_are_refused_and_slots_come_back() {
        let t0 = Instant::now();
        let budget = CpuBudget::new(CpuLimits { max_concurrent_calls: 2, cpu_per_second: 10 * MS }, t0);
        let a = budget.start(t0).expect("first");
        let b = budget.start(t0).expect("second");
        assert_eq!(budget.start(t0).err(), Some(Refusal::Busy { max: 2 }));
        drop(a);
        let c = budget.start(t0).expect("a slot came back");
        drop((b, c));
        budget.charge(10 * MS, t0);
        assert_eq!(budget.start(t0).err(), Some(Refusal::Spent { per_second: 10 * MS }));
        assert_eq!(budget.used(), 10 * MS);
        assert!(budget.start(t0 + Duration::from_secs(1)).is_ok());
    }
}
