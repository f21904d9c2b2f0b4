//! Errors of the network layer, tagged with the side that caused them (client, upstream,
//! plugin, internal), and the one place that maps them to an HTTP status.

use std::time::Duration;

/// Something the client did wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A request body past `body_size_limit`.
    #[error("request body exceeds body_size_limit ({limit} bytes)")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Reading the request body failed (the client went away, or `body_read_timeout`).
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    /// A request that cannot be forwarded as it is.
    #[error("{0}")]
    BadRequest(String),
}

/// Something the upstream (or the way to it) did wrong.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `connect_timeout` passed.
    #[error("connecting to {addr} timed out after {after:?} (connect_timeout)")]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The upstream (or the upstream proxy) stalled past a deadline.
    #[error("{what}: nothing for {after:?} ({option})")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The deadline.
        after: Duration,
        /// The option that set it.
        option: &'static str,
    },
    /// The TCP connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host is not a valid TLS server name.
    #[error("invalid server name {0}")]
    ServerName(String),
    /// The TLS handshake with the upstream failed.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The upstream's certificate did not verify: what to do about it is in the message.
    #[error(
        "TLS handshake with {addr} failed: its certificate is not trusted ({reason}); \
         -k (--set ssl_insecure=true) skips the check, --set ssl_verify_upstream_trusted_ca=PEM trusts its CA"
    )]
    Untrusted {
        /// `host:port`.
        addr: String,
        /// rustls's reason.
        reason: rustls::Error,
    },
    /// The upstream proxy refused or botched the CONNECT.
    #[error("upstream proxy: {0}")]
    Proxy(String),
    /// The HTTP handshake (HTTP/2 preface and SETTINGS) failed.
    #[error("HTTP handshake with upstream failed: {0}")]
    Handshake(#[source] h2::Error),
    /// Sending the request or reading the response head failed.
    #[error("upstream failed: {0}")]
    Request(#[source] h2::Error),
    /// The HTTP/1 exchange with the upstream failed (a closed connection, a malformed
    /// response).
    #[error("upstream failed: {0}")]
    Wire(String),
    /// The response body failed or exceeded a limit.
    #[error("response {0}")]
    Body(String),
    /// A plugin's server-connect hook refused the connection.
    #[error("a plugin refused the connection to {0}")]
    Refused(String),
}

impl UpstreamError {
    /// Whether a deadline passed (answered 504, not 502).
    pub fn is_timeout(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. } => true,
            UpstreamError::Connect { source, .. } | UpstreamError::Tls { source, .. } => {
                source.kind() == std::io::ErrorKind::TimedOut
            }
            UpstreamError::Handshake(e) | UpstreamError::Request(e) => {
                e.get_io().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            }
            _ => false,
        }
    }
}

/// Why a flow failed, by the side that caused it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The upstream.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A plugin (its failure policy failed the flow).
    #[error("{0}")]
    Plugin(String),
    /// flowgate is at a limit of its own: answered 503, the flow recorded.
    #[error("{what} would exceed {option} ({limit} bytes); {refused} refused so far")]
    Overloaded {
        /// What did not fit.
        what: &'static str,
        /// The option that sets the limit.
        option: &'static str,
        /// The limit.
        limit: usize,
        /// Refusals so far, this one included.
        refused: u64,
    },
    /// flowgate itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A body that did not fit in `buffer_memory_limit`.
    pub(crate) fn overloaded(what: &'static str, limit: usize, refused: u64) -> Error {
        Error::Overloaded { what, option: "buffer_memory_limit", limit, refused }
    }

    /// The status the client gets for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::Client(ClientError::BodyTooLarge { .. }) => 413,
            Error::Client(_) => 400,
            Error::Upstream(e) if e.is_timeout() => 504,
            Error::Upstream(_) | Error::Plugin(_) => 502,
            Error::Overloaded { .. } => 503,
            Error::Internal(_) => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_by_side() {
        let timeout = UpstreamError::ConnectTimeout { addr: "x:1".into(), after: Duration::from_secs(1) };
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases: Vec<(Error, u16)> = vec![
            (ClientError::BodyTooLarge { limit: 1 }.into(), 413),
            (ClientError::BadRequest("x".into()).into(), 400),
            (ClientError::BodyRead("x".into()).into(), 400),
            (timeout.into(), 504),
            (
                UpstreamError::Timeout {
                    what: "response head",
                    after: Duration::from_secs(1),
                    option: "upstream_timeout",
                }
                .into(),
                504,
            ),
            (UpstreamError::Connect { addr: "x:1".into(), source: refused }.into(), 502),
            (UpstreamError::Refused("x:1".into()).into(), 502),
            (Error::Plugin("trap".into()), 502),
            (Error::overloaded("the request body", 1, 1), 503),
            (Error::Internal("x".into()), 500),
        ];
        for (error, status) in cases {
            assert_eq!(error.status(), status, "{error}");
        }
    }
}
