//! TLS on both sides: the server config with a minted leaf certificate, the upstream
//! client config, and the replaying IO the layers hand streams on with. The ClientHello
//! is read by `detect`; the client's handshake is `terminate`, used by the `intercept`
//! layer (TLS meant for an origin) and the `secure_proxy` layer (TLS to flowgate itself).

pub mod given;
pub(crate) mod intercept;
pub(crate) mod secure_proxy;
mod sessions;
pub(crate) mod terminate;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, ReadBuf};

/// An IO that first yields `prefix`, then reads from `inner`.
pub(crate) struct Prefixed<IO> {
    prefix: Vec<u8>,
    offset: usize,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Vec<u8>, inner: IO) -> Self {
        Prefixed { prefix, offset: 0, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = (self.prefix.len() - self.offset).min(out.remaining());
            let start = self.offset;
            out.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                // Replayed: give the memory back (the connection may stay open for hours).
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

forward_async_write!(Prefixed);

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// What flowgate offers a client by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// `h2` and `http/1.1`, whichever of them the client offered.
    Http2AndHttp1,
    /// `http/1.1` if the client offered it.
    Http1,
}

/// What every client-side TLS config shares: the crypto providers and one session cache
/// for resumption. (A config of its own per connection would carry rustls' default cache,
/// which preallocates 256 entries: ~20 KiB for every idle connection.)
pub(crate) struct ServerShared {
    /// ring's suites in ring's order, for a client that puts ChaCha20 first: it is
    /// served in its own order.
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The same suites with AES-128-GCM first, chosen over the client's order for every
    /// other client (see `prefers_chacha`).
    aes_first: Arc<rustls::crypto::CryptoProvider>,
    /// The TLS versions offered to clients (`tls_version_client_*`).
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    sessions: Arc<sessions::SessionCache>,
}

/// Sessions kept for resumption across all intercepted connections.
const SESSION_CACHE_SIZE: usize = 4096;

impl ServerShared {
    pub fn new(options: &crate::ProxyOptions) -> ServerShared {
        // Checked at start (`flowgate` refuses empty bounds); the defaults otherwise.
        let versions = given::versions(options.tls_version_client_min, options.tls_version_client_max)
            .unwrap_or_else(|_| rustls::DEFAULT_VERSIONS.to_vec());
        let provider = rustls::crypto::ring::default_provider();
        let mut aes_first = provider.clone();
        aes_first.cipher_suites.sort_by_key(|s| !is_aes_128(s.suite()));
        ServerShared {
            provider: Arc::new(provider),
            aes_first: Arc::new(aes_first),
            versions,
            sessions: Arc::new(sessions::SessionCache::new(SESSION_CACHE_SIZE)),
        }
    }
}

fn is_aes_128(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// Whether a client lists a ChaCha20-Poly1305 suite before every AES-GCM one, as a client
/// without AES hardware does. Such a client is served in its own order; every other one
/// gets AES-128-GCM, as Go's crypto/tls decides: with AES hardware on both ends it is the
/// cheapest suite (its SHA-256 key schedule runs on the CPU's SHA extensions, where
/// AES-256-GCM's SHA-384 does not), and it is what browsers ask for first.
fn prefers_chacha(client_suites: &[rustls::CipherSuite]) -> bool {
    use rustls::CipherSuite as S;
    client_suites
        .iter()
        .find_map(|suite| match suite {
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(true),
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// The config for the client side of TLS flowgate terminates, for a client that offered
/// `client_suites` and `client_alpn`.
pub(crate) fn server_config(
    shared: &ServerShared,
    leaf: Arc<CertifiedKey>,
    client_suites: &[rustls::CipherSuite],
    client_alpn: &[String],
    offer: Offer,
) -> Arc<rustls::ServerConfig> {
    let chacha = prefers_chacha(client_suites);
    let provider = if chacha { &shared.provider } else { &shared.aes_first };
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&shared.versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(leaf)));
    config.ignore_client_order = !chacha;
    config.session_storage = shared.sessions.clone();
    let ours: &[&str] = match offer {
        Offer::Http2AndHttp1 => &["h2", "http/1.1"],
        Offer::Http1 => &["http/1.1"],
    };
    config.alpn_protocols =
        ours.iter().filter(|p| client_alpn.iter().any(|c| c == *p)).map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Upstream certificates checked otherwise than by webpki's verifier alone: not at all
/// (`-k`/`ssl_insecure`), or as webpki does against the roots while also accepting a
/// server whose own certificate is one of `ssl_verify_upstream_trusted_ca`'s, for the
/// name asked and within its validity: a self-signed certificate (`openssl req -x509`
/// marks it a CA, which webpki refuses as a server's) is trusted by being given, as
/// OpenSSL and so mitmproxy trust it.
#[derive(Debug)]
struct UpstreamVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// `None`: any certificate is accepted.
    check: Option<Pinning>,
}

#[derive(Debug)]
struct Pinning {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(Pinning { webpki, pinned }) = &self.check else { return Ok(ServerCertVerified::assertion()) };
        let refused = match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(verified) => return Ok(verified),
            Err(refused) => refused,
        };
        if !pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Err(refused);
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        let valid = x509_parser::parse_x509_certificate(end_entity.as_ref()).is_ok_and(|(_, cert)| {
            let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            cert.validity().not_before.timestamp() <= now && now <= cert.validity().not_after.timestamp()
        });
        if !valid {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The config for upstream TLS: webpki roots, or no verification with `ssl_insecure`;
/// ALPN offers `h2` (unless `http2` is off) and `http/1.1`.
pub(crate) fn client_config(options: &crate::ProxyOptions) -> Arc<rustls::ClientConfig> {
    let ssl_insecure = options.ssl_insecure;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = given::versions(options.tls_version_server_min, options.tls_version_server_max)
        .unwrap_or_else(|_| rustls::DEFAULT_VERSIONS.to_vec());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .expect("ring supports TLS 1.2 and 1.3");
    let mut config = if !ssl_insecure && options.upstream_trusted_ca.is_empty() {
        builder.with_root_certificates(upstream_roots(options)).with_no_client_auth()
    } else {
        let check = (!ssl_insecure).then(|| Pinning {
            webpki: rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(upstream_roots(options)),
                provider.clone(),
            )
            .build()
            .expect("the roots include webpki's"),
            pinned: options.upstream_trusted_ca.clone(),
        });
        let verifier = Arc::new(UpstreamVerifier { provider, check });
        builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
    };
    if let Some(given::ClientCerts::File(key)) = &options.client_certs {
        config.client_auth_cert_resolver = Arc::new(given::SendCert(key.clone()));
    }
    config.alpn_protocols =
        if options.http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Arc::new(config)
}

/// What upstream certificates are verified against: webpki's roots, the OS store
/// (rustls-native-certs; what cannot be read is logged and skipped), and the
/// certificates of `ssl_verify_upstream_trusted_ca`.
fn upstream_roots(options: &crate::ProxyOptions) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!("OS certificate store: {error}");
    }
    let (added, skipped) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("{added} certificates from the OS store ({skipped} unusable)");
    for cert in &options.upstream_trusted_ca {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!("ssl_verify_upstream_trusted_ca: a certificate is unusable as a root: {e}");
        }
    }
    roots
}

/// Reads the PEM certificates of `ssl_verify_upstream_trusted_ca`; an unreadable file, or
/// one without a certificate, is an error.
pub fn load_trusted_ca(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// `base` with the client certificate for `host` from a `client_certs` directory, if it
/// holds one (a `client_certs` file is in `base` already).
pub(crate) fn with_client_cert(
    base: &Arc<rustls::ClientConfig>,
    options: &crate::ProxyOptions,
    host: &str,
) -> Arc<rustls::ClientConfig> {
    let Some(dir @ given::ClientCerts::Dir(_)) = &options.client_certs else { return base.clone() };
    let Some(key) = dir.for_host(host) else { return base.clone() };
    let mut config = (**base).clone();
    config.client_auth_cert_resolver = Arc::new(given::SendCert(key));
    Arc::new(config)
}

/// The upstream config for raw TCP over TLS: `http` (the [`client_config`]) without ALPN.
pub(crate) fn without_alpn(http: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut config = http.clone();
    config.alpn_protocols.clear();
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite as S;

    #[test]
    fn aes_128_gcm_first_unless_the_client_puts_chacha20_first() {
        for (client, chacha) in [
            // OpenSSL and rustls clients, AES-256 first: served AES-128.
            (&[S::TLS13_AES_256_GCM_SHA384, S::TLS13_CHACHA20_POLY1305_SHA256, S::TLS13_AES_128_GCM_SHA256][..], false),
            // Browsers with AES hardware.
            (&[S::TLS13_AES_128_GCM_SHA256, S::TLS13_AES_256_GCM_SHA384, S::TLS13_CHACHA20_POLY1305_SHA256], false),
            // A client without AES hardware keeps its own order.
            (&[S::TLS13_CHACHA20_POLY1305_SHA256, S::TLS13_AES_128_GCM_SHA256], true),
            (&[S::TLS_EMPTY_RENEGOTIATION_INFO_SCSV, S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256], true),
            // Suites neither (SCSV, CBC) are skipped; nothing known: ours.
            (&[S::TLS_EMPTY_RENEGOTIATION_INFO_SCSV, S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384], false),
            (&[S::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA], false),
            (&[], false),
        ] {
            assert_eq!(super::prefers_chacha(client), chacha, "{client:?}");
        }
        // Our order: AES-128-GCM first in each version, the rest as ring has them.
        let shared = super::ServerShared::new(&crate::ProxyOptions::default());
        let ours: Vec<S> = shared.aes_first.cipher_suites.iter().map(|s| s.suite()).collect();
        let tls13: Vec<S> = ours.iter().copied().filter(|s| format!("{s:?}").starts_with("TLS13")).collect();
        assert_eq!(tls13[0], S::TLS13_AES_128_GCM_SHA256, "{ours:?}");
        assert_eq!(ours.len(), shared.provider.cipher_suites.len());
        assert!(
            ours.iter().position(|s| *s == S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
                < ours.iter().position(|s| *s == S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        );
    }
}
