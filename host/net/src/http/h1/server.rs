//! The HTTP/1.x layer on the client side, on [`codec`](super::codec): one request at a
//! time (pipelined ones wait their turn), each an [`exchange`](crate::http::exchange);
//! its body is read from the connection while the exchange runs and while the response
//! is written, interim responses are written as they come, and the layer ends with a
//! switch when a CONNECT or an `Upgrade: h2c` hands the connection on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use flowgate_flow::{HttpVersion, Request, Response, Scheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::client::{header_map, write_body};
use crate::conn::{BoxIo, ConnCtx, Next};
use crate::http::connect::{self, Answer};
use crate::http::exchange::{self, Inbound, Reply, canonical_reason, status_response};
use crate::http::{full, h2};
use crate::layer::Stage;
use crate::tls::Prefixed;
use crate::upstream::{Body, BoxError, Target};
use flowgate_h1::{self as codec, Decoder, Framing, Limits, Piece, RequestHead};

/// The largest request head accepted (a larger one gets 431).
pub(crate) const MAX_HEAD_BYTES: usize = 64 << 10;

/// Serves HTTP/1.x requests on `io` until the client leaves, an error closes the
/// connection, or a request hands the connection on.
pub(crate) async fn serve<IO>(ctx: Arc<ConnCtx>, io: IO, fixed: Option<Target>) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io: BoxIo = Box::new(io);
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = BytesMut::new();
    let opts = &ctx.proxy.options;
    let limits = Limits { max_headers: opts.max_headers, max_head_bytes: MAX_HEAD_BYTES };
    loop {
        if buf.is_empty() {
            // Between requests an idle connection keeps no buffer (read_head makes one
            // when the next request starts to arrive).
            buf = BytesMut::new();
        }
        // Shutting down, a connection waiting for its next request closes.
        let idle = buf.is_empty();
        let read = tokio::select! {
            read = tokio::time::timeout(opts.header_read_timeout, read_head(&mut rd, &mut buf, limits)) => read,
            () = ctx.proxy.closed(), if idle => return Next::Done,
        };
        let head = match read {
            Err(_) => {
                tracing::debug!(
                    "{}: no request head within {:?} (header_read_timeout)",
                    ctx.client,
                    opts.header_read_timeout
                );
                return Next::Done;
            }
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return Next::Done,
            Ok(Err(e)) => {
                // Shown by default, as mitmdump shows a bad request line: no flow records it.
                tracing::warn!("{}: refused request: {e} (answered {})", ctx.client, e.status());
                let _ = write_reply(&mut wr, status_response(e.status(), &e.to_string()), To::closing("GET")).await;
                return Next::Done;
            }
        };
        let RequestHead { method, target, version, mut headers, framing } = head;
        // RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding is framed in
        // doubt; the connection closes after it.
        let keep_alive = codec::keeps_alive(version, &headers)
            && !(version == HttpVersion::Http10 && headers.contains("transfer-encoding"));
        if method == "CONNECT" && fixed.is_none() {
            let Some((host, port)) = authority_of(&target) else {
                tracing::warn!(
                    "{}: refused request: CONNECT needs host:port, got {target:?} (answered 400)",
                    ctx.client
                );
                let _ =
                    write_reply(&mut wr, status_response(400, "CONNECT needs host:port"), To::closing(&method)).await;
                return Next::Done;
            };
            let request = Request {
                method: method.clone(),
                scheme: Scheme::Https,
                host,
                port,
                path: "/".to_owned(),
                version,
                headers,
                ..Request::default()
            };
            match connect::connect(&ctx, request).await {
                Err(_killed) => return Next::Done,
                Ok(Answer::Tunnel(stage)) => {
                    if wr.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err()
                        || wr.flush().await.is_err()
                    {
                        return Next::Done;
                    }
                    return switch(stage, rd, wr, buf);
                }
                Ok(Answer::Reply(reply)) => {
                    match write_reply(&mut wr, reply, To { method: &method, version, close: !keep_alive }).await {
                        Ok(true) if keep_alive => continue,
                        _ => return Next::Done,
                    }
                }
            }
        }
        let (scheme, authority, path) = match request_target(&method, &target) {
            Ok(parts) => parts,
            Err(message) => {
                tracing::warn!("{}: refused request: {message} (answered 400)", ctx.client);
                let _ = write_reply(&mut wr, status_response(400, &message), To::closing(&method)).await;
                return Next::Done;
            }
        };
        if opts.http2 && framing == Framing::None && h2::wants_h2c_upgrade(&headers) {
            let authority = authority
                .clone()
                .or_else(|| headers.get_str("host").map(str::to_owned))
                .or_else(|| fixed.as_ref().map(|t| t.scheme.authority(&t.host, t.port)))
                .unwrap_or_default();
            let scheme = match (&fixed, &scheme) {
                (Some(t), _) => t.scheme.as_str().to_owned(),
                (None, Some(s)) => s.to_ascii_lowercase(),
                (None, None) => "http".to_owned(),
            };
            let fields = h2::stream_one_fields(&method, &scheme, &authority, &path, &headers);
            let upgraded = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
            if wr.write_all(upgraded).await.is_err() || wr.flush().await.is_err() {
                return Next::Done;
            }
            return switch(Stage::UpgradedH2c { fields, fixed }, rd, wr, buf);
        }
        // Expect: 100-continue is answered here, so plugins see the body before the
        // upstream does (as mitmproxy does).
        if framing != Framing::None
            && headers.get("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
            && version == HttpVersion::Http11
        {
            headers.remove("expect");
            if wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() || wr.flush().await.is_err() {
                return Next::Done;
            }
        }
        let (body, mut feeder) = Feeder::new(framing);
        let request = Request { method: method.clone(), path, version, headers, ..Request::default() };
        let inbound = Inbound { request, scheme, authority, body };
        // 1xx responses go to HTTP/1.1 clients only (RFC 9110 section 15.2).
        let (interim_tx, mut interim_rx) = tokio::sync::mpsc::channel::<Box<Response>>(8);
        let interim = (version == HttpVersion::Http11).then_some(interim_tx);
        let exchange = exchange::handle(ctx.clone(), inbound, fixed.clone(), interim);
        let mut exchange = std::pin::pin!(exchange);
        let reply = loop {
            tokio::select! {
                reply = &mut exchange => break reply,
                Some(interim) = interim_rx.recv() => {
                    if write_interim(&mut wr, &interim).await.is_err() {
                        return Next::Done;
                    }
                }
                () = feeder.step(&mut rd, &mut buf), if feeder.wants() => {}
            }
        };
        // Interim responses that came just before the final one still go first.
        while let Ok(interim) = interim_rx.try_recv() {
            if write_interim(&mut wr, &interim).await.is_err() {
                return Next::Done;
            }
        }
        let Ok(mut reply) = reply else { return Next::Done };
        if let Some(start) = reply.upgrade.take() {
            // A WebSocket: the 101 goes out, then the connection is the WebSocket layer's.
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
            codec::put_fields(&mut out, &reply.response.headers, false);
            codec::put_field(&mut out, "Connection", b"Upgrade");
            codec::put_field(&mut out, "Upgrade", b"websocket");
            out.extend_from_slice(b"\r\n");
            if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() {
                return Next::Done;
            }
            let client = crate::websocket::Side { io: rd.unsplit(wr), buf };
            crate::websocket::run(ctx.clone(), *start, client).await;
            return Next::Done;
        }
        let close = !keep_alive || feeder.failed || ctx.proxy.is_closing();
        // The rest of the request body keeps coming while the response goes out.
        let wrote = {
            let write = write_reply(&mut wr, reply, To { method: &method, version, close });
            let mut write = std::pin::pin!(write);
            loop {
                tokio::select! {
                    wrote = &mut write => break wrote,
                    () = feeder.step(&mut rd, &mut buf), if feeder.wants() => {}
                }
            }
        };
        if let Err(e) = &wrote {
            tracing::debug!("{}: writing the response failed: {e}", ctx.client);
        }
        let reusable = matches!(wrote, Ok(true)) && !close && feeder.drain(&mut buf);
        if !reusable {
            if wrote.is_ok() && feeder.unread() {
                linger(rd, wr).await;
            }
            return Next::Done;
        }
    }
}

/// How long a connection answered before its request body ended is read from (and what
/// is read dropped) after the answer, before it is closed.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes a connection whose client may still be sending a request body nobody reads (a
/// 413 or 503 answered early, a plugin's local answer) without losing the answer: closing
/// a socket with unread bytes sends a reset, and a reset can destroy the answer before the
/// client reads it. So the write side is shut, and what comes is read and dropped until
/// the client closes or [`LINGER_TIME`] passes (nginx's lingering close).
async fn linger(mut rd: ReadHalf<BoxIo>, mut wr: WriteHalf<BoxIo>) {
    let _ = wr.shutdown().await;
    let mut scratch = [0u8; 8 << 10];
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The connection goes on at `stage`, with what was read past the request.
fn switch(stage: Stage, rd: ReadHalf<BoxIo>, wr: WriteHalf<BoxIo>, buf: BytesMut) -> Next {
    Next::Switch(stage, Box::new(Prefixed::new(buf.to_vec(), rd.unsplit(wr))))
}

/// The first read of a request on an idle connection: most request heads fit.
const IDLE_READ: usize = 2 << 10;

/// What the buffer of a request head being read has room for at least, half of it free.
const HEAD_READ: usize = 8 << 10;

/// Reads the next request head: `None` if the client closed the connection between
/// requests.
async fn read_head(
    rd: &mut ReadHalf<BoxIo>,
    buf: &mut BytesMut,
    limits: Limits,
) -> Result<Option<RequestHead>, codec::WireError> {
    // How far the end of the head was looked for: a head that arrives a byte at a time
    // is parsed once it is complete, not once per byte.
    let mut scanned = 0;
    loop {
        // RFC 9112 section 2.2: empty lines before a request line are ignored.
        while buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
            let n = if buf.starts_with(b"\n") { 1 } else { 2 };
            let _ = buf.split_to(n);
            scanned = 0;
        }
        if !buf.is_empty()
            && (codec::has_head_end(buf, scanned) || buf.len() > limits.max_head_bytes)
            && let Some((head, len)) = codec::parse_request(buf, limits)?
        {
            let _ = buf.split_to(len);
            return Ok(Some(head));
        }
        scanned = buf.len();
        if buf.capacity() == 0 {
            // Waiting for a request on an idle connection: into a small array the task
            // holds anyway, so that thousands of idle keep-alive connections hold no
            // buffer of their own.
            let mut first = [0u8; IDLE_READ];
            match rd.read(&mut first).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => {
                    // Just what came: a head that came whole (the usual case) needs no
                    // more, and one that did not gets HEAD_READ below.
                    buf.extend_from_slice(&first[..n]);
                }
            }
            continue;
        }
        if buf.capacity() - buf.len() < HEAD_READ / 2 {
            buf.reserve(HEAD_READ);
        }
        match rd.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(codec::WireError::Malformed {
                    what: "request head",
                    detail: "the client closed the connection mid-head".into(),
                });
            }
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Splits a request target (RFC 9112 section 3.2) into scheme, authority and path:
/// origin form, absolute form (`OPTIONS http://host` means `OPTIONS *`), or `*`.
fn request_target(method: &str, target: &str) -> Result<(Option<String>, Option<String>, String), String> {
    if target.starts_with('/') {
        return Ok((None, None, target.to_owned()));
    }
    if target == "*" {
        if method == "OPTIONS" {
            return Ok((None, None, target.to_owned()));
        }
        return Err(format!("{method} * is not a request (only OPTIONS takes *)"));
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(format!("invalid request target {target:?}"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("unsupported scheme in {target:?}"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(format!("request target {target:?} has no host"));
    }
    let path = match path {
        "" if method == "OPTIONS" => "*".to_owned(),
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok((Some(scheme.to_owned()), Some(authority.to_owned()), path))
}

/// `host:port` of a CONNECT target.
fn authority_of(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let url = flowgate_flow::Url::parse(&format!("https://{host}:{port}/")).ok()?;
    Some((url.host, port))
}

/// A reason phrase that is safe to write (a plugin may have set anything).
fn reason(response: &Response) -> String {
    let ok = response.reason.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if ok && !response.reason.is_empty() { response.reason.clone() } else { canonical_reason(response.status) }
}

async fn write_interim(wr: &mut WriteHalf<BoxIo>, interim: &Response) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", interim.status, reason(interim)).into_bytes();
    codec::put_fields(&mut out, &interim.headers, false);
    out.extend_from_slice(b"\r\n");
    wr.write_all(&out).await?;
    wr.flush().await
}

/// Who a reply goes to: the request's method and version, and whether the connection
/// closes after it.
#[derive(Clone, Copy)]
struct To<'a> {
    method: &'a str,
    version: HttpVersion,
    close: bool,
}

impl<'a> To<'a> {
    /// A reply after which the connection closes (errors, refusals).
    fn closing(method: &'a str) -> To<'a> {
        To { method, version: HttpVersion::Http11, close: true }
    }
}

/// Writes a reply in HTTP/1.1 framing; `Ok(true)` if the connection can carry another
/// request after it.
async fn write_reply(wr: &mut WriteHalf<BoxIo>, reply: Reply, to: To<'_>) -> Result<bool, BoxError> {
    let Reply { response, body, .. } = reply;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", response.status, reason(&response)).as_bytes());
    codec::put_fields(&mut out, &response.headers, false);
    let no_body = to.method == "HEAD" || matches!(response.status, 100..=199 | 204 | 304);
    // An HTTP/1.0 client takes no chunked body: one of unknown length ends with the connection.
    let unknown_length = |out: &mut Vec<u8>, codings: &str| {
        if to.version == HttpVersion::Http10 {
            Framing::Close
        } else {
            codec::put_field(out, "Transfer-Encoding", &codec::chunked_with(codings));
            Framing::Chunked
        }
    };
    let framing = if no_body {
        Framing::None
    } else if let Some(codings) = codec::transfer_codings(&response.headers) {
        // Coded by the upstream (a hostile one's Content-Length beside it was left out):
        // chunked again, with the other codings' label kept.
        unknown_length(&mut out, &codings)
    } else {
        match codec::response_framing(to.method, response.status, &response.headers) {
            Ok(Framing::Length(n)) => Framing::Length(n),
            _ if response.headers.contains("content-length") => Framing::None,
            _ if hyper::body::Body::is_end_stream(&body) => {
                codec::put_field(&mut out, "content-length", b"0");
                Framing::None
            }
            _ => match hyper::body::Body::size_hint(&body).exact() {
                Some(n) => {
                    codec::put_field(&mut out, "content-length", n.to_string().as_bytes());
                    Framing::Length(n)
                }
                None => unknown_length(&mut out, ""),
            },
        }
    };
    let close = to.close || framing == Framing::Close;
    if close {
        codec::put_field(&mut out, "connection", b"close");
    } else if to.version == HttpVersion::Http10 {
        codec::put_field(&mut out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        wr.write_all(&out).await?;
        wr.flush().await?;
    } else {
        write_body(wr, out, body, framing).await?;
    }
    Ok(!close)
}

type Item = Result<hyper::body::Frame<bytes::Bytes>, BoxError>;

/// Reads a request body off the connection into the exchange's [`Body`], one frame at a
/// time, with backpressure. Every step is cancel-safe (the layer polls it beside the
/// exchange and the response write, and drops it when another branch wins): a decoded
/// frame waits in `pending` until the channel has room for it.
struct Feeder {
    decoder: Decoder,
    tx: Option<tokio::sync::mpsc::Sender<Item>>,
    /// A frame, or the body's error, to hand over next.
    pending: Option<Item>,
    /// Set once the body ended as it was framed; a body whose feeder is gone without it
    /// was cut off, and its reader gets an error rather than a clean end.
    complete: Arc<AtomicBool>,
    eof: bool,
    /// The body was malformed or cut off; the connection cannot carry another request.
    failed: bool,
}

impl Feeder {
    fn new(framing: Framing) -> (Body, Feeder) {
        let decoder = Decoder::new(framing);
        let complete = Arc::new(AtomicBool::new(false));
        let feeder = |tx| Feeder {
            decoder: decoder.clone(),
            tx,
            pending: None,
            complete: complete.clone(),
            eof: false,
            failed: false,
        };
        if decoder.is_done() {
            return (full(bytes::Bytes::new()), feeder(None));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let body = RequestBody { rx, complete: complete.clone(), ended: false };
        (http_body_util::BodyExt::boxed(body), feeder(Some(tx)))
    }

    /// Whether the client may still be sending the body: it neither ended as framed nor
    /// was cut off.
    fn unread(&self) -> bool {
        !self.complete.load(Ordering::Acquire) && !self.eof && !self.failed
    }

    /// Whether there is more to read (or an error to hand over) and someone to read it.
    fn wants(&self) -> bool {
        self.tx.is_some()
    }

    /// Moves the body on by one step: hands over a decoded frame, decodes one, or reads.
    async fn step(&mut self, rd: &mut ReadHalf<BoxIo>, buf: &mut BytesMut) {
        let Some(tx) = &self.tx else { return };
        if self.pending.is_some() {
            let close = match tx.reserve().await {
                Ok(permit) => {
                    if let Some(item) = self.pending.take() {
                        permit.send(item);
                    }
                    self.failed
                }
                // The exchange no longer reads it: the rest is drained or the connection closed.
                Err(_) => true,
            };
            if close {
                self.tx = None;
            }
            return;
        }
        match self.decoder.decode(buf, self.eof) {
            Ok(Some(Piece::Data(data))) => self.pending = Some(Ok(hyper::body::Frame::data(data))),
            Ok(Some(Piece::Trailers(t))) => self.pending = Some(Ok(hyper::body::Frame::trailers(header_map(&t)))),
            Ok(Some(Piece::End)) => {
                self.complete.store(true, Ordering::Release);
                self.tx = None;
            }
            Ok(None) => {
                if buf.capacity() - buf.len() < 8 << 10 {
                    buf.reserve(64 << 10);
                }
                match rd.read_buf(buf).await {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) => self.fail(format!("reading the request body failed: {e}")),
                }
            }
            Err(e) => self.fail(format!("request body: {e}")),
        }
    }

    /// The body failed: the error goes to its reader next (never lost to a full channel).
    fn fail(&mut self, message: String) {
        self.failed = true;
        self.pending = Some(Err(message.into()));
    }

    /// After the response: skips what is left of the body if it was already read off
    /// the connection. True if the next request can be read.
    fn drain(&mut self, buf: &mut BytesMut) -> bool {
        if self.failed || self.pending.is_some() {
            return false;
        }
        self.tx = None;
        loop {
            match self.decoder.decode(buf, false) {
                Ok(Some(Piece::End)) => return true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    }
}

/// A request body as the exchange reads it: the frames the [`Feeder`] sends, then its end
/// — or an error if the feeder went away before the body was complete.
struct RequestBody {
    rx: tokio::sync::mpsc::Receiver<Item>,
    complete: Arc<AtomicBool>,
    ended: bool,
}

impl hyper::body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                self.ended = true;
                if self.complete.load(Ordering::Acquire) {
                    std::task::Poll::Ready(None)
                } else {
                    std::task::Poll::Ready(Some(Err("the request body was cut off".into())))
                }
            }
            other => other,
        }
    }
}
