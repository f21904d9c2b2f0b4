//! The TLS interception layer: connect upstream first (mitmproxy's eager strategy, so the
//! minted certificate carries the upstream certificate's names), mint a leaf, complete
//! the client's handshake (rustls), and switch to the decrypted stream. It does not
//! decide whether to intercept (that is `next_layer`), nor what the plaintext is.

use std::sync::Arc;

use flowgate_flow::Scheme;
use flowgate_runtime::TlsSide;

use crate::Mode;
use crate::conn::{BoxIo, ConnCtx, Next};
use crate::detect::Hello;
use crate::layer::Stage;
use crate::tls::{Offer, Prefixed, server_config};
use crate::upstream::{self, Target};

/// Runs the layer on `io`, whose replayed prefix holds the ClientHello.
pub(crate) async fn run(
    ctx: &Arc<ConnCtx>,
    io: Prefixed<BoxIo>,
    target: Target,
    hello: Hello,
    in_tunnel: bool,
) -> Next {
    // In a tunnel the client's SNI is the upstream's server name too (mitmproxy's rule);
    // in reverse mode the mode's host is.
    let mut target = target;
    if in_tunnel && hello.sni.as_ref().is_some_and(|sni| !sni.eq_ignore_ascii_case(&target.host)) {
        target.sni = hello.sni.clone();
    }
    let name = hello.sni.clone().unwrap_or_else(|| target.host.clone());
    let mut names = vec![name];
    let mut upstream_h2 = false;
    if target.scheme == Scheme::Https
        && ctx.server_connect(format!("{}:{}", target.host, target.port)).await
        && let Ok(connected) = upstream::connect(&ctx.proxy, &ctx.mode, &target).await
    {
        // If connecting fails, the flow that needs the upstream reports it.
        upstream_h2 = connected.sender.is_h2();
        ctx.session.lock().await.server_connected().await;
        for san in connected.sans {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&san)) {
                names.push(san);
            }
        }
        ctx.upstreams.lock().await.put(target.clone(), connected.sender);
    }
    // A certificate given for the name (`certs`) is served instead of a minted one.
    let given = ctx.proxy.options.certs.iter().find(|c| c.matches(&names[0])).map(|c| Ok(c.key.clone()));
    let leaf = match given.unwrap_or_else(|| ctx.proxy.ca.leaf(&names)) {
        Ok(leaf) => leaf,
        Err(e) => {
            tracing::warn!("{e}");
            return Next::Done;
        }
    };
    // HTTP/2 is offered to the client when the upstream speaks it, and in reverse mode,
    // where flowgate is the server and translates to HTTP/1.1 if the upstream lacks it.
    // When intercepting, the client believes it talks to the origin: offering h2 to a
    // client of an HTTP/1.1-only origin would change what the client sees.
    let reverse = matches!(*ctx.mode, Mode::Reverse { .. });
    let offer = if ctx.proxy.options.http2 && (upstream_h2 || reverse) { Offer::Http2AndHttp1 } else { Offer::Http1 };
    let config = server_config(&ctx.proxy.tls_server, leaf, &hello.alpn, offer);
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let handshake = async {
        match acceptor.await {
            Ok(start) => start.into_stream(config).await,
            Err(e) => Err(e),
        }
    };
    // At most max_handshakes at once; waiting for a slot counts against the deadline.
    let handshake = async {
        let _slot = ctx.proxy.handshakes.acquire().await;
        handshake.await
    };
    let timeout = ctx.proxy.options.header_read_timeout;
    let handshake = match tokio::time::timeout(timeout, handshake).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no handshake within {timeout:?} (header_read_timeout)")),
    };
    match handshake {
        Ok(tls) => {
            let session = tls.get_ref().1;
            let info = flowgate_flow::TlsInfo {
                sni: hello.sni.clone(),
                alpn: session.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
                version: session.protocol_version().map(|v| tls_version_name(v).to_owned()),
                cipher: session.negotiated_cipher_suite().map(|c| iana_cipher_name(c.suite())),
                certificate_chain: Vec::new(),
            };
            *ctx.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((info, crate::capture::now()));
            ctx.session.lock().await.tls_result(TlsSide::Client, None).await;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Next::Switch(Stage::Decrypted { target, alpn, in_tunnel }, Box::new(tls))
        }
        Err(e) => {
            let message = format!("client TLS handshake failed: {e}");
            tracing::debug!("{}: {message}", ctx.client);
            ctx.session.lock().await.tls_result(TlsSide::Client, Some(&message)).await;
            Next::Done
        }
    }
}

/// A TLS version as mitmproxy records it (`TLSv1.2`, `TLSv1.3`).
fn tls_version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    }
}

/// A cipher suite's IANA name (`TLS_AES_128_GCM_SHA256`; rustls writes TLS 1.3 ones with
/// a `TLS13_` prefix).
fn iana_cipher_name(suite: rustls::CipherSuite) -> String {
    let name = suite.as_str().map_or_else(|| format!("{suite:?}"), str::to_owned);
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name,
    }
}
