//! The upstream HTTP/2 client: the `h2` crate, driven from the flow's own task.
//!
//! hyper's HTTP/2 client hands each request to its connection's task over a channel, and
//! that task spawns one more task per request to wait for the response and pass it back:
//! two task hops and a spawn per request, most of the cross-worker wakeups of a request at
//! one connection (see host/ARCHITECTURE.md, "One connection at a time"). Here the
//! exchange opens the stream and awaits the response head itself; the connection runs in
//! one task with its keep-alive pings, and a request body gets a task of its own only when
//! it is not over when the head is sent (it must go on while the response streams back,
//! as a gRPC call's does).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{Ping, Reason, RecvStream, SendStream};
use hyper::body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Body;

/// hyper's client defaults, kept: a 2 MiB stream window (what one slow reader may have
/// buffered), 5 MiB for the connection unless it is shared, 1 MiB of send buffer per stream.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const SEND_BUFFER: usize = 1 << 20;

/// One upstream HTTP/2 connection's request side (clones share the connection).
#[derive(Clone)]
pub(crate) struct H2Client {
    send: SendRequest<Bytes>,
    /// Set when the connection's task ends (closed, failed, or its pings went unanswered).
    closed: Arc<AtomicBool>,
}

/// The connection's settings.
pub(crate) struct Settings {
    pub max_header_list_size: u32,
    pub header_table_size: u32,
    /// The connection window; streams hold their own back at [`STREAM_WINDOW`].
    pub connection_window: Option<u32>,
    /// PING every this long, idle or not; zero: never. Unanswered for `ping_timeout`, the
    /// connection is closed.
    pub keepalive: Duration,
    pub ping_timeout: Duration,
}

/// Opens the HTTP/2 connection on `io` (preface and SETTINGS) and starts its task.
pub(crate) async fn handshake<IO>(io: IO, settings: Settings) -> Result<H2Client, h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(settings.connection_window.unwrap_or(CONNECTION_WINDOW))
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(settings.max_header_list_size)
        .header_table_size(settings.header_table_size)
        .handshake::<_, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    let pings = if settings.keepalive.is_zero() { None } else { conn.ping_pong() };
    tokio::spawn(async move {
        let outcome = match pings {
            None => conn.await.map_err(|e| e.to_string()),
            Some(mut pings) => {
                let keepalive = async {
                    loop {
                        tokio::time::sleep(settings.keepalive).await;
                        match tokio::time::timeout(settings.ping_timeout, pings.ping(Ping::opaque())).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return e.to_string(),
                            Err(_) => return format!("no answer to a PING in {:?}", settings.ping_timeout),
                        }
                    }
                };
                tokio::select! {
                    done = &mut conn => done.map_err(|e| e.to_string()),
                    why = keepalive => Err(why),
                }
            }
        };
        ended.store(true, Ordering::Release);
        if let Err(e) = outcome {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
    });
    Ok(H2Client { send, closed })
}

/// A response from [`H2Client::send`]: its head, its body, and for an extended CONNECT
/// answered 2xx the stream to carry the tunnel's bytes.
pub(crate) struct Sent {
    pub head: hyper::http::response::Parts,
    pub body: RecvBody,
    pub tunnel: Option<H2Stream>,
}

impl H2Client {
    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `request` (waiting for a stream if the server's concurrent streams are all in
    /// use) and waits for the response head. A CONNECT with a `:protocol` (RFC 8441) keeps
    /// its stream open for the tunnel; its body is not sent.
    pub async fn send(&self, request: hyper::Request<Body>) -> Result<Sent, h2::Error> {
        let (parts, body) = request.into_parts();
        let connect = parts.method == hyper::Method::CONNECT;
        let end = connect || body.is_end_stream();
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(hyper::Request::from_parts(parts, ()), end && !connect)?;
        if !end {
            // Stopped once the flow is done with the response, or gave up waiting for it:
            // a server that stops granting window must not keep the pump (and the
            // client's body) for the connection's lifetime.
            let pump = Pump(tokio::spawn(pump(body, stream)));
            let (head, recv) = response.await?.into_parts();
            return Ok(Sent { head, body: RecvBody { _pump: Some(pump), ..RecvBody::new(recv) }, tunnel: None });
        }
        let (head, recv) = response.await?.into_parts();
        if connect && head.status.is_success() {
            let tunnel = H2Stream { send: stream, recv, pending: Bytes::new(), ended: false };
            return Ok(Sent { head, body: RecvBody::empty(), tunnel: Some(tunnel) });
        }
        if connect {
            // Refused: nothing more goes up (END_STREAM, not a reset: the refusal's own
            // body still comes down).
            let _ = stream.send_data(Bytes::new(), true);
        }
        Ok(Sent { head, body: RecvBody::new(recv), tunnel: None })
    }
}

/// A request body's pump task, aborted when dropped.
struct Pump(tokio::task::JoinHandle<()>);

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a request body's frames as the server's flow control allows: data, then trailers
/// or an empty DATA frame with END_STREAM. Stops when the server resets the stream (it
/// has answered and wants no more, or gave up); a failing body resets it.
async fn pump(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(reset.ok()));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match frame {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!("request body failed while going upstream: {e}");
                stream.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Err(_) => return,
        };
        match frame.into_data() {
            Ok(mut data) => {
                let last = body.is_end_stream();
                while data.has_remaining() || last {
                    if !data.has_remaining() {
                        let _ = stream.send_data(Bytes::new(), true);
                        return;
                    }
                    stream.reserve_capacity(data.len());
                    let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(Ok(n)) if n > 0 => n,
                        Some(Ok(_)) => continue,
                        _ => return,
                    };
                    let chunk = data.split_to(granted.min(data.len()));
                    let end = last && !data.has_remaining();
                    if stream.send_data(chunk, end).is_err() || end {
                        return;
                    }
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// A response body from an HTTP/2 stream: DATA (each chunk's window given back as it is
/// taken, so a slow reader holds at most a stream window), then trailers.
pub(crate) struct RecvBody {
    recv: Option<RecvStream>,
    data_done: bool,
    /// The request body's pump, if it was still going when the head was sent: it stops
    /// when this body is dropped.
    _pump: Option<Pump>,
}

impl RecvBody {
    fn new(recv: RecvStream) -> RecvBody {
        RecvBody { recv: Some(recv), data_done: false, _pump: None }
    }

    fn empty() -> RecvBody {
        RecvBody { recv: None, data_done: true, _pump: None }
    }
}

impl hyper::body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let Some(recv) = this.recv.as_mut() else { return Poll::Ready(None) };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        let trailers = ready!(recv.poll_trailers(cx));
        this.recv = None;
        Poll::Ready(match trailers {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }
}

/// The two directions of an extended CONNECT stream as one byte stream (a WebSocket
/// over HTTP/2): writes go out as DATA within the stream's window, reads give the
/// window back as they are taken; shutdown sends END_STREAM.
pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What a read took from a DATA frame and the caller had no room for.
    pending: Bytes,
    /// END_STREAM was sent.
    ended: bool,
}

fn reset_error(e: h2::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(reset_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        send.reserve_capacity(data.len());
        let granted = loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n,
                Some(Err(e)) => return Poll::Ready(Err(reset_error(e))),
                None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        };
        let n = granted.min(data.len());
        send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(reset_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if std::mem::replace(&mut self.ended, true) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(reset_error))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn settings(keepalive: Duration) -> Settings {
        Settings {
            max_header_list_size: 64 << 10,
            header_table_size: 4096,
            connection_window: None,
            keepalive,
            ping_timeout: Duration::from_millis(200),
        }
    }

    /// hyper's HTTP/2 server (PINGs acknowledged) answering one connection with
    /// `respond`, extended CONNECT allowed; and a client connected to it.
    pub(in crate::upstream) async fn serve<F, B>(respond: F) -> TcpStream
    where
        F: Fn(hyper::Request<hyper::body::Incoming>) -> hyper::Response<B> + Send + Sync + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<super::super::BoxError>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.expect("accepted");
            let respond = Arc::new(respond);
            let service = hyper::service::service_fn(move |req| {
                let response = respond(req);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .enable_connect_protocol()
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .await;
        });
        TcpStream::connect(addr).await.expect("connected")
    }

    /// A server that answers 200 with the request's body and trailers echoed.
    async fn echo_server() -> TcpStream {
        serve(|req| hyper::Response::new(req.into_body())).await
    }

    #[tokio::test]
    async fn a_streamed_body_goes_up_and_comes_back_with_its_trailers() {
        use http_body_util::BodyExt;
        let client = handshake(echo_server().await, settings(Duration::ZERO)).await.expect("handshake");
        // Three chunks larger than a stream window would take at once, then trailers.
        let chunk = Bytes::from(vec![7u8; 3 << 20]);
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("value"));
        let body =
            crate::http::body::frames([Frame::data(chunk.clone()), Frame::data(chunk), Frame::trailers(trailers)]);
        let request = hyper::Request::post("http://echo.test/").body(body).expect("request");
        let sent = client.send(request).await.expect("sent");
        assert_eq!(sent.head.status, 200);
        let collected = sent.body.collect().await.expect("the body");
        let got_trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes().len(), 6 << 20);
        assert_eq!(got_trailers.and_then(|t| t.get("grpc-status").cloned()), Some("0".parse().expect("value")));
        assert!(!client.is_closed());
    }

    #[tokio::test]
    async fn answered_pings_keep_the_connection_and_an_unanswered_one_closes_it() {
        let kept = handshake(echo_server().await, settings(Duration::from_millis(20))).await.expect("handshake");
        // A server that sends its SETTINGS, then reads nothing more and answers nothing.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let silent = tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.expect("accepted");
            let mut preface = [0u8; 24];
            io.read_exact(&mut preface).await.expect("preface");
            // SETTINGS (empty), and the ACK of the client's.
            io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0]).await.expect("settings");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(io);
        });
        let io = TcpStream::connect(addr).await.expect("connected");
        let dropped = handshake(io, settings(Duration::from_millis(20))).await.expect("handshake");
        // 20 ms to the PING, 200 ms for its answer.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !dropped.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "an unanswered PING did not close the connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!kept.is_closed(), "answered PINGs closed the connection");
        silent.abort();
    }

    /// A body of `data` (if any) that comes once `wait` is over.
    struct Later {
        wait: Pin<Box<tokio::time::Sleep>>,
        data: Option<Bytes>,
    }

    impl hyper::body::Body for Later {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
            if self.data.is_none() {
                return Poll::Ready(None);
            }
            ready!(self.wait.as_mut().poll(cx));
            Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn an_extended_connect_is_a_tunnel_when_accepted_and_keeps_the_refusal_body() {
        use http_body_util::BodyExt;
        let io = serve(|req| {
            // The refusal's body comes after its head, once the client has had it.
            let body = Later {
                wait: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
                data: (req.uri().path() != "/chat").then_some(Bytes::from_static(b"no such socket")),
            };
            let status = if body.data.is_none() { 200 } else { 404 };
            let mut response = hyper::Response::new(body);
            *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
            response
        })
        .await;
        let client = handshake(io, settings(Duration::ZERO)).await.expect("handshake");
        let connect = |path: &str| {
            let mut request = hyper::Request::connect(format!("http://ws.test{path}"))
                .body(crate::http::full(Bytes::new()))
                .expect("request");
            request.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
            request
        };
        // The server reads SETTINGS_ENABLE_CONNECT_PROTOCOL before the first stream opens.
        let mut accepted = None;
        for _ in 0..100 {
            match client.send(connect("/chat")).await {
                Ok(sent) => {
                    accepted = Some(sent);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let accepted = accepted.expect("an extended CONNECT once the server allows it");
        assert_eq!(accepted.head.status, 200);
        assert!(accepted.tunnel.is_some(), "a 2xx to an extended CONNECT is a tunnel");
        let refused = client.send(connect("/nothing")).await.expect("sent");
        assert_eq!(refused.head.status, 404);
        assert!(refused.tunnel.is_none());
        let body = refused.body.collect().await.expect("the refusal's body").to_bytes();
        assert_eq!(&body[..], b"no such socket");
    }

    /// A request body that never ends; `dropped` is set when it is dropped.
    struct Endless {
        dropped: Arc<AtomicBool>,
    }

    impl hyper::body::Body for Endless {
        type Data = Bytes;
        type Error = super::super::BoxError;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![1u8; 16 << 10])))))
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::Release);
        }
    }

    #[tokio::test]
    async fn a_request_body_pump_stops_when_the_response_is_dropped() {
        use http_body_util::BodyExt;
        // A server that answers at once with a body that never comes, and never reads the
        // request's: the pump fills the stream's window and waits.
        let io = serve(|_req| {
            hyper::Response::new(Later {
                wait: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
                data: Some(Bytes::new()),
            })
        })
        .await;
        let client = handshake(io, settings(Duration::ZERO)).await.expect("handshake");
        let dropped = Arc::new(AtomicBool::new(false));
        let body = Endless { dropped: dropped.clone() }.boxed();
        let sent =
            client.send(hyper::Request::post("http://slow.test/").body(body).expect("request")).await.expect("sent");
        assert_eq!(sent.head.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!dropped.load(Ordering::Acquire), "the pump stopped while the response was wanted");
        drop(sent);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !dropped.load(Ordering::Acquire) {
            assert!(tokio::time::Instant::now() < deadline, "the pump outlived the response");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
