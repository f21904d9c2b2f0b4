//! The HTTP layers on the client side: hyper's HTTP/1.1 and HTTP/2 servers, the h2c
//! upgrade, and what hands a stream on (a 2xx CONNECT, a 101). Each request becomes one
//! [`exchange`]; bodies are in [`body`]; the CA download host is [`cert`]. The HTTP/2
//! pieces flowgate owns are [`h2`], strict HTTP/1 request framing is [`h1guard`].

mod body;
mod cert;
mod connect;
mod exchange;
pub(crate) mod h1guard;
pub(crate) mod h2;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::conn::{ConnCtx, Next, PendingSwitch};
use crate::layer::Stage;
use crate::tls::Prefixed;
use crate::upstream::{Body, Target};

pub(crate) use exchange::handle;

/// Header fields that describe one hop and are not forwarded.
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

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

/// Where a request hands its stream on (CONNECT 2xx, a 101 upgrade).
#[derive(Clone)]
pub(crate) enum Handoff {
    /// HTTP/1.x: the connection itself switches once hyper has written the response, so
    /// the switch waits in this slot for the layer to return it.
    Connection(Arc<std::sync::Mutex<Option<PendingSwitch>>>),
    /// HTTP/2: the stream is a tunnel of its own, run beside the connection's other streams.
    Stream,
}

impl Handoff {
    /// Hands `pending` on.
    pub(crate) fn hand(&self, ctx: &Arc<ConnCtx>, pending: PendingSwitch) {
        match self {
            Handoff::Connection(slot) => {
                *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pending);
            }
            Handoff::Stream => crate::conn::spawn_switch(ctx.clone(), pending),
        }
    }
}

/// The HTTP/2 layer: each stream is a flow, handled in its own task.
pub(crate) async fn serve_h2<IO>(ctx: Arc<ConnCtx>, io: IO, fixed: Option<Target>) -> Next
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        let fixed = fixed.clone();
        async move { handle(ctx, req, fixed, None, Handoff::Stream).await }
    });
    let builder = h2::server_builder(&ctx.proxy.options);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!("client {} (HTTP/2): {e}", ctx.client);
    }
    Next::Done
}

/// The HTTP/1.x layer, one request at a time; it ends with a switch when a request
/// handed the connection on.
pub(crate) async fn serve_h1<IO>(ctx: Arc<ConnCtx>, io: IO, fixed: Option<Target>) -> Next
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
    let io = h1guard::Guarded::new(io);
    let heads = io.heads();
    let slot = Arc::new(std::sync::Mutex::new(None));
    let handoff = Handoff::Connection(slot.clone());
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        let fixed = fixed.clone();
        let wire = heads.next();
        let handoff = handoff.clone();
        async move {
            if ctx.proxy.options.http2 && h2::wants_h2c_upgrade(req.headers()) {
                return Ok(upgrade_h2c(&ctx, req, fixed, &handoff));
            }
            handle(ctx, req, fixed, wire, handoff).await
        }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).with_upgrades().await {
        tracing::debug!("client {}: {e}", ctx.client);
    }
    let pending = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let Some(pending) = pending else { return Next::Done };
    match pending.upgrade.await {
        Ok(upgraded) => Next::Switch(pending.stage, Box::new(TokioIo::new(upgraded))),
        Err(e) => {
            tracing::debug!("{}: upgrade failed: {e}", ctx.client);
            Next::Done
        }
    }
}

/// Answers `Upgrade: h2c` with 101 and hands the connection on to HTTP/2; the upgrading
/// request becomes stream 1 (RFC 7540 section 3.2), handled as any other.
fn upgrade_h2c(
    ctx: &Arc<ConnCtx>,
    mut req: hyper::Request<Incoming>,
    fixed: Option<Target>,
    handoff: &Handoff,
) -> hyper::Response<Body> {
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
    handoff.hand(ctx, PendingSwitch { stage: Stage::UpgradedH2c { fields, fixed }, upgrade });
    let mut resp = hyper::Response::new(full(Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert("connection", hyper::header::HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert("upgrade", hyper::header::HeaderValue::from_static("h2c"));
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
