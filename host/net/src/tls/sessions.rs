//! The server-side TLS session cache every intercepted connection shares, for resumption
//! (TLS 1.3 stateful tickets, TLS 1.2 session IDs).
//!
//! rustls' own `ServerSessionMemoryCache` finds what a resuming client takes with a
//! linear scan of its insertion order: with thousands of sessions kept, each resumption
//! compared thousands of keys (5% of a new-connection-per-request benchmark). Here a take
//! is a hash lookup; the insertion order is a queue whose entries a take leaves behind
//! and eviction skips, compacted when it holds twice the capacity.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use rustls::server::StoresServerSessions;

/// At most `capacity` sessions, the oldest evicted first.
#[derive(Debug)]
pub(crate) struct SessionCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each session with its insertion number.
    sessions: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// Keys in insertion order, with their insertion numbers: an entry whose number is
    /// not its session's (taken, or put again since) is stale.
    order: VecDeque<(Vec<u8>, u64)>,
    next: u64,
}

impl Inner {
    fn is_live(&self, key: &[u8], seq: u64) -> bool {
        self.sessions.get(key).is_some_and(|(_, s)| *s == seq)
    }
}

impl SessionCache {
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache { capacity: capacity.max(1), inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sessions kept, and entries in the order queue.
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sessions.len(), inner.order.len())
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut inner = self.lock();
        let seq = inner.next;
        inner.next += 1;
        inner.order.push_back((key.clone(), seq));
        inner.sessions.insert(key, (value, seq));
        while inner.sessions.len() > self.capacity {
            let Some((oldest, s)) = inner.order.pop_front() else { break };
            if inner.is_live(&oldest, s) {
                inner.sessions.remove(&oldest);
            }
        }
        if inner.order.len() > 2 * self.capacity {
            let Inner { sessions, order, .. } = &mut *inner;
            order.retain(|(k, s)| sessions.get(k).is_some_and(|(_, live)| live == s));
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().sessions.get(key).map(|(value, _)| value.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().sessions.remove(key).map(|(value, _)| value)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    #[test]
    fn sessions_are_taken_once_and_got_many_times() {
        let cache = SessionCache::new(4);
        assert!(cache.put(key(1), b"one".to_vec()));
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(cache.take(&key(1)).as_deref(), Some(&b"one"[..]));
        assert_eq!(cache.take(&key(1)), None);
        assert_eq!(cache.get(&key(2)), None);
    }

    #[test]
    fn the_oldest_go_first_and_a_put_again_counts_as_new() {
        let cache = SessionCache::new(3);
        for n in 1..=3 {
            cache.put(key(n), vec![n as u8]);
        }
        // 1 is put again: now the newest, so 2 is the oldest.
        cache.put(key(1), b"again".to_vec());
        cache.put(key(4), vec![4]);
        assert_eq!(cache.get(&key(2)), None, "the oldest was evicted");
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&b"again"[..]));
        assert!(cache.get(&key(3)).is_some() && cache.get(&key(4)).is_some());
        // A taken session's place in the queue is skipped, not evicted in another's stead.
        assert!(cache.take(&key(3)).is_some());
        cache.put(key(5), vec![5]);
        assert_eq!(cache.sizes().0, 3);
        assert!([1, 4, 5].iter().all(|n| cache.get(&key(*n)).is_some()));
    }

    #[test]
    fn taken_sessions_leave_the_queue_bounded() {
        let cache = SessionCache::new(100);
        for n in 0..100_000 {
            cache.put(key(n), vec![0; 8]);
            // Most sessions are resumed once, as a client making a new connection per
            // request does; what is taken must not pile up in the queue.
            if n % 10 != 0 {
                assert!(cache.take(&key(n)).is_some());
            }
            let (sessions, order) = cache.sizes();
            assert!(sessions <= 100 && order <= 201, "{sessions} sessions, {order} queued at {n}");
        }
    }
}
