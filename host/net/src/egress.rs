//! Connections a plugin asked for: the destination of a rerouted flow, and plugins'
//! outbound HTTP ([`OutboundClient`], the runtime's [`OutboundHttp`]). Both resolve the
//! host once, check every address with the plugin's allow-list
//! ([`flowgate_flow::egress`], the one address policy), and connect to the address that
//! was checked: there is no second lookup, so a name cannot rebind between the check
//! and the connection.
//!
//! The outbound client is HTTP/1.1 on hyper's client connection, one connection per call,
//! cleartext or TLS (rustls, ring, webpki roots: `-k` does not apply to plugins), with no
//! redirects followed and the whole call — resolve, connect, handshake, request, response
//! body — under the call's deadline and the response under its size cap.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_flow::Scheme;
use flowgate_flow::egress::{AllowList, EgressError};
use flowgate_runtime::{OutboundError, OutboundFuture, OutboundHttp, OutboundRequest, OutboundResponse};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::http::exchange::{fill_headers, to_headers};

/// Why a checked connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckedError {
    /// The policy refused the destination; nothing was opened.
    #[error(transparent)]
    Refused(#[from] EgressError),
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `host` (a URL's host; an IP literal is not looked up) and checks its
/// addresses with `allowed`: the address to connect to.
pub async fn resolve_checked(allowed: &AllowList, host: &str, port: u16) -> Result<SocketAddr, CheckedError> {
    // Refuse an unlisted name before it reaches a resolver.
    if !allowed.allows_host(host) {
        return Err(EgressError::NotListed { host: host.to_owned() }.into());
    }
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let resolved: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|source| CheckedError::Resolve { host: host.to_owned(), source })?
            .collect(),
    };
    Ok(allowed.check(host, &resolved)?)
}

/// Plugins' outbound HTTP, done by the network layer.
pub struct OutboundClient {
    tls: Arc<rustls::ClientConfig>,
}

impl OutboundClient {
    /// A client trusting the webpki roots.
    pub fn new() -> OutboundClient {
        OutboundClient::with_roots(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
    }

    /// A client trusting `roots` only (tests, a private CA).
    pub fn with_roots(roots: rustls::RootCertStore) -> OutboundClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        OutboundClient { tls: Arc::new(config) }
    }
}

impl Default for OutboundClient {
    fn default() -> Self {
        OutboundClient::new()
    }
}

impl OutboundHttp for OutboundClient {
    fn send(&self, request: OutboundRequest) -> OutboundFuture {
        let tls = self.tls.clone();
        Box::pin(async move {
            let timeout = request.timeout;
            match tokio::time::timeout(timeout, send(tls, request)).await {
                Ok(result) => result,
                Err(_) => Err(OutboundError::Timeout(timeout)),
            }
        })
    }
}

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> OutboundError + '_ {
    move |e| OutboundError::Failed(format!("{what}: {e}"))
}

async fn send(tls: Arc<rustls::ClientConfig>, outbound: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
    let request = &outbound.request;
    let addr = resolve_checked(&outbound.allowed, &request.host, request.port).await.map_err(|e| match e {
        CheckedError::Refused(refused) => OutboundError::Denied(refused),
        other => OutboundError::Failed(other.to_string()),
    })?;
    tracing::debug!("plugin {} outbound {} {} via {addr}", outbound.plugin, request.method, request.url());
    let tcp = TcpStream::connect(addr).await.map_err(|e| failed("connect")(&e))?;
    let _ = tcp.set_nodelay(true);
    match request.scheme {
        Scheme::Http => exchange(TokioIo::new(tcp), &outbound).await,
        Scheme::Https => {
            let bare = request.host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let name = ServerName::try_from(bare).map_err(|e| failed("server name")(&e))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| failed("TLS handshake")(&e))?;
            exchange(TokioIo::new(stream), &outbound).await
        }
    }
}

/// Aborts a spawned task when dropped, so a timed-out call leaves no connection behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<IO>(io: TokioIo<IO>, outbound: &OutboundRequest) -> Result<OutboundResponse, OutboundError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = &outbound.request;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.map_err(|e| failed("handshake")(&e))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("outbound connection ended: {e}");
        }
    }));
    let body = request.body.clone().unwrap_or_default();
    let mut out = hyper::Request::new(Full::new(body));
    *out.method_mut() = hyper::Method::from_bytes(request.method.as_bytes()).map_err(|e| failed("method")(&e))?;
    *out.uri_mut() = request.path.parse().map_err(|e| failed("path")(&e))?;
    let authority = request.scheme.authority(&request.host, request.port);
    let host = hyper::header::HeaderValue::from_str(&authority).map_err(|e| failed("host")(&e))?;
    out.headers_mut().insert(hyper::header::HOST, host);
    fill_headers(out.headers_mut(), &request.headers);
    let response = sender.send_request(out).await.map_err(|e| failed("request")(&e))?;
    let (parts, body) = response.into_parts();
    let cap = outbound.max_response_bytes;
    let body = Limited::new(body, cap).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            OutboundError::TooLarge(cap)
        } else {
            failed("response body")(&e)
        }
    })?;
    Ok(OutboundResponse { status: parts.status.as_u16(), headers: to_headers(&parts.headers), body: body.to_bytes() })
}
