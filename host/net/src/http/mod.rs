//! The HTTP layers: HTTP/1.x of flowgate's own ([`h1`], both sides) and hyper's HTTP/2
//! (client side here, upstream in `upstream`), the h2c upgrade, and what hands a stream
//! on (a 2xx CONNECT, a 101). Each request becomes one version-free [`exchange`]; bodies
//! are in [`body`]; the CA download host is [`cert`]; the HTTP/2 pieces flowgate owns
//! are in [`h2`].

pub(crate) mod body;
mod cert;
pub(crate) mod connect;
pub(crate) mod exchange;
pub(crate) mod h1;
pub(crate) mod h2;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::conn::{ConnCtx, Next, PendingSwitch};
use crate::tls::Prefixed;
use crate::upstream::{Body, Target};

pub(crate) use h1::server::serve as serve_h1;

/// The service closes the client connection when a plugin kills the flow.
#[derive(Debug)]
pub(crate) struct Killed;

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("killed by a plugin")
    }
}

impl std::error::Error for Killed {}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// The HTTP/2 layer: each stream is a flow, handled in its own task.
pub(crate) async fn serve_h2<IO>(ctx: Arc<ConnCtx>, io: IO, fixed: Option<Target>) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_ctx = ctx.clone();
    let streams = Arc::new(Streams::default());
    let service_streams = streams.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        let fixed = fixed.clone();
        let open = OpenStream::new(&service_streams);
        // Boxed: hyper spawns each stream's future; a pointer moves cheaper than the
        // flow's state machine.
        Box::pin(async move { h2_stream(ctx, req, fixed, open).await })
    });
    let builder = h2::server_builder(&ctx.proxy.options);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let idle_timeout = ctx.proxy.options.http2_idle_timeout;
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = ctx.proxy.closed() => {
            // GOAWAY: the open streams finish, no new ones start.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = streams.idle_for(idle_timeout) => {
            tracing::debug!("{}: HTTP/2 connection idle for {idle_timeout:?} (http2_idle_timeout)", ctx.client);
            conn.as_mut().graceful_shutdown();
            // GOAWAY, then a short grace for the client's answer to its PING.
            match tokio::time::timeout(IDLE_CLOSE_GRACE, conn).await {
                Ok(ended) => ended,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!("client {} (HTTP/2): {e}", ctx.client);
    }
    Next::Done
}

/// How long an idle HTTP/2 connection that got GOAWAY may take to close cleanly.
const IDLE_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The open streams of one HTTP/2 client connection, for `http2_idle_timeout`.
#[derive(Default)]
pub(crate) struct Streams {
    open: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Streams {
    /// Returns once no stream has been open for `timeout`.
    async fn idle_for(&self, timeout: std::time::Duration) {
        use std::sync::atomic::Ordering;
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(timeout) => return,
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// One open stream: counted from its request until its response body (or its tunnel)
/// is done.
pub(crate) struct OpenStream(Arc<Streams>);

impl OpenStream {
    fn new(streams: &Arc<Streams>) -> OpenStream {
        streams.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        streams.changed.notify_waiters();
        OpenStream(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its stream counted as open until it is dropped.
struct Holding {
    body: Body,
    _open: OpenStream,
}

impl hyper::body::Body for Holding {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One HTTP/2 stream: a CONNECT becomes a tunnel of its own beside the connection's
/// other streams; any other request an exchange, translated from and to hyper's types.
async fn h2_stream(
    ctx: Arc<ConnCtx>,
    mut req: hyper::Request<hyper::body::Incoming>,
    fixed: Option<Target>,
    open: OpenStream,
) -> Result<hyper::Response<Body>, Killed> {
    let headers = exchange::to_headers(req.headers());
    let version = exchange::version_of(req.version());
    let protocol = req.extensions().get::<hyper::ext::Protocol>().map(|p| p.as_str().to_ascii_lowercase());
    if req.method() == hyper::Method::CONNECT && protocol.as_deref() == Some("websocket") {
        return websocket_stream(ctx, req, headers, fixed, open).await;
    }
    if req.method() == hyper::Method::CONNECT && fixed.is_none() {
        let Some(authority) = req.uri().authority().cloned() else {
            return Ok(to_hyper(exchange::status_response(400, "CONNECT needs host:port"), open));
        };
        let request = flowgate_flow::Request {
            method: "CONNECT".to_owned(),
            scheme: flowgate_flow::Scheme::Https,
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(443),
            path: "/".to_owned(),
            version,
            headers,
            ..flowgate_flow::Request::default()
        };
        return match connect::connect(&ctx, request).await? {
            connect::Answer::Reply(reply) => Ok(to_hyper(reply, open)),
            connect::Answer::Tunnel(stage) => {
                let upgrade = hyper::upgrade::on(&mut req);
                crate::conn::spawn_switch(ctx, PendingSwitch { stage, upgrade, hold: Some(open) });
                Ok(hyper::Response::new(full(Bytes::new())))
            }
        };
    }
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let request = flowgate_flow::Request {
        method: req.method().as_str().to_owned(),
        path,
        version,
        headers,
        ..Default::default()
    };
    let inbound = exchange::Inbound {
        request,
        scheme: req.uri().scheme_str().map(str::to_owned),
        authority: req.uri().authority().map(|a| a.as_str().to_owned()),
        body: req.into_body().map_err(Into::into).boxed(),
    };
    exchange::handle(ctx, inbound, fixed, None).await.map(|reply| to_hyper(reply, open))
}

/// A WebSocket over an HTTP/2 stream (RFC 8441's extended CONNECT): the exchange sees it
/// as the HTTP/1.1 upgrade it becomes toward the upstream (`GET` with `Upgrade:
/// websocket` and a fresh `Sec-WebSocket-Key`), the client gets `200` once the upstream
/// agreed, and the stream is then the WebSocket layer's.
async fn websocket_stream(
    ctx: Arc<ConnCtx>,
    mut req: hyper::Request<hyper::body::Incoming>,
    mut headers: flowgate_flow::Headers,
    fixed: Option<Target>,
    open: OpenStream,
) -> Result<hyper::Response<Body>, Killed> {
    use base64::Engine;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let _ = headers.append("Upgrade", b"websocket");
    let _ = headers.append("Connection", b"Upgrade");
    let _ = headers.set("Sec-WebSocket-Key", key.as_bytes());
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let request = flowgate_flow::Request {
        method: "GET".to_owned(),
        path,
        version: flowgate_flow::HttpVersion::Http2,
        headers,
        ..Default::default()
    };
    let inbound = exchange::Inbound {
        request,
        scheme: req.uri().scheme_str().map(str::to_owned),
        authority: req.uri().authority().map(|a| a.as_str().to_owned()),
        body: full(Bytes::new()),
    };
    let mut reply = exchange::handle(ctx.clone(), inbound, fixed, None).await?;
    let Some(start) = reply.upgrade.take() else { return Ok(to_hyper(reply, open)) };
    reply.response.status = 200;
    reply.response.headers.remove("sec-websocket-accept");
    let response = to_hyper(exchange::Reply { upgrade: None, ..reply }, OpenStream::new(&open.0));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let client =
                    crate::websocket::Side { io: Box::new(TokioIo::new(upgraded)), buf: bytes::BytesMut::new() };
                crate::websocket::run(ctx, *start, client).await;
            }
            Err(e) => tracing::debug!("{}: the WebSocket stream did not open: {e}", ctx.client),
        }
        // The stream counts as open until the WebSocket ends.
        drop(open);
    });
    Ok(response)
}

/// A reply as hyper's HTTP/2 server writes it (names lowercase, hop-by-hop fields gone).
fn to_hyper(reply: exchange::Reply, open: OpenStream) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(Holding { body: reply.body, _open: open }.boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.response.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    exchange::fill_headers(resp.headers_mut(), &reply.response.headers);
    resp
}

/// The HTTP/2 layer after `101 Switching Protocols`: reads the client's preface and
/// SETTINGS, splices the upgrading request in as stream 1, and serves HTTP/2.
pub(crate) async fn serve_upgraded_h2c<IO>(
    ctx: Arc<ConnCtx>,
    mut io: IO,
    fields: Vec<(String, Vec<u8>)>,
    fixed: Option<Target>,
) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let read_start = async {
        let mut buf = Vec::new();
        loop {
            match h2::client_start_len(&buf) {
                Ok(Some(len)) => return Ok((buf, len)),
                Ok(None) if buf.len() > 64 << 10 => return Err("h2c upgrade: SETTINGS frame too large".to_owned()),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk).await {
                Ok(0) => return Err("h2c upgrade: the client closed the connection".to_owned()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("h2c upgrade: {e}")),
            }
        }
    };
    let started = tokio::time::timeout(ctx.proxy.options.header_read_timeout, read_start).await;
    let (mut buf, len) = match started {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!("{}: {e}", ctx.client);
            return Next::Done;
        }
        Err(_) => {
            tracing::debug!("{}: h2c upgrade: no HTTP/2 preface in time", ctx.client);
            return Next::Done;
        }
    };
    let rest = buf.split_off(len);
    buf.extend_from_slice(&h2::stream_one_frames(&fields, 16 << 10));
    buf.extend_from_slice(&rest);
    serve_h2(ctx, Prefixed::new(buf, io), fixed).await
}
