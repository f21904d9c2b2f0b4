//! Every phase has a deadline, through the real `flowgate` binary: slow and silent
//! clients (after accept, after CONNECT, mid-ClientHello, mid-handshake, mid-head,
//! mid-body, idle HTTP/2, a client that reads nothing) and hostile upstreams (silent, a
//! stalled body, one that reads no request, a silent upstream proxy) are cut off within
//! their deadline + 1 s while a normal client's requests go on (tests/e2e/py/deadlines.py
//! drives them all at once). Also `max_connections`, `max_handshakes`, and slowhttptest's
//! slowloris, slow-body and slow-read attacks with 2,100 connections at once, and
//! `buffer_memory_limit` under 200 concurrent 8 MiB uploads that a plugin buffers.

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use flowgate_tests::plugins::REWRITE_BODY;
use serde_json::Value;
use support::*;

/// Debug logs of the network layer, where the deadlines that end a connection say so.
const LOG: (&str, &str) = ("FLOWGATE_LOG", "warn,flowgate_net=debug");

fn phases(fg: &Flowgate, origin: &Origin) -> Value {
    let out = Command::new(python())
        .arg(script("deadlines.py"))
        .arg(fg.port.to_string())
        .arg(origin.addr.port().to_string())
        .output()
        .expect("deadlines.py runs");
    assert!(out.status.success(), "deadlines.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Polls `check` until it holds, for at most `limit`.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

#[test]
fn slow_and_silent_peers_are_cut_off_at_every_phase_while_others_go_on() {
    let origin = Origin::start(false);
    let fg = Flowgate::start_with(
        confdir(),
        &[LOG],
        &[
            "--set",
            "header_read_timeout=1s",
            "--set",
            "body_read_timeout=1s",
            "--set",
            "send_timeout=1s",
            "--set",
            "upstream_timeout=1s",
            "--set",
            "http2_idle_timeout=1s",
            "--set",
            "server_first_timeout=500ms",
        ],
    );
    let report = phases(&fg, &origin);
    eprintln!("{report:#}");
    let deadline = 1.0;
    let phase = |name: &str| -> &Value { &report[name] };
    let after = |name: &str| phase(name)["after"].as_f64().unwrap_or_else(|| panic!("{name}: {}", phase(name)));
    // The client side: each closed within its deadline + 1 s (and not before it).
    for name in ["silent", "connect_silent", "half_hello", "mid_handshake", "mid_head", "mid_body", "idle_h2"] {
        assert_eq!(phase(name)["outcome"], "closed", "{name}: {}", phase(name));
        let took = after(name);
        assert!(took >= deadline * 0.7 && took <= deadline + 1.0, "{name} closed after {took} s: {}", phase(name));
    }
    assert_eq!(phase("idle_h2")["goaway"], true, "an idle HTTP/2 connection gets GOAWAY: {}", phase("idle_h2"));
    // The upstream side: a silent upstream and one that reads no request are answered
    // 504; one that stalls its body has the client's connection closed mid-body.
    for name in ["upstream_silent", "upstream_reads_nothing"] {
        assert!(
            phase(name)["first"].as_str().is_some_and(|f| f.starts_with("HTTP/1.1 504")),
            "{name}: {}",
            phase(name)
        );
        let took = after(name);
        assert!(took >= deadline * 0.9 && took <= deadline + 1.0, "{name} answered after {took} s");
    }
    let stalled = phase("upstream_stalls_body");
    assert!(stalled["first"].as_str().is_some_and(|f| f.starts_with("HTTP/1.1 200")), "{stalled}");
    assert_eq!(stalled["outcome"], "closed", "{stalled}");
    assert!(stalled["bytes"].as_u64().is_some_and(|n| n < 1000), "the body was cut short: {stalled}");
    assert!(after("upstream_stalls_body") <= deadline + 1.0, "{stalled}");
    // The client that read nothing of a 500 MB response was cut off by send_timeout.
    assert!(
        within(Duration::from_secs(5), || fg.count_logs("(send_timeout)") > 0),
        "no send_timeout for a client that reads nothing"
    );
    // Meanwhile a normal client's requests went on, each quickly.
    let normal = &report["normal"];
    assert!(normal["failures"].as_array().is_some_and(Vec::is_empty), "{normal}");
    assert!(normal["ok"].as_u64().is_some_and(|n| n >= 10), "{normal}");
    assert!(normal["slowest"].as_f64().is_some_and(|s| s < 1.0), "{normal}");
    // Each upstream stall is recorded as the flow's error, naming its option.
    let line = fg.flow_line("upstream_timeout");
    assert!(line.contains("504") || line.contains("error"), "{line}");
}

#[test]
fn a_silent_upstream_proxy_is_answered_504_after_connect_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        // Accepts and says nothing.
        let (conn, _) = silent.accept().expect("accept");
        std::thread::sleep(Duration::from_secs(5));
        drop(conn);
    });
    let mode = format!("upstream:http://127.0.0.1:{port}");
    let fg = Flowgate::start(&["--mode", &mode, "--set", "connect_timeout=1s", "-k"]);
    let start = Instant::now();
    let reply = curl(&["-s", "-k", "-x", &fg.proxy(), "https://example.test/"]);
    let took = start.elapsed();
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "answered after {took:?}");
    drop(held);
}

#[test]
fn max_connections_closes_one_more_at_once_and_recovers() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["--set", "max_connections=3"]);
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", fg.port)).expect("connect")).collect();
    // Accepted in order: wait until the three are served (a request on each works).
    let get = |stream: &mut TcpStream, path: &str| -> String {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let request = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("http", path));
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut idle = idle;
    for stream in &mut idle {
        assert!(get(stream, "/held").starts_with("HTTP/1.1 200"));
    }
    let start = Instant::now();
    let mut extra = TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    let refused = get(&mut extra, "/extra");
    assert!(refused.is_empty(), "a fourth connection is closed, got {refused:?}");
    assert!(start.elapsed() < Duration::from_secs(2), "closed at once, not after a timeout");
    assert!(within(Duration::from_secs(5), || fg.count_logs("max_connections") >= 1), "the refusal is logged");
    drop(idle.pop());
    assert!(
        within(Duration::from_secs(5), || {
            let mut again = TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
            get(&mut again, "/again").starts_with("HTTP/1.1 200")
        }),
        "a slot freed by a closed connection is used again"
    );
}

#[test]
fn max_handshakes_makes_a_second_handshake_wait_for_the_first() {
    let tls_origin = Origin::start(true);
    let fg = Flowgate::start(&["--set", "max_handshakes=1", "--set", "header_read_timeout=2s", "-k"]);
    // A client that sends its ClientHello, reads flowgate's flight, and stops: it holds
    // the one handshake slot until header_read_timeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    stalled.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stalled, "CONNECT localhost:{0} HTTP/1.1\r\nHost: localhost:{0}\r\n\r\n", tls_origin.addr.port())
        .expect("write");
    let mut head = [0u8; 39];
    stalled.read_exact(&mut head).expect("CONNECT answer");
    let hello = Command::new(python())
        .args(["-c", "import ssl;i,o=ssl.MemoryBIO(),ssl.MemoryBIO();t=ssl.create_default_context().wrap_bio(i,o,server_hostname='localhost')\ntry: t.do_handshake()\nexcept ssl.SSLWantReadError: pass\nimport sys;sys.stdout.buffer.write(o.read())"])
        .output()
        .expect("python");
    stalled.write_all(&hello.stdout).expect("hello");
    let mut flight = [0u8; 5];
    stalled.read_exact(&mut flight).expect("flowgate's ServerHello");
    assert_eq!(flight[0], 22, "a TLS handshake record");
    let held_since = Instant::now();
    // The second handshake's own deadline (header_read_timeout, counted from its start,
    // the wait for the slot included) ends this much after the stalled one frees the
    // slot: room for a handshake on a machine the other tests load.
    std::thread::sleep(Duration::from_millis(300));
    let reply = curl(&["-s", "-k", "-x", &fg.proxy(), &tls_origin.url("https", "/second")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let waited = held_since.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the second handshake waited for the slot the stalled one held ({waited:?})"
    );
}

#[test]
fn slowhttptest_slowloris_slow_body_and_slow_read_leave_rss_bounded_and_requests_served() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&[
        "--set",
        "header_read_timeout=2s",
        "--set",
        "body_read_timeout=1s",
        "--set",
        "send_timeout=2s",
        "-q",
    ]);
    let before = peak_rss_kib(fg.child.id());
    let proxy = format!("127.0.0.1:{}", fg.port);
    let attacks: Vec<std::process::Child> = [
        ("-H", origin.url("http", "/")),
        ("-B", origin.url("http", "/upload")),
        ("-X", origin.url("http", "/big/50000000")),
    ]
    .iter()
    .map(|(mode, url)| {
        Command::new("slowhttptest")
            .args([
                *mode, "-c", "700", "-r", "700", "-i", "2", "-l", "8", "-x", "24", "-p", "2", "-d", &proxy, "-u", url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("slowhttptest runs (Debian package slowhttptest)")
    })
    .collect();
    // Normal requests go on through the attack.
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(7) {
        let reply = curl(&["-s", "-m", "5", "-x", &fg.proxy(), &origin.url("http", "/during")]);
        assert_eq!(reply.status, 200, "a normal request during the attack: {reply:?}");
        served += 1;
    }
    for mut attack in attacks {
        let status = attack.wait().expect("slowhttptest ends");
        assert!(status.success(), "slowhttptest: {status}");
    }
    let peak = peak_rss_kib(fg.child.id());
    eprintln!("{served} normal requests during the attack; proxy peak RSS {peak} KiB (before {before} KiB)");
    assert!(served >= 5, "{served}");
    assert!(peak < 512 * 1024, "peak RSS {peak} KiB");
    // The attackers' connections were cut off by their deadlines.
    let reply = curl(&["-s", "-m", "5", "-x", &fg.proxy(), &origin.url("http", "/after")]);
    assert_eq!(reply.status, 200);
}

#[test]
fn buffered_uploads_stay_inside_buffer_memory_limit() {
    // 200 uploads of 8 MiB at once, each buffered for a plugin (rewrite-body on requests):
    // 1.6 GiB if all were held. With buffer_memory_limit=64MiB a declared length is
    // reserved before the body is read, so at most 8 are buffered at a time; the rest are
    // answered 503 at once (and recorded, with the count), and peak RSS stays bounded.
    let rewrite = manifest(
        REWRITE_BODY,
        "name = \"rewrite-body\"\n[limits]\nmax_body_bytes = \"16MiB\"\ncpu_per_second = \"100s\"\nhook_timeout_ms = 5000\n\
         [config]\npattern = \"never-matches\"\nside = \"request\"\n",
    );
    let fg = Flowgate::start(&["-s", &rewrite, "--set", "buffer_memory_limit=64MiB", "--set", "upstream_timeout=60s"]);
    let out = Command::new(python())
        .arg(script("uploads.py"))
        .args([fg.port.to_string(), "200".into(), (8u64 << 20).to_string()])
        .output()
        .expect("uploads.py runs");
    assert!(out.status.success(), "uploads.py: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("uploads.py prints JSON");
    eprintln!("{report}");
    let ok = report["statuses"]["200"].as_u64().unwrap_or(0);
    let refused = report["statuses"]["503"].as_u64().unwrap_or(0);
    assert_eq!(ok + refused, 200, "every upload got 200 or 503: {report}");
    assert_eq!(report["error_count"], 0, "{report}");
    assert!(ok >= 8, "uploads within the budget went through: {report}");
    assert!(refused > 0, "uploads past the budget were refused: {report}");
    assert_eq!(report["complete"].as_u64(), Some(ok), "each accepted upload reached the origin whole: {report}");
    // Each refusal is a recorded flow saying why, with the running count.
    let line = fg.flow_line("would exceed buffer_memory_limit");
    assert!(line.contains("refused so far"), "{line}");
    let peak = peak_rss_kib(fg.child.id());
    eprintln!("peak RSS with 200 concurrent 8 MiB buffered uploads: {peak} KiB");
    assert!(peak < 768 * 1024, "peak RSS {peak} KiB");
}
