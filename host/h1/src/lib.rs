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
    Headers::from_pairs(fields.iter().map(|h| (h.name, h.value))).map_err(|e| malformed(what, e))
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
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    match parse_request_in(buf, limits, &mut stack) {
        Err(WireError::TooManyFields(_)) if limits.max_headers > STACK_FIELDS => {
            let mut heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
            parse_request_in(buf, limits, &mut heap)
        }
        other => other,
    }
}

fn parse_request_in<'b>(
    buf: &'b [u8],
    limits: Limits,
    fields: &mut [httparse::Header<'b>],
) -> Result<Option<(RequestHead, usize)>, WireError> {
    let slots = fields.len().min(limits.max_headers);
    let mut request = httparse::Request::new(&mut fields[..slots]);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(WireError::HeadTooLarge(limits.max_head_bytes));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyFields(limits.max_headers)),
        Err(e) => return Err(malformed("request head", e)),
    };
    if len > limits.max_head_bytes {
        return Err(WireError::HeadTooLarge(limits.max_head_bytes));
    }
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
}

/// Parses a response head at the start of `buf`; `method` is the request's (a HEAD
/// answer has no body).
pub fn parse_response(buf: &[u8], limits: Limits, method: &str) -> Result<Option<(ResponseHead, usize)>, WireError> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    match parse_response_in(buf, limits, method, &mut stack) {
        Err(WireError::TooManyFields(_)) if limits.max_headers > STACK_FIELDS => {
            let mut heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
            parse_response_in(buf, limits, method, &mut heap)
        }
        other => other,
    }
}

fn parse_response_in<'b>(
    buf: &'b [u8],
    limits: Limits,
    method: &str,
    fields: &mut [httparse::Header<'b>],
) -> Result<Option<(ResponseHead, usize)>, WireError> {
    let slots = fields.len().min(limits.max_headers);
    let mut response = httparse::Response::new(&mut fields[..slots]);
    // Robust to what servers send in the wild: a space before the colon.
    let mut config = httparse::ParserConfig::default();
    config.allow_spaces_after_header_name_in_responses(true);
    let len = match config.parse_response(&mut response, buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(WireError::HeadTooLarge(limits.max_head_bytes));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyFields(limits.max_headers)),
        Err(e) => return Err(malformed("response head", e)),
    };
    if len > limits.max_head_bytes {
        return Err(WireError::HeadTooLarge(limits.max_head_bytes));
    }
    let status = response.code.unwrap_or_default();
    let reason = response.reason.unwrap_or_default().to_owned();
    let version = version_of(response.version);
    let headers = to_headers("response head", response.headers)?;
    let framing = response_framing(method, status, &headers)?;
    Ok(Some((ResponseHead { status, reason, version, headers, framing }, len)))
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
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_headers: 300, max_head_bytes: 64 << 10 };

    fn fields(h: &Headers) -> Vec<(String, String)> {
        h.iter().map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned())).collect()
    }

    /// Every split of `input` into two reads gives the same result as reading it whole.
    fn request_at_every_split(input: &[u8]) -> Result<Option<(RequestHead, usize)>, WireError> {
        let whole = parse_request(input, LIMITS);
        for cut in 0..input.len() {
            match parse_request(&input[..cut], LIMITS) {
                Ok(None) => {}
                // A prefix may be invalid only if the whole is.
                Err(e) => assert!(whole.is_err(), "prefix of {cut} bytes failed ({e}) but the whole did not"),
                Ok(Some((_, len))) => assert!(len <= cut),
            }
        }
        whole
    }

    #[test]
    fn request_heads_keep_order_case_and_duplicates() {
        let raw = b"GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\nX-Order-A: 1\r\nX-Dup: one\r\ncookie: a=1\r\nX-Order-B: 2\r\nx-dup: two\r\nCookie: b=2\r\n\r\nrest";
        let (head, len) = request_at_every_split(raw).expect("valid").expect("complete");
        assert_eq!(len, raw.len() - 4);
        assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "http://a.example/x?y"));
        assert_eq!(head.version, HttpVersion::Http11);
        assert_eq!(head.framing, Framing::None);
        let want = [
            ("Host", "a.example"),
            ("X-Order-A", "1"),
            ("X-Dup", "one"),
            ("cookie", "a=1"),
            ("X-Order-B", "2"),
            ("x-dup", "two"),
            ("Cookie", "b=2"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect();
        assert_eq!(fields(&head.headers), want);
    }

    #[test]
    fn request_framing_table() {
        let cases: &[(&str, Result<Framing, &str>)] = &[
            ("Content-Length: 5", Ok(Framing::Length(5))),
            ("Content-Length: 5, 5", Ok(Framing::Length(5))),
            ("Content-Length: 0", Ok(Framing::None)),
            ("Transfer-Encoding: chunked", Ok(Framing::Chunked)),
            ("Transfer-Encoding: gzip, chunked", Ok(Framing::Chunked)),
            ("Content-Length: 4\r\nTransfer-Encoding: chunked", Err("both Content-Length and Transfer-Encoding")),
            ("Content-Length: 1\r\nContent-Length: 2", Err("conflicting Content-Length values")),
            ("Content-Length: +1", Err("invalid Content-Length \"+1\"")),
            ("Content-Length: 99999999999999999999", Err("invalid Content-Length \"99999999999999999999\"")),
            ("Transfer-Encoding: chunked, gzip", Err("Transfer-Encoding \"chunked, gzip\" does not end in chunked")),
            ("Transfer-Encoding: gzip", Err("Transfer-Encoding \"gzip\" does not end in chunked")),
        ];
        for (field, want) in cases {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\n{field}\r\n\r\n");
            let got = request_at_every_split(raw.as_bytes()).map(|h| h.expect("complete").0.framing);
            assert_eq!(got.map_err(|e| e.to_string()), want.map_err(str::to_owned), "{field}");
        }
    }

    #[test]
    fn malformed_heads_are_refused_with_their_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n", 400),
            (b"HELLO\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let e = parse_request(raw, LIMITS).expect_err("refused");
            assert_eq!(e.status(), *status, "{e}");
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..301 {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many, LIMITS), Err(WireError::TooManyFields(300)));
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'v', 70 << 10));
        assert_eq!(parse_request(&big, LIMITS), Err(WireError::HeadTooLarge(64 << 10)));
        assert_eq!(WireError::HeadTooLarge(1).status(), 431);
    }

    #[test]
    fn many_fields_parse_beyond_the_stack_slots() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            raw.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let (head, _) = parse_request(&raw, LIMITS).expect("valid").expect("complete");
        assert_eq!(head.headers.len(), 300);
        assert_eq!(head.headers.iter().nth(299).map(|(n, _)| n), Some("X-H299"));
    }

    #[test]
    fn response_heads_keep_the_reason_and_framing_follows_status_and_method() {
        let raw = b"HTTP/1.1 299 Fidelity Custom Reason\r\nX-B: 1\r\nSet-Cookie: a\r\nx-a: 2\r\nSet-Cookie: b\r\nContent-Length: 3\r\n\r\nabc";
        let (head, len) = parse_response(raw, LIMITS, "GET").expect("valid").expect("complete");
        assert_eq!(
            (head.status, head.reason.as_str(), head.framing),
            (299, "Fidelity Custom Reason", Framing::Length(3))
        );
        assert_eq!(len, raw.len() - 3);
        assert_eq!(fields(&head.headers)[1], ("Set-Cookie".to_owned(), "a".to_owned()));
        let (head, _) = parse_response(raw, LIMITS, "HEAD").expect("valid").expect("complete");
        assert_eq!(head.framing, Framing::None);
        let cases: &[(&str, u16, &str, Framing)] = &[
            ("GET", 200, "", Framing::Close),
            ("GET", 204, "Content-Length: 5\r\n", Framing::None),
            ("GET", 304, "", Framing::None),
            ("GET", 103, "Link: </a>\r\n", Framing::None),
            ("GET", 200, "Transfer-Encoding: chunked\r\n", Framing::Chunked),
            ("GET", 200, "Transfer-Encoding: gzip\r\n", Framing::Close),
            ("GET", 200, "Content-Length: 0\r\n", Framing::None),
        ];
        for (method, status, field, want) in cases {
            let raw = format!("HTTP/1.1 {status} X\r\n{field}\r\n");
            let (head, _) = parse_response(raw.as_bytes(), LIMITS, method).expect("valid").expect("complete");
            assert_eq!(head.framing, *want, "{status} {field:?}");
        }
        let (head, _) = parse_response(b"HTTP/1.0 200\r\n\r\n", LIMITS, "GET").expect("valid").expect("complete");
        assert_eq!((head.reason.as_str(), head.version), ("", HttpVersion::Http10));
    }

    /// Decodes `input` fed in pieces of `step` bytes.
    fn decode_all(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, Option<Headers>, usize), WireError> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            let eof = fed >= input.len();
            match decoder.decode(&mut buf, eof)? {
                Some(Piece::Data(d)) => data.extend_from_slice(&d),
                Some(Piece::Trailers(t)) => trailers = Some(t),
                Some(Piece::End) => return Ok((data, trailers, buf.len() + input.len() - fed)),
                None => {
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_at_every_step_size() {
        let input = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\nx-t: 2\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (data, trailers, left) = decode_all(Framing::Chunked, input, step).expect("valid");
            assert_eq!(data, b"abc0123456789abcdef", "step {step}");
            assert_eq!(fields(&trailers.expect("trailers")), [("X-T".into(), "1".into()), ("x-t".into(), "2".into())]);
            assert_eq!(left, 4, "NEXT is left for the next message");
        }
        let (data, trailers, left) = decode_all(Framing::Chunked, b"0\r\n\r\n", 1).expect("valid");
        assert!(data.is_empty() && trailers.is_none() && left == 0);
    }

    #[test]
    fn bad_chunks_and_short_bodies_are_errors() {
        for bad in [&b"-1\r\nabc"[..], b"3\r\nabcX\r\n", b"fffffffffffffffff\r\n", b"zz\r\n", b"\r\n"] {
            assert!(decode_all(Framing::Chunked, bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(decode_all(Framing::Chunked, b"3\r\nab", 1).is_err(), "truncated");
        assert!(decode_all(Framing::Length(5), b"abc", 1).is_err(), "truncated");
        let (data, _, left) = decode_all(Framing::Length(3), b"abcdef", 2).expect("valid");
        assert_eq!((data.as_slice(), left), (&b"abc"[..], 3));
        let (data, _, _) = decode_all(Framing::Close, b"until close", 3).expect("valid");
        assert_eq!(data, b"until close");
        let long = format!("1;{}\r\n", "e".repeat(5000));
        assert!(decode_all(Framing::Chunked, long.as_bytes(), 100).is_err(), "chunk line bound");
    }

    #[test]
    fn fields_are_written_back_as_they_were() {
        let headers = Headers::from_pairs([
            ("Host", "a"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("cookie", "a=1"),
            ("X-Dup", "1"),
            ("cookie", "b=2"),
            ("Transfer-Encoding", "chunked"),
            ("X-Dup", "2"),
        ])
        .expect("valid");
        let mut out = Vec::new();
        put_fields(&mut out, &headers, false);
        assert_eq!(String::from_utf8_lossy(&out), "Host: a\r\ncookie: a=1\r\nX-Dup: 1\r\ncookie: b=2\r\nX-Dup: 2\r\n");
        let mut out = Vec::new();
        put_fields(&mut out, &headers, true);
        assert_eq!(String::from_utf8_lossy(&out), "Host: a\r\ncookie: a=1; b=2\r\nX-Dup: 1\r\nX-Dup: 2\r\n");
        // Connection cannot unframe a message or drop its target.
        let sneaky =
            Headers::from_pairs([("Host", "a"), ("Connection", "content-length, host"), ("Content-Length", "3")])
                .expect("valid");
        let mut out = Vec::new();
        put_fields(&mut out, &sneaky, false);
        assert_eq!(String::from_utf8_lossy(&out), "Host: a\r\nContent-Length: 3\r\n");
        let trailers = Headers::from_pairs([("x-sum", "1"), ("Content-Length", "9"), ("Host", "b")]).expect("valid");
        let mut out = Vec::new();
        put_last_chunk(&mut out, Some(&trailers));
        assert_eq!(out, b"0\r\nx-sum: 1\r\n\r\n");
        assert!(has_head_end(b"GET / HTTP/1.1\r\n\r\n", 15) && has_head_end(b"GET /\n\n", 6));
        assert!(!has_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        let mut out = Vec::new();
        put_chunk_header(&mut out, 26);
        put_last_chunk(&mut out, Some(&Headers::from_pairs([("grpc-status", "0")]).expect("valid")));
        assert_eq!(out, b"1a\r\n0\r\ngrpc-status: 0\r\n\r\n");
        assert!(keeps_alive(HttpVersion::Http11, &Headers::new()));
        assert!(!keeps_alive(HttpVersion::Http10, &Headers::new()));
        assert!(keeps_alive(HttpVersion::Http10, &Headers::from_pairs([("Connection", "Keep-Alive")]).expect("v")));
        assert!(!keeps_alive(HttpVersion::Http11, &Headers::from_pairs([("connection", "Close")]).expect("v")));
    }

    /// RFC 9112's MUST cases and the usual smuggling obfuscations (CL.TE, TE.CL, TE.TE,
    /// bare CR and LF, NUL, space before the colon, chunk extensions and sizes). Each is
    /// refused with a status, or read as exactly one request with the framing shown and
    /// the next request found right after it: what goes upstream is written again from
    /// that, so a strict parser there reads the same one request.
    #[test]
    fn compliance_corpus() {
        enum Want {
            Refused(u16),
            One(Framing, &'static [u8]),
        }
        use Want::*;
        const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
        let cases: &[(&str, &[u8], Want)] = &[
            (
                "CL.TE",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
                Refused(400),
            ),
            (
                "TE.CL",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Refused(400),
            ),
            ("TE xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", Refused(400)),
            ("TE quoted", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", Refused(400)),
            (
                "TE then another",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
                Refused(400),
            ),
            (
                "TE chunked, identity",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                Refused(400),
            ),
            (
                "TE space before colon",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
                Refused(400),
            ),
            ("TE folded", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", Refused(400)),
            (
                "TE leading space line",
                b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n",
                Refused(400),
            ),
            (
                "TE tab",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
                One(Framing::Chunked, b""),
            ),
            (
                "TE uppercase",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\na\r\n0\r\n\r\n",
                One(Framing::Chunked, b"a"),
            ),
            (
                "TE gzip, chunked",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
                One(Framing::Chunked, b"ab"),
            ),
            (
                "TE_ is another field",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
                One(Framing::None, b""),
            ),
            (
                "CL leading zero",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 01\r\n\r\na",
                One(Framing::Length(1), b"a"),
            ),
            (
                "CL list agreeing",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\na",
                One(Framing::Length(1), b"a"),
            ),
            ("CL list differing", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", Refused(400)),
            (
                "CL twice differing",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                Refused(400),
            ),
            ("CL negative", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", Refused(400)),
            ("CL hex", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", Refused(400)),
            ("CL with space", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n", Refused(400)),
            ("CL empty", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", Refused(400)),
            (
                "CONNECT with a body",
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 3\r\n\r\nabc",
                Refused(400),
            ),
            (
                "CONNECT chunked",
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n",
                Refused(400),
            ),
            ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refused(400)),
            ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", Refused(400)),
            ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", Refused(400)),
            ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", Refused(400)),
            ("bare CR in the request line", b"GET /\r HTTP/1.1\r\nHost: x\r\n\r\n", Refused(400)),
            ("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", Refused(400)),
            ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", Refused(400)),
            ("bare LF line ends", b"GET / HTTP/1.1\nHost: x\n\n", One(Framing::None, b"")),
            (
                "chunk extension",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"q;r\"\r\nhello\r\n0;z\r\n\r\n",
                One(Framing::Chunked, b"hello"),
            ),
            (
                "chunk size leading zeros",
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n",
                One(Framing::Chunked, b"hello"),
            ),
        ];
        for (what, raw, want) in cases {
            let mut input = raw.to_vec();
            input.extend_from_slice(NEXT);
            match (parse_request(&input, LIMITS), want) {
                (Err(e), Refused(status)) => assert_eq!(e.status(), *status, "{what}: {e}"),
                (Ok(Some((head, len))), One(framing, body)) => {
                    assert_eq!(head.framing, *framing, "{what}");
                    let (got, _, left) = decode_all(head.framing, &input[len..], 1).expect(what);
                    assert_eq!(got.as_slice(), *body, "{what}: body");
                    let rest = &input[input.len() - left..];
                    let next = parse_request(rest, LIMITS).expect(what).expect(what);
                    assert_eq!(
                        (next.0.target.as_str(), next.1),
                        ("/next", NEXT.len()),
                        "{what}: one request, then the next"
                    );
                }
                (got, Refused(status)) => panic!("{what}: want {status}, got {got:?}"),
                (got, One(..)) => panic!("{what}: want one request, got {got:?}"),
            }
        }
        let bad_chunks: &[&[u8]] =
            &[b"+5\r\nhello\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n", b"ffffffffffffffff\r\n", b"5\r\nhello0\r\n\r\n"];
        for chunk in bad_chunks {
            assert!(decode_all(Framing::Chunked, chunk, 1).is_err(), "{:?}", String::from_utf8_lossy(chunk));
        }
    }

    /// Feeds `input` cut at `cuts` through the head parser and the body decoder, as the
    /// network layer does: a head, its body, then the next head.
    fn drive(input: &[u8], cuts: &[usize]) -> (RequestHead, Vec<u8>, Option<Headers>, RequestHead) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(input.len());
        let mut pieces = Vec::new();
        let mut at = 0;
        for cut in cuts {
            pieces.push(&input[at..cut]);
            at = cut;
        }
        let mut pieces = pieces.into_iter();
        let mut buf = BytesMut::new();
        let mut more = |buf: &mut BytesMut| match pieces.next() {
            Some(piece) => {
                buf.extend_from_slice(piece);
                true
            }
            None => false,
        };
        let next_head = |buf: &mut BytesMut, more: &mut dyn FnMut(&mut BytesMut) -> bool| loop {
            if let Some((head, len)) = parse_request(buf, LIMITS).expect("valid head") {
                let _ = buf.split_to(len);
                return head;
            }
            assert!(more(buf), "input ended inside a head");
        };
        let first = next_head(&mut buf, &mut more);
        let mut decoder = Decoder::new(first.framing);
        let (mut body, mut trailers) = (Vec::new(), None);
        loop {
            match decoder.decode(&mut buf, false).expect("valid body") {
                Some(Piece::Data(d)) => body.extend_from_slice(&d),
                Some(Piece::Trailers(t)) => trailers = Some(t),
                Some(Piece::End) => break,
                None => assert!(more(&mut buf), "input ended inside the body"),
            }
        }
        let second = next_head(&mut buf, &mut more);
        (first, body, trailers, second)
    }

    fn field() -> impl proptest::strategy::Strategy<Value = (String, String)> {
        use proptest::prelude::*;
        ("[A-Za-z][A-Za-z0-9-]{0,12}", "[!-~]([ -~]{0,20}[!-~])?")
            .prop_filter("framing fields are the test's own", |(n, _)| {
                !["content-length", "transfer-encoding"].contains(&n.to_ascii_lowercase().as_str())
            })
    }

    proptest::proptest! {
        /// A chunked request with trailers, then the next request, cut anywhere: the
        /// fields come out in order and case, the body and trailers whole, and the next
        /// head is found where it starts.
        #[test]
        fn chunked_requests_survive_any_split(
            fields in proptest::collection::vec(field(), 0..40),
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200), 0..6),
            trailers in proptest::collection::vec(field(), 0..3),
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..12),
        ) {
            let headers = Headers::from_pairs(fields.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))).expect("valid");
            let trailers = Headers::from_pairs(trailers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))).expect("valid");
            let mut raw = b"POST /p?q HTTP/1.1\r\n".to_vec();
            for (name, value) in headers.iter() {
                put_field(&mut raw, name, value);
            }
            put_field(&mut raw, "Transfer-Encoding", b"chunked");
            raw.extend_from_slice(b"\r\n");
            for chunk in &chunks {
                put_chunk_header(&mut raw, chunk.len());
                raw.extend_from_slice(chunk);
                raw.extend_from_slice(b"\r\n");
            }
            put_last_chunk(&mut raw, (!trailers.is_empty()).then_some(&trailers));
            raw.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let (first, body, got_trailers, second) = drive(&raw, &cuts);
            let mut want = headers.clone();
            want.append("Transfer-Encoding", b"chunked").expect("valid");
            proptest::prop_assert_eq!(first.headers, want);
            proptest::prop_assert_eq!(first.framing, Framing::Chunked);
            proptest::prop_assert_eq!(body, chunks.concat());
            proptest::prop_assert_eq!(got_trailers.unwrap_or_default(), trailers);
            proptest::prop_assert_eq!((second.method.as_str(), second.target.as_str()), ("GET", "/next"));
        }
    }
}
