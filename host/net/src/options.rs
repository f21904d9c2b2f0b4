//! The proxy's settings, under mitmproxy's option names where they exist.

use std::time::Duration;

use crate::tls::given::{ClientCerts, GivenCert, TlsVersion};

/// Settings of the proxy (mitmproxy's option names where they exist).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Skip verification of upstream certificates (`-k`, `ssl_insecure`).
    pub ssl_insecure: bool,
    /// Certificates upstreams are verified against besides the OS store and webpki's
    /// roots: those of `ssl_verify_upstream_trusted_ca` (a PEM file; see
    /// [`load_trusted_ca`](crate::load_trusted_ca)).
    pub upstream_trusted_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Lowest TLS version offered to clients (`tls_version_client_min`, default TLS1_2).
    pub tls_version_client_min: TlsVersion,
    /// Highest TLS version offered to clients (`tls_version_client_max`, default UNBOUNDED).
    pub tls_version_client_max: TlsVersion,
    /// Lowest TLS version spoken to upstreams (`tls_version_server_min`, default TLS1_2).
    pub tls_version_server_min: TlsVersion,
    /// Highest TLS version spoken to upstreams (`tls_version_server_max`, default UNBOUNDED).
    pub tls_version_server_max: TlsVersion,
    /// Certificates served instead of minted ones, for the names they match (`certs`,
    /// mitmproxy's `[domain=]path`; the first match wins).
    pub certs: Vec<GivenCert>,
    /// Client certificates sent to upstreams that ask for one (`client_certs`: a PEM file
    /// with certificate and key, or a directory of `HOST.pem`).
    pub client_certs: Option<ClientCerts>,
    /// Largest body buffered for plugins (`body_size_limit`, default 16 MiB); a larger one
    /// fails the flow (413 for requests, 502 for responses).
    pub body_size_limit: usize,
    /// Most bytes all buffered bodies may hold together (`buffer_memory_limit`, default
    /// 512 MiB): a body whose bytes do not fit is refused with 503 (a declared length is
    /// reserved before the body is read) and the refusal recorded and counted.
    pub buffer_memory_limit: usize,
    /// Bodies larger than this are streamed untouched even if a plugin asked to buffer them
    /// (`stream_large_bodies`, default unset); plugins then see no body.
    pub stream_large_bodies: Option<usize>,
    /// Whether the flow store keeps bodies streamed past `stream_large_bodies` (within
    /// `buffer_memory_limit`); else they are recorded as not stored
    /// (`store_streamed_bodies`, default false, as mitmproxy).
    pub store_streamed_bodies: bool,
    /// Server replay (`-S FILE`, `server_replay`): requests that match a saved one are
    /// answered with its response instead of the upstream's.
    pub server_replay: Option<std::sync::Arc<crate::ServerReplay>>,
    /// Hosts whose TLS is passed through without decrypting (`ignore_hosts`, a regex
    /// matched against `host:port`).
    pub ignore_hosts: Option<regex::Regex>,
    /// If set, only these hosts are intercepted; all others pass through (`allow_hosts`).
    pub allow_hosts: Option<regex::Regex>,
    /// Most header fields in a request or response head (`max_headers`, default 500); a
    /// request head is also bounded by size (64 KiB), and past either it gets 431.
    pub max_headers: usize,
    /// Time a client may take to send a request head (`header_read_timeout`, default 30 s).
    pub header_read_timeout: Duration,
    /// Time to connect to an upstream (`connect_timeout`, default 10 s).
    pub connect_timeout: Duration,
    /// Longest wait for the next piece of a request body (`body_read_timeout`, default 60 s).
    pub body_read_timeout: Duration,
    /// Longest a client may leave a response unread: a write to it that makes no progress
    /// for this long closes the connection (`send_timeout`, default 60 s; slow-read attacks).
    pub send_timeout: Duration,
    /// Longest the upstream may stall: its response head after it took the request, the
    /// next piece of its response body, or taking the next piece of the request
    /// (`upstream_timeout`, default 60 s). Before the response head it is answered 504.
    pub upstream_timeout: Duration,
    /// Most client connections open at once (`max_connections`, default 10,000); one more
    /// is closed as soon as it is accepted, and counted.
    pub max_connections: usize,
    /// Most client TLS handshakes in progress at once (`max_handshakes`, default 256); more
    /// wait for a slot within their own deadline (`header_read_timeout`).
    pub max_handshakes: usize,
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
    /// An HTTP/2 connection (either side) idle for this long gets a PING, and is closed if
    /// the PING is not answered within 20 s (`http2_ping_keepalive`, default 58 s as in
    /// mitmproxy; 0 turns it off).
    pub http2_ping_keepalive: Duration,
    /// A client's HTTP/2 connection with no open stream for this long is closed with GOAWAY
    /// (`http2_idle_timeout`, default 300 s; 0 turns it off).
    pub http2_idle_timeout: Duration,
    /// Client connections share HTTP/2 upstream connections to the same server (same TLS
    /// server name, address and upstream proxy) where they cannot tell: no plugin is
    /// called for server-connect, -connected or -disconnected, and no `client_certs`
    /// (`share_upstream`, default true). Off: each client connection opens its own. A
    /// shared connection no new client connection took for `http2_idle_timeout` leaves
    /// the pool.
    pub share_upstream: bool,
    /// Relay streams no other layer claims as raw TCP flows (`rawtcp`, default true, as
    /// in mitmproxy): bytes inside a CONNECT tunnel that are neither TLS nor HTTP (SSH,
    /// a binary protocol), or a tunnel whose server speaks first. Off: such tunnels close.
    pub rawtcp: bool,
    /// How long flowgate waits inside a CONNECT tunnel for the client's first bytes before
    /// it connects upstream so a server that speaks first (SMTP, SSH) is heard
    /// (`server_first_timeout`, default 1 s).
    pub server_first_timeout: Duration,
    /// How long a raw TCP flow (and a passed-through TLS one) may be idle in both
    /// directions before it is closed (`tcp_timeout`, default 600 s, as in mitmproxy).
    /// Before either side has said anything, `header_read_timeout` applies.
    pub tcp_timeout: Duration,
    /// Relay WebSocket upgrades (`websocket`, default true, as mitmproxy); off, a request's
    /// `Upgrade` is not forwarded (it is hop-by-hop), so the upstream answers it as HTTP.
    pub websocket: bool,
    /// Largest WebSocket message relayed, all its frames together and inflated
    /// (`websocket_max_message_size`, default 16 MiB); a larger one closes the WebSocket
    /// with 1009 both ways.
    pub websocket_max_message_size: usize,
    /// Largest WebSocket frame (`websocket_max_frame_size`, default 16 MiB); a larger one
    /// closes the WebSocket with 1009 before its payload is read.
    pub websocket_max_frame_size: usize,
    /// Bytes queued toward one side of a WebSocket at most (`websocket_queue_size`,
    /// default 1 MiB): a slow reader holds its sender back.
    pub websocket_queue_size: usize,
    /// A WebSocket with no frame either way for this long is closed
    /// (`websocket_idle_timeout`, default 600 s).
    pub websocket_idle_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            ssl_insecure: false,
            upstream_trusted_ca: Vec::new(),
            tls_version_client_min: TlsVersion::Tls12,
            tls_version_client_max: TlsVersion::Unbounded,
            tls_version_server_min: TlsVersion::Tls12,
            tls_version_server_max: TlsVersion::Unbounded,
            certs: Vec::new(),
            client_certs: None,
            body_size_limit: 16 << 20,
            buffer_memory_limit: 512 << 20,
            stream_large_bodies: None,
            store_streamed_bodies: false,
            server_replay: None,
            ignore_hosts: None,
            allow_hosts: None,
            max_headers: 500,
            header_read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_handshakes: 256,
            http2: true,
            http2_max_concurrent_streams: 100,
            http2_max_header_list_size: 64 << 10,
            http2_header_table_size: 4096,
            http2_max_reset_streams: 20,
            http2_max_error_reset_streams: 1024,
            http2_ping_keepalive: Duration::from_secs(58),
            http2_idle_timeout: Duration::from_secs(300),
            share_upstream: true,
            rawtcp: true,
            server_first_timeout: Duration::from_secs(1),
            tcp_timeout: Duration::from_secs(600),
            websocket: true,
            websocket_max_message_size: 16 << 20,
            websocket_max_frame_size: 16 << 20,
            websocket_queue_size: 1 << 20,
            websocket_idle_timeout: Duration::from_secs(600),
        }
    }
}
