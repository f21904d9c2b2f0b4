//! CONNECT in regular and upstream mode: the http-connect hook, then 200 and a switch to
//! the tunnel stage, where `next_layer` looks at what the client sends.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flowgate_flow::{Headers, Request, Scheme};
use hyper::body::Incoming;

use super::exchange::{Exchange, status_response, to_headers, version_of};
use super::{Handoff, Killed, full};
use crate::conn::{ConnCtx, PendingSwitch};
use crate::layer::Stage;
use crate::upstream::Body;

/// Answers a CONNECT: the http-connect hooks may answer or kill it; else 200 and the
/// connection (or, over HTTP/2, the stream) goes on as a tunnel to `host:port`.
pub(crate) async fn connect(
    ctx: Arc<ConnCtx>,
    mut req: hyper::Request<Incoming>,
    wire: Option<Headers>,
    handoff: Handoff,
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
    let upgrade = hyper::upgrade::on(&mut req);
    handoff.hand(&ctx, PendingSwitch { stage: Stage::Tunnel { host, port }, upgrade });
    Ok(hyper::Response::new(full(Bytes::new())))
}
