//! The WebSocket layer (RFC 6455): after an HTTP/1.1 upgrade the exchange agreed to with
//! the upstream, frames are relayed both ways, each message is recorded (to the flow file
//! as it passes) and printed like mitmdump's, and plugins that export the `websocket`
//! group see `websocket-start`, every message (reassembled from its frames, which they may
//! edit, drop, multiply or answer with kill, and beside which they may inject messages
//! toward either side) and `websocket-end`. Without such a plugin frames go on as they
//! come, one frame at a time. Ping, pong and close frames are forwarded (so the endpoints
//! answer each other) and recorded with their payloads. The frame codec is
//! `flowgate-ws`, sans-IO.
//!
//! Not a connection-level switch: a WebSocket inside an HTTP/2 stream (RFC 8441) is not a
//! connection, so the HTTP layer hands this layer both byte streams instead.
//!
//! Replay plays one side from a recording ([`scripted`]): client replay opens the
//! WebSocket again and sends the client's messages, server replay answers a client with
//! the server's messages, each message once the other side has sent as many as it had
//! before it in the recording.
//!
//! permessage-deflate (RFC 7692) is negotiated with each side on its own: the client's
//! offer is answered by flowgate, flowgate makes its own offer to the upstream, and either
//! leg may end up with or without compression or with other parameters. Compressed
//! messages are inflated as they arrive (within `websocket_max_message_size`, so a deflate
//! bomb closes with 1009) and deflated again for the other leg, so plugins and the flow
//! file always see plain messages. Other extensions are removed from the offer, never
//! passed through blindly.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use flowgate_flow::{
    FlowKind, HttpFlow, MessageKind, Payload, Request, Response, WebSocketClose, WebSocketData, WebSocketMessage,
};
use flowgate_runtime::{WebSocketAction, WebSocketFlowSession};
use flowgate_store::flowfile::NewMessages;
use flowgate_ws::{Decoder, DeflateConfig, Deflater, Extension, Frame, Inflater, Limits, OpCode, Reassembler, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::capture::{Stored, now};
use crate::conn::{BoxIo, ConnCtx};
use crate::http::exchange::Exchange;
use crate::record::{FlowRecord, Kind};

/// One side of an upgraded connection: the stream, and what was read past the 101 head.
pub(crate) struct Side {
    pub io: BoxIo,
    pub buf: BytesMut,
}

/// What the exchange hands over once the upstream answered 101.
pub(crate) struct Start {
    /// The handshake's flow: its request, plugin session and facts.
    pub ex: Exchange,
    /// The 101 as the plugins left it.
    pub response: Response,
    /// The upstream connection.
    pub upstream: Side,
    /// What each leg negotiated.
    pub legs: Legs,
}

/// The permessage-deflate each leg agreed to, if any.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Legs {
    pub client: Option<DeflateConfig>,
    pub server: Option<DeflateConfig>,
}

/// Bytes read at a time.
const READ_SIZE: usize = 16 << 10;
/// How long the other side has to answer a close before both connections are closed.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a request asks to become a WebSocket (RFC 6455 section 4.1): an HTTP/1.1 GET
/// with `Upgrade: websocket` and `Connection: upgrade` (or an HTTP/2 extended CONNECT,
/// which the HTTP/2 layer turns into one: no HTTP/2 request carries these fields from
/// the wire).
pub(crate) fn is_upgrade(request: &Request) -> bool {
    let upgrade = request
        .headers
        .get_all("upgrade")
        .any(|v| String::from_utf8_lossy(v).split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")));
    upgrade
        && request.method == "GET"
        && matches!(request.version, flowgate_flow::HttpVersion::Http11 | flowgate_flow::HttpVersion::Http2)
        && flowgate_h1::connection_tokens(&request.headers).iter().any(|t| t == "upgrade")
}

/// Prepares a WebSocket request for the upstream: the client's extension offers are
/// replaced by flowgate's own permessage-deflate offers (made when the client offered
/// it): the client's well-formed ones with the same parameters, which flowgate can take
/// whatever the server answers, so a server that asks for particular parameters (no
/// context takeover) gets what the client would have agreed to. Returns the client's
/// permessage-deflate offers, for [`negotiate`].
pub(crate) fn prepare(request: &mut Request) -> Vec<Extension> {
    let offered: Vec<Extension> = request
        .headers
        .get_all("sec-websocket-extensions")
        .filter_map(|v| flowgate_ws::parse_extensions(&String::from_utf8_lossy(v)).ok())
        .flatten()
        .filter(|e| e.name.eq_ignore_ascii_case("permessage-deflate"))
        .collect();
    request.headers.remove("sec-websocket-extensions");
    if !offered.is_empty() {
        let ours: Vec<Extension> =
            offered.iter().filter(|o| flowgate_ws::accept_offer(std::slice::from_ref(*o)).is_some()).cloned().collect();
        let value = match ours.is_empty() {
            true => flowgate_ws::client_offer().to_owned(),
            false => flowgate_ws::format_extensions(&ours),
        };
        let _ = request.headers.append("Sec-WebSocket-Extensions", value.as_bytes());
    }
    offered
}

/// After the upstream's 101: the server's answer checked against flowgate's offer, and the
/// client's offers answered in the 101 the client gets (its `Sec-WebSocket-Extensions`
/// replaced). `Err` when the server answered with something not offered.
pub(crate) fn negotiate(offered: &[Extension], response: &mut Response) -> Result<Legs, String> {
    let answers: Vec<String> =
        response.headers.get_all("sec-websocket-extensions").map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    let answer = answers.join(", ");
    let server = match answer.trim() {
        "" => None,
        _ if offered.is_empty() => {
            return Err(format!("the upstream answered Sec-WebSocket-Extensions {answer:?}, which was not offered"));
        }
        _ => flowgate_ws::check_response(&answer)
            .map_err(|e| format!("the upstream's Sec-WebSocket-Extensions {answer:?}: {e}"))?,
    };
    response.headers.remove("sec-websocket-extensions");
    let client = flowgate_ws::accept_offer(offered).map(|(config, value)| {
        let _ = response.headers.append("Sec-WebSocket-Extensions", value.as_bytes());
        config
    });
    Ok(Legs { client, server })
}

/// Runs the WebSocket until both sides closed, one broke, or it idled out; records it.
pub(crate) async fn run(ctx: Arc<ConnCtx>, start: Start, client: Side) {
    let Start { ex, response, upstream, legs } = start;
    let mut info = ex.session.flow.clone();
    info.kind = FlowKind::WebSocket;
    let session = ctx.flows.websocket_flow(info);
    let hooks = session.has_plugins();
    let messages = session.sees_messages();
    let flow = Arc::new(Shared {
        ctx: ctx.clone(),
        path: ex.request.path.clone(),
        server: ex.session.flow.server_address.clone().unwrap_or_default(),
        session: Mutex::new(session),
        messages,
        store: ctx.proxy.store.clone(),
        id: ex.session.flow.id,
        close: std::sync::Mutex::new(None),
    });
    if let Some(store) = &flow.store {
        let mut begun = ex.flow_for_store(&response);
        if let Payload::Http(http) = &mut begun.payload {
            http.websocket = Some(WebSocketData::default());
        }
        store(Stored::Begun(begun));
    }
    let began = std::time::Instant::now();
    let mut error = None;
    let mut greetings = Vec::new();
    if hooks {
        let mut session = flow.session.lock().await;
        if let Some(stop) = session.start().await {
            error = Some(format!("websocket-start: {stop}"));
        }
        greetings = session.take_injected();
    }
    if error.is_none() {
        error = relay(&flow, client, upstream, legs, greetings).await.err();
    }
    let close = flow.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let close = close.unwrap_or(WebSocketClose { code: Some(1006), reason: String::new(), closed_by_client: false });
    if hooks {
        let mut session = flow.session.lock().await;
        let closed = flowgate_runtime::WebSocketClose {
            code: close.code,
            reason: close.reason.clone(),
            closed_by_client: close.closed_by_client,
        };
        session.end(&closed).await;
    }
    let failures: Vec<String> = flow.session.lock().await.failures().iter().map(ToString::to_string).collect();
    if let Some(store) = &flow.store {
        let mut ended = ex.flow_for_store(&response);
        if let Payload::Http(HttpFlow { websocket, .. }) = &mut ended.payload {
            *websocket =
                Some(WebSocketData { messages: Vec::new(), close: Some(close.clone()), timestamp_end: Some(now()) });
        }
        if let Some(message) = &error {
            ended.error = Some(flowgate_flow::FlowError { message: message.clone(), timestamp: now() });
        }
        crate::record::note_failures(&mut ended, flow.session.lock().await.failures());
        store(Stored::Ended(ended));
    }
    let kind = Kind::WebSocketEnd {
        url: ex.request.url(),
        code: close.code,
        reason: close.reason,
        closed_by_client: close.closed_by_client,
        error,
    };
    let record =
        FlowRecord { id: flow.id, client: ctx.client, kind, duration: began.elapsed(), failures, replay: None };
    (ctx.proxy.sink)(&record);
}

/// What both directions of one WebSocket share.
struct Shared {
    ctx: Arc<ConnCtx>,
    path: String,
    server: String,
    session: Mutex<WebSocketFlowSession>,
    /// Whether a plugin's `websocket-message` sees the messages.
    messages: bool,
    store: Option<crate::capture::FlowStore>,
    id: flowgate_flow::Uuid,
    /// The first close frame seen, and who sent it.
    close: std::sync::Mutex<Option<WebSocketClose>>,
}

impl Shared {
    /// A message passed (or a plugin injected one): its line, and the flow file's copy.
    fn saw(&self, message: &WebSocketMessage) {
        if message.kind == MessageKind::Close {
            let mut close = self.close.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if close.is_none() {
                let parsed = flowgate_ws::parse_close(&message.data).ok();
                let (code, reason) = parsed.map_or((None, String::new()), |c| (c.code, c.reason));
                *close = Some(WebSocketClose {
                    code: Some(code.unwrap_or(1005)),
                    reason,
                    closed_by_client: message.from_client,
                });
            }
        }
        let kind = Kind::WebSocketMessage {
            server: format!("{}{}", self.server, self.path),
            from_client: message.from_client,
            kind: message.kind,
            size: message.data.len() as u64,
        };
        let record = FlowRecord {
            id: self.id,
            client: self.ctx.client,
            kind,
            duration: std::time::Duration::ZERO,
            failures: Vec::new(),
            replay: None,
        };
        (self.ctx.proxy.sink)(&record);
        if let Some(store) = &self.store {
            store(Stored::Messages { id: self.id, messages: NewMessages::WebSocket(vec![message.clone()]) });
        }
    }
}

/// Frames toward one side, with the bytes they hold counted against
/// `websocket_queue_size` (a larger frame waits for the queue to be empty): a slow reader
/// slows its sender, it never grows memory.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<(Bytes, u32)>,
    room: Arc<Semaphore>,
    /// `websocket_queue_size`.
    capacity: usize,
    /// Frames toward a server are masked (RFC 6455 section 5.3).
    masked: bool,
    /// The side's permessage-deflate compressor, if it agreed to one; locked while a
    /// message is queued, so messages from both directions (injected ones) stay whole
    /// and in the compressor's order.
    deflater: Arc<Mutex<Option<Deflater>>>,
}

impl Outbox {
    /// Queues a frame; false once the side is gone.
    async fn send(&self, frame: &Frame) -> bool {
        let mut out = BytesMut::with_capacity(frame.payload.len() + 14);
        let mask = self.masked.then(rand::random::<[u8; 4]>);
        flowgate_ws::encode(frame, mask, &mut out);
        let cost = u32::try_from(out.len().min(self.capacity)).unwrap_or(u32::MAX);
        let Ok(permit) = self.room.acquire_many(cost).await else { return false };
        permit.forget();
        self.tx.send((out.freeze(), cost)).await.is_ok()
    }

    /// Queues a whole message as frames, compressed if the side agreed to it (plugins'
    /// messages were checked: a control message is short, text is UTF-8).
    async fn send_message(&self, message: &WebSocketMessage) -> bool {
        let mut deflater = self.deflater.lock().await;
        let kind = opcode_of(message.kind);
        let data_message = matches!(message.kind, MessageKind::Text | MessageKind::Binary);
        let message = match deflater.as_mut() {
            Some(deflater) if data_message => {
                let payload = Bytes::from(deflater.deflate(&message.data));
                flowgate_ws::Message { kind, payload, compressed: true }
            }
            _ => flowgate_ws::Message { kind, payload: message.data.clone(), compressed: false },
        };
        let Ok(frames) = flowgate_ws::fragment(&message, 1 << 20) else { return true };
        for frame in &frames {
            if !self.send(frame).await {
                return false;
            }
        }
        true
    }
}

/// Writes what an [`Outbox`] queues to one side, each write within `send_timeout`.
async fn writer(
    mut wr: WriteHalf<BoxIo>,
    mut rx: mpsc::Receiver<(Bytes, u32)>,
    room: Arc<Semaphore>,
    ctx: Arc<ConnCtx>,
) {
    let timeout = ctx.proxy.options.send_timeout;
    while let Some((bytes, cost)) = rx.recv().await {
        let wrote = tokio::time::timeout(timeout, async {
            wr.write_all(&bytes).await?;
            wr.flush().await
        })
        .await;
        room.add_permits(cost as usize);
        if !matches!(wrote, Ok(Ok(()))) {
            rx.close();
            break;
        }
    }
    let _ = wr.shutdown().await;
}

fn outbox(
    wr: WriteHalf<BoxIo>,
    masked: bool,
    deflater: Option<Deflater>,
    ctx: &Arc<ConnCtx>,
) -> (Outbox, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let capacity = ctx.proxy.options.websocket_queue_size;
    let room = Arc::new(Semaphore::new(capacity));
    let task = tokio::spawn(writer(wr, rx, room.clone(), ctx.clone()));
    (Outbox { tx, room, capacity, masked, deflater: Arc::new(Mutex::new(deflater)) }, task)
}

/// How one direction ended.
enum Ended {
    /// It forwarded a close frame.
    Closed,
    /// Its side went away without one.
    Gone,
}

/// Relays both directions until each forwarded a close (the other side then has
/// [`CLOSE_TIMEOUT`] to answer), one side went away, or an error.
async fn relay(
    flow: &Arc<Shared>,
    client: Side,
    upstream: Side,
    legs: Legs,
    greetings: Vec<flowgate_flow::Injected>,
) -> Result<(), String> {
    let (client_rd, client_wr) = tokio::io::split(client.io);
    let (server_rd, server_wr) = tokio::io::split(upstream.io);
    let ctx = &flow.ctx;
    // Toward the client flowgate is the server, toward the upstream the client.
    let (to_client, client_writer) = outbox(client_wr, false, legs.client.map(|c| c.deflater(Role::Server)), ctx);
    let (to_server, server_writer) = outbox(server_wr, true, legs.server.map(|c| c.deflater(Role::Client)), ctx);
    let boxes = Boxes { to_client: to_client.clone(), to_server: to_server.clone() };
    // What plugins sent from websocket-start goes first.
    send_injected(flow, &boxes, greetings).await;
    // Frames go on as they come only where nothing needs the whole message: no plugin,
    // and no compression on either leg.
    let whole = flow.messages || legs.client.is_some() || legs.server.is_some();
    let up = Direction {
        from_client: true,
        rd: client_rd,
        buf: client.buf,
        inflater: legs.client.map(|c| c.inflater(Role::Client)),
        whole,
    };
    let down = Direction {
        from_client: false,
        rd: server_rd,
        buf: upstream.buf,
        inflater: legs.server.map(|c| c.inflater(Role::Server)),
        whole,
    };
    // The pumps (and the outboxes they hold) are gone once this block ends, so the
    // writers see their queues close.
    let result = {
        let up = pump(flow, up, boxes.clone());
        let down = pump(flow, down, boxes.clone());
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => finish(r, &mut down).await,
            r = &mut down => finish(r, &mut up).await,
        }
    };
    drop((boxes, to_client, to_server));
    // The writers end once their queues are written (or a write stalls past send_timeout).
    let _ = tokio::join!(client_writer, server_writer);
    result
}

/// One direction ended: if with a close, the other has [`CLOSE_TIMEOUT`] to end too.
async fn finish(
    first: Result<Ended, String>,
    other: &mut std::pin::Pin<&mut impl std::future::Future<Output = Result<Ended, String>>>,
) -> Result<(), String> {
    match first {
        Ok(Ended::Closed) => match tokio::time::timeout(CLOSE_TIMEOUT, other.as_mut()).await {
            Ok(Ok(_)) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(e),
        },
        Ok(Ended::Gone) => Ok(()),
        Err(e) => Err(e),
    }
}

#[derive(Clone)]
struct Boxes {
    to_client: Outbox,
    to_server: Outbox,
}

impl Boxes {
    fn toward(&self, client: bool) -> &Outbox {
        if client { &self.to_client } else { &self.to_server }
    }
}

struct Direction {
    from_client: bool,
    rd: ReadHalf<BoxIo>,
    buf: BytesMut,
    /// The sender's permessage-deflate decompressor, if its leg agreed to one.
    inflater: Option<Inflater>,
    /// Messages are sent on whole (plugins or compression), not frame by frame.
    whole: bool,
}

/// Reads one side's frames and sends them (or what plugins made of its messages) on.
async fn pump(flow: &Arc<Shared>, mut dir: Direction, boxes: Boxes) -> Result<Ended, String> {
    let opts = &flow.ctx.proxy.options;
    let limits =
        Limits { max_frame_size: opts.websocket_max_frame_size, max_message_size: opts.websocket_max_message_size };
    let role = if dir.from_client { Role::Client } else { Role::Server };
    let mut decoder = Decoder::new(role, limits);
    decoder.allow_rsv1 = dir.inflater.is_some();
    let mut messages = Reassembler::new(limits);
    let from = if dir.from_client { "client" } else { "server" };
    let forward = boxes.toward(!dir.from_client);
    loop {
        let frame = match decoder.decode(&mut dir.buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if dir.buf.capacity() - dir.buf.len() < READ_SIZE {
                    dir.buf.reserve(READ_SIZE);
                }
                match tokio::time::timeout(opts.websocket_idle_timeout, dir.rd.read_buf(&mut dir.buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(Ended::Gone),
                    Ok(Ok(_)) => continue,
                    Err(_) => {
                        let reason = format!("idle for {:?} (websocket_idle_timeout)", opts.websocket_idle_timeout);
                        close_both(&boxes, 1001, "idle").await;
                        return Err(reason);
                    }
                }
            }
            Err(e) => {
                // A frame the other side cannot take: both sides are told why and closed.
                close_both(&boxes, e.close_code(), "").await;
                return Err(format!("the {from} sent a bad frame: {e}"));
            }
        };
        let is_close = frame.opcode == OpCode::Close;
        if !dir.whole {
            // As it comes: the frame goes on, and the recording gets each whole message.
            if !forward.send(&frame).await {
                return Ok(Ended::Gone);
            }
        }
        let message = match messages.push(frame) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                close_both(&boxes, e.close_code(), "").await;
                return Err(format!("the {from} sent a bad message: {e}"));
            }
        };
        let data = match (&mut dir.inflater, message.compressed) {
            (Some(inflater), true) => {
                let inflated = inflater
                    .inflate(&message.payload, inflate_limit(message.payload.len(), &limits))
                    .and_then(|data| {
                        if message.kind == flowgate_ws::MessageKind::Text {
                            flowgate_ws::validate_text(&data)?;
                        }
                        Ok(data)
                    });
                match inflated {
                    Ok(data) => Bytes::from(data),
                    Err(e) => {
                        close_both(&boxes, e.close_code(), "").await;
                        return Err(format!("the {from} sent a bad compressed message: {e}"));
                    }
                }
            }
            _ => message.payload,
        };
        let message =
            WebSocketMessage { from_client: dir.from_client, kind: kind_of(message.kind), data, timestamp: now() };
        flow.saw(&message);
        if dir.whole && !flow.messages {
            if !forward.send_message(&message).await {
                return Ok(Ended::Gone);
            }
        } else if flow.messages {
            let (action, injected) = {
                let mut session = flow.session.lock().await;
                let action = session.message(message).await;
                (action, session.take_injected())
            };
            match action {
                WebSocketAction::Forward(out) => {
                    for m in &out {
                        if !forward.send_message(m).await {
                            return Ok(Ended::Gone);
                        }
                    }
                }
                WebSocketAction::Kill => {
                    close_both(&boxes, 1000, "killed by a plugin").await;
                    return Err("killed by a plugin".to_owned());
                }
                WebSocketAction::Fail(failure) => {
                    close_both(&boxes, 1011, "").await;
                    return Err(failure.to_string());
                }
            }
            send_injected(flow, &boxes, injected).await;
        }
        if is_close {
            return Ok(Ended::Closed);
        }
    }
}

/// How far a compressed message of `compressed` bytes may inflate: the message cap, and
/// [`MAX_RATIO`] times its size past the first MiB (which any ratio may reach: small
/// messages compress very well), so a deflate bomb stops early even under a large
/// `websocket_max_message_size` (deflate reaches about 1030:1 at most, so a ratio cap
/// must sit well below that to matter).
fn inflate_limit(compressed: usize, limits: &Limits) -> usize {
    limits.max_message_size.min(compressed.saturating_mul(MAX_RATIO).max(1 << 20))
}

/// The most a compressed message past 1 MiB may grow by inflating.
const MAX_RATIO: usize = 100;

/// Sends the messages plugins injected, each toward the side it was meant for.
async fn send_injected(flow: &Shared, boxes: &Boxes, injected: Vec<flowgate_flow::Injected>) {
    for injected in injected {
        if let flowgate_flow::Injected::WebSocket(m) = injected {
            let m = WebSocketMessage { timestamp: now(), ..m };
            flow.saw(&m);
            let _ = boxes.toward(!m.from_client).send_message(&m).await;
        }
    }
}

/// Sends a close frame with `code` to both sides.
async fn close_both(boxes: &Boxes, code: u16, reason: &str) {
    let payload = flowgate_ws::close_payload(Some(code), reason);
    let frame = Frame { fin: true, rsv1: false, opcode: OpCode::Close, payload };
    let _ = boxes.to_client.send(&frame).await;
    let _ = boxes.to_server.send(&frame).await;
}

fn kind_of(kind: flowgate_ws::MessageKind) -> MessageKind {
    match kind {
        flowgate_ws::MessageKind::Text => MessageKind::Text,
        flowgate_ws::MessageKind::Binary => MessageKind::Binary,
        flowgate_ws::MessageKind::Ping => MessageKind::Ping,
        flowgate_ws::MessageKind::Pong => MessageKind::Pong,
        flowgate_ws::MessageKind::Close => MessageKind::Close,
    }
}

fn opcode_of(kind: MessageKind) -> flowgate_ws::MessageKind {
    match kind {
        MessageKind::Text => flowgate_ws::MessageKind::Text,
        MessageKind::Binary => flowgate_ws::MessageKind::Binary,
        MessageKind::Ping => flowgate_ws::MessageKind::Ping,
        MessageKind::Pong => flowgate_ws::MessageKind::Pong,
        MessageKind::Close => flowgate_ws::MessageKind::Close,
    }
}

/// How long a scripted peer waits for the other side's next message.
const SCRIPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Server replay's handshake: the saved 101 with the accept key the live request's key
/// needs, and no extension (the scripted server does not compress).
pub(crate) fn replayed_handshake(mut saved: Response, request: &Request) -> Response {
    let key = request.headers.get("sec-websocket-key").unwrap_or_default();
    let _ = saved.headers.set("Sec-WebSocket-Accept", accept_key(key).as_bytes());
    saved.headers.remove("sec-websocket-extensions");
    saved.body = None;
    saved.timestamp_start = Some(now());
    saved.timestamp_end = None;
    saved
}

/// A recorded side of a WebSocket played again: `peer`'s data messages from `recorded`,
/// in order, each sent once the other side has sent as many data messages as it had
/// before it; then `peer`'s close as recorded, or an answer to the other side's. Returns
/// the other end of an in-memory pipe, as an upgraded connection's side.
pub(crate) fn scripted(peer: Role, recorded: &WebSocketData) -> Side {
    let is_peer = |m: &WebSocketMessage| m.from_client == (peer == Role::Client);
    let data = |m: &WebSocketMessage| matches!(m.kind, MessageKind::Text | MessageKind::Binary);
    let mut steps = Vec::new();
    let mut others = 0;
    for m in recorded.messages.iter().filter(|m| data(m)) {
        if is_peer(m) {
            steps.push((others, m.clone()));
        } else {
            others += 1;
        }
    }
    // The peer's close goes once the other side said what it had said before it.
    let close = recorded.close.clone().filter(|c| c.closed_by_client == (peer == Role::Client)).map(|close| {
        let before = recorded
            .messages
            .iter()
            .take_while(|m| !(is_peer(m) && m.kind == MessageKind::Close))
            .filter(|m| !is_peer(m) && data(m))
            .count();
        (before, close)
    });
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    tokio::spawn(play(peer, steps, close, ours));
    Side { io: Box::new(theirs), buf: BytesMut::new() }
}

async fn play(
    peer: Role,
    steps: Vec<(usize, WebSocketMessage)>,
    close: Option<(usize, WebSocketClose)>,
    io: tokio::io::DuplexStream,
) {
    let other = if peer == Role::Client { Role::Server } else { Role::Client };
    let mut script = Script {
        rd: tokio::io::split(io),
        buf: BytesMut::new(),
        decoder: Decoder::new(other, Limits::default()),
        messages: Reassembler::new(Limits::default()),
        mask: peer == Role::Client,
        seen: 0,
    };
    for (needed, message) in steps {
        while script.seen < needed {
            match script.next().await {
                Some(Heard::Data) => {}
                Some(Heard::Close(payload)) => return script.close(payload).await,
                None => return,
            }
        }
        let m = flowgate_ws::Message { kind: opcode_of(message.kind), payload: message.data, compressed: false };
        if !script.send(&m).await {
            return;
        }
    }
    match close {
        Some((needed, close)) => {
            while script.seen < needed {
                match script.next().await {
                    Some(Heard::Data) => {}
                    Some(Heard::Close(payload)) => return script.close(payload).await,
                    None => return,
                }
            }
            let payload = flowgate_ws::close_payload(close.code.filter(|c| !matches!(c, 1005 | 1006)), &close.reason);
            script.close(payload).await;
            // The other side's answer, then the end.
            while let Some(heard) = script.next().await {
                if let Heard::Close(_) = heard {
                    break;
                }
            }
        }
        None => {
            while let Some(heard) = script.next().await {
                if let Heard::Close(payload) = heard {
                    return script.close(payload).await;
                }
            }
        }
    }
}

/// One scripted peer's connection.
struct Script {
    rd: (ReadHalf<tokio::io::DuplexStream>, WriteHalf<tokio::io::DuplexStream>),
    buf: BytesMut,
    decoder: Decoder,
    messages: Reassembler,
    mask: bool,
    /// Data messages heard from the other side.
    seen: usize,
}

enum Heard {
    Data,
    Close(Bytes),
}

impl Script {
    /// The next message from the other side worth telling (data or close); `None` once it
    /// is gone, broke the protocol or said nothing for [`SCRIPT_WAIT`].
    async fn next(&mut self) -> Option<Heard> {
        loop {
            while let Some(frame) = self.decoder.decode(&mut self.buf).ok()? {
                match self.messages.push(frame).ok()? {
                    Some(m) if m.kind == flowgate_ws::MessageKind::Close => return Some(Heard::Close(m.payload)),
                    Some(m) if matches!(m.kind, flowgate_ws::MessageKind::Text | flowgate_ws::MessageKind::Binary) => {
                        self.seen += 1;
                        return Some(Heard::Data);
                    }
                    Some(m) if m.kind == flowgate_ws::MessageKind::Ping => {
                        let pong = flowgate_ws::Message { kind: flowgate_ws::MessageKind::Pong, ..m };
                        if !self.send(&pong).await {
                            return None;
                        }
                    }
                    _ => {}
                }
            }
            match tokio::time::timeout(SCRIPT_WAIT, self.rd.0.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn send(&mut self, message: &flowgate_ws::Message) -> bool {
        let Ok(frames) = flowgate_ws::fragment(message, 1 << 20) else { return false };
        let mut out = BytesMut::new();
        for frame in &frames {
            flowgate_ws::encode(frame, self.mask.then(rand::random::<[u8; 4]>), &mut out);
        }
        self.rd.1.write_all(&out).await.is_ok()
    }

    async fn close(&mut self, payload: Bytes) {
        let close = flowgate_ws::Message { kind: flowgate_ws::MessageKind::Close, payload, compressed: false };
        self.send(&close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflating_is_capped_by_size_and_ratio() {
        let limits = |max: usize| Limits { max_frame_size: max, max_message_size: max };
        for (compressed, max, limit) in [
            (10, 16 << 20, 1 << 20),            // small: any ratio up to 1 MiB
            (100 << 10, 16 << 20, 10_240_000),  // 100 KiB: at most 100 times
            (1 << 20, 16 << 20, 16 << 20),      // the message cap first
            (256 << 10, 512 << 20, 26_214_400), // a 256 MiB bomb under a 512 MiB cap
            (usize::MAX, 16 << 20, 16 << 20),   // no overflow
            (10, 1000, 1000),                   // a cap under 1 MiB
        ] {
            assert_eq!(inflate_limit(compressed, &limits(max)), limit, "{compressed} bytes, cap {max}");
        }
    }
}
