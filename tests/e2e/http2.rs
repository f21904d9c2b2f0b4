//! HTTP/2 through the real `flowgate` binary, driven by clients nobody here wrote: curl,
//! nghttp, h2load, Python's h2 (raw frames, for the attacks) and grpcio. Origins speak
//! HTTP/1.1, HTTP/2 or both, so every translation is crossed.

#[path = "support.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use flowgate_tests::plugins::*;
use serde_json::Value;
use support::*;

/// Runs a test client script; its last stdout line is a JSON report.
fn py(name: &str, args: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{} runs (did tests/run.sh make the venv?): {e}", python().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name} {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"))
}

fn ca(fg: &Flowgate) -> String {
    fg.ca().to_str().expect("utf-8 path").to_owned()
}

/// The version and status of curl's reply, e.g. `http/2 200`.
fn status_line(reply: &Reply) -> String {
    reply.headers.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[test]
fn curl_h2_through_regular_mode_with_plugins_and_across_versions() {
    let both = Origin::serve(true, Speaks::Both);
    let h1_only = Origin::serve(true, Speaks::Http1);
    let h2_only = Origin::serve(true, Speaks::Http2);
    let add = manifest(ADD_HEADER, "[config]\nrequest = \"X-Via-Flowgate: yes\"\nresponse = \"X-Flowgate: 1\"\n");
    let rewrite = manifest(REWRITE_BODY, "[config]\npattern = \"Example Domain\"\nreplacement = \"Flowgate Domain\"\n");
    let fg = Flowgate::start(&["-k", "-s", &add, "-s", &rewrite]);
    let ca = ca(&fg);

    // h2 on both sides (CONNECT, then TLS with ALPN h2), plugins changing both directions.
    let reply = curl(&["--http2", "--cacert", &ca, "-x", &fg.proxy(), &both.url("https", "/h2?x=1")]);
    assert_eq!(status_line(&reply), "http/2 200", "the client negotiated h2");
    assert!(reply.body.contains("version: HTTP/2.0"), "the origin got h2: {}", reply.body);
    assert!(reply.body.contains("<h1>Flowgate Domain</h1>"), "{}", reply.body);
    assert!(reply.body.contains("x-via-flowgate: yes"), "{}", reply.body);
    assert!(reply.headers.contains("x-flowgate: 1"), "{}", reply.headers);
    let line = fg.flow_line("/h2?x=1");
    assert!(line.contains(&format!("GET {} HTTP/2.0 << 200 OK", both.url("https", "/h2?x=1"))), "{line}");

    // A second h2 client (Python h2) through the same CONNECT + TLS path, several streams
    // on one connection.
    let report = py(
        "h2_streams.py",
        &[
            "--proxy",
            &format!("127.0.0.1:{}", fg.port),
            "--host",
            "localhost",
            "--port",
            &both.addr.port().to_string(),
            "--tls",
            "--cafile",
            &ca,
            "--server-name",
            "localhost",
            "--request",
            "/py-1",
            "--request",
            "/py-2",
        ],
    );
    assert_eq!(report["proxy_status"], 200, "{report}");
    assert_eq!(report["negotiated"], "h2", "{report}");
    assert_eq!(report["streams"]["/py-1"]["status"], 200, "{report}");
    assert_eq!(report["streams"]["/py-2"]["status"], 200, "{report}");

    // An h2 client of an HTTP/1.1-only origin: h2 is not offered (the client believes it
    // talks to the origin), so the client speaks HTTP/1.1.
    let reply = curl(&["--http2", "--cacert", &ca, "-x", &fg.proxy(), &h1_only.url("https", "/h1-origin")]);
    assert_eq!(status_line(&reply), "http/1.1 200");
    assert!(reply.body.contains("version: HTTP/1.1"), "{}", reply.body);

    // An HTTP/1.1 client of an h2-only origin: translated to h2 upstream.
    let reply = curl(&["--http1.1", "--cacert", &ca, "-x", &fg.proxy(), &h2_only.url("https", "/h2-origin")]);
    assert_eq!(status_line(&reply), "http/1.1 200");
    assert!(reply.body.contains("version: HTTP/2.0"), "the origin got h2: {}", reply.body);
    assert!(reply.body.contains("<h1>Flowgate Domain</h1>"), "{}", reply.body);
}

#[test]
fn nghttp_and_curl_h2_through_reverse_mode() {
    let h1_origin = Origin::start(false);
    let add = manifest(ADD_HEADER, "[config]\nrequest = \"X-Via-Flowgate: yes\"\nresponse = \"X-Flowgate: 1\"\n");
    let rewrite = manifest(REWRITE_BODY, "[config]\npattern = \"Example Domain\"\nreplacement = \"Flowgate Domain\"\n");
    let upstream = format!("reverse:http://127.0.0.1:{}", h1_origin.addr.port());
    let fg = Flowgate::start(&["--mode", &upstream, "-s", &add, "-s", &rewrite]);

    // nghttp over TLS: flowgate offers h2 in reverse mode and translates to the HTTP/1.1 origin.
    let out = Command::new("nghttp")
        .args(["-v", "-t", "20"])
        .arg(format!("https://127.0.0.1:{}/nghttp-reverse", fg.port))
        .output()
        .expect("nghttp runs (nghttp2-client installed?)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nghttp failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("The negotiated protocol: h2"), "{text}");
    assert!(text.contains("x-flowgate: 1"), "{text}");
    assert!(text.contains("<h1>Flowgate Domain</h1>"), "{text}");
    assert!(text.contains("x-via-flowgate: yes") && text.contains("version: HTTP/1.1"), "{text}");

    let reply = curl(&["--http2", "--cacert", &ca(&fg), &format!("https://localhost:{}/curl-reverse", fg.port)]);
    assert_eq!(status_line(&reply), "http/2 200");
    assert!(reply.body.contains("version: HTTP/1.1"), "{}", reply.body);
    fg.flow_line("/curl-reverse HTTP/2.0 << 200 OK");

    // Reverse mode to an h2 origin over TLS: h2 end to end.
    let h2_origin = Origin::serve(true, Speaks::Http2);
    let fg = Flowgate::start(&["-k", "--mode", &format!("reverse:https://localhost:{}", h2_origin.addr.port())]);
    let out = Command::new("nghttp")
        .args(["-t", "20"])
        .arg(format!("https://127.0.0.1:{}/both-h2", fg.port))
        .output()
        .expect("nghttp runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("version: HTTP/2.0") && text.contains("path: /both-h2"), "{text}");
}

#[test]
fn h2c_with_prior_knowledge_and_upgrade() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", origin.addr.port())]);
    let base = format!("http://127.0.0.1:{}", fg.port);

    let reply = curl(&["--http2-prior-knowledge", &format!("{base}/prior")]);
    assert_eq!(status_line(&reply), "http/2 200");
    assert!(reply.body.contains("path: /prior") && reply.body.contains("version: HTTP/1.1"), "{}", reply.body);

    // curl --http2 on http:// asks to upgrade; the upgrading request is answered on stream 1.
    let out = Command::new("curl")
        .args(["-s", "-S", "-v", "--max-time", "20", "--http2"])
        .arg(format!("{base}/upgrade?q=1"))
        .output()
        .expect("curl runs");
    let (body, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(log.contains("< HTTP/1.1 101 Switching Protocols"), "{log}");
    assert!(log.contains("< HTTP/2 200"), "{log}");
    assert!(body.contains("path: /upgrade?q=1"), "{body}");
    fg.flow_line("/upgrade?q=1 HTTP/2.0 << 200 OK");
    // And later requests on the same connection are streams 3, 5...: nghttp's upgrade does two.
    let out = Command::new("nghttp")
        .args(["-u", "-t", "20"])
        .arg(format!("{base}/nghttp-upgrade"))
        .output()
        .expect("nghttp runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("path: /nghttp-upgrade"));

    // A request with a body is not upgraded (the upgrade is optional for a server).
    let reply = curl(&["--http2", "-d", "payload", &format!("{base}/post")]);
    assert_eq!(status_line(&reply), "http/1.1 200");
    assert!(reply.body.contains("body: payload"), "{}", reply.body);
}

#[test]
fn http2_false_turns_it_off() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&[
        "--set",
        "http2=false",
        "--mode",
        &format!("reverse:http://127.0.0.1:{}", origin.addr.port()),
    ]);
    let reply = curl(&["--http2", "--cacert", &ca(&fg), &format!("https://localhost:{}/tls", fg.port)]);
    assert_eq!(status_line(&reply), "http/1.1 200", "no h2 by ALPN");
    let reply = curl(&["--http2", &format!("http://127.0.0.1:{}/upgrade", fg.port)]);
    assert_eq!(status_line(&reply), "http/1.1 200", "no h2c upgrade");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--http2-prior-knowledge"])
        .arg(format!("http://127.0.0.1:{}/prior", fg.port))
        .output()
        .expect("curl runs");
    assert!(!out.status.success(), "prior knowledge must fail when HTTP/2 is off");
    assert!(!origin.seen.paths().contains(&"/prior".to_owned()));
}

#[test]
fn trailers_cross_translation_both_ways() {
    // h2 client -> HTTP/1.1 origin: the origin's chunked trailers arrive as an h2 trailer block.
    let h1_origin = Origin::start(false);
    let fg = Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", h1_origin.addr.port())]);
    let report =
        py("h2_streams.py", &["--host", "127.0.0.1", "--port", &fg.port.to_string(), "--request", "/trailers"]);
    let stream = &report["streams"]["/trailers"];
    assert_eq!(stream["status"], 200, "{report}");
    assert_eq!(stream["trailers"]["x-checksum"], "abc", "{report}");

    // HTTP/1.1 client -> h2-only cleartext origin (reverse:h2c://): trailers both ways.
    let h2_origin = Origin::serve(false, Speaks::Http2);
    let fg = Flowgate::start(&["--mode", &format!("reverse:h2c://127.0.0.1:{}", h2_origin.addr.port())]);
    let out = raw(
        fg.port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Request-Trailer: sent\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("version: HTTP/2.0") && out.contains("body: hello"), "{out}");
    assert!(out.contains("trailer x-request-trailer: sent"), "the h2 origin got the request trailer: {out}");
    let out = raw(fg.port, b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n");
    assert!(out.contains("with trailers") && out.to_ascii_lowercase().contains("x-checksum: abc"), "{out}");
}

/// A grpcio server (generic handlers, no codegen) on a free port.
struct GrpcServer {
    child: Child,
    port: u16,
}

impl GrpcServer {
    fn start() -> GrpcServer {
        let mut child = Command::new(python())
            .arg(script("grpc_echo.py"))
            .args(["server", "--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("grpc server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line).expect("listening line");
        let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).expect("listening PORT");
        GrpcServer { child, port }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_grpc_report(report: &Value) {
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["unary"], "echo:hello", "{report}");
    assert_eq!(report["unary_trailer"], "done", "trailing metadata intact: {report}");
    let chat: Vec<&str> = report["chat"].as_array().expect("chat").iter().filter_map(Value::as_str).collect();
    assert_eq!(chat, ["echo:msg1", "echo:msg2", "echo:msg3", "echo:msg4", "echo:msg5"], "{report}");
    assert_eq!(report["chat_trailer"], "chat-done", "{report}");
    assert_eq!(report["fail_code"], "PERMISSION_DENIED", "grpc-status in trailers: {report}");
    assert_eq!(report["fail_details"], "denied by test", "{report}");
}

#[test]
fn request_ids_go_as_never_indexed_fields_and_the_rest_as_before() {
    // request-id puts a new x-request-id on every response: HPACK must not index it (each
    // would evict the fields that repeat); a Python h2 client reads how each came.
    let origin = Origin::start(false);
    let fg =
        Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", origin.addr.port()), "-s", REQUEST_ID]);
    let report = py(
        "h2_streams.py",
        &["--host", "127.0.0.1", "--port", &fg.port.to_string(), "--request", "/a", "--request", "/b"],
    );
    for path in ["/a", "/b"] {
        let stream = &report["streams"][path];
        assert_eq!(stream["status"], 200, "{report}");
        let id = stream["headers"]["x-request-id"].as_str().expect("an x-request-id");
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{report}");
        assert_eq!(stream["never_indexed"], serde_json::json!(["x-request-id"]), "{report}");
    }
    assert_ne!(report["streams"]["/a"]["headers"]["x-request-id"], report["streams"]["/b"]["headers"]["x-request-id"]);
}

#[test]
fn grpc_unary_and_bidi_streaming_through_flowgate() {
    let server = GrpcServer::start();
    let request_id = REQUEST_ID;

    // Reverse mode to a cleartext gRPC server.
    let fg = Flowgate::start(&["--mode", &format!("reverse:h2c://127.0.0.1:{}", server.port), "-s", request_id]);
    let report = py("grpc_echo.py", &["client", "--target", &format!("127.0.0.1:{}", fg.port)]);
    assert_grpc_report(&report);
    // Each chat message came back before the next was sent (the client waits for it), so
    // messages stream as they come rather than at the end of the stream.
    fg.flow_line("/flowgate.test.Echo/Chat HTTP/2.0 << 200 OK");
    fg.flow_line("/flowgate.test.Echo/Say HTTP/2.0 << 200 OK");

    // Regular mode: grpcio's http_proxy sends CONNECT, then h2 with prior knowledge inside.
    let fg = Flowgate::start(&["-s", request_id]);
    let report =
        py("grpc_echo.py", &["client", "--target", &format!("127.0.0.1:{}", server.port), "--proxy", &fg.proxy()]);
    assert_grpc_report(&report);
    fg.flow_line(&format!("POST http://127.0.0.1:{}/flowgate.test.Echo/Say HTTP/2.0 << 200 OK", server.port));
}

#[test]
fn grpc_trailers_survive_plugins_that_buffer_or_stream_bodies() {
    let server = GrpcServer::start();
    let reverse = format!("reverse:h2c://127.0.0.1:{}", server.port);
    // A plugin that buffers every gRPC body (both ways): the trailers the origin sent after
    // the body (grpc-status, custom trailing metadata) still reach the client.
    let buffering = manifest(
        REWRITE_BODY,
        "name = \"rewrite-body\"\n[config]\npattern = \"never-matches\"\nside = \"both\"\ncontent_type = \"application/grpc\"\n",
    );
    let fg = Flowgate::start(&["--mode", &reverse, "-s", &buffering]);
    let report = py("grpc_echo.py", &["client", "--target", &format!("127.0.0.1:{}", fg.port), "--unary-only"]);
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["unary"], "echo:hello", "{report}");
    assert_eq!(report["unary_trailer"], "done", "trailing metadata through a buffering plugin: {report}");
    assert_eq!(report["fail_code"], "PERMISSION_DENIED", "grpc-status through a buffering plugin: {report}");
    assert_eq!(report["fail_details"], "denied by test", "{report}");

    // A plugin that reads trailers() in its response hook (streaming the body, so the
    // bidirectional call keeps flowing) sees the origin's grpc-status and grpc-message.
    let fg = Flowgate::start(&["--mode", &reverse, "-s", GRPC_LOG]);
    let report = py("grpc_echo.py", &["client", "--target", &format!("127.0.0.1:{}", fg.port)]);
    assert_grpc_report(&report);
    let wait_log = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fg.count_logs(needle) == 0 {
            assert!(std::time::Instant::now() < deadline, "no log line with {needle:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_log("grpc /flowgate.test.Echo/Say status 0");
    wait_log("grpc /flowgate.test.Echo/Chat status 0");
    wait_log("grpc /flowgate.test.Echo/Fail status 7 denied by test");
}

#[test]
fn slow_readers_and_slow_plugins_hold_only_their_own_stream() {
    let origin = Origin::start(false);
    let spin = manifest(
        SPIN_FOREVER,
        // A CPU budget above the 1.5 s spin: this test is about the deadline and the stream.
        "name = \"spin\"\n[limits]\nhook_timeout_ms = 1500\ncpu_per_second = \"10s\"\n[config]\npath = \"/slow\"\n",
    );
    let fg = Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", origin.addr.port()), "-s", &spin]);
    let report = py(
        "h2_streams.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &fg.port.to_string(),
            "--request",
            "/slow",
            "--request",
            "/fast",
            "--window-stall",
            "/big/1073741824",
            "--hold",
            "3",
        ],
    );
    eprintln!("{report}");
    let streams = &report["streams"];
    assert_eq!(streams["/fast"]["status"], 200, "{report}");
    assert!(streams["/fast"]["end_ms"].as_f64().expect("fast ended") < 1000.0, "{report}");
    assert_eq!(streams["/slow"]["status"], 200, "fail-open after the deadline: {report}");
    assert!(streams["/slow"]["headers_ms"].as_f64().expect("slow answered") >= 1400.0, "{report}");
    // The stalled stream got its window's worth and no more, and flowgate buffered only a
    // bounded amount of the 1 GiB the origin would send.
    let stalled = report["stalled_bytes"].as_u64().expect("stalled bytes");
    assert!(stalled <= 65535, "{report}");
    let peak = peak_rss_kib(fg.child.id());
    eprintln!("flowgate peak RSS with a stalled 1 GiB stream: {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn http2_attacks_are_refused_and_other_connections_go_on() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&[
        "--set",
        "http2_max_concurrent_streams=10",
        "--mode",
        &format!("reverse:http://127.0.0.1:{}", origin.addr.port()),
    ]);
    let port = fg.port.to_string();
    let attack = |name: &str, extra: &[&str]| {
        let mut args = vec![name, "--host", "127.0.0.1", "--port", &port];
        args.extend_from_slice(extra);
        let report = py("h2_attacks.py", &args);
        eprintln!("{name}: {report}");
        assert_eq!(report["error"], Value::Null, "{report}");
        let normal = py("h2_attacks.py", &["normal", "--host", "127.0.0.1", "--port", &port]);
        assert_eq!(normal["responses"], serde_json::json!([200]), "a new connection is served after {name}");
        report
    };

    // Rapid reset: GOAWAY ENHANCE_YOUR_CALM (11) once http2_max_reset_streams is passed.
    let report = attack("rapid-reset", &["--count", "2000", "--path", "/rapid"]);
    assert_eq!(report["goaway_error"], 11, "{report}");
    let reached = origin.seen.paths().iter().filter(|p| *p == "/rapid").count();
    assert!(reached < 200, "{reached} of 2000 reset requests reached the origin");

    // CONTINUATION flood: the header block is cut off, the connection closed.
    for frame_size in ["16384", "0"] {
        let report = attack("continuation-flood", &["--seconds", "5", "--frame-size", frame_size]);
        assert!(report["goaway"] == true || report["closed_by_peer"] == true, "{report}");
        assert!(report["seconds"].as_f64().expect("seconds") < 4.5, "cut off early: {report}");
    }

    // Oversized header list (http2_max_header_list_size, 64 KiB): refused, never forwarded;
    // one under the limit goes through.
    let report = attack("header-list", &["--size", "131072", "--path", "/too-big"]);
    let refused = report["responses"] == serde_json::json!([431])
        || !report["resets_received"].as_array().expect("resets").is_empty()
        || report["goaway_error"] == 11;
    assert!(refused, "431, RST_STREAM or GOAWAY ENHANCE_YOUR_CALM: {report}");
    assert!(!origin.seen.paths().contains(&"/too-big".to_owned()));
    let report = attack("header-list", &["--size", "32768", "--path", "/fits"]);
    assert_eq!(report["responses"], serde_json::json!([200]), "{report}");

    // HPACK bomb: 4 KiB table entry referenced 4000 times = 16 MiB decoded from 4 KiB.
    let report = attack("hpack-bomb", &["--path", "/bomb"]);
    let statuses = report["responses"].as_array().expect("responses").clone();
    assert!(statuses.len() <= 1, "only the first, honest request is answered: {report}");
    let refused = report["goaway_error"] == 11 || !report["resets_received"].as_array().expect("resets").is_empty();
    assert!(refused, "{report}");

    // More streams than http2_max_concurrent_streams: the extra ones are refused.
    let report = attack("too-many-streams", &["--count", "20", "--path", "/open"]);
    assert_eq!(report["peer_max_concurrent_streams"], 10, "{report}");
    assert_eq!(report["refused"], 10, "20 opened, 10 allowed: {report}");

    let peak = peak_rss_kib(fg.child.id());
    eprintln!("flowgate peak RSS after the attacks: {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn h2load_through_reverse_mode_all_succeed() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", origin.addr.port())]);
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "10", "-m", "10"])
        .arg(format!("http://127.0.0.1:{}/h2load", fg.port))
        .output()
        .expect("h2load runs (nghttp2-client installed?)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}

/// nginx's number for the connection a reply came on (`add_header X-Conn $connection`).
fn upstream_connection(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{reply:?}");
    let line = reply.headers.lines().find_map(|l| l.strip_prefix("x-conn: ")).expect("nginx sent X-Conn");
    line.trim().to_owned()
}

/// The upstream connections `n` client connections (one curl each, one after another)
/// were answered on, with flowgate started with `args`.
fn upstream_connections(nginx: &Nginx, n: usize, args: &[&str]) -> Vec<String> {
    let fg = Flowgate::start(&[&["-k"], args].concat());
    (0..n)
        .map(|_| upstream_connection(&curl(&["--cacert", &ca(&fg), "-x", &fg.proxy(), &nginx.tls_url("/small")])))
        .collect()
}

#[test]
fn client_connections_share_an_http2_upstream_where_they_cannot_tell() {
    let big = vec![b'x'; 24 << 20];
    let nginx = Nginx::start(&[("small", b"shared\n"), ("big", &big)], "add_header X-Conn $connection always;");
    let distinct = |conns: &[String]| conns.iter().collect::<std::collections::BTreeSet<_>>().len();

    // Five intercepted TLS client connections, one HTTP/2 connection to nginx.
    let shared = upstream_connections(&nginx, 5, &[]);
    assert_eq!(distinct(&shared), 1, "{shared:?}");
    // Eight arriving at once (each would open its own): the first one's is shared by all.
    let fg = Flowgate::start(&["-k"]);
    let ca_path = ca(&fg);
    let burst: Vec<_> = (0..8)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "-S", "--max-time", "20", "-D", "-", "-o", "/dev/null", "--cacert", &ca_path])
                .args(["-x", &fg.proxy(), &nginx.tls_url("/small")])
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl runs")
        })
        .collect();
    let burst: Vec<String> = burst
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("curl ran");
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            let conn = head.lines().find_map(|l| l.strip_prefix("x-conn: ")).map(|v| v.trim().to_owned());
            conn.unwrap_or_else(|| panic!("nginx sent X-Conn: {head}"))
        })
        .collect();
    assert_eq!(distinct(&burst), 1, "{burst:?}");
    drop(fg);
    // A plugin whose hook list leaves out the server connection's hooks keeps sharing on
    // (tls-passthrough is called for client-connected/-disconnected and TLS).
    let passthrough = manifest(TLS_PASSTHROUGH, "name = \"passthrough\"\n");
    let conns = upstream_connections(&nginx, 3, &["-s", &passthrough]);
    assert_eq!(distinct(&conns), 1, "{conns:?}");
    // One that is called for server-connect would miss the connections opened for others:
    // each client connection gets its own again, as does `share_upstream=false`.
    let watcher = manifest(
        TLS_PASSTHROUGH,
        "name = \"watcher\"\nhooks = [\"client-connected\", \"server-connect\", \"tls-clienthello\"]\n",
    );
    let conns = upstream_connections(&nginx, 3, &["-s", &watcher]);
    assert_eq!(distinct(&conns), 3, "{conns:?}");
    let conns = upstream_connections(&nginx, 3, &["--set", "share_upstream=false"]);
    assert_eq!(distinct(&conns), 3, "{conns:?}");

    // Clients that stop reading big responses fill their own streams' windows, never the
    // shared connection's: four of them (more than the 5 MiB a connection window would
    // otherwise hold) leave the other clients' requests on that connection answered.
    let fg = Flowgate::start(&["-k"]);
    let ca = ca(&fg);
    let first = upstream_connection(&curl(&["--cacert", &ca, "-x", &fg.proxy(), &nginx.tls_url("/small")]));
    /// Children killed when the test ends, however it ends.
    struct Reaped(Vec<Child>);
    impl Drop for Reaped {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut slow = Reaped(
        (0..4)
            .map(|_| {
                Command::new("curl")
                    .args(["-s", "--limit-rate", "1K", "-o", "/dev/null", "--cacert", &ca, "-x", &fg.proxy()])
                    .arg(nginx.tls_url("/big"))
                    .spawn()
                    .expect("curl runs")
            })
            .collect(),
    );
    let fast: Vec<String> = (0..20)
        .map(|_| {
            upstream_connection(&curl(&[
                "--max-time",
                "5",
                "--cacert",
                &ca,
                "-x",
                &fg.proxy(),
                &nginx.tls_url("/small"),
            ]))
        })
        .collect();
    assert!(fast.iter().all(|c| *c == first), "{first}: {fast:?}");
    for child in &mut slow.0 {
        assert!(child.try_wait().expect("curl status").is_none(), "the slow readers were still reading");
    }
}
