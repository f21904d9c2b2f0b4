//! The next-layer decision's table tests.

use super::*;

fn hello(sni: &str) -> Hello {
    Hello { sni: Some(sni.to_owned()), alpn: vec!["h2".to_owned()] }
}

fn target(scheme: Scheme, host: &str, port: u16) -> Target {
    Target::new(scheme, host.to_owned(), port)
}

fn reverse() -> Mode {
    Mode::parse("reverse:https://origin.test:8443").expect("mode").0
}

fn upstream() -> Mode {
    Mode::parse("upstream:http://127.0.0.1:3128").expect("mode").0
}

fn tunnel() -> Stage {
    Stage::Tunnel { host: "example.com".to_owned(), port: 443, pinned: None }
}

fn decrypted(alpn: Option<&[u8]>, in_tunnel: bool) -> Stage {
    Stage::Decrypted { target: target(Scheme::Https, "example.com", 443), alpn: alpn.map(<[u8]>::to_vec), in_tunnel }
}

fn proxy_decrypted(alpn: Option<&[u8]>) -> Stage {
    Stage::ProxyDecrypted { alpn: alpn.map(<[u8]>::to_vec) }
}

fn is(detected: Detected) -> Start {
    Start::Is(detected)
}

/// A table row: mode, stage, first bytes, verdict, and the expected decision.
type Row<'a> = (&'a Mode, Stage, Option<Start>, Option<TlsVerdict>, Decision);

/// One row: the decision for `start` (and `verdict`) at `stage` in `mode`.
fn decide(
    mode: &Mode,
    stage: &Stage,
    start: Option<Start>,
    verdict: Option<TlsVerdict>,
    opts: &ProxyOptions,
) -> Decision {
    next_layer(mode, stage, Seen { start: start.as_ref(), verdict }, opts)
}

fn run(layer: Layer) -> Decision {
    Decision::Run(layer)
}

fn raw(host: &str, port: u16, relay: Relay) -> Decision {
    let scheme = if relay == Relay::Decrypted { Scheme::Https } else { Scheme::Http };
    run(Layer::RawTcp { target: target(scheme, host, port), relay })
}

fn closes(decision: &Decision) -> bool {
    matches!(decision, Decision::Run(Layer::Close { .. }))
}

#[test]
fn the_decision_table() {
    let opts = ProxyOptions::default();
    let regular = Mode::Regular;
    let (up, rv) = (upstream(), reverse());
    let plain = Some(target(Scheme::Http, "example.com", 443));
    let https = target(Scheme::Https, "example.com", 443);
    let rev = Target::new(Scheme::Https, "origin.test".into(), 8443);
    let intercept =
        |target: Target, in_tunnel| run(Layer::TlsIntercept { target, hello: hello("example.com"), in_tunnel });
    let decided = Some(TlsVerdict::Decided(TlsDecision::Intercept));
    let tls = || Some(is(Detected::TlsClientHello(hello("example.com"))));
    let rows: Vec<Row<'_>> = vec![
        // Nothing read yet: read, under the stage's deadlines.
        (
            &regular,
            Stage::Accepted,
            None,
            None,
            Decision::Read(Deadlines { first_byte: opts.header_read_timeout, decision: opts.header_read_timeout }),
        ),
        (
            &regular,
            tunnel(),
            None,
            None,
            Decision::Read(Deadlines { first_byte: opts.server_first_timeout, decision: opts.header_read_timeout }),
        ),
        // Regular and upstream mode: the explicit proxy's HTTP.
        (&regular, Stage::Accepted, Some(is(Detected::Http1)), None, run(Layer::Http1 { fixed: None })),
        (&regular, Stage::Accepted, Some(is(Detected::Unknown)), None, run(Layer::Http1 { fixed: None })),
        (&regular, Stage::Accepted, Some(is(Detected::Http2Preface)), None, run(Layer::Http2 { fixed: None })),
        (&up, Stage::Accepted, Some(is(Detected::Http1)), None, run(Layer::Http1 { fixed: None })),
        // Regular and upstream mode, TLS to the proxy itself (a secure web proxy): asked
        // about, then terminated with no upstream; the plaintext is the explicit proxy.
        (&regular, Stage::Accepted, tls(), None, Decision::AskTls(hello("example.com"))),
        (&regular, Stage::Accepted, tls(), decided, run(Layer::SecureProxy { hello: hello("example.com") })),
        (&up, Stage::Accepted, tls(), None, Decision::AskTls(hello("example.com"))),
        (&up, Stage::Accepted, tls(), decided, run(Layer::SecureProxy { hello: hello("example.com") })),
        (
            &regular,
            Stage::Accepted,
            Some(is(Detected::TlsInvalid("bad".into()))),
            None,
            run(Layer::TlsFailed { reason: "bad".into() }),
        ),
        (&regular, proxy_decrypted(Some(b"h2")), None, None, run(Layer::Http2 { fixed: None })),
        (&up, proxy_decrypted(Some(b"h2")), None, None, run(Layer::Http2 { fixed: None })),
        (&regular, proxy_decrypted(Some(b"http/1.1")), None, None, run(Layer::Http1 { fixed: None })),
        (
            &regular,
            proxy_decrypted(None),
            None,
            None,
            Decision::Read(Deadlines { first_byte: opts.header_read_timeout, decision: opts.header_read_timeout }),
        ),
        (&regular, proxy_decrypted(None), Some(is(Detected::Http1)), None, run(Layer::Http1 { fixed: None })),
        (&up, proxy_decrypted(None), Some(is(Detected::Http1)), None, run(Layer::Http1 { fixed: None })),
        (&regular, proxy_decrypted(None), Some(is(Detected::Unknown)), None, run(Layer::Http1 { fixed: None })),
        (&regular, proxy_decrypted(None), Some(is(Detected::Http2Preface)), None, run(Layer::Http2 { fixed: None })),
        // After CONNECT: TLS is asked about, then intercepted; HTTP served; the rest relayed.
        (&regular, tunnel(), tls(), None, Decision::AskTls(hello("example.com"))),
        (&regular, tunnel(), tls(), decided, intercept(https.clone(), true)),
        (&up, tunnel(), tls(), decided, intercept(https.clone(), true)),
        (
            &regular,
            tunnel(),
            tls(),
            Some(TlsVerdict::Decided(TlsDecision::Passthrough)),
            raw("example.com", 443, Relay::Passthrough),
        ),
        (
            &regular,
            tunnel(),
            Some(is(Detected::TlsInvalid("bad".into()))),
            None,
            run(Layer::TlsFailed { reason: "bad".into() }),
        ),
        (&regular, tunnel(), Some(is(Detected::Http1)), None, run(Layer::Http1 { fixed: plain.clone() })),
        (
            &regular,
            tunnel(),
            Some(is(Detected::Http2Preface)),
            None,
            run(Layer::Http2 {
                fixed: Some(Target { prior_knowledge: true, ..target(Scheme::Http, "example.com", 443) }),
            }),
        ),
        (&regular, tunnel(), Some(is(Detected::Unknown)), None, raw("example.com", 443, Relay::Cleartext)),
        (&regular, tunnel(), Some(is(Detected::Socks5)), None, raw("example.com", 443, Relay::Cleartext)),
        (&regular, tunnel(), Some(Start::Silent), None, raw("example.com", 443, Relay::Cleartext)),
        // Decrypted: ALPN decides; without it the bytes do.
        (&regular, decrypted(Some(b"h2"), true), None, None, run(Layer::Http2 { fixed: Some(https.clone()) })),
        (&regular, decrypted(Some(b"http/1.1"), true), None, None, run(Layer::Http1 { fixed: Some(https.clone()) })),
        (
            &regular,
            decrypted(None, true),
            None,
            None,
            Decision::Read(Deadlines { first_byte: opts.server_first_timeout, decision: opts.header_read_timeout }),
        ),
        (
            &regular,
            decrypted(None, true),
            Some(is(Detected::Http1)),
            None,
            run(Layer::Http1 { fixed: Some(https.clone()) }),
        ),
        (
            &regular,
            decrypted(None, true),
            Some(is(Detected::Http2Preface)),
            None,
            run(Layer::Http2 { fixed: Some(https.clone()) }),
        ),
        (&regular, decrypted(None, true), Some(is(Detected::Unknown)), None, raw("example.com", 443, Relay::Decrypted)),
        (&regular, decrypted(None, true), Some(Start::Silent), None, raw("example.com", 443, Relay::Decrypted)),
        (
            &rv,
            decrypted(None, false),
            Some(is(Detected::Unknown)),
            None,
            run(Layer::Http1 { fixed: Some(https.clone()) }),
        ),
        // Reverse mode: TLS intercepted toward the fixed upstream, anything else is HTTP.
        (&rv, Stage::Accepted, tls(), decided, intercept(rev.clone(), false)),
        (&rv, Stage::Accepted, Some(is(Detected::Http1)), None, run(Layer::Http1 { fixed: Some(rev.clone()) })),
        (&rv, Stage::Accepted, Some(is(Detected::Unknown)), None, run(Layer::Http1 { fixed: Some(rev.clone()) })),
        (&rv, Stage::Accepted, Some(is(Detected::Http2Preface)), None, run(Layer::Http2 { fixed: Some(rev.clone()) })),
        // An h2c upgrade needs no bytes to decide.
        (
            &regular,
            Stage::UpgradedH2c { fields: vec![], fixed: None },
            None,
            None,
            run(Layer::H2cUpgraded { fields: vec![], fixed: None }),
        ),
    ];
    for (i, (mode, stage, start, verdict, expected)) in rows.into_iter().enumerate() {
        assert_eq!(decide(mode, &stage, start, verdict, &opts), expected, "row {i}: {stage:?}");
    }
}

#[test]
fn silence_stalls_and_closes_end_the_connection() {
    let opts = ProxyOptions::default();
    for start in [Start::Silent, Start::Stalled, Start::Closed] {
        assert!(closes(&decide(&Mode::Regular, &Stage::Accepted, Some(start.clone()), None, &opts)), "{start:?}");
        assert!(closes(&decide(&reverse(), &Stage::Accepted, Some(start.clone()), None, &opts)), "{start:?}");
    }
    // In a tunnel silence means "the server speaks first"; a stall or a close ends it.
    for start in [Start::Stalled, Start::Closed] {
        assert!(closes(&decide(&Mode::Regular, &tunnel(), Some(start.clone()), None, &opts)), "{start:?}");
    }
    // So do they inside TLS to the proxy itself.
    for start in [Start::Silent, Start::Stalled, Start::Closed] {
        assert!(closes(&decide(&Mode::Regular, &proxy_decrypted(None), Some(start.clone()), None, &opts)));
    }
}

#[test]
fn tls_to_the_proxy_itself_has_no_target_to_pass_through_to() {
    let tls = || Some(is(Detected::TlsClientHello(hello("example.com"))));
    // ignore_hosts and allow_hosts name destinations; the SNI here names the proxy.
    let ignore_all =
        ProxyOptions { ignore_hosts: Some(regex::Regex::new(".").expect("re")), ..ProxyOptions::default() };
    let allow_none =
        ProxyOptions { allow_hosts: Some(regex::Regex::new("^other\\.").expect("re")), ..ProxyOptions::default() };
    for opts in [&ignore_all, &allow_none] {
        assert_eq!(decide(&Mode::Regular, &Stage::Accepted, tls(), None, opts), Decision::AskTls(hello("example.com")));
    }
    // A plugin's passthrough has nowhere to go; a failed plugin closes, as anywhere.
    let opts = ProxyOptions::default();
    let passthrough = Some(TlsVerdict::Decided(TlsDecision::Passthrough));
    assert!(closes(&decide(&Mode::Regular, &Stage::Accepted, tls(), passthrough, &opts)));
    assert!(closes(&decide(&upstream(), &Stage::Accepted, tls(), Some(TlsVerdict::Failed), &opts)));
    // TLS again right inside it, with no CONNECT, is not served.
    assert!(closes(&decide(&Mode::Regular, &proxy_decrypted(None), tls(), None, &opts)));
    // Without http2 the plaintext's prior-knowledge preface is HTTP/1's to refuse.
    let no_h2 = ProxyOptions { http2: false, ..ProxyOptions::default() };
    assert_eq!(
        decide(&Mode::Regular, &proxy_decrypted(None), Some(is(Detected::Http2Preface)), None, &no_h2),
        run(Layer::Http1 { fixed: None })
    );
}

#[test]
fn ignore_and_allow_hosts_match_the_sni_or_the_connect_host() {
    let by_sni = ProxyOptions {
        ignore_hosts: Some(regex::Regex::new("^example\\.com:443$").expect("re")),
        ..ProxyOptions::default()
    };
    let start = Some(is(Detected::TlsClientHello(hello("example.com"))));
    let ip_tunnel = Stage::Tunnel { host: "10.0.0.1".into(), port: 443, pinned: None };
    assert_eq!(
        decide(&Mode::Regular, &ip_tunnel, start.clone(), None, &by_sni),
        raw("10.0.0.1", 443, Relay::Passthrough)
    );
    let by_host =
        ProxyOptions { ignore_hosts: Some(regex::Regex::new("^10\\.").expect("re")), ..ProxyOptions::default() };
    assert_eq!(
        decide(&Mode::Regular, &ip_tunnel, start.clone(), None, &by_host),
        raw("10.0.0.1", 443, Relay::Passthrough)
    );
    let allow =
        ProxyOptions { allow_hosts: Some(regex::Regex::new("^other\\.").expect("re")), ..ProxyOptions::default() };
    assert_eq!(
        decide(&Mode::Regular, &tunnel(), start.clone(), None, &allow),
        raw("example.com", 443, Relay::Passthrough)
    );
    let allowed =
        ProxyOptions { allow_hosts: Some(regex::Regex::new("^example\\.").expect("re")), ..ProxyOptions::default() };
    assert_eq!(
        decide(&Mode::Regular, &tunnel(), start.clone(), None, &allowed),
        Decision::AskTls(hello("example.com"))
    );
    // A plugin that failed closes the connection.
    assert!(closes(&decide(&Mode::Regular, &tunnel(), start, Some(TlsVerdict::Failed), &allowed)));
}

#[test]
fn options_turn_protocols_off() {
    let no_raw = ProxyOptions { rawtcp: false, ..ProxyOptions::default() };
    assert!(closes(&decide(&Mode::Regular, &tunnel(), Some(is(Detected::Unknown)), None, &no_raw)));
    assert!(closes(&decide(&Mode::Regular, &tunnel(), Some(Start::Silent), None, &no_raw)));
    let no_h2 = ProxyOptions { http2: false, ..ProxyOptions::default() };
    assert_eq!(
        decide(&Mode::Regular, &Stage::Accepted, Some(is(Detected::Http2Preface)), None, &no_h2),
        run(Layer::Http1 { fixed: None })
    );
    assert_eq!(
        decide(&Mode::Regular, &tunnel(), Some(is(Detected::Http2Preface)), None, &no_h2),
        run(Layer::Http1 { fixed: Some(target(Scheme::Http, "example.com", 443)) })
    );
}
