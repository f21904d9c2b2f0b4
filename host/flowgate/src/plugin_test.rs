//! `flowgate plugin test`: runs a plugin offline on one HTTP exchange at a time — a case
//! from the project's `tests/*.toml`, a captured raw request/response, or a synthetic GET —
//! calling its hooks in the order the proxy does, and prints what the plugin changed.
//! A case's `[expect]` table turns the run into a test: any unmet expectation fails it.
//! Not here: sockets. The "upstream" is the case's response; nothing leaves the machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use flowgate_flow::{BodyMode, ConnectionInfo, FlowInfo, Headers, HttpVersion, Request, Response, value_to_text};
use flowgate_runtime::{Chain, HttpAction, HttpFlowSession, Plugin, Runtime};
use serde::Deserialize;

/// What to run.
pub struct Options {
    /// A raw HTTP/1 request file.
    pub request: Option<PathBuf>,
    /// A raw HTTP/1 response file.
    pub response: Option<PathBuf>,
    /// Case files; empty means the project's tests/*.toml.
    pub cases: Vec<PathBuf>,
    /// `--set PLUGIN.KEY=VALUE` config overrides (plugin, key, value); those for other
    /// plugins are refused.
    pub overrides: Vec<(String, String, String)>,
    /// config.toml's plugin config (plugin, key, value): this plugin's applied first,
    /// other plugins' ignored.
    pub defaults: Vec<(String, String, String)>,
}

/// The name a plugin is known by: its manifest's, or a bare .wasm's file name.
pub fn plugin_name(manifest: &Path) -> anyhow::Result<String> {
    Ok(match manifest.extension().is_some_and(|e| e == "toml") {
        true => {
            let text =
                std::fs::read_to_string(manifest).with_context(|| format!("cannot read {}", manifest.display()))?;
            flowgate_runtime::Manifest::parse(&text, manifest)?.name
        }
        false => manifest.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default(),
    })
}

/// One test case file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: Option<String>,
    /// Config for this case, on top of the manifest's `[config]`.
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    request: CaseRequest,
    #[serde(default)]
    response: CaseResponse,
    #[serde(default)]
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_url")]
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_url() -> String {
    "http://example.com/".to_owned()
}

impl Default for CaseRequest {
    fn default() -> Self {
        CaseRequest {
            method: default_method(),
            url: default_url(),
            headers: vec![("accept".to_owned(), "*/*".to_owned()), ("user-agent".to_owned(), "curl/8".to_owned())],
            body: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseResponse {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

fn default_status() -> u16 {
    200
}

impl Default for CaseResponse {
    fn default() -> Self {
        CaseResponse {
            status: 200,
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            body: "hello from the upstream\n".to_owned(),
        }
    }
}

/// What a case checks. Header values `"*"` match any value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `upstream` (the request went upstream), `respond` (a plugin answered), `kill`, `fail`.
    outcome: Option<String>,
    /// The status the client gets.
    status: Option<u16>,
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
    #[serde(default)]
    request_headers_absent: Vec<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    response_headers_absent: Vec<String>,
    #[serde(default)]
    response_body_contains: Vec<String>,
    #[serde(default)]
    response_body_excludes: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Runs the cases (or the one exchange); true if every expectation held.
pub async fn run(runtime: &Runtime, path: &Path, options: &Options) -> anyhow::Result<bool> {
    let manifest = if path.is_dir() { path.join("plugin.toml") } else { path.to_owned() };
    let project_dir = manifest.parent().map(Path::to_owned).unwrap_or_default();
    let mut cases: Vec<(String, Case)> = Vec::new();
    if options.request.is_some() || options.response.is_some() {
        let mut case = Case::default();
        if let Some(file) = &options.request {
            case.request = parse_raw_request(&std::fs::read(file).with_context(|| format!("{}", file.display()))?)
                .with_context(|| format!("{}", file.display()))?;
        }
        if let Some(file) = &options.response {
            case.response = parse_raw_response(&std::fs::read(file).with_context(|| format!("{}", file.display()))?)
                .with_context(|| format!("{}", file.display()))?;
        }
        cases.push(("exchange".to_owned(), case));
    } else {
        let mut files = options.cases.clone();
        if files.is_empty()
            && let Ok(dir) = std::fs::read_dir(project_dir.join("tests"))
        {
            files = dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
            files.sort();
        }
        for file in files {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let case: Case = toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            cases.push((case.name.clone().unwrap_or(stem), case));
        }
        if cases.is_empty() {
            cases.push(("synthetic GET".to_owned(), Case::default()));
        }
    }

    if !manifest.exists() {
        bail!("{} does not exist (is this a plugin project?)", manifest.display());
    }
    let plugin_name = plugin_name(&manifest)?;
    for (plugin, key, _) in &options.overrides {
        if *plugin != plugin_name {
            bail!("--set {plugin}.{key}: this plugin is named {plugin_name:?}");
        }
    }
    let mut all_ok = true;
    for (index, (name, case)) in cases.iter().enumerate() {
        let mut overrides: Vec<(String, String)> = options
            .defaults
            .iter()
            .filter(|(p, _, _)| *p == plugin_name)
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        overrides.extend(case.config.clone());
        overrides.extend(options.overrides.iter().map(|(_, k, v)| (k.clone(), v.clone())));
        let plugin = runtime
            .load_with(&manifest, &overrides)
            .await
            .context("cannot load the plugin (run `flowgate plugin build` first?)")?;
        println!("== {name}");
        let ok = run_case(plugin, case, index as u64 + 1).await?;
        println!("{}", if ok { "ok" } else { "FAILED" });
        all_ok &= ok;
    }
    Ok(all_ok)
}

/// How the exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Upstream,
    Respond,
    Kill,
    Fail,
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Upstream => "upstream",
            Outcome::Respond => "respond",
            Outcome::Kill => "kill",
            Outcome::Fail => "fail",
        }
    }
}

async fn run_case(plugin: Arc<Plugin>, case: &Case, id: u64) -> anyhow::Result<bool> {
    let mut request = Request::new(&case.request.method, &case.request.url)
        .map_err(|e| anyhow::anyhow!("request url {:?}: {e}", case.request.url))?;
    request.headers = Headers::from_pairs(case.request.headers.iter().map(|(n, v)| (n, v)))
        .map_err(|e| anyhow::anyhow!("request headers: {e}"))?;
    if !request.headers.contains("host") {
        let authority = request.scheme.authority(&request.host, request.port);
        request.headers.set("host", authority.as_bytes()).map_err(|e| anyhow::anyhow!("host: {e}"))?;
    }
    let original_request = request.clone();
    let request_body = case.request.body.as_bytes().to_vec();
    let mut response = Response {
        status: case.response.status,
        reason: String::new(),
        version: HttpVersion::Http11,
        headers: Headers::from_pairs(case.response.headers.iter().map(|(n, v)| (n, v)))
            .map_err(|e| anyhow::anyhow!("response headers: {e}"))?,
        ..Response::default()
    };
    let original_response = response.clone();
    let response_body = case.response.body.as_bytes().to_vec();

    let chain = Chain::new(vec![plugin]);
    let address = format!("{}:{}", request.host, request.port);
    // A fixed id per case, so the output is the same on every run.
    let mut id_bytes = [0u8; 16];
    id_bytes[8..].copy_from_slice(&id.to_be_bytes());
    let id = flowgate_flow::Uuid::from_random_bytes(id_bytes);
    let conn = chain.connection(ConnectionInfo {
        id,
        client_address: "127.0.0.1:50000".to_owned(),
        server_address: Some(address.clone()),
        sni: None,
        alpn: None,
        tls: false,
    });
    let mut session = conn.http_flow(FlowInfo {
        id,
        connection_id: id,
        client_address: "127.0.0.1:50000".to_owned(),
        server_address: Some(address),
        ..FlowInfo::default()
    });

    let (outcome, local) =
        exchange(&mut session, &mut request, request_body.clone(), &mut response, response_body.clone()).await;

    // What changed, mitmproxy-style: + added, - removed, ~ changed.
    println!("request  {} {}", original_request.method, original_request.url());
    if request.method != original_request.method || request.url() != original_request.url() {
        println!("  ~ {} {}", request.method, request.url());
    }
    print_header_diff(&original_request.headers, &request.headers);
    let sent_body = request.body.clone().unwrap_or_else(|| request_body.clone().into());
    print_body_diff(&request_body, &sent_body);
    let (status, final_headers, final_body) = match (&outcome, &local) {
        (Outcome::Respond, Some(local)) => {
            println!("respond  {} (a plugin answered; the upstream was not used)", local.status);
            print_header_diff(&Headers::new(), &local.headers);
            print_body_diff(&[], &local.body);
            (Some(local.status), local.headers.clone(), local.body.clone())
        }
        (Outcome::Upstream, _) => {
            println!("response {}", original_response.status);
            if response.status != original_response.status {
                println!("  ~ status {}", response.status);
            }
            print_header_diff(&original_response.headers, &response.headers);
            let body = response.body.clone().unwrap_or_else(|| response_body.clone().into());
            print_body_diff(&response_body, &body);
            (Some(response.status), response.headers.clone(), body)
        }
        (Outcome::Fail, _) => {
            println!("fail     the client gets 502 (a fail-closed plugin failed)");
            (Some(502), Headers::new(), bytes::Bytes::new())
        }
        _ => {
            println!("kill     the client connection is closed without a response");
            (None, Headers::new(), bytes::Bytes::new())
        }
    };
    for (key, value) in &session.flow.metadata {
        println!("metadata {key} = {value}");
    }
    for failure in session.failures() {
        println!("failure  {failure}");
    }

    // Expectations.
    let expect = &case.expect;
    let mut problems = Vec::new();
    if let Some(want) = expect.outcome.as_ref().filter(|w| *w != outcome.name()) {
        problems.push(format!("outcome is {}, expected {want}", outcome.name()));
    }
    if let Some(want) = expect.status.filter(|w| status != Some(*w)) {
        problems.push(format!(
            "status is {}, expected {want}",
            status.map_or("none (the connection was closed)".to_owned(), |s| s.to_string())
        ));
    }
    check_headers(
        "request header",
        &request.headers,
        &expect.request_headers,
        &expect.request_headers_absent,
        &mut problems,
    );
    check_headers(
        "response header",
        &final_headers,
        &expect.response_headers,
        &expect.response_headers_absent,
        &mut problems,
    );
    let body_text = String::from_utf8_lossy(&final_body);
    for needle in &expect.response_body_contains {
        if !body_text.contains(needle.as_str()) {
            problems.push(format!("response body does not contain {needle:?}"));
        }
    }
    for needle in &expect.response_body_excludes {
        if body_text.contains(needle.as_str()) {
            problems.push(format!("response body contains {needle:?}"));
        }
    }
    for (key, want) in &expect.metadata {
        match session.flow.metadata.get(key) {
            Some(v) if want == "*" || v == want => {}
            Some(other) => problems.push(format!("metadata {key} is {other:?}, expected {want:?}")),
            None => problems.push(format!("metadata {key} is not set, expected {want:?}")),
        }
    }
    for problem in &problems {
        println!("  expectation failed: {problem}");
    }
    Ok(problems.is_empty())
}

/// Drives the hooks in the proxy's order. Returns the outcome and a plugin's local response.
pub(crate) async fn exchange(
    session: &mut HttpFlowSession,
    request: &mut Request,
    request_body: Vec<u8>,
    response: &mut Response,
    response_body: Vec<u8>,
) -> (Outcome, Option<flowgate_flow::LocalResponse>) {
    let stop = |action: HttpAction| match action {
        HttpAction::Continue => None,
        HttpAction::Respond(local) => Some((Outcome::Respond, Some(local))),
        HttpAction::Kill => Some((Outcome::Kill, None)),
        HttpAction::Fail(_) => Some((Outcome::Fail, None)),
    };
    if let Some(end) = stop(session.request_headers(request).await) {
        return end;
    }
    if request.body.is_none() {
        match request.body_mode {
            BodyMode::Pass => {}
            BodyMode::Buffer => request.body = Some(request_body.into()),
            BodyMode::Stream => match session.request_body_chunk(request, request_body, true).await {
                Ok(chunk) => request.body = Some(chunk.into()),
                Err(action) => return stop(action).unwrap_or((Outcome::Fail, None)),
            },
        }
    }
    if let Some(end) = stop(session.request(request).await) {
        return end;
    }
    if let Some(end) = stop(session.response_headers(request, response).await) {
        return end;
    }
    if response.body.is_none() {
        match response.body_mode {
            BodyMode::Pass => {}
            BodyMode::Buffer => response.body = Some(response_body.into()),
            BodyMode::Stream => match session.response_body_chunk(request, response, response_body, true).await {
                Ok(chunk) => response.body = Some(chunk.into()),
                Err(action) => return stop(action).unwrap_or((Outcome::Fail, None)),
            },
        }
    }
    if let Some(end) = stop(session.response(request, response).await) {
        return end;
    }
    (Outcome::Upstream, None)
}

fn pairs(headers: &Headers) -> Vec<(String, String)> {
    headers.iter().map(|(n, v)| (n.to_owned(), value_to_text(v))).collect()
}

pub(crate) fn print_header_diff(before: &Headers, after: &Headers) {
    let (before, after) = (pairs(before), pairs(after));
    let mut remaining = after.clone();
    for field in &before {
        match remaining.iter().position(|f| f.0.eq_ignore_ascii_case(&field.0) && f.1 == field.1) {
            Some(i) => {
                remaining.remove(i);
            }
            None => println!("  - {}: {}", field.0, field.1),
        }
    }
    for field in remaining {
        println!("  + {}: {}", field.0, field.1);
    }
}

pub(crate) fn print_body_diff(before: &[u8], after: &[u8]) {
    if before == after {
        return;
    }
    println!("  ~ body ({} bytes -> {} bytes):", before.len(), after.len());
    let text = String::from_utf8_lossy(after);
    let shown: String = text.chars().take(600).collect();
    for line in shown.lines() {
        println!("    {line}");
    }
    if text.chars().count() > 600 {
        println!("    ...");
    }
}

fn check_headers(
    what: &str,
    headers: &Headers,
    present: &BTreeMap<String, String>,
    absent: &[String],
    problems: &mut Vec<String>,
) {
    for (name, want) in present {
        let values: Vec<String> = headers.get_all(name).map(value_to_text).collect();
        if values.is_empty() {
            problems.push(format!("{what} {name} is missing (expected {want:?})"));
        } else if want != "*" && !values.iter().any(|v| v == want) {
            problems.push(format!("{what} {name} is {values:?}, expected {want:?}"));
        }
    }
    for name in absent {
        if headers.contains(name) {
            problems.push(format!("{what} {name} is present, expected none"));
        }
    }
}

/// Splits a raw HTTP/1 message into its head lines and body.
fn split_message(raw: &[u8]) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2)));
    let (head, body) = match end {
        Some((head_end, body_start)) => (&raw[..head_end], raw[body_start..].to_vec()),
        None => (raw, Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let lines: Vec<String> = head.lines().map(|l| l.trim_end_matches('\r').to_owned()).collect();
    if lines.is_empty() || lines[0].is_empty() {
        bail!("empty message");
    }
    Ok((lines, body))
}

fn parse_fields(lines: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    lines
        .iter()
        .map(|line| {
            let (name, value) = line.split_once(':').with_context(|| format!("not a header field: {line:?}"))?;
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect()
}

fn refuse_chunked(headers: &[(String, String)]) -> anyhow::Result<()> {
    if headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        bail!("chunked bodies are not read from files: give the body as is and drop transfer-encoding");
    }
    Ok(())
}

/// `GET /path HTTP/1.1` (with Host) or `GET http://host/path HTTP/1.1`, headers, body.
fn parse_raw_request(raw: &[u8]) -> anyhow::Result<CaseRequest> {
    let (lines, body) = split_message(raw)?;
    let mut parts = lines[0].split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {:?}", lines[0]);
    };
    let headers = parse_fields(&lines[1..])?;
    refuse_chunked(&headers)?;
    let url = if target.starts_with('/') {
        let host = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.clone())
            .context("origin-form request without a Host header")?;
        format!("http://{host}{target}")
    } else {
        target.to_owned()
    };
    Ok(CaseRequest { method: method.to_owned(), url, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// `HTTP/1.1 200 OK`, headers, body.
fn parse_raw_response(raw: &[u8]) -> anyhow::Result<CaseResponse> {
    let (lines, body) = split_message(raw)?;
    let status = lines[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {:?}", lines[0]))?;
    let headers = parse_fields(&lines[1..])?;
    refuse_chunked(&headers)?;
    Ok(CaseResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_messages_parse() {
        let r = parse_raw_request(b"POST /api?x=1 HTTP/1.1\r\nHost: example.org:8080\r\nX-A: b\r\n\r\n{\"k\":1}")
            .expect("request");
        assert_eq!((r.method.as_str(), r.url.as_str()), ("POST", "http://example.org:8080/api?x=1"));
        assert_eq!(r.headers[1], ("X-A".to_owned(), "b".to_owned()));
        assert_eq!(r.body, "{\"k\":1}");
        let r = parse_raw_request(b"GET https://a.test/ HTTP/1.1\n\n").expect("absolute form, bare LF");
        assert_eq!(r.url, "https://a.test/");
        assert!(parse_raw_request(b"GET / HTTP/1.1\r\n\r\n").is_err(), "no Host");
        let s =
            parse_raw_response(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope").expect("response");
        assert_eq!((s.status, s.body.as_str()), (404, "nope"));
        assert!(parse_raw_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").is_err());
    }
}
