//! Matching a tree against a [`Flow`], operator by operator as mitmproxy's
//! `flowfilter.py` (12.x) does. What several terms read (the pretty URL, a header block,
//! the metadata lines, a DNS message as text) is built once per match, when first needed.

use std::cell::OnceCell;
use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

use flowgate_flow::{
    DataMessage, DnsMessage, Flow, Headers, HttpFlow, MessageKind, Payload, Replay, Request, ResourceRecord, Scheme,
};

use crate::ast::{Flag, Node, Rex, RexOp, Term};

/// A flow being matched, with what is derived from it on demand.
pub(crate) struct Subject<'a> {
    flow: &'a Flow,
    url: OnceCell<String>,
    host: OnceCell<String>,
    request_head: OnceCell<Vec<u8>>,
    response_head: OnceCell<Vec<u8>>,
    metadata: OnceCell<String>,
    dns_query: OnceCell<Vec<u8>>,
    dns_response: OnceCell<Vec<u8>>,
    /// HTTP bodies with their content coding undone, when they have one that decodes.
    request_body: OnceCell<Option<Vec<u8>>>,
    response_body: OnceCell<Option<Vec<u8>>>,
}

impl<'a> Subject<'a> {
    pub(crate) fn new(flow: &'a Flow) -> Subject<'a> {
        Subject {
            flow,
            url: OnceCell::new(),
            host: OnceCell::new(),
            request_head: OnceCell::new(),
            response_head: OnceCell::new(),
            metadata: OnceCell::new(),
            dns_query: OnceCell::new(),
            dns_response: OnceCell::new(),
            request_body: OnceCell::new(),
            response_body: OnceCell::new(),
        }
    }

    fn http(&self) -> Option<&'a HttpFlow> {
        match &self.flow.payload {
            Payload::Http(http) => Some(http),
            _ => None,
        }
    }
}

impl Node {
    pub(crate) fn eval(&self, s: &Subject<'_>) -> bool {
        match self {
            Node::And(children) => children.iter().all(|c| c.eval(s)),
            Node::Or(children) => children.iter().any(|c| c.eval(s)),
            Node::Not(child) => !child.eval(s),
            Node::Term(Term::Flag(flag)) => flag.eval(s),
            Node::Term(Term::Code { code, .. }) => {
                s.http().and_then(|h| h.response.as_ref()).is_some_and(|r| Some(r.status) == *code)
            }
            Node::Term(Term::Rex(op, rex)) => op.eval(rex, s),
        }
    }
}

/// mitmproxy's `FAsset` types, searched (case-sensitively) in a response's Content-Type:
/// `image/.*` and the like match wherever the prefix appears.
const ASSET_TYPES: [&[u8]; 7] = [
    b"text/javascript",
    b"application/x-javascript",
    b"application/javascript",
    b"text/css",
    b"image/",
    b"font/",
    b"application/font",
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn content_types(headers: &Headers) -> impl Iterator<Item = &[u8]> {
    headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("content-type")).map(|(_, value)| value)
}

impl Flag {
    fn eval(self, s: &Subject<'_>) -> bool {
        let flow = s.flow;
        match self {
            Flag::Asset => s
                .http()
                .and_then(|h| h.response.as_ref())
                .is_some_and(|r| content_types(&r.headers).any(|v| ASSET_TYPES.iter().any(|t| contains(v, t)))),
            Flag::Error => flow.error.is_some(),
            Flag::Http => s.http().is_some(),
            Flag::Marked => !flow.marked.is_empty(),
            Flag::Replay => flow.is_replay.is_some(),
            Flag::ReplayRequest => flow.is_replay == Some(Replay::Request),
            Flag::ReplayResponse => flow.is_replay == Some(Replay::Response),
            Flag::NoResponse => match &flow.payload {
                Payload::Http(h) => h.response.is_none(),
                Payload::Dns(d) => d.response.is_none(),
                _ => false,
            },
            Flag::HasResponse => match &flow.payload {
                Payload::Http(h) => h.response.is_some(),
                Payload::Dns(d) => d.response.is_some(),
                _ => false,
            },
            Flag::Tcp => matches!(flow.payload, Payload::Tcp(_)),
            Flag::Udp => matches!(flow.payload, Payload::Udp(_)),
            Flag::Dns => matches!(flow.payload, Payload::Dns(_)),
            Flag::WebSocket => s.http().is_some_and(|h| h.websocket.is_some()),
            Flag::All => true,
        }
    }
}

/// Which side's messages a body operator reads.
#[derive(Clone, Copy)]
struct Sides {
    client: bool,
    server: bool,
}

impl RexOp {
    fn eval(self, rex: &Rex, s: &Subject<'_>) -> bool {
        let flow = s.flow;
        match self {
            RexOp::Body => body(rex, s, Sides { client: true, server: true }),
            RexOp::BodyRequest => body(rex, s, Sides { client: true, server: false }),
            RexOp::BodyResponse => body(rex, s, Sides { client: false, server: true }),
            RexOp::ContentType => s.http().is_some_and(|h| {
                content_types(&h.request.headers).any(|v| rex.is_match_bytes(v))
                    || h.response.as_ref().is_some_and(|r| content_types(&r.headers).any(|v| rex.is_match_bytes(v)))
            }),
            RexOp::ContentTypeRequest => {
                s.http().is_some_and(|h| content_types(&h.request.headers).any(|v| rex.is_match_bytes(v)))
            }
            RexOp::ContentTypeResponse => s
                .http()
                .and_then(|h| h.response.as_ref())
                .is_some_and(|r| content_types(&r.headers).any(|v| rex.is_match_bytes(v))),
            RexOp::Domain => s.http().is_some_and(|h| {
                rex.is_match_text(unbracket(&h.request.host))
                    || rex.is_match_text(s.host.get_or_init(|| pretty_host(&h.request)))
            }),
            RexOp::Dst => flow.server.as_ref().is_some_and(|server| {
                let address = &server.address;
                rex.is_match_text(&format!("{}:{}", unbracket(address.host()), address.port()))
            }),
            RexOp::Header => s.http().is_some_and(|h| {
                rex.is_match_bytes(s.request_head.get_or_init(|| head(&h.request.headers)))
                    || h.response
                        .as_ref()
                        .is_some_and(|r| rex.is_match_bytes(s.response_head.get_or_init(|| head(&r.headers))))
            }),
            RexOp::HeaderRequest => {
                s.http().is_some_and(|h| rex.is_match_bytes(s.request_head.get_or_init(|| head(&h.request.headers))))
            }
            RexOp::HeaderResponse => s
                .http()
                .and_then(|h| h.response.as_ref())
                .is_some_and(|r| rex.is_match_bytes(s.response_head.get_or_init(|| head(&r.headers)))),
            RexOp::Method => s.http().is_some_and(|h| rex.is_match_bytes(h.request.method.as_bytes())),
            RexOp::Src => {
                let peer = flow.client.peer;
                rex.is_match_text(&format!("{}:{}", peer.ip(), peer.port()))
            }
            RexOp::Url => match &flow.payload {
                Payload::Http(h) => rex.is_match_text(s.url.get_or_init(|| pretty_url(&h.request))),
                Payload::Dns(d) => d.query.questions.first().is_some_and(|q| rex.is_match_text(&q.name)),
                _ => false,
            },
            RexOp::Meta => rex.is_match_text(s.metadata.get_or_init(|| {
                let lines: Vec<String> = flow.metadata.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                lines.join("\n")
            })),
            RexOp::Marker => rex.is_match_text(&flow.marked),
            RexOp::Comment => rex.is_match_text(&flow.comment),
        }
    }
}

/// `~b`, `~bq`, `~bs`: HTTP bodies (when present) and WebSocket data messages, TCP and UDP
/// messages, DNS messages as text.
fn body(rex: &Rex, s: &Subject<'_>, sides: Sides) -> bool {
    let side = |from_client: bool| if from_client { sides.client } else { sides.server };
    let data =
        |messages: &[DataMessage]| messages.iter().any(|m| side(m.from_client) && rex.is_match_bytes(&m.content));
    match &s.flow.payload {
        Payload::Http(h) => {
            let request = sides.client
                && h.request
                    .body
                    .as_ref()
                    .is_some_and(|b| rex.is_match_bytes(content(&s.request_body, &h.request.headers, b)));
            let response = || {
                sides.server
                    && h.response.as_ref().is_some_and(|r| {
                        r.body.as_ref().is_some_and(|b| rex.is_match_bytes(content(&s.response_body, &r.headers, b)))
                    })
            };
            // mitmproxy records only data messages (text and binary) on a WebSocket.
            let websocket = || {
                h.websocket.as_ref().is_some_and(|ws| {
                    ws.messages.iter().any(|m| {
                        matches!(m.kind, MessageKind::Text | MessageKind::Binary)
                            && side(m.from_client)
                            && rex.is_match_bytes(&m.data)
                    })
                })
            };
            request || response() || websocket()
        }
        Payload::Tcp(messages) | Payload::Udp(messages) => data(messages),
        Payload::Dns(d) => {
            (sides.client && rex.is_match_bytes(s.dns_query.get_or_init(|| dns_text(&d.query))))
                || (sides.server
                    && d.response
                        .as_ref()
                        .is_some_and(|r| rex.is_match_bytes(s.dns_response.get_or_init(|| dns_text(r)))))
        }
    }
}

/// An HTTP body as mitmproxy's `get_content(strict=False)`: decoded when its
/// `content-encoding` is one flowgate knows and it decodes within the caps, else as it is.
fn content<'b>(cache: &'b OnceCell<Option<Vec<u8>>>, headers: &Headers, raw: &'b [u8]) -> &'b [u8] {
    let decoded = cache.get_or_init(|| {
        let codings: Vec<&[u8]> = headers.get_all("content-encoding").collect();
        if codings.is_empty() {
            return None;
        }
        let coding = codings.iter().map(|c| String::from_utf8_lossy(c)).collect::<Vec<_>>().join(", ");
        flowgate_content::decode(&coding, raw, &flowgate_content::Limits::default()).ok()
    });
    decoded.as_deref().unwrap_or(raw)
}

/// A header block as mitmproxy's `bytes(headers)`: `name: value\r\n` per field, as received.
fn head(headers: &Headers) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.byte_size() + 4 * headers.len());
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A host as mitmproxy keeps it: an IPv6 literal without its brackets.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// mitmproxy's `host_header` for a request: its Host fields, joined by `, ` if several
/// (flowgate presents HTTP/2's `:authority` as `Host`).
fn host_header(request: &Request) -> Option<String> {
    let values: Vec<String> =
        request.headers.get_all("host").map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    if values.is_empty() { None } else { Some(values.join(", ")) }
}

/// mitmproxy's `Request.pretty_host`: the Host header's host, else the request's host.
fn pretty_host(request: &Request) -> String {
    match host_header(request) {
        Some(authority) if !authority.is_empty() => parse_authority(&authority).0,
        _ => unbracket(&request.host).to_owned(),
    }
}

/// mitmproxy's `Request.pretty_url`: the URL with the Host header's host and port.
fn pretty_url(request: &Request) -> String {
    if request.method.eq_ignore_ascii_case("CONNECT") {
        return format!("{}:{}", request.host, request.port);
    }
    match host_header(request) {
        Some(authority) if !authority.is_empty() => {
            let (host, port) = parse_authority(&authority);
            let port = port.filter(|p| *p != 0).unwrap_or(request.scheme.default_port());
            unparse(request.scheme, &host, port, &request.path)
        }
        _ => unparse(request.scheme, unbracket(&request.host), request.port, &request.path),
    }
}

/// mitmproxy's `url.unparse`: no port when it is the scheme's default, no path for `*`.
fn unparse(scheme: Scheme, host: &str, port: u16, path: &str) -> String {
    let path = if path == "*" { "" } else { path };
    if port == scheme.default_port() {
        format!("{}://{host}{path}", scheme.as_str())
    } else {
        format!("{}://{host}:{port}{path}", scheme.as_str())
    }
}

/// mitmproxy's `url.parse_authority(authority, check=False)`: host (brackets removed) and
/// port of `host[:port]`; the whole text and no port if it is not a valid authority.
fn parse_authority(authority: &str) -> (String, Option<u16>) {
    let invalid = || (authority.to_owned(), None);
    // `^(?P<host>[^:]+|\[.+\])(?::(?P<port>\d+))?$`
    let port_ok = |rest: &str| rest.is_empty() || rest.strip_prefix(':').is_some_and(is_digits);
    let (host, rest) = match authority.find(':') {
        None if !authority.is_empty() => (authority, ""),
        Some(i) if i > 0 && port_ok(&authority[i..]) => (&authority[..i], &authority[i..]),
        _ => {
            let closing =
                |(i, _): &(usize, &str)| *i >= 2 && port_ok(&authority[i + 1..]) && !authority[1..*i].contains('\n');
            let bracketed =
                if authority.starts_with('[') { authority.match_indices(']').rev().find(closing) } else { None };
            match bracketed {
                Some((i, _)) => (&authority[..=i], &authority[i + 1..]),
                None => return invalid(),
            }
        }
    };
    let host = unbracket(host);
    if !is_valid_host(host) {
        return invalid();
    }
    match rest.strip_prefix(':') {
        None => (host.to_owned(), None),
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) => (host.to_owned(), Some(port)),
            Err(_) => invalid(),
        },
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// mitmproxy's `check.is_valid_host`: DNS labels of letters, digits, `-` and `_` (non-ASCII
/// ones taken as IDNA-encodable), or an IP address.
fn is_valid_host(host: &str) -> bool {
    if host.len() > 255 {
        return false;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
    };
    name.split('.').all(label_ok) || host.parse::<std::net::IpAddr>().is_ok()
}

/// mitmproxy 12's `str(DNSMessage)`: question names, then each record's data as text,
/// joined by CR LF.
fn dns_text(message: &DnsMessage) -> Vec<u8> {
    let mut parts: Vec<String> = message.questions.iter().map(|q| q.name.clone()).collect();
    for rr in message.answers.iter().chain(&message.authorities).chain(&message.additionals) {
        parts.push(record_text(rr));
    }
    parts.join("\r\n").into_bytes()
}

/// mitmproxy's `ResourceRecord._data_json` for the types it decodes, else hex.
fn record_text(rr: &ResourceRecord) -> String {
    let data = &rr.data;
    let decoded = match rr.record_type {
        1 => <[u8; 4]>::try_from(data.as_slice()).ok().map(|a| Ipv4Addr::from(a).to_string()),
        28 => <[u8; 16]>::try_from(data.as_slice()).ok().map(|a| Ipv6Addr::from(a).to_string()),
        2 | 5 | 12 => domain_name(data),
        16 => std::str::from_utf8(data).ok().map(str::to_owned),
        _ => return hex(data),
    };
    decoded.unwrap_or_else(|| {
        let name = match rr.record_type {
            1 => "A",
            28 => "AAAA",
            2 => "NS",
            5 => "CNAME",
            12 => "PTR",
            _ => "TXT",
        };
        format!("{} (invalid {name} data)", hex(data))
    })
}

fn hex(data: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * data.len());
    out.push_str("0x");
    for b in data {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// An uncompressed domain name in RDATA (mitmproxy's `domain_names.unpack`), dotted.
fn domain_name(data: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut at = 0;
    loop {
        let size = usize::from(*data.get(at)?);
        at += 1;
        if size == 0 {
            break;
        }
        if size >= 64 {
            return None; // a pointer (0b11......) or a bad length
        }
        let label = data.get(at..at + size)?;
        if !label.is_ascii() {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += size;
    }
    (at == data.len()).then(|| labels.join("."))
}
