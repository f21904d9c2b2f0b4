//! block-list: answer requests to listed hosts or paths locally (403 by default); the
//! upstream is never contacted.
//!
//! `[config]`:
//! - `hosts` — comma-separated host patterns; `*.example.com` matches subdomains;
//! - `paths` — comma-separated path prefixes;
//! - `status` — the status to answer with (default 403);
//! - `message` — the body (default "blocked by flowgate");
//! - `action` — `respond` (default) or `kill` to close the connection without an answer.

use std::sync::OnceLock;

use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, config, export_plugin, log};

struct BlockList;

/// A comma-separated config list, lowercased, read once per instance.
fn list(key: &'static str) -> &'static [String] {
    static HOSTS: OnceLock<Vec<String>> = OnceLock::new();
    static PATHS: OnceLock<Vec<String>> = OnceLock::new();
    let cell = if key == "hosts" { &HOSTS } else { &PATHS };
    cell.get_or_init(|| parse_list(key))
}

fn parse_list(key: &str) -> Vec<String> {
    config::get(key)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host == suffix || host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

#[flowgate_sdk::hooks]
impl HttpHooks for BlockList {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        let host = request.host().to_ascii_lowercase();
        let path = request.path().to_ascii_lowercase();
        let blocked_host = list("hosts").iter().any(|p| host_matches(p, &host));
        let blocked_path = list("paths").iter().any(|p| path.starts_with(p.as_str()));
        if !(blocked_host || blocked_path) {
            return Verdict::Continue;
        }
        let status = config::get("status").and_then(|s| s.parse().ok()).unwrap_or(403);
        let message = config::get("message").unwrap_or_else(|| "blocked by flowgate".to_owned());
        log::info(&format!("blocked {} {}", request.method(), request.url()));
        if config::get("action").as_deref() == Some("kill") {
            return Verdict::Kill;
        }
        Verdict::text(status, &format!("{message}\n"))
    }
}

export_plugin!(BlockList: http);
