//! flowgate's flow model: flows, headers, hooks and verdicts.
//!
//! This crate does no IO and never reads the clock. The network layer fills these
//! types from the wire, the plugin runtime lets plugins read and change them, and
//! both record what happened on the flow.

mod headers;
mod hook;
mod http;
mod id;
mod messages;
mod verdict;

pub use headers::{FieldError, Headers, value_to_text};
pub use hook::{FailureKind, Hook, PluginFailure};
pub use http::{BodyMode, ConnectionInfo, FlowInfo, FlowKind, HttpVersion, Request, Response, Scheme, Url, UrlError};
pub use id::{Uuid, UuidError};
pub use messages::{
    DnsError, DnsMessage, Injected, MAX_RECORDS, MessageError, MessageKind, Question, ResourceRecord, WebSocketMessage,
};
pub use verdict::{DataVerdict, LocalResponse, TlsDecision, Verdict};
