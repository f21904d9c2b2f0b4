//! HTTP on the client side (hyper's HTTP/1.1 and HTTP/2 servers), the flow of one exchange
//! through the plugin hooks and on to the upstream in whichever version it speaks, CONNECT
//! tunnels and TLS interception.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flowgate_flow::{
    ConnectionInfo, FlowInfo, FlowKind, Headers, HttpVersion, LocalResponse, Request, Response, Scheme, TlsDecision,
};
use flowgate_runtime::{ConnectionSession, HttpAction, HttpFlowSession, TlsSide};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::tls::{Offer, Prefixed, TLS_HANDSHAKE, peek_client_hello, server_config};
use crate::upstream::{self, Body, BoxError, Target, Upstreams};
use crate::{FlowRecord, Mode, Outcome, Proxy};

/// Hosts that serve flowgate's CA certificate to clients going through the proxy.
const CERT_HOSTS: &[&str] = &["flowgate.it", "mitm.it"];

/// Header fields that describe one hop and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// What a client connection shares between its flows.
struct ConnCtx {
    proxy: Arc<Proxy>,
    mode: Arc<Mode>,
    client: SocketAddr,
    conn_id: u64,
    session: Mutex<ConnectionSession>,
    upstreams: Mutex<Upstreams>,
    /// What still serves this connection: its first protocol, plus each tunnel or
    /// upgraded protocol that took the connection over (hyper returns from an HTTP/1.1
    /// connection as soon as it hands it to a CONNECT tunnel or an h2c upgrade).
    users: std::sync::atomic::AtomicUsize,
}

impl ConnCtx {
    /// Someone more serves the connection; they call [`ConnCtx::release`] when done.
    fn retain(&self) {
        self.users.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// One user is done; the last one runs the disconnect hooks, so they fire when the
    /// client really leaves (not when CONNECT hands the connection to a tunnel).
    async fn release(&self) {
        if self.users.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) != 1 {
            return;
        }
        let had_upstream = self.upstreams.lock().await.any_open();
        let mut session = self.session.lock().await;
        if had_upstream {
            session.server_disconnected().await;
        }
        session.client_disconnected().await;
    }

    /// Starts the plugin session of a new HTTP flow on this connection.
    async fn http_flow(&self) -> HttpFlowSession {
        let flow = FlowInfo {
            id: self.proxy.next_id(),
            kind: FlowKind::Http,
            connection_id: self.conn_id,
            client_address: self.client.to_string(),
            ..FlowInfo::default()
        };
        self.session.lock().await.http_flow(flow)
    }
}

/// The service closes the client connection when a plugin kills the flow.
#[derive(Debug)]
struct Killed;

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("killed by a plugin")
    }
}

impl std::error::Error for Killed {}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

pub(crate) async fn serve_connection(proxy: Arc<Proxy>, mode: Arc<Mode>, stream: TcpStream, client: SocketAddr) {
    let conn_id = proxy.next_id();
    let info = ConnectionInfo { id: conn_id, client_address: client.to_string(), ..ConnectionInfo::default() };
    let mut session = proxy.chain.connection(info);
    if !session.client_connected().await {
        return;
    }
    let ctx = Arc::new(ConnCtx {
        proxy,
        mode: mode.clone(),
        client,
        conn_id,
        session: Mutex::new(session),
        upstreams: Mutex::new(Upstreams::default()),
        users: std::sync::atomic::AtomicUsize::new(1),
    });
    match &*mode {
        Mode::Reverse { scheme, prior_knowledge, host, port } => {
            let target = Target { scheme: *scheme, host: host.clone(), port: *port, prior_knowledge: *prior_knowledge };
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == TLS_HANDSHAKE => {
                    Box::pin(intercept_tls(ctx.clone(), stream, Vec::new(), target)).await
                }
                Ok(_) => {
                    serve_cleartext(ctx.clone(), stream, Vec::new(), Some(target), PriorKnowledge::OfFlowgate).await
                }
                Err(_) => {}
            }
        }
        Mode::Regular | Mode::Upstream { .. } => {
            serve_cleartext(ctx.clone(), stream, Vec::new(), None, PriorKnowledge::OfFlowgate).await
        }
    }
    ctx.release().await;
}

/// Whom a client's HTTP/2 prior knowledge is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PriorKnowledge {
    /// flowgate only: the target (or the mode) says how to reach the upstream.
    OfFlowgate,
    /// The origin, as inside a CONNECT tunnel: flowgate speaks HTTP/2 upstream too.
    OfOrigin,
}

/// Serves a cleartext connection whose first bytes (`buf`, then `io`) say which HTTP
/// version it speaks: the HTTP/2 preface (prior knowledge) or HTTP/1.
async fn serve_cleartext<IO>(
    ctx: Arc<ConnCtx>,
    mut io: IO,
    buf: Vec<u8>,
    mut fixed: Option<Target>,
    knowledge: PriorKnowledge,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !ctx.proxy.options.http2 {
        return serve_h1(ctx, Prefixed::new(buf, io), fixed).await;
    }
    let (is_h2, buf) = crate::h2::sniff(&mut io, buf, ctx.proxy.options.header_read_timeout).await;
    if is_h2
        && knowledge == PriorKnowledge::OfOrigin
        && let Some(target) = fixed.as_mut()
    {
        target.prior_knowledge = true;
    }
    if is_h2 {
        serve_h2(ctx, Prefixed::new(buf, io), fixed).await;
    } else {
        serve_h1(ctx, Prefixed::new(buf, io), fixed).await;
    }
}

/// Serves HTTP/2 on a client connection: each stream is a flow, handled in its own task.
async fn serve_h2<IO>(ctx: Arc<ConnCtx>, io: IO, fixed: Option<Target>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        let fixed = fixed.clone();
        async move { handle(ctx, req, fixed, None).await }
    });
    let builder = crate::h2::server_builder(&ctx.proxy.options);
    // Boxed, like the HTTP/1.1 connection: a connection's task holds only the state of
    // the protocol it speaks (idle connections are the bulk of a proxy's memory).
    if let Err(e) = Box::pin(builder.serve_connection(TokioIo::new(io), service)).await {
        tracing::debug!("client {} (HTTP/2): {e}", ctx.client);
    }
}

/// Serves HTTP/1.x on a client connection, one request at a time.
async fn serve_h1<IO>(ctx: Arc<ConnCtx>, io: IO, fixed: Option<Target>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let opts = &ctx.proxy.options;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_headers(opts.max_headers)
        .preserve_header_case(true);
    let io = crate::h1guard::Guarded::new(io);
    let heads = io.heads();
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        let fixed = fixed.clone();
        let wire = heads.next();
        async move {
            if ctx.proxy.options.http2 && crate::h2::wants_h2c_upgrade(req.headers()) {
                return Ok(upgrade_h2c(ctx, req, fixed));
            }
            handle(ctx, req, fixed, wire).await
        }
    });
    if let Err(e) = Box::pin(builder.serve_connection(TokioIo::new(io), service).with_upgrades()).await {
        tracing::debug!("client {}: {e}", ctx.client);
    }
}

/// Answers `Upgrade: h2c` with 101 and serves HTTP/2 on the connection from then on; the
/// upgrading request becomes stream 1 (RFC 7540 section 3.2), handled as any other.
fn upgrade_h2c(ctx: Arc<ConnCtx>, mut req: hyper::Request<Incoming>, fixed: Option<Target>) -> hyper::Response<Body> {
    let scheme = match (&fixed, req.uri().scheme_str()) {
        (Some(target), _) => target.scheme.as_str().to_owned(),
        (None, Some(scheme)) => scheme.to_owned(),
        (None, None) => "http".to_owned(),
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
        .or_else(|| fixed.as_ref().map(|t| t.scheme.authority(&t.host, t.port)))
        .unwrap_or_default();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let mut fields = vec![
        (":method".to_owned(), req.method().as_str().as_bytes().to_vec()),
        (":scheme".to_owned(), scheme.into_bytes()),
        (":authority".to_owned(), authority.into_bytes()),
        (":path".to_owned(), path.into_bytes()),
    ];
    for (name, value) in req.headers() {
        let name = name.as_str();
        if name == "host" || name == "http2-settings" || HOP_BY_HOP.contains(&name) {
            continue;
        }
        fields.push((name.to_owned(), value.as_bytes().to_vec()));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    ctx.retain();
    tokio::spawn(async move {
        let served = ctx.clone();
        serve_upgraded_h2c(ctx, upgrade, fields, fixed).await;
        served.release().await;
    });
    let mut resp = hyper::Response::new(full(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert("connection", hyper::header::HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert("upgrade", hyper::header::HeaderValue::from_static("h2c"));
    resp
}

/// After `101 Switching Protocols`: reads the client's preface and SETTINGS, splices the
/// upgrading request in as stream 1, and serves HTTP/2.
async fn serve_upgraded_h2c(
    ctx: Arc<ConnCtx>,
    upgrade: hyper::upgrade::OnUpgrade,
    fields: Vec<(String, Vec<u8>)>,
    fixed: Option<Target>,
) {
    let mut io = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(e) => return tracing::debug!("h2c upgrade failed: {e}"),
    };
    let read_start = async {
        let mut buf = Vec::new();
        loop {
            match crate::h2::client_start_len(&buf) {
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
        Ok(Err(e)) => return tracing::debug!("{}: {e}", ctx.client),
        Err(_) => return tracing::debug!("{}: h2c upgrade: no HTTP/2 preface in time", ctx.client),
    };
    let rest = buf.split_off(len);
    buf.extend_from_slice(&crate::h2::stream_one_frames(&fields, 16 << 10));
    buf.extend_from_slice(&rest);
    serve_h2(ctx, Prefixed::new(buf, io), fixed).await;
}

fn status_response(status: u16, message: &str) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(full(format!("{message}\n")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn local_response(local: LocalResponse) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(full(local.body));
    *resp.status_mut() = hyper::StatusCode::from_u16(local.status).unwrap_or(hyper::StatusCode::OK);
    for (name, value) in local.headers.iter() {
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name.as_bytes()), hyper::header::HeaderValue::from_bytes(value))
        {
            resp.headers_mut().append(n, v);
        }
    }
    resp.headers_mut().remove("content-length");
    resp
}

fn to_headers(map: &hyper::HeaderMap) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in map {
        // hyper has already validated names and values.
        let _ = headers.append(name.as_str(), value.as_bytes());
    }
    headers
}

fn fill_headers(map: &mut hyper::HeaderMap, headers: &Headers) {
    for (name, value) in headers.iter() {
        // `TE: trailers` is hop-by-hop but must reach the upstream for it to send trailers.
        let te_trailers = name.eq_ignore_ascii_case("te") && value.eq_ignore_ascii_case(b"trailers");
        if !te_trailers && HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name.as_bytes()), hyper::header::HeaderValue::from_bytes(value))
        {
            map.append(n, v);
        }
    }
}

fn version_of(v: hyper::Version) -> HttpVersion {
    match v {
        hyper::Version::HTTP_10 => HttpVersion::Http10,
        hyper::Version::HTTP_2 => HttpVersion::Http2,
        hyper::Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    }
}

/// A body that fails if the next frame takes longer than `timeout` to arrive.
struct ProgressTimeout<B> {
    inner: B,
    timeout: std::time::Duration,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> ProgressTimeout<B> {
    fn new(inner: B, timeout: std::time::Duration) -> Self {
        ProgressTimeout { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)) }
    }
}

impl<B> hyper::body::Body for ProgressTimeout<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(
                        format!("no request body data for {:?} (body_read_timeout)", self.timeout).into()
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body read for plugins.
enum Buffered {
    /// The whole body.
    Whole(Bytes),
    /// Larger than `stream_large_bodies`: what was read, then the rest, streamed untouched.
    Streamed(Body),
}

/// Yields `prefix`, then `rest`.
struct PrefixThen<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> hyper::body::Body for PrefixThen<B>
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// Reads a whole body for plugins. Past `stream_large_bodies` (if set) the body streams on
/// untouched instead; past `body_size_limit` it is an error.
async fn buffer<B>(mut body: B, options: &crate::ProxyOptions) -> Result<Buffered, String>
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Sync + Unpin + 'static,
{
    let limit = options.stream_large_bodies.unwrap_or(options.body_size_limit);
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body failed: {e}"))?;
        let Ok(chunk) = frame.into_data() else { continue };
        if data.len() + chunk.len() > limit {
            if options.stream_large_bodies.is_none() {
                return Err(format!("body exceeds body_size_limit ({limit} bytes)"));
            }
            data.extend_from_slice(&chunk);
            let rest = PrefixThen { prefix: Some(Bytes::from(data)), rest: body };
            return Ok(Buffered::Streamed(rest.boxed()));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Buffered::Whole(Bytes::from(data)))
}

struct Exchange {
    ctx: Arc<ConnCtx>,
    session: HttpFlowSession,
    request: Request,
    start: Instant,
}

impl Exchange {
    fn record(&self, outcome: Outcome) {
        let record = FlowRecord {
            id: self.session.flow.id,
            client: self.ctx.client,
            method: self.request.method.clone(),
            url: self.request.url(),
            version: self.request.version.as_str().to_owned(),
            outcome,
            duration: self.start.elapsed(),
            failures: self.session.failures().to_vec(),
        };
        (self.ctx.proxy.sink)(&record);
    }

    async fn fail(&mut self, status: u16, message: String) -> hyper::Response<Body> {
        self.session.error(&mut self.request, &message).await;
        self.record(Outcome::Error(message.clone()));
        status_response(status, &message)
    }

    fn local(&self, local: LocalResponse) -> hyper::Response<Body> {
        self.record(Outcome::Response {
            status: local.status,
            reason: canonical_reason(local.status),
            size: Some(local.body.len() as u64),
            local: true,
        });
        local_response(local)
    }

    /// Applies an action from a hook; `Ok(None)` means go on.
    async fn act(&mut self, action: HttpAction) -> Result<Option<hyper::Response<Body>>, Killed> {
        match action {
            HttpAction::Continue => Ok(None),
            HttpAction::Respond(local) => Ok(Some(self.local(local))),
            HttpAction::Kill => {
                let message = "killed by a plugin".to_owned();
                self.session.error(&mut self.request, &message).await;
                self.record(Outcome::Error(message));
                Err(Killed)
            }
            HttpAction::Fail(failure) => Ok(Some(self.fail(502, failure.to_string()).await)),
        }
    }
}

fn canonical_reason(status: u16) -> String {
    hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("").to_owned()
}

/// `wire` holds the request's header fields as they were on the wire, when known.
async fn handle(
    ctx: Arc<ConnCtx>,
    req: hyper::Request<Incoming>,
    fixed: Option<Target>,
    wire: Option<Headers>,
) -> Result<hyper::Response<Body>, Killed> {
    let start = Instant::now();
    if req.method() == hyper::Method::CONNECT && fixed.is_none() {
        return connect(ctx, req, wire).await;
    }
    let target = match &fixed {
        Some(t) => t.clone(),
        None => {
            let uri = req.uri();
            let scheme = match uri.scheme_str() {
                Some("http") => Scheme::Http,
                Some("https") => Scheme::Https,
                _ => {
                    return Ok(status_response(
                        400,
                        "flowgate is a proxy: send absolute-form requests (http://host/path)",
                    ));
                }
            };
            let Some(host) = uri.host() else { return Ok(status_response(400, "request URL has no host")) };
            Target::new(scheme, host.to_ascii_lowercase(), uri.port_u16().unwrap_or(scheme.default_port()))
        }
    };
    if fixed.is_none() && CERT_HOSTS.contains(&target.host.as_str()) {
        return Ok(cert_page(&ctx, req.uri().path()));
    }
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    let mut request = Request {
        method: req.method().as_str().to_owned(),
        scheme: target.scheme,
        host: target.host.clone(),
        port: target.port,
        path,
        version: version_of(req.version()),
        headers: wire.unwrap_or_else(|| to_headers(req.headers())),
        ..Request::default()
    };
    if let Mode::Reverse { host, port, scheme, .. } = &*ctx.mode {
        let _ = request.headers.set("host", scheme.authority(host, *port).as_bytes());
    } else if request.headers.get("host").is_none()
        && let Some(authority) = req.uri().authority()
    {
        // HTTP/2 carries the authority in `:authority`; plugins see it as Host, as in HTTP/1.1.
        let _ = request.headers.set("host", authority.as_str().as_bytes());
    }
    let session = ctx.http_flow().await;
    let mut ex = Exchange { ctx: ctx.clone(), session, request, start };

    let action = ex.session.request_headers(&mut ex.request).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    let (_parts, incoming) = req.into_parts();
    let incoming = ProgressTimeout::new(incoming, ctx.proxy.options.body_read_timeout);
    let mut body: Option<Body> = None;
    let mut stream_source = None;
    match (&ex.request.body, ex.request.body_mode) {
        (Some(_), _) => {}
        (None, flowgate_flow::BodyMode::Buffer) => match buffer(incoming, &ctx.proxy.options).await {
            Ok(Buffered::Whole(bytes)) => ex.request.body = Some(bytes.to_vec()),
            Ok(Buffered::Streamed(stream)) => {
                ex.session.flow.metadata.insert("flowgate.streamed".to_owned(), "request".to_owned());
                body = Some(stream);
            }
            Err(e) => return Ok(ex.fail(413, format!("request {e}")).await),
        },
        (None, flowgate_flow::BodyMode::Stream) => stream_source = Some(incoming),
        (None, flowgate_flow::BodyMode::Pass) => body = Some(incoming.boxed()),
    }
    let action = ex.session.request(&mut ex.request).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    // A streamed request body goes through the chunk hooks while it is sent upstream. The
    // pump task borrows the flow's session meanwhile (an empty stand-in takes its place)
    // and gives it back when the body ends.
    let mut pump = None;
    if let Some(source) = stream_source {
        let stand_in = ctx.session.lock().await.http_flow(FlowInfo::default());
        let session = std::mem::replace(&mut ex.session, stand_in);
        let (stream, returned) = stream_request_body(session, ex.request.clone(), source);
        body = Some(stream);
        pump = Some(returned);
    }

    // To the upstream.
    let prior_knowledge = fixed.as_ref().is_some_and(|f| f.prior_knowledge) && ex.request.scheme == Scheme::Http;
    let target =
        Target { scheme: ex.request.scheme, host: ex.request.host.clone(), port: ex.request.port, prior_knowledge };
    let method = match hyper::Method::from_bytes(ex.request.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Ok(ex.fail(400, format!("invalid method {:?}", ex.request.method)).await),
    };
    let mut headers = hyper::HeaderMap::new();
    fill_headers(&mut headers, &ex.request.headers);
    if pump.is_some() {
        // Chunk hooks may change sizes: the body goes chunked.
        headers.remove("content-length");
    }
    if let Some(bytes) = &ex.request.body {
        headers.insert("content-length", bytes.len().into());
    }
    let authority = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| target.scheme.authority(&target.host, target.port));
    let open = ctx.upstreams.lock().await.take(&target);
    let mut sender = match open {
        Some(sender) => sender,
        None => {
            let address = format!("{}:{}", target.host, target.port);
            let allowed = {
                let mut session = ctx.session.lock().await;
                session.info.server_address = Some(address.clone());
                session.server_connect().await
            };
            if !allowed {
                return Ok(ex.fail(502, format!("a plugin refused the connection to {address}")).await);
            }
            match upstream::connect(&ctx.proxy, &ctx.mode, &target).await {
                Ok(connected) => {
                    ctx.session.lock().await.server_connected().await;
                    connected.sender
                }
                Err(e) => return Ok(ex.fail(502, e).await),
            }
        }
    };
    // HTTP/2 upstreams take the authority as `:authority` in an absolute URI; HTTP/1.1
    // ones a Host header and origin-form (absolute-form to an upstream proxy).
    let (uri, version) = if sender.is_h2() {
        headers.remove("host");
        (format!("{}://{authority}{}", target.scheme.as_str(), ex.request.path), hyper::Version::HTTP_2)
    } else {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&authority) {
            headers.insert("host", v);
        }
        if ex.request.version == flowgate_flow::HttpVersion::Http2 {
            // An HTTP/2 client always takes trailers; an HTTP/1.1 upstream sends them only
            // when asked.
            headers.insert("te", hyper::header::HeaderValue::from_static("trailers"));
        }
        let uri = if matches!(*ctx.mode, Mode::Upstream { .. }) && target.scheme == Scheme::Http {
            ex.request.url()
        } else {
            ex.request.path.clone()
        };
        (uri, hyper::Version::HTTP_11)
    };
    let mut upstream_req = hyper::Request::new(match (body, ex.request.body.clone()) {
        (_, Some(bytes)) => full(bytes),
        (Some(stream), None) => stream,
        (None, None) => full(Bytes::new()),
    });
    *upstream_req.method_mut() = method;
    *upstream_req.version_mut() = version;
    *upstream_req.headers_mut() = headers;
    *upstream_req.uri_mut() = match uri.parse() {
        Ok(u) => u,
        Err(e) => return Ok(ex.fail(400, format!("invalid request target {uri:?}: {e}")).await),
    };
    ex.session.flow.server_address = Some(format!("{}:{}", target.host, target.port));
    let sent = sender.send(upstream_req).await;
    if let Some(returned) = pump
        && let Ok(session) = returned.await
    {
        ex.session = session;
    }
    let upstream_resp = match sent {
        Ok(r) => r,
        Err(e) => return Ok(ex.fail(502, format!("upstream failed: {e}")).await),
    };
    ctx.upstreams.lock().await.put(target, sender);

    // Back to the client.
    let (parts, upstream_body) = upstream_resp.into_parts();
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .unwrap_or_else(|| canonical_reason(parts.status.as_u16()));
    let mut response = Response {
        status: parts.status.as_u16(),
        reason,
        version: version_of(parts.version),
        headers: to_headers(&parts.headers),
        ..Response::default()
    };
    let action = ex.session.response_headers(&mut ex.request, &mut response).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    if response.body.is_none() && response.body_mode == flowgate_flow::BodyMode::Stream {
        return Ok(stream_through_plugins(ex, response, upstream_body));
    }
    let mut stream_body = None;
    if response.body.is_none() && response.body_mode != flowgate_flow::BodyMode::Pass {
        match buffer(upstream_body.map_err(Into::into), &ctx.proxy.options).await {
            Ok(Buffered::Whole(bytes)) => response.body = Some(bytes.to_vec()),
            Ok(Buffered::Streamed(stream)) => {
                ex.session.flow.metadata.insert("flowgate.streamed".to_owned(), "response".to_owned());
                stream_body = Some(stream);
            }
            Err(e) => return Ok(ex.fail(502, format!("response {e}")).await),
        }
    } else if response.body.is_none() {
        stream_body = Some(upstream_body.map_err(Into::into).boxed());
    }
    let action = ex.session.response(&mut ex.request, &mut response).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    let size = match (&response.body, parts.headers.get("content-length")) {
        (Some(b), _) => Some(b.len() as u64),
        (None, Some(cl)) => cl.to_str().ok().and_then(|s| s.parse().ok()),
        (None, None) => None,
    };
    let mut client_resp = hyper::Response::new(match (stream_body, response.body.clone()) {
        (_, Some(bytes)) => full(bytes),
        (Some(stream), None) => stream,
        (None, None) => full(Bytes::new()),
    });
    *client_resp.status_mut() = hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    fill_headers(client_resp.headers_mut(), &response.headers);
    if let Some(bytes) = &response.body {
        client_resp.headers_mut().insert("content-length", bytes.len().into());
    }
    ex.record(Outcome::Response { status: response.status, reason: response.reason.clone(), size, local: false });
    Ok(client_resp)
}

/// Frames of a body produced by a task, with backpressure (a bounded channel).
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, BoxError>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<hyper::body::Frame<Bytes>, BoxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Streams a request body through the chunk hooks of the plugins that chose `stream`; the
/// session comes back through the returned channel when the body has ended.
fn stream_request_body<B>(
    mut session: HttpFlowSession,
    mut request: Request,
    mut source: B,
) -> (Body, tokio::sync::oneshot::Receiver<HttpFlowSession>)
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut trailers = None;
        loop {
            let (data, end) = match source.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data.to_vec(), false),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                None => (Vec::new(), true),
            };
            match session.request_body_chunk(&mut request, data, end).await {
                Ok(out) => {
                    if !out.is_empty() && tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                        break;
                    }
                }
                Err(action) => {
                    let _ = tx.send(Err(format!("request body refused by a plugin: {action:?}").into())).await;
                    break;
                }
            }
            if end {
                if let Some(trailers) = trailers.take() {
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                }
                break;
            }
        }
        drop(tx);
        let _ = done_tx.send(session);
    });
    (http_body_util::StreamBody::new(ChannelBody(rx)).boxed(), done_rx)
}

/// Streams a response body chunk by chunk through the plugins that chose `stream`; the
/// `response` hook runs and the flow is recorded when the body ends.
fn stream_through_plugins(mut ex: Exchange, mut response: Response, mut upstream: Incoming) -> hyper::Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client_resp = hyper::Response::new(http_body_util::StreamBody::new(ChannelBody(rx)).boxed());
    *client_resp.status_mut() = hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    fill_headers(client_resp.headers_mut(), &response.headers);
    // Chunks may change size: the length is no longer known.
    client_resp.headers_mut().remove("content-length");
    tokio::spawn(async move {
        let mut size = 0u64;
        let mut trailers = None;
        let failed = loop {
            let (data, end) = match upstream.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data.to_vec(), false),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
                Some(Err(e)) => break Some(format!("upstream body failed: {e}")),
                None => (Vec::new(), true),
            };
            match ex.session.response_body_chunk(&mut ex.request, &mut response, data, end).await {
                Ok(out) => {
                    size += out.len() as u64;
                    if !out.is_empty() && tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                        break Some("the client went away".to_owned());
                    }
                }
                Err(action) => break Some(format!("{action:?}")),
            }
            if end {
                break None;
            }
        };
        match failed {
            Some(message) => {
                let _ = tx.send(Err(message.clone().into())).await;
                ex.session.error(&mut ex.request, &message).await;
                ex.record(Outcome::Error(message));
            }
            None => {
                if let Some(trailers) = trailers {
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                }
                drop(tx);
                let _ = ex.session.response(&mut ex.request, &mut response).await;
                ex.record(Outcome::Response {
                    status: response.status,
                    reason: response.reason.clone(),
                    size: Some(size),
                    local: false,
                });
            }
        }
    });
    client_resp
}

/// CONNECT in regular and upstream mode: answer 200, then look at what the client sends.
async fn connect(
    ctx: Arc<ConnCtx>,
    req: hyper::Request<Incoming>,
    wire: Option<Headers>,
) -> Result<hyper::Response<Body>, Killed> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(status_response(400, "CONNECT needs host:port"));
    };
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(443);
    let session = ctx.http_flow().await;
    let request = Request {
        method: "CONNECT".to_owned(),
        scheme: Scheme::Https,
        host: host.clone(),
        port,
        path: "/".to_owned(),
        version: version_of(req.version()),
        headers: wire.unwrap_or_else(|| to_headers(req.headers())),
        ..Request::default()
    };
    let mut ex = Exchange { ctx: ctx.clone(), session, request, start: Instant::now() };
    let action = ex.session.http_connect(&mut ex.request).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    ctx.retain();
    tokio::spawn(async move {
        let served = ctx.clone();
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => tunnel_boxed(ctx, TokioIo::new(upgraded), host, port).await,
            Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
        }
        served.release().await;
    });
    Ok(hyper::Response::new(full(Bytes::new())))
}

/// Boxed to break the type cycle tunnel -> serve_h1/serve_h2 -> handle -> connect -> tunnel.
fn tunnel_boxed(
    ctx: Arc<ConnCtx>,
    io: TokioIo<hyper::upgrade::Upgraded>,
    host: String,
    port: u16,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(tunnel(ctx, io, host, port))
}

async fn tunnel<IO>(ctx: Arc<ConnCtx>, mut io: IO, host: String, port: u16)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = vec![0u8; 4096];
    let n = match io.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    first.truncate(n);
    if first[0] == TLS_HANDSHAKE {
        Box::pin(intercept_tls(ctx, io, first, Target::new(Scheme::Https, host, port))).await;
    } else {
        // A client speaking HTTP/2 with prior knowledge inside a tunnel knows the origin does.
        let target = Target::new(Scheme::Http, host, port);
        serve_cleartext(ctx, io, first, Some(target), PriorKnowledge::OfOrigin).await;
    }
}

async fn intercept_tls<IO>(ctx: Arc<ConnCtx>, io: IO, buf: Vec<u8>, target: Target)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The handshake's state (ClientHello, upstream connection, certificate, rustls'
    // acceptor: ~12 KiB) lives in a box of its own, freed once the handshake is done, so
    // an idle intercepted connection keeps only its TLS stream and HTTP state.
    let Some(tls) = Box::pin(accept_tls(&ctx, io, buf, &target)).await else { return };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(ctx, tls, Some(target)).await;
    } else {
        serve_h1(ctx, tls, Some(target)).await;
    }
}

/// Peeks at the ClientHello, asks the plugins, connects upstream and completes the
/// client's handshake with a minted certificate; `None` if the connection was passed
/// through or the handshake failed (both recorded).
async fn accept_tls<IO>(
    ctx: &Arc<ConnCtx>,
    mut io: IO,
    buf: Vec<u8>,
    target: &Target,
) -> Option<tokio_rustls::server::TlsStream<Prefixed<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (hello, buf) = match peek_client_hello(&mut io, buf).await {
        Ok(peeked) => peeked,
        Err(e) => {
            ctx.session.lock().await.tls_result(TlsSide::Client, Some(&e.to_string())).await;
            return None;
        }
    };
    let sni = hello.sni.clone();
    let name = sni.clone().unwrap_or_else(|| target.host.clone());
    let host_port = format!("{name}:{}", target.port);
    let opts = &ctx.proxy.options;
    let ignored = opts.ignore_hosts.as_ref().is_some_and(|r| r.is_match(&host_port))
        || opts.allow_hosts.as_ref().is_some_and(|r| !r.is_match(&host_port));
    let decision = if ignored {
        TlsDecision::Passthrough
    } else {
        let mut session = ctx.session.lock().await;
        session.info.sni = sni.clone();
        session.info.tls = true;
        match session.tls_clienthello(sni.as_deref(), &hello.alpn).await {
            Ok(d) => d,
            Err(_) => return None,
        }
    };
    if decision == TlsDecision::Passthrough {
        passthrough(ctx, io, buf, target).await;
        return None;
    }
    // Connect upstream first (mitmproxy's eager strategy) so the minted certificate carries
    // the upstream certificate's names too; if that fails, the flow reports it later.
    let mut names = vec![name.clone()];
    let mut upstream_h2 = false;
    if target.scheme == Scheme::Https {
        let allowed = {
            let mut session = ctx.session.lock().await;
            session.info.server_address = Some(format!("{}:{}", target.host, target.port));
            session.server_connect().await
        };
        if allowed && let Ok(connected) = upstream::connect(&ctx.proxy, &ctx.mode, target).await {
            upstream_h2 = connected.sender.is_h2();
            ctx.session.lock().await.server_connected().await;
            for san in connected.sans {
                if !names.iter().any(|n| n.eq_ignore_ascii_case(&san)) {
                    names.push(san);
                }
            }
            ctx.upstreams.lock().await.put(target.clone(), connected.sender);
        }
    }
    let leaf = match ctx.proxy.ca.leaf(&names) {
        Ok(leaf) => leaf,
        Err(e) => {
            tracing::warn!("{e}");
            return None;
        }
    };
    // HTTP/2 is offered to the client when the upstream speaks it, and in reverse mode,
    // where flowgate is the server and translates to HTTP/1.1 if the upstream lacks it.
    // When intercepting, the client believes it talks to the origin: offering h2 to a
    // client of an HTTP/1.1-only origin would change what the client sees.
    let reverse = matches!(*ctx.mode, Mode::Reverse { .. });
    let offer = if ctx.proxy.options.http2 && (upstream_h2 || reverse) { Offer::Http2AndHttp1 } else { Offer::Http1 };
    let config = server_config(&ctx.proxy.tls_server, leaf, &hello.alpn, offer);
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), Prefixed::new(buf, io));
    let handshake = match acceptor.await {
        Ok(start) => start.into_stream(config).await,
        Err(e) => Err(e),
    };
    match handshake {
        Ok(tls) => {
            ctx.session.lock().await.tls_result(TlsSide::Client, None).await;
            Some(tls)
        }
        Err(e) => {
            let message = format!("client TLS handshake failed: {e}");
            tracing::debug!("{}: {message}", ctx.client);
            ctx.session.lock().await.tls_result(TlsSide::Client, Some(&message)).await;
            None
        }
    }
}

/// Relays the encrypted bytes between client and upstream untouched.
async fn passthrough<IO>(ctx: &ConnCtx, mut io: IO, hello: Vec<u8>, target: &Target)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (host, port) = (target.host.trim_start_matches('[').trim_end_matches(']').to_owned(), target.port);
    let connected =
        tokio::time::timeout(ctx.proxy.options.connect_timeout, TcpStream::connect((host.as_str(), port))).await;
    let Ok(Ok(mut upstream)) = connected else {
        tracing::debug!("passthrough to {host}:{port} failed to connect");
        return;
    };
    if upstream.write_all(&hello).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
}

/// The page special hosts serve: the CA certificate with install hints.
fn cert_page(ctx: &ConnCtx, path: &str) -> hyper::Response<Body> {
    let ca = &ctx.proxy.ca;
    let (content_type, body, disposition): (&str, Bytes, Option<&str>) = match path {
        "/cert/pem" => {
            ("application/x-x509-ca-cert", Bytes::from(ca.cert_pem().to_owned()), Some("flowgate-ca-cert.pem"))
        }
        "/cert/cer" | "/cert/der" => {
            ("application/pkix-cert", Bytes::from(ca.cert_der().to_vec()), Some("flowgate-ca-cert.cer"))
        }
        "/" => ("text/html; charset=utf-8", Bytes::from_static(CERT_HTML.as_bytes()), None),
        _ => return status_response(404, "not found: try /, /cert/pem, /cert/cer or /cert/p12"),
    };
    let mut resp = hyper::Response::new(full(body));
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(content_type));
    if let Some(name) = disposition
        && let Ok(v) = hyper::header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
    {
        resp.headers_mut().insert("content-disposition", v);
    }
    resp
}

const CERT_HTML: &str = "<!doctype html>
<html><head><title>flowgate CA</title></head><body>
<h1>Install flowgate's CA certificate</h1>
<p>Your traffic goes through flowgate. To let it inspect HTTPS, trust its certificate authority:</p>
<ul>
<li><a href=\"/cert/pem\">PEM</a> (Linux, macOS, Firefox, curl <code>--cacert</code>)</li>
<li><a href=\"/cert/cer\">DER (.cer)</a> (Windows, Android)</li>
<li><a href=\"/cert/p12\">PKCS#12 (.p12)</a> (Windows, macOS; empty password)</li>
</ul>
<p>Linux: <code>sudo cp flowgate-ca-cert.pem /usr/local/share/ca-certificates/flowgate.crt &amp;&amp; sudo update-ca-certificates</code><br>
macOS: <code>sudo security add-trusted-cert -d -p ssl -k /Library/Keychains/System.keychain flowgate-ca-cert.pem</code></p>
</body></html>
";
