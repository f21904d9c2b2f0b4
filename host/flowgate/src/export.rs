//! `flowgate export curl|raw|har FILE [FILTER]`: flows from a file (flowgate's, HAR or
//! mitmproxy's) as commands, raw HTTP/1 messages or HAR, as mitmproxy's export addon
//! writes them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use flowgate_filter::Filter;
use flowgate_flow::{Headers, Payload, Request, Response};

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One curl command per request.
    Curl,
    /// Each request and its response as raw HTTP/1 messages.
    Raw,
    /// One HAR 1.2 document.
    Har,
}

/// Reads `path`, keeps the flows `filter` matches and writes them to `out` as `format`
/// says. Flows that cannot be read or exported are reported on stderr and skipped;
/// returns how many were skipped.
pub fn run(format: Format, path: &Path, filter: Option<&Filter>, out: &mut dyn Write) -> anyhow::Result<usize> {
    let mut skipped = 0;
    let mut flows = Vec::new();
    crate::flows::read_matching(path, filter, |flow| flows.push(flow))?;
    match format {
        Format::Har => {
            let stats = flowgate_store::har::write(&mut *out, &flows)?;
            skipped += stats.skipped;
        }
        Format::Curl | Format::Raw => {
            for flow in &flows {
                let Payload::Http(http) = &flow.payload else {
                    skipped += 1;
                    continue;
                };
                let text = match format {
                    Format::Curl => curl(&http.request),
                    _ => Ok(raw(&http.request, http.response.as_ref())),
                };
                match text {
                    Ok(text) => out.write_all(&text).context("cannot write the export")?,
                    Err(e) => {
                        eprintln!("flowgate: {} {}: {e}", http.request.method, http.request.url());
                        skipped += 1;
                    }
                }
            }
        }
    }
    out.flush()?;
    Ok(skipped)
}

/// A shell word, quoted for a POSIX shell when it needs it.
fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// The request as a curl command (mitmproxy's `export curl`), one line.
fn curl(request: &Request) -> anyhow::Result<Vec<u8>> {
    let mut words = vec!["curl".to_owned()];
    if request.method != "GET" {
        words.extend(["-X".to_owned(), request.method.clone()]);
    }
    for (name, value) in request.headers.iter() {
        if name.eq_ignore_ascii_case("accept-encoding") {
            words.push("--compressed".to_owned());
            continue;
        }
        let Ok(value) = std::str::from_utf8(value) else { bail!("header {name} is not text") };
        words.extend(["-H".to_owned(), format!("{name}: {value}")]);
    }
    match &request.body {
        None => bail!("its body was not stored"),
        Some(body) if !body.is_empty() => {
            let Ok(text) = std::str::from_utf8(body) else { bail!("its body is binary (export raw keeps it)") };
            words.extend(["--data-binary".to_owned(), text.to_owned()]);
        }
        _ => {}
    }
    words.push(request.url());
    let mut line = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    line.push('\n');
    Ok(line.into_bytes())
}

fn head_fields(out: &mut Vec<u8>, headers: &Headers) {
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request and its response as HTTP/1.1 messages (mitmproxy's `export raw`).
fn raw(request: &Request, response: Option<&Response>) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", request.method, request.path).into_bytes();
    let mut headers = request.headers.clone();
    if !headers.contains("host") {
        let _ = headers.set("host", request.scheme.authority(&request.host, request.port).as_bytes());
    }
    head_fields(&mut out, &headers);
    out.extend_from_slice(request.body.as_deref().unwrap_or_default());
    if let Some(response) = response {
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", response.status, response.reason).as_bytes());
        head_fields(&mut out, &response.headers);
        out.extend_from_slice(response.body.as_deref().unwrap_or_default());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_commands_quote_for_the_shell() {
        let mut request = Request::new("POST", "https://example.com/a?b=$x").expect("request");
        request.headers.append("content-type", b"application/json").expect("field");
        request.headers.append("accept-encoding", b"gzip").expect("field");
        request.body = Some(bytes::Bytes::from_static(b"{\"it's\": 1}"));
        let line = String::from_utf8(curl(&request).expect("curl")).expect("text");
        assert_eq!(
            line,
            "curl -X POST -H 'content-type: application/json' --compressed --data-binary '{\"it'\\''s\": 1}' \
             'https://example.com/a?b=$x'\n"
        );
        request.body = Some(bytes::Bytes::from_static(b"\xff\x00"));
        assert!(curl(&request).is_err());
    }
}
