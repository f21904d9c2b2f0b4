//! Strict HTTP/1 request framing, checked before hyper sees the bytes (sans-IO core plus a
//! thin `AsyncRead` wrapper).
//!
//! hyper accepts a request with both `Content-Length` and `Transfer-Encoding` (it reads
//! the body as chunked and closes the connection afterwards, as RFC 9112 §6.3 allows).
//! flowgate is stricter, because a proxy in front of a server that frames differently is
//! how requests get smuggled: a head with both, with conflicting lengths, with a
//! transfer coding that does not end in `chunked`, or with a malformed chunk size is
//! replaced by bytes hyper answers with 400, and nothing of it reaches an upstream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use flowgate_flow::Headers;
use tokio::io::{AsyncRead, ReadBuf};

/// Header fields of each accepted request head, exactly as on the wire (order, case,
/// duplicates), queued for the HTTP service: hyper hands requests over in the same order
/// but keeps neither case nor the interleaving of different names.
#[derive(Clone, Default, Debug)]
pub(crate) struct WireHeads(Arc<Mutex<VecDeque<Headers>>>);

impl WireHeads {
    /// The header fields of the next request hyper hands over.
    pub fn next(&self) -> Option<Headers> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
    }

    fn push(&self, headers: Headers) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push_back(headers);
    }
}

/// The most bytes a request head may have (`max_header_bytes` equivalent for the guard).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// What hyper is given instead of a rejected head: not a valid request line, so hyper
/// answers 400 Bad Request and closes the connection.
const REJECTED: &[u8] = b"\x01 rejected by flowgate\r\n\r\n";

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Inside a body of known length.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// No longer HTTP/1 requests (CONNECT tunnel, protocol upgrade): bytes pass as they are.
    Opaque,
    /// A framing error was found; everything after it is dropped.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    /// Inside chunk data.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd(Vec<u8>),
    /// Reading trailer lines after the last chunk.
    Trailers(Vec<u8>),
}

/// Why a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection(pub String);

/// The sans-IO checker: feed it the client's bytes, get back what hyper may read.
#[derive(Debug)]
pub(crate) struct Framing {
    state: State,
    head: Vec<u8>,
    /// Where accepted heads' header fields go.
    heads: WireHeads,
    /// The reason of the first rejection, for the record.
    pub rejection: Option<Rejection>,
}

impl Framing {
    pub fn new() -> Framing {
        Framing { state: State::Head, head: Vec::new(), heads: WireHeads::default(), rejection: None }
    }

    /// Processes `input`, appending what may be passed on to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::Opaque => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Rejected => return,
                State::Head => {
                    let before = self.head.len();
                    self.head.extend_from_slice(input);
                    let Some(end) = find_head_end(&self.head, before) else {
                        if self.head.len() > MAX_HEAD_BYTES {
                            self.reject(out, "request head too large");
                        }
                        return;
                    };
                    let consumed = end - before;
                    input = &input[consumed..];
                    let head = std::mem::take(&mut self.head);
                    let head = &head[..end];
                    match check_head(head, &self.heads) {
                        Ok(next) => {
                            out.extend_from_slice(head);
                            self.state = next;
                        }
                        Err(reason) => self.reject(out, &reason),
                    }
                }
                State::Body(left) => {
                    let n = (*left).min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..n]);
                    *left -= n as u64;
                    input = &input[n..];
                    if *left == 0 {
                        self.state = State::Head;
                    }
                }
                State::Chunked(chunk) => match chunk {
                    Chunk::Data(left) => {
                        let n = (*left).min(input.len() as u64) as usize;
                        out.extend_from_slice(&input[..n]);
                        *left -= n as u64;
                        input = &input[n..];
                        if *left == 0 {
                            *chunk = Chunk::DataEnd(Vec::new());
                        }
                    }
                    Chunk::DataEnd(seen) => {
                        let b = input[0];
                        input = &input[1..];
                        seen.push(b);
                        out.push(b);
                        if seen.len() == 2 {
                            if seen.as_slice() == b"\r\n" {
                                *chunk = Chunk::Size(Vec::new());
                            } else {
                                self.reject_body(out, "chunk data not followed by CRLF");
                            }
                        }
                    }
                    Chunk::Size(line) | Chunk::Trailers(line) => {
                        let b = input[0];
                        input = &input[1..];
                        line.push(b);
                        out.push(b);
                        if line.len() > 4096 {
                            self.reject_body(out, "chunk size or trailer line too long");
                            continue;
                        }
                        if !line.ends_with(b"\n") {
                            continue;
                        }
                        let is_size = matches!(chunk, Chunk::Size(_));
                        let line = match chunk {
                            Chunk::Size(l) | Chunk::Trailers(l) => std::mem::take(l),
                            _ => unreachable!("matched above"),
                        };
                        if is_size {
                            match parse_chunk_size(&line) {
                                Some(0) => *chunk = Chunk::Trailers(Vec::new()),
                                Some(n) => *chunk = Chunk::Data(n),
                                None => self.reject_body(out, "malformed chunk size"),
                            }
                        } else if line == b"\r\n" {
                            self.state = State::Head;
                        } else if !line.ends_with(b"\r\n") {
                            self.reject_body(out, "trailer line without CRLF");
                        }
                    }
                },
            }
        }
    }

    fn reject(&mut self, out: &mut Vec<u8>, reason: &str) {
        self.rejection.get_or_insert(Rejection(reason.to_owned()));
        out.extend_from_slice(REJECTED);
        self.state = State::Rejected;
    }

    /// A framing error inside a body: the head already went on, so give hyper a chunk size
    /// it rejects too, which aborts the body (the upstream never gets a complete request).
    fn reject_body(&mut self, out: &mut Vec<u8>, reason: &str) {
        self.rejection.get_or_insert(Rejection(reason.to_owned()));
        out.extend_from_slice(b"\r\nzz\r\n");
        self.state = State::Rejected;
    }
}

fn find_head_end(buf: &[u8], searched: usize) -> Option<usize> {
    let start = searched.saturating_sub(3);
    buf[start..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| start + i + 4)
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Checks one request head and says how its body is framed.
fn check_head(head: &[u8], heads: &WireHeads) -> Result<State, String> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".to_owned()),
        // hyper would reject these too (with 400 or 431); let it say so.
        Err(_) => return Ok(State::Head),
    }
    let wire = Headers::from_pairs(request.headers.iter().map(|h| (h.name, h.value)));
    if request.method == Some("CONNECT") {
        if let Ok(wire) = wire {
            heads.push(wire);
        }
        return Ok(State::Opaque);
    }
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<String> = None;
    let mut upgrade = false;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| "invalid Content-Length".to_owned())?;
            for part in text.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("invalid Content-Length {text:?}"));
                }
                let n: u64 = part.parse().map_err(|_| format!("invalid Content-Length {text:?}"))?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length values".to_owned());
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let text = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            transfer_encoding = Some(match transfer_encoding {
                Some(before) => format!("{before}, {text}"),
                None => text,
            });
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let next = match (&transfer_encoding, length) {
        (Some(_), Some(_)) => return Err("both Content-Length and Transfer-Encoding".to_owned()),
        (Some(te), None) => {
            if te.rsplit(',').next().map(str::trim) != Some("chunked") {
                return Err(format!("Transfer-Encoding {te:?} does not end in chunked"));
            }
            State::Chunked(Chunk::Size(Vec::new()))
        }
        (None, Some(0)) | (None, None) => State::Head,
        (None, Some(n)) => State::Body(n),
    };
    if let Ok(wire) = wire {
        heads.push(wire);
    }
    // After an upgrade the connection may stop being HTTP/1; we do not see the response,
    // so stop checking once the request's own body is through.
    if upgrade && next == State::Head {
        return Ok(State::Opaque);
    }
    Ok(next)
}

/// Client IO whose reads pass through [`Framing`].
pub(crate) struct Guarded<IO> {
    inner: IO,
    framing: Framing,
    pending: Vec<u8>,
    offset: usize,
}

impl<IO> Guarded<IO> {
    pub fn new(inner: IO) -> Self {
        Guarded { inner, framing: Framing::new(), pending: Vec::new(), offset: 0 }
    }

    /// The queue of accepted heads' wire header fields.
    pub fn heads(&self) -> WireHeads {
        self.framing.heads.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.offset < self.pending.len() {
                let n = (self.pending.len() - self.offset).min(out.remaining());
                let start = self.offset;
                out.put_slice(&self.pending[start..start + n]);
                self.offset += n;
                return Poll::Ready(Ok(()));
            }
            if self.framing.state == State::Rejected {
                return Poll::Ready(Ok(()));
            }
            let mut buf = [0u8; 16 << 10];
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    if filled.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let this = &mut *self;
                    this.pending.clear();
                    this.offset = 0;
                    this.framing.feed(filled, &mut this.pending);
                    if this.framing.state != State::Rejected && this.pending.is_empty() {
                        continue;
                    }
                }
                other => return other,
            }
        }
    }
}

forward_async_write!(Guarded);

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one byte at a time and whole; both must agree.
    fn check(input: &str, expect_out: &str, expect_rejection: Option<&str>) {
        for bytewise in [false, true] {
            let mut f = Framing::new();
            let mut out = Vec::new();
            if bytewise {
                for b in input.as_bytes() {
                    f.feed(std::slice::from_ref(b), &mut out);
                }
            } else {
                f.feed(input.as_bytes(), &mut out);
            }
            assert_eq!(String::from_utf8_lossy(&out), expect_out, "bytewise={bytewise}");
            assert_eq!(f.rejection.map(|r| r.0).as_deref(), expect_rejection, "bytewise={bytewise}");
        }
    }

    const REJ: &str = "\u{1} rejected by flowgate\r\n\r\n";

    #[test]
    fn passes_well_framed_requests() {
        let two = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\n\r\n";
        check(two, two, None);
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut f = Framing::new();
        f.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\naccept: */*\r\nX-DUP: 2\r\n\r\n", &mut Vec::new());
        let wire = f.heads.next().expect("queued");
        let fields: Vec<(&str, &[u8])> = wire.iter().collect();
        assert_eq!(fields, [("Host", &b"a"[..]), ("X-Dup", b"1"), ("accept", b"*/*"), ("X-DUP", b"2")]);
        check(chunked, chunked, None);
        let connect = "CONNECT x:443 HTTP/1.1\r\n\r\n\u{16}\u{3}\u{1}anything";
        check(connect, connect, None);
        check(
            "POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
            "POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
            None,
        );
    }

    #[test]
    fn rejects_smuggling_heads() {
        check(
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            REJ,
            Some("both Content-Length and Transfer-Encoding"),
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            REJ,
            Some("conflicting Content-Length values"),
        );
        check("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na", REJ, Some("invalid Content-Length \"+1\""));
        check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            REJ,
            Some("Transfer-Encoding \"chunked, gzip\" does not end in chunked"),
        );
    }

    #[test]
    fn rejects_bad_chunks_inside_the_body() {
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        check(&format!("{head}-1\r\nabc"), &format!("{head}-1\r\n\r\nzz\r\n"), Some("malformed chunk size"));
        check(
            &format!("{head}3\r\nabcX\r\n"),
            &format!("{head}3\r\nabcX\r\r\nzz\r\n"),
            Some("chunk data not followed by CRLF"),
        );
        check(
            &format!("{head}fffffffffffffffff\r\n"),
            &format!("{head}fffffffffffffffff\r\n\r\nzz\r\n"),
            Some("malformed chunk size"),
        );
    }
}
