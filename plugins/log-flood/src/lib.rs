//! log-flood (hostile): writes a million 1 KiB log lines in `request-headers`, then lets
//! the request through. The host must cap what reaches its log.

use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, export_plugin, log};

struct LogFlood;

impl HttpHooks for LogFlood {
    fn request_headers(_flow: &Flow, _request: &Request) -> Verdict {
        let line = "x".repeat(1024);
        for _ in 0..1_000_000 {
            log::info(&line);
        }
        Verdict::Continue
    }
}

export_plugin!(LogFlood: http);
