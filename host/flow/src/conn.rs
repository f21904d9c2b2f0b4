//! The two connections of a flow: the client's and the upstream server's, with their
//! addresses, TLS details and timestamps (mitmproxy's `connection.py`). Facts recorded by
//! the network layer; nothing here opens or resolves anything.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::http::{UrlError, check_host};
use crate::id::Uuid;
use crate::time::Timestamp;

/// A host and port to connect to: a registered name, an IPv4 address or a bracketed IPv6
/// literal (as in [`Request::host`](crate::Request::host)), and a port in 1..=65535.
/// Written and serialized as `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    host: String,
    port: u16,
}

impl Address {
    /// Checks `host` and `port`.
    pub fn new(host: &str, port: u16) -> Result<Address, UrlError> {
        if !check_host(host) {
            return Err(UrlError::Host(host.to_owned()));
        }
        if port == 0 {
            return Err(UrlError::Port(format!("{host}:0")));
        }
        Ok(Address { host: host.to_owned(), port })
    }

    /// The host, as given.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for Address {
    type Err = UrlError;

    /// Parses `host:port`.
    fn from_str(text: &str) -> Result<Address, UrlError> {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| UrlError::Port(text.to_owned()))?;
        let port = port.parse::<u16>().map_err(|_| UrlError::Port(text.to_owned()))?;
        Address::new(host, port)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Address, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What TLS on one connection negotiated, as far as it got (a failed handshake may know
/// only the SNI).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// The server name the client asked for.
    pub sni: Option<String>,
    /// The ALPN protocol agreed on (`h2`, `http/1.1`, ...).
    pub alpn: Option<String>,
    /// The protocol version, as mitmproxy writes it (`TLSv1.2`, `TLSv1.3`).
    pub version: Option<String>,
    /// The cipher suite's IANA name (`TLS_AES_128_GCM_SHA256`).
    pub cipher: Option<String>,
    /// The peer's certificate chain, leaf first, DER; empty if it sent none.
    pub certificate_chain: Vec<Bytes>,
}

/// The client's connection to the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Its id (a random UUID), shared by every flow on the connection.
    pub id: Uuid,
    /// The client's address. (An IPv6 flow label is not serialized; a scope id is.)
    pub peer: SocketAddr,
    /// The proxy's address the client connected to.
    pub local: SocketAddr,
    /// TLS with the client, if the connection is TLS and was intercepted.
    pub tls: Option<TlsInfo>,
    /// When the connection was accepted.
    pub timestamp_start: Timestamp,
    /// When the TLS handshake with the client finished.
    pub timestamp_tls_setup: Option<Timestamp>,
    /// When the connection closed.
    pub timestamp_end: Option<Timestamp>,
}

impl Client {
    /// A plain connection accepted at `timestamp_start`.
    pub fn new(id: Uuid, peer: SocketAddr, local: SocketAddr, timestamp_start: Timestamp) -> Client {
        Client { id, peer, local, tls: None, timestamp_start, timestamp_tls_setup: None, timestamp_end: None }
    }
}

/// The proxy's connection to the upstream server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Its id (a random UUID).
    pub id: Uuid,
    /// Where the proxy connects, as chosen (a name is resolved by the network layer).
    pub address: Address,
    /// The server's IP address and port, once resolved and connected.
    pub peer: Option<SocketAddr>,
    /// The proxy's end of the connection, once connected.
    pub local: Option<SocketAddr>,
    /// TLS with the server, if any.
    pub tls: Option<TlsInfo>,
    /// When connecting started.
    pub timestamp_start: Option<Timestamp>,
    /// When the TCP handshake finished (for UDP: when the socket was connected).
    pub timestamp_tcp_setup: Option<Timestamp>,
    /// When the TLS handshake finished.
    pub timestamp_tls_setup: Option<Timestamp>,
    /// When the connection closed.
    pub timestamp_end: Option<Timestamp>,
}

impl Server {
    /// A server to connect to, not connected yet.
    pub fn new(id: Uuid, address: Address) -> Server {
        Server {
            id,
            address,
            peer: None,
            local: None,
            tls: None,
            timestamp_start: None,
            timestamp_tcp_setup: None,
            timestamp_tls_setup: None,
            timestamp_end: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        let a: Address = "example.com:443".parse().expect("valid");
        assert_eq!((a.host(), a.port()), ("example.com", 443));
        let a: Address = "[::1]:8080".parse().expect("valid");
        assert_eq!((a.host(), a.port(), a.to_string().as_str()), ("[::1]", 8080, "[::1]:8080"));
        for bad in ["example.com", "example.com:0", "example.com:x", ":80", "::1:80", "a b:80", "a\r\n:80"] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        assert_eq!(Address::new("x", 0), Err(UrlError::Port("x:0".into())));
    }
}
