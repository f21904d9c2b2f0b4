//! Connections to upstream servers: direct or through an upstream proxy, plain or TLS,
//! HTTP/1.1 with keep-alive (one connection per target, reused by a client connection's
//! later flows).

use std::collections::HashMap;

use bytes::Bytes;
use flowgate_flow::Scheme;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Mode, Proxy};

/// A body sent upstream or to the client.
pub(crate) type Body = BoxBody<Bytes, BoxError>;
/// Any body error.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

/// Open upstream connections of one client connection.
#[derive(Default)]
pub(crate) struct Upstreams {
    open: HashMap<Target, SendRequest<Body>>,
}

impl Upstreams {
    /// An open, ready connection to `target`, if there is one. Give it back with
    /// [`Upstreams::put`] once the response head has arrived.
    pub async fn take(&mut self, target: &Target) -> Option<SendRequest<Body>> {
        let mut sender = self.open.remove(target)?;
        sender.ready().await.ok()?;
        Some(sender)
    }

    /// Whether any upstream connection was opened.
    pub fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Keeps a connection for the next flow to the same target.
    pub fn put(&mut self, target: Target, sender: SendRequest<Body>) {
        self.open.insert(target, sender);
    }
}

/// A new upstream connection.
pub(crate) struct Connected {
    /// Where requests go.
    pub sender: SendRequest<Body>,
    /// The subject alternative names of the upstream's certificate (TLS only).
    pub sans: Vec<String>,
}

/// The DNS names and IP addresses a certificate is valid for (at most 32).
fn sans_of(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return Vec::new() };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) if !dns.is_empty() => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| std::net::Ipv4Addr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .take(32)
        .collect()
}

/// Opens a new connection to `target`.
pub(crate) async fn connect(proxy: &Proxy, mode: &Mode, target: &Target) -> Result<Connected, String> {
    let timeout = proxy.options.connect_timeout;
    let (addr_host, addr_port) = match mode {
        Mode::Upstream { host, port } => (host.clone(), *port),
        _ => (target.host.clone(), target.port),
    };
    let connect_host = addr_host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((connect_host.as_str(), addr_port)))
        .await
        .map_err(|_| format!("connecting to {addr_host}:{addr_port} timed out after {timeout:?}"))?
        .map_err(|e| format!("cannot connect to {addr_host}:{addr_port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    if matches!(mode, Mode::Upstream { .. }) && target.scheme == Scheme::Https {
        tunnel(&mut tcp, &target.host, target.port).await?;
    }
    match target.scheme {
        Scheme::Http => Ok(Connected { sender: handshake(tcp).await?, sans: Vec::new() }),
        Scheme::Https => {
            let bare = target.host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let name = ServerName::try_from(bare).map_err(|e| format!("invalid server name {}: {e}", target.host))?;
            let connector = tokio_rustls::TlsConnector::from(proxy.tls_client.clone());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}:{} failed: {e}", target.host, target.port))?;
            let sans =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| sans_of(c)).unwrap_or_default();
            Ok(Connected { sender: handshake(tls).await?, sans })
        }
    }
}

/// Asks an upstream proxy for a tunnel with CONNECT.
async fn tunnel(tcp: &mut TcpStream, host: &str, port: u16) -> Result<(), String> {
    let request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(|e| format!("upstream proxy: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err("upstream proxy: CONNECT response head too large".to_owned());
        }
        let n = tcp.read(&mut byte).await.map_err(|e| format!("upstream proxy: {e}"))?;
        if n == 0 {
            return Err("upstream proxy closed the connection during CONNECT".to_owned());
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(format!(
            "upstream proxy refused CONNECT {host}:{port}: {}",
            status_line.lines().next().unwrap_or("")
        ));
    }
    Ok(())
}

async fn handshake<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO) -> Result<SendRequest<Body>, String> {
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with upstream failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}
