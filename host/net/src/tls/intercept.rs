//! The TLS interception layer: connect upstream first (mitmproxy's eager strategy, so the
//! minted certificate carries the upstream certificate's names), then terminate the
//! client's TLS (`terminate`: mint, handshake), and switch to the decrypted stream. It
//! does not decide whether to intercept (that is `next_layer`), nor what the plaintext is.

use std::sync::Arc;

use flowgate_flow::Scheme;

use crate::Mode;
use crate::conn::{BoxIo, ConnCtx, Next};
use crate::detect::Hello;
use crate::layer::Stage;
use crate::tls::terminate::{alpn, terminate};
use crate::tls::{Offer, Prefixed};
use crate::upstream::Target;

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
        && let Ok(connected) = ctx.open_upstream(&target).await
    {
        // If connecting fails, the flow that needs the upstream reports it. A shared
        // connection answers at once with what its handshake told.
        upstream_h2 = connected.sender.is_h2();
        for san in connected.sans.iter() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(san)) {
                names.push(san.clone());
            }
        }
        ctx.upstreams.lock().await.put(target.clone(), connected.sender);
    }
    // HTTP/2 is offered to the client when the upstream speaks it, and in reverse mode,
    // where flowgate is the server and translates to HTTP/1.1 if the upstream lacks it.
    // When intercepting, the client believes it talks to the origin: offering h2 to a
    // client of an HTTP/1.1-only origin would change what the client sees.
    let reverse = matches!(*ctx.mode, Mode::Reverse { .. });
    let offer = if ctx.proxy.options.http2 && (upstream_h2 || reverse) { Offer::Http2AndHttp1 } else { Offer::Http1 };
    match terminate(ctx, io, &hello, &names, offer).await {
        Some(tls) => Next::Switch(Stage::Decrypted { target, alpn: alpn(&tls), in_tunnel }, Box::new(tls)),
        None => Next::Done,
    }
}
