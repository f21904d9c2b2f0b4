//! Replay of one side of a WebSocket from its recording.

use bytes::{Bytes, BytesMut};
use flowgate_flow::{MessageKind, WebSocketClose, WebSocketData, WebSocketMessage};
use flowgate_ws::{Decoder, Limits, Reassembler, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::{Side, opcode_of};

/// How long a scripted peer waits for the other side's next message.
const SCRIPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

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
