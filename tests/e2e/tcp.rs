//! Raw TCP through the real `flowgate` binary: bytes inside a CONNECT tunnel that are
//! neither TLS nor HTTP become a TCP flow relayed both ways (SSH-like banners, binary
//! greetings, a server that speaks first), and a tunnel where nobody speaks is closed.
//! The servers are Python programs (tests/e2e/py/tcp_server.py); curl drives one case.
//! A plugin exporting the `tcp` group (tcp-rewrite) sees and changes the messages.

#[path = "support.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_tests::plugins::*;
use support::*;

/// A Python TCP server in one of its modes, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(mode: &str) -> Server {
        let mut child = Command::new(python())
            .arg(script("tcp_server.py"))
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", python().display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("port line");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("tcp_server.py printed {line:?}"));
        Server { child, port, stdout }
    }

    /// Waits until the server has accepted a connection (and sent its banner, if any).
    fn accepted(&mut self) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("tcp_server.py reports connections");
        assert_eq!(line.trim(), "accepted");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a CONNECT tunnel through flowgate to 127.0.0.1:`port`.
fn tunnel(fg: &Flowgate, port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", fg.port)).expect("connect to flowgate");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").expect("CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("CONNECT reply"), 1, "flowgate closed during CONNECT");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered {head}");
    stream
}

/// Every byte value, several times: nothing in the relay may be text-only.
fn binary_payload() -> Vec<u8> {
    (0..4096u32).map(|i| (i % 256) as u8).collect()
}

fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("relayed bytes");
    buf
}

#[test]
fn a_server_that_speaks_first_is_heard_through_connect() {
    let server = Server::start("server-first");
    let fg = Flowgate::start(&["--set", "server_first_timeout=200ms"]);
    let mut stream = tunnel(&fg, server.port);
    // The client says nothing: flowgate connects upstream and the banner arrives.
    let banner = b"SSH-2.0-OpenSSH_9.2 flowgate-test\r\n";
    assert_eq!(read_exactly(&mut stream, banner.len()), banner);
    // Then both ways: the client's own banner and binary, echoed back intact.
    let mut sent = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
    sent.extend_from_slice(&binary_payload());
    stream.write_all(&sent).expect("write");
    assert_eq!(read_exactly(&mut stream, sent.len()), sent);
    // A half-close reaches the server, whose close reaches the client.
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty(), "{rest:?}");
    let line = fg.flow_line(": tcp 127.0.0.1:");
    let expected =
        format!("tcp 127.0.0.1:{} >> {} << {}", server.port, human(sent.len()), human(sent.len() + banner.len()));
    assert!(line.contains(&expected), "{line} lacks {expected}");
    assert!(!line.contains("error"), "{line}");
}

#[test]
fn a_client_that_speaks_first_with_unknown_bytes_becomes_a_tcp_flow() {
    let server = Server::start("client-first");
    let fg = Flowgate::start(&[]);
    for greeting in
        [b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), [b"\x00\x01\x02binary".as_slice(), &binary_payload()].concat()]
    {
        let mut stream = tunnel(&fg, server.port);
        stream.write_all(&greeting).expect("write");
        assert_eq!(read_exactly(&mut stream, greeting.len()), greeting);
        stream.shutdown(Shutdown::Write).expect("half-close");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("EOF");
        let expected = format!(">> {} << {}", human(greeting.len()), human(greeting.len()));
        fg.flow_line(&expected);
    }
}

#[test]
fn curl_telnet_through_a_proxy_tunnel_is_relayed() {
    // curl's telnet client tunnels with CONNECT (-p) and relays stdin and stdout (-N:
    // unbuffered). It sends nothing until its stdin has data, so flowgate connects
    // upstream first and the server's banner is heard; curl prints it once it next wakes.
    let mut server = Server::start("server-first");
    let fg = Flowgate::start(&["--set", "server_first_timeout=200ms"]);
    let mut curl = Command::new("curl")
        .args(["-N", "-s", "-S", "--max-time", "10", "-p", "-x", &fg.proxy()])
        .arg(format!("telnet://127.0.0.1:{}", server.port))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    server.accepted();
    let mut stdin = curl.stdin.take().expect("piped stdin");
    stdin.write_all(b"hello from curl\n").expect("write");
    let mut stdout = BufReader::new(curl.stdout.take().expect("piped stdout"));
    let mut banner = String::new();
    stdout.read_line(&mut banner).expect("banner");
    assert_eq!(banner, "SSH-2.0-OpenSSH_9.2 flowgate-test\r\n");
    drop(stdin);
    let _ = curl.kill();
    let _ = curl.wait();
    // What curl sent reached the server (the echo may or may not beat curl's end).
    fg.flow_line(&format!("tcp 127.0.0.1:{} >> 16b << ", server.port));
}

#[test]
fn a_tunnel_where_nobody_speaks_is_closed_after_header_read_timeout() {
    let server = Server::start("silent");
    let fg = Flowgate::start(&["--set", "header_read_timeout=1s", "--set", "server_first_timeout=100ms"]);
    let mut stream = tunnel(&fg, server.port);
    let began = Instant::now();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("flowgate closes the tunnel");
    let waited = began.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(8), "closed after {waited:?}");
    let line = fg.flow_line("neither side sent anything");
    assert!(line.contains("header_read_timeout"), "{line}");
}

#[test]
fn rawtcp_off_closes_tunnels_with_unknown_bytes() {
    let server = Server::start("client-first");
    let fg = Flowgate::start(&["--set", "rawtcp=false"]);
    let mut stream = tunnel(&fg, server.port);
    stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").expect("write");
    let mut rest = Vec::new();
    // Closed, nothing relayed (a reset is a close too).
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!fg.lines.lock().expect("lines").iter().any(|l| l.contains(": tcp ")));
}

#[test]
fn a_tcp_plugin_rewrites_and_kills_messages() {
    let mut server = Server::start("server-first");
    let config = "[config]\nfrom = \"OpenSSH\"\nto = \"FlowSSH\"\nkill_on = \"QUIT\"\nnotice = \"NOTICE\\r\\n\"\n";
    let plugin = manifest(TCP_REWRITE, &format!("name = \"tcp-rewrite\"\n{config}"));
    let fg = Flowgate::start(&["-s", &plugin, "--set", "server_first_timeout=200ms"]);
    let mut stream = tunnel(&fg, server.port);
    server.accepted();
    // The plugin's notice (injected at tcp-start) comes before anything the server said.
    assert_eq!(read_exactly(&mut stream, 8), b"NOTICE\r\n");
    // The server's banner, rewritten by the plugin (the same length here).
    let banner = b"SSH-2.0-FlowSSH_9.2 flowgate-test\r\n";
    assert_eq!(read_exactly(&mut stream, banner.len()), banner);
    // The client's side is not rewritten (side = server), but the echo coming back is.
    stream.write_all(b"OpenSSH\n").expect("write");
    assert_eq!(read_exactly(&mut stream, 8), b"FlowSSH\n");
    // kill_on closes the flow; the plugin's words are on the record.
    stream.write_all(b"QUIT\r\n").expect("write");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    let line = fg.flow_line("killed by a plugin");
    assert!(line.contains(&format!("tcp 127.0.0.1:{} >> 8b << 51b", server.port)), "{line}");
}

#[test]
fn an_http2_connect_stream_carries_a_raw_tcp_flow() {
    // HTTP/2 with prior knowledge to flowgate, CONNECT on a stream (RFC 9113 section 8.5):
    // the stream runs a stack of its own beside the connection's other streams.
    let server = Server::start("server-first");
    let fg = Flowgate::start(&["--set", "server_first_timeout=200ms"]);
    let out = Command::new(python())
        .arg(script("h2_connect.py"))
        .args(["--proxy", &format!("127.0.0.1:{}", fg.port), "--target", &format!("127.0.0.1:{}", server.port)])
        .args(["--send", "hello over h2\n", "--expect-banner", "SSH-2.0-"])
        .output()
        .expect("h2_connect.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON");
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["received"], "SSH-2.0-OpenSSH_9.2 flowgate-test\r\nhello over h2\n", "{report}");
    assert_eq!(report["ended"], true, "{report}");
    fg.flow_line(&format!("tcp 127.0.0.1:{} >> 14b << 49b", server.port));
}

/// Sizes as flowgate prints them.
fn human(n: usize) -> String {
    match n {
        0..1024 => format!("{n}b"),
        _ => format!("{:.1}k", n as f64 / 1024.0),
    }
}
