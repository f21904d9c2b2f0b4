//! HAR 1.2 (the HTTP Archive format of the W3C Web Performance group's draft): HTTP flows
//! written as a HAR log and HAR logs (flowgate's, mitmproxy's `hardump`, browsers') read
//! back into [`Flow`]s. HTTP only: other flows are skipped when writing (and counted).
//!
//! Writing: one entry per HTTP flow with `startedDateTime` (the request's first byte),
//! `time`, the request (headers, cookies, `queryString`, `postData`), the response (headers,
//! cookies, `content` as text when that is unambiguous, ASCII or UTF-8 under a UTF-8
//! charset, else base64 with `encoding: base64`), `timings` (send, wait, receive from the messages' timestamps; connect and ssl
//! from the server connection, the first time it is used), `serverIPAddress`,
//! `connection` (the server connection's id), and the custom fields `_id` (the flow's
//! id), `_error` in the response of a failed flow (as Chrome and mitmproxy write it) and
//! `_webSocketMessages` (as Chrome writes them: `type` send or receive, `time` in
//! seconds, `opcode`, `data`, base64 for binary messages). Bodies are written as recorded,
//! still in their content coding (flowgate keeps them as on the wire); a binary request
//! body is base64 with the custom `_encoding: base64`.
//!
//! Reading: what HAR carries. Clients are unknown (`0.0.0.0:0`); a flow without `_id`
//! gets an id derived from its entry (its position, start and URL), so reading a file
//! twice gives the same ids. Body text is encoded as its content type says (UTF-8 under a
//! UTF-8 charset or for JSON, else Latin-1, as mitmproxy reads it). Header values are text
//! in HAR: non-UTF-8 bytes are written as Latin-1 and read back as UTF-8.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use bytes::Bytes;
use flowgate_flow::{
    Address, Client, Flow, FlowError, Headers, HttpFlow, HttpVersion, MessageKind, Payload, Request, Response, Server,
    Timestamp, Uuid, WebSocketData, WebSocketMessage, value_to_text,
};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::datetime;

/// The largest HAR file read: 512 MiB (a HAR is one JSON document, held whole in memory;
/// base64 bodies make it about a third larger than the flows it holds).
pub const MAX_HAR_SIZE: u64 = 512 << 20;

/// Why a HAR file cannot be read or written.
#[derive(Debug, Error)]
pub enum Error {
    /// The source or destination failed.
    #[error("har io: {0}")]
    Io(#[from] io::Error),
    /// Not JSON (serde_json's message says where: line and column).
    #[error("not a HAR file: {0}")]
    Json(#[from] serde_json::Error),
    /// Larger than [`MAX_HAR_SIZE`].
    #[error("a HAR file over the limit of {MAX_HAR_SIZE} bytes")]
    TooLarge,
    /// JSON without `log.entries`.
    #[error("not a HAR file: {0}")]
    Structure(&'static str),
    /// An entry that cannot be made a flow.
    #[error("HAR entry {index}: {field}: {problem}")]
    Entry {
        /// The entry's position in `log.entries`.
        index: usize,
        /// The field at fault (`request.url`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

// ---- writing ----

#[derive(Serialize)]
struct Har<'a> {
    log: Log<'a>,
}

#[derive(Serialize)]
struct Log<'a> {
    version: &'static str,
    creator: Creator,
    pages: [(); 0],
    entries: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Creator {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    started_date_time: String,
    time: f64,
    request: HarRequest<'a>,
    response: HarResponse,
    cache: Empty,
    timings: Timings,
    #[serde(rename = "serverIPAddress", skip_serializing_if = "Option::is_none")]
    server_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_resourceType", skip_serializing_if = "Option::is_none")]
    resource_type: Option<&'static str>,
    #[serde(rename = "_webSocketMessages", skip_serializing_if = "Option::is_none")]
    websocket_messages: Option<Vec<WsMessage>>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HarRequest<'a> {
    method: &'a str,
    url: String,
    http_version: &'static str,
    cookies: Vec<Cookie>,
    headers: Vec<NameValue>,
    query_string: Vec<NameValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<PostData>,
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HarResponse {
    status: u16,
    status_text: String,
    http_version: &'static str,
    cookies: Vec<Cookie>,
    headers: Vec<NameValue>,
    content: Content,
    #[serde(rename = "redirectURL")]
    redirect_url: String,
    headers_size: i64,
    body_size: i64,
    #[serde(rename = "_error", skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content {
    size: i64,
    mime_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostData {
    mime_type: String,
    text: String,
    #[serde(rename = "_encoding", skip_serializing_if = "Option::is_none")]
    encoding: Option<&'static str>,
}

#[derive(Serialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cookie {
    name: String,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    same_site: Option<String>,
}

#[derive(Serialize)]
struct Timings {
    blocked: f64,
    dns: f64,
    connect: f64,
    ssl: f64,
    send: f64,
    wait: f64,
    receive: f64,
}

#[derive(Serialize)]
struct WsMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    time: f64,
    opcode: u8,
    data: String,
}

/// What [`write`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Entries (HTTP flows).
    pub entries: usize,
    /// Flows skipped because HAR has no place for them (TCP, UDP, DNS).
    pub skipped: usize,
}

fn version_text(v: HttpVersion) -> &'static str {
    v.as_str()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Whether text in a HAR is this body's bytes in UTF-8 (a `charset=utf-8` parameter, or
/// JSON); otherwise HAR readers (mitmproxy's, following the content type) take text as
/// Latin-1.
fn utf8_charset(headers: &Headers) -> bool {
    let content_type = mime_type(headers).to_ascii_lowercase();
    let charset = content_type.split(';').skip(1).find_map(|p| p.trim().strip_prefix("charset=").map(str::to_owned));
    match charset {
        Some(charset) => matches!(charset.trim_matches('"'), "utf-8" | "utf8"),
        None => content_type.contains("json"),
    }
}

/// The body as HAR text when every reader gets the same bytes back from it (ASCII, or UTF-8
/// under a UTF-8 charset), else base64 and its marker.
fn body_text(body: &[u8], headers: &Headers) -> (String, Option<&'static str>) {
    match std::str::from_utf8(body) {
        Ok(text) if body.is_ascii() || utf8_charset(headers) => (text.to_owned(), None),
        _ => (b64(body), Some("base64")),
    }
}

/// HAR text back to bytes, as its content type says: UTF-8 under a UTF-8 charset or for
/// JSON, else Latin-1 when every character fits (mitmproxy's rule), else UTF-8.
fn text_bytes(text: &str, headers: &Headers) -> Bytes {
    if !utf8_charset(headers) && text.chars().all(|c| u32::from(c) <= 0xff) {
        return text.chars().map(|c| c as u8).collect::<Vec<u8>>().into();
    }
    Bytes::copy_from_slice(text.as_bytes())
}

fn name_values(headers: &Headers) -> Vec<NameValue> {
    headers.iter().map(|(n, v)| NameValue { name: n.to_owned(), value: value_to_text(v) }).collect()
}

fn millis(later: Option<Timestamp>, earlier: Option<Timestamp>) -> Option<f64> {
    let d = later?.checked_duration_since(earlier?)?;
    Some(d.as_micros() as f64 / 1000.0)
}

fn request_cookies(headers: &Headers) -> Vec<Cookie> {
    let mut cookies = Vec::new();
    for value in headers.get_all("cookie") {
        for pair in value_to_text(value).split(';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            cookies.push(Cookie {
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
                path: None,
                domain: None,
                http_only: None,
                secure: None,
                same_site: None,
            });
        }
    }
    cookies
}

fn response_cookies(headers: &Headers) -> Vec<Cookie> {
    let mut cookies = Vec::new();
    for value in headers.get_all("set-cookie") {
        let text = value_to_text(value);
        let mut parts = text.split(';').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let (name, value) = first.split_once('=').unwrap_or((first, ""));
        let mut cookie = Cookie {
            name: name.trim().to_owned(),
            value: value.trim().to_owned(),
            path: None,
            domain: None,
            http_only: Some(false),
            secure: Some(false),
            same_site: None,
        };
        for attr in parts {
            let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
            match key.trim().to_ascii_lowercase().as_str() {
                "path" => cookie.path = Some(val.trim().to_owned()),
                "domain" => cookie.domain = Some(val.trim().to_owned()),
                "httponly" => cookie.http_only = Some(true),
                "secure" => cookie.secure = Some(true),
                "samesite" => cookie.same_site = Some(val.trim().to_owned()),
                // `expires` is an HTTP date; HAR wants ISO 8601: left out (as mitmproxy does).
                _ => {}
            }
        }
        cookies.push(cookie);
    }
    cookies
}

fn query_string(path: &str) -> Vec<NameValue> {
    let Some((_, query)) = path.split_once('?') else { return Vec::new() };
    form_urlencoded::parse(query.as_bytes())
        .map(|(n, v)| NameValue { name: n.into_owned(), value: v.into_owned() })
        .collect()
}

fn mime_type(headers: &Headers) -> String {
    headers.get("content-type").map(value_to_text).unwrap_or_default()
}

fn entry<'a>(flow: &'a Flow, http: &'a HttpFlow, servers_seen: &mut Vec<Uuid>) -> Entry<'a> {
    let req = &http.request;
    let started = req.timestamp_start.unwrap_or(flow.timestamp_created);
    let post_data = req.body.as_ref().map(|body| {
        let (text, encoding) = body_text(body, &req.headers);
        PostData { mime_type: mime_type(&req.headers), text, encoding }
    });
    let request = HarRequest {
        method: &req.method,
        url: req.url(),
        http_version: version_text(req.version),
        cookies: request_cookies(&req.headers),
        headers: name_values(&req.headers),
        query_string: query_string(&req.path),
        post_data,
        headers_size: -1,
        body_size: req.body.as_ref().map_or(-1, |b| b.len() as i64),
    };
    let error = flow.error.as_ref().map(|e| e.message.clone());
    let response = match &http.response {
        Some(resp) => {
            let (text, encoding) = match &resp.body {
                Some(body) => {
                    let (text, encoding) = body_text(body, &resp.headers);
                    (Some(text), encoding)
                }
                None => (None, None),
            };
            HarResponse {
                status: resp.status,
                status_text: resp.reason.clone(),
                http_version: version_text(resp.version),
                cookies: response_cookies(&resp.headers),
                headers: name_values(&resp.headers),
                content: Content {
                    size: resp.body.as_ref().map_or(-1, |b| b.len() as i64),
                    mime_type: mime_type(&resp.headers),
                    text,
                    encoding,
                },
                redirect_url: resp.headers.get("location").map(value_to_text).unwrap_or_default(),
                headers_size: -1,
                body_size: resp.body.as_ref().map_or(-1, |b| b.len() as i64),
                error,
            }
        }
        None => HarResponse {
            status: 0,
            status_text: String::new(),
            http_version: "",
            cookies: Vec::new(),
            headers: Vec::new(),
            content: Content { size: 0, mime_type: String::new(), text: None, encoding: None },
            redirect_url: String::new(),
            headers_size: -1,
            body_size: -1,
            error,
        },
    };
    let (mut connect, mut ssl) = (-1.0, -1.0);
    if let Some(server) = &flow.server
        && !servers_seen.contains(&server.id)
    {
        servers_seen.push(server.id);
        // HAR 1.2: `connect` includes `ssl`.
        let connected = server.timestamp_tls_setup.or(server.timestamp_tcp_setup);
        connect = millis(connected, server.timestamp_start).unwrap_or(-1.0);
        ssl = millis(server.timestamp_tls_setup, server.timestamp_tcp_setup).unwrap_or(-1.0);
    }
    let response_start = http.response.as_ref().and_then(|r| r.timestamp_start);
    let send = millis(req.timestamp_end, req.timestamp_start).unwrap_or(0.0);
    let wait = millis(response_start, req.timestamp_end).unwrap_or(0.0);
    let receive = http.response.as_ref().and_then(|r| millis(r.timestamp_end, r.timestamp_start)).unwrap_or(0.0);
    let timings = Timings { blocked: -1.0, dns: -1.0, connect, ssl, send, wait, receive };
    let time: f64 = [timings.connect, send, wait, receive].iter().filter(|t| **t >= 0.0).sum();
    let websocket_messages = http.websocket.as_ref().map(|ws| {
        ws.messages
            .iter()
            .map(|m| {
                let (opcode, data) = match m.kind {
                    MessageKind::Text => (1, String::from_utf8_lossy(&m.data).into_owned()),
                    MessageKind::Binary => (2, b64(&m.data)),
                    MessageKind::Close => (8, b64(&m.data)),
                    MessageKind::Ping => (9, b64(&m.data)),
                    MessageKind::Pong => (10, b64(&m.data)),
                };
                let kind = if m.from_client { "send" } else { "receive" };
                WsMessage { kind, time: m.timestamp.as_secs_f64(), opcode, data }
            })
            .collect()
    });
    let server_peer = flow.server.as_ref().and_then(|s| s.peer);
    Entry {
        started_date_time: datetime::format(started),
        time,
        request,
        response,
        cache: Empty {},
        timings,
        server_ip_address: server_peer.map(|p| p.ip().to_string()),
        connection: flow.server.as_ref().map(|s| s.id.to_string()),
        id: flow.id.to_string(),
        resource_type: http.websocket.as_ref().map(|_| "websocket"),
        websocket_messages,
    }
}

/// Writes the HTTP flows among `flows` as a HAR 1.2 log (pretty-printed JSON).
pub fn write<'a, W: Write>(out: W, flows: impl IntoIterator<Item = &'a Flow>) -> Result<WriteStats, Error> {
    let mut stats = WriteStats::default();
    let mut servers_seen = Vec::new();
    let mut entries = Vec::new();
    for flow in flows {
        match &flow.payload {
            Payload::Http(http) => entries.push(entry(flow, http, &mut servers_seen)),
            _ => stats.skipped += 1,
        }
    }
    stats.entries = entries.len();
    let har = Har {
        log: Log {
            version: "1.2",
            creator: Creator { name: "flowgate", version: env!("CARGO_PKG_VERSION") },
            pages: [],
            entries,
        },
    };
    let mut out = io::BufWriter::new(out);
    serde_json::to_writer_pretty(&mut out, &har)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(stats)
}

// ---- reading ----

/// The entries of a HAR log, made flows one at a time.
#[derive(Debug)]
pub struct Entries {
    entries: std::vec::IntoIter<Value>,
    index: usize,
}

impl Entries {
    /// How many entries are left.
    pub fn remaining(&self) -> usize {
        self.entries.len()
    }
}

impl Iterator for Entries {
    type Item = Result<Flow, Error>;

    fn next(&mut self) -> Option<Result<Flow, Error>> {
        let entry = self.entries.next()?;
        let index = self.index;
        self.index += 1;
        Some(entry_to_flow(index, &entry).map_err(|(field, problem)| Error::Entry { index, field, problem }))
    }
}

/// Reads a HAR log (at most [`MAX_HAR_SIZE`] bytes; a UTF-8 byte order mark is skipped).
pub fn read<R: Read>(input: R) -> Result<Entries, Error> {
    let mut bytes = Vec::new();
    input.take(MAX_HAR_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_HAR_SIZE {
        return Err(Error::TooLarge);
    }
    parse(&bytes)
}

/// Parses a HAR log held in memory.
pub fn parse(bytes: &[u8]) -> Result<Entries, Error> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut har: Value = serde_json::from_slice(bytes)?;
    let entries = match har.get_mut("log").and_then(|log| log.get_mut("entries")).map(Value::take) {
        Some(Value::Array(entries)) => entries,
        _ => return Err(Error::Structure("no log.entries list")),
    };
    Ok(Entries { entries: entries.into_iter(), index: 0 })
}

type EntryError = (String, String);

fn fail<T>(field: &str, problem: impl Into<String>) -> Result<T, EntryError> {
    Err((field.to_owned(), problem.into()))
}

fn text<'a>(v: &'a Value, key: &str, field: &str) -> Result<&'a str, EntryError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => fail(field, "expected a string"),
        None => fail(field, "missing"),
    }
}

fn opt_text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// `base` plus `ms` milliseconds (none for a negative or missing time).
fn plus_millis(base: Option<Timestamp>, ms: Option<f64>) -> Option<Timestamp> {
    let ms = ms.filter(|ms| *ms >= 0.0 && ms.is_finite())?;
    Some(Timestamp::from_micros(base?.as_micros().checked_add((ms * 1000.0).round() as u64)?))
}

fn read_headers(v: &Value, field: &str) -> Result<Headers, EntryError> {
    let mut headers = Headers::new();
    let Some(list) = v.get("headers") else { return Ok(headers) };
    let Some(list) = list.as_array() else { return fail(field, "expected a list") };
    for (i, header) in list.iter().enumerate() {
        // {"name": .., "value": ..} as the spec says, or [name, value] as Slack writes.
        let (name, value) = match header {
            Value::Object(_) => (opt_text(header, "name"), opt_text(header, "value")),
            Value::Array(pair) => (pair.first().and_then(Value::as_str), pair.get(1).and_then(Value::as_str)),
            _ => (None, None),
        };
        let (Some(name), Some(value)) = (name, value) else {
            return fail(&format!("{field}[{i}]"), "expected a name and a value");
        };
        if name.starts_with(':') {
            continue; // HTTP/2 pseudo-header fields, as browsers list them
        }
        headers.append(name, value.as_bytes()).map_err(|e| (format!("{field}[{i}]"), e.to_string()))?;
    }
    Ok(headers)
}

fn read_version(v: &Value) -> HttpVersion {
    match opt_text(v, "httpVersion").unwrap_or_default().to_ascii_lowercase().as_str() {
        "http/1.0" => HttpVersion::Http10,
        "http/2" | "http/2.0" | "h2" | "h2c" => HttpVersion::Http2,
        "http/3" | "http/3.0" | "h3" => HttpVersion::Http3,
        _ => HttpVersion::Http11,
    }
}

fn decode_text(text: &str, encoding: Option<&str>, headers: &Headers, field: &str) -> Result<Bytes, EntryError> {
    match encoding {
        Some(e) if e.eq_ignore_ascii_case("base64") => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Bytes::from)
            .map_err(|e| (field.to_owned(), format!("bad base64: {e}"))),
        _ => Ok(text_bytes(text, headers)),
    }
}

/// A UUID made of 16 bytes of FNV-1a over `parts` (not random: the same entry gets the
/// same id each time it is read).
fn derived_id(parts: &[&[u8]]) -> Uuid {
    let mut bytes = [0u8; 16];
    for (half, seed) in [(0usize, 0xcbf2_9ce4_8422_2325u64), (8, 0x6c62_272e_07bb_0142)] {
        let mut hash = seed;
        for part in parts {
            for &b in part.iter().chain(&[0xff]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        bytes[half..half + 8].copy_from_slice(&hash.to_le_bytes());
    }
    Uuid::from_random_bytes(bytes)
}

fn entry_to_flow(index: usize, entry: &Value) -> Result<Flow, EntryError> {
    let req = entry.get("request").filter(|r| r.is_object()).ok_or(("request".to_owned(), "missing".to_owned()))?;
    let started_text = text(entry, "startedDateTime", "startedDateTime")?;
    let started = datetime::parse(started_text)
        .ok_or_else(|| ("startedDateTime".to_owned(), format!("{started_text:?} is not an ISO 8601 date")))?;
    let method = text(req, "method", "request.method")?;
    let raw_url = text(req, "url", "request.url")?;
    // WebSocket entries (Chrome) have ws:// and wss:// URLs.
    let url = match raw_url.split_once("://") {
        Some(("ws", rest)) => format!("http://{rest}"),
        Some(("wss", rest)) => format!("https://{rest}"),
        _ => raw_url.to_owned(),
    };
    let mut request = Request::new(method, &url).map_err(|e| ("request.url".to_owned(), e.to_string()))?;
    request.version = read_version(req);
    request.headers = read_headers(req, "request.headers")?;
    request.body = match req.get("postData").filter(|p| p.is_object()) {
        Some(post) => {
            let text = opt_text(post, "text").unwrap_or_default();
            let encoding = opt_text(post, "_encoding").or_else(|| opt_text(post, "encoding"));
            Some(decode_text(text, encoding, &request.headers, "request.postData.text")?)
        }
        None if number(req, "bodySize") == Some(0.0) => Some(Bytes::new()),
        None => None,
    };
    let timings = entry.get("timings").cloned().unwrap_or(Value::Null);
    request.timestamp_start = Some(started);
    request.timestamp_end = plus_millis(Some(started), number(&timings, "send"));

    let id_from = |key: &str| opt_text(entry, key).and_then(|id| id.parse::<Uuid>().ok());
    let seed = index.to_le_bytes();
    let id = id_from("_id").unwrap_or_else(|| derived_id(&[&seed, started_text.as_bytes(), raw_url.as_bytes()]));
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let client_id = derived_id(&[b"client", id.as_bytes()]);
    let mut client = Client::new(client_id, unknown, unknown, started);
    client.timestamp_end = plus_millis(Some(started), number(entry, "time"));

    let resp = entry.get("response").filter(|r| r.is_object());
    let status = resp.and_then(|r| number(r, "status")).unwrap_or(0.0);
    let mut http = HttpFlow::new(request);
    if let Some(resp) = resp.filter(|_| status >= 100.0) {
        let status = status as u16;
        let reason = opt_text(resp, "statusText").unwrap_or_default();
        let mut response = Response::new(status, reason).map_err(|e| ("response.status".to_owned(), e.to_string()))?;
        response.version = read_version(resp);
        response.headers = read_headers(resp, "response.headers")?;
        let content = resp.get("content").cloned().unwrap_or(Value::Null);
        response.body = match opt_text(&content, "text") {
            Some(text) => {
                Some(decode_text(text, opt_text(&content, "encoding"), &response.headers, "response.content.text")?)
            }
            None if number(&content, "size") == Some(0.0) || number(resp, "bodySize") == Some(0.0) => {
                Some(Bytes::new())
            }
            None => None,
        };
        response.timestamp_start = plus_millis(http.request.timestamp_end, number(&timings, "wait"));
        response.timestamp_end = plus_millis(response.timestamp_start, number(&timings, "receive"));
        http.response = Some(response);
    }
    if let Some(messages) = entry.get("_webSocketMessages").and_then(Value::as_array) {
        let mut ws = WebSocketData::default();
        for (i, m) in messages.iter().enumerate() {
            let field = format!("_webSocketMessages[{i}]");
            let kind = match number(m, "opcode").map(|o| o as u8) {
                Some(1) => MessageKind::Text,
                Some(2) => MessageKind::Binary,
                Some(8) => MessageKind::Close,
                Some(9) => MessageKind::Ping,
                Some(10) => MessageKind::Pong,
                _ => return fail(&field, "an unknown opcode"),
            };
            let data = opt_text(m, "data").unwrap_or_default();
            let data = if kind == MessageKind::Text {
                Bytes::copy_from_slice(data.as_bytes())
            } else {
                decode_text(data, Some("base64"), &Headers::new(), &field)?
            };
            let timestamp = number(m, "time").and_then(Timestamp::from_secs_f64).unwrap_or_default();
            let message = WebSocketMessage { from_client: opt_text(m, "type") == Some("send"), kind, data, timestamp };
            message.validate(usize::MAX).map_err(|e| (field, e.to_string()))?;
            ws.messages.push(message);
        }
        http.websocket = Some(ws);
    }

    let server = match opt_text(entry, "serverIPAddress")
        .filter(|ip| !ip.is_empty())
        .map(|ip| ip.trim_matches(['[', ']']).parse::<IpAddr>())
    {
        Some(Ok(ip)) => {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            let address =
                Address::new(&host, http.request.port).map_err(|e| ("serverIPAddress".to_owned(), e.to_string()))?;
            let server_id = id_from("connection").unwrap_or_else(|| derived_id(&[b"server", id.as_bytes()]));
            let mut server = Server::new(server_id, address);
            server.peer = Some(SocketAddr::new(ip, http.request.port));
            Some(server)
        }
        Some(Err(_)) => return fail("serverIPAddress", "not an IP address"),
        None => None,
    };
    let error =
        resp.and_then(|r| opt_text(r, "_error")).or_else(|| opt_text(entry, "_error")).filter(|e| !e.is_empty()).map(
            |message| FlowError { message: message.to_owned(), timestamp: client.timestamp_end.unwrap_or(started) },
        );
    let mut flow = Flow::new(id, client, started, Payload::Http(http));
    flow.server = server;
    flow.error = error;
    if let Some(comment) = opt_text(entry, "comment") {
        comment.clone_into(&mut flow.comment);
    }
    Ok(flow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_queries() {
        let h =
            Headers::from_pairs([("Cookie", "a=1; b=two"), ("Set-Cookie", "sid=x; Path=/; HttpOnly; SameSite=Lax")])
                .expect("valid");
        let names: Vec<_> = request_cookies(&h).into_iter().map(|c| (c.name, c.value)).collect();
        assert_eq!(names, [("a".to_owned(), "1".to_owned()), ("b".to_owned(), "two".to_owned())]);
        let c = &response_cookies(&h)[0];
        assert_eq!(
            (c.name.as_str(), c.path.as_deref(), c.http_only, c.secure),
            ("sid", Some("/"), Some(true), Some(false))
        );
        assert_eq!(c.same_site.as_deref(), Some("Lax"));
        let q: Vec<_> = query_string("/p?x=1&y=two%20words&z").into_iter().map(|nv| (nv.name, nv.value)).collect();
        assert_eq!(q, [("x".into(), "1".into()), ("y".into(), "two words".into()), ("z".into(), String::new())]);
    }

    #[test]
    fn entries_that_are_not_flows_say_which_and_why() {
        let har = br#"{"log": {"entries": [{"startedDateTime": "yesterday", "request": {"method": "GET", "url": "http://x/"}}]}}"#;
        let err = parse(har).expect("a log").next().expect("an entry").expect_err("a bad date");
        assert_eq!(err.to_string(), "HAR entry 0: startedDateTime: \"yesterday\" is not an ISO 8601 date");
        assert!(matches!(parse(b"{}"), Err(Error::Structure(_))));
        assert!(matches!(parse(b"{"), Err(Error::Json(_))));
    }
}
