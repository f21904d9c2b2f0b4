//! The response phase of an exchange: the response hooks, the body buffered or streamed
//! through the chunk hooks, framing fields that follow the body the plugins left, and the
//! flow's one recorded outcome; or the WebSocket handshake's answer.

use bytes::Bytes;
use flowgate_flow::{BodyMode, Response};
use http_body_util::BodyExt;

use super::super::body::{Buffered, Held, buffer, stream_through_plugins, with_trailers};
use super::super::{Killed, full};
use super::{Exchange, Reply, canonical_reason, declared_length, set_length, to_headers};
use crate::error::UpstreamError;
use crate::memory::Reservation;
use crate::record::Outcome;
use crate::upstream::Body;
use crate::websocket::{self, Side};

/// From the upstream's response head to the reply for the client. `request_held` is the
/// buffered request body's share of `buffer_memory_limit`, given back once the flow is
/// recorded.
pub(super) async fn respond(
    mut ex: Exchange,
    mut response: Response,
    upstream_body: Body,
    upgraded: Option<Side>,
    offered: &[flowgate_ws::Extension],
    request_held: Option<Reservation>,
) -> Result<Reply, Killed> {
    let ctx = ex.ctx.clone();
    let opts = &ctx.proxy.options;
    if response.reason.is_empty() {
        response.reason = canonical_reason(response.status);
    }
    let upstream_length = declared_length(&response.headers);
    if response.status == 101 && (upgraded.is_none() || !websocket::is_upgrade(&ex.request)) {
        // Only a WebSocket upgrade is asked for (h2c is the client layer's own).
        let message = "the upstream switched protocols unasked (101 to a request that is not a WebSocket upgrade)";
        return Ok(ex.fail(UpstreamError::Wire(message.to_owned())).await);
    }
    let action = ex.session.response_headers(&mut ex.request, &mut response).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    if let Some(upstream) = upgraded {
        return Box::pin(websocket_reply(ex, response, upstream, offered)).await;
    }
    let mut stream_body = None;
    let mut response_trailers = None;
    let mut response_held = None;
    if response.body.is_none() && response.body_mode == BodyMode::Stream {
        if !hyper::body::Body::is_end_stream(&upstream_body) {
            return Ok(stream_through_plugins(ex, response, upstream_body));
        }
        // Nothing will come (a HEAD answer, a 204, gRPC's trailers-only answer): the end
        // goes through the chunk hooks now. An empty result keeps the response without a
        // body (HTTP/2: HEADERS with END_STREAM, which gRPC needs) and its headers as
        // they are; bytes a plugin made become the body.
        match ex.session.response_body_chunk(&mut ex.request, &mut response, Vec::new(), true).await {
            Ok(out) if out.is_empty() => stream_body = Some(full(Bytes::new())),
            Ok(out) => response.body = Some(out.into()),
            Err(action) => {
                if let Some(resp) = ex.act(action).await? {
                    return Ok(resp);
                }
            }
        }
    }
    let no_body = ex.request.method == "HEAD" || matches!(response.status, 100..=199 | 204 | 304);
    if response.body.is_none() && stream_body.is_none() && response.body_mode != BodyMode::Pass {
        let length = if no_body { Some(0) } else { upstream_length };
        match buffer(upstream_body, opts, &ctx.proxy.buffers, length).await {
            Ok(Buffered::Whole(bytes, trailers, held)) => {
                response_held = Some(held);
                // A HEAD answer's length is the one a GET would have had: it stays.
                if !no_body {
                    response.body = Some(bytes);
                } else {
                    stream_body = Some(full(Bytes::new()));
                }
                if let Some(t) = &trailers {
                    response.trailers = to_headers(t);
                }
                response_trailers = trailers;
            }
            Ok(Buffered::Streamed(stream)) => {
                ex.session.flow.metadata.insert("flowgate.streamed".to_owned(), "response".to_owned());
                stream_body = Some(stream);
            }
            Err(e) => return Ok(ex.fail(e.of_response()).await),
        }
    } else if response.body.is_none() && stream_body.is_none() {
        stream_body = Some(upstream_body);
    }
    let action = ex.session.response(&mut ex.request, &mut response).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    let size = match &response.body {
        Some(b) => Some(b.len() as u64),
        None => upstream_length,
    };
    // Trailers go after a chunked body (HTTP/1.1) or as a HEADERS frame (HTTP/2), so a
    // body with trailers gets no content-length.
    if let Some(bytes) = &response.body {
        if response_trailers.is_some() || response.headers.contains("transfer-encoding") {
            response.headers.remove("content-length");
        } else {
            set_length(&mut response.headers, bytes.len());
        }
    }
    let mut client_body = match (stream_body, response.body.clone()) {
        (_, Some(bytes)) => with_trailers(bytes, response_trailers),
        (Some(stream), None) => stream,
        (None, None) => full(Bytes::new()),
    };
    let outcome = Outcome::Response { status: response.status, reason: response.reason.clone(), size, local: false };
    // Nothing follows a HEAD answer, a 1xx, 204 or 304 (the client's layer never reads
    // the body): recorded as empty, not as a body that was not stored.
    let bodiless =
        (no_body && response.body.is_none()).then(|| Response { body: Some(Bytes::new()), ..response.clone() });
    if let Some(held) = response_held {
        // The buffered body counts against buffer_memory_limit until it is written.
        client_body = Held::new(client_body, held).boxed();
    } else if bodiless.is_none() {
        client_body = ex.tee_response(client_body);
    }
    drop(request_held);
    ex.record_with(outcome, Some(bodiless.as_ref().unwrap_or(&response)));
    Ok(Reply { response, body: client_body, upgrade: None })
}

/// The upstream agreed to a WebSocket: the `response` hooks see the 101 (a plugin may
/// still answer instead, and the upstream connection is dropped), the handshake is
/// reported as the flow's line, and the reply carries what the WebSocket layer needs once
/// the client's layer has sent the 101.
async fn websocket_reply(
    mut ex: Exchange,
    mut response: Response,
    upstream: Side,
    offered: &[flowgate_ws::Extension],
) -> Result<Reply, Killed> {
    let legs = match websocket::negotiate(offered, &mut response) {
        Ok(legs) => legs,
        Err(message) => return Ok(ex.fail(UpstreamError::Wire(message)).await),
    };
    response.body = Some(Bytes::new());
    let action = ex.session.response(&mut ex.request, &mut response).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    ex.record_line(Outcome::Response {
        status: response.status,
        reason: response.reason.clone(),
        size: Some(0),
        local: false,
    });
    let head = Response { body: None, ..response.clone() };
    let start = websocket::Start { ex, response, upstream, legs };
    Ok(Reply { response: head, body: full(Bytes::new()), upgrade: Some(Box::new(start)) })
}
