//! trap (hostile): panics — a trap in the sandbox — on requests whose path starts with
//! `/trap`, and on WebSocket text messages that start with `trap`; on any other request
//! it tags it with `x-trap-plugin: survived`.
//!
//! `[config]`: `hook` — where it traps: `request-headers` (default) or
//! `request-body-chunk` (it streams the request body and traps on its first chunk).

use flowgate_sdk::websocket::{Message, MessageKind, MessageVerdict};
use flowgate_sdk::{BodyMode, Flow, HttpHooks, Request, Verdict, WebSocketHooks, config, export_plugin};

struct Trap;

fn in_body() -> bool {
    config::get("hook").as_deref() == Some("request-body-chunk")
}

impl HttpHooks for Trap {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        if request.path().starts_with("/trap") {
            if in_body() {
                let _ = request.set_body_mode(BodyMode::Stream);
                return Verdict::Continue;
            }
            panic!("trap plugin asked to trap on {}", request.path());
        }
        let _ = request.set_header("x-trap-plugin", "survived");
        Verdict::Continue
    }

    fn request_body_chunk(_flow: &Flow, request: &Request, chunk: Vec<u8>, _end: bool) -> Vec<u8> {
        if in_body() && request.path().starts_with("/trap") {
            panic!("trap plugin asked to trap in the body of {}", request.path());
        }
        chunk
    }
}

impl WebSocketHooks for Trap {
    fn websocket_message(_flow: &Flow, message: Message) -> MessageVerdict {
        if message.kind == MessageKind::Text && message.data.starts_with(b"trap") {
            panic!("trap plugin asked to trap on a WebSocket message");
        }
        MessageVerdict::Continue
    }
}

export_plugin!(Trap: http, websocket);
