//! The plugin runtime with real compiled components: hooks, verdicts, limits, failure
//! policies, the circuit breaker, the CPU budget, instance models and load-time checks.

use std::time::{Duration, Instant};

use flowgate_flow::{BodyMode, DnsMessage, FailureKind, Hook, Injected, Question, TlsDecision};
use flowgate_runtime::{
    BreakerState, Chain, DataAction, DnsAction, HttpAction, InstanceModel, LoadError, Runtime, TlsSide,
};
use flowgate_tests::plugins::*;
use flowgate_tests::{Logs, connection, flow, manifest, request, response, runtime};

async fn chain_of(runtime: &Runtime, paths: &[std::path::PathBuf]) -> Chain {
    let mut plugins = Vec::new();
    for path in paths {
        plugins.push(runtime.load(path).await.unwrap_or_else(|e| panic!("{e}")));
    }
    Chain::new(plugins)
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

fn header(r: &flowgate_flow::Request, name: &str) -> Option<String> {
    r.headers.get_str(name).map(str::to_owned)
}

// Every example plugin must have a test named after it (compile error otherwise).
macro_rules! require_test {
    ($name:ident) => {
        #[allow(unused_imports, reason = "the import only proves the test exists")]
        use super::$name as _;
    };
}
mod every_plugin_has_a_test {
    flowgate_tests::foreach_plugin!(require_test);
}

#[tokio::test]
async fn add_header() {
    let rt = runtime();
    let m = manifest(
        ADD_HEADER,
        "name = \"add-header\"\n[config]\nrequest = \"X-Added: yes\\nUser-Agent:\"\nresponse = \"Server: flowgate\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let mut req = request("http://example.test/", 2);
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(header(&req, "x-added").as_deref(), Some("yes"));
    assert_eq!(header(&req, "user-agent"), None, "an empty value removes the header");
    assert_eq!(req.headers.len(), 4, "Host, two fillers and X-Added");
    let mut resp = response(b"hi");
    assert_eq!(session.response_headers(&mut req, &mut resp).await, HttpAction::Continue);
    assert_eq!(resp.headers.get_str("server"), Some("flowgate"));
    assert!(session.failures().is_empty());
    assert_eq!(chain.plugins()[0].exported_groups(), ["lifecycle", "http"]);

    // Plugins run in manifest `order`: the later one's value wins.
    let late = manifest(ADD_HEADER, "name = \"late\"\norder = 10\n[config]\nrequest = \"X-Order: late\"\n");
    let early = manifest(ADD_HEADER, "name = \"early\"\norder = -10\n[config]\nrequest = \"X-Order: early\"\n");
    let chain = chain_of(&rt, &[late, early]).await;
    let names: Vec<&str> = chain.plugins().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["early", "late"]);
    let mut req = request("http://example.test/", 0);
    chain.connection(connection(2, "127.0.0.1:5001")).http_flow(flow(2, 2)).request_headers(&mut req).await;
    assert_eq!(header(&req, "x-order").as_deref(), Some("late"));

    // Compiled components are cached on disk.
    let cached = walk(&flowgate_tests::cache_dir());
    assert!(cached > 0, "the compile cache is empty");

    // configure refuses a manifest with nothing to do, naming the file.
    let bad = manifest(ADD_HEADER, "name = \"add-header\"\n");
    let err = rt.load(&bad).await.expect_err("configure must refuse an empty config");
    assert!(matches!(err, LoadError::Configure { .. }), "{err}");
    assert!(err.to_string().contains("nothing to do"), "{err}");
    assert!(err.to_string().contains("add_header.wasm"), "{err}");
}

#[tokio::test]
async fn block_list() {
    let rt = runtime();
    let m = manifest(BLOCK_LIST, "[config]\nhosts = \"*.ads.test\"\npaths = \"/admin\"\nmessage = \"nope\"\n");
    let kill = manifest(BLOCK_LIST, "[config]\nhosts = \"evil.test\"\naction = \"kill\"\n");
    let chain = chain_of(&rt, &[m, kill]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));

    let mut req = request("http://cdn.ads.test/banner.js", 0);
    match conn.http_flow(flow(1, 1)).request_headers(&mut req).await {
        HttpAction::Respond(local) => {
            assert_eq!(local.status, 403);
            assert_eq!(local.body, &b"nope\n"[..]);
            assert_eq!(local.headers.get_str("content-type"), Some("text/plain; charset=utf-8"));
        }
        other => panic!("expected a local 403, got {other:?}"),
    }
    let mut req = request("http://shop.test/admin/users", 0);
    assert!(matches!(conn.http_flow(flow(2, 1)).request_headers(&mut req).await, HttpAction::Respond(_)));
    let mut req = request("http://evil.test/", 0);
    assert_eq!(conn.http_flow(flow(3, 1)).request_headers(&mut req).await, HttpAction::Kill);
    let mut req = request("http://shop.test/cart", 0);
    assert_eq!(conn.http_flow(flow(4, 1)).request_headers(&mut req).await, HttpAction::Continue);

    // A local answer must be final: 101 (or any 1xx) is refused as invalid output, and the
    // plugin's failure policy (fail-open by default) lets the request go on.
    for status in ["101", "103", "199"] {
        let interim = manifest(BLOCK_LIST, &format!("[config]\nhosts = \"any.test\"\nstatus = \"{status}\"\n"));
        let chain = chain_of(&rt, &[interim]).await;
        let mut session = chain.connection(connection(2, "127.0.0.1:5001")).http_flow(flow(5, 2));
        let mut req = request("http://any.test/", 0);
        assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue, "status {status}");
        let failures = session.failures();
        assert_eq!(failures.len(), 1, "status {status}: {failures:?}");
        assert!(failures[0].to_string().contains("not a final status"), "{}", failures[0]);
    }
}

#[tokio::test]
async fn rewrite_body() {
    let rt = runtime();
    let m = manifest(
        REWRITE_BODY,
        "[config]\npattern = \"Example (\\\\w+)\"\nreplacement = \"Flowgate $1\"\nside = \"both\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let mut req = request("http://example.test/", 0);
    session.request_headers(&mut req).await;
    assert_eq!(req.body_mode, BodyMode::Buffer, "the plugin asked for the body at headers time");
    req.body = Some(bytes::Bytes::from_static(b"q=Example Domain"));
    session.request(&mut req).await;
    assert_eq!(req.body.as_deref(), Some(&b"q=Flowgate Domain"[..]));
    let mut resp = response(b"");
    resp.body = None;
    session.response_headers(&mut req, &mut resp).await;
    assert_eq!(resp.body_mode, BodyMode::Buffer);
    resp.body = Some(bytes::Bytes::from_static(b"<h1>Example Domain</h1>"));
    session.response(&mut req, &mut resp).await;
    assert_eq!(resp.body.as_deref(), Some(&b"<h1>Flowgate Domain</h1>"[..]));
    assert!(session.failures().is_empty(), "{:?}", session.failures());

    // Streaming: each chunk goes through the plugin.
    let m = manifest(REWRITE_BODY, "[config]\npattern = \"secret\"\nreplacement = \"******\"\nstream = true\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(2, "127.0.0.1:5001"));
    let mut session = conn.http_flow(flow(2, 2));
    let mut req = request("http://example.test/", 0);
    let mut resp = response(b"");
    session.request_headers(&mut req).await;
    session.response_headers(&mut req, &mut resp).await;
    assert_eq!(resp.body_mode, BodyMode::Stream);
    let a = session.response_body_chunk(&mut req, &mut resp, b"my secret is ".to_vec(), false).await;
    let b = session.response_body_chunk(&mut req, &mut resp, b"another secret".to_vec(), true).await;
    assert_eq!((a.as_deref(), b.as_deref()), (Ok(&b"my ****** is "[..]), Ok(&b"another ******"[..])));

    // max_body_bytes: a replacement over the limit is refused and the body kept.
    let logs = Logs::default();
    let rt2 = Runtime::new(logs.config()).expect("runtime");
    let m = manifest(
        REWRITE_BODY,
        "name = \"rb\"\n[limits]\nmax_body_bytes = 16\n[config]\npattern = \"a\"\nreplacement = \"aaaaaaaa\"\n",
    );
    let chain = chain_of(&rt2, &[m]).await;
    let conn = chain.connection(connection(3, "127.0.0.1:5002"));
    let mut session = conn.http_flow(flow(3, 3));
    let mut req = request("http://example.test/", 0);
    let mut resp = response(b"");
    session.response_headers(&mut req, &mut resp).await;
    resp.body = Some(bytes::Bytes::from_static(b"banana"));
    session.response(&mut req, &mut resp).await;
    assert_eq!(resp.body.as_deref(), Some(&b"banana"[..]));
    let messages = logs.messages("rb");
    assert!(messages.iter().any(|m| m.contains("max_body_bytes")), "{messages:?}");

    // The same in a chunk hook: a chunk made larger than max_body_bytes is refused (an
    // invalid output, recorded) and the chunk goes on as it was.
    let m = manifest(
        REWRITE_BODY,
        "name = \"rbs\"\n[limits]\nmax_body_bytes = 16\n[config]\npattern = \"a\"\nreplacement = \"aaaaaaaa\"\nstream = true\n",
    );
    let chain = chain_of(&rt2, &[m]).await;
    let mut session = chain.connection(connection(4, "127.0.0.1:5003")).http_flow(flow(4, 4));
    let mut req = request("http://example.test/", 0);
    let mut resp = response(b"");
    session.request_headers(&mut req).await;
    session.response_headers(&mut req, &mut resp).await;
    assert_eq!(resp.body_mode, BodyMode::Stream);
    let small = session.response_body_chunk(&mut req, &mut resp, b"ab".to_vec(), false).await;
    assert_eq!(small.as_deref(), Ok(&b"aaaaaaaab"[..]), "within the limit the plugin's chunk goes on");
    let big = session.response_body_chunk(&mut req, &mut resp, b"banana".to_vec(), true).await;
    assert_eq!(big.as_deref(), Ok(&b"banana"[..]), "over the limit the chunk is kept as it was");
    let failures = session.failures();
    assert!(failures.iter().any(|f| f.to_string().contains("max_body_bytes")), "{failures:?}");
}

/// A response whose body is `text` encoded with `coding`, as an origin sends it.
fn encoded_response(coding: &str, text: &[u8]) -> flowgate_flow::Response {
    let body = flowgate_content::encode(coding, text).expect("encodes");
    let mut resp = response(&body);
    resp.headers.append("Content-Encoding", coding.as_bytes()).expect("valid");
    resp
}

/// `decoded-body` / `set-decoded-body` (WIT 0.2.1): rewrite-body edits a compressed body
/// decoded and sends it on encoded the same way; a bomb, an unknown coding and a corrupt
/// body are left as they came, with the reason in the log.
#[tokio::test]
async fn rewrite_body_decodes_and_encodes_again() {
    let logs = Logs::default();
    let rt = Runtime::new(logs.config()).expect("runtime");
    let m = manifest(
        REWRITE_BODY,
        "name = \"rbd\"\n[config]\npattern = \"Example (\\\\w+)\"\nreplacement = \"Flowgate $1\"\nside = \"both\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    for (n, coding) in ["gzip", "deflate", "br", "zstd", "gzip, br", "identity"].into_iter().enumerate() {
        let mut session = conn.http_flow(flow(n as u64 + 10, 1));
        let mut req = request("http://example.test/", 0);
        req.headers.append("Content-Encoding", coding.as_bytes()).expect("valid");
        session.request_headers(&mut req).await;
        req.body = Some(flowgate_content::encode(coding, b"q=Example Query").expect("encodes").into());
        session.request(&mut req).await;
        let sent = flowgate_content::decode(coding, req.body.as_deref().expect("body"), &Default::default());
        assert_eq!(sent.as_deref(), Ok(&b"q=Flowgate Query"[..]), "{coding}");

        let mut resp = encoded_response(coding, b"<h1>Example Domain</h1>");
        let original = resp.body.clone();
        session.response_headers(&mut req, &mut resp).await;
        assert_eq!(resp.body_mode, BodyMode::Buffer, "{coding}");
        session.response(&mut req, &mut resp).await;
        let body = resp.body.as_deref().expect("body");
        assert_ne!(Some(body), original.as_deref(), "{coding}: changed");
        let decoded = flowgate_content::decode(coding, body, &Default::default());
        assert_eq!(decoded.as_deref(), Ok(&b"<h1>Flowgate Domain</h1>"[..]), "{coding}: encoded again the same way");
        assert_eq!(resp.headers.get_str("content-encoding"), Some(coding), "{coding}");
        assert!(session.failures().is_empty(), "{coding}: {:?}", session.failures());
    }

    // Left as they came: a bomb (64 MiB of zeros in 64 KiB of gzip, over max_body_bytes and
    // the ratio cap), a coding nobody knows, a body that is not what its coding says.
    let bomb = flowgate_content::encode("gzip", &vec![b'E'; 64 << 20]).expect("encodes");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("gzip", bomb, "limit exceeded"),
        ("compress", b"Example Domain".to_vec(), "unsupported"),
        ("gzip", b"Example Domain, not gzip".to_vec(), "does not decode"),
    ];
    for (n, (coding, body, why)) in cases.into_iter().enumerate() {
        let mut session = conn.http_flow(flow(n as u64 + 20, 1));
        let mut req = request("http://example.test/", 0);
        let mut resp = response(&body);
        resp.headers.append("Content-Encoding", coding.as_bytes()).expect("valid");
        session.response_headers(&mut req, &mut resp).await;
        session.response(&mut req, &mut resp).await;
        assert_eq!(resp.body.as_deref(), Some(body.as_slice()), "{coding}: untouched");
        let messages = logs.messages("rbd");
        assert!(messages.iter().any(|m| m.contains(why)), "{why}: {messages:?}");
    }

    // Streaming sees the bytes as sent, so an encoded body is not streamed through it.
    let m = manifest(REWRITE_BODY, "[config]\npattern = \"secret\"\nstream = true\n");
    let chain = chain_of(&rt, &[m]).await;
    let mut session = chain.connection(connection(2, "127.0.0.1:5001")).http_flow(flow(30, 2));
    let mut req = request("http://example.test/", 0);
    let mut resp = encoded_response("gzip", b"secret");
    session.response_headers(&mut req, &mut resp).await;
    assert_eq!(resp.body_mode, BodyMode::Pass);
}

#[tokio::test]
async fn request_id() {
    let logs = Logs::default();
    let rt = Runtime::new(logs.config()).expect("runtime");
    let chain = chain_of(&rt, &[REQUEST_ID.into()]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(7, 1));
    let mut req = request("http://example.test/a", 18);
    req.headers.set("User-Agent", b"Mozilla/5.0 (X11)").expect("valid");
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    let id = header(&req, "x-request-id").expect("an id was set");
    assert_eq!(id.len(), 16);
    assert_eq!(header(&req, "x-agent-class").as_deref(), Some("browser"));
    assert_eq!(session.flow.metadata.get("request-id"), Some(&id), "metadata is kept on the flow");
    let mut resp = response(b"ok");
    session.response_headers(&mut req, &mut resp).await;
    assert_eq!(resp.headers.get_str("x-request-id"), Some(id.as_str()));
    session.error(&mut req, "upstream went away").await;
    let messages = logs.messages("request-id");
    assert_eq!(
        messages,
        [format!("flow {} (http://example.test/a) failed: upstream went away", flowgate_tests::uuid(7))]
    );
    assert_eq!(logs.lines()[0].flow_id, Some(flowgate_tests::uuid(7)));
    assert_eq!(logs.lines()[0].hook, Hook::Error);

    // A client's id is kept.
    let mut session = conn.http_flow(flow(8, 1));
    let mut req = request("http://example.test/b", 0);
    req.headers.set("X-Request-Id", b"abc").expect("valid");
    session.request_headers(&mut req).await;
    assert_eq!(header(&req, "x-request-id").as_deref(), Some("abc"));

    // max_state_bytes also caps flow metadata.
    let m = manifest(REQUEST_ID, "name = \"tiny\"\n[limits]\nmax_state_bytes = 8\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(2, "127.0.0.1:5001"));
    let mut session = conn.http_flow(flow(9, 2));
    let mut req = request("http://example.test/", 0);
    session.request_headers(&mut req).await;
    assert!(session.flow.metadata.is_empty());
    assert!(logs.messages("tiny").iter().any(|m| m.contains("max_state_bytes")));
}

#[tokio::test]
async fn tls_passthrough() {
    let logs = Logs::default();
    let rt = Runtime::new(logs.config()).expect("runtime");
    let m =
        manifest(TLS_PASSTHROUGH, "name = \"tp\"\n[config]\nhosts = \"*.bank.test\"\ndeny_clients = \"10.9.9.9\"\n");
    let chain = chain_of(&rt, &[m, REQUEST_ID.into()]).await;
    assert!(chain.running().await.is_empty());
    assert!(logs.messages("tp").contains(&"tls-passthrough running".to_owned()));

    let mut conn = chain.connection(connection(41, "127.0.0.1:5000"));
    assert!(conn.client_connected().await);
    let alpn = vec!["h2".to_owned(), "http/1.1".to_owned()];
    assert_eq!(conn.tls_clienthello(Some("www.bank.test"), &alpn).await, Ok(TlsDecision::Passthrough));
    assert_eq!(conn.tls_clienthello(Some("example.test"), &alpn).await, Ok(TlsDecision::Intercept));
    assert_eq!(conn.tls_clienthello(None, &alpn).await, Ok(TlsDecision::Intercept));
    conn.tls_result(TlsSide::Client, Some("unknown ca")).await;
    conn.client_disconnected().await;
    let messages = logs.messages("tp");
    assert!(
        messages.contains(&format!(
            "passthrough www.bank.test for connection {} (alpn [\"h2\", \"http/1.1\"])",
            flowgate_tests::uuid(41)
        )),
        "{messages:?}"
    );
    let failed = format!("tls failed on client side of connection {}: unknown ca", flowgate_tests::uuid(41));
    assert!(messages.contains(&failed), "{messages:?}");
    assert!(messages.contains(&"client 127.0.0.1:5000 disconnected".to_owned()), "{messages:?}");

    let mut denied = chain.connection(connection(42, "10.9.9.9:1234"));
    assert!(!denied.client_connected().await, "a denied client is refused");
    assert!(
        logs.messages("tp").iter().any(|m| m == "refused client 10.9.9.9:1234 (connection 2)"),
        "the count lives in key-value state"
    );
    assert!(conn.failures().is_empty() && denied.failures().is_empty());

    // The http-only plugin in the same chain was never called (nor instantiated) for
    // lifecycle, connection or TLS hooks.
    let http_only = &chain.plugins()[1];
    assert_eq!(http_only.exported_groups(), ["http"]);
    assert_eq!(http_only.stats().calls, 0);
    let mut req = request("http://example.test/", 0);
    chain.connection(connection(43, "127.0.0.1:5001")).http_flow(flow(1, 43)).request_headers(&mut req).await;
    assert_eq!(http_only.stats().calls, 1);
    assert_eq!(
        chain.plugins()[0].stats().calls,
        9,
        "tp: configure, running, six connection/TLS hooks on 41 and client-connected on 42"
    );
}

/// Runs `n` ordinary flows through `chain` concurrently and returns the slowest one's time.
async fn ordinary_flows(chain: &Chain, n: u64) -> Duration {
    let mut tasks = Vec::new();
    for i in 0..n {
        let chain = chain.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let conn = chain.connection(connection(1000 + i, "127.0.0.1:6000"));
            let mut session = conn.http_flow(flow(1000 + i, 1000 + i));
            let mut req = request("http://example.test/ok", 4);
            assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
            assert!(req.headers.contains("x-request-id"));
            start.elapsed()
        }));
    }
    let mut slowest = Duration::ZERO;
    for t in tasks {
        slowest = slowest.max(t.await.expect("ordinary flow task"));
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_forever() {
    let rt = runtime();
    let m = manifest(SPIN_FOREVER, "[limits]\nhook_timeout_ms = 50\n");
    let hostile = chain_of(&rt, &[m]).await;
    let ordinary = chain_of(&rt, &[REQUEST_ID.into()]).await;
    ordinary_flows(&ordinary, 1).await;

    let spinning = tokio::spawn(async move {
        let conn = hostile.connection(connection(1, "127.0.0.1:5000"));
        let mut session = conn.http_flow(flow(1, 1));
        let mut req = request("http://example.test/", 0);
        let start = Instant::now();
        let action = session.request_headers(&mut req).await;
        (action, start.elapsed(), session.failures().to_vec(), req)
    });
    // While it spins, other flows go on (the spinning plugin yields to the executor).
    let slowest = ordinary_flows(&ordinary, 20).await;
    let (action, elapsed, failures, req) = spinning.await.expect("spinning task");
    assert_eq!(action, HttpAction::Continue, "fail-open: the flow goes on without the plugin");
    assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
    assert!(elapsed <= Duration::from_millis(60), "stopped within deadline + 10 ms, took {elapsed:?}");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].kind, FailureKind::Deadline);
    assert_eq!(failures[0].hook, Hook::RequestHeaders);
    assert_eq!(req.url(), "http://example.test/", "the request survives the interrupted call");
    assert!(slowest < Duration::from_millis(50), "ordinary flows waited {slowest:?}");
}

#[tokio::test]
async fn spin_forever_fuel() {
    let rt = Runtime::new(flowgate_runtime::RuntimeConfig { fuel: true, ..Logs::default().config() }).expect("runtime");
    let m = manifest(SPIN_FOREVER, "[limits]\nfuel = 1000000\nhook_timeout_ms = 10000\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let start = Instant::now();
    session.request_headers(&mut request("http://example.test/", 0)).await;
    assert_eq!(session.failures()[0].kind, FailureKind::Fuel, "{:?}", session.failures());
    assert!(start.elapsed() < Duration::from_secs(1));

    // Without fuel metering in the runtime, a fuel limit is refused at load.
    let err = runtime().load(&manifest(SPIN_FOREVER, "[limits]\nfuel = 10\n")).await.expect_err("fuel off");
    assert!(err.to_string().contains("plugin_fuel"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balloon() {
    let rt = runtime();
    let m = manifest(BALLOON, "[limits]\nmemory = \"16MiB\"\nhook_timeout_ms = 5000\n");
    let hostile = chain_of(&rt, &[m]).await;
    let ordinary = chain_of(&rt, &[REQUEST_ID.into()]).await;
    let ballooning = tokio::spawn(async move {
        let conn = hostile.connection(connection(1, "127.0.0.1:5000"));
        let mut session = conn.http_flow(flow(1, 1));
        session.request_headers(&mut request("http://example.test/", 0)).await;
        session.failures().to_vec()
    });
    ordinary_flows(&ordinary, 20).await;
    let failures = ballooning.await.expect("balloon task");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].kind, FailureKind::Memory, "{}", failures[0]);
    assert!(failures[0].message.contains("16777216"), "{}", failures[0].message);
}

#[tokio::test]
async fn trap() {
    let rt = runtime();
    let open = chain_of(&rt, &[manifest(TRAP, "name = \"trap-open\"\n")]).await;
    let conn = open.connection(connection(1, "127.0.0.1:5000"));

    let mut session = conn.http_flow(flow(1, 1));
    let mut req = request("http://example.test/trap", 0);
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue, "fail-open");
    assert_eq!(session.failures()[0].kind, FailureKind::Trap);
    assert!(session.failures()[0].message.contains("wasm trap"), "{}", session.failures()[0].message);
    assert_eq!(req.url(), "http://example.test/trap");
    // Later hooks of the same flow skip the failed plugin.
    session.request(&mut req).await;
    assert_eq!(session.failures().len(), 1);

    // The next flow through the same plugin works.
    let mut session = conn.http_flow(flow(2, 1));
    let mut req = request("http://example.test/ok", 0);
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(header(&req, "x-trap-plugin").as_deref(), Some("survived"));
    assert!(session.failures().is_empty());

    // Fail-closed: the flow ends with an error.
    let closed = chain_of(&rt, &[manifest(TRAP, "name = \"trap-closed\"\nfailure = \"fail-closed\"\n")]).await;
    let conn = closed.connection(connection(2, "127.0.0.1:5001"));
    let mut session = conn.http_flow(flow(3, 2));
    match session.request_headers(&mut request("http://example.test/trap", 0)).await {
        HttpAction::Fail(f) => assert_eq!((f.plugin.as_str(), f.kind), ("trap-closed", FailureKind::Trap)),
        other => panic!("expected a failure, got {other:?}"),
    }

    // Circuit breaker: a plugin that traps `crash_budget` times in a row is not called (the
    // flow records why), is tried again after its back-off, and serves again once it stops
    // trapping.
    let breaker = "name = \"trap-q\"\n[limits]\nbreaker_backoff = \"100ms\"\nbreaker_backoff_max = \"1s\"\n";
    let q = chain_of(&rt, &[manifest(TRAP, breaker)]).await;
    let conn = q.connection(connection(3, "127.0.0.1:5002"));
    let plugin = &q.plugins()[0];
    let mut fifth = Instant::now();
    let mut last = Vec::new();
    for id in 0..5 {
        fifth = Instant::now();
        let mut session = conn.http_flow(flow(10 + id, 3));
        session.request_headers(&mut request("http://example.test/trap", 0)).await;
        last = session.failures().to_vec();
    }
    assert_eq!(plugin.breaker_state(), BreakerState::Open);
    assert_eq!(last[0].kind, FailureKind::Trap);
    assert!(last[0].message.contains("circuit breaker opened after 5 consecutive failures"), "{}", last[0].message);
    let calls = plugin.stats().calls;
    let mut session = conn.http_flow(flow(20, 3));
    let mut req = request("http://example.test/ok", 0);
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(header(&req, "x-trap-plugin"), None, "not called");
    assert_eq!(plugin.stats().calls, calls);
    assert_eq!(session.failures()[0].kind, FailureKind::CircuitOpen);
    assert!(session.failures()[0].message.contains("half-open in"), "{}", session.failures()[0].message);
    let served = served_again(&conn, 30).await;
    assert!(served - fifth >= Duration::from_millis(100), "served {:?} after opening", served - fifth);
    assert!(served - fifth < Duration::from_secs(2), "served {:?} after opening", served - fifth);
    let stats = plugin.stats();
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert!(stats.short_circuited >= 1, "{stats:?}");

    // A trial that traps re-opens it with the back-off doubled; the next success closes it.
    for id in 0..5 {
        conn.http_flow(flow(40 + id, 3)).request_headers(&mut request("http://example.test/trap", 0)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while plugin.breaker_state() != BreakerState::HalfOpen {
        assert!(Instant::now() < deadline, "still {:?}", plugin.breaker_state());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let trial = Instant::now();
    let mut session = conn.http_flow(flow(50, 3));
    session.request_headers(&mut request("http://example.test/trap", 0)).await;
    let failure = &session.failures()[0];
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(failure.message.contains("circuit breaker re-opened"), "{}", failure.message);
    assert!(failure.message.contains("half-open in 200ms"), "{}", failure.message);
    assert_eq!(plugin.breaker_state(), BreakerState::Open);
    let served = served_again(&conn, 60).await;
    assert!(served - trial >= Duration::from_millis(200), "served {:?} after the failed trial", served - trial);
    assert_eq!(plugin.breaker_state(), BreakerState::Closed);
    // Other plugins go on.
    ordinary_flows(&chain_of(&rt, &[REQUEST_ID.into()]).await, 5).await;
}

/// Sends `/ok` flows through a breaker-guarded trap plugin until one is served (each
/// refused one records `circuit open`), polling for up to 5 s; returns when it was served.
async fn served_again(conn: &flowgate_runtime::ConnectionSession, first_id: u64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in first_id.. {
        let mut session = conn.http_flow(flow(id, 3));
        let mut req = request("http://example.test/ok", 0);
        assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
        if header(&req, "x-trap-plugin").as_deref() == Some("survived") {
            assert!(session.failures().is_empty(), "{:?}", session.failures());
            return Instant::now();
        }
        assert_eq!(session.failures()[0].kind, FailureKind::CircuitOpen, "{:?}", session.failures());
        assert!(Instant::now() < deadline, "not served again within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_budget() {
    let rt = runtime();
    // Calls in progress: with one spinning, the next call fails at once (fail-open: the flow
    // goes on), is counted, and the spinning one ends at its deadline. A deadline is not a
    // crash: the breaker stays closed with a crash budget of 1.
    let m = manifest(
        SPIN_FOREVER,
        "name = \"spin-c\"\n[limits]\nhook_timeout_ms = 300\nmax_concurrent_calls = 1\ncpu_per_second = \"10s\"\n\
         crash_budget = 1\n[config]\npath = \"/slow\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let plugin = chain.plugins()[0].clone();
    let spinning = {
        let chain = chain.clone();
        tokio::spawn(async move {
            let conn = chain.connection(connection(1, "127.0.0.1:5000"));
            let mut session = conn.http_flow(flow(1, 1));
            session.request_headers(&mut request("http://example.test/slow", 0)).await;
            session.failures().to_vec()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while plugin.stats().calls == 0 {
        assert!(Instant::now() < deadline, "the spinning call never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let conn = chain.connection(connection(2, "127.0.0.1:5001"));
    let start = Instant::now();
    let mut session = conn.http_flow(flow(2, 2));
    assert_eq!(session.request_headers(&mut request("http://example.test/fast", 0)).await, HttpAction::Continue);
    let took = start.elapsed();
    assert!(!spinning.is_finished(), "the spinning call is still in progress");
    assert!(took < Duration::from_millis(50), "refused at once, took {took:?}");
    assert_eq!(session.failures()[0].kind, FailureKind::CpuBudget);
    assert!(session.failures()[0].message.contains("limits.max_concurrent_calls"), "{}", session.failures()[0]);
    let failures = spinning.await.expect("spinning task");
    assert_eq!(failures[0].kind, FailureKind::Deadline);
    let stats = plugin.stats();
    assert_eq!((stats.calls, stats.throttled, stats.breaker), (1, 1, BreakerState::Closed), "{stats:?}");
    // Its slot came back.
    let mut session = conn.http_flow(flow(3, 2));
    session.request_headers(&mut request("http://example.test/fast", 0)).await;
    assert!(session.failures().is_empty(), "{:?}", session.failures());

    // CPU time per second: a spinning call is interrupted once the plugin's 5 ms are spent,
    // long before its deadline; then calls fail at once by the failure policy (fail-closed:
    // the flow fails), counted, not crashes; once the bucket refills, calls go through.
    let m = manifest(
        SPIN_FOREVER,
        "name = \"spin-t\"\nfailure = \"fail-closed\"\n[limits]\nhook_timeout_ms = 5000\n\
         cpu_per_second = \"5ms\"\ncrash_budget = 1\n[config]\npath = \"/slow\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let plugin = &chain.plugins()[0];
    let conn = chain.connection(connection(3, "127.0.0.1:5002"));
    let start = Instant::now();
    let mut session = conn.http_flow(flow(4, 3));
    match session.request_headers(&mut request("http://example.test/slow", 0)).await {
        HttpAction::Fail(f) => {
            assert_eq!(f.kind, FailureKind::CpuBudget, "{f}");
            assert!(f.message.contains("interrupted"), "{f}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_millis(500), "interrupted after {:?}", start.elapsed());
    let used = plugin.stats().cpu_time;
    assert!(used >= Duration::from_millis(5), "charged {used:?}");
    let calls = plugin.stats().calls;
    let start = Instant::now();
    let mut session = conn.http_flow(flow(5, 3));
    match session.request_headers(&mut request("http://example.test/fast", 0)).await {
        HttpAction::Fail(f) => {
            assert_eq!(f.kind, FailureKind::CpuBudget, "{f}");
            assert!(f.message.contains("limits.cpu_per_second"), "{f}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_millis(50), "refused at once, took {:?}", start.elapsed());
    let stats = plugin.stats();
    assert_eq!((stats.calls, stats.throttled, stats.breaker), (calls, 1, BreakerState::Closed), "{stats:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in 6.. {
        let mut session = conn.http_flow(flow(id, 3));
        if session.request_headers(&mut request("http://example.test/fast", 0)).await == HttpAction::Continue {
            assert!(session.failures().is_empty(), "{:?}", session.failures());
            break;
        }
        assert!(Instant::now() < deadline, "the budget never refilled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn host_exhaustion_is_not_the_plugins_failure() {
    // One instance slot in all: while a flow holds it, another flow's instantiation fails
    // for want of room. That is the host's limit: recorded, but no crash (budget 1).
    let rt = Runtime::new(flowgate_runtime::RuntimeConfig { max_instances: 1, ..Logs::default().config() })
        .expect("runtime");
    let m = manifest(TRAP, "name = \"trap-x\"\ninstance = \"per-flow\"\n[limits]\ncrash_budget = 1\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut holder = conn.http_flow(flow(1, 1));
    holder.request_headers(&mut request("http://example.test/ok", 0)).await;
    assert!(holder.failures().is_empty(), "{:?}", holder.failures());
    let mut session = conn.http_flow(flow(2, 1));
    assert_eq!(session.request_headers(&mut request("http://example.test/ok", 0)).await, HttpAction::Continue);
    assert_eq!(session.failures()[0].kind, FailureKind::HostExhausted, "{}", session.failures()[0]);
    assert_eq!(chain.plugins()[0].breaker_state(), BreakerState::Closed);
    drop((holder, session));
    let mut session = conn.http_flow(flow(3, 1));
    let mut req = request("http://example.test/ok", 0);
    session.request_headers(&mut req).await;
    assert_eq!(header(&req, "x-trap-plugin").as_deref(), Some("survived"), "{:?}", session.failures());
}

#[tokio::test]
async fn log_flood() {
    let logs = Logs::default();
    let rt = Runtime::new(logs.config()).expect("runtime");
    // A CPU budget above the flood's million calls: this test is about the log cap.
    let m = manifest(
        LOG_FLOOD,
        "name = \"flood\"\n[limits]\nmax_log_bytes = \"8KiB\"\nhook_timeout_ms = 10000\ncpu_per_second = \"60s\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let start = Instant::now();
    assert_eq!(session.request_headers(&mut request("http://example.test/", 0)).await, HttpAction::Continue);
    let lines = logs.messages("flood");
    let bytes: usize = lines.iter().map(String::len).sum();
    assert_eq!(bytes, 8192, "exactly the cap reaches the log");
    assert_eq!(lines.len(), 8);
    assert_eq!(session.log_dropped(), 1_000_000 - 8);
    assert!(session.failures().is_empty());
    eprintln!("log-flood hook took {:?}", start.elapsed());
    // The cap is per call: the next flow logs again.
    let mut session = conn.http_flow(flow(2, 1));
    session.request_headers(&mut request("http://example.test/", 0)).await;
    assert_eq!(logs.messages("flood").len(), 16);
}

#[tokio::test]
async fn webhook_notify() {
    // Importing outbound-http is allowed (Python and JS toolchains import it whatever the
    // plugin does); each call is checked against the grant.
    let logs = Logs::default();
    let rt = Runtime::new(logs.config()).expect("runtime");
    for (name, grant) in [("ungranted", "[]"), ("elsewhere", "[\"*.other.test\"]")] {
        let denied = manifest(
            WEBHOOK_NOTIFY,
            &format!(
                "name = \"{name}\"\n[capabilities]\nallowed_outbound_hosts = {grant}\n[config]\nurl = \"http://hooks.test/x\"\n"
            ),
        );
        let chain = chain_of(&rt, &[denied]).await;
        let conn = chain.connection(connection(1, "127.0.0.1:5000"));
        conn.http_flow(flow(1, 1)).error(&mut request("http://example.test/", 0), "dead upstream").await;
        let messages = logs.messages(name);
        assert_eq!(messages.len(), 1);
        assert!(
            messages[0].starts_with("webhook failed: denied: outbound HTTP to hooks.test is not granted"),
            "{messages:?}"
        );
    }

    let granted = manifest(
        WEBHOOK_NOTIFY,
        "name = \"hook\"\n[capabilities]\nallowed_outbound_hosts = [\"hooks.test\"]\n[config]\nurl = \"http://hooks.test/x\"\n",
    );
    let chain = chain_of(&rt, &[granted]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    conn.http_flow(flow(1, 1)).error(&mut request("http://example.test/", 0), "dead upstream").await;
    let messages = logs.messages("hook");
    assert_eq!(messages.len(), 1);
    // A runtime nobody gave a network to answers `unsupported`; the proxy gives it one
    // (tests below and tests/e2e/egress.rs).
    assert!(messages[0].starts_with("webhook failed: unsupported: outbound HTTP is not available"), "{messages:?}");
}

#[tokio::test]
async fn reroute() {
    // The destination changes only with capabilities.allowed_upstream_hosts; the session
    // says which plugin moved it and with what grant (the proxy checks that after DNS:
    // tests/e2e/egress.rs).
    let rt = runtime();
    let respond_text = |action: HttpAction| match action {
        HttpAction::Respond(local) => (local.status, String::from_utf8_lossy(&local.body).into_owned()),
        other => panic!("expected a local answer, got {other:?}"),
    };
    let ungranted = chain_of(&rt, &[manifest(REROUTE, "name = \"reroute\"\n")]).await;
    let conn = ungranted.connection(connection(1, "127.0.0.1:5000"));
    for to in ["http://169.254.169.254/latest/meta-data/", "https://example.test/", "http://example.test:8080/"] {
        let mut session = conn.http_flow(flow(1, 1));
        let mut req = request("http://example.test/", 0);
        let _ = req.headers.set("x-reroute-to", to.as_bytes());
        let (status, body) = respond_text(session.request_headers(&mut req).await);
        assert_eq!(status, 421, "{to}");
        assert!(body.starts_with("reroute refused: denied: rerouting to"), "{to}: {body}");
        assert_eq!(req.url(), "http://example.test/", "the request is unchanged");
        assert_eq!(session.reroute(), None);
    }
    // Path and query stay free.
    let mut session = conn.http_flow(flow(2, 1));
    let mut req = request("http://example.test/", 0);
    let _ = req.headers.set("x-reroute-to", b"http://example.test/elsewhere?x=1");
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(req.path, "/elsewhere?x=1");
    assert_eq!(session.reroute(), None, "the destination did not change");

    let granted =
        manifest(REROUTE, "name = \"mover\"\n[capabilities]\nallowed_upstream_hosts = [\"*.example.test\"]\n");
    let chain = chain_of(&rt, &[granted]).await;
    let conn = chain.connection(connection(2, "127.0.0.1:5001"));
    let mut session = conn.http_flow(flow(3, 2));
    let mut req = request("http://example.test/", 0);
    let _ = req.headers.set("x-reroute-to", b"https://api.example.test:8443/v1");
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(req.url(), "https://api.example.test:8443/v1");
    let moved = session.reroute().expect("the session knows who moved it");
    assert_eq!(moved.plugin, "mover");
    assert!(moved.allowed.allows_host("api.example.test") && !moved.allowed.allows_host("example.test"));
    let mut session = conn.http_flow(flow(4, 2));
    let mut req = request("http://example.test/", 0);
    let _ = req.headers.set("x-reroute-to", b"http://example.test:81/");
    assert_eq!(respond_text(session.request_headers(&mut req).await).0, 421, "only what is listed");
}

/// A runtime whose plugins' outbound HTTP is done by the network layer's client.
fn networked(logs: &Logs, client: flowgate_net::OutboundClient) -> Runtime {
    let config = flowgate_runtime::RuntimeConfig { outbound: Some(std::sync::Arc::new(client)), ..logs.config() };
    Runtime::new(config).expect("runtime")
}

/// Runs webhook-notify (manifest `extra` after its name and url) for one failed flow and
/// returns what it logged and how long the hook took.
async fn notify(rt: &Runtime, logs: &Logs, name: &str, url: &str, extra: &str) -> (Vec<String>, Duration) {
    let m = manifest(WEBHOOK_NOTIFY, &format!("name = \"{name}\"\n{extra}\n[config]\nurl = \"{url}\"\n"));
    let chain = chain_of(rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let started = Instant::now();
    session.error(&mut request("http://example.test/", 0), "dead upstream").await;
    let took = started.elapsed();
    assert!(session.failures().is_empty(), "{:?}", session.failures());
    (logs.messages(name), took)
}

/// A one-connection-at-a-time server: reads a request head and its Content-Length body,
/// waits `delay`, answers `answer`; returns the requests it read.
fn serve(answer: &'static [u8], delay: Duration) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&data).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                }
            }
            sink.lock().expect("lock").push(String::from_utf8_lossy(&data).into_owned());
            // A slow server, not synchronisation: the answer comes after the hook's deadline.
            tokio::time::sleep(delay).await;
            let _ = stream.write_all(answer).await;
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_through_the_network_layer() {
    let logs = Logs::default();
    let rt = networked(&logs, flowgate_net::OutboundClient::new());
    let grant = "[capabilities]\nallowed_outbound_hosts = [\"127.0.0.1\"]";

    // Delivered, and the 300 ms the server takes are not charged to the 50 ms hook deadline.
    let (port, seen) = serve(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok", Duration::from_millis(300));
    let url = format!("http://127.0.0.1:{port}/hook");
    let (said, took) = notify(&rt, &logs, "slow", &url, &format!("{grant}\n[limits]\nhook_timeout_ms = 50")).await;
    assert_eq!(said, ["webhook answered 201"]);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let requests = seen.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].starts_with("POST /hook HTTP/1.1\r\n"), "{}", requests[0]);
    assert!(requests[0].contains("\"error\":\"dead upstream\""), "{}", requests[0]);
    assert!(requests[0].to_ascii_lowercase().contains(&format!("host: 127.0.0.1:{port}\r\n")), "{}", requests[0]);

    // The wait is bounded by limits.outbound_timeout: an error value, not a trap.
    let (port, _) = serve(b"", Duration::from_secs(3600));
    let url = format!("http://127.0.0.1:{port}/never");
    let (said, took) =
        notify(&rt, &logs, "stuck", &url, &format!("{grant}\n[limits]\noutbound_timeout = \"200ms\"")).await;
    assert_eq!(said.len(), 1);
    assert!(said[0].starts_with("webhook failed: limit exceeded: outbound HTTP timed out after 200ms"), "{said:?}");
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(3), "{took:?}");

    // The response is capped.
    let big: &'static [u8] =
        Box::leak(format!("HTTP/1.1 200 OK\r\ncontent-length: 4096\r\n\r\n{}", "x".repeat(4096)).into_bytes().into());
    let (port, _) = serve(big, Duration::ZERO);
    let url = format!("http://127.0.0.1:{port}/big");
    let (said, _) =
        notify(&rt, &logs, "big", &url, &format!("{grant}\n[limits]\noutbound_max_response_bytes = \"1KiB\"")).await;
    assert_eq!(said.len(), 1);
    assert!(
        said[0].contains("limit exceeded: outbound HTTP response is over limits.outbound_max_response_bytes"),
        "{said:?}"
    );

    // Redirects are answers, not followed.
    let target = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    target.set_nonblocking(true).expect("nonblocking");
    let location: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{}/followed\r\ncontent-length: 0\r\n\r\n",
            target.local_addr().expect("addr").port()
        )
        .into_bytes()
        .into(),
    );
    let (port, _) = serve(location, Duration::ZERO);
    let (said, _) = notify(&rt, &logs, "redirected", &format!("http://127.0.0.1:{port}/r"), grant).await;
    assert_eq!(said, ["webhook answered 302"]);
    assert!(target.accept().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "the redirect was followed");

    // Aimed at addresses the grant does not name: an error value and no connection.
    let untouched = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    untouched.set_nonblocking(true).expect("nonblocking");
    let port = untouched.local_addr().expect("addr").port();
    let wildcard = "[capabilities]\nallowed_outbound_hosts = [\"*\"]";
    for (name, url) in [
        ("loopback", format!("http://127.0.0.1:{port}/x")),
        ("by-name", format!("http://localhost:{port}/x")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/x")),
        ("metadata", "http://169.254.169.254/latest/meta-data/".to_owned()),
    ] {
        let (said, took) = notify(&rt, &logs, name, &url, wildcard).await;
        assert_eq!(said.len(), 1, "{name}");
        assert!(said[0].starts_with("webhook failed: denied: outbound HTTP refused:"), "{name}: {said:?}");
        assert!(said[0].contains("which the allow-list does not name"), "{name}: {said:?}");
        assert!(took < Duration::from_secs(2), "{name} took {took:?}");
    }
    assert!(untouched.accept().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "a refused call connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_https_verifies_the_server() {
    // A TLS server whose certificate no webpki root signed.
    let key = rcgen::KeyPair::generate().expect("key");
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params").self_signed(&key).expect("cert");
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut buf = vec![0u8; 8192];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let url = format!("https://localhost:{port}/hook");
    let grant = "[capabilities]\nallowed_outbound_hosts = [\"localhost\"]";

    let logs = Logs::default();
    let rt = networked(&logs, flowgate_net::OutboundClient::new());
    let (said, _) = notify(&rt, &logs, "untrusted", &url, grant).await;
    assert_eq!(said.len(), 1);
    assert!(said[0].starts_with("webhook failed: error: outbound HTTP failed: TLS handshake"), "{said:?}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let logs = Logs::default();
    let rt = networked(&logs, flowgate_net::OutboundClient::with_roots(roots));
    let (said, _) = notify(&rt, &logs, "trusted", &url, grant).await;
    assert_eq!(said, ["webhook answered 200"]);
}

#[tokio::test]
async fn instance_models() {
    let rt = runtime();
    let seq = |r: &flowgate_flow::Request| header(r, "x-instance-seq").expect("seq header");
    for (model, want) in [
        (InstanceModel::PerFlow, ["1", "1", "1", "1"]),
        (InstanceModel::PerConnection, ["1", "2", "1", "2"]),
        (InstanceModel::Pooled, ["1", "2", "3", "4"]),
    ] {
        let m =
            manifest(REQUEST_ID, &format!("instance = \"{}\"\n[config]\ndebug_instance_seq = true\n", model.name()));
        let chain = chain_of(&rt, &[m]).await;
        let mut got = Vec::new();
        for c in 0..2 {
            let conn = chain.connection(connection(c, "127.0.0.1:5000"));
            for f in 0..2 {
                let mut req = request("http://example.test/", 0);
                conn.http_flow(flow(c * 10 + f, c)).request_headers(&mut req).await;
                got.push(seq(&req));
            }
        }
        assert_eq!(got, want, "{model:?}");
    }

    // The pool keeps at most pool_size warm instances.
    let m = manifest(REQUEST_ID, "instance = \"pooled\"\n[limits]\npool_size = 2\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(9, "127.0.0.1:5000"));
    let mut sessions = Vec::new();
    for f in 0..5 {
        let mut s = conn.http_flow(flow(f, 9));
        s.request_headers(&mut request("http://example.test/", 0)).await;
        sessions.push(s);
    }
    drop(sessions);
    assert_eq!(chain.plugins()[0].pooled_instances(), 2);
}

#[tokio::test]
async fn load_errors_name_the_file_and_problem() {
    let rt = runtime();
    let dir = flowgate_tests::scratch_dir("load");
    std::fs::create_dir_all(&dir).expect("temp dir");

    let err = rt.load(&manifest(REQUEST_ID, "nmae = \"typo\"\n")).await.expect_err("unknown key");
    assert!(matches!(err, LoadError::Manifest { .. }), "{err}");
    assert!(err.to_string().contains("plugin.toml") && err.to_string().contains("unknown field `nmae`"), "{err}");

    let missing = dir.join("missing.wasm");
    let err = rt.load(&missing).await.expect_err("missing file");
    assert!(err.to_string().contains("missing.wasm"), "{err}");

    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let err = rt.load(&core).await.expect_err("a core module");
    assert!(err.to_string().contains("core.wasm: not a WebAssembly component"), "{err}");

    let addon = dir.join("addon.py");
    std::fs::write(&addon, b"def request(flow):\n    pass\n").expect("write");
    let err = rt.load(&addon).await.expect_err("a mitmproxy addon");
    assert!(err.to_string().contains("addon.py: not WebAssembly"), "{err}");
    assert!(err.to_string().contains("(a Python addon? `flowgate plugin new --lang python`"), "{err}");

    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0garbage").expect("write");
    let err = rt.load(&junk).await.expect_err("junk");
    assert!(err.to_string().contains("junk.wasm: invalid component"), "{err}");

    // A component exporting an http group with the wrong shape is refused at load.
    let wrong = dir.join("wrong.wasm");
    std::fs::write(&wrong, wat::parse_str(WRONG_SHAPE).expect("valid WAT")).expect("write");
    let err = rt.load(&wrong).await.expect_err("wrong shape");
    assert!(err.to_string().contains("wrong.wasm: export of hook group `http` does not match the WIT"), "{err}");

    // A component exporting no hook group is refused.
    let none = dir.join("none.wasm");
    std::fs::write(&none, wat::parse_str("(component)").expect("valid WAT")).expect("write");
    let err = rt.load(&none).await.expect_err("no groups");
    assert!(err.to_string().contains("exports no flowgate:plugin@0.2 hook group"), "{err}");

    // A component built against the 0.1.0 contract is refused with how to rebuild it.
    let old = dir.join("old.wasm");
    std::fs::write(&old, wat::parse_str(WRONG_SHAPE.replace("@0.2.0", "@0.1.0")).expect("valid WAT")).expect("write");
    let err = rt.load(&old).await.expect_err("0.1.0");
    let text = err.to_string();
    assert!(text.contains("old.wasm: was built against flowgate:plugin@0.1.0"), "{err}");
    assert!(text.contains("flowgate plugin build"), "{err}");
    let old_import = dir.join("old-import.wasm");
    std::fs::write(
        &old_import,
        wat::parse_str(r#"(component (import "flowgate:plugin/log@0.1.0" (instance)))"#).expect("WAT"),
    )
    .expect("write");
    let err = rt.load(&old_import).await.expect_err("0.1.0 import");
    assert!(err.to_string().contains("was built against flowgate:plugin@0.1.0"), "{err}");

    // A component importing something flowgate does not provide is refused.
    let http = dir.join("wasi-http.wasm");
    std::fs::write(&http, wat::parse_str(IMPORTS_WASI_HTTP).expect("valid WAT")).expect("write");
    let err = rt.load(&http).await.expect_err("wasi:http");
    assert!(err.to_string().contains("wasi:http is not provided"), "{err}");
}

const WRONG_SHAPE: &str = r#"
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (instance $http (export "request-headers" (func $f)))
  (export "flowgate:plugin/http@0.2.0" (instance $http))
)
"#;

const IMPORTS_WASI_HTTP: &str = r#"
(component
  (import "wasi:http/outgoing-handler@0.2.0" (instance))
)
"#;

#[tokio::test]
async fn grown_instances_are_dropped_not_pooled() {
    // limits.pooled_memory_growth: an instance a large body grew goes away after its flow
    // instead of keeping its pages resident in the pool; a small flow's instance is kept.
    let rt = runtime();
    let m = manifest(
        REWRITE_BODY,
        "name = \"grow\"\n[limits]\npooled_memory_growth = \"1MiB\"\nhook_timeout_ms = 5000\ncpu_per_second = \"20s\"\n\
         [config]\npattern = \"x\"\nside = \"request\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let plugin = chain.plugins()[0].clone();
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let flow_with = async |id: u64, body: Vec<u8>| {
        let mut session = conn.http_flow(flow(id, 1));
        let mut req = request("http://example.test/", 0);
        session.request_headers(&mut req).await;
        req.body = Some(body.into());
        assert!(matches!(session.request(&mut req).await, HttpAction::Continue));
        assert!(session.failures().is_empty(), "{:?}", session.failures());
    };
    flow_with(1, b"small".to_vec()).await;
    assert_eq!((plugin.pooled_instances(), plugin.stats().dropped_grown), (1, 0));
    flow_with(2, vec![b'a'; 4 << 20]).await;
    assert_eq!((plugin.pooled_instances(), plugin.stats().dropped_grown), (0, 1), "the grown instance was dropped");
    flow_with(3, b"small again".to_vec()).await;
    assert_eq!((plugin.pooled_instances(), plugin.stats().dropped_grown), (1, 1));
}

#[tokio::test]
async fn shared_plugin_across_tasks() {
    // One loaded plugin serves many concurrent flows on different tasks.
    let chain = chain_of(&runtime(), &[REQUEST_ID.into()]).await;
    let slowest = ordinary_flows(&chain, 50).await;
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    assert_eq!(
        chain.plugins()[0].stats(),
        flowgate_runtime::PluginStats {
            calls: 50,
            failures: 0,
            throttled: 0,
            short_circuited: 0,
            dropped_grown: 0,
            breaker: BreakerState::Closed,
            cpu_time: chain.plugins()[0].stats().cpu_time,
        }
    );
}

#[tokio::test]
async fn shipped_manifests_load() {
    let rt = runtime();
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut loaded = Vec::new();
    for entry in std::fs::read_dir(&plugins).expect("plugins/") {
        let manifest = entry.expect("entry").path().join("plugin.toml");
        // Projects with a [build] table (JavaScript, Python, C) are built and loaded by
        // tests/e2e/plugins.rs.
        let project = std::fs::read_to_string(&manifest).is_ok_and(|t| t.lines().any(|l| l.trim() == "[build]"));
        if manifest.exists() && !project {
            let plugin = rt.load(&manifest).await.unwrap_or_else(|e| panic!("{e}"));
            loaded.push(plugin.name().to_owned());
        }
    }
    loaded.sort();
    assert_eq!(
        loaded,
        [
            "add-header",
            "block-list",
            "dns-override",
            "grpc-log",
            "request-id",
            "rewrite-body",
            "tcp-rewrite",
            "websocket-rewrite"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Hook groups beyond HTTP: a plugin exporting only `tcp` or only `dns` is called for those
// flows, and never for the others.

#[tokio::test]
async fn tcp_rewrite() {
    let rt = runtime();
    let m = manifest(
        TCP_REWRITE,
        "name = \"tcp-rewrite\"\n[config]\nfrom = \"OpenSSH\"\nto = \"FlowSSH\"\nkill_on = \"QUIT\"\nnotice = \"hi\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let plugin = &chain.plugins()[0];
    assert_eq!(plugin.exported_groups(), ["tcp"]);
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    // Not an HTTP plugin: an HTTP flow never calls (or instantiates) it.
    let mut http = conn.http_flow(flow(1, 1));
    let mut req = request("http://example.test/", 0);
    assert_eq!(http.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(plugin.stats().calls, 0);
    let mut tcp = conn.tcp_flow(flowgate_flow::FlowInfo { kind: flowgate_flow::FlowKind::Tcp, ..flow(2, 1) });
    assert!(tcp.has_plugins());
    assert_eq!(tcp.start().await, DataAction::Forward(Vec::new()));
    assert_eq!(tcp.flow.metadata.get("tcp-rewrite.started").map(String::as_str), Some("yes"));
    // tcp-start injected the notice toward the client.
    assert_eq!(tcp.take_injected(), [Injected::Data { to_client: true, data: bytes::Bytes::from_static(b"hi") }]);
    assert!(tcp.take_injected().is_empty());
    // The server's banner is rewritten, the client's bytes are not (side = server).
    let banner = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
    assert_eq!(tcp.message(false, banner.clone()).await, DataAction::Forward(b"SSH-2.0-FlowSSH_9.2\r\n".to_vec()));
    assert_eq!(tcp.message(true, banner.clone()).await, DataAction::Forward(banner));
    assert_eq!(tcp.message(true, b"QUIT\r\n".to_vec()).await, DataAction::Kill);
    tcp.end().await;
    assert!(tcp.failures().is_empty(), "{:?}", tcp.failures());
    assert_eq!(plugin.stats().calls, 5);
}

#[tokio::test]
async fn websocket_rewrite() {
    use flowgate_flow::{MessageKind, WebSocketMessage};
    use flowgate_runtime::{WebSocketAction, WebSocketClose};
    let rt = runtime();
    let m = manifest(
        WEBSOCKET_REWRITE,
        "name = \"wsr\"\n[config]\nfrom = \"Example\"\nto = \"Flowgate\"\ndrop = \"secret\"\ntwice = \"again\"\n\
         kill_on = \"goodbye\"\ngreeting = \"welcome\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    let plugin = &chain.plugins()[0];
    assert_eq!(plugin.exported_groups(), ["websocket"]);
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut ws =
        conn.websocket_flow(flowgate_flow::FlowInfo { kind: flowgate_flow::FlowKind::WebSocket, ..flow(2, 1) });
    assert!(ws.has_plugins());
    assert_eq!(ws.start().await, None);
    let greeting =
        WebSocketMessage { from_client: false, kind: MessageKind::Text, data: "welcome".into(), ..Default::default() };
    assert_eq!(ws.take_injected(), [Injected::WebSocket(greeting)]);
    let text = |from_client: bool, t: &'static str| WebSocketMessage {
        from_client,
        kind: MessageKind::Text,
        data: t.into(),
        ..Default::default()
    };
    // side = server: the server's text is rewritten, the client's is not.
    assert_eq!(ws.message(text(false, "Example")).await, WebSocketAction::Forward(vec![text(false, "Flowgate")]));
    assert_eq!(ws.message(text(true, "Example")).await, WebSocketAction::Forward(vec![text(true, "Example")]));
    assert_eq!(ws.message(text(true, "secret")).await, WebSocketAction::Forward(Vec::new()));
    assert_eq!(ws.message(text(true, "again")).await, WebSocketAction::Forward(vec![text(true, "again"); 2]));
    let binary = WebSocketMessage { kind: MessageKind::Binary, ..text(false, "Example") };
    assert_eq!(ws.message(binary.clone()).await, WebSocketAction::Forward(vec![binary]));
    assert_eq!(ws.message(text(true, "goodbye")).await, WebSocketAction::Kill);
    ws.end(&WebSocketClose { code: Some(1000), reason: String::new(), closed_by_client: true }).await;
    assert_eq!(ws.flow.metadata.get("websocket-rewrite.closed").map(String::as_str), Some("1000"));
    assert!(ws.failures().is_empty(), "{:?}", ws.failures());
}

#[tokio::test]
async fn tcp_replacements_over_the_limit_are_refused() {
    let rt = runtime();
    // A replacement 2000 times the size of what it replaces, past max_body_bytes.
    let text = format!(
        "name = \"tcp-rewrite\"\nfailure = \"fail-closed\"\n[limits]\nmax_body_bytes = \"1KiB\"\n[config]\nfrom = \"x\"\nto = \"{}\"\nside = \"both\"\n",
        "y".repeat(2000)
    );
    let chain = chain_of(&rt, &[manifest(TCP_REWRITE, &text)]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut tcp = conn.tcp_flow(flow(2, 1));
    assert_eq!(tcp.message(true, b"no match".to_vec()).await, DataAction::Forward(b"no match".to_vec()));
    let DataAction::Fail(failure) = tcp.message(true, b"x".to_vec()).await else { panic!("accepted") };
    assert_eq!(failure.kind, FailureKind::InvalidOutput);
    assert!(failure.message.contains("max_body_bytes"), "{failure}");
}

#[tokio::test]
async fn dns_override() {
    let rt = runtime();
    let m = manifest(
        DNS_OVERRIDE,
        "name = \"dns-override\"\n[config]\nhosts = \"api.example.com=10.1.2.3 v6.example.com=::1\"\nblock = \"ads.example.com\"\n",
    );
    let chain = chain_of(&rt, &[m]).await;
    assert_eq!(chain.plugins()[0].exported_groups(), ["dns"]);
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let query = |name: &str, record_type| DnsMessage {
        id: 7,
        flags: 0x0100,
        questions: vec![Question { name: name.into(), record_type, class: 1 }],
        ..DnsMessage::default()
    };
    let mut dns = conn.dns_flow(flow(3, 1));
    let DnsAction::Respond(answer) = dns.request(&query("API.example.com.", 1)).await else {
        panic!("no local answer")
    };
    assert_eq!((answer.id, answer.flags), (7, 0x8180));
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(answer.answers[0].data, [10, 1, 2, 3]);
    let DnsAction::Respond(v6) = conn.dns_flow(flow(4, 1)).request(&query("v6.example.com", 28)).await else {
        panic!("no AAAA answer")
    };
    assert_eq!(v6.answers[0].data, std::net::Ipv6Addr::LOCALHOST.octets());
    assert_eq!(conn.dns_flow(flow(5, 1)).request(&query("ads.example.com", 1)).await, DnsAction::Kill);
    let mut other = conn.dns_flow(flow(6, 1));
    assert_eq!(other.request(&query("example.org", 1)).await, DnsAction::Continue);
    let response = DnsMessage { flags: 0x8180, ..query("example.org", 1) };
    assert_eq!(other.response(&query("example.org", 1), &response).await, DnsAction::Continue);
    other.error(&query("example.org", 1), "upstream timed out").await;
    assert!(other.failures().is_empty());
}

#[tokio::test]
async fn grpc_log() {
    let chain = chain_of(&runtime(), &[GRPC_LOG.into()]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let mut req = request("http://grpc.test/flowgate.test.Echo/Fail", 0);
    let mut resp = response(b"");
    resp.body = None;
    resp.headers.set("content-type", b"application/grpc").expect("valid");
    // gRPC responses are streamed through (so bidirectional calls keep flowing)...
    assert_eq!(session.response_headers(&mut req, &mut resp).await, HttpAction::Continue);
    assert_eq!(resp.body_mode, BodyMode::Stream);
    // ...and the response hook reads the status from the trailers.
    resp.trailers.append("grpc-status", b"7").expect("valid");
    resp.trailers.append("grpc-message", b"denied by test").expect("valid");
    assert_eq!(session.response(&mut req, &mut resp).await, HttpAction::Continue);
    assert_eq!(session.flow.metadata.get("grpc.status").map(String::as_str), Some("7"));
    assert_eq!(session.flow.metadata.get("grpc.message").map(String::as_str), Some("denied by test"));
    // Not gRPC: left alone.
    let mut html = response(b"<p>");
    let mut other = conn.http_flow(flow(2, 1));
    assert_eq!(other.response_headers(&mut req, &mut html).await, HttpAction::Continue);
    assert_eq!(html.body_mode, BodyMode::Pass);
    assert!(session.failures().is_empty() && other.failures().is_empty());
}

/// A manifest `filter` decides which flows call the plugin: request-id (every HTTP hook)
/// with `~d api.test & ~m POST` is called for the two matching flows only — its call
/// count says so — and a filter on the response (`~s & ~c 404`) is matched at each hook
/// with what the flow has then, so it calls nothing before the response.
#[tokio::test]
async fn manifest_filter_limits_the_flows_a_plugin_sees() {
    let rt = runtime();
    let m = manifest(REQUEST_ID, "name = \"request-id\"\nfilter = \"~d api.test & ~m POST\"\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let flows = [
        ("POST", "http://api.test/a"),
        ("GET", "http://api.test/b"),
        ("POST", "http://www.test/c"),
        ("POST", "http://api.test/d"),
    ];
    for (n, (method, url)) in flows.iter().enumerate() {
        let mut session = conn.http_flow(flow(n as u64 + 1, 1));
        let mut req = request(url, 0);
        req.method = (*method).to_owned();
        assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
        assert_eq!(session.request(&mut req).await, HttpAction::Continue);
        let mut resp = response(b"ok");
        assert_eq!(session.response_headers(&mut req, &mut resp).await, HttpAction::Continue);
        assert_eq!(session.response(&mut req, &mut resp).await, HttpAction::Continue);
        let tagged = req.headers.contains("x-request-id");
        assert_eq!(tagged, *method == "POST" && url.contains("api.test"), "{method} {url}");
    }
    // Two matching flows, four HTTP hooks each.
    assert_eq!(chain.plugins()[0].stats().calls, 8);

    let m = manifest(REQUEST_ID, "name = \"request-id\"\nfilter = \"~s & ~c 404\"\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(2, "127.0.0.1:5000"));
    for (n, status) in [200u16, 404].into_iter().enumerate() {
        let mut session = conn.http_flow(flow(n as u64 + 10, 2));
        let mut req = request("http://api.test/", 0);
        session.request_headers(&mut req).await;
        session.request(&mut req).await;
        let mut resp = response(b"");
        resp.status = status;
        session.response_headers(&mut req, &mut resp).await;
        session.response(&mut req, &mut resp).await;
    }
    // The 404's two response hooks.
    assert_eq!(chain.plugins()[0].stats().calls, 2);

    // `~e` is not settled by the request head: only the error hook of a failing flow.
    let m = manifest(REQUEST_ID, "name = \"request-id\"\nfilter = \"~e\"\n");
    let chain = chain_of(&rt, &[m]).await;
    let conn = chain.connection(connection(3, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(20, 3));
    let mut req = request("http://api.test/", 0);
    session.request_headers(&mut req).await;
    session.request(&mut req).await;
    assert_eq!(chain.plugins()[0].stats().calls, 0);
    session.error(&mut req, "upstream refused").await;
    assert_eq!(chain.plugins()[0].stats().calls, 1);

    let err = rt.load(&manifest(REQUEST_ID, "filter = \"~d (\"\n")).await.expect_err("a bad filter");
    assert!(err.to_string().contains("filter:"), "{err}");
}

/// One ordinary HTTP flow's four hooks through `chain`.
async fn four_hooks(chain: &Chain, id: u64) -> (flowgate_flow::Request, flowgate_flow::Response) {
    let conn = chain.connection(connection(id, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(id, id));
    let mut req = request("http://example.test/", 0);
    assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
    assert_eq!(session.request(&mut req).await, HttpAction::Continue);
    let mut resp = response(b"ok");
    assert_eq!(session.response_headers(&mut req, &mut resp).await, HttpAction::Continue);
    assert_eq!(session.response(&mut req, &mut resp).await, HttpAction::Continue);
    assert!(session.failures().is_empty(), "{:?}", session.failures());
    (req, resp)
}

/// A plugin is called only for the hooks it implements: what its impls write, when they
/// carry `#[flowgate_sdk::hooks]` (the SDK exports the list as `hook-list`), or the
/// manifest's `hooks`; with neither, every hook of its groups.
#[tokio::test]
async fn only_the_hooks_a_plugin_implements_are_called() {
    let rt = runtime();
    let add = "name = \"add-header\"\n[config]\nrequest = \"X-Added: yes\"\nresponse = \"Server: flowgate\"\n";
    let chain = chain_of(&rt, &[manifest(ADD_HEADER, add)]).await;
    let plugin = &chain.plugins()[0];
    let lifecycle = [Hook::Configure, Hook::Running, Hook::Done];
    assert_eq!(plugin.called_hooks(), [&lifecycle[..], &[Hook::RequestHeaders, Hook::ResponseHeaders]].concat());
    let before = plugin.stats().calls;
    let (req, resp) = four_hooks(&chain, 1).await;
    assert_eq!(header(&req, "x-added").as_deref(), Some("yes"));
    assert_eq!(resp.headers.get_str("server"), Some("flowgate"));
    assert_eq!(plugin.stats().calls - before, 2, "request-headers and response-headers, not request or response");

    // trap's impls carry no attribute: every hook of its two groups is called.
    let chain = chain_of(&rt, &[manifest(TRAP, "name = \"trap\"\n")]).await;
    let plugin = &chain.plugins()[0];
    assert_eq!(plugin.called_hooks().len(), 8 + 3, "{:?}", plugin.called_hooks());
    let (req, _) = four_hooks(&chain, 2).await;
    assert_eq!(header(&req, "x-trap-plugin").as_deref(), Some("survived"));
    assert_eq!(plugin.stats().calls, 4);

    // The manifest says it for languages without the macro, and wins over the export.
    let chain = chain_of(&rt, &[manifest(TRAP, "name = \"trap\"\nhooks = [\"request-headers\"]\n")]).await;
    let plugin = &chain.plugins()[0];
    assert_eq!(plugin.called_hooks(), [Hook::RequestHeaders]);
    let (req, _) = four_hooks(&chain, 3).await;
    assert_eq!(header(&req, "x-trap-plugin").as_deref(), Some("survived"));
    assert_eq!(plugin.stats().calls, 1);
    let only_response = "name = \"add-header\"\nhooks = [\"response-headers\"]\n[config]\nrequest = \"X-Added: yes\"\nresponse = \"Server: flowgate\"\n";
    let chain = chain_of(&rt, &[manifest(ADD_HEADER, only_response)]).await;
    assert_eq!(
        chain.plugins()[0].called_hooks(),
        [&lifecycle[..], &[Hook::ResponseHeaders]].concat(),
        "lifecycle hooks always run"
    );
    let (req, resp) = four_hooks(&chain, 4).await;
    assert_eq!(header(&req, "x-added"), None, "request-headers is not called");
    assert_eq!(resp.headers.get_str("server"), Some("flowgate"));

    // A name that is no hook is refused at load, with the name.
    let err = rt.load(&manifest(TRAP, "hooks = [\"request_headers\"]\n")).await.expect_err("not a hook's name");
    assert!(err.to_string().contains("unknown hook \"request_headers\""), "{err}");
}

/// The benchmark fixture makes the host call it is told to, `n` times, and says so.
#[tokio::test]
async fn host_calls() {
    let rt = runtime();
    for call in ["get-header", "headers", "set-header", "body", "none"] {
        let m = manifest(HOST_CALLS, &format!("name = \"host-calls\"\n[config]\ncall = \"{call}\"\nn = \"7\"\n"));
        let chain = chain_of(&rt, &[m]).await;
        let conn = chain.connection(connection(1, "127.0.0.1:5000"));
        let mut session = conn.http_flow(flow(1, 1));
        let mut req = request("http://example.test/", 2);
        req.body = Some(bytes::Bytes::from_static(b"a body"));
        assert_eq!(session.request_headers(&mut req).await, HttpAction::Continue);
        assert_eq!(session.request(&mut req).await, HttpAction::Continue);
        assert!(session.failures().is_empty(), "{call}: {:?}", session.failures());
        assert_eq!(header(&req, "x-host-calls-done").as_deref(), Some("7"), "{call}");
        assert_eq!(header(&req, "x-host-calls").as_deref(), (call == "set-header").then_some("6"), "{call}");
    }
}
