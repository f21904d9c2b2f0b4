//! The upstream leg of an exchange: where the request goes (checked again if a plugin
//! moved it), a pooled, shared or new connection, the request sent with its framing
//! fields following the body the plugins left, and the response head back within
//! `upstream_timeout`.

use std::net::SocketAddr;

use bytes::Bytes;
use flowgate_flow::{Request, Response, Scheme};
use flowgate_runtime::Reroute;
use http_body_util::BodyExt;

use super::super::body::{ProgressTimeout, Stall, Turn, Watched, stream_request_body, with_trailers};
use super::super::{Killed, full};
use super::{Exchange, Interim, Reply, set_length};
use crate::Mode;
use crate::capture::now;
use crate::conn::ConnCtx;
use crate::egress::resolve_checked;
use crate::error::Error;
use crate::upstream::{Body, Outbound, Target};
use crate::websocket::Side;

/// What the upstream leg of an exchange takes from the request's side.
pub(super) struct UpstreamLeg<B> {
    /// Where the client sent the request (before plugins).
    pub original: Target,
    /// The layer's fixed target, if any.
    pub fixed: Option<Target>,
    /// A request body to stream through the chunk hooks while it goes up.
    pub stream_source: Option<B>,
    /// A request body passed (or streamed past the buffer) as it is.
    pub body: Option<Body>,
    /// The buffered request body's trailers.
    pub request_trailers: Option<hyper::HeaderMap>,
    /// Where the upstream's 1xx responses go.
    pub interim: Option<Interim>,
}

/// Sends the request to its upstream (checked if a plugin moved it, on a pooled or new
/// connection) and returns the response head and body; `Err` is the reply that ended
/// the flow instead (recorded already).
pub(super) async fn send_upstream<B>(
    ex: &mut Exchange,
    leg: UpstreamLeg<B>,
) -> Result<Result<(Response, Body, Option<Side>), Reply>, Killed>
where
    B: hyper::body::Body<Data = Bytes, Error = crate::upstream::BoxError> + Unpin + Send + 'static,
{
    let UpstreamLeg { original, fixed, stream_source, mut body, request_trailers, interim } = leg;
    let ctx = ex.ctx.clone();
    let opts = &ctx.proxy.options;
    // A streamed request body goes through the chunk hooks while it is sent upstream. The
    // pump task borrows the flow's session meanwhile (an empty stand-in takes its place)
    // and gives it back when the body ends.
    let mut pump = None;
    if let Some(source) = stream_source {
        // The stand-in has the flow's facts, so whatever it might record is the flow's.
        let stand_in = ctx.flows.http_flow(ex.session.flow.clone());
        let session = std::mem::replace(&mut ex.session, stand_in);
        let (stream, returned) = stream_request_body(session, ex.request.clone(), source);
        body = Some(ex.tee_request(stream));
        pump = Some(returned);
    }

    // To the upstream. What goes out is what the flow holds: framing fields follow the
    // body the plugins left.
    let prior_knowledge = fixed.as_ref().is_some_and(|f| f.prior_knowledge) && ex.request.scheme == Scheme::Http;
    let mut target =
        Target { prior_knowledge, ..Target::new(ex.request.scheme, ex.request.host.clone(), ex.request.port) };
    if (target.scheme, &target.host, target.port) != (original.scheme, &original.host, original.port) {
        // Boxed, like opening a connection below: rare, and large enough to double the
        // size of every request's upstream leg.
        match Box::pin(rerouted(&ctx, ex.session.reroute(), &target)).await {
            Ok(pinned) => target.pinned = pinned,
            Err(message) => return Ok(Err(ex.fail(Error::Plugin(message)).await)),
        }
    } else {
        // Inside a tunnel a plugin moved, the flows go where the tunnel was checked to go.
        target.pinned = original.pinned;
        // The client's SNI stays the server name unless a plugin sent the request elsewhere.
        target.sni = original.sni.clone();
    }
    if pump.is_some() {
        // Chunk hooks may change sizes: the body goes chunked.
        ex.request.headers.remove("content-length");
    }
    if let Some(bytes) = &ex.request.body {
        // A body with trailers or transfer codings goes chunked: no length.
        if request_trailers.is_some() || ex.request.headers.contains("transfer-encoding") {
            ex.request.headers.remove("content-length");
        } else if bytes.is_empty() && !ex.request.headers.contains("content-length") && !method_has_body(&ex.request) {
            // A GET stays without a length.
        } else {
            set_length(&mut ex.request.headers, bytes.len());
        }
    }
    let open = ctx.upstreams.lock().await.take(&target);
    let mut sender = match open {
        Some(sender) => sender,
        None => match Box::pin(ctx.open_upstream(&target)).await {
            Ok(connected) => connected.sender,
            Err(e) => return Ok(Err(ex.fail(e).await)),
        },
    };
    let upstream_body = match (body, ex.request.body.clone()) {
        (_, Some(bytes)) => with_trailers(bytes, request_trailers),
        (Some(stream), None) => stream,
        (None, None) => full(Bytes::new()),
    };
    // HTTP/1.1 to an upstream proxy takes plain-HTTP requests in absolute form.
    let absolute = matches!(*ctx.mode, Mode::Upstream { .. }) && target.scheme == Scheme::Http;
    ex.session.flow.server_address = Some(format!("{}:{}", target.host, target.port));
    // The upstream's stalls are bounded; the request body's waits for the client are not
    // its (body_read_timeout bounds those).
    let turn = Turn::new();
    let upstream_body = Watched::new(upstream_body, turn.clone()).boxed();
    let outbound = Outbound { request: &ex.request, absolute, body: upstream_body, interim };
    let head_stall =
        Stall { what: "response head from the upstream", after: opts.upstream_timeout, option: "upstream_timeout" };
    let sent = turn.bound(sender.send(outbound, opts), head_stall).await;
    if let Some(returned) = pump
        && let Ok(pumped) = returned.await
    {
        ex.session = pumped.session;
        // The chunk hooks' edits (and the trailers) land on the flow itself.
        ex.request = pumped.request;
        // A plugin that stopped the body decides the flow's fate, not the upstream's
        // reaction to the cut-off body.
        if let Some(action) = pumped.stopped {
            drop(sent);
            if let Some(resp) = ex.act(action).await? {
                return Ok(Err(resp));
            }
            return Ok(Err(ex.fail(Error::Internal("a plugin stopped the request body".to_owned())).await));
        }
    }
    let (mut response, upstream_body, upgraded) = match sent {
        Ok(r) => r,
        Err(e) => return Ok(Err(ex.fail(e).await)),
    };
    response.timestamp_start = Some(now());
    let body_stall = Stall {
        what: "response body data from the upstream",
        after: opts.upstream_timeout,
        option: "upstream_timeout",
    };
    let upstream_body = ProgressTimeout::new(upstream_body, body_stall).boxed();
    ctx.upstreams.lock().await.put(target, sender);
    Ok(Ok((response, upstream_body, upgraded)))
}

/// Checks a destination a plugin rerouted the flow to, with that plugin's
/// `allowed_upstream_hosts`, after DNS: the address to connect to, or why not. In
/// upstream mode the upstream proxy resolves names, so a name is checked against the
/// patterns and an IP literal against the address rules too.
pub(crate) async fn rerouted(
    ctx: &ConnCtx,
    reroute: Option<&Reroute>,
    target: &Target,
) -> Result<Option<SocketAddr>, String> {
    let url = format!("{}://{}", target.scheme.as_str(), target.scheme.authority(&target.host, target.port));
    let Some(reroute) = reroute else {
        return Err(format!("the flow was rerouted to {url} by no plugin's grant"));
    };
    let refused = |why: &dyn std::fmt::Display| {
        format!(
            "plugin {} rerouted the flow to {url}, which is refused: {why} (capabilities.allowed_upstream_hosts)",
            reroute.plugin
        )
    };
    if let Mode::Upstream { .. } = &*ctx.mode {
        let bare = target.host.trim_start_matches('[').trim_end_matches(']');
        return match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                reroute.allowed.check(&target.host, &[SocketAddr::new(ip, target.port)]).map_err(|e| refused(&e))?;
                Ok(None)
            }
            Err(_) if reroute.allowed.allows_host(&target.host) => Ok(None),
            Err(_) => Err(refused(&"the host is not in the allow-list")),
        };
    }
    let timeout = ctx.proxy.options.connect_timeout;
    match tokio::time::timeout(timeout, resolve_checked(&reroute.allowed, &target.host, target.port)).await {
        Ok(Ok(addr)) => Ok(Some(addr)),
        Ok(Err(e)) => Err(refused(&e)),
        Err(_) => Err(refused(&format!("resolving took longer than {timeout:?} (connect_timeout)"))),
    }
}

/// Whether a request's method carries a body by convention, so an empty one is sent
/// with `Content-Length: 0`.
fn method_has_body(request: &Request) -> bool {
    matches!(request.method.as_str(), "POST" | "PUT" | "PATCH")
}
