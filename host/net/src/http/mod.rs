//! The HTTP layers: HTTP/1.x of flowgate's own ([`h1`], both sides) and hyper's HTTP/2
//! (client side here, upstream in `upstream`), the h2c upgrade, and what hands a stream
//! on (a 2xx CONNECT, a 101). Each request becomes one version-free [`exchange`]; bodies
//! are in [`body`]; the CA download host is [`cert`]; the HTTP/2 pieces flowgate owns
//! are in [`h2`].

mod body;
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
    let service = service_fn(move |req| {
        let ctx = service_ctx.clone();
        let fixed = fixed.clone();
        async move { h2_stream(ctx, req, fixed).await }
    });
    let builder = h2::server_builder(&ctx.proxy.options);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!("client {} (HTTP/2): {e}", ctx.client);
    }
    Next::Done
}

/// One HTTP/2 stream: a CONNECT becomes a tunnel of its own beside the connection's
/// other streams; any other request an exchange, translated from and to hyper's types.
async fn h2_stream(
    ctx: Arc<ConnCtx>,
    mut req: hyper::Request<hyper::body::Incoming>,
    fixed: Option<Target>,
) -> Result<hyper::Response<Body>, Killed> {
    let headers = exchange::to_headers(req.headers());
    let version = exchange::version_of(req.version());
    if req.method() == hyper::Method::CONNECT && fixed.is_none() {
        let Some(authority) = req.uri().authority().cloned() else {
            return Ok(to_hyper(exchange::status_response(400, "CONNECT needs host:port")));
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
            connect::Answer::Reply(reply) => Ok(to_hyper(reply)),
            connect::Answer::Tunnel(stage) => {
                let upgrade = hyper::upgrade::on(&mut req);
                crate::conn::spawn_switch(ctx, PendingSwitch { stage, upgrade });
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
    exchange::handle(ctx, inbound, fixed, None).await.map(to_hyper)
}

/// A reply as hyper's HTTP/2 server writes it (names lowercase, hop-by-hop fields gone).
fn to_hyper(reply: exchange::Reply) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(reply.body);
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
