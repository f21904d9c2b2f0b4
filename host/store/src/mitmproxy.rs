//! mitmproxy's flow files (`mitmdump -w`): a sequence of tnetstrings, one per flow, each
//! the flow's `get_state()` dictionary. Reads flow format versions 19 to 21 (mitmproxy 9
//! to 12; mitmproxy 11.0.2 and 12.x write 21) into [`Flow`]s: HTTP flows with their
//! WebSocket, TCP, UDP and DNS flows. Not a writer.
//!
//! What mitmproxy has and the model does not is left out: `intercepted`, `backup`,
//! connection `error`s, `alpn_offers`, `cipher_list`, `mitmcert`, `proxy_mode`, `via`,
//! `transport_protocol`, a request's `authority`, WebSocket messages' `dropped` and
//! `injected`, and metadata values that are not strings. A CONNECT request's empty
//! scheme and path become `https` and `/`, as flowgate records CONNECT.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use base64::Engine;
use bytes::Bytes;
use flowgate_flow::{
    Address, Client, DataMessage, DnsFlow, DnsMessage, Flow, FlowError, Headers, HttpFlow, HttpVersion, MessageKind,
    Payload, Question, Replay, Request, ResourceRecord, Response, Scheme, Server, Timestamp, TlsInfo, Uuid,
    WebSocketClose, WebSocketData, WebSocketMessage,
};
use thiserror::Error;

use crate::tnetstring::{self, Limits, Value};

/// The flow format versions read (mitmproxy's `FLOW_FORMAT_VERSION`): 19 (mitmproxy 9),
/// 20 (mitmproxy 10) and 21 (mitmproxy 11 and 12). Older files differ in field names;
/// mitmproxy itself converts them (`mitmdump -nr old -w new`).
pub const FORMAT_VERSIONS: std::ops::RangeInclusive<i64> = 19..=21;

/// Why a mitmproxy flow file cannot be read.
#[derive(Debug, Error)]
pub enum Error {
    /// The source failed.
    #[error("mitmproxy flow file io: {0}")]
    Io(#[from] io::Error),
    /// The bytes at `offset` are not a tnetstring (or it is cut short); nothing after it
    /// can be read, since a tnetstring stream has no markers to resynchronise on.
    #[error("mitmproxy flow file at offset {offset}: {source}")]
    Syntax {
        /// Where the flow's tnetstring starts.
        offset: u64,
        /// What is wrong.
        source: tnetstring::Error,
    },
    /// The file ends inside a flow.
    #[error("mitmproxy flow file cut short: the flow at offset {offset} ends after {available} of {needed} bytes")]
    Truncated {
        /// Where the flow's tnetstring starts.
        offset: u64,
        /// Bytes it announced.
        needed: u64,
        /// Bytes there were.
        available: u64,
    },
    /// A flow of a format version this reader does not read.
    #[error("the flow at offset {offset} has flow format version {version} (this reader reads 19 to 21)")]
    Version {
        /// Where the flow starts.
        offset: u64,
        /// Its `version`.
        version: String,
    },
    /// A flow whose fields are not what mitmproxy writes, or that the flow model refuses.
    #[error("the flow at offset {offset}: {source}")]
    Flow {
        /// Where the flow starts.
        offset: u64,
        /// What is wrong.
        source: FieldError,
    },
}

/// A field of a flow that is missing, of the wrong type or refused by the flow model.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field's path (`client_conn.peername`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Reads flows from a mitmproxy flow file, one tnetstring at a time (so memory holds one
/// flow, at most [`Limits::max_size`]). A flow whose fields cannot be converted is one
/// `Err` item and reading goes on; a syntax error or a cut-short file ends the iteration
/// after its `Err`.
pub struct Reader<R: Read> {
    inner: BufReader<R>,
    limits: Limits,
    offset: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// A reader with the default [`Limits`].
    pub fn new(inner: R) -> Reader<R> {
        Reader::with_limits(inner, Limits::default())
    }

    /// A reader with these limits.
    pub fn with_limits(inner: R, limits: Limits) -> Reader<R> {
        Reader { inner: BufReader::new(inner), limits, offset: 0, done: false }
    }

    /// The next flow's tnetstring and its offset; `None` at the end of the file.
    fn next_value(&mut self) -> Result<Option<(u64, Value)>, Error> {
        let offset = self.offset;
        let syntax = |source| Error::Syntax { offset, source };
        let mut item = Vec::new();
        // The length prefix, byte by byte (it is at most 13 bytes).
        let total = loop {
            let byte = match self.inner.fill_buf()? {
                [] if item.is_empty() => return Ok(None),
                [] => {
                    let needed = item.len() as u64 + 2;
                    return Err(Error::Truncated { offset, needed, available: item.len() as u64 });
                }
                [byte, ..] => *byte,
            };
            self.inner.consume(1);
            item.push(byte);
            if let Some(total) = tnetstring::frame(&item, &self.limits).map_err(syntax)? {
                break total;
            }
        };
        let rest = (total - item.len()) as u64;
        // Grows as bytes arrive: a prefix announcing more than the file has costs nothing.
        (&mut self.inner).take(rest).read_to_end(&mut item)?;
        if item.len() < total {
            return Err(Error::Truncated { offset, needed: total as u64, available: item.len() as u64 });
        }
        self.offset += total as u64;
        let value = tnetstring::parse(&Bytes::from(item), &self.limits).map_err(syntax)?;
        Ok(Some((offset, value)))
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Flow, Error>;

    fn next(&mut self) -> Option<Result<Flow, Error>> {
        if self.done {
            return None;
        }
        match self.next_value() {
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
            Ok(Some((offset, value))) => Some(convert_at(offset, &value)),
        }
    }
}

fn convert_at(offset: u64, value: &Value) -> Result<Flow, Error> {
    let obj = Obj::root(value).map_err(|source| Error::Flow { offset, source })?;
    match obj.get("version") {
        Some(Value::Int(v)) if FORMAT_VERSIONS.contains(v) => {}
        Some(other) => return Err(Error::Version { offset, version: describe(other) }),
        None => return Err(Error::Version { offset, version: "none".to_owned() }),
    }
    convert(&obj).map_err(|source| Error::Flow { offset, source })
}

/// Converts one flow's state (a tnetstring dictionary as mitmproxy's `get_state()` makes
/// it, of a version in [`FORMAT_VERSIONS`]).
pub fn convert_state(state: &Value) -> Result<Flow, FieldError> {
    convert(&Obj::root(state)?)
}

fn describe(value: &Value) -> String {
    match value {
        Value::Int(v) => v.to_string(),
        Value::List(items) => {
            let parts: Vec<String> = items.iter().map(describe).collect();
            format!("({})", parts.join(", "))
        }
        other => other.type_name().to_owned(),
    }
}

/// A dictionary and where it is in the flow, for messages.
struct Obj<'a> {
    pairs: &'a [(Value, Value)],
    path: String,
}

fn problem(field: String, problem: impl Into<String>) -> FieldError {
    FieldError { field, problem: problem.into() }
}

impl<'a> Obj<'a> {
    fn root(value: &'a Value) -> Result<Obj<'a>, FieldError> {
        match value {
            Value::Dict(pairs) => Ok(Obj { pairs, path: String::new() }),
            other => Err(problem("flow".to_owned(), format!("expected a dictionary, found {}", other.type_name()))),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) -> FieldError {
        problem(self.field(key), format!("expected {expected}, found {}", found.type_name()))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// The value, or `None` if missing or null.
    fn opt(&self, key: &str) -> Option<&'a Value> {
        self.get(key).filter(|v| **v != Value::Null)
    }

    fn obj(&self, key: &str) -> Result<Obj<'a>, FieldError> {
        self.opt_obj(key)?.ok_or_else(|| problem(self.field(key), "missing"))
    }

    fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Dict(pairs)) => Ok(Some(Obj { pairs, path: self.field(key) })),
            Some(other) => Err(self.wrong(key, "a dictionary", other)),
        }
    }

    fn list(&self, key: &str) -> Result<&'a [Value], FieldError> {
        match self.opt(key) {
            None => Ok(&[]),
            Some(Value::List(items)) => Ok(items),
            Some(other) => Err(self.wrong(key, "a list", other)),
        }
    }

    fn opt_text(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, "text", v)),
        }
    }

    fn text(&self, key: &str) -> Result<&'a str, FieldError> {
        self.opt_text(key)?.ok_or_else(|| problem(self.field(key), "missing"))
    }

    fn opt_bytes(&self, key: &str) -> Result<Option<Bytes>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(Value::String(s)) => Ok(Some(Bytes::copy_from_slice(s.as_bytes()))),
            Some(other) => Err(self.wrong(key, "bytes", other)),
        }
    }

    fn bytes(&self, key: &str) -> Result<Bytes, FieldError> {
        self.opt_bytes(key)?.ok_or_else(|| problem(self.field(key), "missing"))
    }

    fn opt_int(&self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Int(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong(key, "an integer", other)),
        }
    }

    fn int<T: TryFrom<i64>>(&self, key: &str) -> Result<T, FieldError> {
        let v = self.opt_int(key)?.ok_or_else(|| problem(self.field(key), "missing"))?;
        T::try_from(v).map_err(|_| problem(self.field(key), format!("{v} is out of range")))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong(key, "a boolean", other)),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, FieldError> {
        Ok(self.opt_bool(key)?.unwrap_or(false))
    }

    fn opt_time(&self, key: &str) -> Result<Option<Timestamp>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => timestamp(v).map(Some).map_err(|e| problem(self.field(key), e)),
        }
    }

    fn time(&self, key: &str) -> Result<Timestamp, FieldError> {
        self.opt_time(key)?.ok_or_else(|| problem(self.field(key), "missing"))
    }
}

fn timestamp(value: &Value) -> Result<Timestamp, String> {
    let secs = match value {
        Value::Float(f) => *f,
        Value::Int(i) => *i as f64,
        other => return Err(format!("expected a time, found {}", other.type_name())),
    };
    Timestamp::from_secs_f64(secs).ok_or_else(|| format!("{secs} is not a time"))
}

fn refused(field: String) -> impl FnOnce(String) -> FieldError {
    move |e| problem(field, e)
}

fn uuid(obj: &Obj, key: &str) -> Result<Uuid, FieldError> {
    obj.text(key)?.parse().map_err(|e: flowgate_flow::UuidError| problem(obj.field(key), e.to_string()))
}

fn convert(flow: &Obj) -> Result<Flow, FieldError> {
    let id = uuid(flow, "id")?;
    let client = client(&flow.obj("client_conn")?)?;
    let kind = flow.text("type")?;
    let payload = match kind {
        "http" => Payload::Http(http(flow)?),
        "tcp" => Payload::Tcp(data_messages(flow)?),
        "udp" => Payload::Udp(data_messages(flow)?),
        "dns" => Payload::Dns(dns(flow)?),
        other => return Err(problem(flow.field("type"), format!("unknown flow type {other:?}"))),
    };
    let timestamp_created = match flow.opt_time("timestamp_created")? {
        Some(t) => t,
        None => client.timestamp_start,
    };
    let mut out = Flow::new(id, client, timestamp_created, payload);
    out.server = match flow.opt_obj("server_conn")? {
        Some(server_conn) => server(&server_conn)?,
        None => None,
    };
    if let Some(error) = flow.opt_obj("error")? {
        out.error = Some(FlowError { message: error.text("msg")?.to_owned(), timestamp: error.time("timestamp")? });
    }
    if let Some(Value::Dict(pairs)) = flow.opt("metadata") {
        for (key, value) in pairs {
            if let (Some(key), Value::String(value)) = (key.as_str(), value) {
                out.metadata.insert(key.to_owned(), value.clone());
            }
        }
    }
    out.marked = marked(flow)?;
    out.comment = flow.opt_text("comment")?.unwrap_or_default().to_owned();
    out.is_replay = match flow.opt_text("is_replay")? {
        None => None,
        Some("request") => Some(Replay::Request),
        Some("response") => Some(Replay::Response),
        Some(other) => return Err(problem(flow.field("is_replay"), format!("unknown value {other:?}"))),
    };
    Ok(out)
}

/// `marked` is text since mitmproxy 8, a boolean before.
fn marked(flow: &Obj) -> Result<String, FieldError> {
    match flow.opt("marked") {
        Some(Value::Bool(true)) => Ok(":default:".to_owned()),
        Some(Value::Bool(false)) | None => Ok(String::new()),
        Some(v) => v.as_str().map(str::to_owned).ok_or_else(|| flow.wrong("marked", "text", v)),
    }
}

/// A `(host, port)` or `(host, port, flowinfo, scope_id)` list of IP addresses.
fn socket_addr(obj: &Obj, key: &str) -> Result<Option<SocketAddr>, FieldError> {
    let Some(value) = obj.opt(key) else { return Ok(None) };
    let bad = |what: &str| problem(obj.field(key), what.to_owned());
    let Value::List(parts) = value else { return Err(obj.wrong(key, "an address list", value)) };
    let host = parts.first().and_then(Value::as_str).ok_or_else(|| bad("expected a host"))?;
    let port = match parts.get(1) {
        Some(Value::Int(p)) => u16::try_from(*p).map_err(|_| bad("port out of range"))?,
        _ => return Err(bad("expected a port")),
    };
    let ip: IpAddr = host.parse().map_err(|_| bad(&format!("{host:?} is not an IP address")))?;
    Ok(Some(match ip {
        IpAddr::V6(v6) => {
            let scope = match parts.get(3) {
                Some(Value::Int(s)) => u32::try_from(*s).map_err(|_| bad("scope id out of range"))?,
                _ => 0,
            };
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
        }
        IpAddr::V4(_) => SocketAddr::new(ip, port),
    }))
}

/// A host as the flow model writes it: IPv6 literals in brackets.
fn model_host(host: &str) -> String {
    if host.parse::<Ipv6Addr>().is_ok() { format!("[{host}]") } else { host.to_owned() }
}

fn tls(conn: &Obj) -> Result<Option<TlsInfo>, FieldError> {
    if !conn.bool("tls")? {
        return Ok(None);
    }
    let mut chain = Vec::new();
    for (i, cert) in conn.list("certificate_list")?.iter().enumerate() {
        let field = format!("{}[{i}]", conn.field("certificate_list"));
        let pem = match cert {
            Value::Bytes(b) => b.clone(),
            Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
            other => return Err(problem(field, format!("expected a PEM certificate, found {}", other.type_name()))),
        };
        chain.push(pem_to_der(&pem).map_err(refused(field))?);
    }
    let alpn = conn.opt_bytes("alpn")?.map(|a| String::from_utf8_lossy(&a).into_owned());
    let version = conn.opt_text("tls_version")?.map(|v| if v == "QUIC" { "QUICv1".to_owned() } else { v.to_owned() });
    Ok(Some(TlsInfo {
        sni: conn.opt_text("sni")?.map(str::to_owned),
        alpn,
        version,
        cipher: conn.opt_text("cipher")?.map(str::to_owned),
        certificate_chain: chain,
    }))
}

/// The DER inside a PEM `CERTIFICATE` block.
fn pem_to_der(pem: &[u8]) -> Result<Bytes, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "a PEM certificate that is not text".to_owned())?;
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("no PEM block".to_owned());
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map(Bytes::from)
        .map_err(|e| format!("bad base64 in a PEM block: {e}"))
}

fn client(conn: &Obj) -> Result<Client, FieldError> {
    let peer = socket_addr(conn, "peername")?.ok_or_else(|| problem(conn.field("peername"), "missing"))?;
    let local = socket_addr(conn, "sockname")?.ok_or_else(|| problem(conn.field("sockname"), "missing"))?;
    let mut client = Client::new(uuid(conn, "id")?, peer, local, conn.time("timestamp_start")?);
    client.tls = tls(conn)?;
    client.timestamp_tls_setup = conn.opt_time("timestamp_tls_setup")?;
    client.timestamp_end = conn.opt_time("timestamp_end")?;
    Ok(client)
}

/// The server connection; `None` when it has no address (mitmproxy keeps a
/// `server_conn` on every flow, with no address when none was chosen).
fn server(conn: &Obj) -> Result<Option<Server>, FieldError> {
    let Some(Value::List(parts)) = conn.opt("address") else { return Ok(None) };
    let host = parts.first().and_then(Value::as_str);
    let port = match parts.get(1) {
        Some(Value::Int(p)) => u16::try_from(*p).ok(),
        _ => None,
    };
    let (Some(host), Some(port)) = (host, port) else {
        return Err(problem(conn.field("address"), "expected (host, port)"));
    };
    let address = Address::new(&model_host(host), port).map_err(|e| problem(conn.field("address"), e.to_string()))?;
    let mut server = Server::new(uuid(conn, "id")?, address);
    server.peer = socket_addr(conn, "peername")?;
    server.local = socket_addr(conn, "sockname")?;
    server.tls = tls(conn)?;
    server.timestamp_start = conn.opt_time("timestamp_start")?;
    server.timestamp_tcp_setup = conn.opt_time("timestamp_tcp_setup")?;
    server.timestamp_tls_setup = conn.opt_time("timestamp_tls_setup")?;
    server.timestamp_end = conn.opt_time("timestamp_end")?;
    Ok(Some(server))
}

fn headers(obj: &Obj, key: &str) -> Result<Headers, FieldError> {
    let mut headers = Headers::new();
    for (i, field) in obj.list(key)?.iter().enumerate() {
        let at = || format!("{}[{i}]", obj.field(key));
        let pair = match field {
            Value::List(pair) if pair.len() == 2 => pair,
            _ => return Err(problem(at(), "expected a (name, value) pair")),
        };
        let name = pair[0].as_str().ok_or_else(|| problem(at(), "a name that is not text"))?;
        let value = match &pair[1] {
            Value::Bytes(b) => b.clone(),
            Value::String(s) => Bytes::copy_from_slice(s.as_bytes()),
            _ => return Err(problem(at(), "a value that is not bytes")),
        };
        headers.append(name, &value).map_err(|e| problem(at(), e.to_string()))?;
    }
    Ok(headers)
}

fn version(obj: &Obj) -> Result<HttpVersion, FieldError> {
    let raw = obj.bytes("http_version")?;
    Ok(match &raw[..] {
        b"HTTP/1.0" => HttpVersion::Http10,
        b"HTTP/1.1" => HttpVersion::Http11,
        b"HTTP/2.0" | b"HTTP/2" => HttpVersion::Http2,
        b"HTTP/3" | b"HTTP/3.0" => HttpVersion::Http3,
        other => {
            let text = String::from_utf8_lossy(other);
            return Err(problem(obj.field("http_version"), format!("unsupported version {text:?}")));
        }
    })
}

fn text_of(obj: &Obj, key: &str) -> Result<String, FieldError> {
    let raw = obj.bytes(key)?;
    String::from_utf8(raw.to_vec()).map_err(|_| problem(obj.field(key), "not UTF-8"))
}

fn request(req: &Obj) -> Result<Request, FieldError> {
    let mut request = Request::default();
    request.set_method(&text_of(req, "method")?).map_err(|e| problem(req.field("method"), e.to_string()))?;
    let scheme = text_of(req, "scheme")?;
    request.scheme = match scheme.as_str() {
        "http" => Scheme::Http,
        // CONNECT requests have no scheme; flowgate records them as https.
        "https" | "" => Scheme::Https,
        other => return Err(problem(req.field("scheme"), format!("unsupported scheme {other:?}"))),
    };
    let host = model_host(req.text("host")?);
    let port: u16 = req.int("port")?;
    // The same checks as the request's own (a host, a port in 1..=65535).
    Address::new(&host, port).map_err(|e| problem(req.field("host"), e.to_string()))?;
    request.host = host;
    request.port = port;
    let path = text_of(req, "path")?;
    let path = if path.is_empty() { "/" } else { path.as_str() };
    request.set_path(path).map_err(|e| problem(req.field("path"), e.to_string()))?;
    request.version = version(req)?;
    request.headers = headers(req, "headers")?;
    request.body = req.opt_bytes("content")?;
    request.trailers = headers(req, "trailers")?;
    request.timestamp_start = req.opt_time("timestamp_start")?;
    request.timestamp_end = req.opt_time("timestamp_end")?;
    Ok(request)
}

fn response(resp: &Obj) -> Result<Response, FieldError> {
    let status: u16 = resp.int("status_code")?;
    let reason = resp.opt_bytes("reason")?.unwrap_or_default();
    let reason = flowgate_flow::value_to_text(&reason);
    let mut response = Response::new(status, &reason).map_err(|e| problem(resp.field("status_code"), e.to_string()))?;
    response.version = version(resp)?;
    response.headers = headers(resp, "headers")?;
    response.body = resp.opt_bytes("content")?;
    response.trailers = headers(resp, "trailers")?;
    response.timestamp_start = resp.opt_time("timestamp_start")?;
    response.timestamp_end = resp.opt_time("timestamp_end")?;
    Ok(response)
}

fn http(flow: &Obj) -> Result<HttpFlow, FieldError> {
    let mut http = HttpFlow::new(request(&flow.obj("request")?)?);
    http.response = flow.opt_obj("response")?.map(|r| response(&r)).transpose()?;
    http.websocket = flow.opt_obj("websocket")?.map(|ws| websocket(&ws)).transpose()?;
    Ok(http)
}

fn websocket(ws: &Obj) -> Result<WebSocketData, FieldError> {
    let mut data = WebSocketData::default();
    for (i, message) in ws.list("messages")?.iter().enumerate() {
        let field = format!("{}[{i}]", ws.field("messages"));
        // (type, from_client, content, timestamp, dropped, injected)
        let Value::List(parts) = message else { return Err(problem(field, "expected a message list")) };
        let kind = match parts.first() {
            Some(Value::Int(1)) => MessageKind::Text,
            Some(Value::Int(2)) => MessageKind::Binary,
            Some(Value::Int(8)) => MessageKind::Close,
            Some(Value::Int(9)) => MessageKind::Ping,
            Some(Value::Int(10)) => MessageKind::Pong,
            _ => return Err(problem(field, "an unknown opcode")),
        };
        let from_client = matches!(parts.get(1), Some(Value::Bool(true)));
        let content = match parts.get(2) {
            Some(Value::Bytes(b)) => b.clone(),
            _ => return Err(problem(field, "content that is not bytes")),
        };
        let timestamp = parts.get(3).map(timestamp).transpose().map_err(refused(field.clone()))?.unwrap_or_default();
        let message = WebSocketMessage { from_client, kind, data: content, timestamp };
        message.validate(usize::MAX).map_err(|e| problem(field, e.to_string()))?;
        data.messages.push(message);
    }
    let code = ws.opt_int("close_code")?;
    let closed_by_client = ws.opt_bool("closed_by_client")?;
    if code.is_some() || closed_by_client.is_some() {
        let code = code.map(u16::try_from).transpose().map_err(|_| problem(ws.field("close_code"), "out of range"))?;
        let reason = ws.opt_text("close_reason")?.unwrap_or_default().to_owned();
        data.close = Some(WebSocketClose { code, reason, closed_by_client: closed_by_client.unwrap_or(false) });
    }
    data.timestamp_end = ws.opt_time("timestamp_end")?;
    Ok(data)
}

fn data_messages(flow: &Obj) -> Result<Vec<DataMessage>, FieldError> {
    let mut messages = Vec::new();
    for (i, message) in flow.list("messages")?.iter().enumerate() {
        let field = format!("{}[{i}]", flow.field("messages"));
        // (from_client, content, timestamp)
        let Value::List(parts) = message else { return Err(problem(field, "expected a message list")) };
        let (Some(Value::Bool(from_client)), Some(Value::Bytes(content))) = (parts.first(), parts.get(1)) else {
            return Err(problem(field, "expected (from_client, content, timestamp)"));
        };
        let timestamp = parts.get(2).map(timestamp).transpose().map_err(refused(field))?.unwrap_or_default();
        messages.push(DataMessage { from_client: *from_client, content: content.clone(), timestamp });
    }
    Ok(messages)
}

fn dns(flow: &Obj) -> Result<DnsFlow, FieldError> {
    let query = flow.obj("request")?;
    let response = flow.opt_obj("response")?;
    Ok(DnsFlow {
        query: dns_message(&query)?,
        timestamp_query: query.opt_time("timestamp")?,
        response: response.as_ref().map(dns_message).transpose()?,
        timestamp_response: response.as_ref().map(|r| r.opt_time("timestamp")).transpose()?.flatten(),
    })
}

fn dns_message(msg: &Obj) -> Result<DnsMessage, FieldError> {
    let bit = |key: &str, shift: u16| -> Result<u16, FieldError> { Ok(u16::from(msg.bool(key)?) << shift) };
    let field = |key: &str, bits: u32, shift: u16| -> Result<u16, FieldError> {
        let v: u16 = msg.int(key)?;
        if u32::from(v) >= 1 << bits {
            return Err(problem(msg.field(key), format!("{v} does not fit in {bits} bits")));
        }
        Ok(v << shift)
    };
    // RFC 1035 section 4.1.1: QR, Opcode, AA, TC, RD, RA, Z, RCODE.
    let flags = (u16::from(!msg.bool("query")?) << 15)
        | field("op_code", 4, 11)?
        | bit("authoritative_answer", 10)?
        | bit("truncation", 9)?
        | bit("recursion_desired", 8)?
        | bit("recursion_available", 7)?
        | field("reserved", 3, 4)?
        | field("response_code", 4, 0)?;
    let mut message = DnsMessage { id: msg.int("id")?, flags, ..DnsMessage::default() };
    for (i, q) in msg.list("questions")?.iter().enumerate() {
        let q = item_obj(msg, "questions", i, q)?;
        message.questions.push(Question {
            name: q.text("name")?.to_owned(),
            record_type: q.int("type")?,
            class: q.int("class_")?,
        });
    }
    for (key, section) in [
        ("answers", &mut message.answers),
        ("authorities", &mut message.authorities),
        ("additionals", &mut message.additionals),
    ] {
        for (i, rr) in msg.list(key)?.iter().enumerate() {
            let rr = item_obj(msg, key, i, rr)?;
            section.push(ResourceRecord {
                name: rr.text("name")?.to_owned(),
                record_type: rr.int("type")?,
                class: rr.int("class_")?,
                ttl: rr.int("ttl")?,
                data: rr.opt_bytes("data")?.unwrap_or_default().to_vec(),
            });
        }
    }
    message.validate().map_err(|e| problem(msg.path.clone(), e.to_string()))?;
    Ok(message)
}

fn item_obj<'a>(parent: &Obj<'a>, key: &str, i: usize, value: &'a Value) -> Result<Obj<'a>, FieldError> {
    let path = format!("{}[{i}]", parent.field(key));
    match value {
        Value::Dict(pairs) => Ok(Obj { pairs, path }),
        other => Err(problem(path, format!("expected a dictionary, found {}", other.type_name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_decode() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_to_der(pem), Ok(Bytes::from_static(&[0, 1, 2, 3])));
        assert!(pem_to_der(b"no block").is_err());
        assert!(pem_to_der(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err());
    }

    #[test]
    fn a_cut_short_file_and_a_bad_version_are_errors_that_say_where() {
        let mut reader = Reader::new(&b"100:7:version;2:21#"[..]);
        let err = reader.next().expect("an item").expect_err("cut short");
        assert_eq!(err.to_string(), "mitmproxy flow file cut short: the flow at offset 0 ends after 19 of 105 bytes");
        assert!(reader.next().is_none());
        let mut reader = Reader::new(&b"15:7:version;2:99#}"[..]);
        let err = reader.next().expect("an item").expect_err("version 99");
        assert_eq!(err.to_string(), "the flow at offset 0 has flow format version 99 (this reader reads 19 to 21)");
        assert!(Reader::new(&b""[..]).next().is_none());
    }
}
