//! mitmproxy's flow files: the fixtures recorded by tests/record_mitmproxy.sh with a real
//! mitmdump 11.0.2 read back with every field both models have equal to what mitmproxy's
//! own Python says (tests/data/mitmproxy-11.json, from tests/mitmproxy_dump.py).

use std::path::PathBuf;

use base64::Engine;
use flowgate_flow::{Flow, Headers, Payload, Replay, Timestamp, TlsInfo};
use flowgate_store::{Format, mitmproxy};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn expected() -> Vec<Value> {
    let text = std::fs::read_to_string(data("mitmproxy-11.json")).expect("the expected values");
    serde_json::from_str(&text).expect("JSON")
}

/// A time the dump script wrote as a float's repr string (parsed exactly here).
fn time(v: &Value) -> Option<Timestamp> {
    let secs: f64 = v.as_str()?.parse().expect("a float");
    Some(Timestamp::from_secs_f64(secs).expect("a time"))
}

fn hex(v: &Value) -> Option<Vec<u8>> {
    let text = v.as_str()?;
    Some((0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect())
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

fn check_headers(what: &str, got: &Headers, want: &Value) {
    let want: Vec<(String, Vec<u8>)> = want
        .as_array()
        .expect("a list")
        .iter()
        .map(|pair| (pair[0].as_str().expect("a name").to_owned(), hex(&pair[1]).expect("a value")))
        .collect();
    let got: Vec<(String, Vec<u8>)> = got.iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect();
    assert_eq!(got, want, "{what}");
}

fn addr(v: &Value) -> Option<String> {
    let parts = v.as_array()?;
    let host = parts[0].as_str().expect("a host");
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    Some(format!("{host}:{}", parts[1]))
}

fn check_tls(what: &str, got: &Option<TlsInfo>, conn: &Value) {
    assert_eq!(got.is_some(), conn["tls"].as_bool().expect("a boolean"), "{what}.tls");
    let Some(tls) = got else { return };
    assert_eq!(tls.sni.as_deref(), s(&conn["sni"]), "{what}.sni");
    assert_eq!(tls.alpn.as_deref(), s(&conn["alpn"]), "{what}.alpn");
    assert_eq!(tls.version.as_deref(), s(&conn["tls_version"]), "{what}.tls_version");
    assert_eq!(tls.cipher.as_deref(), s(&conn["cipher"]), "{what}.cipher");
    let want: Vec<Vec<u8>> = conn["certificates"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|pem| {
            let pem = String::from_utf8(hex(pem).expect("hex")).expect("PEM is text");
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            base64::engine::general_purpose::STANDARD.decode(body).expect("base64")
        })
        .collect();
    let got: Vec<Vec<u8>> = tls.certificate_chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(got, want, "{what}.certificate_list");
}

fn check_message_common(
    what: &str,
    headers: &Headers,
    body: &Option<bytes::Bytes>,
    trailers: &Headers,
    version: &str,
    (start, end): (Option<Timestamp>, Option<Timestamp>),
    want: &Value,
) {
    check_headers(&format!("{what}.headers"), headers, &want["headers"]);
    check_headers(&format!("{what}.trailers"), trailers, &want["trailers"]);
    assert_eq!(body.as_ref().map(|b| b.to_vec()), hex(&want["content"]), "{what}.content");
    assert_eq!(version, want["http_version"].as_str().expect("a version"), "{what}.http_version");
    assert_eq!(start, time(&want["timestamp_start"]), "{what}.timestamp_start");
    assert_eq!(end, time(&want["timestamp_end"]), "{what}.timestamp_end");
}

fn check(flow: &Flow, want: &Value) {
    let what = format!("flow {}", flow.id);
    assert_eq!(flow.id.to_string(), want["id"].as_str().expect("an id"));
    assert_eq!(flow.kind().to_string_for_test(), want["type"].as_str().expect("a type"), "{what}: type");
    assert_eq!(Some(flow.timestamp_created), time(&want["timestamp_created"]), "{what}: timestamp_created");
    assert_eq!(flow.marked, want["marked"].as_str().expect("text"), "{what}: marked");
    assert_eq!(flow.comment, want["comment"].as_str().expect("text"), "{what}: comment");
    let replay = flow.is_replay.map(|r| match r {
        Replay::Request => "request",
        Replay::Response => "response",
    });
    assert_eq!(replay, s(&want["is_replay"]), "{what}: is_replay");
    let metadata: std::collections::BTreeMap<String, String> =
        serde_json::from_value(want["metadata"].clone()).expect("string metadata");
    assert_eq!(flow.metadata, metadata, "{what}: metadata");
    match (&flow.error, want["error"].is_null()) {
        (None, true) => {}
        (Some(e), false) => {
            assert_eq!(e.message, want["error"]["msg"].as_str().expect("text"), "{what}: error.msg");
            assert_eq!(Some(e.timestamp), time(&want["error"]["timestamp"]), "{what}: error.timestamp");
        }
        (got, _) => panic!("{what}: error {got:?}, want {}", want["error"]),
    }

    let c = &want["client_conn"];
    assert_eq!(flow.client.id.to_string(), c["id"].as_str().expect("an id"), "{what}: client_conn.id");
    assert_eq!(Some(flow.client.peer.to_string()), addr(&c["peername"]), "{what}: client_conn.peername");
    assert_eq!(Some(flow.client.local.to_string()), addr(&c["sockname"]), "{what}: client_conn.sockname");
    check_tls(&format!("{what}: client_conn"), &flow.client.tls, c);
    assert_eq!(Some(flow.client.timestamp_start), time(&c["timestamp_start"]), "{what}: client_conn.timestamp_start");
    assert_eq!(
        flow.client.timestamp_tls_setup,
        time(&c["timestamp_tls_setup"]),
        "{what}: client_conn.timestamp_tls_setup"
    );
    assert_eq!(flow.client.timestamp_end, time(&c["timestamp_end"]), "{what}: client_conn.timestamp_end");

    let sc = &want["server_conn"];
    match &flow.server {
        None => assert!(sc["address"].is_null(), "{what}: a server_conn with an address was dropped"),
        Some(server) => {
            assert_eq!(Some(server.address.to_string()), addr(&sc["address"]), "{what}: server_conn.address");
            assert_eq!(server.id.to_string(), sc["id"].as_str().expect("an id"), "{what}: server_conn.id");
            assert_eq!(server.peer.map(|p| p.to_string()), addr(&sc["peername"]), "{what}: server_conn.peername");
            assert_eq!(server.local.map(|p| p.to_string()), addr(&sc["sockname"]), "{what}: server_conn.sockname");
            check_tls(&format!("{what}: server_conn"), &server.tls, sc);
            assert_eq!(server.timestamp_start, time(&sc["timestamp_start"]), "{what}: server_conn.timestamp_start");
            assert_eq!(
                server.timestamp_tcp_setup,
                time(&sc["timestamp_tcp_setup"]),
                "{what}: server_conn.timestamp_tcp_setup"
            );
            assert_eq!(
                server.timestamp_tls_setup,
                time(&sc["timestamp_tls_setup"]),
                "{what}: server_conn.timestamp_tls_setup"
            );
            assert_eq!(server.timestamp_end, time(&sc["timestamp_end"]), "{what}: server_conn.timestamp_end");
        }
    }

    match &flow.payload {
        Payload::Http(http) => {
            let r = &http.request;
            let w = &want["request"];
            assert_eq!(r.method, w["method"].as_str().expect("text"), "{what}: request.method");
            assert_eq!(r.scheme.as_str(), w["scheme"].as_str().expect("text"), "{what}: request.scheme");
            assert_eq!(r.host, w["host"].as_str().expect("text"), "{what}: request.host");
            assert_eq!(u64::from(r.port), w["port"].as_u64().expect("a port"), "{what}: request.port");
            assert_eq!(r.path, w["path"].as_str().expect("text"), "{what}: request.path");
            assert_eq!(r.url(), w["url"].as_str().expect("text"), "{what}: request.url");
            check_message_common(
                &format!("{what}: request"),
                &r.headers,
                &r.body,
                &r.trailers,
                r.version.as_str(),
                (r.timestamp_start, r.timestamp_end),
                w,
            );
            match (&http.response, want["response"].is_null()) {
                (None, true) => {}
                (Some(resp), false) => {
                    let w = &want["response"];
                    assert_eq!(
                        u64::from(resp.status),
                        w["status_code"].as_u64().expect("a status"),
                        "{what}: status_code"
                    );
                    assert_eq!(resp.reason, w["reason"].as_str().expect("text"), "{what}: reason");
                    check_message_common(
                        &format!("{what}: response"),
                        &resp.headers,
                        &resp.body,
                        &resp.trailers,
                        resp.version.as_str(),
                        (resp.timestamp_start, resp.timestamp_end),
                        w,
                    );
                }
                (got, _) => panic!("{what}: response {got:?}, want {}", want["response"]),
            }
            assert_eq!(http.websocket.is_some(), !want["websocket"].is_null(), "{what}: websocket");
            if let Some(ws) = &http.websocket {
                let w = &want["websocket"];
                let got: Vec<(bool, Vec<u8>, Option<Timestamp>)> =
                    ws.messages.iter().map(|m| (m.from_client, m.data.to_vec(), Some(m.timestamp))).collect();
                let expect: Vec<(bool, Vec<u8>, Option<Timestamp>)> = w["messages"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|m| (m[1].as_bool().expect("a boolean"), hex(&m[2]).expect("hex"), time(&m[3])))
                    .collect();
                assert_eq!(got, expect, "{what}: websocket.messages");
                assert_eq!(ws.timestamp_end, time(&w["timestamp_end"]), "{what}: websocket.timestamp_end");
                assert_eq!(
                    ws.close.as_ref().and_then(|c| c.code).map(u64::from),
                    w["close_code"].as_u64(),
                    "{what}: close_code"
                );
            }
        }
        Payload::Tcp(messages) | Payload::Udp(messages) => {
            let got: Vec<(bool, Vec<u8>, Option<Timestamp>)> =
                messages.iter().map(|m| (m.from_client, m.content.to_vec(), Some(m.timestamp))).collect();
            let expect: Vec<(bool, Vec<u8>, Option<Timestamp>)> = want["messages"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|m| (m[0].as_bool().expect("a boolean"), hex(&m[1]).expect("hex"), time(&m[2])))
                .collect();
            assert_eq!(got, expect, "{what}: messages");
        }
        Payload::Dns(dns) => {
            let check_dns = |got: &flowgate_flow::DnsMessage, w: &Value, side: &str| {
                let flag = |shift: u16, bits: u16| u64::from((got.flags >> shift) & ((1 << bits) - 1));
                let b = |key: &str| u64::from(w[key].as_bool().expect("a boolean"));
                let n = |key: &str| w[key].as_u64().expect("a number");
                assert_eq!(u64::from(got.id), n("id"), "{what}: {side}.id");
                assert_eq!(flag(15, 1), 1 - b("query"), "{what}: {side}.query");
                assert_eq!(flag(11, 4), n("op_code"), "{what}: {side}.op_code");
                assert_eq!(flag(10, 1), b("authoritative_answer"), "{what}: {side}.aa");
                assert_eq!(flag(9, 1), b("truncation"), "{what}: {side}.tc");
                assert_eq!(flag(8, 1), b("recursion_desired"), "{what}: {side}.rd");
                assert_eq!(flag(7, 1), b("recursion_available"), "{what}: {side}.ra");
                assert_eq!(flag(4, 3), n("reserved"), "{what}: {side}.reserved");
                assert_eq!(flag(0, 4), n("response_code"), "{what}: {side}.response_code");
                let questions: Vec<(String, u64, u64)> = got
                    .questions
                    .iter()
                    .map(|q| (q.name.clone(), u64::from(q.record_type), u64::from(q.class)))
                    .collect();
                let want_q: Vec<(String, u64, u64)> = w["questions"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|q| {
                        (
                            q["name"].as_str().expect("a name").to_owned(),
                            q["type"].as_u64().expect("n"),
                            q["class"].as_u64().expect("n"),
                        )
                    })
                    .collect();
                assert_eq!(questions, want_q, "{what}: {side}.questions");
                for (section, records) in
                    [("answers", &got.answers), ("authorities", &got.authorities), ("additionals", &got.additionals)]
                {
                    let got: Vec<(String, u64, u64, u64, Vec<u8>)> = records
                        .iter()
                        .map(|r| {
                            (
                                r.name.clone(),
                                u64::from(r.record_type),
                                u64::from(r.class),
                                u64::from(r.ttl),
                                r.data.clone(),
                            )
                        })
                        .collect();
                    let expect: Vec<(String, u64, u64, u64, Vec<u8>)> = w[section]
                        .as_array()
                        .expect("a list")
                        .iter()
                        .map(|r| {
                            let n = |k: &str| r[k].as_u64().expect("n");
                            (
                                r["name"].as_str().expect("a name").to_owned(),
                                n("type"),
                                n("class"),
                                n("ttl"),
                                hex(&r["data"]).expect("hex"),
                            )
                        })
                        .collect();
                    assert_eq!(got, expect, "{what}: {side}.{section}");
                }
            };
            check_dns(&dns.query, &want["request"], "request");
            assert_eq!(dns.timestamp_query, time(&want["request"]["timestamp"]), "{what}: request.timestamp");
            match (&dns.response, want["response"].is_null()) {
                (None, true) => {}
                (Some(resp), false) => {
                    check_dns(resp, &want["response"], "response");
                    assert_eq!(
                        dns.timestamp_response,
                        time(&want["response"]["timestamp"]),
                        "{what}: response.timestamp"
                    );
                }
                (got, _) => panic!("{what}: response {got:?}"),
            }
        }
    }
}

trait KindName {
    fn to_string_for_test(&self) -> &'static str;
}

impl KindName for flowgate_flow::FlowKind {
    fn to_string_for_test(&self) -> &'static str {
        match self {
            flowgate_flow::FlowKind::Http | flowgate_flow::FlowKind::WebSocket => "http",
            flowgate_flow::FlowKind::Tcp => "tcp",
            flowgate_flow::FlowKind::Udp => "udp",
            flowgate_flow::FlowKind::Dns => "dns",
        }
    }
}

#[test]
fn real_mitmdump_flows_match_what_mitmproxy_reads() {
    let file = std::fs::File::open(data("mitmproxy-11.flows")).expect("the fixture");
    let flows: Vec<Flow> = mitmproxy::Reader::new(file).map(|f| f.expect("converts")).collect();
    let expected = expected();
    assert_eq!(flows.len(), expected.len());
    for (flow, want) in flows.iter().zip(&expected) {
        check(flow, want);
    }
    // The fixture has what the recording script asked for.
    let kinds: Vec<_> = flows.iter().map(|f| f.kind()).collect();
    assert!(kinds.contains(&flowgate_flow::FlowKind::Dns));
    assert!(flows.iter().any(|f| f.error.is_some()));
    assert!(
        flows
            .iter()
            .any(|f| matches!(&f.payload, Payload::Http(h) if h.request.version == flowgate_flow::HttpVersion::Http2))
    );
}

#[test]
fn open_detects_mitmproxy_files_by_content() {
    let flows = flowgate_store::open(&data("mitmproxy-11.flows")).expect("opens");
    assert_eq!(flows.format(), Some(Format::Mitmproxy));
    let flows: Vec<Flow> = flows.map(|f| f.expect("converts")).collect();
    assert_eq!(flows.len(), expected().len());
}

#[test]
fn a_cut_short_file_reads_the_flows_before_the_cut_then_says_where() {
    let bytes = std::fs::read(data("mitmproxy-11.flows")).expect("the fixture");
    let whole: Vec<Flow> = mitmproxy::Reader::new(&bytes[..]).map(|f| f.expect("converts")).collect();
    for cut in (0..bytes.len()).step_by(97) {
        let mut ok = 0;
        let mut err = None;
        for item in mitmproxy::Reader::new(&bytes[..cut]) {
            match item {
                Ok(flow) => {
                    assert_eq!(flow, whole[ok], "cut at {cut}");
                    ok += 1;
                }
                Err(e) => err = Some(e.to_string()),
            }
        }
        if let Some(err) = err {
            assert!(err.contains("cut short") || err.contains("offset"), "cut at {cut}: {err}");
        }
    }
}

#[test]
fn damaged_fields_are_errors_naming_the_field() {
    let bytes = std::fs::read(data("mitmproxy-11.flows")).expect("the fixture");
    // Swap the first flow's type for an unknown one of the same length.
    let at = bytes.windows(12).position(|w| w == b"4:type;4:htt").expect("a type field");
    let mut damaged = bytes.clone();
    damaged[at + 9..at + 13].copy_from_slice(b"nope");
    let first = mitmproxy::Reader::new(&damaged[..]).next().expect("an item").expect_err("unknown type");
    assert_eq!(first.to_string(), "the flow at offset 0: type: unknown flow type \"nope\"");
    // Reading goes on after a flow that cannot be converted.
    assert_eq!(mitmproxy::Reader::new(&damaged[..]).filter(Result::is_ok).count(), expected().len() - 1);
}
