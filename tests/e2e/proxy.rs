//! The real `flowgate` binary driven by curl: regular, reverse and upstream modes, HTTPS
//! interception with the generated CA, TLS to the proxy itself (a secure web proxy),
//! plugins changing real traffic, hostile plugins, dead upstreams, malformed requests and
//! CLI errors.

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_tests::plugins::*;
use support::*;

// ---------------------------------------------------------------------------------------

#[test]
fn regular_mode_http_and_https_with_plugins() {
    let origin = Origin::start(false);
    let tls_origin = Origin::start(true);
    let add = manifest(ADD_HEADER, "[config]\nrequest = \"X-Via-Flowgate: yes\"\nresponse = \"X-Flowgate: 1\"\n");
    let rewrite = manifest(REWRITE_BODY, "[config]\npattern = \"Example Domain\"\nreplacement = \"Flowgate Domain\"\n");
    let fg = Flowgate::start(&["-k", "-s", &add, "-s", &rewrite, "-s", REQUEST_ID]);

    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/plain?q=1")]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("<h1>Flowgate Domain</h1>"), "{}", reply.body);
    assert!(reply.body.contains("x-via-flowgate: yes"), "the origin saw the added header: {}", reply.body);
    assert!(reply.body.contains("x-request-id: "), "{}", reply.body);
    assert!(reply.headers.contains("x-flowgate: 1"), "{}", reply.headers);
    assert!(reply.headers.contains("x-origin: 1"));
    let line = fg.flow_line("/plain?q=1");
    assert!(line.contains(&format!("GET {} << 200 OK", origin.url("http", "/plain?q=1"))), "{line}");

    let ca = fg.ca();
    let reply =
        curl(&["--cacert", ca.to_str().expect("utf-8 path"), "-x", &fg.proxy(), &tls_origin.url("https", "/secure")]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("<h1>Flowgate Domain</h1>"), "{}", reply.body);
    assert!(reply.body.contains("x-via-flowgate: yes"), "{}", reply.body);
    assert!(reply.headers.contains("x-flowgate: 1"));
    fg.flow_line(&format!("GET {} << 200 OK", tls_origin.url("https", "/secure")));
    assert_eq!(tls_origin.seen.paths(), ["/secure"]);

    // Without trusting the CA, curl refuses the minted certificate.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-x", &fg.proxy(), &tls_origin.url("https", "/untrusted")])
        .output()
        .expect("curl runs");
    assert!(!out.status.success(), "curl must not trust flowgate's CA by default");
}

#[test]
fn upstream_certificates_are_verified_unless_k() {
    let tls_origin = Origin::start(true);
    let fg = Flowgate::start(&[]);
    let ca = fg.ca();
    let reply = curl(&["--cacert", ca.to_str().expect("utf-8"), "-x", &fg.proxy(), &tls_origin.url("https", "/")]);
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("TLS handshake with localhost"), "{}", reply.body);
    assert!(tls_origin.seen.paths().is_empty());
    fg.flow_line("<< error: TLS handshake with localhost");
}

#[test]
fn block_list_answers_locally_and_never_contacts_the_upstream() {
    let origin = Origin::start(false);
    let block = manifest(BLOCK_LIST, "[config]\npaths = \"/ads\"\n");
    let fg = Flowgate::start(&["-s", &block]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/ads/banner.js")]);
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, "blocked by flowgate\n");
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/news")]);
    assert_eq!(reply.status, 200);
    assert_eq!(origin.seen.paths(), ["/news"], "the blocked request never reached the origin");
    assert!(fg.flow_line("/ads/banner.js").contains("<< 403 Forbidden 20b (local)"));
}

#[test]
fn reverse_mode() {
    let origin = Origin::start(false);
    let fg =
        Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", origin.addr.port()), "-s", REQUEST_ID]);
    let reply = curl(&[&format!("http://127.0.0.1:{}/through-reverse", fg.port)]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("path: /through-reverse"), "{}", reply.body);
    assert!(
        reply.body.contains(&format!("host: 127.0.0.1:{}", origin.addr.port())),
        "Host is the upstream's: {}",
        reply.body
    );

    // Reverse mode to an HTTPS upstream, with TLS from the client too.
    let tls_origin = Origin::start(true);
    let fg = Flowgate::start(&["-k", "--mode", &format!("reverse:https://localhost:{}", tls_origin.addr.port())]);
    let ca = fg.ca();
    let reply = curl(&["--cacert", ca.to_str().expect("utf-8"), &format!("https://localhost:{}/tls-reverse", fg.port)]);
    assert_eq!(reply.status, 200);
    assert_eq!(tls_origin.seen.paths(), ["/tls-reverse"]);
}

#[test]
fn upstream_mode_chains_two_flowgates() {
    let origin = Origin::start(false);
    let tls_origin = Origin::start(true);
    let inner = Flowgate::start(&["-k", "-s", REQUEST_ID]);
    let outer = Flowgate::start(&["-k", "--mode", &format!("upstream:http://127.0.0.1:{}", inner.port)]);
    let reply = curl(&["-x", &outer.proxy(), &origin.url("http", "/chained")]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("x-request-id"), "the inner flowgate's plugin ran: {}", reply.body);
    inner.flow_line("/chained");
    outer.flow_line("/chained");

    let ca = outer.ca();
    let reply = curl(&[
        "--cacert",
        ca.to_str().expect("utf-8"),
        "-x",
        &outer.proxy(),
        &tls_origin.url("https", "/chained-tls"),
    ]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("x-request-id"), "{}", reply.body);
    inner.flow_line("/chained-tls");
}

#[test]
fn upstream_https_speaks_tls_to_a_secure_web_proxy() {
    // `upstream:https://`: TLS to the upstream proxy itself — mitmdump, which takes TLS on
    // its port as a secure web proxy — verified like any upstream (its CA through
    // ssl_verify_upstream_trusted_ca). Plain HTTP goes in absolute form inside that TLS,
    // HTTPS through a CONNECT tunnel inside it (TLS in TLS).
    let origin = Origin::start(false);
    let tls_origin = Origin::start(true);
    let mitm = Mitmdump::start(&["--ssl-insecure"]);
    let mitm_ca = mitm.ca().display().to_string();
    let mode = format!("upstream:https://localhost:{}", mitm.port);
    let fg = Flowgate::start(&["--mode", &mode, "--set", &format!("ssl_verify_upstream_trusted_ca={mitm_ca}")]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/secure-proxy")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("path: /secure-proxy"), "{}", reply.body);
    let ca = fg.ca();
    let reply = curl(&[
        "--cacert",
        ca.to_str().expect("utf-8"),
        "-x",
        &fg.proxy(),
        &tls_origin.url("https", "/secure-proxy-tls"),
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(origin.seen.paths(), ["/secure-proxy"]);
    assert_eq!(tls_origin.seen.paths(), ["/secure-proxy-tls"]);
    drop(fg);

    // Without its CA the proxy's certificate is refused: nothing goes through it.
    let fg = Flowgate::start(&["--mode", &mode]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/unverified")]);
    assert_eq!(reply.status, 502, "{reply:?}");
    let line = fg.flow_line("/unverified");
    assert!(line.contains("TLS handshake with localhost:"), "{line}");
    assert_eq!(origin.seen.paths(), ["/secure-proxy"]);
}

/// curl through flowgate as a secure web proxy (`--proxy https://...`, trusting
/// flowgate's CA for the proxy's own certificate): the reply, as [`curl`] reads it.
fn curl_via_secure_proxy(fg: &Flowgate, proxy_host: &str, args: &[&str]) -> Reply {
    let ca = fg.ca();
    let proxy = format!("https://{proxy_host}:{}", fg.port);
    let mut all = vec!["--proxy", &proxy, "--proxy-cacert", ca.to_str().expect("utf-8")];
    all.extend_from_slice(args);
    curl(&all)
}

#[test]
fn curl_speaks_tls_to_flowgate_as_a_secure_web_proxy() {
    // TLS to flowgate's own port: terminated with a certificate from its CA (for the
    // SNI, or for the address connected to when there is none), then the explicit proxy:
    // plain HTTP in absolute form, HTTPS through a CONNECT inside it (TLS in TLS, the
    // inner one intercepted as always).
    let origin = Origin::start(false);
    let tls_origin = Origin::start(true);
    let fg = Flowgate::start(&["-k", "-s", REQUEST_ID]);
    let ca = fg.ca();
    let ca = ca.to_str().expect("utf-8");
    // By IP: curl sends no SNI, so the certificate must name 127.0.0.1.
    let reply = curl_via_secure_proxy(&fg, "127.0.0.1", &[&origin.url("http", "/via-secure-proxy")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-request-id: "), "the plugin ran: {}", reply.body);
    let line = fg.flow_line("/via-secure-proxy");
    assert!(line.contains(&format!("GET {} << 200 OK", origin.url("http", "/via-secure-proxy"))), "{line}");
    // By name (SNI localhost), and CONNECT to an HTTPS origin inside.
    let reply = curl_via_secure_proxy(&fg, "localhost", &["--cacert", ca, &tls_origin.url("https", "/tls-in-tls")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-request-id: "), "decrypted inside the tunnel: {}", reply.body);
    fg.flow_line(&format!("GET {} << 200 OK", tls_origin.url("https", "/tls-in-tls")));
    assert_eq!(origin.seen.paths(), ["/via-secure-proxy"]);
    assert_eq!(tls_origin.seen.paths(), ["/tls-in-tls"]);
    // The proxy's certificate is flowgate's: curl refuses it without that CA.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--proxy", &format!("https://127.0.0.1:{}", fg.port)])
        .arg(origin.url("http", "/untrusted-proxy"))
        .output()
        .expect("curl runs");
    assert!(!out.status.success(), "curl must not trust the proxy's certificate by default");
    assert_eq!(origin.seen.paths(), ["/via-secure-proxy"]);

    // Upstream mode takes TLS to its port too, and hands the requests to its upstream.
    let outer = Flowgate::start(&["-k", "--mode", &format!("upstream:http://127.0.0.1:{}", fg.port)]);
    let reply = curl_via_secure_proxy(&outer, "127.0.0.1", &[&origin.url("http", "/secure-upstream")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("x-request-id: "), "the inner flowgate's plugin ran: {}", reply.body);
    outer.flow_line("/secure-upstream");
    fg.flow_line("/secure-upstream");
    let outer_ca = outer.ca();
    let reply = curl_via_secure_proxy(
        &outer,
        "localhost",
        &["--cacert", outer_ca.to_str().expect("utf-8"), &tls_origin.url("https", "/secure-upstream-tls")],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(tls_origin.seen.paths(), ["/tls-in-tls", "/secure-upstream-tls"]);
}

#[test]
fn tls_clienthello_hooks_see_tls_to_the_proxy_itself() {
    // The plugin passes TLS for `localhost` through: asked about the proxy's own TLS (SNI
    // localhost), its verdict leaves flowgate nowhere to relay to, so the connection
    // closes; TLS by IP (no SNI) it lets flowgate terminate.
    let origin = Origin::start(false);
    let passthrough = manifest(TLS_PASSTHROUGH, "[config]\nhosts = \"localhost\"\n");
    let fg = Flowgate::start(&["-s", &passthrough]);
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--proxy", &format!("https://localhost:{}", fg.port), "--proxy-cacert"])
        .arg(fg.ca())
        .arg(origin.url("http", "/passed-to-nowhere"))
        .output()
        .expect("curl runs");
    assert!(!out.status.success(), "the plugin's passthrough closes TLS to the proxy itself");
    assert!(origin.seen.paths().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.count_logs("passthrough localhost") == 0 {
        assert!(Instant::now() < deadline, "the plugin saw the ClientHello: {:?}", fg.logs.lock().expect("logs"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let reply = curl_via_secure_proxy(&fg, "127.0.0.1", &[&origin.url("http", "/terminated")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(origin.seen.paths(), ["/terminated"]);
}

#[test]
fn dead_upstream_gives_502_and_an_error_record() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let fg = Flowgate::start(&["-s", REQUEST_ID]);
    let reply = curl(&["-x", &fg.proxy(), &format!("http://127.0.0.1:{port}/gone")]);
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("cannot connect to 127.0.0.1"), "{}", reply.body);
    let line = fg.flow_line("/gone");
    assert!(line.contains("<< error: cannot connect"), "{line}");
    // Other flows go on.
    let origin = Origin::start(false);
    assert_eq!(curl(&["-x", &fg.proxy(), &origin.url("http", "/alive")]).status, 200);
}

#[test]
fn malformed_and_smuggling_requests_never_reach_the_upstream() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&[]);
    let url = origin.url("http", "");
    let cases: Vec<(&str, String)> = vec![
        ("obs-fold", format!("GET {url}/a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n")),
        (
            "two content-lengths",
            format!("POST {url}/b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ),
        ("bad header name", format!("GET {url}/c HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n")),
        ("not HTTP", "HELLO\r\n\r\n".to_owned()),
        ("TE not chunked", format!("POST {url}/d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n")),
    ];
    for (what, request) in &cases {
        let reply = raw(fg.port, request.as_bytes());
        assert!(reply.starts_with("HTTP/1.1 400"), "{what}: {reply:?}");
    }
    // Each is told in the log by default (as mitmdump tells a bad request line): no flow
    // records it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.count_logs("refused request") < cases.len() {
        assert!(Instant::now() < deadline, "{:?}", fg.logs.lock().expect("logs"));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fg.count_logs("refused request: malformed request head: invalid token (answered 400)"), 1, "not HTTP");
    // CL + TE (request smuggling): refused before anything is forwarded.
    let smuggle = format!(
        "POST {url}/e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET {url}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let reply = raw(fg.port, smuggle.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    // A bad chunk size inside a body aborts it: the origin never gets a complete request.
    let bad_chunk =
        format!("POST {url}/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nxyz\r\n");
    let _ = raw(fg.port, bad_chunk.as_bytes());
    let paths = origin.seen.paths();
    assert!(paths.is_empty(), "nothing reached the origin complete: {paths:?}");
}

#[test]
fn hostile_plugins_do_not_stall_traffic() {
    let origin = Origin::start(false);
    // A crash budget above the flow count: no trap flow meets an open circuit breaker
    // (which depends on how the concurrent flows interleave); a CPU budget above the four
    // spins, so every spinning flow meets the deadline rather than the budget.
    let spin = manifest(SPIN_FOREVER, "name = \"spin\"\n[limits]\nhook_timeout_ms = 100\ncpu_per_second = \"10s\"\n");
    let trap = manifest(TRAP, "name = \"trap\"\n[limits]\ncrash_budget = 100\n");
    let fg = Flowgate::start(&["-s", &spin, "-s", &trap]);
    let start = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let proxy = fg.proxy();
            let url = origin.url("http", &format!("/{}/{i}", if i % 2 == 0 { "trap" } else { "ok" }));
            std::thread::spawn(move || curl(&["-x", &proxy, &url]))
        })
        .collect();
    for h in handles {
        let reply = h.join().expect("curl thread");
        assert_eq!(reply.status, 200, "fail-open: traffic goes on");
    }
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    let line = fg.flow_line("/trap/0");
    assert!(line.contains("plugin spin failed in request-headers: deadline exceeded"), "{line}");
    assert!(line.contains("plugin trap failed in request-headers: trap"), "{line}");
    assert!(!fg.flow_line("/ok/1").contains("plugin trap failed"));
}

#[test]
fn a_plugin_failing_in_a_streamed_request_body_decides_the_outcome() {
    // A fail-closed plugin that traps in request-body-chunk: the flow is recorded as that
    // plugin's failure (502), not as the upstream's reaction to the body it cut off, and
    // nothing reaches the origin complete. Fail-open, the body goes through unchanged.
    let origin = Origin::start(false);
    let closed = manifest(
        TRAP,
        "name = \"trap\"\nfailure = \"fail-closed\"\n[limits]\ncrash_budget = 100\n[config]\nhook = \"request-body-chunk\"\n",
    );
    let fg = Flowgate::start(&["-s", &closed]);
    let body = "x".repeat(100_000);
    let reply = curl(&["-x", &fg.proxy(), "--data-binary", &body, &origin.url("http", "/trap/closed")]);
    assert_eq!(reply.status, 502, "{}", reply.body);
    let line = fg.flow_line("/trap/closed");
    assert!(line.contains("plugin trap failed in request-body-chunk: trap"), "{line}");
    assert!(!line.contains("upstream failed"), "{line}");
    drop(fg);

    let open =
        manifest(TRAP, "name = \"trap\"\n[limits]\ncrash_budget = 100\n[config]\nhook = \"request-body-chunk\"\n");
    let fg = Flowgate::start(&["-s", &open]);
    let reply = curl(&["-x", &fg.proxy(), "--data-binary", &body, &origin.url("http", "/trap/open")]);
    assert_eq!(reply.status, 200, "fail-open: the body goes on");
    assert!(fg.flow_line("/trap/open").contains("plugin trap failed in request-body-chunk: trap"));
    assert!(reply.body.contains(&format!("body: {body}\n")), "the whole body arrived");
    assert_eq!(origin.seen.paths(), vec!["/trap/open".to_owned()], "the cut-off upload never arrived complete");
}

#[test]
fn ca_files_commands_and_cert_host() {
    let dir = confdir();
    let fg = Flowgate::start_in(dir.clone(), &[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("flowgate-ca.pem")).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pem = std::fs::read_to_string(fg.ca()).expect("CA cert");
    let reply = curl(&["-x", &fg.proxy(), "http://flowgate.it/cert/pem"]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, pem);
    let page = curl(&["-x", &fg.proxy(), "http://mitm.it/"]);
    assert!(page.body.contains("Install flowgate's CA certificate"));
    drop(fg);

    let bin = env!("CARGO_BIN_EXE_flowgate");
    let out = Command::new(bin).args(["--confdir"]).arg(&dir).args(["ca", "export"]).output().expect("runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), pem);
    let out = Command::new(bin).args(["--confdir"]).arg(&dir).args(["ca", "export", "--der"]).output().expect("runs");
    assert_eq!(out.stdout, std::fs::read(dir.join("flowgate-ca-cert.cer")).expect("der"));
    let out = Command::new(bin).args(["--confdir"]).arg(&dir).args(["ca", "path"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("flowgate-ca-cert.pem"));
    // PKCS#12: openssl reads the same certificate back.
    let p12 = dir.join("export.p12");
    let out = Command::new(bin)
        .args(["--confdir"])
        .arg(&dir)
        .args(["ca", "export", "--p12", "--out"])
        .arg(&p12)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let out = Command::new("openssl")
        .args(["pkcs12", "-nokeys", "-passin", "pass:", "-in"])
        .arg(&p12)
        .output()
        .expect("openssl runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains(pem.trim()), "{}", String::from_utf8_lossy(&out.stderr));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("flowgate-ca.pem"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = Command::new(bin).args(["--confdir"]).arg(&dir).args(["ca", "path"]).output().expect("runs");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
    }
}

fn fails_with(args: &[&str], confdir: &Path, needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("--confdir")
        .arg(confdir)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

#[test]
fn cli_errors_are_clear() {
    let dir = confdir();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    fails_with(&["--listen-host", "127.0.0.1", "-p", &port], &dir, &format!("cannot listen on 127.0.0.1:{port}"));
    fails_with(&["-p", "0", "--mode", "sideways"], &dir, "invalid mode \"sideways\"");
    fails_with(&["-p", "0", "-s", "/nonexistent/plugin.wasm"], &dir, "/nonexistent/plugin.wasm");
    let bad = manifest(REQUEST_ID, "instance = \"sometimes\"\n");
    fails_with(&["-p", "0", "-s", &bad], &dir, "bad manifest");
    fails_with(&["-p", "0", "--set", "no_such_option=1"], &dir, "unknown option");
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("proc tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

#[test]
fn the_epoch_ticker_runs_only_with_plugins() {
    // Without plugins nothing needs wasm deadlines: no thread wakes every millisecond.
    let origin = Origin::start(false);
    let bare = Flowgate::start(&[]);
    let with_plugin = Flowgate::start(&["-s", REQUEST_ID]);
    for fg in [&bare, &with_plugin] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-x"])
            .arg(fg.proxy())
            .arg(origin.url("http", "/x"))
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    let ticker = |fg: &Flowgate| thread_names(fg.child.id()).iter().any(|n| n == "flowgate-epoch");
    assert!(!ticker(&bare), "{:?}", thread_names(bare.child.id()));
    assert!(ticker(&with_plugin), "{:?}", thread_names(with_plugin.child.id()));
}

#[test]
fn a_1gib_response_streams_with_flat_memory() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["-s", REQUEST_ID]);
    let before = peak_rss_kib(fg.child.id());
    let size: u64 = 1 << 30;
    let start = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "120", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-x"])
        .arg(fg.proxy())
        .arg(origin.url("http", &format!("/big/{size}")))
        .output()
        .expect("curl runs");
    let elapsed = start.elapsed();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {size}"));
    let peak = peak_rss_kib(fg.child.id());
    eprintln!(
        "1 GiB through flowgate in {elapsed:?} ({:.0} MB/s); proxy peak RSS {} KiB (before {} KiB)",
        size as f64 / elapsed.as_secs_f64() / 1e6,
        peak,
        before
    );
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB is over 64 MiB");
}

#[test]
fn slow_clients_are_cut_off() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["--set", "header_read_timeout=1", "--set", "body_read_timeout=1"]);
    // A body that stops coming.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let start = Instant::now();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        origin.url("http", "/slow-body")
    );
    stream.write_all(head.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "body cut off after {waited:?}");
    fg.flow_line("/slow-body");
    // A head that stops coming.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let start = Instant::now();
    stream.write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n", origin.url("http", "/slow")).as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "cut off after {waited:?}");
    assert!(origin.seen.paths().is_empty());
}

#[test]
fn ignore_hosts_and_plugins_pass_tls_through() {
    let tls_origin = Origin::start(true);
    for args in [
        vec!["--set".to_owned(), "ignore_hosts=^localhost:".to_owned()],
        vec!["-s".to_owned(), manifest(TLS_PASSTHROUGH, "[config]\nhosts = \"localhost\"\n")],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let fg = Flowgate::start(&args);
        // The origin's own (self-signed) certificate reaches curl: -k accepts it...
        let reply = curl(&["-k", "-x", &fg.proxy(), &tls_origin.url("https", "/passed")]);
        assert_eq!(reply.status, 200);
        // ...and flowgate's CA does not verify it, because flowgate did not terminate TLS.
        let ca = fg.ca();
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert", ca.to_str().expect("utf-8"), "-x", &fg.proxy()])
            .arg(tls_origin.url("https", "/not-ours"))
            .output()
            .expect("curl runs");
        assert!(!out.status.success(), "{args:?}: the certificate must be the origin's");
        assert!(fg.lines.lock().expect("lines").iter().all(|l| !l.contains("/passed")), "no decrypted flow");
    }
}

#[test]
fn chromium_loads_an_https_page_through_flowgate() {
    let tls_origin = Origin::start(true);
    let rewrite = manifest(REWRITE_BODY, "[config]\npattern = \"Example Domain\"\nreplacement = \"Flowgate Domain\"\n");
    let fg = Flowgate::start(&["-k", "-s", &rewrite]);
    let dom = support::chromium_dom(&fg, &tls_origin.url("https", "/page"));
    assert!(dom.contains("<h1>Flowgate Domain</h1>"), "the plugin's change is in the page: {dom}");
    fg.flow_line(&format!("GET {} << 200 OK", tls_origin.url("https", "/page")));
}

#[test]
fn trailers_in_both_directions() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&[]);
    let url = origin.url("http", "/echo");
    let request = format!(
        "POST {url} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x-req-trailer\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-req-trailer: yes\r\n\r\n"
    );
    let reply = raw(fg.port, request.as_bytes());
    assert!(reply.contains("body: hello"), "{reply}");
    assert!(reply.contains("trailer x-req-trailer: yes"), "the request trailer reached the origin: {reply}");

    let url = origin.url("http", "/trailers");
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n");
    let reply = raw(fg.port, request.as_bytes());
    let tail = reply.split("\r\n0\r\n").nth(1).unwrap_or_default().to_ascii_lowercase();
    assert!(tail.contains("x-checksum: abc"), "the response trailer reached the client: {reply:?}");
}

#[test]
fn expect_continue_head_keep_alive_and_header_limits() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["--set", "max_headers=30"]);
    // Expect: 100-continue with a body curl holds back until it is told to go on.
    let body = "x".repeat(2048);
    let reply = curl(&[
        "-x",
        &fg.proxy(),
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &body,
        &origin.url("http", "/upload"),
    ]);
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains(&format!("body: {body}")), "{}", &reply.body[..200.min(reply.body.len())]);
    // HEAD: headers only.
    let out = Command::new("curl")
        .args(["-s", "-I", "--max-time", "10", "-x", &fg.proxy(), &origin.url("http", "/head")])
        .output()
        .expect("curl runs");
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Keep-alive: the second request reuses the client connection.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} ",
            "--max-time",
            "10",
            "-x",
            &fg.proxy(),
        ])
        .arg(origin.url("http", "/ka1"))
        .arg(origin.url("http", "/ka2"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 0 ");
    // Too many header fields: 431, never forwarded.
    let mut request = format!("GET {} HTTP/1.1\r\nHost: x\r\n", origin.url("http", "/too-many"));
    for i in 0..40 {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let reply = raw(fg.port, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert!(!origin.seen.paths().contains(&"/too-many".to_owned()));
    // A head over 64 KiB: 431 (RFC 6585 section 5), never forwarded.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        origin.url("http", "/too-big"),
        "v".repeat(100 << 10)
    );
    let reply = raw(fg.port, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "{}", &reply[..reply.len().min(200)]);
    assert!(!origin.seen.paths().contains(&"/too-big".to_owned()));
}

#[test]
fn a_streaming_plugin_rewrites_chunk_by_chunk() {
    let origin = Origin::start(false);
    let rewrite = manifest(
        REWRITE_BODY,
        // A CPU budget above what rewriting 8 MiB costs here (the host functions that copy
        // each chunk are charged to the plugin, and this is a debug build): this test is
        // about chunk-by-chunk rewriting, not the budget.
        "[limits]\nhook_timeout_ms = 5000\ncpu_per_second = \"60s\"\n[config]\npattern = \"aaaa\"\nreplacement = \"b\"\nstream = true\n",
    );
    let fg = Flowgate::start(&["-s", &rewrite]);
    let size = 8 << 20;
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "60", "-w", "\n%{http_code}", "-x"])
        .arg(fg.proxy())
        .arg(origin.url("http", &format!("/big/{size}")))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("status line");
    assert_eq!(status, "200");
    // Each chunk is rewritten on its own: a run of a's split by a chunk boundary keeps its
    // remainder (documented in rewrite-body).
    let b = body.bytes().filter(|&c| c == b'b').count();
    let a = body.bytes().filter(|&c| c == b'a').count();
    assert_eq!(a + b, body.len());
    assert_eq!(4 * b + a, size, "every 4 a's in a chunk became one b");
    assert!(a < 4 * 256, "only chunk remainders are left: {a}");
    fg.flow_line("/big/8388608");
}

#[test]
fn a_streaming_plugin_rewrites_request_bodies_on_the_way_up() {
    let origin = Origin::start(false);
    let rewrite = manifest(
        REWRITE_BODY,
        "[limits]\nhook_timeout_ms = 5000\n[config]\npattern = \"aaaa\"\nreplacement = \"b\"\nside = \"request\"\nstream = true\n",
    );
    let fg = Flowgate::start(&["-s", &rewrite]);
    let size = 1 << 20;
    let upload = flowgate_tests::manifest(ADD_HEADER, "").with_file_name("upload.bin");
    std::fs::write(&upload, vec![b'a'; size]).expect("write upload");
    let reply =
        curl(&["-x", &fg.proxy(), "--data-binary", &format!("@{}", upload.display()), &origin.url("http", "/up")]);
    assert_eq!(reply.status, 200);
    let body = reply.body.split("body: ").nth(1).and_then(|b| b.lines().next()).expect("echoed body");
    let b = body.bytes().filter(|&c| c == b'b').count();
    let a = body.bytes().filter(|&c| c == b'a').count();
    assert_eq!(a + b, body.len());
    assert_eq!(4 * b + a, size, "every 4 a's in a chunk became one b");
    assert!(b > size / 8, "the body was rewritten: {b} b's");
    fg.flow_line("/up");
}

#[test]
fn minted_certificates_carry_the_upstreams_names() {
    let tls_origin = Origin::start(true);
    let fg = Flowgate::start(&["-k"]);
    let script = format!(
        "echo | openssl s_client -proxy 127.0.0.1:{} -connect localhost:{} -servername localhost 2>/dev/null | openssl x509 -noout -ext subjectAltName -issuer",
        fg.port,
        tls_origin.addr.port()
    );
    let out = Command::new("sh").arg("-c").arg(script).output().expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DNS:localhost"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "the upstream certificate's IP SAN was copied: {text}");
    assert!(text.contains("CN=flowgate") || text.contains("CN = flowgate"), "issued by flowgate's CA: {text}");
}

#[test]
fn plugins_see_request_headers_as_sent() {
    let origin = Origin::start(false);
    let names = manifest(REQUEST_ID, "[config]\ndebug_header_names = true\n");
    let fg = Flowgate::start(&["-s", &names]);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nX-Dup: 1\r\nAccept: */*\r\nx-DUP: 2\r\nConnection: close\r\n\r\n",
        origin.url("http", "/names")
    );
    let reply = raw(fg.port, request.as_bytes());
    // Order, case and duplicates as on the wire; flowgate's own fields come after.
    assert!(
        reply.contains("x-header-names: Host,X-Dup,Accept,x-DUP,Connection,x-request-id,x-agent-class\n"),
        "{reply}"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let origin = Origin::start(false);
    let fg = Flowgate::start(&["--set", "header_read_timeout=1"]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
        .write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("http", "/first")).as_bytes())
        .expect("write");
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "an idle keep-alive connection is closed (header_read_timeout), waited {waited:?}"
    );
}

#[test]
fn body_size_limit_and_stream_large_bodies() {
    let origin = Origin::start(false);
    let rewrite = manifest(REWRITE_BODY, "[config]\npattern = \"a\"\nreplacement = \"b\"\n");
    // Over body_size_limit, a body a plugin wants buffered fails the flow.
    let fg = Flowgate::start(&["-s", &rewrite, "--set", "body_size_limit=1MiB"]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/big/2097152")]);
    assert_eq!(reply.status, 502);
    assert!(reply.body.contains("body exceeds body_size_limit (1048576 bytes)"), "{}", reply.body);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/big/1000")]);
    assert_eq!((reply.status, reply.body.as_str()), (200, "b".repeat(1000).as_str()), "small bodies are rewritten");
    drop(fg);
    // With stream_large_bodies it streams through untouched instead.
    let fg = Flowgate::start(&["-s", &rewrite, "--set", "stream_large_bodies=1MiB"]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/big/2097152")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 2097152);
    assert!(reply.body.bytes().all(|b| b == b'a'), "not rewritten");
}

#[test]
fn allow_hosts_intercepts_only_listed_hosts() {
    let tls_origin = Origin::start(true);
    let fg = Flowgate::start(&["-k", "--set", "allow_hosts=^example\\.test:"]);
    let ca = fg.ca();
    // localhost is not allowed: passed through, so flowgate's CA does not verify it.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert", ca.to_str().expect("utf-8"), "-x", &fg.proxy()])
        .arg(tls_origin.url("https", "/x"))
        .output()
        .expect("curl runs");
    assert!(!out.status.success());
    assert_eq!(curl(&["-k", "-x", &fg.proxy(), &tls_origin.url("https", "/y")]).status, 200);
}

#[test]
fn several_modes_in_one_process() {
    let origin = Origin::start(false);
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let reverse_port = free.local_addr().expect("addr").port();
    drop(free);
    let reverse = format!("reverse:http://127.0.0.1:{}@{reverse_port}", origin.addr.port());
    let fg = Flowgate::start(&["--mode", "regular", "--mode", &reverse]);
    assert_eq!(curl(&["-x", &fg.proxy(), &origin.url("http", "/via-regular")]).status, 200);
    assert_eq!(curl(&[&format!("http://127.0.0.1:{reverse_port}/via-reverse")]).status, 200);
    assert_eq!(origin.seen.paths(), ["/via-regular", "/via-reverse"]);
}

#[test]
fn client_disconnected_fires_when_the_client_leaves_not_when_a_tunnel_opens() {
    use std::net::TcpStream;
    let origin = Origin::start(false);
    let tp = manifest(TLS_PASSTHROUGH, "name = \"tp\"\n[config]\nhosts = \"nothing.invalid\"\n");
    let fg = Flowgate::start_with(confdir(), &[("FLOWGATE_LOG", "warn,flowgate_runtime=debug")], &["-s", &tp]);
    let gone = |client: &TcpStream| format!("client {} disconnected", client.local_addr().expect("address"));

    // A CONNECT tunnel with a plain HTTP request inside, kept open.
    let mut client = TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let target = format!("127.0.0.1:{}", origin.addr.port());
    write!(client, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").expect("write");
    let mut head = [0u8; 256];
    let n = client.read(&mut head).expect("CONNECT answered");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    write!(client, "GET /in-tunnel HTTP/1.1\r\nHost: {target}\r\n\r\n").expect("write");
    let n = client.read(&mut head).expect("response in the tunnel");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    fg.flow_line("/in-tunnel << 200");
    // The flow is recorded after the hooks of the exchange; the connection is still open,
    // so client-disconnected must not have fired.
    assert_eq!(fg.count_logs(&gone(&client)), 0, "client-disconnected fired while the tunnel was open");

    let needle = gone(&client);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.count_logs(&needle) == 0 {
        assert!(Instant::now() < deadline, "client-disconnected never fired after the client left");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fg.count_logs(&needle), 1, "exactly once");
}

#[test]
fn a_stuck_stdout_drops_flow_lines_and_never_stalls_traffic() {
    let origin = Origin::start(false);
    let fg = Flowgate::start_with_stuck_stdout(&[]);
    // Far more lines than a pipe (64 KiB) and the output queue hold.
    let request = format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", origin.url("http", "/stuck"));
    for i in 0..3000 {
        let reply = raw(fg.port, request.as_bytes());
        assert!(reply.starts_with("HTTP/1.1 200"), "request {i} with stdout stuck: {reply:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.count_logs("flow lines dropped so far") < 2 {
        assert!(Instant::now() < deadline, "no drop report on stderr: {:?}", fg.logs.lock().expect("logs"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TLS origin whose certificate (from a CA of its own) names only `localhost`; it
/// answers each request with the SNI it was sent. Returns its port and its CA's PEM.
fn sni_origin() -> (u16, String) {
    sni_origin_with(None)
}

/// A CA of the test's own that signs leaves; each leaf comes as one PEM with its key.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: rcgen::Certificate,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA");
        TestCa { issuer: rcgen::Issuer::new(params, key), cert }
    }

    /// A leaf for `name`: its certificate and key in one PEM.
    fn leaf_pem(&self, name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let leaf = params.signed_by(&key, &self.issuer).expect("leaf");
        format!("{}{}", leaf.pem(), key.serialize_pem())
    }
}

/// As [`sni_origin`]; with `client_ca`, the origin requires a client certificate from it.
fn sni_origin_with(client_ca: Option<&TestCa>) -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "sni test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    (serve_sni(&leaf, &key, client_ca), ca_cert.pem())
}

/// Serves `cert` (with `key`) on a port of its own, asking for a client certificate from
/// `client_ca` if given: each connection's one request is answered with `sni=` and the
/// server name the client sent.
fn serve_sni(cert: &rcgen::Certificate, key: &rcgen::KeyPair, client_ca: Option<&TestCa>) -> u16 {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .expect("config");
    let config = std::sync::Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else { return };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let body = format!("sni={}", tls.conn.server_name().unwrap_or("(none)"));
                let reply =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = tls.write_all(reply.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

/// A self-signed certificate for `name` marked a CA, as `openssl req -x509` makes one,
/// served with its key: (port, PEM).
fn self_signed_origin(name: &str) -> (u16, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("cert");
    (serve_sni(&cert, &key, None), cert.pem())
}

/// An origin's self-signed certificate (a CA by its basic constraints, which webpki
/// refuses as a server's) given with ssl_verify_upstream_trusted_ca is trusted, as
/// mitmproxy (OpenSSL) trusts it; for its own name only.
#[test]
fn a_self_signed_origin_is_trusted_when_its_certificate_is_given() {
    let dir = confdir();
    std::fs::create_dir_all(&dir).expect("confdir");
    // flowgate trusting the self-signed origin for `name`, and that origin's port.
    let trusting = |name: &str| {
        let (port, pem) = self_signed_origin(name);
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, pem).expect("write");
        (Flowgate::start(&["--set", &format!("ssl_verify_upstream_trusted_ca={}", file.display())]), port)
    };
    let (fg, port) = trusting("localhost");
    let reply = connect_ip_with_sni(&fg, port);
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("sni=localhost"), "{reply}");
    // The same kind of certificate for another name, given: not for localhost.
    let (fg, other_port) = trusting("other.test");
    let reply = connect_ip_with_sni(&fg, other_port);
    assert!(reply.starts_with("HTTP/1.1 502") && reply.contains("not trusted"), "{reply}");
    // Not given: refused.
    let fg = Flowgate::start(&[]);
    let reply = connect_ip_with_sni(&fg, port);
    assert!(reply.starts_with("HTTP/1.1 502") && reply.contains("CaUsedAsEndEntity"), "{reply}");
}

/// CONNECT 127.0.0.1:`port` through flowgate, then TLS with SNI `localhost` (trusting
/// flowgate's CA) and one GET: the response as text.
fn connect_ip_with_sni(fg: &Flowgate, port: u16) -> String {
    let program = r#"
import socket, ssl, sys
proxy, port, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", proxy), timeout=10)
s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += s.recv(1)
tls = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname="localhost")
tls.sendall(b"GET /sni HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
out = b""
while chunk := tls.recv(65536):
    out += chunk
sys.stdout.write(out.decode("latin-1"))
"#;
    let out = Command::new(python())
        .args(["-c", program, &fg.port.to_string(), &port.to_string(), fg.ca().to_str().expect("utf-8")])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_clients_sni_is_sent_upstream_and_verified_with_ssl_verify_upstream_trusted_ca() {
    let (port, ca_pem) = sni_origin();
    let dir = confdir();
    std::fs::create_dir_all(&dir).expect("confdir");
    let ca_file = dir.join("origin-ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write CA");
    let trusted = format!("ssl_verify_upstream_trusted_ca={}", ca_file.display());
    // CONNECT to an IP address with SNI localhost: verified against localhost, with
    // verification on, and the origin sees the SNI.
    let fg = Flowgate::start(&["--set", &trusted]);
    let reply = connect_ip_with_sni(&fg, port);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("sni=localhost"), "{reply}");
    // Without the origin's CA the same origin fails verification (no -k, no trust).
    let untrusted = Flowgate::start(&[]);
    let reply = connect_ip_with_sni(&untrusted, port);
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    // Saying why and what to do about it.
    assert!(reply.contains("its certificate is not trusted (invalid peer certificate: UnknownIssuer)"), "{reply}");
    assert!(reply.contains("-k (--set ssl_insecure=true) skips the check"), "{reply}");
    // A file without a certificate is refused at start, by name.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    fails_with(&["--set", &format!("ssl_verify_upstream_trusted_ca={}", empty.display())], &dir, "no PEM certificate");
}

/// `openssl s_client` through flowgate's CONNECT to `localhost:port` with SNI `name` and
/// `flags` (a TLS version, cipher suites): its output, and whether the handshake verified.
fn s_client(fg: &Flowgate, port: u16, name: &str, flags: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-proxy", &format!("127.0.0.1:{}", fg.port), "-connect", &format!("localhost:{port}")])
        .args(["-servername", name, "-CAfile", fg.ca().to_str().expect("utf-8")])
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("Verify return code: 0"), text)
}

/// The cipher suite flowgate agrees with a client: AES-128-GCM unless the client puts
/// ChaCha20-Poly1305 before every AES-GCM suite (a client without AES hardware).
#[test]
fn clients_get_aes_128_gcm_unless_they_put_chacha20_first() {
    let (port, _) = sni_origin_with(None);
    let fg = Flowgate::start(&["-k"]);
    for (flags, cipher) in [
        // OpenSSL's own order starts with AES-256-GCM.
        (&["-tls1_3"][..], "TLS_AES_128_GCM_SHA256"),
        (&["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"], "TLS_AES_128_GCM_SHA256"),
        (&["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"], "TLS_AES_256_GCM_SHA384"),
        (
            &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"],
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
        (&["-tls1_2"], "ECDHE-ECDSA-AES128-GCM-SHA256"),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"],
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
    ] {
        let (ok, text) = s_client(&fg, port, "localhost", flags);
        assert!(ok, "{flags:?}: {text}");
        assert!(text.contains(&format!("Cipher is {cipher}")), "{flags:?}: {cipher} expected in {text}");
    }
}

#[test]
fn tls_versions_given_certs_and_client_certs_as_mitmproxy_sets_them() {
    let dir = confdir();
    std::fs::create_dir_all(&dir).expect("confdir");
    // client_certs: an origin that requires a client certificate from its own CA.
    let client_ca = TestCa::new("client CA");
    let (port, origin_ca) = sni_origin_with(Some(&client_ca));
    let origin_ca_file = dir.join("origin-ca.pem");
    std::fs::write(&origin_ca_file, origin_ca).expect("write");
    let client_pem = dir.join("client.pem");
    std::fs::write(&client_pem, client_ca.leaf_pem("flowgate client")).expect("write");
    let trusted = format!("ssl_verify_upstream_trusted_ca={}", origin_ca_file.display());
    let with_cert = Flowgate::start(&["--set", &trusted, "--set", &format!("client_certs={}", client_pem.display())]);
    let reply = connect_ip_with_sni(&with_cert, port);
    assert!(reply.starts_with("HTTP/1.1 200"), "with client_certs: {reply}");
    let without = Flowgate::start(&["--set", &trusted]);
    let reply = connect_ip_with_sni(&without, port);
    assert!(reply.starts_with("HTTP/1.1 502"), "without client_certs: {reply}");
    // A directory of HOST.pem: localhost.pem is sent to localhost.
    let certs_dir = dir.join("client-certs");
    std::fs::create_dir_all(&certs_dir).expect("dir");
    std::fs::copy(&client_pem, certs_dir.join("localhost.pem")).expect("copy");
    let by_dir = Flowgate::start(&["--set", &trusted, "--set", &format!("client_certs={}", certs_dir.display())]);
    let reply = connect_ip_with_sni(&by_dir, port);
    assert!(reply.starts_with("HTTP/1.1 200"), "client_certs directory: {reply}");

    // certs: a given certificate is served for its names instead of a minted one, and
    // tls_version_client_min=TLS1_3 refuses TLS 1.2 clients.
    let given_ca = TestCa::new("given CA");
    let given = dir.join("given.pem");
    std::fs::write(&given, given_ca.leaf_pem("www.given.test")).expect("write");
    let fg = Flowgate::start(&[
        "--certs",
        &format!("*.given.test={}", given.display()),
        "--set",
        "tls_version_client_min=TLS1_3",
        "--set",
        &trusted,
    ]);
    let (ok, text) = s_client(&fg, port, "www.given.test", &["-tls1_3"]);
    assert!(!ok && text.contains("given CA"), "the given certificate (not one from flowgate's CA) is served: {text}");
    let (ok, text) = s_client(&fg, port, "localhost", &["-tls1_3"]);
    assert!(ok, "a minted certificate for other names: {text}");
    let (ok, text) = s_client(&fg, port, "localhost", &["-tls1_2"]);
    assert!(!ok, "TLS 1.2 refused: {text}");
    // Bad values fail at start, by name.
    fails_with(&["--set", "tls_version_client_min=TLS1_1"], &dir, "TLS 1.2 and 1.3 only");
    fails_with(
        &["--set", "tls_version_server_min=TLS1_3", "--set", "tls_version_server_max=TLS1_2"],
        &dir,
        "no TLS version",
    );
    fails_with(&["--certs", &origin_ca_file.display().to_string()], &dir, "no private key");
}
