//! TLS to the proxy itself (a "secure web proxy", `curl --proxy https://...`): in regular
//! and upstream mode a client may speak TLS to flowgate's own port before its proxy
//! requests. flowgate terminates it with a certificate for the name the client asked for
//! (its SNI; without one, the listener's address the client connected to, as an IP
//! address), connects nowhere (there is no target yet), and switches to the plaintext,
//! where the explicit proxy's absolute-form requests and CONNECT follow. It does not
//! decide whether to terminate (that is `next_layer`).

use std::sync::Arc;

use crate::conn::{BoxIo, ConnCtx, Next};
use crate::detect::Hello;
use crate::layer::Stage;
use crate::tls::terminate::{alpn, terminate};
use crate::tls::{Offer, Prefixed};

/// Runs the layer on `io`, whose replayed prefix holds the ClientHello.
pub(crate) async fn run(ctx: &Arc<ConnCtx>, io: Prefixed<BoxIo>, hello: Hello) -> Next {
    let name = hello.sni.clone().unwrap_or_else(|| ctx.local.ip().to_string());
    // flowgate is the server here, as in reverse mode: HTTP/2 is its own to offer.
    let offer = if ctx.proxy.options.http2 { Offer::Http2AndHttp1 } else { Offer::Http1 };
    match terminate(ctx, io, &hello, &[name], offer).await {
        Some(tls) => Next::Switch(Stage::ProxyDecrypted { alpn: alpn(&tls) }, Box::new(tls)),
        None => Next::Done,
    }
}
