//! `flowgate-sdk`: write [flowgate](https://example.invalid/flowgate) plugins in Rust.
//!
//! A flowgate plugin is a WebAssembly component that the proxy calls at each flow hook
//! (mitmproxy's addon events: `request`, `response`, `tls_clienthello`, ...). It runs in
//! a sandbox: no files, sockets or environment unless its manifest grants them, a memory
//! cap, and a deadline on every hook call.
//!
//! Implement the hook traits you need — each method has a no-op default — and name the
//! groups you implement in [`export_plugin!`]. The host calls only the groups a plugin
//! exports, and with `#[flowgate_sdk::hooks]` on an impl only the hooks that impl
//! writes out: a hook you do not write costs nothing.
//!
//! # Example
//!
//! A plugin that tags every request and blocks one path (`Cargo.toml` needs
//! `crate-type = ["cdylib"]`; build with `cargo build --release --target wasm32-wasip2`):
//!
//! ```rust
//! use flowgate_sdk::{config, export_plugin, log, Flow, HttpHooks, Request, Response, Verdict};
//!
//! struct Tagger;
//!
//! #[flowgate_sdk::hooks] // request-headers and response are called, no other HTTP hook
//! impl HttpHooks for Tagger {
//!     fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
//!         if request.path().starts_with("/admin") {
//!             log::warn(&format!("blocked {}", request.url()));
//!             return Verdict::text(403, "blocked by flowgate\n");
//!         }
//!         let tag = config::get("tag").unwrap_or_else(|| "seen".to_owned());
//!         // Setting a header can fail (a bad name or value); the error says why.
//!         if let Err(e) = request.set_header("x-flowgate-tag", &tag) {
//!             log::error(&format!("cannot tag: {}", e.describe()));
//!         }
//!         Verdict::Continue
//!     }
//!
//!     fn response(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
//!         let _ = response.set_header("x-flowgate", "1");
//!         Verdict::Continue
//!     }
//! }
//!
//! export_plugin!(Tagger: http);
//! # fn main() {}
//! ```
//!
//! With a manifest beside the `.wasm` (`plugin.toml`):
//!
//! ```toml
//! name = "tagger"
//! version = "0.1.0"
//! [config]
//! tag = "from-docs"
//! ```
//!
//! # Body modes
//! Bodies stream past plugins untouched unless one asks for them in a headers hook:
//! `request.set_body_mode(BodyMode::Buffer)` makes the whole body available in the
//! `request` hook (up to the plugin's `max_body_bytes`); `BodyMode::Stream` sends it
//! chunk by chunk through `request_body_chunk`.
//!
//! # Minimum supported Rust version
//! 1.85 (edition 2024), with the `wasm32-wasip2` target installed.

#![allow(missing_docs, reason = "the generated bindings carry the WIT's documentation where it has any")]

#[doc(hidden)]
pub mod __imports {
    wit_bindgen::generate!({
        world: "host-imports",
        path: "../wit",
    });
}

/// Generates one hook group's bindings in its own module, sharing the imports above.
macro_rules! group_bindings {
    ($module:ident, $world:literal, $macro_name:literal, $path:literal) => {
        #[doc(hidden)]
        pub mod $module {
            wit_bindgen::generate!({
                world: $world,
                path: "../wit",
                with: {
                    "flowgate:plugin/types@0.2.1": crate::__imports::flowgate::plugin::types,
                    "flowgate:plugin/log@0.2.1": crate::__imports::flowgate::plugin::log,
                    "flowgate:plugin/config@0.2.1": crate::__imports::flowgate::plugin::config,
                    "flowgate:plugin/key-value@0.2.1": crate::__imports::flowgate::plugin::key_value,
                    "flowgate:plugin/clock@0.2.1": crate::__imports::flowgate::plugin::clock,
                    "flowgate:plugin/random@0.2.1": crate::__imports::flowgate::plugin::random,
                    "flowgate:plugin/outbound-http@0.2.1": crate::__imports::flowgate::plugin::outbound_http,
                },
                pub_export_macro: true,
                export_macro_name: $macro_name,
                default_bindings_module: $path,
            });
        }
    };
}

#[doc(hidden)]
pub mod __groups {
    group_bindings!(lifecycle, "lifecycle-plugin", "export_lifecycle", "flowgate_sdk::__groups::lifecycle");
    group_bindings!(connection, "connection-plugin", "export_connection", "flowgate_sdk::__groups::connection");
    group_bindings!(tls, "tls-plugin", "export_tls", "flowgate_sdk::__groups::tls");
    group_bindings!(http, "http-plugin", "export_http", "flowgate_sdk::__groups::http");
    group_bindings!(websocket, "websocket-plugin", "export_websocket", "flowgate_sdk::__groups::websocket");
    group_bindings!(tcp, "tcp-plugin", "export_tcp", "flowgate_sdk::__groups::tcp");
    group_bindings!(udp, "udp-plugin", "export_udp", "flowgate_sdk::__groups::udp");
    group_bindings!(dns, "dns-plugin", "export_dns", "flowgate_sdk::__groups::dns");
    group_bindings!(hook_list, "hook-list-plugin", "export_hook_list", "flowgate_sdk::__groups::hook_list");
}

use __imports::flowgate::plugin as wit;

pub use wit::types::{
    BodyMode, Connection, DataVerdict, Error, Flow, FlowKind, Header, LocalResponse, Request, Response, TlsDecision,
    Verdict,
};

/// TLS hook types.
pub mod tls {
    pub use crate::__groups::tls::exports::flowgate::plugin::tls::{ClientHello, Side};
}

/// WebSocket hook types.
pub mod websocket {
    pub use crate::__groups::websocket::exports::flowgate::plugin::websocket::{
        Close, Message, MessageKind, MessageVerdict,
    };
}

/// DNS hook types.
pub mod dns {
    pub use crate::__groups::dns::exports::flowgate::plugin::dns::{DnsVerdict, Message, Question, ResourceRecord};
}

impl Error {
    /// The kind of error, e.g. `invalid argument`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid argument",
            Error::InvalidState(_) => "invalid state",
            Error::Denied(_) => "denied",
            Error::LimitExceeded(_) => "limit exceeded",
            Error::Unsupported(_) => "unsupported",
            Error::Other(_) => "error",
        }
    }

    /// What the host said.
    pub fn message(&self) -> &str {
        match self {
            Error::InvalidArgument(m)
            | Error::InvalidState(m)
            | Error::Denied(m)
            | Error::LimitExceeded(m)
            | Error::Unsupported(m)
            | Error::Other(m) => m,
        }
    }

    /// `kind: message`, for logs.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.kind(), self.message())
    }
}

/// An ordered list of header fields, for building responses.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Adds a field at the end (builder style).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.append(name, value);
        self
    }

    /// Adds a field at the end.
    pub fn append(&mut self, name: &str, value: &str) {
        self.0.push(Header { name: name.to_owned(), value: value.to_owned() });
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// Replaces every field named `name` by one at the end.
    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.append(name, value);
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }
}

impl From<Vec<Header>> for Headers {
    fn from(v: Vec<Header>) -> Self {
        Headers(v)
    }
}

impl From<Headers> for Vec<Header> {
    fn from(h: Headers) -> Self {
        h.0
    }
}

impl Verdict {
    /// Answer locally with `status`, `headers` and `body`.
    pub fn respond(status: u16, headers: Headers, body: impl Into<Vec<u8>>) -> Verdict {
        Verdict::Respond(LocalResponse { status, headers: headers.into(), body: body.into() })
    }

    /// Answer locally with a `text/plain` body.
    pub fn text(status: u16, body: &str) -> Verdict {
        Verdict::respond(status, Headers::new().with("content-type", "text/plain; charset=utf-8"), body)
    }
}

/// Logging into flowgate's output, attributed to the plugin and the flow.
pub mod log {
    use crate::wit::log::{Level, log};

    /// Logs at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The plugin's configuration: its manifest's `[config]` table.
///
/// It never changes for the life of an instance (a changed manifest is a new version of
/// the plugin, with new instances), so it is read from the host once per instance, at the
/// first call, and kept: a hook that reads its settings costs no crossing into the host.
pub mod config {
    use std::sync::OnceLock;

    /// Every key and value, sorted by key, as read from the host at the first call.
    fn cached() -> &'static [(String, String)] {
        static ENTRIES: OnceLock<Vec<(String, String)>> = OnceLock::new();
        ENTRIES.get_or_init(|| {
            let mut entries = crate::wit::config::entries();
            // The host sorts them; sorting again costs nothing and makes the lookup safe
            // whatever it sent.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries
        })
    }

    /// The value of one key.
    pub fn get(key: &str) -> Option<String> {
        let entries = cached();
        entries.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| entries[i].1.clone())
    }

    /// Every key and value, sorted by key.
    pub fn entries() -> Vec<(String, String)> {
        cached().to_vec()
    }
}

/// Per-plugin key-value state shared by all of the plugin's instances.
pub mod kv {
    pub use crate::wit::key_value::{delete, get, get_keys, set};
}

/// Time from the host.
pub mod clock {
    pub use crate::wit::clock::{monotonic_now, now};
}

/// Randomness from the host.
pub mod random {
    pub use crate::wit::random::{get_random_bytes, get_random_u64};
}

/// Outbound HTTP, for hosts the manifest allows.
pub mod outbound_http {
    pub use crate::wit::outbound_http::{IncomingResponse, OutgoingRequest, send};
}

/// Lifecycle hooks (mitmproxy's `configure`, `running`, `done`).
pub trait LifecycleHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &["configure", "running", "done"];

    /// Called once at load; an error refuses the plugin with this message.
    fn configure() -> Result<(), String> {
        Ok(())
    }
    /// The proxy is serving.
    fn running() {}
    /// The proxy is shutting down.
    fn done() {}
}

/// Connection hooks.
pub trait ConnectionHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] =
        &["client-connected", "client-disconnected", "server-connect", "server-connected", "server-disconnected"];

    /// A client connected; return false to close it.
    fn client_connected(_conn: &Connection) -> bool {
        true
    }
    /// A client disconnected.
    fn client_disconnected(_conn: &Connection) {}
    /// About to connect upstream; return false to fail the flow.
    fn server_connect(_conn: &Connection) -> bool {
        true
    }
    /// Connected upstream.
    fn server_connected(_conn: &Connection) {}
    /// The upstream connection closed.
    fn server_disconnected(_conn: &Connection) {}
}

/// TLS hooks.
pub trait TlsHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &["tls-clienthello", "tls-established", "tls-failed"];

    /// Intercept or pass through.
    fn tls_clienthello(_conn: &Connection, _hello: tls::ClientHello) -> TlsDecision {
        TlsDecision::Intercept
    }
    /// A handshake completed.
    fn tls_established(_conn: &Connection, _side: tls::Side) {}
    /// A handshake failed.
    fn tls_failed(_conn: &Connection, _side: tls::Side, _message: String) {}
}

/// HTTP hooks, in the order they fire for a flow.
pub trait HttpHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &[
        "http-connect",
        "request-headers",
        "request-body-chunk",
        "request",
        "response-headers",
        "response-body-chunk",
        "response",
        "error",
    ];

    /// `CONNECT host:port` reached the explicit proxy.
    fn http_connect(_flow: &Flow, _request: &Request) -> Verdict {
        Verdict::Continue
    }
    /// Request line and headers arrived; choose a body mode here.
    fn request_headers(_flow: &Flow, _request: &Request) -> Verdict {
        Verdict::Continue
    }
    /// A request body chunk (only in `stream` mode); return its replacement.
    fn request_body_chunk(_flow: &Flow, _request: &Request, chunk: Vec<u8>, _end_of_stream: bool) -> Vec<u8> {
        chunk
    }
    /// The whole request arrived.
    fn request(_flow: &Flow, _request: &Request) -> Verdict {
        Verdict::Continue
    }
    /// Response status and headers arrived.
    fn response_headers(_flow: &Flow, _request: &Request, _response: &Response) -> Verdict {
        Verdict::Continue
    }
    /// A response body chunk (only in `stream` mode); return its replacement.
    fn response_body_chunk(
        _flow: &Flow,
        _request: &Request,
        _response: &Response,
        chunk: Vec<u8>,
        _end_of_stream: bool,
    ) -> Vec<u8> {
        chunk
    }
    /// The whole response arrived.
    fn response(_flow: &Flow, _request: &Request, _response: &Response) -> Verdict {
        Verdict::Continue
    }
    /// The flow failed.
    fn error(_flow: &Flow, _request: &Request, _message: String) {}
}

/// WebSocket hooks.
pub trait WebSocketHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &["websocket-start", "websocket-message", "websocket-end"];

    /// The WebSocket opened.
    fn websocket_start(_flow: &Flow) {}
    /// A message; continue, replace (drop or inject) or kill.
    fn websocket_message(_flow: &Flow, _message: websocket::Message) -> websocket::MessageVerdict {
        websocket::MessageVerdict::Continue
    }
    /// The WebSocket closed: the close code and reason, and who closed.
    fn websocket_end(_flow: &Flow, _close: websocket::Close) {}
}

/// TCP hooks.
pub trait TcpHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &["tcp-start", "tcp-message", "tcp-end", "tcp-error"];

    /// A TCP flow started.
    fn tcp_start(_flow: &Flow) {}
    /// Data from one side.
    fn tcp_message(_flow: &Flow, _from_client: bool, _data: Vec<u8>) -> DataVerdict {
        DataVerdict::Continue
    }
    /// The flow ended.
    fn tcp_end(_flow: &Flow) {}
    /// The flow failed.
    fn tcp_error(_flow: &Flow, _message: String) {}
}

/// UDP hooks.
pub trait UdpHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &["udp-start", "udp-message", "udp-end", "udp-error"];

    /// A UDP flow started.
    fn udp_start(_flow: &Flow) {}
    /// A datagram from one side.
    fn udp_message(_flow: &Flow, _from_client: bool, _data: Vec<u8>) -> DataVerdict {
        DataVerdict::Continue
    }
    /// The flow ended.
    fn udp_end(_flow: &Flow) {}
    /// The flow failed.
    fn udp_error(_flow: &Flow, _message: String) {}
}

/// DNS hooks.
pub trait DnsHooks {
    /// The hooks this impl defines, by WIT name; `#[flowgate_sdk::hooks]` on the impl sets
    /// it from the impl's methods. The default names them all, so all are called.
    const IMPLEMENTED: &'static [&'static str] = &["dns-request", "dns-response", "dns-error"];

    /// A query arrived; answer it yourself with `DnsVerdict::Respond`.
    fn dns_request(_flow: &Flow, _query: dns::Message) -> dns::DnsVerdict {
        dns::DnsVerdict::Continue
    }
    /// The upstream answered.
    fn dns_response(_flow: &Flow, _query: dns::Message, _response: dns::Message) -> dns::DnsVerdict {
        dns::DnsVerdict::Continue
    }
    /// Resolution failed.
    fn dns_error(_flow: &Flow, _query: dns::Message, _message: String) {}
}

/// Exports a type's hook groups as a flowgate plugin.
///
/// `export_plugin!(MyPlugin: http, tls)` exports the `http` and `tls` groups; `MyPlugin`
/// must implement [`HttpHooks`] and [`TlsHooks`]. Groups: `lifecycle`, `connection`,
/// `tls`, `http`, `websocket`, `tcp`, `udp`, `dns`.
///
/// It also exports the WIT's `hook-list`: the hooks of those groups that `MyPlugin`
/// implements, so the host calls only those. Put `#[flowgate_sdk::hooks]` on each hook
/// impl to have it name just the methods the impl writes; an impl without it names all
/// of its trait's hooks (each is called, the unwritten ones doing nothing).
#[macro_export]
macro_rules! export_plugin {
    ($ty:ident : $($group:ident),+ $(,)?) => {
        $( $crate::__export_group!($group $ty); )+
        impl $crate::__groups::hook_list::exports::flowgate::plugin::hook_list::Guest for $ty {
            fn implemented() -> ::std::vec::Vec<::std::string::String> {
                let mut names = ::std::vec::Vec::new();
                $( names.extend($crate::__implemented!($group $ty).iter().map(|n| ::std::string::String::from(*n))); )+
                names
            }
        }
        $crate::__groups::hook_list::export_hook_list!($ty with_types_in $crate::__groups::hook_list);
    };
}

/// Lets `#[flowgate_sdk::hooks]` be written as an attribute from this crate.
pub use flowgate_sdk_macros::hooks;

#[doc(hidden)]
#[macro_export]
macro_rules! __implemented {
    (lifecycle $ty:ident) => {
        <$ty as $crate::LifecycleHooks>::IMPLEMENTED
    };
    (connection $ty:ident) => {
        <$ty as $crate::ConnectionHooks>::IMPLEMENTED
    };
    (tls $ty:ident) => {
        <$ty as $crate::TlsHooks>::IMPLEMENTED
    };
    (http $ty:ident) => {
        <$ty as $crate::HttpHooks>::IMPLEMENTED
    };
    (websocket $ty:ident) => {
        <$ty as $crate::WebSocketHooks>::IMPLEMENTED
    };
    (tcp $ty:ident) => {
        <$ty as $crate::TcpHooks>::IMPLEMENTED
    };
    (udp $ty:ident) => {
        <$ty as $crate::UdpHooks>::IMPLEMENTED
    };
    (dns $ty:ident) => {
        <$ty as $crate::DnsHooks>::IMPLEMENTED
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_group {
    (lifecycle $ty:ident) => {
        impl $crate::__groups::lifecycle::exports::flowgate::plugin::lifecycle::Guest for $ty {
            fn configure() -> Result<(), String> { <$ty as $crate::LifecycleHooks>::configure() }
            fn running() { <$ty as $crate::LifecycleHooks>::running() }
            fn done() { <$ty as $crate::LifecycleHooks>::done() }
        }
        $crate::__groups::lifecycle::export_lifecycle!($ty with_types_in $crate::__groups::lifecycle);
    };
    (connection $ty:ident) => {
        impl $crate::__groups::connection::exports::flowgate::plugin::connection::Guest for $ty {
            fn client_connected(c: &$crate::Connection) -> bool { <$ty as $crate::ConnectionHooks>::client_connected(c) }
            fn client_disconnected(c: &$crate::Connection) { <$ty as $crate::ConnectionHooks>::client_disconnected(c) }
            fn server_connect(c: &$crate::Connection) -> bool { <$ty as $crate::ConnectionHooks>::server_connect(c) }
            fn server_connected(c: &$crate::Connection) { <$ty as $crate::ConnectionHooks>::server_connected(c) }
            fn server_disconnected(c: &$crate::Connection) { <$ty as $crate::ConnectionHooks>::server_disconnected(c) }
        }
        $crate::__groups::connection::export_connection!($ty with_types_in $crate::__groups::connection);
    };
    (tls $ty:ident) => {
        impl $crate::__groups::tls::exports::flowgate::plugin::tls::Guest for $ty {
            fn tls_clienthello(c: &$crate::Connection, h: $crate::tls::ClientHello) -> $crate::TlsDecision {
                <$ty as $crate::TlsHooks>::tls_clienthello(c, h)
            }
            fn tls_established(c: &$crate::Connection, s: $crate::tls::Side) { <$ty as $crate::TlsHooks>::tls_established(c, s) }
            fn tls_failed(c: &$crate::Connection, s: $crate::tls::Side, m: String) { <$ty as $crate::TlsHooks>::tls_failed(c, s, m) }
        }
        $crate::__groups::tls::export_tls!($ty with_types_in $crate::__groups::tls);
    };
    (http $ty:ident) => {
        impl $crate::__groups::http::exports::flowgate::plugin::http::Guest for $ty {
            fn http_connect(f: &$crate::Flow, r: &$crate::Request) -> $crate::Verdict { <$ty as $crate::HttpHooks>::http_connect(f, r) }
            fn request_headers(f: &$crate::Flow, r: &$crate::Request) -> $crate::Verdict { <$ty as $crate::HttpHooks>::request_headers(f, r) }
            fn request_body_chunk(f: &$crate::Flow, r: &$crate::Request, c: Vec<u8>, e: bool) -> Vec<u8> {
                <$ty as $crate::HttpHooks>::request_body_chunk(f, r, c, e)
            }
            fn request(f: &$crate::Flow, r: &$crate::Request) -> $crate::Verdict { <$ty as $crate::HttpHooks>::request(f, r) }
            fn response_headers(f: &$crate::Flow, r: &$crate::Request, s: &$crate::Response) -> $crate::Verdict {
                <$ty as $crate::HttpHooks>::response_headers(f, r, s)
            }
            fn response_body_chunk(f: &$crate::Flow, r: &$crate::Request, s: &$crate::Response, c: Vec<u8>, e: bool) -> Vec<u8> {
                <$ty as $crate::HttpHooks>::response_body_chunk(f, r, s, c, e)
            }
            fn response(f: &$crate::Flow, r: &$crate::Request, s: &$crate::Response) -> $crate::Verdict {
                <$ty as $crate::HttpHooks>::response(f, r, s)
            }
            fn error(f: &$crate::Flow, r: &$crate::Request, m: String) { <$ty as $crate::HttpHooks>::error(f, r, m) }
        }
        $crate::__groups::http::export_http!($ty with_types_in $crate::__groups::http);
    };
    (websocket $ty:ident) => {
        impl $crate::__groups::websocket::exports::flowgate::plugin::websocket::Guest for $ty {
            fn websocket_start(f: &$crate::Flow) { <$ty as $crate::WebSocketHooks>::websocket_start(f) }
            fn websocket_message(f: &$crate::Flow, m: $crate::websocket::Message) -> $crate::websocket::MessageVerdict {
                <$ty as $crate::WebSocketHooks>::websocket_message(f, m)
            }
            fn websocket_end(f: &$crate::Flow, c: $crate::websocket::Close) {
                <$ty as $crate::WebSocketHooks>::websocket_end(f, c)
            }
        }
        $crate::__groups::websocket::export_websocket!($ty with_types_in $crate::__groups::websocket);
    };
    (tcp $ty:ident) => {
        impl $crate::__groups::tcp::exports::flowgate::plugin::tcp::Guest for $ty {
            fn tcp_start(f: &$crate::Flow) { <$ty as $crate::TcpHooks>::tcp_start(f) }
            fn tcp_message(f: &$crate::Flow, c: bool, d: Vec<u8>) -> $crate::DataVerdict { <$ty as $crate::TcpHooks>::tcp_message(f, c, d) }
            fn tcp_end(f: &$crate::Flow) { <$ty as $crate::TcpHooks>::tcp_end(f) }
            fn tcp_error(f: &$crate::Flow, m: String) { <$ty as $crate::TcpHooks>::tcp_error(f, m) }
        }
        $crate::__groups::tcp::export_tcp!($ty with_types_in $crate::__groups::tcp);
    };
    (udp $ty:ident) => {
        impl $crate::__groups::udp::exports::flowgate::plugin::udp::Guest for $ty {
            fn udp_start(f: &$crate::Flow) { <$ty as $crate::UdpHooks>::udp_start(f) }
            fn udp_message(f: &$crate::Flow, c: bool, d: Vec<u8>) -> $crate::DataVerdict { <$ty as $crate::UdpHooks>::udp_message(f, c, d) }
            fn udp_end(f: &$crate::Flow) { <$ty as $crate::UdpHooks>::udp_end(f) }
            fn udp_error(f: &$crate::Flow, m: String) { <$ty as $crate::UdpHooks>::udp_error(f, m) }
        }
        $crate::__groups::udp::export_udp!($ty with_types_in $crate::__groups::udp);
    };
    (dns $ty:ident) => {
        impl $crate::__groups::dns::exports::flowgate::plugin::dns::Guest for $ty {
            fn dns_request(f: &$crate::Flow, q: $crate::dns::Message) -> $crate::dns::DnsVerdict { <$ty as $crate::DnsHooks>::dns_request(f, q) }
            fn dns_response(f: &$crate::Flow, q: $crate::dns::Message, r: $crate::dns::Message) -> $crate::dns::DnsVerdict {
                <$ty as $crate::DnsHooks>::dns_response(f, q, r)
            }
            fn dns_error(f: &$crate::Flow, q: $crate::dns::Message, m: String) { <$ty as $crate::DnsHooks>::dns_error(f, q, m) }
        }
        $crate::__groups::dns::export_dns!($ty with_types_in $crate::__groups::dns);
    };
}
