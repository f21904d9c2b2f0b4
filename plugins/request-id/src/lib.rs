//! request-id: give every request an `x-request-id` (keeping one the client sent), note
//! the client's user agent class, and echo the id on the response. It implements every
//! HTTP hook, so it is also the benchmark's "plugin on every hook".
//!
//! With `debug_instance_seq = true` in `[config]` it also sets
//! `x-instance-seq: N`, the number of requests this instance has seen — which makes the
//! instance model visible (always 1 with `per-flow`). With `debug_header_names = true` it
//! sets `x-header-names` to the request's header names as the plugin saw them, in order.

use std::sync::atomic::{AtomicU64, Ordering};

use flowgate_sdk::{Flow, HttpHooks, Request, Response, Verdict, config, export_plugin, log, random};

static SEEN: AtomicU64 = AtomicU64::new(0);

struct RequestId;

fn agent_class(agent: &str) -> &'static str {
    let agent = agent.to_ascii_lowercase();
    if agent.contains("bot") || agent.contains("spider") {
        "bot"
    } else if agent.starts_with("mozilla/") {
        "browser"
    } else {
        "tool"
    }
}

#[flowgate_sdk::hooks]
impl HttpHooks for RequestId {
    fn http_connect(_flow: &Flow, _request: &Request) -> Verdict {
        Verdict::Continue
    }

    fn request_headers(flow: &Flow, request: &Request) -> Verdict {
        let id = match request.get_header("x-request-id").into_iter().next() {
            Some(id) => id,
            None => format!("{:016x}", random::get_random_u64()),
        };
        let agent = request.get_header("user-agent").into_iter().next().unwrap_or_default();
        let _ = request.set_header("x-request-id", &id);
        let _ = request.set_header("x-agent-class", agent_class(&agent));
        if let Err(e) = flow.set_metadata("request-id", &id) {
            log::warn(&format!("cannot record the request id: {}", e.describe()));
        }
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        if config::get("debug_header_names").as_deref() == Some("true") {
            let names: Vec<String> = request.headers().into_iter().map(|h| h.name).collect();
            let _ = request.set_header("x-header-names", &names.join(","));
        }
        if config::get("debug_instance_seq").as_deref() == Some("true") {
            let _ = request.set_header("x-instance-seq", &seen.to_string());
        }
        Verdict::Continue
    }

    fn request(_flow: &Flow, _request: &Request) -> Verdict {
        Verdict::Continue
    }

    fn response_headers(flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        if let Some(id) = flow.get_metadata("request-id") {
            let _ = response.set_header("x-request-id", &id);
        }
        Verdict::Continue
    }

    fn response(_flow: &Flow, _request: &Request, _response: &Response) -> Verdict {
        Verdict::Continue
    }

    fn error(flow: &Flow, request: &Request, message: String) {
        log::warn(&format!("flow {} ({}) failed: {message}", flow.id(), request.url()));
    }
}

export_plugin!(RequestId: http);
