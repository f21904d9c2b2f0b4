//! The relay: frames both ways between the two upgraded sides, each message recorded,
//! shown to the plugins that see messages, and deflated again for the other leg.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use flowgate_flow::{FlowKind, HttpFlow, MessageKind, Payload, WebSocketClose, WebSocketData, WebSocketMessage};
use flowgate_runtime::{WebSocketAction, WebSocketFlowSession};
use flowgate_store::flowfile::NewMessages;
use flowgate_ws::{Decoder, Deflater, Frame, Inflater, Limits, OpCode, Reassembler, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, Semaphore, mpsc};

use super::{Legs, Side, Start, opcode_of};
use crate::capture::{Stored, now};
use crate::conn::{BoxIo, ConnCtx};
use crate::record::{FlowRecord, Kind};

/// Bytes read at a time.
const READ_SIZE: usize = 16 << 10;
/// How long the other side has to answer a close before both connections are closed.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    ctx.proxy.report(|| FlowRecord {
        id: flow.id,
        client: ctx.client,
        kind,
        duration: began.elapsed(),
        failures,
        replay: None,
    });
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
        self.ctx.proxy.report(|| FlowRecord {
            id: self.id,
            client: self.ctx.client,
            kind: Kind::WebSocketMessage {
                server: format!("{}{}", self.server, self.path),
                from_client: message.from_client,
                kind: message.kind,
                size: message.data.len() as u64,
            },
            duration: std::time::Duration::ZERO,
            failures: Vec::new(),
            replay: None,
        });
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
