//! HTTP requests and responses, and the facts about their flow and connection that hooks
//! see. Deserializing a request or a response checks its method, host, port, path, status
//! and reason as the setters do.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, de};
use thiserror::Error;

use crate::headers::{Headers, check_token, is_field_text};
use crate::id::Uuid;
use crate::time::Timestamp;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The scheme's name as in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `host[:port]` as in a URL or a Host header: the port only if it is not the default.
    pub fn authority(self, host: &str, port: u16) -> String {
        if port == self.default_port() { host.to_owned() } else { format!("{host}:{port}") }
    }
}

/// The HTTP version a message was received with; serialized as [`HttpVersion::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.0
    #[serde(rename = "HTTP/1.0")]
    Http10,
    /// HTTP/1.1
    #[default]
    #[serde(rename = "HTTP/1.1")]
    Http11,
    /// HTTP/2
    #[serde(rename = "HTTP/2.0")]
    Http2,
    /// HTTP/3
    #[serde(rename = "HTTP/3")]
    Http3,
}

impl HttpVersion {
    /// The version as mitmproxy prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2.0",
            HttpVersion::Http3 => "HTTP/3",
        }
    }
}

/// How a message body reaches a plugin; chosen at headers time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// Streams through untouched, never entering a plugin.
    #[default]
    Pass,
    /// Streams chunk by chunk through the plugins that asked for it.
    Stream,
    /// Buffered whole (up to a limit) and shown to the plugins.
    Buffer,
}

/// Why a URL or path given by a plugin was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    /// Not `http://` or `https://`.
    #[error("unsupported scheme in {0:?}")]
    Scheme(String),
    /// The host is empty or has characters a host cannot have.
    #[error("invalid host in {0:?}")]
    Host(String),
    /// The port is not a number in 1..=65535.
    #[error("invalid port in {0:?}")]
    Port(String),
    /// The path does not start with `/` or has whitespace or control characters.
    #[error("invalid path {0:?}")]
    Path(String),
    /// The method is not an HTTP token.
    #[error("invalid method {0:?}")]
    Method(String),
}

/// Why a response's status or reason was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// The status is outside 100..=999.
    #[error("status {0} is outside 100..=999")]
    Status(u16),
    /// The reason phrase has CR, LF, NUL or another control byte other than tab.
    #[error("invalid reason phrase {0:?}")]
    Reason(String),
}

fn check_status(status: u16) -> Result<(), ResponseError> {
    if (100..=999).contains(&status) { Ok(()) } else { Err(ResponseError::Status(status)) }
}

fn check_reason(reason: &str) -> Result<(), ResponseError> {
    if is_field_text(reason.as_bytes()) { Ok(()) } else { Err(ResponseError::Reason(reason.to_owned())) }
}

fn check_path(path: &str) -> Result<(), UrlError> {
    let ok = (path.starts_with('/') || path == "*") && path.bytes().all(|b| b > 0x20 && b != 0x7f);
    if ok { Ok(()) } else { Err(UrlError::Path(path.to_owned())) }
}

pub(crate) fn check_host(host: &str) -> bool {
    // A registered name, an IPv4 address or a bracketed IPv6 literal.
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty() && host.len() <= 253 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// A validated absolute `http(s)://` URL split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Scheme.
    pub scheme: Scheme,
    /// Host, lowercase; IPv6 literals keep their brackets.
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `scheme://host[:port][/path?query]`.
    pub fn parse(raw: &str) -> Result<Url, UrlError> {
        let (scheme, rest) = if let Some(rest) = raw.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = raw.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(UrlError::Scheme(raw.to_owned()));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..]
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| UrlError::Port(raw.to_owned()))?;
                (&authority[..i], port)
            }
            _ => (authority, scheme.default_port()),
        };
        if !check_host(host) {
            return Err(UrlError::Host(raw.to_owned()));
        }
        check_path(&path)?;
        Ok(Url { scheme, host: host.to_ascii_lowercase(), port, path })
    }
}

/// An HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Method, an HTTP token.
    #[serde(deserialize_with = "method")]
    pub method: String,
    /// Scheme of the target.
    pub scheme: Scheme,
    /// Host of the target, without port: a registered name, an IPv4 address or a bracketed
    /// IPv6 literal.
    #[serde(deserialize_with = "host")]
    pub host: String,
    /// Port of the target, 1..=65535 once set.
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// Path and query (or `*`).
    #[serde(deserialize_with = "path")]
    pub path: String,
    /// Version received from the client.
    pub version: HttpVersion,
    /// Header fields.
    pub headers: Headers,
    /// The whole body, once buffered or replaced by a plugin.
    pub body: Option<Bytes>,
    /// Trailer fields, once the body has ended (kept when the body is buffered too).
    pub trailers: Headers,
    /// How the body is handled (the strongest any plugin asked for).
    pub body_mode: BodyMode,
    /// When its first byte was read.
    pub timestamp_start: Option<Timestamp>,
    /// When its last byte (the end of the body, or the trailers) was read.
    pub timestamp_end: Option<Timestamp>,
}

impl Request {
    /// A request for `url` with no headers and no body.
    pub fn new(method: &str, url: &str) -> Result<Request, UrlError> {
        let mut request = Request { version: HttpVersion::Http11, ..Request::default() };
        request.set_method(method)?;
        request.set_url(url)?;
        Ok(request)
    }

    /// The full URL; the port is omitted when it is the scheme's default.
    pub fn url(&self) -> String {
        // `OPTIONS *` names the server itself: its URL has no path (RFC 9112 section 3.2.4).
        let path = if self.path == "*" { "" } else { self.path.as_str() };
        format!("{}://{}{path}", self.scheme.as_str(), self.scheme.authority(&self.host, self.port))
    }

    /// Changes the method.
    pub fn set_method(&mut self, method: &str) -> Result<(), UrlError> {
        if !check_token(method) {
            return Err(UrlError::Method(method.to_owned()));
        }
        method.clone_into(&mut self.method);
        Ok(())
    }

    /// Changes path and query.
    pub fn set_path(&mut self, path: &str) -> Result<(), UrlError> {
        check_path(path)?;
        path.clone_into(&mut self.path);
        Ok(())
    }

    /// Points the request at another URL.
    pub fn set_url(&mut self, url: &str) -> Result<(), UrlError> {
        let Url { scheme, host, port, path } = Url::parse(url)?;
        self.scheme = scheme;
        self.host = host;
        self.port = port;
        self.path = path;
        Ok(())
    }
}

/// An HTTP response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Status code, 100..=999.
    #[serde(deserialize_with = "status")]
    pub status: u16,
    /// Reason phrase (empty for HTTP/2 and HTTP/3); no control bytes but tab.
    #[serde(deserialize_with = "reason")]
    pub reason: String,
    /// Version received from the upstream.
    pub version: HttpVersion,
    /// Header fields.
    pub headers: Headers,
    /// The whole body, once buffered or replaced by a plugin.
    pub body: Option<Bytes>,
    /// Trailer fields, once the body has ended (kept when the body is buffered too).
    pub trailers: Headers,
    /// How the body is handled (the strongest any plugin asked for).
    pub body_mode: BodyMode,
    /// When its first byte was read.
    pub timestamp_start: Option<Timestamp>,
    /// When its last byte (the end of the body, or the trailers) was read.
    pub timestamp_end: Option<Timestamp>,
}

impl Response {
    /// A response with `status` and `reason`, no headers and no body.
    pub fn new(status: u16, reason: &str) -> Result<Response, ResponseError> {
        let mut response = Response::default();
        response.set_status(status)?;
        response.set_reason(reason)?;
        Ok(response)
    }

    /// Changes the status; it must be in 100..=999.
    pub fn set_status(&mut self, status: u16) -> Result<(), ResponseError> {
        check_status(status)?;
        self.status = status;
        Ok(())
    }

    /// Changes the reason phrase; it must have no control bytes but tab.
    pub fn set_reason(&mut self, reason: &str) -> Result<(), ResponseError> {
        check_reason(reason)?;
        reason.clone_into(&mut self.reason);
        Ok(())
    }
}

// Field checks for deserializing, the same as the setters'.

fn method<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let method = String::deserialize(d)?;
    if check_token(&method) { Ok(method) } else { Err(de::Error::custom(UrlError::Method(method))) }
}

fn host<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let host = String::deserialize(d)?;
    if check_host(&host) { Ok(host) } else { Err(de::Error::custom(UrlError::Host(host))) }
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(de::Error::custom(UrlError::Port("0".to_owned()))),
        port => Ok(port),
    }
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    check_path(&path).map_err(de::Error::custom)?;
    Ok(path)
}

fn status<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let status = u16::deserialize(d)?;
    check_status(status).map_err(de::Error::custom)?;
    Ok(status)
}

fn reason<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let reason = String::deserialize(d)?;
    check_reason(&reason).map_err(de::Error::custom)?;
    Ok(reason)
}

/// What protocol a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    /// An HTTP request and its response.
    #[default]
    Http,
    /// A WebSocket after an HTTP upgrade.
    WebSocket,
    /// A raw TCP stream.
    Tcp,
    /// UDP datagrams.
    Udp,
    /// A DNS query and its answer.
    Dns,
}

/// Facts about one flow, and the annotations plugins put on it: what a hook sees of a
/// [`Flow`](crate::Flow) (see [`Flow::info`](crate::Flow::info)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// Its id (a random UUID, kept when the flow is saved and loaded).
    pub id: Uuid,
    /// What it carries.
    pub kind: FlowKind,
    /// The client connection it belongs to.
    pub connection_id: Uuid,
    /// Client address, `ip:port`.
    pub client_address: String,
    /// Upstream address, once known.
    pub server_address: Option<String>,
    /// Plugin annotations (mitmproxy's `flow.metadata`).
    pub metadata: BTreeMap<String, String>,
}

/// Facts about a client connection and its upstream: what a hook sees of a flow's
/// [`Client`](crate::Client) and [`Server`](crate::Server) (see
/// [`Flow::connection_info`](crate::Flow::connection_info)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Its id (a random UUID).
    pub id: Uuid,
    /// Client address, `ip:port`.
    pub client_address: String,
    /// Upstream address, once known.
    pub server_address: Option<String>,
    /// SNI from the client's ClientHello.
    pub sni: Option<String>,
    /// ALPN protocol negotiated with the client.
    pub alpn: Option<String>,
    /// Whether the client side is TLS.
    pub tls: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_round_trip() {
        let r = Request::new("GET", "https://Example.com:8443/a?b=c").expect("valid");
        assert_eq!(
            (r.scheme, r.host.as_str(), r.port, r.path.as_str()),
            (Scheme::Https, "example.com", 8443, "/a?b=c")
        );
        assert_eq!(r.url(), "https://example.com:8443/a?b=c");
        let r = Request::new("GET", "http://[::1]?q").expect("valid");
        assert_eq!((r.host.as_str(), r.port, r.path.as_str()), ("[::1]", 80, "/?q"));
        assert_eq!(r.url(), "http://[::1]/?q");
    }

    #[test]
    fn url_rejects_bad_parts() {
        assert!(matches!(Url::parse("ftp://x/"), Err(UrlError::Scheme(_))));
        assert!(matches!(Url::parse("http://a b/"), Err(UrlError::Host(_))));
        assert!(matches!(Url::parse("http://a:0/"), Err(UrlError::Port(_))));
        assert!(matches!(Url::parse("http://a:99999/"), Err(UrlError::Port(_))));
        assert!(matches!(Url::parse("http://a/x y"), Err(UrlError::Path(_))));
        let mut r = Request::default();
        assert!(matches!(r.set_method("GE T"), Err(UrlError::Method(_))));
        assert!(matches!(r.set_path("x\r\n"), Err(UrlError::Path(_))));
    }
}
