//! One HTTP exchange, whatever the versions on either side: the hooks in order
//! (request-headers, [buffer], request, upstream, response-headers, [buffer or stream
//! through chunk hooks], response) and exactly one recorded outcome.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flowgate_flow::{FlowInfo, Headers, HttpVersion, LocalResponse, Request, Response, Scheme};
use flowgate_runtime::{HttpAction, HttpFlowSession};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{Buffered, ProgressTimeout, buffer, stream_request_body, stream_through_plugins, with_trailers};
use super::cert::{CERT_HOSTS, cert_page};
use super::{HOP_BY_HOP, Handoff, Killed, full};
use crate::Mode;
use crate::conn::ConnCtx;
use crate::error::{ClientError, Error, UpstreamError};
use crate::record::{FlowRecord, Kind, Outcome};
use crate::upstream::{self, Body, Target};

pub(crate) fn status_response(status: u16, message: &str) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(full(format!("{message}\n")));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

pub(crate) fn local_response(local: LocalResponse) -> hyper::Response<Body> {
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

pub(crate) fn to_headers(map: &hyper::HeaderMap) -> Headers {
    let mut headers = Headers::new();
    for (name, value) in map {
        // hyper has already validated names and values.
        let _ = headers.append(name.as_str(), value.as_bytes());
    }
    headers
}

pub(crate) fn fill_headers(map: &mut hyper::HeaderMap, headers: &Headers) {
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

pub(crate) fn version_of(v: hyper::Version) -> HttpVersion {
    match v {
        hyper::Version::HTTP_10 => HttpVersion::Http10,
        hyper::Version::HTTP_2 => HttpVersion::Http2,
        hyper::Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    }
}

/// One request's flow: its connection, plugin session, request and start time.
pub(crate) struct Exchange {
    pub ctx: Arc<ConnCtx>,
    pub session: HttpFlowSession,
    pub request: Request,
    pub start: Instant,
}

impl Exchange {
    /// Reports the flow's one outcome.
    pub fn record(&self, outcome: Outcome) {
        let kind = Kind::Http {
            method: self.request.method.clone(),
            url: self.request.url(),
            version: self.request.version.as_str().to_owned(),
            outcome,
        };
        let record = FlowRecord {
            id: self.session.flow.id,
            client: self.ctx.client,
            kind,
            duration: self.start.elapsed(),
            failures: self.session.failures().to_vec(),
        };
        (self.ctx.proxy.sink)(&record);
    }

    /// Fails the flow: the error hooks run, the error is recorded, the client gets the
    /// error's status.
    pub async fn fail(&mut self, error: impl Into<Error>) -> hyper::Response<Body> {
        let error = error.into();
        let message = error.to_string();
        self.session.error(&mut self.request, &message).await;
        self.record(Outcome::Error(message.clone()));
        status_response(error.status(), &message)
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
    pub async fn act(&mut self, action: HttpAction) -> Result<Option<hyper::Response<Body>>, Killed> {
        match action {
            HttpAction::Continue => Ok(None),
            HttpAction::Respond(local) => Ok(Some(self.local(local))),
            HttpAction::Kill => {
                let message = "killed by a plugin".to_owned();
                self.session.error(&mut self.request, &message).await;
                self.record(Outcome::Error(message));
                Err(Killed)
            }
            HttpAction::Fail(failure) => Ok(Some(self.fail(Error::Plugin(failure.to_string())).await)),
        }
    }
}

pub(crate) fn canonical_reason(status: u16) -> String {
    hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("").to_owned()
}

/// `wire` holds the request's header fields as they were on the wire, when known.
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    req: hyper::Request<Incoming>,
    fixed: Option<Target>,
    wire: Option<Headers>,
    handoff: Handoff,
) -> Result<hyper::Response<Body>, Killed> {
    let start = Instant::now();
    if req.method() == hyper::Method::CONNECT && fixed.is_none() {
        return super::connect::connect(ctx, req, wire, handoff).await;
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
    let mut request_trailers = None;
    let mut stream_source = None;
    match (&ex.request.body, ex.request.body_mode) {
        (Some(_), _) => {}
        (None, flowgate_flow::BodyMode::Buffer) => match buffer(incoming, &ctx.proxy.options).await {
            Ok(Buffered::Whole(bytes, trailers)) => {
                ex.request.body = Some(bytes.to_vec());
                if let Some(t) = &trailers {
                    ex.request.trailers = to_headers(t);
                }
                request_trailers = trailers;
            }
            Ok(Buffered::Streamed(stream)) => {
                ex.session.flow.metadata.insert("flowgate.streamed".to_owned(), "request".to_owned());
                body = Some(stream);
            }
            Err(e) => return Ok(ex.fail(e.of_request()).await),
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
        Err(_) => {
            let error = ClientError::BadRequest(format!("invalid method {:?}", ex.request.method));
            return Ok(ex.fail(error).await);
        }
    };
    let mut headers = hyper::HeaderMap::new();
    fill_headers(&mut headers, &ex.request.headers);
    if pump.is_some() {
        // Chunk hooks may change sizes: the body goes chunked.
        headers.remove("content-length");
    }
    if let Some(bytes) = &ex.request.body {
        if request_trailers.is_some() {
            headers.remove("content-length");
        } else {
            headers.insert("content-length", bytes.len().into());
        }
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
            if !ctx.server_connect(address.clone()).await {
                return Ok(ex.fail(UpstreamError::Refused(address)).await);
            }
            match upstream::connect(&ctx.proxy, &ctx.mode, &target).await {
                Ok(connected) => {
                    ctx.session.lock().await.server_connected().await;
                    connected.sender
                }
                Err(e) => return Ok(ex.fail(e).await),
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
        (_, Some(bytes)) => with_trailers(Bytes::from(bytes), request_trailers),
        (Some(stream), None) => stream,
        (None, None) => full(Bytes::new()),
    });
    *upstream_req.method_mut() = method;
    *upstream_req.version_mut() = version;
    *upstream_req.headers_mut() = headers;
    *upstream_req.uri_mut() = match uri.parse() {
        Ok(u) => u,
        Err(e) => {
            let error = ClientError::BadRequest(format!("invalid request target {uri:?}: {e}"));
            return Ok(ex.fail(error).await);
        }
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
        Err(e) => return Ok(ex.fail(UpstreamError::Request(e)).await),
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
    let mut stream_body = None;
    let mut response_trailers = None;
    if response.body.is_none() && response.body_mode == flowgate_flow::BodyMode::Stream {
        if !hyper::body::Body::is_end_stream(&upstream_body) {
            return Ok(stream_through_plugins(ex, response, upstream_body));
        }
        // Nothing will come (a HEAD answer, a 204, gRPC's trailers-only answer): the end
        // goes through the chunk hooks now. An empty result keeps the response without a
        // body (HTTP/2: HEADERS with END_STREAM, which gRPC needs) and its headers as
        // they are; bytes a plugin made become the body.
        match ex.session.response_body_chunk(&mut ex.request, &mut response, Vec::new(), true).await {
            Ok(out) if out.is_empty() => stream_body = Some(full(Bytes::new())),
            Ok(out) => response.body = Some(out),
            Err(action) => {
                if let Some(resp) = ex.act(action).await? {
                    return Ok(resp);
                }
            }
        }
    }
    if response.body.is_none() && stream_body.is_none() && response.body_mode != flowgate_flow::BodyMode::Pass {
        match buffer(upstream_body.map_err(Into::into), &ctx.proxy.options).await {
            Ok(Buffered::Whole(bytes, trailers)) => {
                response.body = Some(bytes.to_vec());
                if let Some(t) = &trailers {
                    response.trailers = to_headers(t);
                }
                response_trailers = trailers;
            }
            Ok(Buffered::Streamed(stream)) => {
                ex.session.flow.metadata.insert("flowgate.streamed".to_owned(), "response".to_owned());
                stream_body = Some(stream);
            }
            Err(e) => return Ok(ex.fail(UpstreamError::Body(e.to_string())).await),
        }
    } else if response.body.is_none() && stream_body.is_none() {
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
    // Trailers go after a chunked body (HTTP/1.1) or as a HEADERS frame (HTTP/2), so a
    // body with trailers gets no content-length.
    let has_trailers = response_trailers.is_some();
    let mut client_resp = hyper::Response::new(match (stream_body, response.body.clone()) {
        (_, Some(bytes)) => with_trailers(Bytes::from(bytes), response_trailers),
        (Some(stream), None) => stream,
        (None, None) => full(Bytes::new()),
    });
    *client_resp.status_mut() = hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    fill_headers(client_resp.headers_mut(), &response.headers);
    if let Some(bytes) = &response.body
        && !has_trailers
    {
        client_resp.headers_mut().insert("content-length", bytes.len().into());
    }
    ex.record(Outcome::Response { status: response.status, reason: response.reason.clone(), size, local: false });
    Ok(client_resp)
}
