//! Hook names and the record of a plugin failing in one.

use std::fmt;

/// Every hook a plugin can export, named as in the WIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, reason = "each variant is the WIT hook of the same name")]
pub enum Hook {
    Configure,
    Running,
    Done,
    ClientConnected,
    ClientDisconnected,
    ServerConnect,
    ServerConnected,
    ServerDisconnected,
    TlsClienthello,
    TlsEstablished,
    TlsFailed,
    RequestHeaders,
    RequestBodyChunk,
    Request,
    ResponseHeaders,
    ResponseBodyChunk,
    Response,
    Error,
    HttpConnect,
    WebsocketStart,
    WebsocketMessage,
    WebsocketEnd,
    TcpStart,
    TcpMessage,
    TcpEnd,
    TcpError,
    UdpStart,
    UdpMessage,
    UdpEnd,
    UdpError,
    DnsRequest,
    DnsResponse,
    DnsError,
}

impl Hook {
    /// Every hook, in WIT order.
    pub const ALL: [Hook; 33] = [
        Hook::Configure,
        Hook::Running,
        Hook::Done,
        Hook::ClientConnected,
        Hook::ClientDisconnected,
        Hook::ServerConnect,
        Hook::ServerConnected,
        Hook::ServerDisconnected,
        Hook::TlsClienthello,
        Hook::TlsEstablished,
        Hook::TlsFailed,
        Hook::RequestHeaders,
        Hook::RequestBodyChunk,
        Hook::Request,
        Hook::ResponseHeaders,
        Hook::ResponseBodyChunk,
        Hook::Response,
        Hook::Error,
        Hook::HttpConnect,
        Hook::WebsocketStart,
        Hook::WebsocketMessage,
        Hook::WebsocketEnd,
        Hook::TcpStart,
        Hook::TcpMessage,
        Hook::TcpEnd,
        Hook::TcpError,
        Hook::UdpStart,
        Hook::UdpMessage,
        Hook::UdpEnd,
        Hook::UdpError,
        Hook::DnsRequest,
        Hook::DnsResponse,
        Hook::DnsError,
    ];

    /// The hook a WIT name names (`request-headers`), if any.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// The hook's WIT name.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Configure => "configure",
            Hook::Running => "running",
            Hook::Done => "done",
            Hook::ClientConnected => "client-connected",
            Hook::ClientDisconnected => "client-disconnected",
            Hook::ServerConnect => "server-connect",
            Hook::ServerConnected => "server-connected",
            Hook::ServerDisconnected => "server-disconnected",
            Hook::TlsClienthello => "tls-clienthello",
            Hook::TlsEstablished => "tls-established",
            Hook::TlsFailed => "tls-failed",
            Hook::RequestHeaders => "request-headers",
            Hook::RequestBodyChunk => "request-body-chunk",
            Hook::Request => "request",
            Hook::ResponseHeaders => "response-headers",
            Hook::ResponseBodyChunk => "response-body-chunk",
            Hook::Response => "response",
            Hook::Error => "error",
            Hook::HttpConnect => "http-connect",
            Hook::WebsocketStart => "websocket-start",
            Hook::WebsocketMessage => "websocket-message",
            Hook::WebsocketEnd => "websocket-end",
            Hook::TcpStart => "tcp-start",
            Hook::TcpMessage => "tcp-message",
            Hook::TcpEnd => "tcp-end",
            Hook::TcpError => "tcp-error",
            Hook::UdpStart => "udp-start",
            Hook::UdpMessage => "udp-message",
            Hook::UdpEnd => "udp-end",
            Hook::UdpError => "udp-error",
            Hook::DnsRequest => "dns-request",
            Hook::DnsResponse => "dns-response",
            Hook::DnsError => "dns-error",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    Trap,
    /// The hook ran past its deadline and was interrupted.
    Deadline,
    /// The guest tried to grow its memory past the cap.
    Memory,
    /// The guest ran out of fuel.
    Fuel,
    /// The guest returned something the host refused (an invalid header, status, ...).
    InvalidOutput,
    /// The plugin was not called: its circuit breaker is open (it crashed too often) or
    /// half-open with its one trial call under way.
    CircuitOpen,
    /// The plugin's CPU budget refused the call (too many in progress, or its CPU time per
    /// second spent) or interrupted it. Host protection: not counted as a crash.
    CpuBudget,
    /// The plugin could not be instantiated.
    Instantiate,
    /// The host had no room for another instance (its own limit, not the plugin's failure).
    HostExhausted,
}

impl FailureKind {
    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline exceeded",
            FailureKind::Memory => "memory limit",
            FailureKind::Fuel => "fuel exhausted",
            FailureKind::InvalidOutput => "invalid output",
            FailureKind::CircuitOpen => "circuit open",
            FailureKind::CpuBudget => "cpu budget",
            FailureKind::Instantiate => "instantiation failed",
            FailureKind::HostExhausted => "host exhausted",
        }
    }
}

/// A plugin failing in one hook, recorded on the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFailure {
    /// The plugin's name.
    pub plugin: String,
    /// The hook that failed.
    pub hook: Hook,
    /// What went wrong.
    pub kind: FailureKind,
    /// Details, for people.
    pub message: String,
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin {} failed in {}: {}: {}", self.plugin, self.hook, self.kind.name(), self.message)
    }
}

#[cfg(test)]
mod hook_names {
    use super::Hook;

    #[test]
    fn every_hook_is_named_once_and_found_by_its_name() {
        for (i, hook) in Hook::ALL.into_iter().enumerate() {
            assert_eq!(hook as usize, i, "ALL is in declaration order");
            assert_eq!(Hook::from_name(hook.name()), Some(hook));
        }
        assert_eq!(Hook::from_name("request_headers"), None);
        assert_eq!(Hook::from_name(""), None);
    }
}
