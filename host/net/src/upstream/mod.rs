//! Connections to upstream servers: direct or through an upstream proxy, plain or TLS,
//! HTTP/1.1 with keep-alive or HTTP/2 (by ALPN, or by prior knowledge over cleartext).
//! A client connection keeps its upstream connections for its later flows: idle HTTP/1.1
//! connections one request at a time, an HTTP/2 connection shared by all its streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_flow::Response;
use flowgate_flow::Scheme;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::UpstreamError;
use crate::http::exchange::{fill_headers, to_headers, version_of};
use crate::http::h1::client::Client;
pub(crate) use crate::http::h1::client::Outbound;
use crate::{Mode, Proxy};

mod h2_client;
mod shared;
pub(crate) use shared::{Found, SharedUpstreams};

/// A body sent upstream or to the client.
pub(crate) type Body = BoxBody<Bytes, BoxError>;
/// Any body error.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Speak HTTP/2 without negotiation over cleartext (the client used prior knowledge
    /// inside a CONNECT tunnel, or the mode is `reverse:h2c://`).
    pub prior_knowledge: bool,
    /// The TLS server name sent upstream and verified, when it is not `host`: the
    /// client's SNI inside a CONNECT tunnel (mitmproxy's rule), so a client that CONNECTs
    /// to an IP address with SNI `example.com` reaches, and verifies, `example.com`.
    pub sni: Option<String>,
    /// The address to connect to, already checked by the egress policy (a plugin
    /// rerouted the flow): connected to as it is, never looked up again. `None`: the
    /// host is resolved when the connection is opened.
    pub pinned: Option<SocketAddr>,
}

impl Target {
    /// A target reached with HTTP/1.1 over cleartext, or whatever ALPN picks over TLS.
    pub fn new(scheme: Scheme, host: String, port: u16) -> Target {
        Target { scheme, host, port, prior_knowledge: false, sni: None, pinned: None }
    }
}

/// One upstream connection's request side.
pub(crate) enum Sender {
    /// HTTP/1.1 (flowgate's own): one request at a time.
    H1(Client),
    /// HTTP/2: any number of concurrent streams (clones share the connection).
    H2(h2_client::H2Client),
}

impl Sender {
    /// Whether the connection speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }

    /// Whether the connection has closed.
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Sends a request; the response head comes back, the body as it arrives, and after
    /// an HTTP/1.1 `101` the upgraded connection.
    pub async fn send(
        &mut self,
        out: Outbound<'_>,
        options: &crate::ProxyOptions,
    ) -> Result<(Response, Body, Option<crate::websocket::Side>), UpstreamError> {
        match self {
            Sender::H1(client) => client.send(out, options).await,
            Sender::H2(sender) => {
                // HTTP/2 takes the authority as `:authority` in an absolute URI.
                let request = out.request;
                let authority = request
                    .headers
                    .get_str("host")
                    .map(str::to_owned)
                    .unwrap_or_else(|| request.scheme.authority(&request.host, request.port));
                let uri = format!("{}://{authority}{}", request.scheme.as_str(), request.path);
                let mut upstream_req = hyper::Request::new(out.body);
                *upstream_req.method_mut() = hyper::Method::from_bytes(request.method.as_bytes())
                    .map_err(|_| UpstreamError::Wire(format!("invalid method {:?}", request.method)))?;
                *upstream_req.version_mut() = hyper::Version::HTTP_2;
                *upstream_req.uri_mut() =
                    uri.parse().map_err(|e| UpstreamError::Wire(format!("invalid request target {uri:?}: {e}")))?;
                fill_headers(upstream_req.headers_mut(), &request.headers);
                upstream_req.headers_mut().remove("host");
                // A WebSocket goes up as RFC 8441's extended CONNECT: no key, no Upgrade.
                let websocket = crate::websocket::is_upgrade(request);
                if websocket {
                    *upstream_req.method_mut() = hyper::Method::CONNECT;
                    upstream_req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
                    upstream_req.headers_mut().remove("sec-websocket-key");
                }
                let sent = sender.send(upstream_req).await.map_err(UpstreamError::Request)?;
                // H2Client makes a tunnel of an extended CONNECT answered with any 2xx
                // (RFC 8441); to the client's HTTP/1.1 layer it is the 101 it asked for.
                if let Some(tunnel) = sent.tunnel {
                    let mut headers = to_headers(&sent.head.headers);
                    let key = request.headers.get("sec-websocket-key").unwrap_or_default();
                    let _ = headers.set("Sec-WebSocket-Accept", crate::websocket::accept_key(key).as_bytes());
                    let response = Response {
                        status: 101,
                        reason: "Switching Protocols".to_owned(),
                        version: flowgate_flow::HttpVersion::Http2,
                        headers,
                        ..Response::default()
                    };
                    let side = crate::websocket::Side { io: Box::new(tunnel), buf: bytes::BytesMut::new() };
                    return Ok((response, crate::http::full(bytes::Bytes::new()), Some(side)));
                }
                let response = Response {
                    status: sent.head.status.as_u16(),
                    version: version_of(sent.head.version),
                    headers: to_headers(&sent.head.headers),
                    ..Response::default()
                };
                Ok((response, sent.body.map_err(Into::into).boxed(), None))
            }
        }
    }
}

/// Open upstream connections of one client connection.
#[derive(Default)]
pub(crate) struct Upstreams {
    /// Looked up for every request; foldhash, not SipHash (the targets are the client's
    /// own, and few).
    idle: HashMap<Target, Vec<Sender>, foldhash::fast::RandomState>,
    opened: bool,
}

impl Upstreams {
    /// An open connection to `target` that can take a request now, if there is one: an
    /// idle HTTP/1.1 one (give it back with [`Upstreams::put`] once the response head has
    /// arrived) or a handle on the shared HTTP/2 one. Never waits: an HTTP/1.1 connection
    /// still carrying an earlier response body (a slow reader, another stream of an
    /// HTTP/2 client) is left alone and a new connection is opened instead.
    pub fn take(&mut self, target: &Target) -> Option<Sender> {
        let senders = self.idle.get_mut(target)?;
        senders.retain(|s| !s.is_closed());
        for sender in senders.iter() {
            if let Sender::H2(shared) = sender {
                return Some(Sender::H2(shared.clone()));
            }
        }
        let ready = senders.iter().position(|s| matches!(s, Sender::H1(h1) if h1.is_ready()))?;
        Some(senders.swap_remove(ready))
    }

    /// Notes that an upstream connection was opened outside this pool (a raw TCP relay).
    pub fn note_opened(&mut self) {
        self.opened = true;
    }

    /// Whether any upstream connection was opened.
    pub fn any_open(&self) -> bool {
        self.opened
    }

    /// Keeps a connection for the next flow to the same target (an HTTP/2 connection is
    /// kept once).
    pub fn put(&mut self, target: Target, sender: Sender) {
        self.opened = true;
        let senders = match self.idle.get_mut(&target) {
            Some(senders) => senders,
            None => self.idle.entry(target.clone()).or_default(),
        };
        if sender.is_h2() && senders.iter().any(Sender::is_h2) {
            return;
        }
        senders.retain(|s| !s.is_closed());
        // Past the bound the connection is dropped: it closes once its response has ended.
        if senders.len() >= MAX_IDLE_PER_TARGET {
            return;
        }
        senders.push(sender);
        self.bound_total(&target);
    }

    /// Keeps at most [`MAX_KEPT_TOTAL`] connections over all targets: closed ones go first,
    /// then connections of other targets than `keep` (the one just used), the target
    /// holding most first.
    fn bound_total(&mut self, keep: &Target) {
        let total = |idle: &HashMap<Target, Vec<Sender>, foldhash::fast::RandomState>| {
            idle.values().map(Vec::len).sum::<usize>()
        };
        if total(&self.idle) <= MAX_KEPT_TOTAL {
            return;
        }
        for senders in self.idle.values_mut() {
            senders.retain(|s| !s.is_closed());
        }
        self.idle.retain(|_, senders| !senders.is_empty());
        while total(&self.idle) > MAX_KEPT_TOTAL {
            let fullest = self
                .idle
                .iter()
                .filter(|(t, _)| *t != keep)
                .max_by_key(|(_, senders)| senders.len())
                .map(|(t, _)| t.clone());
            let Some(fullest) = fullest else { break };
            if let Some(senders) = self.idle.get_mut(&fullest) {
                senders.pop();
                if senders.is_empty() {
                    self.idle.remove(&fullest);
                }
            }
        }
    }

    /// Connections kept, over all targets.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// Most upstream HTTP/1.1 connections (idle or still sending a response body) a client
/// connection keeps per target.
const MAX_IDLE_PER_TARGET: usize = 16;

/// Most upstream connections a client connection keeps over all its targets (a client
/// sending to many hosts through one connection, as a browser's proxy connection does):
/// past it, connections to the other targets are let go, so what one client connection
/// holds open upstream is bounded whatever it asks for.
const MAX_KEPT_TOTAL: usize = 64;

/// An upstream connection for a client connection's flows.
pub(crate) struct Connected {
    /// Where requests go.
    pub sender: Sender,
    /// The subject alternative names of the upstream's certificate (TLS only).
    pub sans: Arc<[String]>,
}

/// The DNS names and IP addresses a certificate is valid for (at most 32).
fn sans_of(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return Vec::new() };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) if !dns.is_empty() => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| std::net::Ipv4Addr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .take(32)
        .collect()
}

/// An open upstream stream: TCP, or TLS over TCP.
pub(crate) enum UpstreamIo {
    /// Cleartext.
    Tcp(TcpStream),
    /// TLS (boxed: rustls' state is large, and most upstreams of a busy proxy are idle).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS to the origin through a tunnel in TLS to a secure upstream proxy.
    Nested(Box<tokio_rustls::client::TlsStream<UpstreamIo>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Tls(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Nested(io) => std::pin::Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => std::pin::Pin::new(io).poll_write(cx, data),
            UpstreamIo::Tls(io) => std::pin::Pin::new(io).poll_write(cx, data),
            UpstreamIo::Nested(io) => std::pin::Pin::new(io).poll_write(cx, data),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => std::pin::Pin::new(io).poll_flush(cx),
            UpstreamIo::Tls(io) => std::pin::Pin::new(io).poll_flush(cx),
            UpstreamIo::Nested(io) => std::pin::Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Tls(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Nested(io) => std::pin::Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// A new upstream stream and what its TLS handshake told.
pub(crate) struct Opened {
    /// The stream.
    pub io: UpstreamIo,
    /// Whether the upstream chose `h2` by ALPN.
    pub h2: bool,
    /// The subject alternative names of the upstream's certificate (TLS only).
    pub sans: Vec<String>,
}

/// Opens a stream to `target`: TCP (through the upstream proxy's CONNECT in upstream
/// mode), then TLS if its scheme is `https`, offering ALPN `alpn`.
pub(crate) async fn open(proxy: &Proxy, mode: &Mode, target: &Target, alpn: Alpn) -> Result<Opened, UpstreamError> {
    let timeout = proxy.options.connect_timeout;
    let (via_proxy, addr_host, addr_port) = match mode {
        Mode::Upstream { scheme, host, port } => (Some(*scheme), host.clone(), *port),
        _ => (None, target.host.clone(), target.port),
    };
    let addr = format!("{addr_host}:{addr_port}");
    let connect_host = addr_host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let connecting = async {
        match target.pinned {
            Some(pinned) if via_proxy.is_none() => TcpStream::connect(pinned).await,
            _ => TcpStream::connect((connect_host.as_str(), addr_port)).await,
        }
    };
    let tcp = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { addr: addr.clone(), after: timeout })?
        .map_err(|source| UpstreamError::Connect { addr: addr.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    let mut io = if via_proxy == Some(Scheme::Https) {
        // A secure web proxy: TLS to the proxy itself, verified against its name.
        let config = crate::tls::with_client_cert(&proxy.tls_client_raw, &proxy.options, &addr_host);
        UpstreamIo::Tls(tls_over(tcp, &addr_host, config, &addr, timeout).await?.0)
    } else {
        UpstreamIo::Tcp(tcp)
    };
    if via_proxy.is_some() {
        // Plain HTTP goes to an upstream proxy in absolute form; everything else is tunneled.
        if target.scheme == Scheme::Https || alpn == Alpn::None {
            tokio::time::timeout(timeout, tunnel(&mut io, &target.host, target.port)).await.map_err(|_| {
                UpstreamError::Timeout {
                    what: "CONNECT answer from the upstream proxy",
                    after: timeout,
                    option: "connect_timeout",
                }
            })??;
        }
    }
    if target.scheme == Scheme::Http {
        return Ok(Opened { io, h2: false, sans: Vec::new() });
    }
    let server_name = target.sni.as_deref().unwrap_or(&target.host);
    let base = match alpn {
        Alpn::Http => &proxy.tls_client,
        Alpn::None => &proxy.tls_client_raw,
    };
    let config = crate::tls::with_client_cert(base, &proxy.options, server_name);
    let tls_addr = format!("{}:{}", target.host, target.port);
    let (io, conn) = match io {
        UpstreamIo::Tcp(tcp) => {
            let (tls, conn) = tls_over(tcp, server_name, config, &tls_addr, timeout).await?;
            (UpstreamIo::Tls(tls), conn)
        }
        // TLS to the origin inside TLS to the upstream proxy.
        inner => {
            let (tls, conn) = tls_over(inner, server_name, config, &tls_addr, timeout).await?;
            (UpstreamIo::Nested(tls), conn)
        }
    };
    Ok(Opened { io, h2: conn.h2, sans: conn.sans })
}

/// What a TLS handshake with an upstream told.
struct Handshaken {
    /// The server chose `h2` by ALPN.
    h2: bool,
    /// The names its certificate is valid for.
    sans: Vec<String>,
}

/// A TLS client handshake over `io` with `server_name`, under `timeout`.
async fn tls_over<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
    addr: &str,
    timeout: std::time::Duration,
) -> Result<(Box<tokio_rustls::client::TlsStream<IO>>, Handshaken), UpstreamError> {
    let bare = server_name.trim_start_matches('[').trim_end_matches(']').to_owned();
    let name = ServerName::try_from(bare).map_err(|_| UpstreamError::ServerName(server_name.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(timeout, connector.connect(name, io))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { addr: addr.to_owned(), after: timeout })?
        .map_err(|source| match source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(reason @ rustls::Error::InvalidCertificate(_)) => {
                UpstreamError::Untrusted { addr: addr.to_owned(), reason: reason.clone() }
            }
            _ => UpstreamError::Tls { addr: addr.to_owned(), source },
        })?;
    let session = tls.get_ref().1;
    let sans = session.peer_certificates().and_then(|c| c.first()).map(|c| sans_of(c)).unwrap_or_default();
    let h2 = session.alpn_protocol() == Some(b"h2");
    Ok((Box::new(tls), Handshaken { h2, sans }))
}

/// What an upstream TLS connection offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `h2` (unless `http2` is off) and `http/1.1`: the connection carries HTTP.
    Http,
    /// Nothing: the connection carries raw bytes.
    None,
}

/// Opens a new HTTP connection to `target`; `shared`: it may serve other client
/// connections too (an HTTP/2 one then lets no slow stream hold the others back).
pub(crate) async fn connect(
    proxy: &Proxy,
    mode: &Mode,
    target: &Target,
    shared: bool,
) -> Result<Connected, UpstreamError> {
    let opened = open(proxy, mode, target, Alpn::Http).await?;
    // An upstream that takes no more of a request fails it after upstream_timeout.
    let io = crate::stall::WriteStall::new(opened.io, proxy.options.upstream_timeout, "upstream_timeout");
    let sender = if opened.h2 || (target.scheme == Scheme::Http && target.prior_knowledge) {
        handshake_h2(io, &proxy.options, shared).await?
    } else {
        handshake(io)
    };
    Ok(Connected { sender, sans: opened.sans.into() })
}

/// Asks an upstream proxy for a tunnel with CONNECT. The reply is read a byte at a time so
/// that nothing the server says after it (a server that speaks first) is consumed here.
async fn tunnel(tcp: &mut UpstreamIo, host: &str, port: u16) -> Result<(), UpstreamError> {
    let request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    let io_err = |e: std::io::Error| UpstreamError::Proxy(e.to_string());
    tcp.write_all(request.as_bytes()).await.map_err(io_err)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err(UpstreamError::Proxy("CONNECT response head too large".to_owned()));
        }
        let n = tcp.read(&mut byte).await.map_err(io_err)?;
        if n == 0 {
            return Err(UpstreamError::Proxy("closed the connection during CONNECT".to_owned()));
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(UpstreamError::Proxy(format!(
            "refused CONNECT {host}:{port}: {}",
            status_line.lines().next().unwrap_or("")
        )));
    }
    Ok(())
}

fn handshake(io: crate::stall::WriteStall<UpstreamIo>) -> Sender {
    Sender::H1(Client::new(io))
}

async fn handshake_h2<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    options: &crate::ProxyOptions,
    shared: bool,
) -> Result<Sender, UpstreamError> {
    let settings = h2_client::Settings {
        max_header_list_size: options.http2_max_header_list_size,
        header_table_size: options.http2_header_table_size,
        // Streams of many clients: a client that reads slowly fills its stream's window
        // (what is buffered for it stays bounded by that), never the connection's, which
        // the other clients' streams need.
        connection_window: shared.then_some(shared::CONNECTION_WINDOW),
        keepalive: options.http2_ping_keepalive,
        ping_timeout: crate::http::h2::PING_ANSWER_TIMEOUT,
    };
    h2_client::handshake(io, settings).await.map(Sender::H2).map_err(UpstreamError::Handshake)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.1 sender on a loopback connection (the far end is kept in `ends`).
    pub(super) async fn sender(listener: &tokio::net::TcpListener, ends: &mut Vec<TcpStream>) -> Sender {
        let addr = listener.local_addr().expect("bound");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        ends.push(server.expect("accepted").0);
        let io = UpstreamIo::Tcp(client.expect("connected"));
        Sender::H1(Client::new(crate::stall::WriteStall::new(io, std::time::Duration::from_secs(5), "x")))
    }

    #[tokio::test]
    async fn the_pool_is_bounded_per_target_and_in_total() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut ends = Vec::new();
        let mut pool = Upstreams::default();
        let target = |n: u16| Target::new(Scheme::Http, format!("host{n}.test"), 80);
        for _ in 0..MAX_IDLE_PER_TARGET + 4 {
            pool.put(target(0), sender(&listener, &mut ends).await);
        }
        assert_eq!(pool.kept(), MAX_IDLE_PER_TARGET, "per target");
        for n in 1..10 {
            for _ in 0..MAX_IDLE_PER_TARGET {
                pool.put(target(n), sender(&listener, &mut ends).await);
                assert!(pool.kept() <= MAX_KEPT_TOTAL, "in total");
            }
        }
        assert_eq!(pool.kept(), MAX_KEPT_TOTAL);
        // The target used last keeps its connections; others were let go.
        assert_eq!(pool.idle.get(&target(9)).map(Vec::len), Some(MAX_IDLE_PER_TARGET));
        assert!(pool.take(&target(9)).is_some());
    }
}
