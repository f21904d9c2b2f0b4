//! The client's side of TLS that flowgate terminates, shared by every layer that does it
//! (interception, and TLS to the proxy itself): a certificate for the names (a given one
//! from `certs`, else a leaf minted by the CA), the handshake under `max_handshakes` and
//! `header_read_timeout`, and what it negotiated recorded on the connection. It does not
//! decide whether to terminate (that is `next_layer`), nor which names or protocols to
//! offer (the layer says).

use std::sync::Arc;

use flowgate_runtime::TlsSide;
use tokio_rustls::server::TlsStream;

use crate::conn::{BoxIo, ConnCtx};
use crate::detect::Hello;
use crate::tls::{Offer, Prefixed, server_config};

/// The client's TLS, terminated.
pub(crate) type Terminated = TlsStream<Prefixed<BoxIo>>;

/// Completes the client's handshake on `io` (whose replayed prefix holds the ClientHello)
/// with a certificate for `names` (the first is the one `certs` are matched against),
/// offering `offer` by ALPN. On success the TLS details are the connection's
/// (`ConnCtx::tls`) and the tls-established hooks have run; on failure the tls-failed
/// hooks have, and `None` is returned.
pub(crate) async fn terminate(
    ctx: &Arc<ConnCtx>,
    io: Prefixed<BoxIo>,
    hello: &Hello,
    names: &[String],
    offer: Offer,
) -> Option<Terminated> {
    // A certificate given for the name (`certs`) is served instead of a minted one.
    let first = names.first().map_or("", String::as_str);
    let given = ctx.proxy.options.certs.iter().find(|c| c.matches(first)).map(|c| Ok(c.key.clone()));
    let leaf = match given.unwrap_or_else(|| ctx.proxy.ca.leaf(names)) {
        Ok(leaf) => leaf,
        Err(e) => {
            tracing::warn!("{e}");
            return None;
        }
    };
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let handshake = async {
        let start = acceptor.await?;
        let config =
            server_config(&ctx.proxy.tls_server, leaf, start.client_hello().cipher_suites(), &hello.alpn, offer);
        start.into_stream(config).await
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
            Some(tls)
        }
        Err(e) => {
            let message = format!("client TLS handshake failed: {e}");
            tracing::debug!("{}: {message}", ctx.client);
            ctx.session.lock().await.tls_result(TlsSide::Client, Some(&message)).await;
            None
        }
    }
}

/// The protocol the client agreed to by ALPN, if any.
pub(crate) fn alpn(tls: &Terminated) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
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
