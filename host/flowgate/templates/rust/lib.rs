//! {{name}}: a flowgate plugin in Rust.
//!
//! Blocks requests under `config.blocked_path` with a 403 and adds an `x-greeting`
//! header (`config.greeting`) to every response. Change it to do what you need.

use flowgate_sdk::{Flow, HttpHooks, Request, Response, Verdict, config, export_plugin, log};

struct Plugin;

#[flowgate_sdk::hooks] // flowgate calls the hooks written here, no other
impl HttpHooks for Plugin {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        let blocked = config::get("blocked_path").unwrap_or_else(|| "/blocked".to_owned());
        if request.path().starts_with(&blocked) {
            log::info(&format!("blocked {}", request.url()));
            return Verdict::text(403, "blocked by {{name}}\n");
        }
        Verdict::Continue
    }

    fn response_headers(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_owned());
        if let Err(e) = response.set_header("x-greeting", &greeting) {
            log::error(&format!("cannot set x-greeting: {}", e.describe()));
        }
        Verdict::Continue
    }
}

export_plugin!(Plugin: http);
