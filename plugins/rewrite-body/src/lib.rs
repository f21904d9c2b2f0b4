//! rewrite-body: regex replace in request or response bodies, like mitmproxy's
//! `modify_body`. Bodies are buffered (up to the manifest's `max_body_bytes`) and
//! rewritten decoded: a gzip, deflate, br or zstd body is decoded, rewritten and encoded
//! again with the same coding (`decoded-body` / `set-decoded-body`).
//!
//! `[config]`:
//! - `pattern` — a regular expression (required);
//! - `replacement` — the replacement, `$1` for groups (default empty);
//! - `side` — `request`, `response` (default) or `both`;
//! - `content_type` — only bodies whose content-type starts with this (default: any);
//! - `stream` — `true` to rewrite chunk by chunk instead of buffering (memory stays flat,
//!   but a match split across two chunks is missed). Chunks are the bytes as sent, so a
//!   content-encoded body is not streamed through the plugin: it passes untouched.

use flowgate_sdk::{BodyMode, Error, Flow, HttpHooks, LifecycleHooks, Request, Response, Verdict, config, export_plugin, log};
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

/// How to take a body with these `content-encoding` values, if at all.
fn mode(content_encoding: &[String]) -> Option<BodyMode> {
    let encoded = content_encoding.iter().flat_map(|v| v.split(',')).any(|c| {
        let c = c.trim();
        !c.is_empty() && !c.eq_ignore_ascii_case("identity")
    });
    match config::get("stream").as_deref() == Some("true") {
        true if encoded => None,
        true => Some(BodyMode::Stream),
        false => Some(BodyMode::Buffer),
    }
}

/// The configured pattern, compiled once per instance.
fn regex() -> Option<&'static Regex> {
    static REGEX: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    REGEX.get_or_init(|| config::get("pattern").and_then(|p| Regex::new(&p).ok())).as_ref()
}

/// The body with every match replaced, or `None` when nothing matched (or it is not text).
fn rewrite(body: Vec<u8>) -> Option<Vec<u8>> {
    let regex = regex()?;
    let text = String::from_utf8(body).ok()?;
    let replacement = config::get("replacement").unwrap_or_default();
    match regex.replace_all(&text, replacement.as_str()) {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(out) => Some(out.into_bytes()),
    }
}

#[flowgate_sdk::hooks]
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

#[flowgate_sdk::hooks]
impl HttpHooks for RewriteBody {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        if side_enabled("request")
            && type_matches(request.get_header("content-type").into_iter().next())
            && let Some(mode) = mode(&request.get_header("content-encoding"))
        {
            let _ = request.set_body_mode(mode);
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
        match request.decoded_body() {
            Ok(body) => {
                if let Some(new) = rewrite(body)
                    && let Err(e) = request.set_decoded_body(&new)
                {
                    log::error(&format!("cannot rewrite request body: {}", e.describe()));
                }
            }
            Err(Error::InvalidState(_)) => {} // not buffered: not ours
            Err(e) => log::warn(&format!("request body of {} left as it is: {}", request.url(), e.describe())),
        }
        Verdict::Continue
    }

    fn response_headers(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        if side_enabled("response")
            && type_matches(response.get_header("content-type").into_iter().next())
            && let Some(mode) = mode(&response.get_header("content-encoding"))
        {
            let _ = response.set_body_mode(mode);
        }
        Verdict::Continue
    }

    fn response(_flow: &Flow, request: &Request, response: &Response) -> Verdict {
        match response.decoded_body() {
            Ok(body) => {
                if let Some(new) = rewrite(body)
                    && let Err(e) = response.set_decoded_body(&new)
                {
                    log::error(&format!("cannot rewrite response body: {}", e.describe()));
                }
            }
            Err(Error::InvalidState(_)) => {} // not buffered: not ours
            Err(e) => log::warn(&format!("response body of {} left as it is: {}", request.url(), e.describe())),
        }
        Verdict::Continue
    }
}

export_plugin!(RewriteBody: lifecycle, http);
