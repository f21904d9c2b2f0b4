//! The budget of memory all buffered bodies share (`buffer_memory_limit`): a body that
//! plugins want whole reserves its bytes here before it is read (all of them when its
//! length is known, chunk by chunk otherwise), and gives them back when the flow is done
//! with them. A body the budget cannot hold is refused (503) instead of growing memory.
//!
//! Sans-IO: counters only; nothing here waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes reserved by buffered bodies, up to a limit.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
    refused: AtomicU64,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<BufferBudget> {
        Arc::new(BufferBudget { limit, used: AtomicUsize::new(0), refused: AtomicU64::new(0) })
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Bodies refused so far.
    #[cfg(test)]
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown with [`Reservation::grow`].
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0 }
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let Some(next) = used.checked_add(n).filter(|next| *next <= self.limit) else {
                return false;
            };
            match self.used.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Counts a refusal; the running count.
    fn count_refusal(&self) -> u64 {
        self.refused.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Bytes one body holds in the budget, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

/// The budget was full: how much was asked for, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget {
    /// The limit.
    pub limit: usize,
    /// Refusals so far, this one included.
    pub refused: u64,
}

impl Reservation {
    /// Holds `n` more bytes, or says the budget is full (the reservation keeps what it
    /// had, and the refusal is counted).
    pub fn grow(&mut self, n: usize) -> Result<(), OverBudget> {
        if self.budget.take(n) {
            self.bytes += n;
            Ok(())
        } else {
            Err(OverBudget { limit: self.budget.limit, refused: self.budget.count_refusal() })
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_back_on_drop() {
        let budget = BufferBudget::new(100);
        let mut a = budget.reserve();
        let mut b = budget.reserve();
        assert_eq!(a.grow(60), Ok(()));
        assert_eq!(b.grow(41), Err(OverBudget { limit: 100, refused: 1 }));
        assert_eq!(b.bytes(), 0, "a refused growth holds nothing");
        assert_eq!(b.grow(40), Ok(()));
        assert_eq!(budget.used(), 100);
        assert_eq!(a.grow(1), Err(OverBudget { limit: 100, refused: 2 }));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert_eq!(b.grow(60), Ok(()));
        drop(b);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.refused(), 2);
    }

    #[test]
    fn huge_requests_do_not_overflow() {
        let budget = BufferBudget::new(usize::MAX - 1);
        let mut a = budget.reserve();
        assert_eq!(a.grow(usize::MAX - 1), Ok(()));
        assert!(a.grow(usize::MAX).is_err());
        assert_eq!(budget.used(), usize::MAX - 1);
    }

    #[test]
    fn concurrent_growth_never_passes_the_limit() {
        let budget = BufferBudget::new(1000);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        let mut r = budget.reserve();
                        if r.grow(7).is_ok() {
                            assert!(budget.used() <= 1000);
                            held.push(r);
                        }
                        if held.len() > 10 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no thread panicked");
        }
        assert_eq!(budget.used(), 0);
    }
}
