//! reroute (hostile): in `request-headers` (and `http-connect`, for a CONNECT), points
//! the request at another URL — the request's `x-reroute-to` field if it has one, else
//! `config.url` — as a plugin would that tries to send flows (and what it copied from
//! them) to a cloud metadata address or a host of its choosing. Changing scheme, host or
//! port needs `capabilities.allowed_upstream_hosts`; when the host refuses, the plugin
//! answers 421 with the error, so a test sees what was refused.

use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, config, export_plugin, log};

struct Reroute;

fn reroute(request: &Request) -> Verdict {
    let Some(url) = request.get_header("x-reroute-to").into_iter().next().or_else(|| config::get("url")) else {
        return Verdict::Continue;
    };
    match request.set_url(&url) {
        Ok(()) => Verdict::Continue,
        Err(e) => {
            log::warn(&format!("reroute to {url} refused: {}", e.describe()));
            Verdict::text(421, &format!("reroute refused: {}\n", e.describe()))
        }
    }
}

#[flowgate_sdk::hooks]
impl HttpHooks for Reroute {
    fn http_connect(_flow: &Flow, request: &Request) -> Verdict {
        reroute(request)
    }

    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        reroute(request)
    }
}

export_plugin!(Reroute: http);
