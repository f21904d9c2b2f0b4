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

mod relay;
mod replay;

use bytes::BytesMut;
use flowgate_flow::{MessageKind, Request, Response};
use flowgate_ws::{DeflateConfig, Extension};

use crate::capture::now;
use crate::conn::BoxIo;
use crate::http::exchange::Exchange;

pub(crate) use relay::run;
pub(crate) use replay::scripted;

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

/// The codec's message kind for a recorded one.
pub(crate) fn opcode_of(kind: MessageKind) -> flowgate_ws::MessageKind {
    match kind {
        MessageKind::Text => flowgate_ws::MessageKind::Text,
        MessageKind::Binary => flowgate_ws::MessageKind::Binary,
        MessageKind::Ping => flowgate_ws::MessageKind::Ping,
        MessageKind::Pong => flowgate_ws::MessageKind::Pong,
        MessageKind::Close => flowgate_ws::MessageKind::Close,
    }
}
