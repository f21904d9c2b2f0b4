//! webhook-notify: POST a small JSON note to `config.url` when a flow fails. It imports
//! `outbound-http`, so its manifest must list the webhook's host in
//! `capabilities.allowed_outbound_hosts`, or its calls are denied (and an internal address
//! must be named there as an IP literal; see README.md).

use flowgate_sdk::outbound_http::{OutgoingRequest, send};
use flowgate_sdk::{Flow, Header, HttpHooks, Request, config, export_plugin, log};

struct WebhookNotify;

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[flowgate_sdk::hooks]
impl HttpHooks for WebhookNotify {
    fn error(flow: &Flow, request: &Request, message: String) {
        let Some(url) = config::get("url") else { return };
        let body = format!(
            "{{\"flow\":{},\"url\":{},\"error\":{}}}",
            json_string(&flow.id()),
            json_string(&request.url()),
            json_string(&message)
        );
        let outgoing = OutgoingRequest {
            method: "POST".to_owned(),
            url,
            headers: vec![Header { name: "content-type".to_owned(), value: "application/json".to_owned() }],
            body: body.into_bytes(),
        };
        match send(&outgoing) {
            Ok(response) => log::info(&format!("webhook answered {}", response.status)),
            Err(e) => log::warn(&format!("webhook failed: {}", e.describe())),
        }
    }
}

export_plugin!(WebhookNotify: http);
