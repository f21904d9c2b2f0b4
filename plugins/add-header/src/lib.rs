//! add-header: add, replace or remove headers on requests and responses, like
//! mitmproxy's `modify_headers`.
//!
//! Configured by the manifest's `[config]` table:
//! - `request` — lines of `Name: value` set on every request;
//! - `response` — lines of `Name: value` set on every response.
//!
//! A line with an empty value (`Name:`) removes the header instead.

use std::sync::OnceLock;

use flowgate_sdk::{Flow, HttpHooks, LifecycleHooks, Request, Response, Verdict, config, export_plugin, log};

struct AddHeader;

/// Header names with the value to set, or `None` to remove the header.
type Rules = Vec<(String, Option<String>)>;

/// Parses `Name: value` lines; `None` as value means remove.
fn rules(key: &str) -> Result<Rules, String> {
    let Some(text) = config::get(key) else { return Ok(Vec::new()) };
    let mut rules = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, value) =
            line.split_once(':').ok_or_else(|| format!("config.{key}: expected `Name: value`, got {line:?}"))?;
        let value = value.trim();
        rules.push((name.trim().to_owned(), (!value.is_empty()).then(|| value.to_owned())));
    }
    Ok(rules)
}

/// The rules for `request` or `response`, parsed once per instance rather than on every
/// hook call (configure has already refused a config that does not parse).
fn cached(key: &'static str) -> &'static Rules {
    static REQUEST: OnceLock<Rules> = OnceLock::new();
    static RESPONSE: OnceLock<Rules> = OnceLock::new();
    let cell = if key == "request" { &REQUEST } else { &RESPONSE };
    cell.get_or_init(|| rules(key).unwrap_or_default())
}

#[flowgate_sdk::hooks]
impl LifecycleHooks for AddHeader {
    fn configure() -> Result<(), String> {
        let n = rules("request")?.len() + rules("response")?.len();
        if n == 0 {
            return Err("nothing to do: set config.request and/or config.response".to_owned());
        }
        Ok(())
    }
}

#[flowgate_sdk::hooks]
impl HttpHooks for AddHeader {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        for (name, value) in cached("request") {
            let result = match value {
                Some(v) => request.set_header(name, v),
                None => {
                    request.remove_header(name);
                    Ok(())
                }
            };
            if let Err(e) = result {
                log::error(&format!("cannot set request header {name}: {}", e.describe()));
            }
        }
        Verdict::Continue
    }

    fn response_headers(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        for (name, value) in cached("response") {
            match value {
                Some(v) => {
                    if let Err(e) = response.set_header(name, v) {
                        log::error(&format!("cannot set response header {name}: {}", e.describe()));
                    }
                }
                None => {
                    response.remove_header(name);
                }
            }
        }
        Verdict::Continue
    }
}

export_plugin!(AddHeader: lifecycle, http);
