//! flowgate's HTTP/1 wire format, sans-IO: request and response heads parsed with
//! httparse and kept as they were (field order, case, duplicates, the reason phrase),
//! message framing decided by RFC 9112 section 6.3 (strictly for requests, so no request
//! is smuggled past an upstream that frames differently), chunked bodies decoded and
//! encoded, and fields written back from the flow model. No IO: the network layer feeds
//! bytes in and writes what comes out. A crate of its own so the fuzzer (`fuzz/`) builds
//! it without the rest of the proxy.

use bytes::{Buf, Bytes, BytesMut};
use flowgate_flow::{Headers, HttpVersion};

/// Limits on a head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most header fields.
    pub max_headers: usize,
    /// Most bytes of the whole head (start line, fields, the empty line).
    pub max_head_bytes: usize,
}

/// Why a head or a body is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not HTTP/1 syntax.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// `request head`, `response head`, `chunk size`...
        what: &'static str,
        /// What httparse or the framing check said.
        detail: String,
    },
    /// More fields than `max_headers`.
    #[error("more than {0} header fields (max_headers)")]
    TooManyFields(usize),
    /// A head larger than the bound.
    #[error("head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// Framing that a proxy must not guess at (RFC 9112 section 6.3).
    #[error("{0}")]
    Framing(String),
}

impl WireError {
    /// The status a client gets for its request head failing this way.
    pub fn status(&self) -> u16 {
        match self {
            WireError::TooManyFields(_) | WireError::HeadTooLarge(_) => 431,
            _ => 400,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, a token.
    pub method: String,
    /// The request target as sent (origin, absolute, authority or asterisk form).
    pub target: String,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: HttpVersion,
    /// Header fields as on the wire.
    pub headers: Headers,
    /// How the body is delimited.
    pub framing: Framing,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent (may be empty).
    pub reason: String,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: HttpVersion,
    /// Header fields as on the wire.
    pub headers: Headers,
    /// How the body is delimited.
    pub framing: Framing,
}

impl ResponseHead {
    /// The flow model's response for this head (no body yet).
    pub fn into_response(self) -> flowgate_flow::Response {
        flowgate_flow::Response {
            status: self.status,
            reason: self.reason,
            version: self.version,
            headers: self.headers,
            ..flowgate_flow::Response::default()
        }
    }
}

/// Header slots tried on the stack before a head with more fields gets a heap array.
const STACK_FIELDS: usize = 64;

fn version_of(minor: Option<u8>) -> HttpVersion {
    if minor == Some(0) { HttpVersion::Http10 } else { HttpVersion::Http11 }
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> WireError {
    WireError::Malformed { what, detail: e.to_string() }
}

fn to_headers(what: &'static str, fields: &[httparse::Header<'_>]) -> Result<Headers, WireError> {
    let size = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
    let mut headers = Headers::with_capacity(fields.len(), size);
    for h in fields {
        headers.append(h.name, h.value).map_err(|e| malformed(what, e))?;
    }
    Ok(headers)
}

/// Whether `buf` holds the end of a head (an empty line, CRLF or bare LF), looking only
/// from `from` on (less 2 bytes, for an end split across reads): callers remember how far
/// they looked, so a head that arrives a byte at a time is not parsed again per byte.
pub fn has_head_end(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    let tail = &buf[start.min(buf.len())..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// Parses a request head at the start of `buf`: `Ok(None)` if more bytes are needed,
/// else the head and its length in bytes.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Option<(RequestHead, usize)>, WireError> {
    with_fields(limits, |fields| {
        let mut request = httparse::Request::new(fields);
        let Some(len) = head_len(request.parse(buf), buf, limits, "request head")? else { return Ok(None) };
        let method = request.method.unwrap_or_default().to_owned();
        let target = request.path.unwrap_or_default().to_owned();
        let version = version_of(request.version);
        let headers = to_headers("request head", request.headers)?;
        // RFC 9112 section 3.2: a server answers 400 to a request with more than one Host.
        if headers.get_all("host").nth(1).is_some() {
            return Err(WireError::Framing("more than one Host field".into()));
        }
        let framing = request_framing(&method, &headers)?;
        Ok(Some((RequestHead { method, target, version, headers, framing }, len)))
    })
}

/// Parses a response head at the start of `buf`; `method` is the request's (a HEAD
/// answer has no body).
pub fn parse_response(buf: &[u8], limits: Limits, method: &str) -> Result<Option<(ResponseHead, usize)>, WireError> {
    with_fields(limits, |fields| {
        let mut response = httparse::Response::new(fields);
        // Robust to what servers send in the wild: a space before the colon.
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        let parsed = config.parse_response(&mut response, buf);
        let Some(len) = head_len(parsed, buf, limits, "response head")? else { return Ok(None) };
        let status = response.code.unwrap_or_default();
        let reason = response.reason.unwrap_or_default().to_owned();
        let version = version_of(response.version);
        let headers = to_headers("response head", response.headers)?;
        let framing = response_framing(method, status, &headers)?;
        Ok(Some((ResponseHead { status, reason, version, headers, framing }, len)))
    })
}

/// Runs `parse` with header slots on the stack, and again with `max_headers` slots on the
/// heap if the head has more fields than the stack holds.
fn with_fields<'b, T>(
    limits: Limits,
    mut parse: impl FnMut(&mut [httparse::Header<'b>]) -> Result<T, WireError>,
) -> Result<T, WireError> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    let slots = STACK_FIELDS.min(limits.max_headers);
    match parse(&mut stack[..slots]) {
        Err(WireError::TooManyFields(_)) if limits.max_headers > STACK_FIELDS => {
            parse(&mut vec![httparse::EMPTY_HEADER; limits.max_headers])
        }
        other => other,
    }
}

/// What httparse said of a head, with the limits applied: its length once complete,
/// `None` while more may come, and 431's errors past `max_headers` or `max_head_bytes`.
fn head_len(
    parsed: httparse::Result<usize>,
    buf: &[u8],
    limits: Limits,
    what: &'static str,
) -> Result<Option<usize>, WireError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > limits.max_head_bytes => {
            Err(WireError::HeadTooLarge(limits.max_head_bytes))
        }
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            Err(WireError::HeadTooLarge(limits.max_head_bytes))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(WireError::TooManyFields(limits.max_headers)),
        Err(e) => Err(malformed(what, e)),
    }
}

/// The value of every `Content-Length` field, if they agree (`1, 1` is one length).
fn content_length(headers: &Headers) -> Result<Option<u64>, WireError> {
    let mut length = None;
    for value in headers.get_all("content-length") {
        let text = std::str::from_utf8(value).map_err(|_| WireError::Framing("invalid Content-Length".into()))?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WireError::Framing(format!("invalid Content-Length {text:?}")));
            }
            let n: u64 = part.parse().map_err(|_| WireError::Framing(format!("invalid Content-Length {text:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Framing("conflicting Content-Length values".into()));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The transfer codings, lowercase and comma-joined, if any field names them.
fn transfer_encoding(headers: &Headers) -> Option<String> {
    let mut all: Option<String> = None;
    for value in headers.get_all("transfer-encoding") {
        let text = String::from_utf8_lossy(value).to_ascii_lowercase();
        all = Some(match all {
            Some(before) => format!("{before}, {text}"),
            None => text,
        });
    }
    all
}

/// The transfer codings of a message other than its final `chunked` (`gzip` for
/// `gzip, chunked`; empty for `chunked`), if it has any `Transfer-Encoding`: a proxy
/// re-chunks the body for the next hop and keeps the other codings' label.
pub fn transfer_codings(headers: &Headers) -> Option<String> {
    let all = transfer_encoding(headers)?;
    let mut codings: Vec<&str> = all.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    if codings.last() == Some(&"chunked") {
        codings.pop();
    }
    Some(codings.join(", "))
}

/// The `Transfer-Encoding` value for a body that goes out chunked with `codings`.
pub fn chunked_with(codings: &str) -> Vec<u8> {
    if codings.is_empty() { b"chunked".to_vec() } else { format!("{codings}, chunked").into_bytes() }
}

fn ends_in_chunked(codings: &str) -> bool {
    codings.rsplit(',').next().map(str::trim) == Some("chunked")
}

/// A request's framing (RFC 9112 section 6.3), strictly: both `Content-Length` and
/// `Transfer-Encoding`, lengths that disagree, or codings that do not end in `chunked`
/// are refused, as a proxy in front of a server that frames differently smuggles them.
pub fn request_framing(method: &str, headers: &Headers) -> Result<Framing, WireError> {
    let length = content_length(headers)?;
    match (transfer_encoding(headers), length) {
        (Some(_), Some(_)) => Err(WireError::Framing("both Content-Length and Transfer-Encoding".into())),
        (Some(_), None) if method == "CONNECT" => Err(WireError::Framing("CONNECT with a body".into())),
        (Some(te), None) if ends_in_chunked(&te) => Ok(Framing::Chunked),
        (Some(te), None) => Err(WireError::Framing(format!("Transfer-Encoding {te:?} does not end in chunked"))),
        (None, Some(0)) | (None, None) => Ok(Framing::None),
        (None, Some(n)) if method == "CONNECT" => Err(WireError::Framing(format!("CONNECT with a body of {n} bytes"))),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// A response's framing (RFC 9112 section 6.3): none for HEAD, 1xx, 204 and 304;
/// chunked, a length, or until close.
pub fn response_framing(method: &str, status: u16, headers: &Headers) -> Result<Framing, WireError> {
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    if let Some(te) = transfer_encoding(headers) {
        return Ok(if ends_in_chunked(&te) { Framing::Chunked } else { Framing::Close });
    }
    Ok(match content_length(headers)? {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// What a body decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields after a chunked body (never empty).
    Trailers(Headers),
    /// The body has ended.
    End,
}

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Length(u64),
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Close,
    Done,
}

/// Decodes a body of a given framing from bytes as they arrive.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    /// A decoder for a body of `framing`.
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece from `buf` (consuming what it used), or `None` if more bytes are
    /// needed. `eof` says the connection has closed: the end of a close-delimited body, an
    /// error for any other.
    pub fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Option<Piece>, WireError> {
        loop {
            match self.state {
                State::Done => return Ok(Some(Piece::End)),
                State::Length(left) | State::Data(left) => {
                    if buf.is_empty() {
                        return if eof { Err(truncated()) } else { Ok(None) };
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = match (&self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::DataEnd,
                        (_, l) => State::Data(l),
                    };
                    return Ok(Some(Piece::Data(data)));
                }
                State::Close => {
                    if buf.is_empty() {
                        if eof {
                            self.state = State::Done;
                            continue;
                        }
                        return Ok(None);
                    }
                    let all = buf.len();
                    return Ok(Some(Piece::Data(buf.split_to(all).freeze())));
                }
                State::Size => {
                    let Some(end) = line_end(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(malformed("chunk size", "line too long"));
                        }
                        return if eof { Err(truncated()) } else { Ok(None) };
                    };
                    let size = parse_chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return if eof { Err(truncated()) } else { Ok(None) };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("chunk", "data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        continue;
                    }
                    let mut fields = [httparse::EMPTY_HEADER; STACK_FIELDS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let trailers = to_headers("trailers", fields)?;
                            buf.advance(len);
                            self.state = State::Done;
                            return Ok(Some(Piece::Trailers(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            return Err(malformed("trailers", "section too large"));
                        }
                        Ok(httparse::Status::Partial) => {
                            return if eof { Err(truncated()) } else { Ok(None) };
                        }
                        Err(e) => return Err(malformed("trailers", e)),
                    }
                }
            }
        }
    }
}

fn truncated() -> WireError {
    malformed("body", "the connection closed before the body ended")
}

fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = digits.strip_suffix(b" ").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed("chunk size", format!("{:?}", String::from_utf8_lossy(line))));
    }
    let text = std::str::from_utf8(digits).map_err(|e| malformed("chunk size", e))?;
    u64::from_str_radix(text, 16).map_err(|e| malformed("chunk size", e))
}

/// Header fields that describe one hop and are not forwarded: RFC 9110 section 7.6.1's,
/// the proxy ones, and the framing fields (each hop frames for itself).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Fields a `Connection` token cannot make hop-by-hop: the ones that frame the message
/// and name its target. (`Connection: content-length` would otherwise send a body with
/// no length: a request smuggled inside it.)
const NEVER_HOP: &[&str] = &["host", "content-length"];

/// Whether a field is hop-by-hop: in [`HOP_BY_HOP`] or named by `Connection` (never
/// Host or Content-Length).
pub fn is_hop_by_hop(name: &str, connection: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (connection.iter().any(|c| name.eq_ignore_ascii_case(c))
            && !NEVER_HOP.iter().any(|n| name.eq_ignore_ascii_case(n)))
}

/// The lowercase tokens of every `Connection` field.
pub fn connection_tokens(headers: &Headers) -> Vec<String> {
    headers
        .get_all("connection")
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a peer asked to keep the connection after this message.
pub fn keeps_alive(version: HttpVersion, headers: &Headers) -> bool {
    let tokens = connection_tokens(headers);
    match version {
        HttpVersion::Http10 => tokens.iter().any(|t| t == "keep-alive"),
        _ => !tokens.iter().any(|t| t == "close"),
    }
}

/// Appends `name: value\r\n`.
pub fn put_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the end-to-end fields of `headers` in order, as they are (hop-by-hop ones
/// left out, and `Content-Length` when there is a `Transfer-Encoding`: RFC 9112 section
/// 6.3 has a proxy remove it). With `join_cookies` the `cookie` fields become one, joined
/// by `; ` at the first one's place (RFC 9113 section 8.2.3: HTTP/2 and HTTP/3 split them).
pub fn put_fields(out: &mut Vec<u8>, headers: &Headers, join_cookies: bool) {
    let connection = connection_tokens(headers);
    let coded = headers.contains("transfer-encoding");
    let mut cookies_done = false;
    for (name, value) in headers.iter() {
        if is_hop_by_hop(name, &connection) || (coded && name.eq_ignore_ascii_case("content-length")) {
            continue;
        }
        if join_cookies && name.eq_ignore_ascii_case("cookie") {
            if std::mem::replace(&mut cookies_done, true) {
                continue;
            }
            let joined: Vec<&[u8]> = headers.get_all("cookie").collect();
            put_field(out, name, &joined.join(&b"; "[..]));
            continue;
        }
        put_field(out, name, value);
    }
}

/// Appends one chunk of a chunked body.
pub fn put_chunk_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
}

/// Appends the last chunk, the trailer fields and the end of the body.
pub fn put_last_chunk(out: &mut Vec<u8>, trailers: Option<&Headers>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        // RFC 9110 section 6.5.1: no framing, routing or hop-by-hop fields in a trailer.
        let connection = connection_tokens(trailers);
        for (name, value) in trailers.iter() {
            let banned = ["host", "content-length", "trailer"].iter().any(|n| name.eq_ignore_ascii_case(n));
            if !banned && !is_hop_by_hop(name, &connection) {
                put_field(out, name, value);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
