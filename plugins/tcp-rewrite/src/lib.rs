//! tcp-rewrite: replaces a byte string in raw TCP messages, like mitmproxy's
//! `tcp_message` examples: rewrite a banner, mask a token in a plaintext protocol.
//! Exports only the `tcp` group, so it costs nothing on HTTP flows.
//!
//! `[config]`:
//! - `from` — the bytes to find (required, UTF-8 text);
//! - `to` — what to put in their place (default empty);
//! - `side` — `client`, `server` (default) or `both`: whose messages are rewritten;
//! - `kill_on` — if set, a message containing it closes the flow;
//! - `notice` — if set, sent to the client when the flow starts, before the server's first
//!   byte (a "this connection is monitored" banner), with `inject-data`.
//!
//! Each message is what one read brought; a match split across two reads is missed.

use flowgate_sdk::{DataVerdict, Flow, TcpHooks, config, export_plugin, log};

struct TcpRewrite;

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.is_empty() || !data.windows(from.len()).any(|w| w == from) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    Some(out)
}

#[flowgate_sdk::hooks]
impl TcpHooks for TcpRewrite {
    fn tcp_start(flow: &Flow) {
        let _ = flow.set_metadata("tcp-rewrite.started", "yes");
        if let Some(notice) = config::get("notice")
            && let Err(e) = flow.inject_data(true, notice.as_bytes())
        {
            log::warn(&format!("tcp-rewrite: cannot send the notice: {e:?}"));
        }
    }

    fn tcp_message(_flow: &Flow, from_client: bool, data: Vec<u8>) -> DataVerdict {
        if let Some(kill) = config::get("kill_on")
            && data.windows(kill.len().max(1)).any(|w| w == kill.as_bytes())
        {
            log::warn("tcp-rewrite: closing the flow (kill_on matched)");
            return DataVerdict::Kill;
        }
        let side = config::get("side").unwrap_or_else(|| "server".to_owned());
        let wanted = side == "both" || (side == "client") == from_client;
        let Some(from) = config::get("from") else { return DataVerdict::Continue };
        if !wanted {
            return DataVerdict::Continue;
        }
        let to = config::get("to").unwrap_or_default();
        match replace_all(&data, from.as_bytes(), to.as_bytes()) {
            Some(out) => DataVerdict::Replace(out),
            None => DataVerdict::Continue,
        }
    }

    fn tcp_end(_flow: &Flow) {
        log::info("tcp-rewrite: flow ended");
    }

    fn tcp_error(_flow: &Flow, message: String) {
        log::info(&format!("tcp-rewrite: flow failed: {message}"));
    }
}

export_plugin!(TcpRewrite: tcp);
