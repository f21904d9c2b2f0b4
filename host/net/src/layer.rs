//! The one next-layer decision (mitmproxy's `NextLayer`), sans-IO: given the proxy mode,
//! where in a connection's life the stream is (its [`Stage`]), what its first bytes are
//! and the plugins' tls-clienthello verdict, which layer runs next. This is the only code
//! that reads the mode's kind, `ignore_hosts` / `allow_hosts` and the verdicts; layers
//! only say "done" or "switch to this stage with this stream" (see `conn.rs`).

use std::time::Duration;

use flowgate_flow::{Scheme, TlsDecision};

use crate::ProxyOptions;
use crate::detect::{Deadlines, Detected, Hello, Start};
use crate::mode::Mode;
use crate::upstream::Target;

/// Where in a connection's life a stream is when the next layer is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Just accepted by a listener of the mode.
    Accepted,
    /// Inside a CONNECT tunnel to `host:port` that flowgate answered with 2xx.
    Tunnel {
        /// The CONNECT host.
        host: String,
        /// The CONNECT port.
        port: u16,
        /// The address a plugin's reroute of the CONNECT was checked against, connected
        /// to as it is (see `Target::pinned`).
        pinned: Option<std::net::SocketAddr>,
    },
    /// The plaintext of TLS flowgate terminated.
    Decrypted {
        /// Where the connection's traffic goes (`https`).
        target: Target,
        /// The protocol agreed with the client by ALPN, if any.
        alpn: Option<Vec<u8>>,
        /// Whether the TLS was inside a CONNECT tunnel (else the mode fixed the target).
        in_tunnel: bool,
    },
    /// The plaintext of TLS to the proxy itself (a secure web proxy, regular and upstream
    /// mode): the explicit proxy's requests follow, so no target is known yet.
    ProxyDecrypted {
        /// The protocol agreed with the client by ALPN, if any.
        alpn: Option<Vec<u8>>,
    },
    /// After `101 Switching Protocols` to h2c: the upgrading request becomes stream 1.
    UpgradedH2c {
        /// The upgrading request's pseudo-header and header fields.
        fields: Vec<(String, Vec<u8>)>,
        /// The target the HTTP/1.1 layer had, if the mode or a tunnel fixed one.
        fixed: Option<Target>,
    },
}

/// How a raw TCP relay sees its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relay {
    /// Cleartext both ways: flowgate sees the bytes.
    Cleartext,
    /// TLS flowgate terminated with the client; TLS to the upstream too.
    Decrypted,
    /// TLS passed through undecrypted (ignored host, or a plugin's verdict).
    Passthrough,
}

/// A layer to run on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layer {
    /// HTTP/1.x (hyper's server); `fixed` is the target when the mode or a tunnel says
    /// where requests go, `None` for an explicit proxy's absolute-form requests.
    Http1 {
        /// Fixed target.
        fixed: Option<Target>,
    },
    /// HTTP/2 (prior knowledge or ALPN `h2`).
    Http2 {
        /// Fixed target.
        fixed: Option<Target>,
    },
    /// HTTP/2 after an h2c upgrade.
    H2cUpgraded {
        /// The upgrading request, as stream 1's fields.
        fields: Vec<(String, Vec<u8>)>,
        /// Fixed target.
        fixed: Option<Target>,
    },
    /// Terminate the client's TLS with a minted certificate (upstream connected first).
    TlsIntercept {
        /// Where the decrypted traffic goes.
        target: Target,
        /// What the client offered.
        hello: Hello,
        /// Whether inside a CONNECT tunnel.
        in_tunnel: bool,
    },
    /// Terminate the client's TLS to the proxy itself (a secure web proxy) with a
    /// certificate for its SNI, or for the listener's address without one; no upstream is
    /// connected (there is no target until the requests inside say one).
    SecureProxy {
        /// What the client offered.
        hello: Hello,
    },
    /// Relay bytes both ways, recorded as a TCP flow.
    RawTcp {
        /// The server (its scheme is `https` when the upstream side is TLS).
        target: Target,
        /// How the bytes are seen.
        relay: Relay,
    },
    /// The client's TLS handshake cannot go on; recorded as tls-failed.
    TlsFailed {
        /// Why.
        reason: String,
    },
    /// Close the connection.
    Close {
        /// Why (logged).
        reason: String,
    },
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Read the stream's first bytes under these deadlines, then decide again.
    Read(Deadlines),
    /// Ask the plugins' tls-clienthello hooks about this ClientHello, then decide again.
    AskTls(Hello),
    /// Run this layer.
    Run(Layer),
}

/// The plugins' answer at tls-clienthello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsVerdict {
    /// A decision.
    Decided(TlsDecision),
    /// A plugin failed and its policy closes the connection.
    Failed,
}

/// What the decision knows about the stream so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen<'a> {
    /// How the first bytes were classified, once read.
    pub start: Option<&'a Start>,
    /// The plugins' tls-clienthello verdict, once asked.
    pub verdict: Option<TlsVerdict>,
}

/// Chooses what comes next for a stream at `stage` in `mode`.
pub(crate) fn next_layer(mode: &Mode, stage: &Stage, seen: Seen<'_>, options: &ProxyOptions) -> Decision {
    let head = options.header_read_timeout;
    let patient = Deadlines { first_byte: head, decision: head };
    // Inside a tunnel the client may wait for the server to speak first (SMTP, SSH).
    let tunnel = Deadlines { first_byte: options.server_first_timeout.min(head), decision: head };
    let h2 = |fixed: Option<Target>| if options.http2 { Layer::Http2 { fixed } } else { Layer::Http1 { fixed } };
    match stage {
        Stage::UpgradedH2c { fields, fixed } => {
            Decision::Run(Layer::H2cUpgraded { fields: fields.clone(), fixed: fixed.clone() })
        }
        Stage::Accepted => {
            let Some(start) = seen.start else { return Decision::Read(patient) };
            match mode {
                Mode::Regular | Mode::Upstream { .. } => match start {
                    Start::Is(Detected::TlsClientHello(hello)) => secure_proxy(hello, seen.verdict),
                    Start::Is(Detected::TlsInvalid(reason)) => {
                        Decision::Run(Layer::TlsFailed { reason: reason.clone() })
                    }
                    other => Decision::Run(explicit(other, h2(None), head)),
                },
                Mode::Reverse { scheme, prior_knowledge, host, port } => {
                    let target =
                        Target { prior_knowledge: *prior_knowledge, ..Target::new(*scheme, host.clone(), *port) };
                    match start {
                        Start::Is(Detected::TlsClientHello(hello)) => tls(target, hello, false, seen.verdict, options),
                        Start::Is(Detected::TlsInvalid(reason)) => {
                            Decision::Run(Layer::TlsFailed { reason: reason.clone() })
                        }
                        Start::Is(Detected::Http2Preface) => Decision::Run(h2(Some(target))),
                        Start::Is(_) => Decision::Run(Layer::Http1 { fixed: Some(target) }),
                        other => Decision::Run(quiet(other, head)),
                    }
                }
            }
        }
        Stage::Tunnel { host, port, pinned } => {
            let Some(start) = seen.start else { return Decision::Read(tunnel) };
            let plain = Target { pinned: *pinned, ..Target::new(Scheme::Http, host.clone(), *port) };
            match start {
                Start::Is(Detected::TlsClientHello(hello)) => {
                    let target = Target { pinned: *pinned, ..Target::new(Scheme::Https, host.clone(), *port) };
                    tls(target, hello, true, seen.verdict, options)
                }
                Start::Is(Detected::TlsInvalid(reason)) => Decision::Run(Layer::TlsFailed { reason: reason.clone() }),
                // A client speaking HTTP/2 with prior knowledge inside a tunnel knows the origin does.
                Start::Is(Detected::Http2Preface) if options.http2 => {
                    Decision::Run(Layer::Http2 { fixed: Some(Target { prior_knowledge: true, ..plain }) })
                }
                Start::Is(Detected::Http1 | Detected::Http2Preface) => {
                    Decision::Run(Layer::Http1 { fixed: Some(plain) })
                }
                Start::Is(Detected::Socks5 | Detected::Unknown) | Start::Silent if options.rawtcp => {
                    Decision::Run(Layer::RawTcp { target: plain, relay: Relay::Cleartext })
                }
                other => Decision::Run(quiet(other, head)),
            }
        }
        Stage::ProxyDecrypted { alpn } => {
            match alpn.as_deref() {
                Some(b"h2") => return Decision::Run(Layer::Http2 { fixed: None }),
                Some(b"http/1.1" | b"http/1.0") => return Decision::Run(Layer::Http1 { fixed: None }),
                _ => {}
            }
            let Some(start) = seen.start else { return Decision::Read(patient) };
            Decision::Run(match start {
                Start::Is(Detected::TlsClientHello(_) | Detected::TlsInvalid(_)) => {
                    close("TLS inside TLS to the proxy itself, with no CONNECT before it")
                }
                other => explicit(other, h2(None), head),
            })
        }
        Stage::Decrypted { target, alpn, in_tunnel } => {
            match alpn.as_deref() {
                Some(b"h2") => return Decision::Run(Layer::Http2 { fixed: Some(target.clone()) }),
                Some(b"http/1.1" | b"http/1.0") => return Decision::Run(Layer::Http1 { fixed: Some(target.clone()) }),
                _ => {}
            }
            let Some(start) = seen.start else { return Decision::Read(if *in_tunnel { tunnel } else { patient }) };
            Decision::Run(match start {
                Start::Is(Detected::Http2Preface) => h2(Some(target.clone())),
                Start::Is(Detected::Http1) => Layer::Http1 { fixed: Some(target.clone()) },
                Start::Is(_) | Start::Silent if *in_tunnel && options.rawtcp => {
                    Layer::RawTcp { target: target.clone(), relay: Relay::Decrypted }
                }
                // Reverse mode serves HTTP whatever comes (a 400 for what it cannot parse).
                Start::Is(_) => Layer::Http1 { fixed: Some(target.clone()) },
                other => quiet(other, head),
            })
        }
    }
}

/// The explicit proxy (regular and upstream mode) on a stream that is not TLS: HTTP/2
/// with prior knowledge, else HTTP/1 — absolute-form requests and CONNECT; it answers
/// 400 to what it cannot parse.
fn explicit(start: &Start, h2: Layer, head: Duration) -> Layer {
    match start {
        Start::Is(Detected::Http2Preface) => h2,
        Start::Is(_) => Layer::Http1 { fixed: None },
        other => quiet(other, head),
    }
}

/// TLS to the proxy itself (a secure web proxy): the plugins are asked, as about any
/// client's TLS, then flowgate terminates it. `ignore_hosts` / `allow_hosts` do not
/// apply — the SNI names the proxy, not a destination — and a passthrough verdict closes
/// the connection: there is no target to relay the TLS to.
fn secure_proxy(hello: &Hello, verdict: Option<TlsVerdict>) -> Decision {
    match verdict {
        None => Decision::AskTls(hello.clone()),
        Some(TlsVerdict::Decided(TlsDecision::Intercept)) => Decision::Run(Layer::SecureProxy { hello: hello.clone() }),
        Some(TlsVerdict::Decided(TlsDecision::Passthrough)) => {
            Decision::Run(close("a plugin passed TLS to the proxy itself through, but it has no target"))
        }
        Some(TlsVerdict::Failed) => Decision::Run(close("a plugin failed at tls-clienthello")),
    }
}

/// The names a ClientHello's host is matched against: its SNI and the target's host.
fn hello_names(hello: &Hello, target: &Target) -> Vec<String> {
    let mut names: Vec<String> = hello.sni.iter().cloned().collect();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&target.host)) {
        names.push(target.host.clone());
    }
    names.into_iter().map(|n| format!("{n}:{}", target.port)).collect()
}

/// TLS from the client: passed through when ignored (by `ignore_hosts`, `allow_hosts` or
/// a plugin), else intercepted.
fn tls(
    target: Target,
    hello: &Hello,
    in_tunnel: bool,
    verdict: Option<TlsVerdict>,
    options: &ProxyOptions,
) -> Decision {
    let names = hello_names(hello, &target);
    let ignored = options.ignore_hosts.as_ref().is_some_and(|r| names.iter().any(|n| r.is_match(n)))
        || options.allow_hosts.as_ref().is_some_and(|r| !names.iter().any(|n| r.is_match(n)));
    let passthrough = |target: Target| {
        let target = Target { scheme: Scheme::Http, prior_knowledge: false, ..target };
        Decision::Run(Layer::RawTcp { target, relay: Relay::Passthrough })
    };
    if ignored {
        return passthrough(target);
    }
    match verdict {
        None => Decision::AskTls(hello.clone()),
        Some(TlsVerdict::Decided(TlsDecision::Passthrough)) => passthrough(target),
        Some(TlsVerdict::Decided(TlsDecision::Intercept)) => {
            Decision::Run(Layer::TlsIntercept { target, hello: hello.clone(), in_tunnel })
        }
        Some(TlsVerdict::Failed) => Decision::Run(close("a plugin failed at tls-clienthello")),
    }
}

fn close(reason: &str) -> Layer {
    Layer::Close { reason: reason.to_owned() }
}

/// A stream that said nothing decisive.
fn quiet(start: &Start, head: Duration) -> Layer {
    match start {
        Start::Silent => close(&format!("the client sent nothing for {head:?} (header_read_timeout)")),
        Start::Stalled => close(&format!("no protocol recognised within {head:?} (header_read_timeout)")),
        Start::Closed => close("the client closed the connection"),
        Start::Is(detected) => close(&format!("{detected:?} is not served here (rawtcp is off)")),
    }
}

#[cfg(test)]
mod tests;
