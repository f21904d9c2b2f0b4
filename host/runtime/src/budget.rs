//! A plugin's CPU budget: how many of its calls may be in progress at once
//! (`limits.max_concurrent_calls`) and how much CPU time its calls may use per second
//! (`limits.cpu_per_second`, a token bucket holding at most one second's worth).
//!
//! The time a call is charged is the time its future spends being polled: running guest
//! code and the host functions it calls, not time spent waiting (for the executor, or for
//! an outbound call to answer). Past either limit a new call is refused at once, and a call
//! in progress is interrupted at its next epoch tick once the bucket is empty. The bucket
//! itself is sans-IO (time is a parameter); the budget around it is shared by every task.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
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
///
/// Lock-free, as every hook call of the plugin, on every worker, asks it twice: time is
/// added at most once per [`REFILL_QUANTUM`] of wall-clock time (whoever moves `at` on
/// adds what the time since brought), so most calls only load and subtract.
#[derive(Debug)]
pub(crate) struct Bucket {
    /// CPU nanoseconds added per nanosecond of wall-clock time.
    rate: f64,
    /// The most it holds: one second's worth.
    cap: i64,
    tokens: AtomicI64,
    /// When time was last added, in nanoseconds since `origin`.
    at: AtomicU64,
    origin: Instant,
}

/// How much wall-clock time passes before the bucket adds what it brought.
const REFILL_QUANTUM: u64 = 1_000_000;

impl Bucket {
    pub fn new(per_second: Duration, now: Instant) -> Bucket {
        let cap = i64::try_from(per_second.as_nanos()).unwrap_or(i64::MAX);
        Bucket { rate: cap as f64 / 1e9, cap, tokens: AtomicI64::new(cap), at: AtomicU64::new(0), origin: now }
    }

    fn refill(&self, now: Instant) {
        let t = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX);
        let last = self.at.load(Ordering::Acquire);
        if t.saturating_sub(last) < REFILL_QUANTUM
            || self.at.compare_exchange(last, t, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            // Too soon, or another call is adding this time.
            return;
        }
        // More than a second's worth only fills it (the cast saturates).
        let added = ((t - last) as f64 * self.rate) as i64;
        let cap = self.cap;
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| Some(tokens.saturating_add(added).min(cap)));
    }

    /// Takes `used` out at `now`.
    pub fn charge(&self, used: Duration, now: Instant) {
        self.refill(now);
        // A debt of i64::MAX nanoseconds is 292 years of calls: it cannot wrap.
        self.tokens.fetch_sub(i64::try_from(used.as_nanos()).unwrap_or(i64::MAX), Ordering::AcqRel);
    }

    /// Whether anything is left at `now`.
    pub fn has_time(&self, now: Instant) -> bool {
        self.refill(now);
        self.tokens.load(Ordering::Acquire) > 0
    }
}

/// One plugin's budget, shared by every call of it.
#[derive(Debug)]
pub(crate) struct CpuBudget {
    limits: CpuLimits,
    in_progress: AtomicU32,
    bucket: Bucket,
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
            bucket: Bucket::new(limits.cpu_per_second, now),
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
        self.bucket.charge(used, now);
    }

    /// Whether any CPU time is left at `now`; a running call is interrupted when not.
    pub fn has_time(&self, now: Instant) -> bool {
        self.bucket.has_time(now)
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
        let b = Bucket::new(100 * MS, t0);
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
    fn time_is_added_a_quantum_at_a_time_and_concurrent_charges_all_count() {
        let t0 = Instant::now();
        let us = Duration::from_micros(1);
        let b = Bucket::new(1000 * MS, t0);
        b.charge(1000 * MS, t0);
        assert!(!b.has_time(t0 + 500 * us), "half a quantum: nothing added yet");
        assert!(b.has_time(t0 + MS), "a quantum: 1 ms added");

        // Four workers charge 9,999 us between them at once: 1 us is left, then none.
        let b = Bucket::new(10 * MS, t0);
        std::thread::scope(|s| {
            for n in [2500, 2500, 2500, 2499] {
                let b = &b;
                s.spawn(move || (0..n).for_each(|_| b.charge(us, t0)));
            }
        });
        assert!(b.has_time(t0));
        b.charge(us, t0);
        assert!(!b.has_time(t0));
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
