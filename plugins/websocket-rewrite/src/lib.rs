//! websocket-rewrite: edits WebSocket text messages as they pass, like mitmproxy's
//! `websocket_message` examples. Exports only the `websocket` group, so it costs nothing
//! on other flows.
//!
//! `[config]`:
//! - `from` — text to find in text messages (required);
//! - `to` — what to put in its place (default empty);
//! - `side` — `client`, `server` (default) or `both`: whose messages are rewritten;
//! - `drop` — if set, a text message from the client equal to it is dropped;
//! - `twice` — if set, a text message from the client equal to it is sent on twice (a
//!   replacement list);
//! - `kill_on` — if set, a text message containing it closes the WebSocket;
//! - `greeting` — if set, sent to the client when the WebSocket opens (`inject-websocket`);
//! - `echo_to_client` — if `true`, each client message is also injected back to the client,
//!   prefixed `seen: `.

use flowgate_sdk::websocket::{Close, Message, MessageKind, MessageVerdict};
use flowgate_sdk::{Flow, WebSocketHooks, config, export_plugin, log};

struct WebSocketRewrite;

fn text(message: &Message) -> Option<&str> {
    match message.kind {
        MessageKind::Text => std::str::from_utf8(&message.data).ok(),
        _ => None,
    }
}

#[flowgate_sdk::hooks]
impl WebSocketHooks for WebSocketRewrite {
    fn websocket_start(flow: &Flow) {
        if let Some(greeting) = config::get("greeting")
            && let Err(e) = flow.inject_websocket(true, MessageKind::Text, greeting.as_bytes())
        {
            log::warn(&format!("websocket-rewrite: cannot greet: {}", e.describe()));
        }
    }

    fn websocket_message(flow: &Flow, message: Message) -> MessageVerdict {
        let Some(text) = text(&message) else { return MessageVerdict::Continue };
        if config::get("kill_on").is_some_and(|k| text.contains(&k)) {
            log::warn("websocket-rewrite: closing the WebSocket (kill_on matched)");
            return MessageVerdict::Kill;
        }
        if message.from_client && config::get("drop").as_deref() == Some(text) {
            return MessageVerdict::Replace(Vec::new());
        }
        if message.from_client && config::get("echo_to_client").as_deref() == Some("true") {
            let seen = format!("seen: {text}");
            let _ = flow.inject_websocket(true, MessageKind::Text, seen.as_bytes());
        }
        if message.from_client && config::get("twice").as_deref() == Some(text) {
            return MessageVerdict::Replace(vec![message.clone(), message]);
        }
        let side = config::get("side").unwrap_or_else(|| "server".to_owned());
        let wanted = side == "both" || (side == "client") == message.from_client;
        let Some(from) = config::get("from").filter(|f| !f.is_empty()) else { return MessageVerdict::Continue };
        if !wanted || !text.contains(&from) {
            return MessageVerdict::Continue;
        }
        let to = config::get("to").unwrap_or_default();
        let data = text.replace(&from, &to).into_bytes();
        MessageVerdict::Replace(vec![Message { data, ..message }])
    }

    fn websocket_end(flow: &Flow, close: Close) {
        let code = close.code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        let _ = flow.set_metadata("websocket-rewrite.closed", &code);
    }
}

export_plugin!(WebSocketRewrite: websocket);
