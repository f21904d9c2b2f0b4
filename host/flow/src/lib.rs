//! flowgate's flow model: flows of every protocol, their connections, headers, hooks and
//! verdicts.
//!
//! A [`Flow`] is one HTTP exchange (perhaps upgraded to a WebSocket), TCP stream, UDP
//! flow or DNS query, with its [`Client`] and [`Server`] connections (addresses, TLS
//! details, timestamps), error, metadata, mark, comment and replay flag, as mitmproxy
//! models flows. Bodies and message contents are [`bytes::Bytes`]. Every type of the model
//! is serializable with serde, and deserializing checks what the constructors and setters
//! check (header fields, ids, methods, hosts, ports, paths, statuses, DNS names,
//! WebSocket messages), since saved flows are input like any other.
//!
//! This crate does no IO and never reads the clock: ids are made from random bytes and
//! [`Timestamp`]s are given by the caller. The network layer fills these types from the
//! wire, the plugin runtime lets plugins read and change them ([`FlowInfo`] and
//! [`ConnectionInfo`] are what hooks see of a flow), and both record what happened.

mod conn;
pub mod egress;
mod flow;
mod headers;
mod hook;
mod http;
mod id;
mod messages;
mod time;
mod verdict;

pub use conn::{Address, Client, Server, TlsInfo};
pub use flow::{DataMessage, DnsFlow, Flow, FlowError, HttpFlow, Payload, Replay, WebSocketClose, WebSocketData};
pub use headers::{FieldError, Headers, value_to_text};
pub use hook::{FailureKind, Hook, PluginFailure};
pub use http::{
    BodyMode, ConnectionInfo, FlowInfo, FlowKind, HttpVersion, Request, Response, ResponseError, Scheme, Url, UrlError,
};
pub use id::{Uuid, UuidError};
pub use messages::{
    DnsError, DnsMessage, Injected, MAX_RECORDS, MessageError, MessageKind, Question, ResourceRecord, WebSocketMessage,
};
pub use time::Timestamp;
pub use verdict::{DataVerdict, LocalResponse, TlsDecision, Verdict};
