//! TLS settings as mitmproxy users give them: protocol version bounds
//! (`tls_version_{client,server}_{min,max}`), certificates to serve instead of minted ones
//! (`certs`), and client certificates toward upstreams (`client_certs`). Loaded and
//! checked once at start, so a bad file fails there, by name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A TLS version bound, under mitmproxy's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// `TLS1_2`.
    Tls12,
    /// `TLS1_3`.
    Tls13,
    /// `UNBOUNDED`: as low or as high as flowgate goes.
    Unbounded,
}

impl TlsVersion {
    /// Parses `TLS1_2`, `TLS1_3` or `UNBOUNDED`; older versions are refused (rustls speaks
    /// TLS 1.2 and 1.3 only).
    pub fn parse(text: &str) -> Result<TlsVersion, String> {
        match text.trim().to_ascii_uppercase().as_str() {
            "TLS1_2" => Ok(TlsVersion::Tls12),
            "TLS1_3" => Ok(TlsVersion::Tls13),
            "UNBOUNDED" => Ok(TlsVersion::Unbounded),
            "SSL3" | "TLS1" | "TLS1_1" => Err(format!("{text}: flowgate speaks TLS 1.2 and 1.3 only")),
            _ => Err(format!("{text}: expected TLS1_2, TLS1_3 or UNBOUNDED")),
        }
    }
}

/// The versions between `min` and `max`, or an error if none are.
pub fn versions(min: TlsVersion, max: TlsVersion) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let low = if min == TlsVersion::Tls13 { 13 } else { 12 };
    let high = if max == TlsVersion::Tls12 { 12 } else { 13 };
    let mut out = Vec::new();
    if low <= 12 && 12 <= high {
        out.push(&rustls::version::TLS12);
    }
    if low <= 13 && 13 <= high {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(format!("no TLS version is between {min:?} and {max:?}"));
    }
    Ok(out)
}

/// A certificate and its key from a PEM file holding both (as mitmproxy's `certs` and
/// `client_certs` take them): the chain in order, leaf first.
pub fn load_key_pair(path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let named = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).and_then(Iterator::collect).map_err(|e| named(&e))?;
    if chain.is_empty() {
        return Err(named(&"no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| named(&format!("no private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = provider.key_provider.load_private_key(key).map_err(|e| named(&e))?;
    let certified = CertifiedKey::new(chain, key);
    certified.keys_match().map_err(|e| named(&format!("the key does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// A certificate served for the names that match its pattern (`certs`).
#[derive(Debug, Clone)]
pub struct GivenCert {
    /// `*` (every name), `*.example.com` (one label) or a name.
    pub pattern: String,
    /// The certificate and key.
    pub key: Arc<CertifiedKey>,
}

impl GivenCert {
    /// Parses `[domain=]path` as mitmproxy's `--certs` does (no domain is `*`).
    pub fn parse(spec: &str) -> Result<GivenCert, String> {
        let (pattern, path) = match spec.split_once('=') {
            Some((domain, path)) => (domain.trim().to_ascii_lowercase(), path),
            None => ("*".to_owned(), spec),
        };
        Ok(GivenCert { pattern, key: load_key_pair(Path::new(path))? })
    }

    /// Whether the certificate is served for `name`.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self.pattern.strip_prefix("*.") {
            _ if self.pattern == "*" => true,
            Some(parent) => name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => name == self.pattern,
        }
    }
}

/// Client certificates toward upstreams (`client_certs`): one for every upstream, or a
/// directory of `HOST.pem` files.
#[derive(Debug, Clone)]
pub enum ClientCerts {
    /// This certificate for every upstream.
    File(Arc<CertifiedKey>),
    /// `DIR/HOST.pem` for the upstream HOST, if there is one.
    Dir(PathBuf),
}

impl ClientCerts {
    /// A file (loaded and checked now) or a directory.
    pub fn parse(path: &str) -> Result<ClientCerts, String> {
        let path = PathBuf::from(path);
        if path.is_dir() { Ok(ClientCerts::Dir(path)) } else { load_key_pair(&path).map(ClientCerts::File) }
    }

    /// The certificate for `host`; a directory's file that cannot be loaded is logged
    /// and none is sent.
    pub fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        match self {
            ClientCerts::File(key) => Some(key.clone()),
            ClientCerts::Dir(dir) => {
                // Only a plain name picks a file: no path can be built from a host.
                if host.is_empty() || host.contains(['/', '\\']) || host.starts_with('.') {
                    return None;
                }
                let path = dir.join(format!("{host}.pem"));
                if !path.is_file() {
                    return None;
                }
                load_key_pair(&path).map_err(|e| tracing::warn!("client_certs: {e}")).ok()
            }
        }
    }
}

/// Sends one certificate to the upstream whatever it asks for.
#[derive(Debug)]
pub(crate) struct SendCert(pub Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for SendCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_bounds() {
        use TlsVersion::*;
        let cases: Vec<(TlsVersion, TlsVersion, Option<usize>)> = vec![
            (Tls12, Unbounded, Some(2)),
            (Unbounded, Unbounded, Some(2)),
            (Tls13, Unbounded, Some(1)),
            (Unbounded, Tls12, Some(1)),
            (Tls12, Tls12, Some(1)),
            (Tls13, Tls12, None),
        ];
        for (min, max, n) in cases {
            assert_eq!(versions(min, max).ok().map(|v| v.len()), n, "{min:?}..{max:?}");
        }
        assert!(TlsVersion::parse("TLS1_1").is_err_and(|e| e.contains("1.2 and 1.3 only")));
        assert_eq!(TlsVersion::parse("tls1_3"), Ok(Tls13));
    }

    #[test]
    fn cert_patterns() {
        let key = || {
            let pair = rcgen::KeyPair::generate().expect("key");
            let cert =
                rcgen::CertificateParams::new(vec!["x.test".to_owned()]).expect("p").self_signed(&pair).expect("c");
            let signing =
                rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(pair.serialize_der().into()))
                    .expect("signing");
            Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
        };
        let given = |pattern: &str| GivenCert { pattern: pattern.to_owned(), key: key() };
        let rows = [
            ("*", "anything.test", true),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "API.Example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("example.com", "example.com", true),
            ("example.com", "www.example.com", false),
        ];
        for (pattern, name, expected) in rows {
            assert_eq!(given(pattern).matches(name), expected, "{pattern} ~ {name}");
        }
    }
}
