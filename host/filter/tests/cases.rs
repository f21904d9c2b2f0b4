//! The case table of `cases.json`: fixture flows built as [`Flow`]s, every case checked
//! against this crate, and every case checked against mitmproxy 11.0.2 itself (through
//! `mitmproxy_check.py` run with mitmproxy's Python), so that the table is mitmproxy's
//! behaviour and not our reading of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use flowgate_filter::Filter;
use flowgate_flow::{
    Address, Client, DataMessage, DnsFlow, DnsMessage, Flow, FlowError, Headers, HttpFlow, MessageKind, Payload,
    Question, Replay, Request, ResourceRecord, Response, Scheme, Server, Timestamp, Uuid, WebSocketData,
    WebSocketMessage,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Fixture {
    flows: BTreeMap<String, FlowSpec>,
    cases: Vec<Case>,
    errors: Vec<ErrorCase>,
}

#[derive(Deserialize)]
struct Case {
    filter: String,
    flow: String,
    expected: bool,
    /// mitmproxy 12 differs from 11.0.2 here and we follow 12: 11.0.2 answers `!expected`.
    #[serde(default)]
    mitmproxy12: bool,
    /// `"rejects"`: mitmproxy's grammar refuses the filter, which we accept.
    #[serde(default)]
    mitmproxy: Option<String>,
}

#[derive(Deserialize)]
struct ErrorCase {
    filter: String,
    error: String,
    /// Whether mitmproxy 11.0.2 parses it: `"accepts"` or `"rejects"`.
    mitmproxy: String,
}

#[derive(Deserialize)]
struct FlowSpec {
    kind: String,
    request: Option<RequestSpec>,
    response: Option<Value>,
    websocket: Option<Vec<MessageSpec>>,
    messages: Option<Vec<MessageSpec>>,
    query: Option<DnsSpec>,
    client: Option<String>,
    server: Option<String>,
    error: Option<String>,
    #[serde(default)]
    marked: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    replay: Option<String>,
}

#[derive(Deserialize)]
struct RequestSpec {
    method: String,
    scheme: String,
    host: String,
    port: u16,
    path: String,
    headers: Vec<(String, Value)>,
    body: Option<Value>,
}

#[derive(Deserialize)]
struct ResponseSpec {
    status: u16,
    reason: String,
    headers: Vec<(String, Value)>,
    body: Option<Value>,
}

#[derive(Deserialize)]
struct MessageSpec {
    from_client: bool,
    kind: Option<String>,
    data: Value,
}

#[derive(Deserialize)]
struct DnsSpec {
    id: u16,
    #[serde(default)]
    questions: Vec<QuestionSpec>,
    #[serde(default)]
    answers: Vec<RecordSpec>,
}

#[derive(Deserialize)]
struct QuestionSpec {
    name: String,
    #[serde(rename = "type")]
    record_type: u16,
}

#[derive(Deserialize)]
struct RecordSpec {
    name: String,
    #[serde(rename = "type")]
    record_type: u16,
    data_hex: String,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases.json");
    let text = std::fs::read_to_string(&path).expect("tests/cases.json is readable");
    serde_json::from_str(&text).expect("tests/cases.json matches the fixture format")
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("fixture hex")).collect()
}

/// A fixture body: a string (UTF-8) or `{"hex": "..."}`.
fn data(value: &Value) -> Bytes {
    match value {
        Value::String(text) => Bytes::copy_from_slice(text.as_bytes()),
        Value::Object(map) => Bytes::from(hex(map["hex"].as_str().expect("a hex string"))),
        other => panic!("a body is a string or {{\"hex\": ...}}, not {other}"),
    }
}

fn headers(pairs: &[(String, Value)]) -> Headers {
    Headers::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), data(v)))).expect("fixture headers are valid")
}

fn request(spec: &RequestSpec) -> Request {
    let scheme = if spec.scheme == "https" { Scheme::Https } else { Scheme::Http };
    Request {
        method: spec.method.clone(),
        scheme,
        host: spec.host.clone(),
        port: spec.port,
        path: spec.path.clone(),
        headers: headers(&spec.headers),
        body: spec.body.as_ref().map(data),
        ..Request::default()
    }
}

fn response(value: &Value) -> Response {
    let spec: ResponseSpec = serde_json::from_value(value.clone()).expect("an HTTP response");
    let mut response = Response::new(spec.status, &spec.reason).expect("a valid status and reason");
    response.headers = headers(&spec.headers);
    response.body = spec.body.as_ref().map(data);
    response
}

fn dns(spec: &DnsSpec) -> DnsMessage {
    let questions = spec
        .questions
        .iter()
        .map(|q| Question { name: q.name.clone(), record_type: q.record_type, class: 1 })
        .collect();
    let answers = spec
        .answers
        .iter()
        .map(|rr| ResourceRecord {
            name: rr.name.clone(),
            record_type: rr.record_type,
            class: 1,
            ttl: 60,
            data: hex(&rr.data_hex),
        })
        .collect();
    DnsMessage { id: spec.id, questions, answers, ..DnsMessage::default() }
}

fn data_messages(spec: &FlowSpec) -> Vec<DataMessage> {
    let messages = spec.messages.as_deref().unwrap_or_default();
    messages
        .iter()
        .map(|m| DataMessage { from_client: m.from_client, content: data(&m.data), timestamp: Timestamp::EPOCH })
        .collect()
}

fn build(spec: &FlowSpec) -> Flow {
    let payload = match spec.kind.as_str() {
        "http" => {
            let mut http = HttpFlow::new(request(spec.request.as_ref().expect("an HTTP flow has a request")));
            http.response = spec.response.as_ref().map(response);
            http.websocket = spec.websocket.as_ref().map(|messages| {
                let messages = messages
                    .iter()
                    .map(|m| WebSocketMessage {
                        from_client: m.from_client,
                        kind: match m.kind.as_deref() {
                            Some("text") => MessageKind::Text,
                            Some("binary") => MessageKind::Binary,
                            Some("ping") => MessageKind::Ping,
                            Some("pong") => MessageKind::Pong,
                            other => panic!("unknown WebSocket message kind {other:?}"),
                        },
                        data: data(&m.data),
                        timestamp: Timestamp::EPOCH,
                    })
                    .collect();
                WebSocketData { messages, ..WebSocketData::default() }
            });
            Payload::Http(http)
        }
        "tcp" => Payload::Tcp(data_messages(spec)),
        "udp" => Payload::Udp(data_messages(spec)),
        "dns" => {
            let query = dns(spec.query.as_ref().expect("a DNS flow has a query"));
            let response = spec
                .response
                .as_ref()
                .map(|v| dns(&serde_json::from_value::<DnsSpec>(v.clone()).expect("a DNS response")));
            Payload::Dns(DnsFlow { query, response, ..DnsFlow::default() })
        }
        other => panic!("unknown flow kind {other:?}"),
    };
    let peer = spec.client.as_deref().unwrap_or("10.0.0.1:50000").parse().expect("a client address");
    let local = "10.0.0.2:8080".parse().expect("an address");
    let client = Client::new(Uuid::from_random_bytes([1; 16]), peer, local, Timestamp::EPOCH);
    let mut flow = Flow::new(Uuid::from_random_bytes([2; 16]), client, Timestamp::EPOCH, payload);
    flow.server = spec.server.as_deref().map(|address| {
        Server::new(Uuid::from_random_bytes([3; 16]), address.parse::<Address>().expect("a server address"))
    });
    flow.error = spec.error.as_ref().map(|message| FlowError { message: message.clone(), timestamp: Timestamp::EPOCH });
    flow.marked = spec.marked.clone();
    flow.comment = spec.comment.clone();
    flow.metadata = spec.metadata.clone();
    flow.is_replay = spec.replay.as_deref().map(|side| match side {
        "request" => Replay::Request,
        "response" => Replay::Response,
        other => panic!("unknown replay side {other:?}"),
    });
    flow
}

fn flows(fixture: &Fixture) -> BTreeMap<&str, Flow> {
    fixture.flows.iter().map(|(name, spec)| (name.as_str(), build(spec))).collect()
}

/// Whether `filter` matches `flow` as `expected`; the failure, described, if not.
fn check(filter: &str, name: &str, flow: &Flow, expected: bool) -> Result<(), String> {
    let parsed = Filter::parse(filter).map_err(|e| format!("{filter:?} on {name}: refused: {e}"))?;
    let got = parsed.matches(flow);
    if got != expected {
        return Err(format!("{filter:?} on {name}: matched {got}, expected {expected}"));
    }
    // The canonical text means the same, and is a fixed point.
    let text = parsed.to_string();
    let again = Filter::parse(&text).map_err(|e| format!("{filter:?}: canonical {text:?} refused: {e}"))?;
    if again != parsed || again.to_string() != text {
        return Err(format!("{filter:?}: canonical {text:?} reads back as {again:?}"));
    }
    Ok(())
}

fn report(failures: Vec<String>, total: usize) {
    assert!(failures.is_empty(), "{} of {total} failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_case_matches_as_expected() {
    let fixture = fixture();
    let flows = flows(&fixture);
    assert!(fixture.cases.len() > 250, "the table is meant to be broad");
    let failures: Vec<String> = fixture
        .cases
        .iter()
        .filter_map(|case| {
            let flow = flows.get(case.flow.as_str()).unwrap_or_else(|| panic!("no fixture flow {}", case.flow));
            check(&case.filter, &case.flow, flow, case.expected).err()
        })
        .collect();
    report(failures, fixture.cases.len());
}

#[test]
fn every_refused_filter_says_where_and_why() {
    let fixture = fixture();
    let failures: Vec<String> = fixture
        .errors
        .iter()
        .filter_map(|case| match Filter::parse(&case.filter) {
            Ok(f) => Some(format!("{:?} parsed as {f}, expected {:?}", case.filter, case.error)),
            Err(e) if e.to_string() != case.error => {
                Some(format!("{:?}: got {:?}, expected {:?}", case.filter, e.to_string(), case.error))
            }
            Err(_) => None,
        })
        .collect();
    report(failures, fixture.errors.len());
}

/// mitmproxy's Python: beside `FLOWGATE_BENCH_MITMDUMP` (tests/run.sh exports it), else
/// the workspace's `target/bench-venv`.
fn mitmproxy_python() -> PathBuf {
    if let Some(mitmdump) = std::env::var_os("FLOWGATE_BENCH_MITMDUMP") {
        let python = Path::new(&mitmdump).with_file_name("python");
        if python.exists() {
            return python;
        }
    }
    let fallback = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-venv/bin/python");
    if fallback.exists() {
        return fallback;
    }
    panic!(
        "mitmproxy 11.0.2's Python was not found (FLOWGATE_BENCH_MITMDUMP unset or without a python beside it, \
         and no target/bench-venv): run tests/run.sh, which installs it"
    );
}

#[derive(Deserialize)]
struct Verdicts {
    mitmproxy: String,
    cases: Vec<Verdict>,
    errors: Vec<Parses>,
}

#[derive(Deserialize)]
struct Verdict {
    result: Option<bool>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Parses {
    parses: bool,
}

#[test]
fn mitmproxy_11_agrees_case_by_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let python = mitmproxy_python();
    let output = Command::new(&python)
        .arg(dir.join("mitmproxy_check.py"))
        .arg(dir.join("cases.json"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(output.status.success(), "mitmproxy_check.py failed: {}", String::from_utf8_lossy(&output.stderr));
    let verdicts: Verdicts = serde_json::from_slice(&output.stdout).expect("mitmproxy_check.py prints its JSON");
    assert_eq!(verdicts.mitmproxy, "11.0.2", "the cross-check is against mitmproxy 11.0.2");
    let fixture = fixture();
    assert_eq!((verdicts.cases.len(), verdicts.errors.len()), (fixture.cases.len(), fixture.errors.len()));

    let mut failures = Vec::new();
    for (case, verdict) in fixture.cases.iter().zip(&verdicts.cases) {
        let want = match (case.mitmproxy.as_deref(), case.mitmproxy12) {
            (Some("rejects"), _) => None,
            (Some(other), _) => panic!("{:?}: unknown mitmproxy marker {other:?}", case.filter),
            (None, true) => Some(!case.expected),
            (None, false) => Some(case.expected),
        };
        if verdict.result != want {
            failures.push(format!(
                "{:?} on {}: mitmproxy 11.0.2 says {:?} ({}), the table wants {want:?}{}",
                case.filter,
                case.flow,
                verdict.result,
                verdict.error.as_deref().unwrap_or("parsed"),
                if case.mitmproxy12 { " (a case where 12 differs)" } else { "" },
            ));
        }
    }
    for (case, verdict) in fixture.errors.iter().zip(&verdicts.errors) {
        let accepts = match case.mitmproxy.as_str() {
            "accepts" => true,
            "rejects" => false,
            other => panic!("{:?}: unknown mitmproxy marker {other:?}", case.filter),
        };
        if verdict.parses != accepts {
            failures.push(format!(
                "{:?}: mitmproxy 11.0.2 parses it: {}, the table says {accepts}",
                case.filter, verdict.parses
            ));
        }
    }
    report(failures, fixture.cases.len() + fixture.errors.len());
}
