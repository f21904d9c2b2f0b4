//! flowgate's network layer: the only crate with sockets.
//!
//! It accepts client connections in each proxy mode, detects and intercepts TLS with
//! certificates from the CA, speaks HTTP/1.1 and HTTP/2 on both sides (hyper, h2),
//! translating between them when the two sides differ, turns each exchange
//! into a flow, runs the plugin hooks over it through the runtime's sessions, and
//! reports every flow's one outcome (a response or an error) to a [`FlowSink`].

/// Implements `AsyncWrite` for an IO wrapper that only looks at what it reads, by
/// forwarding every write to its `inner` field.
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<IO> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                data: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

mod h1guard;
mod h2;
mod http;
mod mode;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowgate_ca::CertificateAuthority;
use flowgate_flow::PluginFailure;
use flowgate_runtime::Chain;
use tokio::net::{TcpListener, TcpSocket};

pub use mode::{Mode, ModeError};

/// Settings of the proxy (mitmproxy's option names where they exist).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Skip verification of upstream certificates (`-k`, `ssl_insecure`).
    pub ssl_insecure: bool,
    /// Largest body buffered for plugins (`body_size_limit`, default 16 MiB); a larger one
    /// fails the flow (413 for requests, 502 for responses).
    pub body_size_limit: usize,
    /// Bodies larger than this are streamed untouched even if a plugin asked to buffer them
    /// (`stream_large_bodies`, default unset); plugins then see no body.
    pub stream_large_bodies: Option<usize>,
    /// Hosts whose TLS is passed through without decrypting (`ignore_hosts`, a regex
    /// matched against `host:port`).
    pub ignore_hosts: Option<regex::Regex>,
    /// If set, only these hosts are intercepted; all others pass through (`allow_hosts`).
    pub allow_hosts: Option<regex::Regex>,
    /// Most header fields in a request or response head (`max_headers`, default 100).
    pub max_headers: usize,
    /// Time a client may take to send a request head (`header_read_timeout`, default 30 s).
    pub header_read_timeout: Duration,
    /// Time to connect to an upstream (`connect_timeout`, default 10 s).
    pub connect_timeout: Duration,
    /// Longest wait for the next piece of a request body (`body_read_timeout`, default 60 s).
    pub body_read_timeout: Duration,
    /// Speak HTTP/2 (`http2`, default true): offered by ALPN, accepted with prior knowledge
    /// and `Upgrade: h2c`, and used upstream when the upstream offers it. Off: HTTP/1.1 only.
    pub http2: bool,
    /// Most concurrent streams a client may open on one HTTP/2 connection
    /// (`http2_max_concurrent_streams`, default 100); more are refused (REFUSED_STREAM).
    pub http2_max_concurrent_streams: u32,
    /// Largest decoded header list of an HTTP/2 request or response
    /// (`http2_max_header_list_size`, default 64 KiB). A larger request gets 431. It also
    /// bounds HPACK bombs (the size counts decoded bytes) and CONTINUATION floods (a header
    /// block may span at most this size / 16 KiB x 1.25 frames, at least 5; past that or
    /// past twice the size undecoded, the connection gets GOAWAY).
    pub http2_max_header_list_size: u32,
    /// Size of the HPACK dynamic table a peer may make flowgate keep
    /// (`http2_header_table_size`, default 4 KiB).
    pub http2_header_table_size: u32,
    /// Streams a client may open and reset before flowgate has accepted them, at any one
    /// time (`http2_max_reset_streams`, default 20); past it the connection is closed with
    /// GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).
    pub http2_max_reset_streams: usize,
    /// Streams flowgate may reset because of a client's protocol errors on one connection
    /// (`http2_max_error_reset_streams`, default 1024); past it, GOAWAY (CVE-2025-8671).
    pub http2_max_error_reset_streams: usize,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            ssl_insecure: false,
            body_size_limit: 16 << 20,
            stream_large_bodies: None,
            ignore_hosts: None,
            allow_hosts: None,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            http2: true,
            http2_max_concurrent_streams: 100,
            http2_max_header_list_size: 64 << 10,
            http2_header_table_size: 4096,
            http2_max_reset_streams: 20,
            http2_max_error_reset_streams: 1024,
        }
    }
}

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response was sent to the client (from upstream or from a plugin).
    Response {
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
        /// Body size in bytes, if known (streamed bodies are not counted).
        size: Option<u64>,
        /// True if a plugin answered locally.
        local: bool,
    },
    /// The flow failed; the client got an error response or a closed connection.
    Error(String),
}

/// One finished flow, as printed by mitmdump-style output.
#[derive(Debug, Clone)]
pub struct FlowRecord {
    /// Flow id.
    pub id: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Request method.
    pub method: String,
    /// Request URL.
    pub url: String,
    /// HTTP version of the request.
    pub version: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Time from the request head to the response head.
    pub duration: Duration,
    /// Plugin failures recorded on the flow.
    pub failures: Vec<PluginFailure>,
}

fn human_size(n: u64) -> String {
    match n {
        0..1024 => format!("{n}b"),
        1024..1_048_576 => format!("{:.1}k", n as f64 / 1024.0),
        _ => format!("{:.1}m", n as f64 / 1_048_576.0),
    }
}

impl std::fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.client, self.method, self.url)?;
        // Like mitmdump, the version only when it is not HTTP/1.1.
        if self.version != "HTTP/1.1" {
            write!(f, " {}", self.version)?;
        }
        match &self.outcome {
            Outcome::Response { status, reason, size, local } => {
                write!(f, " << {status} {reason}")?;
                if let Some(size) = size {
                    write!(f, " {}", human_size(*size))?;
                }
                if *local {
                    write!(f, " (local)")?;
                }
            }
            Outcome::Error(e) => write!(f, " << error: {e}")?,
        }
        write!(f, " {}ms", self.duration.as_millis())?;
        for failure in &self.failures {
            write!(f, " [{failure}]")?;
        }
        Ok(())
    }
}

/// Where finished flows go.
pub type FlowSink = Arc<dyn Fn(&FlowRecord) + Send + Sync>;

/// A bound listening socket.
pub struct Listener(TcpListener);

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

/// The proxy: plugins, CA, options and where flows are reported.
pub struct Proxy {
    pub(crate) chain: Chain,
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) options: ProxyOptions,
    pub(crate) sink: FlowSink,
    pub(crate) tls_client: Arc<rustls::ClientConfig>,
    pub(crate) tls_server: tls::ServerShared,
    pub(crate) next_id: AtomicU64,
}

impl Proxy {
    /// A proxy running `chain` with certificates from `ca`.
    pub fn new(chain: Chain, ca: Arc<CertificateAuthority>, options: ProxyOptions, sink: FlowSink) -> Arc<Proxy> {
        let tls_client = tls::client_config(&options);
        let tls_server = tls::ServerShared::new();
        Arc::new(Proxy { chain, ca, options, sink, tls_client, tls_server, next_id: AtomicU64::new(1) })
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Accepts connections on `listener` in `mode` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: Listener, mode: Mode) {
        let listener = listener.0;
        let mode = Arc::new(mode);
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let mode = mode.clone();
            tokio::spawn(async move {
                http::serve_connection(proxy, mode, stream, client).await;
            });
        }
    }
}
