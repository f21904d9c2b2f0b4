//! rewrite-body: regex replace in request or response bodies, like mitmproxy's
//! `modify_body`. Bodies are buffered (up to the manifest's `max_body_bytes`).
//!
//! `[config]`:
//! - `pattern` — a regular expression (required);
//! - `replacement` — the replacement, `$1` for groups (default empty);
//! - `side` — `request`, `response` (default) or `both`;
//! - `content_type` — only bodies whose content-type starts with this (default: any);
//! - `stream` — `true` to rewrite chunk by chunk instead of buffering (memory stays flat,
//!   but a match split across two chunks is missed).

use flowgate_sdk::{BodyMode, Flow, HttpHooks, LifecycleHooks, Request, Response, Verdict, config, export_plugin, log};
use regex_lite::Regex;

struct RewriteBody;

fn side_enabled(side: &str) -> bool {
    let configured = config::get("side").unwrap_or_else(|| "response".to_owned());
    configured == side || configured == "both"
}

fn type_matches(content_type: Option<String>) -> bool {
    match config::get("content_type") {
        Some(want) => content_type.is_some_and(|ct| ct.to_ascii_lowercase().starts_with(&want.to_ascii_lowercase())),
        None => true,
    }
}

fn mode() -> BodyMode {
    if config::get("stream").as_deref() == Some("true") { BodyMode::Stream } else { BodyMode::Buffer }
}

/// The configured pattern, compiled once per instance.
fn regex() -> Option<&'static Regex> {
    static REGEX: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    REGEX.get_or_init(|| config::get("pattern").and_then(|p| Regex::new(&p).ok())).as_ref()
}

fn rewrite(body: Vec<u8>) -> Option<Vec<u8>> {
    let regex = regex()?;
    let text = String::from_utf8(body).ok()?;
    let replacement = config::get("replacement").unwrap_or_default();
    let out = regex.replace_all(&text, replacement.as_str());
    Some(out.into_owned().into_bytes())
}

impl LifecycleHooks for RewriteBody {
    fn configure() -> Result<(), String> {
        let pattern = config::get("pattern").ok_or("config.pattern is required")?;
        Regex::new(&pattern).map_err(|e| format!("config.pattern: {e}"))?;
        match config::get("side").as_deref() {
            None | Some("request" | "response" | "both") => Ok(()),
            Some(other) => Err(format!("config.side must be request, response or both, got {other:?}")),
        }
    }
}

impl HttpHooks for RewriteBody {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        if side_enabled("request") && type_matches(request.get_header("content-type").into_iter().next()) {
            let _ = request.set_body_mode(mode());
        }
        Verdict::Continue
    }

    fn request_body_chunk(_flow: &Flow, _request: &Request, chunk: Vec<u8>, _end: bool) -> Vec<u8> {
        rewrite(chunk.clone()).unwrap_or(chunk)
    }

    fn response_body_chunk(
        _flow: &Flow,
        _request: &Request,
        _response: &Response,
        chunk: Vec<u8>,
        _end: bool,
    ) -> Vec<u8> {
        rewrite(chunk.clone()).unwrap_or(chunk)
    }

    fn request(_flow: &Flow, request: &Request) -> Verdict {
        if let Ok(body) = request.body()
            && let Some(new) = rewrite(body)
            && let Err(e) = request.set_body(&new)
        {
            log::error(&format!("cannot rewrite request body: {}", e.describe()));
        }
        Verdict::Continue
    }

    fn response_headers(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        if side_enabled("response") && type_matches(response.get_header("content-type").into_iter().next()) {
            let _ = response.set_body_mode(mode());
        }
        Verdict::Continue
    }

    fn response(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        if let Ok(body) = response.body()
            && let Some(new) = rewrite(body)
            && let Err(e) = response.set_body(&new)
        {
            log::error(&format!("cannot rewrite response body: {}", e.describe()));
        }
        Verdict::Continue
    }
}

export_plugin!(RewriteBody: lifecycle, http);
