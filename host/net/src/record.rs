//! What is reported of each finished flow: the one-line record mitmdump prints. (Not the
//! flow model: that is `flowgate-flow`'s; this is the network layer's summary of a flow's
//! one outcome, handed to the [`FlowSink`].)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flowgate_flow::{Flow, Payload, Replay};

/// The flow metadata key of a response a plugin gave (no upstream answered).
pub const LOCAL_KEY: &str = "flowgate.local";
/// The prefix of the flow metadata keys of plugin failures (`flowgate.failure.01`, ...).
pub const FAILURE_KEY: &str = "flowgate.failure.";
/// The flow metadata keys of a TCP flow's byte counts each way, on its final state (its
/// messages went to the flow file as they passed).
pub const CLIENT_BYTES_KEY: &str = "flowgate.client_bytes";
/// See [`CLIENT_BYTES_KEY`].
pub const SERVER_BYTES_KEY: &str = "flowgate.server_bytes";
/// The flow metadata key of a TCP flow whose bytes flowgate did not decrypt.
pub const PASSTHROUGH_KEY: &str = "flowgate.passthrough";

/// How an HTTP flow ended.
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

/// What kind of flow a record is, with what mitmdump prints of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// One HTTP exchange.
    Http {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP version of the request.
        version: String,
        /// How it ended.
        outcome: Outcome,
    },
    /// A raw TCP stream relayed both ways (bytes no other layer claimed, or TLS passed
    /// through undecrypted).
    Tcp {
        /// The server it went to (`host:port`).
        server: String,
        /// Whether flowgate saw the plaintext (`false`: relayed as it came, TLS included).
        decrypted: bool,
        /// Bytes from the client to the server.
        client_bytes: u64,
        /// Bytes from the server to the client.
        server_bytes: u64,
        /// Why it ended abnormally, if it did.
        error: Option<String>,
    },
    /// One message of a WebSocket (mitmdump prints a line per message).
    WebSocketMessage {
        /// The server and the handshake's path, `host:port/path`.
        server: String,
        /// Sent by the client (else by the server).
        from_client: bool,
        /// What it was.
        kind: flowgate_flow::MessageKind,
        /// Its payload's size.
        size: u64,
    },
    /// A WebSocket ended.
    WebSocketEnd {
        /// The handshake's URL.
        url: String,
        /// The close code (1005: a close without one; 1006: no close frame).
        code: Option<u16>,
        /// The close reason.
        reason: String,
        /// Whether the client closed first.
        closed_by_client: bool,
        /// Why it ended abnormally, if it did.
        error: Option<String>,
    },
}

/// One finished flow, as printed by mitmdump-style output.
#[derive(Debug, Clone)]
pub struct FlowRecord {
    /// Flow id.
    pub id: flowgate_flow::Uuid,
    /// Client address.
    pub client: SocketAddr,
    /// What the flow was and how it ended.
    pub kind: Kind,
    /// Time from the request head to the response head (HTTP), or the stream's life (TCP).
    pub duration: Duration,
    /// Plugin failures recorded on the flow, as people read them.
    pub failures: Vec<String>,
    /// Which side of the flow was replayed, if one was: mitmdump prints `[replay]` in
    /// place of the client (the request) or before the status (the response).
    pub replay: Option<Replay>,
}

impl FlowRecord {
    /// The record of a whole flow (one read from a file, or handed to the flow store),
    /// so flows on disk print as live ones do. `None` for kinds with no line yet.
    pub fn from_flow(flow: &Flow) -> Option<FlowRecord> {
        let since_start = |end: Option<flowgate_flow::Timestamp>, start: Option<flowgate_flow::Timestamp>| {
            end.zip(start).and_then(|(end, start)| end.checked_duration_since(start)).unwrap_or_default()
        };
        let error_at = flow.error.as_ref().map(|e| e.timestamp);
        let (kind, duration) = match &flow.payload {
            Payload::Http(http) => {
                let request = &http.request;
                let outcome = match (&http.response, &flow.error) {
                    (Some(response), _) => Outcome::Response {
                        status: response.status,
                        reason: response.reason.clone(),
                        size: response.body.as_ref().map(|b| b.len() as u64),
                        local: flow.metadata.contains_key(LOCAL_KEY),
                    },
                    (None, Some(error)) => Outcome::Error(error.message.clone()),
                    (None, None) => Outcome::Error("no response".to_owned()),
                };
                if let Some(ws) = &http.websocket
                    && let Some(close) = &ws.close
                {
                    let kind = Kind::WebSocketEnd {
                        url: request.url(),
                        code: close.code,
                        reason: close.reason.clone(),
                        closed_by_client: close.closed_by_client,
                        error: flow.error.as_ref().map(|e| e.message.clone()),
                    };
                    (kind, since_start(ws.timestamp_end.or(error_at), request.timestamp_start))
                } else {
                    let end = http.response.as_ref().and_then(|r| r.timestamp_start).or(error_at);
                    let kind = Kind::Http {
                        method: request.method.clone(),
                        url: request.url(),
                        version: request.version.as_str().to_owned(),
                        outcome,
                    };
                    (kind, since_start(end, request.timestamp_start))
                }
            }
            Payload::Tcp(messages) => {
                let sent = |from_client: bool, key: &str| match flow.metadata.get(key).and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => {
                        messages.iter().filter(|m| m.from_client == from_client).map(|m| m.content.len() as u64).sum()
                    }
                };
                let server = flow.server.as_ref().map(|s| s.address.to_string()).unwrap_or_default();
                let kind = Kind::Tcp {
                    server,
                    decrypted: !flow.metadata.contains_key(PASSTHROUGH_KEY),
                    client_bytes: sent(true, CLIENT_BYTES_KEY),
                    server_bytes: sent(false, SERVER_BYTES_KEY),
                    error: flow.error.as_ref().map(|e| e.message.clone()),
                };
                let end = flow.client.timestamp_end.or(error_at);
                (kind, since_start(end, Some(flow.client.timestamp_start)))
            }
            Payload::Udp(_) | Payload::Dns(_) => return None,
        };
        let failures = flow.metadata.range(FAILURE_KEY.to_owned()..).take_while(|(k, _)| k.starts_with(FAILURE_KEY));
        Some(FlowRecord {
            id: flow.id,
            client: flow.client.peer,
            kind,
            duration,
            failures: failures.map(|(_, v)| v.clone()).collect(),
            replay: flow.is_replay,
        })
    }
}

/// Records plugin failures on a flow's metadata, where [`FlowRecord::from_flow`] finds them.
pub fn note_failures(flow: &mut Flow, failures: &[flowgate_flow::PluginFailure]) {
    for (n, failure) in failures.iter().enumerate() {
        flow.metadata.insert(format!("{FAILURE_KEY}{:02}", n + 1), failure.to_string());
    }
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
        match &self.kind {
            Kind::Http { method, url, version, outcome } => {
                match self.replay {
                    Some(Replay::Request) => write!(f, "[replay] {method} {url}")?,
                    _ => write!(f, "{}: {method} {url}", self.client)?,
                }
                // Like mitmdump, the version only when it is not HTTP/1.1.
                if version != "HTTP/1.1" {
                    write!(f, " {version}")?;
                }
                match outcome {
                    Outcome::Response { status, reason, size, local } => {
                        let replayed = if self.replay == Some(Replay::Response) { "[replay] " } else { "" };
                        write!(f, " << {replayed}{status} {reason}")?;
                        if let Some(size) = size {
                            write!(f, " {}", human_size(*size))?;
                        }
                        if *local {
                            write!(f, " (local)")?;
                        }
                    }
                    Outcome::Error(e) => write!(f, " << error: {e}")?,
                }
            }
            Kind::Tcp { server, decrypted, client_bytes, server_bytes, error } => {
                let what = if *decrypted { "tcp" } else { "tcp (not decrypted)" };
                write!(
                    f,
                    "{}: {what} {server} >> {} << {}",
                    self.client,
                    human_size(*client_bytes),
                    human_size(*server_bytes)
                )?;
                if let Some(e) = error {
                    write!(f, " error: {e}")?;
                }
            }
            Kind::WebSocketMessage { server, from_client, kind, size } => {
                // mitmdump: `client -> WebSocket text message -> server/path`.
                let arrow = if *from_client { "->" } else { "<-" };
                let kind = format!("{kind:?}").to_ascii_lowercase();
                write!(f, "{} {arrow} WebSocket {kind} message {arrow} {server} {}", self.client, human_size(*size))?;
                for failure in &self.failures {
                    write!(f, " [{failure}]")?;
                }
                return Ok(());
            }
            Kind::WebSocketEnd { url, code, reason, closed_by_client, error } => {
                let by = if *closed_by_client { "client" } else { "server" };
                write!(f, "{}: WebSocket {url} closed by {by}", self.client)?;
                if let Some(code) = code {
                    write!(f, ": {code}")?;
                }
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                if let Some(e) = error {
                    write!(f, " error: {e}")?;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: Kind) -> String {
        let client = "127.0.0.1:5000".parse().expect("address");
        FlowRecord {
            id: flowgate_flow::Uuid::default(),
            client,
            kind,
            duration: Duration::from_millis(7),
            failures: Vec::new(),
            replay: None,
        }
        .to_string()
    }

    #[test]
    fn prints_like_mitmdump() {
        let http = Kind::Http {
            method: "GET".into(),
            url: "http://example.com/".into(),
            version: "HTTP/2.0".into(),
            outcome: Outcome::Response { status: 200, reason: "OK".into(), size: Some(2048), local: false },
        };
        assert_eq!(line(http.clone()), "127.0.0.1:5000: GET http://example.com/ HTTP/2.0 << 200 OK 2.0k 7ms");
        let replayed = |replay| {
            let client = "127.0.0.1:5000".parse().expect("address");
            let kind = http.clone();
            let failures = Vec::new();
            let duration = Duration::from_millis(7);
            FlowRecord { id: flowgate_flow::Uuid::default(), client, kind, duration, failures, replay: Some(replay) }
                .to_string()
        };
        assert_eq!(replayed(Replay::Request), "[replay] GET http://example.com/ HTTP/2.0 << 200 OK 2.0k 7ms");
        assert_eq!(
            replayed(Replay::Response),
            "127.0.0.1:5000: GET http://example.com/ HTTP/2.0 << [replay] 200 OK 2.0k 7ms"
        );
        let tcp = Kind::Tcp {
            server: "example.com:22".into(),
            decrypted: true,
            client_bytes: 21,
            server_bytes: 3000,
            error: None,
        };
        assert_eq!(line(tcp), "127.0.0.1:5000: tcp example.com:22 >> 21b << 2.9k 7ms");
        let passthrough = Kind::Tcp {
            server: "example.com:443".into(),
            decrypted: false,
            client_bytes: 0,
            server_bytes: 0,
            error: Some("idle for 600s (tcp_timeout)".into()),
        };
        assert_eq!(
            line(passthrough),
            "127.0.0.1:5000: tcp (not decrypted) example.com:443 >> 0b << 0b error: idle for 600s (tcp_timeout) 7ms"
        );
    }
}
