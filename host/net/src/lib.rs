//! flowgate's network layer: the only crate with sockets.
//!
//! It accepts client connections in each proxy mode and runs each as a stack of layers:
//! `detect` classifies a stream's first bytes, `layer::next_layer` picks the layer, and
//! `conn`'s driver runs it until it is done or hands its stream on (CONNECT, TLS
//! interception, an upgrade). Layers: HTTP/1.1 and HTTP/2 on both sides (hyper, h2,
//! translating between them), TLS interception with certificates from the CA, and raw
//! TCP. Each exchange becomes a flow, run through the plugin hooks by the runtime's
//! sessions, and every flow's one outcome is reported to a [`FlowSink`].

/// Implements `AsyncWrite` for an IO wrapper that only looks at what it reads, by
/// forwarding every write to its `inner` field (vectored writes too, so hyper keeps
/// writing head and body with one writev where the stream supports it).
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
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
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

mod capture;
mod conn;
mod detect;
mod egress;
mod error;
mod http;
mod layer;
mod listen;
mod memory;
mod mode;
mod options;
mod record;
mod replay;
mod stall;
mod tcp;
mod tls;
mod upstream;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use flowgate_ca::CertificateAuthority;
use flowgate_runtime::{Chain, ChainHandle};

pub use capture::{FlowStore, Stored};
pub use egress::{CheckedError, OutboundClient, resolve_checked};
pub use error::{ClientError, Error, UpstreamError};
pub use listen::{Bound, Listener};
pub use mode::{Mode, ModeError};
pub use options::ProxyOptions;
pub use record::{FAILURE_KEY, FlowRecord, FlowSink, Kind, LOCAL_KEY, Outcome, PASSTHROUGH_KEY};
pub use replay::{MatchOptions, ReplayExtra, Replayed, ServerReplay, ServerReplayOptions};
pub use tls::given::{ClientCerts, GivenCert, TlsVersion, versions as tls_versions};
pub use tls::load_trusted_ca;

/// The proxy: plugins, CA, options and where flows are reported.
pub struct Proxy {
    /// The plugins; a reload replaces them for new flows.
    pub(crate) chain: ChainHandle,
    pub(crate) ca: Arc<CertificateAuthority>,
    pub(crate) options: ProxyOptions,
    /// Where each finished flow's record goes, if anywhere (`-q` and a dump of whole flows
    /// leave none: records are then not even made).
    pub(crate) sink: Option<FlowSink>,
    /// Where whole flows go, if anywhere (`-w`, `hardump`); their bodies are copied for it.
    pub(crate) store: Option<FlowStore>,
    pub(crate) tls_client: Arc<rustls::ClientConfig>,
    pub(crate) tls_client_raw: Arc<rustls::ClientConfig>,
    pub(crate) tls_server: tls::ServerShared,
    /// Client connections open now, up to `max_connections`.
    connections: Arc<tokio::sync::Semaphore>,
    /// Connections closed on accept because `max_connections` were open.
    refused: std::sync::atomic::AtomicU64,
    /// Client TLS handshakes in progress, up to `max_handshakes`.
    pub(crate) handshakes: tokio::sync::Semaphore,
    /// What buffered bodies hold, up to `buffer_memory_limit`.
    pub(crate) buffers: Arc<memory::BufferBudget>,
    /// HTTP/2 upstream connections client connections share (`share_upstream`).
    pub(crate) shared: upstream::SharedUpstreams,
    /// Set when the proxy is shutting down ([`Proxy::drain`]): connections finish what
    /// they are doing and close instead of waiting for more.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// Shuts down gracefully: every connection finishes the requests in progress and
    /// closes; waits until none is open, or `timeout`; returns how many still are (they
    /// end when the process does).
    pub async fn drain(&self, timeout: std::time::Duration) -> usize {
        // HTTP/1 connections close after the response in progress (idle ones at once),
        // HTTP/2 ones send GOAWAY and close once their open streams are done.
        self.closing.send_replace(true);
        // Every permit free means every connection ended.
        let all = u32::try_from(self.options.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(timeout, self.connections.acquire_many(all)).await;
        self.options.max_connections - self.connections.available_permits()
    }

    /// The plugins new flows get, which [`ChainHandle::replace`] swaps (hot reload).
    pub fn plugins(&self) -> &ChainHandle {
        &self.chain
    }

    /// Hands a flow's record to the sink; `record` is only called if there is one.
    pub(crate) fn report(&self, record: impl FnOnce() -> FlowRecord) {
        if let Some(sink) = &self.sink {
            sink(&record());
        }
    }

    /// A proxy running `chain` with certificates from `ca`: each finished flow's record goes
    /// to `sink` if there is one, and the whole flow to `store` if there is one.
    pub fn new(
        chain: Chain,
        ca: Arc<CertificateAuthority>,
        options: ProxyOptions,
        sink: Option<FlowSink>,
        store: Option<FlowStore>,
    ) -> Arc<Proxy> {
        let tls_client = tls::client_config(&options);
        let tls_client_raw = tls::without_alpn(&tls_client);
        let tls_server = tls::ServerShared::new(&options);
        let connections = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
        let handshakes = tokio::sync::Semaphore::new(options.max_handshakes);
        let buffers = memory::BufferBudget::new(options.buffer_memory_limit);
        let http2_idle_timeout = options.http2_idle_timeout;
        Arc::new(Proxy {
            chain: ChainHandle::new(chain),
            ca,
            options,
            sink,
            store,
            tls_client,
            tls_client_raw,
            tls_server,
            connections,
            refused: std::sync::atomic::AtomicU64::new(0),
            handshakes,
            buffers,
            shared: upstream::SharedUpstreams::new(http2_idle_timeout),
            closing: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Whether the proxy is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Returns once the proxy is shutting down.
    pub(crate) async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives as long as the proxy, which the caller holds.
        let _ = closing.wait_for(|c| *c).await;
    }

    /// A new flow or connection id (a random UUID).
    pub(crate) fn next_id(&self) -> flowgate_flow::Uuid {
        flowgate_flow::Uuid::from_random_bytes(rand::random())
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
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                // Closed at once: the client learns now, not after a timeout, and an open
                // connection costs nothing more.
                let refused = self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        "{client}: refused, {} client connections are open (max_connections); {refused} refused so far",
                        self.options.max_connections
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let mode = mode.clone();
            tokio::spawn(async move {
                conn::serve_connection(proxy, mode, stream, client).await;
                drop(permit);
            });
        }
    }
}
