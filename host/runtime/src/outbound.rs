//! Outbound HTTP for plugins, as the runtime sees it: a request the host has checked
//! (method, URL, header fields, the name against the allow-list), handed to whoever does
//! the IO — the network layer, through [`OutboundHttp`] in [`crate::RuntimeConfig`] —
//! and the answer it gives back. The runtime opens no socket; without an
//! [`OutboundHttp`] every call answers `unsupported`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use flowgate_flow::Request;
use flowgate_flow::egress::{AllowList, EgressError};

/// One outbound call, checked by the host.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// The plugin that makes it (for logs).
    pub plugin: String,
    /// Method, URL (`http` or `https`), the plugin's header fields and its body. The
    /// fields were validated; framing fields (`Host`, `Content-Length`,
    /// `Transfer-Encoding`, `Connection` and what it names) are left to the sender.
    pub request: Request,
    /// The plugin's `allowed_outbound_hosts`, to check after DNS.
    pub allowed: AllowList,
    /// The call's deadline, from now: connecting, TLS, sending and the whole response.
    pub timeout: Duration,
    /// Largest response body accepted (`limits.outbound_max_response_bytes`).
    pub max_response_bytes: usize,
}

/// The answer to an outbound call: status, fields and the whole body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundResponse {
    /// Status code. Redirects are not followed: a 3xx is an answer like any other.
    pub status: u16,
    /// Header fields, as received.
    pub headers: flowgate_flow::Headers,
    /// The body, at most `max_response_bytes`.
    pub body: bytes::Bytes,
}

/// Why an outbound call failed; each becomes the plugin's `error` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The egress policy refused the destination (no connection was opened).
    #[error("outbound HTTP refused: {0}")]
    Denied(#[from] EgressError),
    /// The deadline passed.
    #[error("outbound HTTP timed out after {0:?} (limits.outbound_timeout)")]
    Timeout(Duration),
    /// The response body was larger than the cap.
    #[error("outbound HTTP response is over limits.outbound_max_response_bytes ({0})")]
    TooLarge(usize),
    /// The connection, TLS or the exchange failed.
    #[error("outbound HTTP failed: {0}")]
    Failed(String),
}

/// What a call's future resolves to.
pub type OutboundFuture = Pin<Box<dyn Future<Output = Result<OutboundResponse, OutboundError>> + Send>>;

/// Does outbound HTTP for plugins: implemented by the network layer.
pub trait OutboundHttp: Send + Sync {
    /// Sends `request`: resolve, check every address with `request.allowed`, connect
    /// to the address that was checked, no redirects, within `request.timeout`.
    fn send(&self, request: OutboundRequest) -> OutboundFuture;
}
