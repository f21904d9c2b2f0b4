//! One HTTP exchange, whatever the versions on either side: the hooks in order
//! (request-headers, [buffer], request, upstream, response-headers, [buffer or stream
//! through chunk hooks], response) and exactly one recorded outcome.
//!
//! It works on the flow model ([`Request`], [`Response`]) and [`Body`], never on a
//! connection: the HTTP/1 and HTTP/2 layers hand it an [`Inbound`] and write the
//! [`Reply`] back in their own framing, so HTTP/3 and replay can drive it too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flowgate_flow::{
    Address, BodyMode, Flow, FlowError, Headers, HttpFlow, HttpVersion, LocalResponse, Payload, Replay, Request,
    Response, Scheme, Server, TlsInfo,
};
use flowgate_runtime::{HttpAction, HttpFlowSession};
use http_body_util::BodyExt;

use super::body::{Buffered, ProgressTimeout, Stall, buffer};
use super::cert::{CERT_HOSTS, cert_page};
use super::{Killed, full};

mod response;
mod upstream_leg;

use crate::Mode;
use crate::capture::{Capture, Pending, Tee, now};
use crate::conn::ConnCtx;
use crate::error::Error;
use crate::record::{self, FlowRecord, Kind, Outcome};
use crate::replay::Answered;
use crate::upstream::{Body, Target};
use crate::websocket;
use response::respond;
pub(crate) use upstream_leg::rerouted;
use upstream_leg::{UpstreamLeg, send_upstream};

/// A request as a client layer received it.
pub(crate) struct Inbound {
    /// Method, path, version and header fields as received (scheme, host and port are
    /// filled in by the exchange).
    pub request: Request,
    /// The scheme the request named (absolute form, HTTP/2's `:scheme`).
    pub scheme: Option<String>,
    /// The authority the request named (absolute form, HTTP/2's `:authority`); it
    /// replaces the Host header (RFC 9112 section 3.2.2).
    pub authority: Option<String>,
    /// The body.
    pub body: Body,
}

/// What goes back to the client.
pub(crate) struct Reply {
    /// Status, reason and header fields.
    pub response: Response,
    /// The body.
    pub body: Body,
    /// A WebSocket the upstream agreed to: the client's layer sends the 101 head, then
    /// hands its connection to [`websocket::run`].
    pub upgrade: Option<Box<websocket::Start>>,
}

/// Where interim (1xx) responses from the upstream go, for layers that can send them.
/// Boxed: a channel allocates room for 32 of them up front, made for every request.
pub(crate) type Interim = tokio::sync::mpsc::Sender<Box<Response>>;

impl Reply {
    /// A reply with a whole body.
    pub fn whole(status: u16, headers: Headers, body: impl Into<Bytes>) -> Reply {
        let response = Response { status, reason: canonical_reason(status), headers, ..Response::default() };
        Reply { response, body: full(body), upgrade: None }
    }
}

/// A plain-text reply flowgate makes itself (errors, refusals).
pub(crate) fn status_response(status: u16, message: &str) -> Reply {
    let mut headers = Headers::new();
    let _ = headers.append("content-type", b"text/plain; charset=utf-8");
    Reply::whole(status, headers, format!("{message}\n"))
}

/// A plugin's local answer.
pub(crate) fn local_response(local: LocalResponse) -> Reply {
    let mut headers = local.headers;
    // The layer that writes it frames the body.
    headers.remove("content-length");
    Reply::whole(local.status, headers, local.body)
}

/// The fields of a hyper header map, in its order.
pub(crate) fn to_headers(map: &hyper::HeaderMap) -> Headers {
    let size = map.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
    let mut headers = Headers::with_capacity(map.len(), size);
    for (name, value) in map {
        // hyper has already validated names and values.
        let _ = headers.append(name.as_str(), value.as_bytes());
    }
    headers
}

/// Adds the end-to-end fields of `headers` to a hyper map (HTTP/2: names lowercase).
///
/// The values are slices of one copy of `headers`' buffer, not a copy each, and names
/// come from [`header_name`]'s cache: a message's fields cost two allocations, not one
/// or two per field.
pub(crate) fn fill_headers(map: &mut hyper::HeaderMap, headers: &Headers) {
    let connection = flowgate_h1::connection_tokens(headers);
    let (buffer, spans) = headers.spans();
    let shared = Bytes::copy_from_slice(buffer);
    // More fields than a map holds are refused one by one below (`try_append`).
    let _ = map.try_reserve(headers.len());
    for (name, span) in spans {
        let value = &buffer[span.clone()];
        // `TE: trailers` is hop-by-hop but must reach the upstream for it to send trailers.
        let te_trailers = name.eq_ignore_ascii_case("te") && value.eq_ignore_ascii_case(b"trailers");
        if !te_trailers && flowgate_h1::is_hop_by_hop(name, &connection) {
            continue;
        }
        if let (Some(n), Ok(mut v)) =
            (header_name(name), hyper::header::HeaderValue::from_maybe_shared(shared.slice(span)))
        {
            if PER_MESSAGE_IDS.iter().any(|id| name.eq_ignore_ascii_case(id)) {
                v.set_sensitive(true);
            }
            let _ = map.try_append(n, v);
        }
    }
}

/// Fields whose value is new in every message (request and trace ids). HTTP/2 sends them
/// as never-indexed literals (`HeaderValue::set_sensitive`), as h2 already does for
/// `etag`, `location` or `:path`: indexed, each new id would go into the HPACK table of the
/// connection, evicting the fields that do repeat, and the encoder would compare every
/// later id against all those it kept under that name. No effect on HTTP/1.
const PER_MESSAGE_IDS: &[&str] = &[
    "x-request-id",
    "x-correlation-id",
    "request-id",
    "traceparent",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "sentry-trace",
];

/// Field names most recently made into `HeaderName`s on this thread, as they were
/// spelled: a name `http` does not know (`x-request-id`) is otherwise copied into a new
/// allocation for every message that carries it.
const NAME_CACHE_ENTRIES: usize = 256;
/// Longer names are made afresh each time.
const NAME_CACHE_LONGEST: usize = 64;

thread_local! {
    /// Hashed with foldhash (seeded per process), not SipHash: a lookup per field of
    /// every message, and the map is bounded, so a crafted name costs at most a scan of it.
    static NAMES: std::cell::RefCell<HashMap<Box<str>, hyper::header::HeaderName, foldhash::fast::RandomState>> =
        std::cell::RefCell::new(HashMap::with_capacity_and_hasher(NAME_CACHE_ENTRIES, Default::default()));
}

/// `name` as a hyper `HeaderName` (lowercased), or `None` if it is not a valid one.
/// Cached per thread; once the cache holds [`NAME_CACHE_ENTRIES`] names, new ones are
/// made but not kept, so hostile names cannot grow it.
pub(crate) fn header_name(name: &str) -> Option<hyper::header::HeaderName> {
    if name.len() > NAME_CACHE_LONGEST {
        return hyper::header::HeaderName::from_bytes(name.as_bytes()).ok();
    }
    NAMES.with_borrow_mut(|names| {
        if let Some(known) = names.get(name) {
            return Some(known.clone());
        }
        let made = hyper::header::HeaderName::from_bytes(name.as_bytes()).ok()?;
        if names.len() < NAME_CACHE_ENTRIES {
            names.insert(name.into(), made.clone());
        }
        Some(made)
    })
}

pub(crate) fn version_of(v: hyper::Version) -> HttpVersion {
    match v {
        hyper::Version::HTTP_10 => HttpVersion::Http10,
        hyper::Version::HTTP_2 => HttpVersion::Http2,
        hyper::Version::HTTP_3 => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    }
}

/// One request's flow: its connection, plugin session, request and start time, and the
/// copies of its bodies for the flow store (when one is set).
pub(crate) struct Exchange {
    pub ctx: Arc<ConnCtx>,
    pub session: HttpFlowSession,
    pub request: Request,
    pub start: Instant,
    pub captures: Captures,
    /// Which side of the flow is a replay, if one is.
    pub replay: Option<Replay>,
}

/// The copies of a flow's unbuffered bodies being taken for the flow store.
#[derive(Default)]
pub(crate) struct Captures {
    pub request: Option<Capture>,
    pub response: Option<Capture>,
}

impl Exchange {
    /// A new exchange of `request` on `ctx`.
    pub fn new(ctx: &Arc<ConnCtx>, mut request: Request, start: Instant) -> Exchange {
        if request.timestamp_start.is_none() {
            request.timestamp_start = Some(now());
        }
        let replay = ctx.replay.is_some().then_some(Replay::Request);
        Exchange { ctx: ctx.clone(), session: ctx.http_flow(), request, start, captures: Captures::default(), replay }
    }

    /// The request's `body`, copied as it passes for the flow store when there is one.
    /// Dropped before its end (an upstream that answered without reading it), it is
    /// still read to its end for the capture, each piece within `body_read_timeout`.
    pub fn tee_request(&mut self, body: Body) -> Body {
        self.tee(body, true)
    }

    /// The response's `body`, copied as it passes for the flow store when there is one;
    /// dropped before its end (the client went away), it is not read on.
    pub fn tee_response(&mut self, body: Body) -> Body {
        self.tee(body, false)
    }

    fn tee(&mut self, body: Body, request: bool) -> Body {
        if self.ctx.proxy.store.is_none() {
            return body;
        }
        let options = &self.ctx.proxy.options;
        // A streamed body is kept only when asked for, and then as far as the budget goes.
        let cap = match options.stream_large_bodies {
            Some(_) if options.store_streamed_bodies => usize::MAX,
            Some(limit) => limit,
            None => options.body_size_limit,
        };
        let capture = Capture::new(cap, &self.ctx.proxy.buffers);
        let slot = if request { &mut self.captures.request } else { &mut self.captures.response };
        *slot = Some(capture.clone());
        Tee::new(body, capture, request.then_some(options.body_read_timeout)).boxed()
    }
}

impl Exchange {
    /// Reports the flow's one outcome (with no response: an error, a kill).
    pub fn record(&self, outcome: Outcome) {
        self.record_with(outcome, None);
    }

    /// Reports the flow's one outcome and, to the flow store, the whole flow with
    /// `response` (handed over once its bodies have passed).
    pub fn record_with(&self, outcome: Outcome, response: Option<&Response>) {
        if let Some(store) = &self.ctx.proxy.store {
            let flow = self.flow(&outcome, response);
            Pending::hand_over(flow, self.captures.request.clone(), self.captures.response.clone(), store.clone());
        }
        self.record_line(outcome);
    }

    /// The flow with `response`, as a long-lived flow (a WebSocket) hands it to the store.
    pub fn flow_for_store(&self, response: &Response) -> Flow {
        let outcome =
            Outcome::Response { status: response.status, reason: response.reason.clone(), size: Some(0), local: false };
        let mut flow = self.flow(&outcome, Some(response));
        // The upgrading request had no body (RFC 6455 section 4.1): stored empty.
        if let Payload::Http(http) = &mut flow.payload {
            http.request.body.get_or_insert_with(Bytes::new);
        }
        flow
    }

    /// The flow as the model records it.
    fn flow(&self, outcome: &Outcome, response: Option<&Response>) -> Flow {
        let ctx = &self.ctx;
        let id = self.session.flow.id;
        let mut flow = Flow::new(id, ctx.client_conn(), self.request.timestamp_start.unwrap_or_else(now), {
            Payload::Http(HttpFlow { request: self.request.clone(), response: response.cloned(), websocket: None })
        });
        let server_address = self.session.flow.server_address.as_deref().and_then(|a| a.parse::<Address>().ok());
        if let Some(address) = server_address {
            let mut server = Server::new(ctx.proxy.next_id(), address);
            if self.request.scheme == Scheme::Https {
                server.tls = Some(TlsInfo { sni: Some(self.request.host.clone()), ..TlsInfo::default() });
            }
            flow.server = Some(server);
        }
        flow.metadata = self.session.flow.metadata.clone();
        flow.is_replay = self.replay;
        match outcome {
            Outcome::Error(message) => flow.error = Some(FlowError { message: message.clone(), timestamp: now() }),
            Outcome::Response { local: true, .. } => {
                flow.metadata.insert(record::LOCAL_KEY.to_owned(), "true".to_owned());
            }
            Outcome::Response { .. } => {}
        }
        record::note_failures(&mut flow, self.session.failures());
        flow
    }

    /// Reports the flow's one-line record.
    pub fn record_line(&self, outcome: Outcome) {
        if let Some(tap) = &self.ctx.replay {
            tap.put(&outcome);
        }
        self.ctx.proxy.report(|| FlowRecord {
            id: self.session.flow.id,
            client: self.ctx.client,
            kind: Kind::Http {
                method: self.request.method.clone(),
                url: self.request.url(),
                version: self.request.version.as_str().to_owned(),
                outcome,
            },
            duration: self.start.elapsed(),
            failures: self.session.failures().iter().map(ToString::to_string).collect(),
            replay: self.replay,
        });
    }

    /// Fails the flow: the error hooks run, the error is recorded, the client gets the
    /// error's status.
    pub async fn fail(&mut self, error: impl Into<Error>) -> Reply {
        let error = error.into();
        let message = error.to_string();
        self.session.error(&mut self.request, &message).await;
        self.record(Outcome::Error(message.clone()));
        status_response(error.status(), &message)
    }

    fn local(&self, local: LocalResponse) -> Reply {
        let body = local.body.clone();
        let mut reply = local_response(local);
        let mut response = std::mem::take(&mut reply.response);
        response.body = Some(body);
        response.timestamp_start = Some(now());
        self.record_with(
            Outcome::Response {
                status: response.status,
                reason: response.reason.clone(),
                size: response.body.as_ref().map(|b| b.len() as u64),
                local: true,
            },
            Some(&response),
        );
        response.body = None;
        reply.response = response;
        reply
    }

    /// Applies an action from a hook; `Ok(None)` means go on.
    pub async fn act(&mut self, action: HttpAction) -> Result<Option<Reply>, Killed> {
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

/// Where a request goes: the layer's fixed target (reverse mode, inside a tunnel), or
/// the scheme and authority it named.
fn target_of(inbound: &Inbound, fixed: Option<&Target>) -> Result<Target, &'static str> {
    if let Some(t) = fixed {
        return Ok(t.clone());
    }
    let scheme = match inbound.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        _ => return Err("flowgate is a proxy: send absolute-form requests (http://host/path)"),
    };
    let authority = inbound.authority.as_deref().unwrap_or_default();
    let url = flowgate_flow::Url::parse(&format!("{}://{authority}/", scheme.as_str()))
        .map_err(|_| "request URL has no valid host")?;
    Ok(Target::new(scheme, url.host, url.port))
}

/// Runs one exchange. `interim` takes the upstream's 1xx responses, where the client's
/// layer can forward them.
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    inbound: Inbound,
    fixed: Option<Target>,
    interim: Option<Interim>,
) -> Result<Reply, Killed> {
    let start = Instant::now();
    let target = match target_of(&inbound, fixed.as_ref()) {
        Ok(t) => t,
        Err(message) => return Ok(status_response(400, message)),
    };
    if fixed.is_none() && CERT_HOSTS.contains(&target.host.as_str()) {
        return Ok(cert_page(&ctx, inbound.request.path.split('?').next().unwrap_or("/")));
    }
    let original = target.clone();
    let Inbound { mut request, authority, body: incoming, .. } = inbound;
    request.scheme = target.scheme;
    request.host = target.host.clone();
    request.port = target.port;
    if let Mode::Reverse { host, port, scheme, .. } = &*ctx.mode {
        let _ = request.headers.set("host", scheme.authority(host, *port).as_bytes());
    } else if let Some(authority) = authority {
        // An absolute-form target or `:authority` is the Host (RFC 9112 section 3.2.2);
        // plugins see it as Host whatever the version.
        let name = request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map(|(n, _)| n.to_owned());
        let _ = request.headers.set(name.as_deref().unwrap_or("Host"), authority.as_bytes());
    }
    let mut ex = Exchange::new(&ctx, request, start);

    let action = ex.session.request_headers(&mut ex.request).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    let opts = &ctx.proxy.options;
    let incoming = ProgressTimeout::new(
        incoming,
        Stall { what: "request body data", after: opts.body_read_timeout, option: "body_read_timeout" },
    );
    let mut body: Option<Body> = None;
    let mut request_trailers = None;
    let mut request_held = None;
    let mut stream_source = None;
    // Server replay matches on the body, so it is read first (within body_size_limit).
    let body_mode = match (&opts.server_replay, ex.request.body_mode) {
        (Some(replay), BodyMode::Pass) if replay.needs_body() => BodyMode::Buffer,
        (_, mode) => mode,
    };
    match (&ex.request.body, body_mode) {
        (Some(_), _) => {}
        (None, BodyMode::Buffer) => {
            match buffer(incoming, opts, &ctx.proxy.buffers, declared_length(&ex.request.headers)).await {
                Ok(Buffered::Whole(bytes, trailers, held)) => {
                    // Held until the exchange is done with the body.
                    request_held = Some(held);
                    ex.request.body = Some(bytes);
                    if let Some(t) = &trailers {
                        ex.request.trailers = to_headers(t);
                    }
                    request_trailers = trailers;
                }
                Ok(Buffered::Streamed(stream)) => {
                    ex.session.flow.metadata.insert("flowgate.streamed".to_owned(), "request".to_owned());
                    body = Some(ex.tee_request(stream));
                }
                Err(e) => return Ok(ex.fail(e.of_request()).await),
            }
        }
        (None, BodyMode::Stream) => stream_source = Some(incoming),
        (None, BodyMode::Pass) => body = Some(ex.tee_request(incoming.boxed())),
    }
    let action = ex.session.request(&mut ex.request).await;
    if let Some(resp) = ex.act(action).await? {
        return Ok(resp);
    }
    let mut offered = Vec::new();
    if websocket::is_upgrade(&ex.request) {
        if opts.websocket {
            offered = websocket::prepare(&mut ex.request);
        } else {
            // Hop-by-hop: without it the upstream answers the request as HTTP.
            ex.request.headers.remove("upgrade");
        }
    }
    let (response, upstream_body, upgraded) = match opts.server_replay.as_ref().map(|r| r.answer(&ex.request, now())) {
        Some(Answered::Saved(response, saved)) => {
            ex.replay = Some(Replay::Response);
            match saved.as_ref().and_then(|s| s.websocket.as_ref()) {
                // A recorded WebSocket: its server's side is played to this client.
                Some(recorded) if websocket::is_upgrade(&ex.request) && response.status == 101 => {
                    let response = websocket::replayed_handshake(response, &ex.request);
                    let server = websocket::scripted(flowgate_ws::Role::Server, recorded);
                    (response, full(Bytes::new()), Some(server))
                }
                _ => {
                    let head = ex.request.method == "HEAD";
                    let (response, body) = crate::replay::as_upstream_response(response, head);
                    (response, body, None)
                }
            }
        }
        Some(Answered::Kill) => {
            let message = "no saved response matches (server_replay_extra=kill)".to_owned();
            ex.session.error(&mut ex.request, &message).await;
            ex.record(Outcome::Error(message));
            return Err(Killed);
        }
        Some(Answered::Forward) | None => {
            let leg = UpstreamLeg { original, fixed, stream_source, body, request_trailers, interim };
            match Box::pin(send_upstream(&mut ex, leg)).await? {
                Ok(sent) => sent,
                Err(reply) => return Ok(reply),
            }
        }
    };

    respond(ex, response, upstream_body, upgraded, &offered, request_held).await
}

/// Sets `Content-Length` to `length`, keeping the field as it was (its place and its
/// name's case) where it already says so.
pub(crate) fn set_length(headers: &mut Headers, length: usize) {
    let value = length.to_string();
    if headers.get_all("content-length").eq([value.as_bytes()]) {
        return;
    }
    let name = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(n, _)| n.to_owned());
    let _ = headers.set(name.as_deref().unwrap_or("content-length"), value.as_bytes());
}

/// The length a message's `Content-Length` declares, if it has exactly one valid one and
/// no Transfer-Encoding.
fn declared_length(headers: &Headers) -> Option<u64> {
    if headers.contains("transfer-encoding") {
        return None;
    }
    headers.get_str("content-length").and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_headers_keeps_end_to_end_fields_in_order_and_drops_hop_by_hop() {
        let headers = Headers::from_pairs([
            ("Host", "example.com"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "gone"),
            ("X-Request-Id", "abc"),
            ("te", "trailers"),
            ("Keep-Alive", "timeout=5"),
            ("x-request-id", "def"),
            ("Accept", ""),
        ])
        .expect("valid fields");
        let mut map = hyper::HeaderMap::new();
        fill_headers(&mut map, &headers);
        let got: Vec<(String, String)> =
            map.iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
        let want = [
            ("host", "example.com"),
            ("x-request-id", "abc"),
            ("x-request-id", "def"),
            ("te", "trailers"),
            ("accept", ""),
        ];
        assert_eq!(got, want.map(|(n, v)| (n.to_owned(), v.to_owned())));
        // Per-message ids are never indexed by HPACK; the rest may be.
        let sensitive: Vec<&str> = map.iter().filter(|(_, v)| v.is_sensitive()).map(|(n, _)| n.as_str()).collect();
        assert_eq!(sensitive, ["x-request-id", "x-request-id"]);
    }

    #[test]
    fn header_name_cache_is_bounded_and_lowercases() {
        std::thread::spawn(|| {
            for i in 0..NAME_CACHE_ENTRIES + 100 {
                let name = format!("X-Name-{i}");
                let made = header_name(&name).expect("a valid name");
                assert_eq!(made.as_str(), name.to_ascii_lowercase());
                // A second lookup (from the cache while it has room) gives the same name.
                assert_eq!(header_name(&name), Some(made));
            }
            assert_eq!(NAMES.with_borrow(|n| n.len()), NAME_CACHE_ENTRIES);
            assert_eq!(header_name("bad name"), None);
            let long = "x".repeat(NAME_CACHE_LONGEST + 1);
            assert_eq!(header_name(&long).map(|n| n.as_str().len()), Some(NAME_CACHE_LONGEST + 1));
            assert_eq!(NAMES.with_borrow(|n| n.len()), NAME_CACHE_ENTRIES);
        })
        .join()
        .expect("the test thread");
    }
}
