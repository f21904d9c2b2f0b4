//! HTTP/2 upstream connections shared by all client connections (`share_upstream`): one
//! per server, TLS settings and upstream proxy, so a thousand clients of one origin are
//! one multiplexed connection to it rather than a thousand. Only HTTP/2 connections are
//! shared (an HTTP/1.1 one carries one request at a time, and stays its client
//! connection's), and only where a client cannot tell (see `ConnCtx::share`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use flowgate_flow::Scheme;

use super::{Sender, Target};
use crate::Mode;

/// The connection-level receive window of a shared HTTP/2 connection: the largest there
/// is, so only stream windows (hyper's default, 2 MiB) hold data back.
pub(super) const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// Most servers the shared pool keeps a connection to; past it a new connection stays its
/// client connection's.
const MAX_SHARED: usize = 1024;

pub(crate) struct SharedUpstreams {
    conns: Mutex<HashMap<SharedKey, Kept>>,
    /// Places a client connection is opening a connection to now: the clients that arrive
    /// meanwhile wait for it (one connection for a burst of clients, not one each).
    opening: Mutex<HashMap<SharedKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Places whose last connection came out HTTP/1.1: nothing to share, nobody waits.
    http1: Mutex<HashSet<SharedKey>>,
    /// A connection no client connection took for this long leaves the pool
    /// (`http2_idle_timeout`; zero: never); it closes once its last user is done.
    idle: Duration,
}

/// A shared connection in the pool, and when a client connection last took it.
struct Kept {
    conn: SharedConn,
    taken: Instant,
}

impl Kept {
    fn usable(&self, idle: Duration, now: Instant) -> bool {
        !self.conn.sender.is_closed() && (idle.is_zero() || now.duration_since(self.taken) < idle)
    }
}

/// What identifies a shareable connection: where it goes (the target with its TLS server
/// name and pinned address), and through which upstream proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SharedKey {
    target: Target,
    via: Option<(Scheme, String, u16)>,
}

impl SharedKey {
    fn new(mode: &Mode, target: &Target) -> SharedKey {
        let via = match mode {
            Mode::Upstream { scheme, host, port } => Some((*scheme, host.clone(), *port)),
            _ => None,
        };
        SharedKey { target: target.clone(), via }
    }
}

/// A shared HTTP/2 connection and what its TLS handshake told.
#[derive(Clone)]
pub(crate) struct SharedConn {
    /// A handle on the connection (clones share it).
    pub sender: super::h2_client::H2Client,
    /// The names its certificate is valid for (TLS only): what a minted certificate for a
    /// client of this server carries, without a handshake of its own.
    pub sans: Arc<[String]>,
}

/// What [`SharedUpstreams::find`] found.
pub(crate) enum Found<'a> {
    /// An open shared connection.
    Conn(SharedConn),
    /// None: the caller opens one and offers it with [`Claim::offer`].
    Open(Claim<'a>),
}

/// The right to offer a new connection to a place; the first client connection opening
/// one holds the others back until its claim is dropped.
pub(crate) struct Claim<'a> {
    pool: &'a SharedUpstreams,
    key: SharedKey,
    first: Option<tokio::sync::OwnedMutexGuard<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedUpstreams {
    /// An empty pool whose connections leave it after `idle` unused.
    pub fn new(idle: Duration) -> SharedUpstreams {
        SharedUpstreams { conns: Mutex::default(), opening: Mutex::default(), http1: Mutex::default(), idle }
    }

    /// The open shared connection to `target`, or the claim to open one. If another
    /// client connection is opening one now, waits until it is done (its connection is
    /// then shared, or it failed and each goes on alone: only the first opener holds the
    /// others back, so a dead server costs the burst one connect timeout, not one each).
    /// Places known to answer HTTP/1.1 skip the wait.
    pub async fn find(&self, mode: &Mode, target: &Target) -> Found<'_> {
        let key = SharedKey::new(mode, target);
        if let Some(conn) = self.get(&key, Instant::now()) {
            return Found::Conn(conn);
        }
        let first = self.turn(&key).await;
        if let Some(conn) = self.get(&key, Instant::now()) {
            return Found::Conn(conn);
        }
        Found::Open(Claim { pool: self, key, first })
    }

    /// Waits for the first opener of `key` if there is one; `Some` when this is the first.
    async fn turn(&self, key: &SharedKey) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if lock(&self.http1).contains(key) {
            return None;
        }
        let waiting = {
            let mut opening = lock(&self.opening);
            match opening.get(key) {
                Some(gate) => gate.clone(),
                None => {
                    let gate = Arc::new(tokio::sync::Mutex::new(()));
                    let guard = gate.clone().try_lock_owned().ok()?;
                    opening.insert(key.clone(), gate);
                    return Some(guard);
                }
            }
        };
        drop(waiting.lock().await);
        None
    }

    /// The usable connection kept for `key` at `now`, taken (so it stays another idle
    /// period); an unusable one is let go.
    fn get(&self, key: &SharedKey, now: Instant) -> Option<SharedConn> {
        let mut conns = lock(&self.conns);
        match conns.get_mut(key) {
            Some(kept) if kept.usable(self.idle, now) => {
                kept.taken = now;
                Some(kept.conn.clone())
            }
            Some(_) => {
                conns.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps a new connection for `key`, unless an open one is kept (two clients raced
    /// to connect: the later one keeps its own) or the pool is full; an HTTP/1.1 one
    /// marks the place as one nobody waits for.
    fn offer(&self, key: SharedKey, sender: &Sender, sans: &[String], now: Instant) {
        let Sender::H2(sender) = sender else {
            let mut http1 = lock(&self.http1);
            if http1.len() >= MAX_SHARED {
                http1.clear();
            }
            http1.insert(key);
            return;
        };
        let mut conns = lock(&self.conns);
        if conns.get(&key).is_some_and(|k| k.usable(self.idle, now)) {
            return;
        }
        // Closed and long-unused connections go first; each new connection is a chance.
        conns.retain(|_, k| k.usable(self.idle, now));
        if conns.len() >= MAX_SHARED {
            return;
        }
        let conn = SharedConn { sender: sender.clone(), sans: sans.into() };
        conns.insert(key, Kept { conn, taken: now });
    }
}

impl Claim<'_> {
    /// Offers the connection opened for the claim to the other client connections.
    pub fn offer(self, sender: &Sender, sans: &[String]) {
        self.pool.offer(self.key.clone(), sender, sans, Instant::now());
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.first.is_some() {
            lock(&self.pool.opening).remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::handshake_h2;
    use super::super::tests::sender;
    use super::*;
    use bytes::Bytes;

    /// An HTTP/2 sender on a loopback connection to a hyper server that answers 200.
    async fn h2_sender() -> Sender {
        let io = super::super::h2_client::tests::serve(|_| hyper::Response::new(crate::http::full(Bytes::new()))).await;
        handshake_h2(io, &crate::ProxyOptions::default(), true).await.expect("h2 handshake")
    }

    #[tokio::test]
    async fn shared_connections_are_kept_per_place_and_leave_when_unused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = Duration::from_secs(300);
        let pool = SharedUpstreams::new(idle);
        let t0 = Instant::now();
        let key = |mode: &Mode, target: &Target| SharedKey::new(mode, target);
        let a = Target::new(Scheme::Https, "a.test".to_owned(), 443);
        let via = Mode::Upstream { scheme: Scheme::Http, host: "proxy.test".to_owned(), port: 3128 };
        let first = h2_sender().await;
        pool.offer(key(&Mode::Regular, &a), &first, &["a.test".to_owned()], t0);
        let got = pool.get(&key(&Mode::Regular, &a), t0).expect("shared");
        assert_eq!(&*got.sans, ["a.test".to_owned()]);
        // Another place: another SNI, another port, or through an upstream proxy.
        let other_sni = Target { sni: Some("b.test".to_owned()), ..a.clone() };
        let other_port = Target { port: 8443, ..a.clone() };
        assert!(pool.get(&key(&Mode::Regular, &other_sni), t0).is_none());
        assert!(pool.get(&key(&Mode::Regular, &other_port), t0).is_none());
        assert!(pool.get(&key(&via, &a), t0).is_none());
        // An HTTP/1.1 connection is never shared.
        let mut ends = Vec::new();
        pool.offer(key(&Mode::Regular, &other_port), &sender(&listener, &mut ends).await, &[], t0);
        assert!(pool.get(&key(&Mode::Regular, &other_port), t0).is_none());
        // A second connection to the same place does not replace the open one.
        let second = h2_sender().await;
        pool.offer(key(&Mode::Regular, &a), &second, &["second".to_owned()], t0);
        assert_eq!(&*pool.get(&key(&Mode::Regular, &a), t0).expect("shared").sans, ["a.test".to_owned()]);
        // Taken again just before the idle time runs out, it stays; unused that long, it goes.
        let later = t0 + idle - Duration::from_secs(1);
        assert!(pool.get(&key(&Mode::Regular, &a), later).is_some());
        assert!(pool.get(&key(&Mode::Regular, &a), later + idle).is_none());
        // Then a new connection to the place is kept in its stead.
        pool.offer(key(&Mode::Regular, &a), &second, &["second".to_owned()], later + idle);
        assert_eq!(&*pool.get(&key(&Mode::Regular, &a), later + idle).expect("shared").sans, ["second".to_owned()]);
        drop((first, got));
    }
}
