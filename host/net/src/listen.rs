//! Listening sockets: bound first (a taken port fails at once), listening once ready.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// A bound listening socket.
pub struct Listener(pub(crate) TcpListener);

/// A TCP address bound but not yet listening: the port is taken (a conflict is reported
/// at once) while clients are refused until [`Bound::listen`], so nobody's connection
/// waits in the backlog while the plugins load.
pub struct Bound(TcpSocket);

impl Bound {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Starts accepting connections.
    pub fn listen(self) -> std::io::Result<Listener> {
        self.0.listen(1024).map(Listener)
    }
}

impl Listener {
    /// Binds `addr` (`host:port`; port 0 picks a free one) without listening yet: call
    /// [`Bound::listen`] when ready to serve.
    pub async fn reserve(addr: &str) -> std::io::Result<Bound> {
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            socket.set_reuseaddr(true)?;
            match socket.bind(addr) {
                Ok(()) => return Ok(Bound(socket)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing")
        }))
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
