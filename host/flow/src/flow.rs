//! A recorded flow of any protocol, modelled on mitmproxy's flow classes (`flow.py`,
//! `http.py`, `websocket.py`, `tcp.py`, `udp.py`, `dns.py`): its id, connections,
//! timestamps, error and annotations, and what it carried. What is saved, loaded, exported
//! and replayed; hooks see a part of it through [`FlowInfo`] and [`ConnectionInfo`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::conn::{Client, Server};
use crate::http::{ConnectionInfo, FlowInfo, FlowKind, Request, Response};
use crate::id::Uuid;
use crate::messages::{DnsMessage, WebSocketMessage};
use crate::time::Timestamp;

/// One flow: an HTTP exchange (perhaps upgraded to a WebSocket), a TCP stream, UDP
/// datagrams, or a DNS query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Its id (a random UUID, kept when the flow is saved, loaded and replayed).
    pub id: Uuid,
    /// The client connection it came on.
    pub client: Client,
    /// The upstream connection, once one was chosen (none for a flow answered locally
    /// before connecting).
    pub server: Option<Server>,
    /// Why it failed, if it did.
    pub error: Option<FlowError>,
    /// Plugin annotations (mitmproxy's `flow.metadata`).
    pub metadata: BTreeMap<String, String>,
    /// mitmproxy's marker: empty when not marked, else the mark (`:default:`, an emoji
    /// shortcode, a character).
    pub marked: String,
    /// A comment people or plugins left on it.
    pub comment: String,
    /// Whether and which side of it was replayed.
    pub is_replay: Option<Replay>,
    /// When it was created.
    pub timestamp_created: Timestamp,
    /// What it carried.
    pub payload: Payload,
}

impl Flow {
    /// A flow with no server, error, metadata, mark, comment or replay yet.
    pub fn new(id: Uuid, client: Client, timestamp_created: Timestamp, payload: Payload) -> Flow {
        Flow {
            id,
            client,
            server: None,
            error: None,
            metadata: BTreeMap::new(),
            marked: String::new(),
            comment: String::new(),
            is_replay: None,
            timestamp_created,
            payload,
        }
    }

    /// What it carries: [`FlowKind::WebSocket`] for an HTTP flow upgraded to one.
    pub fn kind(&self) -> FlowKind {
        match &self.payload {
            Payload::Http(HttpFlow { websocket: Some(_), .. }) => FlowKind::WebSocket,
            Payload::Http(_) => FlowKind::Http,
            Payload::Tcp(_) => FlowKind::Tcp,
            Payload::Udp(_) => FlowKind::Udp,
            Payload::Dns(_) => FlowKind::Dns,
        }
    }

    /// What a hook sees of the flow.
    pub fn info(&self) -> FlowInfo {
        FlowInfo {
            id: self.id,
            kind: self.kind(),
            connection_id: self.client.id,
            client_address: self.client.peer.to_string(),
            server_address: self.server.as_ref().map(|s| s.address.to_string()),
            metadata: self.metadata.clone(),
        }
    }

    /// What a hook sees of the flow's connections.
    pub fn connection_info(&self) -> ConnectionInfo {
        let tls = self.client.tls.as_ref();
        ConnectionInfo {
            id: self.client.id,
            client_address: self.client.peer.to_string(),
            server_address: self.server.as_ref().map(|s| s.address.to_string()),
            sni: tls.and_then(|t| t.sni.clone()),
            alpn: tls.and_then(|t| t.alpn.clone()),
            tls: tls.is_some(),
        }
    }
}

/// What a flow carried, by protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(
    clippy::large_enum_variant,
    reason = "most flows are HTTP: boxing it would add an allocation to nearly every flow to save bytes in the rare others"
)]
pub enum Payload {
    /// An HTTP request, its response, and the WebSocket it may have become.
    Http(HttpFlow),
    /// The messages of a TCP stream, in order.
    Tcp(Vec<DataMessage>),
    /// The datagrams of a UDP flow, in order.
    Udp(Vec<DataMessage>),
    /// A DNS query and its response.
    Dns(DnsFlow),
}

/// An HTTP request and what followed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFlow {
    /// The request.
    pub request: Request,
    /// The response, once its head arrived (or a plugin made one).
    pub response: Option<Response>,
    /// The WebSocket the exchange was upgraded to, if it was.
    pub websocket: Option<WebSocketData>,
}

impl HttpFlow {
    /// A flow with only its request.
    pub fn new(request: Request) -> HttpFlow {
        HttpFlow { request, response: None, websocket: None }
    }
}

/// The messages of a WebSocket and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSocketData {
    /// Every message, in the order the proxy handled them.
    pub messages: Vec<WebSocketMessage>,
    /// How it closed; `None` while it is open.
    pub close: Option<WebSocketClose>,
    /// When it closed.
    pub timestamp_end: Option<Timestamp>,
}

/// How a WebSocket ended (what `websocket-end` reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSocketClose {
    /// The close code, if a close frame carried one (1000 normal, 1009 too big, ...; 1005
    /// and 1006 as mitmproxy records a close without a code and a broken connection).
    pub code: Option<u16>,
    /// The close frame's reason (empty if none).
    pub reason: String,
    /// Whether the client closed first (else the server did, or the connection broke).
    pub closed_by_client: bool,
}

/// One read of a TCP stream, or one UDP datagram.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMessage {
    /// Sent by the client (else by the server).
    pub from_client: bool,
    /// The bytes.
    pub content: Bytes,
    /// When it was received.
    pub timestamp: Timestamp,
}

/// A DNS query and its response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsFlow {
    /// The query.
    pub query: DnsMessage,
    /// When the query was received.
    pub timestamp_query: Option<Timestamp>,
    /// The response, once received (or made by a plugin).
    pub response: Option<DnsMessage>,
    /// When the response was received.
    pub timestamp_response: Option<Timestamp>,
}

/// Why a flow failed (mitmproxy's `flow.error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowError {
    /// What went wrong, for people (lowercase, no trailing period).
    pub message: String,
    /// When it happened.
    pub timestamp: Timestamp,
}

/// Which side of a flow was replayed (mitmproxy's `is_replay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// The client side: the request was sent again to the server.
    Request,
    /// The server side: a saved response was served to the client.
    Response,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::conn::{Address, TlsInfo};
    use crate::messages::MessageKind;

    fn client() -> Client {
        let peer: SocketAddr = "10.0.0.1:50000".parse().expect("fixture address");
        let local: SocketAddr = "10.0.0.2:8080".parse().expect("fixture address");
        Client::new(Uuid::from_random_bytes([1; 16]), peer, local, Timestamp::from_micros(1))
    }

    fn http() -> HttpFlow {
        HttpFlow::new(Request::new("GET", "https://example.com/").expect("fixture request"))
    }

    #[test]
    fn kind_follows_the_payload() {
        let flow = |payload| Flow::new(Uuid::from_random_bytes([2; 16]), client(), Timestamp::EPOCH, payload);
        let upgraded = HttpFlow { websocket: Some(WebSocketData::default()), ..http() };
        for (payload, kind) in [
            (Payload::Http(http()), FlowKind::Http),
            (Payload::Http(upgraded), FlowKind::WebSocket),
            (Payload::Tcp(vec![]), FlowKind::Tcp),
            (Payload::Udp(vec![]), FlowKind::Udp),
            (Payload::Dns(DnsFlow::default()), FlowKind::Dns),
        ] {
            assert_eq!(flow(payload).kind(), kind);
        }
    }

    #[test]
    fn hooks_see_the_flow_and_its_connections() {
        let mut flow = Flow::new(Uuid::from_random_bytes([2; 16]), client(), Timestamp::EPOCH, Payload::Http(http()));
        flow.client.tls =
            Some(TlsInfo { sni: Some("example.com".into()), alpn: Some("h2".into()), ..TlsInfo::default() });
        let address = Address::new("example.com", 443).expect("fixture address");
        flow.server = Some(Server::new(Uuid::from_random_bytes([3; 16]), address));
        flow.metadata.insert("k".into(), "v".into());
        let info = flow.info();
        assert_eq!(
            (info.id, info.kind, info.connection_id, info.client_address.as_str()),
            (flow.id, FlowKind::Http, flow.client.id, "10.0.0.1:50000")
        );
        assert_eq!((info.server_address.as_deref(), info.metadata), (Some("example.com:443"), flow.metadata.clone()));
        let conn = flow.connection_info();
        assert_eq!(
            (conn.id, conn.sni.as_deref(), conn.alpn.as_deref(), conn.tls),
            (flow.client.id, Some("example.com"), Some("h2"), true)
        );
        assert_eq!(conn.server_address.as_deref(), Some("example.com:443"));
    }

    /// Serializes `value`, checks it reads back, then that each `(what, from, to)` edit of
    /// the JSON (a valid part replaced by one a constructor or setter refuses) is refused.
    fn check_refused<T>(value: &T, edits: &[(&str, &str, &str)])
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string(value).expect("serializes");
        assert_eq!(&serde_json::from_str::<T>(&json).expect("what was written reads back"), value);
        for (what, from, to) in edits {
            assert!(json.contains(from), "{what}: {from} not in {json}");
            let bad = json.replacen(from, to, 1);
            assert!(serde_json::from_str::<T>(&bad).is_err(), "{what} accepted: {bad}");
        }
    }

    #[test]
    fn deserializing_refuses_what_the_constructors_refuse() {
        let mut h = http();
        h.request.headers.append("X-Ok", b"fine").expect("valid header");
        h.response = Some(Response::new(200, "OK").expect("valid response"));
        let text = WebSocketMessage { kind: MessageKind::Text, data: "hi".into(), ..WebSocketMessage::default() };
        h.websocket = Some(WebSocketData { messages: vec![text], ..WebSocketData::default() });
        let flow = Flow::new(Uuid::from_random_bytes([2; 16]), client(), Timestamp::EPOCH, Payload::Http(h));
        let id = format!("\"{}\"", flow.id);
        check_refused(
            &flow,
            &[
                ("CR LF in a header value", "[102,105,110,101]", "[102,13,10,101]"),
                ("a header name", "\"X-Ok\"", "\"X Ok\""),
                ("a uuid", &id, "\"not-a-uuid\""),
                ("a method", "\"GET\"", "\"G T\""),
                ("a host", "\"host\":\"example.com\"", "\"host\":\"exa mple.com\""),
                ("a port", "\"port\":443", "\"port\":0"),
                ("a path", "\"path\":\"/\"", "\"path\":\"/\\r\\nX: y\""),
                ("a status", "\"status\":200", "\"status\":99"),
                ("a reason", "\"reason\":\"OK\"", "\"reason\":\"OK\\r\\n\""),
                ("a text message", "\"data\":[104,105]", "\"data\":[255,254]"),
                ("a client address", "\"10.0.0.1:50000\"", "\"10.0.0.1\""),
            ],
        );
        let mut flow = flow;
        flow.server = Some(Server::new(Uuid::from_random_bytes([3; 16]), "example.net:443".parse().expect("valid")));
        check_refused(&flow, &[("a server address", "\"example.net:443\"", "\"example.net:0\"")]);

        let question = crate::messages::Question { name: "example.com".into(), record_type: 1, class: 1 };
        let query = DnsMessage { questions: vec![question], ..DnsMessage::default() };
        let flow =
            Flow::new(flow.id, client(), Timestamp::EPOCH, Payload::Dns(DnsFlow { query, ..DnsFlow::default() }));
        check_refused(&flow, &[("a DNS name", "\"example.com\"", "\"example..com\"")]);
    }
}
