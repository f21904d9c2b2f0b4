//! HAR 1.2: flowgate's HAR passes har-validator and loads in mitmproxy, reads back into
//! the flows it was written from, and mitmdump's own `hardump` (recorded with
//! tests/record_mitmproxy.sh) reads into the same fields as that session's flow file.
//!
//! Needs (tests/run.sh installs them): har-validator under target/har-validator
//! (`npm install --prefix target/har-validator har-validator@5.1.5`) and mitmproxy in
//! target/bench-venv (tests/bench/tools.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use flowgate_flow::{Flow, Payload, Timestamp};
use flowgate_store::{Format, har};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn sample() -> Vec<Flow> {
    vec![http(1), failed(2), websocket(3), tcp(4), dns(5)]
}

fn write_sample(dir: &Path) -> PathBuf {
    let path = dir.join("flowgate.har");
    let file = std::fs::File::create(&path).expect("creates");
    let stats = har::write(file, &sample()).expect("writes");
    assert_eq!((stats.entries, stats.skipped), (3, 2));
    path
}

#[test]
fn flowgate_har_passes_har_validator() {
    let module = std::env::var_os("FLOWGATE_HAR_VALIDATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/har-validator/node_modules/har-validator"));
    assert!(
        module.join("package.json").exists(),
        "har-validator is missing at {}: install it with `npm install --prefix target/har-validator har-validator@5.1.5` \
         (or set FLOWGATE_HAR_VALIDATOR to the module's directory)",
        module.display()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write_sample(dir.path());
    let script = "const v = require(process.argv[1]); const har = JSON.parse(require('fs').readFileSync(process.argv[2]));\
                  v.har(har).then(() => console.log('valid'), e => { console.error(JSON.stringify(e.errors || e.message)); process.exit(1); });";
    let out = Command::new("node").arg("-e").arg(script).arg(&module).arg(&path).output().expect("node runs");
    assert!(out.status.success(), "har-validator refused flowgate's HAR: {}", String::from_utf8_lossy(&out.stderr));
}

fn mitmproxy_python() -> PathBuf {
    let python = match std::env::var_os("FLOWGATE_BENCH_MITMDUMP") {
        Some(mitmdump) => PathBuf::from(mitmdump).with_file_name("python"),
        None => root().join("target/bench-venv/bin/python"),
    };
    assert!(
        python.exists(),
        "mitmproxy's Python is missing at {} (tests/bench/tools.sh installs it)",
        python.display()
    );
    python
}

#[test]
fn mitmproxy_loads_every_entry_of_flowgate_har() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write_sample(dir.path());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mitmproxy_dump.py");
    let out = Command::new(mitmproxy_python()).arg(script).arg(&path).output().expect("python runs");
    assert!(out.status.success(), "mitmproxy cannot read flowgate's HAR: {}", String::from_utf8_lossy(&out.stderr));
    let flows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let urls: Vec<&str> = flows.iter().map(|f| f["request"]["url"].as_str().expect("a url")).collect();
    assert_eq!(
        urls,
        [
            "https://example.com/upload?x=1&y=two%20words",
            "http://127.0.0.1:9/refused",
            "https://example.com/upload?x=1&y=two%20words"
        ]
    );
    assert_eq!(flows[0]["request"]["method"], "POST");
    assert_eq!(flows[0]["response"]["status_code"], 201);
    assert_eq!(flows[0]["response"]["content"].as_str(), Some(hex("héllo text body".as_bytes()).as_str()));
    assert_eq!(time(&flows[0]["request"]["timestamp_start"]), Some(at(4_000)));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn flowgate_har_reads_back() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = write_sample(dir.path());
    let flows = flowgate_store::open(&path).expect("opens");
    assert_eq!(flows.format(), Some(Format::Har));
    let flows: Vec<Flow> = flows.map(|f| f.expect("converts")).collect();
    let written: Vec<Flow> = sample().into_iter().filter(|f| matches!(f.payload, Payload::Http(_))).collect();
    assert_eq!(flows.len(), written.len());
    for (got, want) in flows.iter().zip(&written) {
        assert_eq!(got.id, want.id);
        assert_eq!(got.error.as_ref().map(|e| &e.message), want.error.as_ref().map(|e| &e.message));
        assert_eq!(got.server.as_ref().and_then(|s| s.peer), want.server.as_ref().and_then(|s| s.peer));
        assert_eq!(got.server.as_ref().map(|s| s.id), want.server.as_ref().map(|s| s.id));
        let (Payload::Http(got), Payload::Http(want)) = (&got.payload, &want.payload) else { panic!("HTTP flows") };
        let (g, w) = (&got.request, &want.request);
        assert_eq!(
            (&g.method, g.url(), g.version, &g.headers, &g.body),
            (&w.method, w.url(), w.version, &w.headers, &w.body)
        );
        assert_eq!((g.timestamp_start, g.timestamp_end), (w.timestamp_start, w.timestamp_end));
        match (&got.response, &want.response) {
            (Some(g), Some(w)) => {
                assert_eq!(
                    (g.status, &g.reason, g.version, &g.headers, &g.body),
                    (w.status, &w.reason, w.version, &w.headers, &w.body)
                );
                assert_eq!((g.timestamp_start, g.timestamp_end), (w.timestamp_start, w.timestamp_end));
            }
            (None, None) => {}
            other => panic!("responses differ: {other:?}"),
        }
        let messages = |h: &flowgate_flow::HttpFlow| h.websocket.as_ref().map(|ws| ws.messages.clone());
        assert_eq!(messages(got), messages(want));
    }
}

fn unhex(v: &Value) -> Option<Vec<u8>> {
    let text = v.as_str()?;
    Some((0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect())
}

/// A time the dump script wrote as a float's repr string (parsed exactly here).
fn time(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok().and_then(Timestamp::from_secs_f64)
}

/// Within a microsecond: HAR carries times as float milliseconds after the start.
fn close(got: Option<Timestamp>, want: Option<Timestamp>, what: &str) {
    match (got, want) {
        (Some(g), Some(w)) => assert!(g.as_micros().abs_diff(w.as_micros()) <= 1, "{what}: {g:?} != {w:?}"),
        (g, w) => assert_eq!(g, w, "{what}"),
    }
}

#[test]
fn mitmdump_hardump_reads_into_the_same_fields_as_its_flow_file() {
    let flows: Vec<Flow> = har::read(std::fs::File::open(data("mitmproxy-11.har")).expect("the fixture"))
        .expect("a HAR log")
        .map(|f| f.expect("converts"))
        .collect();
    let expected: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data("mitmproxy-11.json")).expect("expected")).expect("JSON");
    let http: Vec<&Value> = expected.iter().filter(|f| f["type"] == "http").collect();
    assert_eq!(flows.len(), http.len());
    for (flow, want) in flows.iter().zip(http) {
        let url = want["request"]["url"].as_str().expect("a url");
        let Payload::Http(h) = &flow.payload else { panic!("HAR flows are HTTP") };
        let (r, w) = (&h.request, &want["request"]);
        assert_eq!(r.url(), url);
        assert_eq!(r.method, w["method"].as_str().expect("a method"), "{url}");
        assert_eq!(r.version.as_str(), w["http_version"].as_str().expect("a version"), "{url}");
        let headers: Vec<(String, Vec<u8>)> = r.headers.iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect();
        let want_headers: Vec<(String, Vec<u8>)> = w["headers"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| (p[0].as_str().expect("a name").to_owned(), unhex(&p[1]).expect("hex")))
            .collect();
        assert_eq!(headers, want_headers, "{url}: request headers");
        // mitmproxy writes a request body as text (`get_text`), so a binary one is not kept.
        let want_body = unhex(&w["content"]);
        if want_body.as_ref().is_none_or(|b| std::str::from_utf8(b).is_ok()) {
            assert_eq!(r.body.as_ref().map(|b| b.to_vec()), want_body, "{url}: request body");
        }
        close(r.timestamp_start, time(&w["timestamp_start"]), "request start");
        close(r.timestamp_end, time(&w["timestamp_end"]), "request end");
        match (&h.response, want["response"].is_null()) {
            (None, true) => {
                let msg = want["error"]["msg"].as_str().expect("a failed flow has an error");
                assert_eq!(flow.error.as_ref().map(|e| e.message.as_str()), Some(msg), "{url}");
            }
            (Some(resp), false) => {
                let w = &want["response"];
                assert_eq!(u64::from(resp.status), w["status_code"].as_u64().expect("a status"), "{url}");
                assert_eq!(resp.reason, w["reason"].as_str().expect("a reason"), "{url}");
                assert_eq!(resp.version.as_str(), w["http_version"].as_str().expect("a version"), "{url}");
                let headers: Vec<(String, Vec<u8>)> =
                    resp.headers.iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect();
                let want_headers: Vec<(String, Vec<u8>)> = w["headers"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|p| (p[0].as_str().expect("a name").to_owned(), unhex(&p[1]).expect("hex")))
                    .collect();
                assert_eq!(headers, want_headers, "{url}: response headers");
                assert_eq!(resp.body.as_ref().map(|b| b.to_vec()), unhex(&w["content"]), "{url}: response body");
                close(resp.timestamp_start, time(&w["timestamp_start"]), "response start");
                close(resp.timestamp_end, time(&w["timestamp_end"]), "response end");
            }
            other => panic!("{url}: responses differ: {other:?}"),
        }
        let peer = want["server_conn"]["peername"].as_array().map(|p| p[0].as_str().expect("an ip").to_owned());
        assert_eq!(flow.server.as_ref().and_then(|s| s.peer).map(|p| p.ip().to_string()), peer, "{url}: server ip");
    }
}
