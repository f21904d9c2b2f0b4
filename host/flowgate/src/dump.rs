//! The dump output: what mitmdump prints of each flow, by `flow_detail` (0 nothing, 1
//! one line, 2 with the header fields, 3 with the bodies cut at 512 lines, 4 whole),
//! for the flows its positional filter matches.

use std::fmt::Write as _;
use std::sync::Arc;

use flowgate_filter::Filter;
use flowgate_flow::{Flow, Headers, Payload, Uuid};
use flowgate_net::{FlowRecord, Kind, Stored};
use flowgate_store::flowfile::NewMessages;

use crate::output::Output;

/// Lines of a body shown at `flow_detail` 3 (mitmproxy's `content_view_lines_cutoff`).
const LINES_CUTOFF: usize = 512;
/// How far a body is decoded to be shown: 16 MiB, at most 100 bytes per encoded byte.
const DECODE_LIMITS: flowgate_content::Limits = flowgate_content::Limits { max_size: 16 << 20, max_ratio: 100 };
/// Bytes per line of a hex view.
const HEX_WIDTH: usize = 16;

/// What is printed, of which flows.
pub struct Dump {
    pub filter: Option<Filter>,
    pub detail: u8,
    pub output: Arc<Output>,
    /// WebSockets in progress that the filter matched: the line their messages print.
    pub open: std::sync::Mutex<std::collections::HashMap<Uuid, WebSocketLine>>,
}

/// Who a WebSocket's messages go between, as their lines say.
pub struct WebSocketLine {
    client: std::net::SocketAddr,
    server: String,
}

impl Dump {
    /// Whether anything is printed at all.
    pub fn prints(&self) -> bool {
        self.detail > 0
    }

    /// Whether the lines need whole flows (a filter or more than one line per flow);
    /// else the proxy's one-line records are enough.
    pub fn needs_flows(&self) -> bool {
        self.prints() && (self.filter.is_some() || self.detail > 1)
    }

    /// Prints what the flow store is handed: whole flows as they end, a WebSocket's
    /// handshake when it begins and a line per message as they pass (mitmdump's
    /// `websocket_message`), for the flows the filter matches.
    pub fn stored(&self, stored: &Stored) {
        let open = || self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match stored {
            Stored::Whole(flow) => self.show(flow),
            Stored::Begun(flow) => {
                let Payload::Http(http) = &flow.payload else { return };
                if !self.prints() || self.filter.as_ref().is_some_and(|f| !f.matches(flow)) {
                    return;
                }
                self.show(flow);
                let server = flow.server.as_ref().map(|s| s.address.to_string()).unwrap_or_default();
                let line = WebSocketLine { client: flow.client.peer, server: format!("{server}{}", http.request.path) };
                open().insert(flow.id, line);
            }
            Stored::Messages { id, messages: NewMessages::WebSocket(messages) } => {
                let open = open();
                let Some(line) = open.get(id) else { return };
                for m in messages {
                    let kind = Kind::WebSocketMessage {
                        server: line.server.clone(),
                        from_client: m.from_client,
                        kind: m.kind,
                        size: m.data.len() as u64,
                    };
                    let record = FlowRecord {
                        id: *id,
                        client: line.client,
                        kind,
                        duration: std::time::Duration::ZERO,
                        failures: Vec::new(),
                        replay: None,
                    };
                    self.output.line(record.to_string());
                }
            }
            Stored::Messages { .. } => {}
            Stored::Ended(flow) => {
                let was_open = open().remove(&flow.id).is_some();
                if was_open || !matches!(&flow.payload, Payload::Http(h) if h.websocket.is_some()) {
                    self.show(flow);
                }
            }
        }
    }

    /// Prints `flow` if the filter matches it.
    pub fn show(&self, flow: &Flow) {
        if !self.prints() || self.filter.as_ref().is_some_and(|f| !f.matches(flow)) {
            return;
        }
        if let Some(text) = render(flow, self.detail) {
            self.output.line(text);
        }
    }
}

/// The text of `flow` at `detail` (1-4), or `None` for kinds with no dump line yet.
pub fn render(flow: &Flow, detail: u8) -> Option<String> {
    let record = FlowRecord::from_flow(flow)?;
    let mut text = record.to_string();
    if detail < 2 {
        return Some(text);
    }
    let cutoff = if detail >= 4 { usize::MAX } else { LINES_CUTOFF };
    match &flow.payload {
        Payload::Http(http) => {
            text += "\n  request:";
            fields(&mut text, &http.request.headers);
            if detail >= 3 {
                body(&mut text, http.request.body.as_deref(), &http.request.headers, cutoff);
            }
            if let Some(response) = &http.response {
                let _ = write!(text, "\n  response: {} {}", response.status, response.reason);
                fields(&mut text, &response.headers);
                if detail >= 3 {
                    body(&mut text, response.body.as_deref(), &response.headers, cutoff);
                }
            }
        }
        Payload::Tcp(messages) | Payload::Udp(messages) if detail >= 3 => {
            for message in messages {
                let side = if message.from_client { "client ->" } else { "<- server" };
                let _ = write!(text, "\n  {side} {} bytes", message.content.len());
                view(&mut text, &message.content, false, cutoff);
            }
        }
        _ => {}
    }
    Some(text)
}

fn fields(text: &mut String, headers: &Headers) {
    for (name, value) in headers.iter() {
        let _ = write!(text, "\n    {name}: {}", printable(&String::from_utf8_lossy(value)));
    }
}

/// A body: not stored, empty, or its content view.
fn body(text: &mut String, body: Option<&[u8]>, headers: &Headers, cutoff: usize) {
    match body {
        None => text.push_str("\n    (body not stored)"),
        Some([]) => {}
        Some(bytes) => {
            let json = headers.get("content-type").is_some_and(|t| {
                let t = String::from_utf8_lossy(t).to_ascii_lowercase();
                t.contains("json")
            });
            let coding = headers.get("content-encoding").map(|v| String::from_utf8_lossy(v).trim().to_owned());
            if let Some(coding) = coding.filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity")) {
                // Shown decoded, within a size and ratio cap (a bomb shows as one).
                match flowgate_content::decode(&coding, bytes, &DECODE_LIMITS) {
                    Ok(decoded) => {
                        let _ =
                            write!(text, "\n    ({} bytes {coding}-encoded, {} decoded)", bytes.len(), decoded.len());
                        view(text, &decoded, json, cutoff);
                    }
                    Err(e) => {
                        let _ = write!(text, "\n    ({} bytes {coding}-encoded, not shown decoded: {e})", bytes.len());
                        view(text, bytes, false, cutoff);
                    }
                }
                return;
            }
            view(text, bytes, json, cutoff);
        }
    }
}

/// Content as people read it: JSON pretty-printed, UTF-8 text as it is, anything else
/// as a hex dump; at most `cutoff` lines.
fn view(text: &mut String, bytes: &[u8], json: bool, cutoff: usize) {
    let lines: Vec<String> = match std::str::from_utf8(bytes) {
        Ok(s) if json => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_default().lines().map(printable).collect(),
            Err(_) => s.lines().map(printable).collect(),
        },
        Ok(s) if !s.chars().any(|c| c.is_control() && !c.is_whitespace()) => s.lines().map(printable).collect(),
        _ => bytes.chunks(HEX_WIDTH).enumerate().map(|(i, chunk)| hex_line(i * HEX_WIDTH, chunk)).collect(),
    };
    for line in lines.iter().take(cutoff) {
        let _ = write!(text, "\n    {line}");
    }
    if lines.len() > cutoff {
        let _ = write!(text, "\n    ({} more lines; flow_detail=4 shows all)", lines.len() - cutoff);
    }
}

fn hex_line(offset: usize, chunk: &[u8]) -> String {
    let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
    let ascii: String =
        chunk.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect();
    format!("{offset:08x}  {:<width$}  {ascii}", hex.join(" "), width = HEX_WIDTH * 3 - 1)
}

/// Text with control characters (ANSI escapes included) shown as escapes, so a body
/// cannot drive the terminal.
fn printable(line: &str) -> String {
    line.chars()
        .flat_map(|c| if c.is_control() && c != '\t' { c.escape_default().collect() } else { vec![c] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_json_text_and_binary() {
        let mut text = String::new();
        view(&mut text, br#"{"a":[1,2]}"#, true, usize::MAX);
        assert_eq!(text, "\n    {\n      \"a\": [\n        1,\n        2\n      ]\n    }");
        let mut text = String::new();
        view(&mut text, b"line one\nline two", false, 1);
        assert_eq!(text, "\n    line one\n    (1 more lines; flow_detail=4 shows all)");
        let mut text = String::new();
        view(&mut text, b"\x00\x01ab\x1b[31m", false, usize::MAX);
        assert_eq!(text, format!("\n    00000000  00 01 61 62 1b 5b 33 31 6d{}  ..ab.[31m", " ".repeat(21)));
        assert_eq!(printable("a\x1b[2Jb"), "a\\u{1b}[2Jb");
    }

    #[test]
    fn encoded_bodies_show_decoded_within_caps() {
        let headers = |coding: &str| {
            Headers::from_pairs([("Content-Type", "application/json"), ("Content-Encoding", coding)]).expect("valid")
        };
        let json = br#"{"a":1}"#;
        for coding in ["gzip", "br", "zstd", "deflate"] {
            let encoded = flowgate_content::encode(coding, json).expect("encodes");
            let mut text = String::new();
            body(&mut text, Some(&encoded), &headers(coding), usize::MAX);
            let want =
                format!("\n    ({} bytes {coding}-encoded, 7 decoded)\n    {{\n      \"a\": 1\n    }}", encoded.len());
            assert_eq!(text, want, "{coding}");
        }
        let bomb = flowgate_content::encode("gzip", &vec![b'a'; 32 << 20]).expect("encodes");
        let mut text = String::new();
        body(&mut text, Some(&bomb), &headers("gzip"), 2);
        assert!(text.contains("not shown decoded: decoded, the body would be over"), "{text}");
        let mut text = String::new();
        body(&mut text, Some(b"plain"), &headers("compress"), 2);
        assert!(text.contains("not shown decoded: unsupported content coding \"compress\""), "{text}");
    }
}
