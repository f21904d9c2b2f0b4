//! hudsucker's no-op MITM proxy for flowgate's benchmark (tests/bench/bench.py).
//!
//!     hudsucker-noop --port PORT --ca-dir DIR [--host 127.0.0.1] [--nagle]
//!
//! Makes a CA on start (rcgen) and writes its certificate to DIR/hudsucker-ca-cert.pem,
//! then listens on HOST:PORT: an explicit proxy that forwards plain HTTP and intercepts
//! TLS after CONNECT (h2 or http/1.1 towards the client), every request and response passed
//! on unchanged (NoopHandler). Upstream certificates are not checked: the benchmark's origin
//! has a self-signed one. Stopped by SIGTERM (the default action).
//!
//! Sockets on both sides have TCP_NODELAY, as flowgate's and mitmproxy's do. hudsucker
//! leaves Nagle's algorithm on by default: then a plain-HTTP response, whose head and body
//! hyper writes separately, waits for the client's delayed ACK (p99 ~44 ms on loopback,
//! a few thousand req/s), which measures a socket default rather than the proxy. `--nagle`
//! keeps hudsucker's defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use hudsucker::certificate_authority::RcgenAuthority;
use hudsucker::rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use hudsucker::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use hudsucker::rustls::crypto::{CryptoProvider, aws_lc_rs};
use hudsucker::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use hudsucker::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use hudsucker::hyper_util::client::legacy::connect::HttpConnector;
use hudsucker::{NoopHandler, Proxy};
use tokio::net::TcpSocket;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Accepts any upstream certificate (what `flowgate -k` and `mitmdump --ssl-insecure` do).
#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, hudsucker::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, hudsucker::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, hudsucker::rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Args {
    host: IpAddr,
    port: u16,
    ca_dir: PathBuf,
    nodelay: bool,
}

fn parse_args() -> Result<Args, Error> {
    let usage = "usage: hudsucker-noop --port PORT --ca-dir DIR [--host ADDR] [--nagle]";
    let (mut host, mut port, mut ca_dir, mut nodelay) = (IpAddr::from([127, 0, 0, 1]), None, None, true);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value; {usage}"));
        match flag.as_str() {
            "--host" => host = value()?.parse()?,
            "--port" | "-p" => port = Some(value()?.parse()?),
            "--ca-dir" => ca_dir = Some(PathBuf::from(value()?)),
            "--nagle" => nodelay = false,
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; {usage}").into()),
        }
    }
    Ok(Args {
        host,
        port: port.ok_or(usage)?,
        ca_dir: ca_dir.ok_or(usage)?,
        nodelay,
    })
}

/// A fresh CA (ECDSA P-256): its certificate written as PEM, its issuer for the leaves.
fn make_ca(ca_dir: &std::path::Path) -> Result<Issuer<'static, KeyPair>, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "hudsucker-noop bench CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    std::fs::create_dir_all(ca_dir)?;
    // Written whole, then renamed: a client waiting for the file never reads half of it.
    let path = ca_dir.join("hudsucker-ca-cert.pem");
    let tmp = ca_dir.join(".hudsucker-ca-cert.pem.tmp");
    std::fs::write(&tmp, cert.pem())?;
    std::fs::rename(&tmp, &path)?;
    Ok(Issuer::new(params, key))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let provider = aws_lc_rs::default_provider();
    let ca = RcgenAuthority::new(make_ca(&args.ca_dir)?, 1_000, provider.clone());

    let provider = Arc::new(provider);
    let tls = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false); // https too: the TLS layer wraps it
    http.set_nodelay(args.nodelay);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    // Accepted sockets inherit TCP_NODELAY from the listening one (Linux).
    let addr = SocketAddr::new(args.host, args.port);
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(args.nodelay)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;

    let proxy = Proxy::builder()
        .with_listener(listener)
        .with_ca(ca)
        .with_http_connector(connector)
        .with_http_handler(NoopHandler::default())
        .build()?;
    proxy.start().await?;
    Ok(())
}
