//! HTTP/1.1 toward an upstream, on [`codec`](super::codec): the request written from the
//! flow as it is (field order and case, `*` and absolute forms), interim responses
//! handed on, the response head kept as received, and the connection kept for the next
//! request once both bodies have ended.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use flowgate_flow::{Headers, HttpVersion, Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::UpstreamError;
use crate::http::exchange::Interim;
use crate::upstream::{Body, BoxError, UpstreamIo};

/// An upstream connection as HTTP/1 uses it: writes held to `upstream_timeout`.
type Stream = crate::stall::WriteStall<UpstreamIo>;
use flowgate_h1::{self as codec, Decoder, Framing, Limits, Piece, WireError};

/// The largest response head read from an upstream.
const MAX_HEAD_BYTES: usize = 256 << 10;

/// An idle connection and what was read past its last response.
struct Conn {
    io: Stream,
    buf: BytesMut,
}

enum Slot {
    /// Free for a request.
    Idle(Conn),
    /// Carrying a request or a response body.
    Busy,
    /// Gone (closed by the upstream, broken, or not reusable).
    Closed,
}

/// One HTTP/1.1 upstream connection, shared between the pool and the response body that
/// is reading from it.
#[derive(Clone)]
pub(crate) struct Client {
    slot: Arc<Mutex<Slot>>,
}

/// A request to send.
pub(crate) struct Outbound<'a> {
    /// The flow's request, as the plugins left it.
    pub request: &'a Request,
    /// Send the target in absolute form (plain HTTP to an upstream proxy).
    pub absolute: bool,
    /// Its body.
    pub body: Body,
    /// Where 1xx responses go.
    pub interim: Option<Interim>,
}

impl Client {
    /// A client on a new connection.
    pub fn new(io: Stream) -> Client {
        Client { slot: Arc::new(Mutex::new(Slot::Idle(Conn { io, buf: BytesMut::new() }))) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), Slot::Closed)
    }

    /// Whether the connection can take a request now. An idle connection the upstream
    /// has closed (or sent bytes on unasked) is found here and marked closed, so no
    /// request is sent into it.
    pub fn is_ready(&self) -> bool {
        let mut slot = self.lock();
        let Slot::Idle(conn) = &mut *slot else { return false };
        let mut probe = [0u8; 1];
        let mut read = tokio::io::ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let alive = conn.buf.is_empty() && std::pin::Pin::new(&mut conn.io).poll_read(&mut cx, &mut read).is_pending();
        if !alive {
            *slot = Slot::Closed;
        }
        alive
    }

    /// Sends a request and reads the response head; the body comes as it is read. After
    /// a `101 Switching Protocols` the connection itself comes back instead.
    pub async fn send(
        &mut self,
        out: Outbound<'_>,
        options: &crate::ProxyOptions,
    ) -> Result<(Response, Body, Option<crate::websocket::Side>), UpstreamError> {
        let conn = match std::mem::replace(&mut *self.lock(), Slot::Busy) {
            Slot::Idle(conn) => conn,
            other => {
                *self.lock() = other;
                return Err(UpstreamError::Wire("connection not ready".to_owned()));
            }
        };
        let Outbound { request, absolute, body, interim } = out;
        let (head, framing) = request_head(request, absolute, &body)?;
        let (mut rd, mut wr) = tokio::io::split(conn.io);
        let mut buf = conn.buf;
        let closed = |e: std::io::Error| UpstreamError::Wire(format!("writing the request failed: {e}"));
        // The body is written beside the response read (a server may answer early);
        // the write half comes back when it is done.
        let writer = if hyper::body::Body::is_end_stream(&body) {
            if let Framing::Length(n @ 1..) = framing {
                // A plugin gave a bodiless request a length: the upstream would wait for it.
                return Err(UpstreamError::Wire(format!("Content-Length {n} on a request without a body")));
            }
            wr.write_all(&head).await.map_err(closed)?;
            wr.flush().await.map_err(closed)?;
            Writer::Done(wr)
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                let result = write_body(&mut wr, head, body, framing).await;
                if let Err(e) = &result {
                    tracing::debug!("upstream request body: {e}");
                    let _ = wr.shutdown().await;
                }
                let _ = tx.send(result.ok().map(|()| wr));
            });
            Writer::Running(rx, task)
        };
        let limits = Limits { max_headers: options.max_headers.max(100), max_head_bytes: MAX_HEAD_BYTES };
        // How far the end of a head was looked for (a head a byte at a time is parsed once).
        let mut scanned = 0;
        let head = loop {
            let parsed = if codec::has_head_end(&buf, scanned) || buf.len() > MAX_HEAD_BYTES {
                codec::parse_response(&buf, limits, &request.method)
            } else {
                Ok(None)
            };
            scanned = buf.len();
            match parsed {
                Ok(Some((head, len))) => {
                    let _ = buf.split_to(len);
                    scanned = 0;
                    if (100..200).contains(&head.status) && head.status != 101 {
                        // 100 is for the Expect flowgate answered itself; others go on.
                        if head.status != 100
                            && let Some(interim) = &interim
                        {
                            let _ = interim.try_send(Box::new(head.into_response()));
                        }
                        continue;
                    }
                    break head;
                }
                Ok(None) => {}
                Err(e) => return Err(UpstreamError::Wire(e.to_string())),
            }
            // An idle connection keeps no buffer; a head (and often the whole body with
            // it) comes in one read rather than in reads growing from 64 bytes.
            if buf.capacity() - buf.len() < HEAD_READ / 2 {
                buf.reserve(HEAD_READ);
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => {
                    return Err(UpstreamError::Wire("the upstream closed the connection without a response".into()));
                }
                Ok(0) => return Err(UpstreamError::Wire("the upstream closed the connection mid-head".into())),
                Ok(_) => {}
                Err(e) => return Err(UpstreamError::Wire(format!("reading the response failed: {e}"))),
            }
        };
        let keep_alive = codec::keeps_alive(head.version, &head.headers) && head.framing != Framing::Close;
        let framing = head.framing;
        let response = head.into_response();
        if response.status == 101 {
            // Switching protocols: the connection is the caller's from here on.
            let wr = match writer {
                Writer::Done(wr) => Some(wr),
                Writer::Running(rx, task) => {
                    let wr = rx.await.ok().flatten();
                    task.abort();
                    wr
                }
            };
            *self.lock() = Slot::Closed;
            let Some(wr) = wr else {
                return Err(UpstreamError::Wire("writing the upgrading request failed".into()));
            };
            let io: crate::conn::BoxIo = Box::new(rd.unsplit(wr));
            let upgraded = crate::websocket::Side { io, buf };
            return Ok((response, crate::http::full(Bytes::new()), Some(upgraded)));
        }
        let mut body = ResponseBody {
            decoder: Decoder::new(framing),
            reading: Some(Reading { rd, buf, writer }),
            eof: false,
            keep_alive: keep_alive && response.status != 101,
            slot: self.slot.clone(),
            read_size: FIRST_READ,
        };
        if body.decoder.is_done() {
            body.finish();
        }
        Ok((response, body.boxed(), None))
    }
}

/// The request head, and how its body is framed.
fn request_head(request: &Request, absolute: bool, body: &Body) -> Result<(Vec<u8>, Framing), UpstreamError> {
    let mut head = Vec::with_capacity(512);
    let target = if absolute { request.url() } else { request.path.clone() };
    head.extend_from_slice(request.method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = &request.headers;
    if !headers.contains("host") {
        codec::put_field(&mut head, "Host", request.scheme.authority(&request.host, request.port).as_bytes());
    }
    // HTTP/2 and HTTP/3 split cookies into fields; HTTP/1.1 has one (RFC 9113 8.2.3).
    let from_multiplexed = matches!(request.version, HttpVersion::Http2 | HttpVersion::Http3);
    codec::put_fields(&mut head, headers, from_multiplexed);
    if crate::websocket::is_upgrade(request) {
        // Hop-by-hop, so not copied above: this hop upgrades too.
        codec::put_field(&mut head, "Connection", b"Upgrade");
        codec::put_field(&mut head, "Upgrade", b"websocket");
    }
    // An HTTP/2 client always takes trailers, and an HTTP/1.1 one that asked: say so,
    // with `TE` named in Connection as a hop-by-hop field must be (RFC 9110 7.6.1).
    let asked = headers.get_all("te").any(|v| String::from_utf8_lossy(v).to_ascii_lowercase().contains("trailers"));
    if (from_multiplexed || asked) && !crate::websocket::is_upgrade(request) {
        codec::put_field(&mut head, "TE", b"trailers");
        codec::put_field(&mut head, "Connection", b"TE");
    }
    let framing = match codec::request_framing(&request.method, headers) {
        // Chunked again for this hop, with the other codings' label kept.
        Ok(Framing::Chunked) => {
            let codings = codec::transfer_codings(headers).unwrap_or_default();
            codec::put_field(&mut head, "Transfer-Encoding", &codec::chunked_with(&codings));
            Framing::Chunked
        }
        Ok(Framing::Length(n)) => Framing::Length(n),
        Ok(_) if headers.contains("content-length") => Framing::None,
        Ok(_) if hyper::body::Body::is_end_stream(body) => Framing::None,
        Ok(_) => match hyper::body::Body::size_hint(body).exact() {
            Some(n) => {
                codec::put_field(&mut head, "content-length", n.to_string().as_bytes());
                Framing::Length(n)
            }
            None => {
                codec::put_field(&mut head, "transfer-encoding", b"chunked");
                Framing::Chunked
            }
        },
        Err(e) => return Err(UpstreamError::Wire(format!("request framing: {e}"))),
    };
    head.extend_from_slice(b"\r\n");
    Ok((head, framing))
}

/// Writes `head` and then `body` in `framing`, flushing after each frame so streamed
/// bodies (gRPC, uploads in progress) move as they come.
pub(crate) async fn write_body<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    head: Vec<u8>,
    mut body: Body,
    framing: Framing,
) -> Result<(), BoxError> {
    let mut out = head;
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                written += data.len() as u64;
                match framing {
                    Framing::Length(n) if written > n => return Err(format!("body longer than its length {n}").into()),
                    Framing::Chunked => {
                        codec::put_chunk_header(&mut out, data.len());
                        put_data(wr, &mut out, &data).await?;
                        out.extend_from_slice(b"\r\n");
                    }
                    Framing::None => return Err("a body where none was announced".into()),
                    _ => put_data(wr, &mut out, &data).await?,
                }
                wr.write_all(&out).await?;
                out.clear();
                wr.flush().await?;
            }
            Err(frame) => {
                if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                    let trailers = crate::http::exchange::to_headers(&trailers);
                    codec::put_last_chunk(&mut out, (!trailers.is_empty()).then_some(&trailers));
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    return Ok(());
                }
            }
        }
    }
    match framing {
        Framing::Chunked => codec::put_last_chunk(&mut out, None),
        Framing::Length(n) if written != n => return Err(format!("body of {written} bytes, announced {n}").into()),
        _ => {}
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(())
}

/// Appends small data to `out`; writes `out` and then large data directly.
async fn put_data<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    data: &Bytes,
) -> std::io::Result<()> {
    if data.len() <= 16 << 10 {
        out.extend_from_slice(data);
        return Ok(());
    }
    wr.write_all(out).await?;
    out.clear();
    wr.write_all(data).await
}

/// The write half, once the request is written; or the task still writing the body,
/// which hands it back.
enum Writer {
    Done(WriteHalf<Stream>),
    Running(tokio::sync::oneshot::Receiver<Option<WriteHalf<Stream>>>, tokio::task::JoinHandle<()>),
}

/// How long a finished response waits for its request body to finish being written
/// before the connection is given up (an upstream that answered early and stopped reading).
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

struct Reading {
    rd: ReadHalf<Stream>,
    buf: BytesMut,
    writer: Writer,
}

/// A response body read from the connection; at its end the connection goes back to
/// its slot for the next request (or is closed).
struct ResponseBody {
    decoder: Decoder,
    reading: Option<Reading>,
    eof: bool,
    keep_alive: bool,
    slot: Arc<Mutex<Slot>>,
    /// How much the next read may take.
    read_size: usize,
}

/// What a read of a response head may take at least.
const HEAD_READ: usize = 8 << 10;

/// The first read of a response body, and the most a read grows to.
const FIRST_READ: usize = 16 << 10;
const MAX_READ: usize = 512 << 10;

impl ResponseBody {
    /// The body has ended: the connection is idle again if it can be reused.
    fn finish(&mut self) {
        let Some(Reading { rd, buf, writer }) = self.reading.take() else { return };
        let reusable = self.keep_alive && !self.eof && buf.is_empty();
        let slot = self.slot.clone();
        let settle = move |wr: Option<WriteHalf<Stream>>| {
            let next = match wr {
                // An idle connection keeps no read buffer (most of a busy proxy's are idle).
                Some(wr) if reusable => Slot::Idle(Conn { io: rd.unsplit(wr), buf: BytesMut::new() }),
                _ => Slot::Closed,
            };
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = next;
        };
        match writer {
            Writer::Done(wr) => settle(Some(wr)),
            Writer::Running(mut rx, task) => match rx.try_recv() {
                Ok(wr) => settle(wr),
                // The request body is still going out (a POST answered 204 while its last
                // bytes are written): the connection stays busy until it is done.
                Err(_) if reusable => {
                    tokio::spawn(async move {
                        match tokio::time::timeout(WRITER_GRACE, rx).await {
                            Ok(Ok(wr)) => settle(wr),
                            _ => {
                                task.abort();
                                settle(None);
                            }
                        }
                    });
                }
                Err(_) => {
                    task.abort();
                    settle(None);
                }
            },
        }
    }
}

impl ResponseBody {
    /// The connection broke mid-body: it is closed, and its writer stopped.
    fn close(&mut self) {
        if let Some(Reading { writer: Writer::Running(_, task), .. }) = self.reading.take() {
            task.abort();
        }
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Slot::Closed;
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.reading.is_some() {
            // Not read to its end: the connection is in the middle of a message, and a
            // request body still being written goes nowhere.
            self.close();
        }
    }
}

fn wire(e: WireError) -> BoxError {
    format!("upstream response body: {e}").into()
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(reading) = this.reading.as_mut() else { return Poll::Ready(None) };
            match this.decoder.decode(&mut reading.buf, this.eof) {
                Ok(Some(Piece::Data(data))) => return Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
                Ok(Some(Piece::Trailers(trailers))) => {
                    return Poll::Ready(Some(Ok(hyper::body::Frame::trailers(header_map(&trailers)))));
                }
                Ok(Some(Piece::End)) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.close();
                    return Poll::Ready(Some(Err(wire(e))));
                }
            }
            // Reads grow while they fill what they are given (a large body moves in large
            // reads) and start small again for each response.
            if reading.buf.capacity() - reading.buf.len() < this.read_size / 2 {
                reading.buf.reserve(this.read_size);
            }
            let spare = reading.buf.capacity() - reading.buf.len();
            let read = std::pin::pin!(reading.rd.read_buf(&mut reading.buf)).poll(cx);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(n)) => {
                    if n == spare {
                        this.read_size = (this.read_size * 2).min(MAX_READ);
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.close();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.is_none()
    }
}

use std::future::Future;

/// A hyper header map of fields (trailers travel in body frames as one).
pub(crate) fn header_map(headers: &Headers) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    for (name, value) in headers.iter() {
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name.as_bytes()), hyper::header::HeaderValue::from_bytes(value))
        {
            map.append(n, v);
        }
    }
    map
}
