//! WebSocket through the real proxy, driven by Python's `websockets` (tests/e2e/py/ws.py)
//! on both ends: regular mode over ws:// and wss:// (CONNECT, TLS intercepted with
//! flowgate's CA trusted), reverse mode, with and without permessage-deflate (negotiated
//! with each side on its own), close codes both ways, the flow file's copy, and the
//! `websocket` option off; plugins in the message hooks (rewrite, drop, multiply, inject,
//! kill) and hostile ones (a trap, an endless loop) contained.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use flowgate_tests::manifest;
use flowgate_tests::plugins::{SPIN_FOREVER, TRAP, WEBSOCKET_REWRITE};
use support::{Flowgate, confdir, python};

fn script() -> String {
    py("ws.py")
}

fn py(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/py").join(name).display().to_string()
}

/// ws.py's echo server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::spawn("server", extra)
    }

    /// One of ws.py's other servers (`bomb-server`, `flood-server`).
    fn start_role(role: &str) -> Server {
        Server::spawn(role, &[])
    }

    fn spawn(role: &str, extra: &[&str]) -> Server {
        Server::spawn_script(&script(), role, extra)
    }

    fn spawn_script(script: &str, role: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(python())
            .arg(script)
            .arg(role)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the server's port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("ws.py server printed {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs ws.py's client and returns its report.
fn client(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).arg(script()).arg("client").args(args).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ws.py client {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What every run of the client must have seen.
fn assert_echoed(report: &serde_json::Value, deflate: bool) {
    for key in ["text", "binary", "fragmented", "ping"] {
        assert_eq!(report[key], true, "{key}: {report}");
    }
    assert_eq!(report["client_close"], serde_json::json!([4000, "bye"]), "{report}");
    assert_eq!(report["server_close"], serde_json::json!([4002, "server bye"]), "{report}");
    let expected = if deflate { serde_json::json!(["permessage-deflate"]) } else { serde_json::json!([]) };
    assert_eq!(report["client_negotiated"], expected, "the client's leg: {report}");
    assert_eq!(report["server"]["negotiated"], expected, "the server's leg: {report}");
    if deflate {
        // flowgate's own offer, not the client's passed on.
        assert_eq!(report["server"]["offer"], "permessage-deflate; client_max_window_bits", "{report}");
    }
}

/// The lines flowgate printed for the two connections of one client run.
fn assert_lines(fg: &Flowgate, port: u16) {
    let path = format!("127.0.0.1:{port}/chat");
    fg.flow_line(&format!("GET http://127.0.0.1:{port}/chat << 101 Switching Protocols"));
    fg.flow_line(&format!("-> WebSocket text message -> {path} 5b"));
    fg.flow_line(&format!("<- WebSocket binary message <- {path} 1.0m"));
    fg.flow_line(&format!("-> WebSocket ping message -> {path} 2b"));
    fg.flow_line(&format!("<- WebSocket pong message <- {path} 2b"));
    fg.flow_line("closed by client: 4000 (bye)");
    fg.flow_line("closed by server: 4002 (server bye)");
}

#[test]
fn python_websockets_through_regular_mode_with_and_without_deflate() {
    for deflate in [true, false] {
        let compression = if deflate { "deflate" } else { "none" };
        let server = Server::start(&["--compression", compression]);
        let fg = Flowgate::start(&[]);
        let url = format!("ws://127.0.0.1:{}/chat", server.port);
        let report = client(&[&url, "--proxy", &fg.proxy(), "--compression", compression]);
        assert_echoed(&report, deflate);
        assert_lines(&fg, server.port);
    }
}

#[test]
fn python_websockets_over_wss_through_an_intercepted_tunnel() {
    let dir = confdir();
    let (cert, key) = localhost_cert(&dir);
    let server = Server::start(&["--tls", &cert, &key]);
    // The origin's certificate is its own: flowgate is told not to check it (-k).
    let fg = Flowgate::start(&["-k"]);
    let url = format!("wss://localhost:{}/chat", server.port);
    let ca = fg.ca().display().to_string();
    let report = client(&[&url, "--proxy", &fg.proxy(), "--ca", &ca]);
    assert_echoed(&report, true);
    fg.flow_line(&format!("GET https://localhost:{}/chat << 101 Switching Protocols", server.port));
    fg.flow_line("closed by client: 4000 (bye)");
}

#[test]
fn python_websockets_through_reverse_mode_and_into_the_flow_file() {
    let server = Server::start(&[]);
    let dir = confdir();
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("ws.flows");
    let mode = format!("reverse:http://127.0.0.1:{}", server.port);
    let fg = Flowgate::start(&["--mode", &mode, "-w", &file.display().to_string()]);
    let url = format!("ws://127.0.0.1:{}/chat", fg.port);
    let report = client(&[&url]);
    assert_echoed(&report, true);
    // With -w the lines come from what the flow store is handed: the same lines.
    assert_lines(&fg, server.port);
    // SIGTERM: the flow file is flushed before flowgate exits.
    let mut fg = fg;
    let _ = Command::new("kill").arg(fg.child.id().to_string()).status();
    assert!(fg.child.wait().expect("exits").success());

    // Both WebSockets are in the file with every message, plain (inflated), and how each
    // closed.
    let flows: Vec<flowgate_flow::Flow> =
        flowgate_store::open(&file).expect("reads").map(|f| f.expect("a flow")).collect();
    let sockets: Vec<&flowgate_flow::WebSocketData> = flows
        .iter()
        .filter_map(|f| match &f.payload {
            flowgate_flow::Payload::Http(h) => h.websocket.as_ref(),
            _ => None,
        })
        .collect();
    assert_eq!(sockets.len(), 2, "{flows:?}");
    let first = sockets[0];
    let texts: Vec<&[u8]> = first.messages.iter().map(|m| m.data.as_ref()).collect();
    assert!(texts.contains(&&b"hello"[..]) && texts.contains(&&b"fragmented"[..]), "{texts:?}");
    assert!(first.messages.iter().any(|m| m.data.len() == 1 << 20 && !m.from_client), "the 1 MiB echo");
    let close = first.close.as_ref().expect("closed");
    assert_eq!((close.code, close.reason.as_str(), close.closed_by_client), (Some(4000), "bye", true));
    let close = sockets[1].close.as_ref().expect("closed");
    assert_eq!((close.code, close.closed_by_client), (Some(4002), false));

    // HAR export: the messages as Chrome writes them.
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["export", "har"])
        .arg(&file)
        .output()
        .expect("flowgate runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let har: serde_json::Value = serde_json::from_slice(&out.stdout).expect("HAR");
    let messages = har["log"]["entries"][0]["_webSocketMessages"].as_array().expect("_webSocketMessages");
    assert_eq!(messages.len(), first.messages.len(), "{messages:?}");
    assert!(messages.iter().any(|m| m["type"] == "send" && m["data"] == "hello"), "{messages:?}");
}

#[test]
fn websocket_off_forwards_no_upgrade() {
    let server = Server::start(&[]);
    let fg = Flowgate::start(&["--set", "websocket=false"]);
    let url = format!("ws://127.0.0.1:{}/chat", server.port);
    let out = Command::new(python())
        .arg(script())
        .args(["client", &url, "--proxy", &fg.proxy()])
        .output()
        .expect("python runs");
    assert!(!out.status.success(), "the upgrade went through");
    // websockets answers a request without Upgrade with 426.
    fg.flow_line(&format!("GET http://127.0.0.1:{}/chat << 426", server.port));
}

/// ws.py's converse: sends `send`, reads `expect` messages; returns what came and the close.
fn converse(url: &str, proxy: &str, send: &[&str], expect: usize) -> (Vec<String>, serde_json::Value) {
    converse_via(url, Some(proxy), send, expect)
}

/// As [`converse`], through `proxy` if given (else straight to `url`).
fn converse_via(url: &str, proxy: Option<&str>, send: &[&str], expect: usize) -> (Vec<String>, serde_json::Value) {
    let mut args = vec!["converse".to_owned(), url.to_owned()];
    if let Some(proxy) = proxy {
        args.extend(["--proxy".to_owned(), proxy.to_owned()]);
    }
    args.extend(["--expect".to_owned(), expect.to_string()]);
    for text in send {
        args.extend(["--send".to_owned(), (*text).to_owned()]);
    }
    let out = Command::new(python()).arg(script()).args(&args).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ws.py {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let received = report["received"]
        .as_array()
        .expect("received")
        .iter()
        .map(|m| m.as_str().unwrap_or("<binary>").to_owned())
        .collect();
    (received, report["close"].clone())
}

#[test]
fn a_plugin_rewrites_drops_multiplies_and_injects_messages() {
    let server = Server::start(&[]);
    let config = "[config]\nfrom = \"Example\"\nto = \"Flowgate\"\ndrop = \"secret\"\ntwice = \"again\"\n\
                  greeting = \"welcome\"\nkill_on = \"goodbye\"\n";
    let m = manifest(WEBSOCKET_REWRITE, &format!("name = \"wsr\"\n{config}"));
    let fg = Flowgate::start(&["-s", &m.display().to_string()]);
    let url = format!("ws://127.0.0.1:{}/chat", server.port);
    // The greeting comes first; "secret" never reaches the server; "again" reaches it
    // twice (two echoes); the server's echo of "hello Example" is rewritten (deflate on
    // both legs: the plugin sees plain text).
    let (received, _) = converse(&url, &fg.proxy(), &["secret", "again", "hello Example"], 4);
    assert_eq!(received, ["welcome", "again", "again", "hello Flowgate"]);
    // kill_on: both sides are closed.
    let (received, close) = converse(&url, &fg.proxy(), &["goodbye"], 2);
    assert_eq!(received, ["welcome"], "{close}");
    assert_eq!(close[0], 1000, "{close}");
    fg.flow_line("error: killed by a plugin");
}

#[test]
fn hostile_plugins_in_the_message_hook_are_contained() {
    let server = Server::start(&[]);
    let spin = manifest(SPIN_FOREVER, "name = \"spin\"\n[limits]\nhook_timeout_ms = 100\ncpu_per_second = \"10s\"\n");
    let trap = manifest(TRAP, "name = \"trap\"\n[limits]\ncrash_budget = 100\n");
    let fg = Flowgate::start(&["-s", &spin.display().to_string(), "-s", &trap.display().to_string()]);
    let url = format!("ws://127.0.0.1:{}/chat", server.port);
    let proxy = fg.proxy();
    // Another WebSocket at the same time is not held up by the hostile messages.
    let calm = std::thread::spawn({
        let (url, proxy) = (url.clone(), proxy.clone());
        move || converse(&url, &proxy, &["calm 1", "calm 2", "calm 3"], 3)
    });
    // Both fail open: the messages go on as they came, and the WebSocket with them.
    let (received, close) = converse(&url, &proxy, &["spin now", "trap now", "fine"], 3);
    assert_eq!(received, ["spin now", "trap now", "fine"], "{close}");
    let (calm, _) = calm.join().expect("calm client");
    assert_eq!(calm, ["calm 1", "calm 2", "calm 3"]);
    let end = fg.flow_line("plugin spin failed in websocket-message");
    assert!(end.contains("plugin trap failed in websocket-message: trap"), "{end}");
}

/// flowgate's peak resident memory so far (VmHWM), in MiB.
fn peak_mib(fg: &Flowgate) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", fg.child.id())).expect("/proc");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") / 1024
}

/// A raw peer's run: its JSON line.
fn raw(role: &str, url: &str, proxy: &str) -> serde_json::Value {
    let out = Command::new(python()).arg(script()).args([role, url, "--proxy", proxy]).output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ws.py {role} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn deflate_bombs_from_either_side_close_with_1009_in_bounded_memory() {
    // 256 MiB of zeros in one compressed message of ~256 KiB, past the 16 MiB cap.
    let echo = Server::start(&[]);
    let fg = Flowgate::start(&[]);
    let from_client = raw("bomb-client", &format!("ws://127.0.0.1:{}/chat", echo.port), &fg.proxy());
    assert_eq!(from_client["close"], 1009, "{from_client}");
    fg.flow_line("sent a bad compressed message");

    // Under a cap past the bomb's size the ratio cap stops it (100 times its ~256 KiB).
    let roomy = Flowgate::start(&["--set", "websocket_max_message_size=512MiB"]);
    let from_client = raw("bomb-client", &format!("ws://127.0.0.1:{}/chat", echo.port), &roomy.proxy());
    assert_eq!(from_client["close"], 1009, "{from_client}");
    let peak = peak_mib(&roomy);
    eprintln!("flowgate peak RSS: {peak} MiB");
    assert!(peak < 128, "flowgate peaked at {peak} MiB for a 256 MiB bomb under a 512 MiB cap");

    let bomber = Server::start_role("bomb-server");
    let (received, close) = converse(&format!("ws://127.0.0.1:{}/chat", bomber.port), &fg.proxy(), &[], 1);
    assert!(received.is_empty(), "{received:?}");
    assert_eq!(close[0], 1009, "{close}");
    let peak = peak_mib(&fg);
    eprintln!("flowgate peak RSS: {peak} MiB");
    assert!(peak < 128, "flowgate peaked at {peak} MiB for two 256 MiB bombs");
}

#[test]
fn a_slow_reader_holds_the_sender_back_in_bounded_memory() {
    let flood = Server::start_role("flood-server");
    let fg = Flowgate::start(&[]);
    let report = raw("slow-client", &format!("ws://127.0.0.1:{}/chat", flood.port), &fg.proxy());
    assert_eq!(report["messages"], 100, "{report}");
    assert_eq!(report["bytes"], 100 << 20, "{report}");
    fg.flow_line("closed by server: 1000 (flooded)");
    let peak = peak_mib(&fg);
    eprintln!("flowgate peak RSS: {peak} MiB");
    assert!(peak < 96, "flowgate peaked at {peak} MiB relaying 100 MiB to a slow reader");
}

/// The WebSockets in a flow file: (client messages, server messages, close) each.
fn sockets_in(file: &Path) -> Vec<(Vec<String>, Vec<String>, Option<flowgate_flow::WebSocketClose>)> {
    flowgate_store::open(file)
        .expect("reads")
        .map(|f| f.expect("a flow"))
        .filter_map(|f| match f.payload {
            flowgate_flow::Payload::Http(h) => h.websocket,
            _ => None,
        })
        .map(|ws| {
            let texts = |from_client: bool| {
                ws.messages
                    .iter()
                    .filter(|m| m.from_client == from_client && m.kind == flowgate_flow::MessageKind::Text)
                    .map(|m| String::from_utf8_lossy(&m.data).into_owned())
                    .collect()
            };
            (texts(true), texts(false), ws.close.clone())
        })
        .collect()
}

/// SIGTERM, then the exit (the flow file flushed).
fn stop(mut fg: Flowgate) {
    let _ = Command::new("kill").arg(fg.child.id().to_string()).status();
    assert!(fg.child.wait().expect("exits").success());
}

#[test]
fn a_recorded_websocket_replays_against_the_server_and_to_a_client() {
    let dir = confdir();
    std::fs::create_dir_all(&dir).expect("dir");
    let (recorded, replayed) = (dir.join("recorded.flows"), dir.join("replayed.flows"));
    let server = Server::start(&[]);
    let url = format!("ws://127.0.0.1:{}/chat", server.port);
    let fg = Flowgate::start(&["-w", &recorded.display().to_string()]);
    let said = ["one", "two", "three"];
    let (received, _) = converse(&url, &fg.proxy(), &said, 3);
    assert_eq!(received, said);
    stop(fg);
    let original = sockets_in(&recorded);
    assert_eq!(original.len(), 1);
    assert_eq!(original[0].1, said, "the server's messages as recorded");

    // Client replay: the WebSocket opened again, the client's messages sent, the same
    // answers from the live server, all recorded as a new flow.
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("--confdir")
        .arg(&dir)
        .args(["-n", "-C", &recorded.display().to_string(), "-w", &replayed.display().to_string()])
        .output()
        .expect("flowgate runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("[replay] GET") && stdout.contains("101"), "{stdout}");
    let again = sockets_in(&replayed);
    assert_eq!(again.len(), 1, "{stdout}");
    assert_eq!(again[0].0, original[0].0, "the client's messages sent again");
    assert_eq!(again[0].1, original[0].1, "the same server messages");
    assert_eq!(again[0].2.as_ref().map(|c| (c.code, c.closed_by_client)), Some((Some(1000), true)));

    // Server replay: with no origin running, the recorded server answers a live client.
    drop(server);
    let fg = Flowgate::start(&["-S", &recorded.display().to_string(), "--keepserving"]);
    let (received, close) = converse(&url, &fg.proxy(), &said, 3);
    assert_eq!(received, said, "{close}");
    fg.flow_line("<< [replay] 101");
}

#[test]
fn chromium_sees_a_plugin_rewrite_server_messages_on_an_https_page() {
    let dir = confdir();
    let (cert, key) = localhost_cert(&dir);
    let server = Server::start(&["--tls", &cert, &key]);
    let rewrite = manifest(WEBSOCKET_REWRITE, "[config]\nfrom = \"Example\"\nto = \"Flowgate\"\n");
    let fg = Flowgate::start(&["-k", "-s", &rewrite.display().to_string()]);
    // The page opens wss://localhost/chat, sends "hello Example" and shows the answer; the
    // page's load waits for it (ws.py), so the dumped DOM has it.
    let dom = support::chromium_dom(&fg, &format!("https://localhost:{}/page", server.port));
    assert!(dom.contains(r#"<p id="out">got: hello Flowgate</p>"#), "the plugin's change is on the page: {dom}");
    fg.flow_line(&format!("GET https://localhost:{}/chat << 101 Switching Protocols", server.port));
    fg.flow_line("closed by server: 1000");
}

/// A self-signed certificate for localhost, written to `dir`: (certificate, key) paths.
fn localhost_cert(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).expect("dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params").self_signed(&key).expect("cert");
    let (cert_file, key_file) = (dir.join("origin.pem"), dir.join("origin.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    (cert_file.display().to_string(), key_file.display().to_string())
}

#[test]
fn rfc8441_websockets_over_http2_on_either_side() {
    // An HTTP/2 client's extended CONNECT (Python h2, raw frames) to an HTTP/1.1 origin.
    let server = Server::start(&[]);
    let fg = Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", server.port)]);
    let out = Command::new(python())
        .arg(py("h2ws.py"))
        .args(["client", "127.0.0.1", &fg.port.to_string(), "/chat"])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(report, serde_json::json!({"status": 200, "echo": "hello over h2", "close": 1000}));
    fg.flow_line(&format!("GET http://127.0.0.1:{}/chat HTTP/2.0 << 101 Switching Protocols", server.port));
    fg.flow_line("closed by client: 1000");

    // An HTTP/1.1 client (websockets) to an origin that speaks only HTTP/2 (ALPN h2) and
    // takes WebSockets as extended CONNECT.
    let (cert, key) = localhost_cert(&confdir());
    // Through flowgate in reverse mode to an h2ws.py origin accepting with `status`: what
    // came back of `send`, and the flow line.
    let through = |status: &str, send: &[&str]| {
        let h2_origin = Server::spawn_script(&py("h2ws.py"), "server", &[&cert, &key, status]);
        let fg = Flowgate::start(&["-k", "--mode", &format!("reverse:https://localhost:{}", h2_origin.port)]);
        let (received, _) = converse_via(&format!("ws://127.0.0.1:{}/chat", fg.port), None, send, send.len());
        fg.flow_line(&format!("GET https://localhost:{}/chat << 101 Switching Protocols", h2_origin.port));
        fg.flow_line("closed by client: 1000");
        received
    };
    assert_eq!(through("200", &["one", "two"]), ["one", "two"]);
    // Any 2xx accepts an extended CONNECT (RFC 8441), not only 200.
    assert_eq!(through("202", &["three"]), ["three"]);
}

#[test]
fn frames_and_messages_over_their_caps_close_with_1009() {
    let server = Server::start(&["--compression", "none"]);
    let url = format!("ws://127.0.0.1:{}/chat", server.port);
    let big = "x".repeat(100 << 10);
    // A 100 KiB frame against a 64 KiB frame cap: refused from its header.
    let fg = Flowgate::start(&["--set", "websocket_max_frame_size=64KiB"]);
    let (received, close) = converse(&url, &fg.proxy(), &["small", &big], 2);
    assert_eq!(received, ["small"], "{close}");
    assert_eq!(close[0], 1009, "{close}");
    fg.flow_line("over websocket_max_frame_size (65536)");
    // The same against a message cap.
    let fg = Flowgate::start(&["--set", "websocket_max_message_size=64KiB"]);
    let (_, close) = converse(&url, &fg.proxy(), &[&big], 1);
    assert_eq!(close[0], 1009, "{close}");
}

#[test]
fn a_websocket_through_upstream_mode_into_another_proxy() {
    let server = Server::start(&[]);
    let outer = Flowgate::start(&[]);
    let inner = Flowgate::start(&["--mode", &format!("upstream:{}", outer.proxy())]);
    let url = format!("ws://127.0.0.1:{}/chat", server.port);
    let (received, close) = converse(&url, &inner.proxy(), &["one", "two"], 2);
    assert_eq!(received, ["one", "two"], "{close}");
    // Both proxies relayed it as a WebSocket.
    inner.flow_line("closed by client: 1000");
    outer.flow_line("closed by client: 1000");
}
