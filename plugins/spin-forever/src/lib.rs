//! spin-forever (hostile): loops forever in `request-headers`, and in `websocket-message`
//! for text messages that start with `spin`. The host must interrupt it at its deadline
//! and keep other flows going.
//!
//! `config.path`, if set, limits the spinning to requests whose path starts with it (so a
//! test can make one stream of a connection slow and keep the others fast).

use flowgate_sdk::websocket::{Message, MessageKind, MessageVerdict};
use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, WebSocketHooks, config, export_plugin};

struct SpinForever;

impl HttpHooks for SpinForever {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        let path = request.path();
        if config::get("path").is_some_and(|prefix| !path.starts_with(&prefix)) {
            return Verdict::Continue;
        }
        let mut n: u64 = path.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

impl WebSocketHooks for SpinForever {
    fn websocket_message(_flow: &Flow, message: Message) -> MessageVerdict {
        if message.kind != MessageKind::Text || !message.data.starts_with(b"spin") {
            return MessageVerdict::Continue;
        }
        let mut n: u64 = message.data.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_plugin!(SpinForever: http, websocket);
