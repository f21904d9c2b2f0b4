//! host-calls (benchmark fixture): calls one host function `n` times per hook, so a
//! benchmark can tell what one crossing into the host costs (criterion:
//! `tests/benches/runtime.rs`, "host call: ...").
//!
//! `[config]`: `call` — `get-header` (the first `user-agent` value), `headers` (every
//! field), `set-header` (`x-host-calls`), `body` (the buffered request body, in the
//! `request` hook) or `none`; `n` — how many times (default 1). It sets
//! `x-host-calls-done: N` on the request when done, so a test can see it ran.

use std::sync::OnceLock;

use flowgate_sdk::{BodyMode, Flow, HttpHooks, Request, Verdict, config, export_plugin};

struct HostCalls;

/// The configured call and count, read once per instance.
fn settings() -> &'static (String, u32) {
    static SETTINGS: OnceLock<(String, u32)> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let call = config::get("call").unwrap_or_else(|| "none".to_owned());
        let n = config::get("n").and_then(|n| n.parse().ok()).unwrap_or(1);
        (call, n)
    })
}

#[flowgate_sdk::hooks]
impl HttpHooks for HostCalls {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        let (call, n) = settings();
        let mut done = 0u32;
        for i in 0..*n {
            let ok = match call.as_str() {
                "get-header" => !request.get_header("user-agent").is_empty(),
                "headers" => !request.headers().is_empty(),
                "set-header" => request.set_header("x-host-calls", &i.to_string()).is_ok(),
                _ => true,
            };
            done += u32::from(ok);
        }
        if call == "body" {
            let _ = request.set_body_mode(BodyMode::Buffer);
        } else {
            let _ = request.set_header("x-host-calls-done", &done.to_string());
        }
        Verdict::Continue
    }

    fn request(_flow: &Flow, request: &Request) -> Verdict {
        let (call, n) = settings();
        if call == "body" {
            let done = (0..*n).filter(|_| request.body().is_ok()).count();
            let _ = request.set_header("x-host-calls-done", &done.to_string());
        }
        Verdict::Continue
    }
}

export_plugin!(HostCalls: http);
