//! flowgate's certificate authority: created on first run in the confdir, kept with a
//! private key only its owner can read, and used to mint leaf certificates for
//! intercepted TLS connections (cached, with a bound).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The file with the CA certificate and its private key (keep it secret).
pub const CA_FILE: &str = "flowgate-ca.pem";
/// The CA certificate alone, PEM, to install in clients.
pub const CA_CERT_PEM: &str = "flowgate-ca-cert.pem";
/// The CA certificate alone, DER (`.cer`), for Windows and Android.
pub const CA_CERT_DER: &str = "flowgate-ca-cert.cer";

/// The CA certificate alone, PKCS#12 with an empty password, for Windows and macOS.
pub const CA_CERT_P12: &str = "flowgate-ca-cert.p12";

/// How many leaf certificates are kept (`cert_cache_size`); the oldest half is dropped
/// when it is full.
pub const DEFAULT_CACHE_SIZE: usize = 1024;

/// Why the CA could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The key file can be read by others.
    #[error("{path}: the CA private key is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    InsecureKey {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a certificate and key flowgate can use.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate could not be minted.
    #[error("cannot mint a certificate for {names:?}: {message}")]
    Mint {
        /// The names asked for.
        names: Vec<String>,
        /// What failed.
        message: String,
    },
}

/// The CA and its leaf certificate cache.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_key_der: Vec<u8>,
    cache: Mutex<HashMap<Vec<String>, Arc<CertifiedKey>>>,
    cache_size: usize,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").finish_non_exhaustive()
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::Io { path: path.to_owned(), message: e.to_string() }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path).map_err(|e| io(path, e))?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::InsecureKey { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), CaError> {
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| io(path, e))?;
    file.write_all(contents.as_bytes()).map_err(|e| io(path, e))
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    fs::write(path, contents).map_err(|e| io(path, e))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "flowgate");
    dn.push(DnType::OrganizationName, "flowgate");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(2 * 86400)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86400)).into();
    params
}

impl CertificateAuthority {
    /// Loads the CA from `confdir`, creating it (and the directory) on first run.
    /// Refuses a key file that group or others can read.
    pub fn load_or_create(confdir: &Path) -> Result<CertificateAuthority, CaError> {
        let path = confdir.join(CA_FILE);
        if !path.exists() {
            fs::create_dir_all(confdir).map_err(|e| io(confdir, e))?;
            let key = KeyPair::generate().map_err(|e| io(&path, e))?;
            let cert = ca_params().self_signed(&key).map_err(|e| io(&path, e))?;
            write_private(&path, &format!("{}{}", key.serialize_pem(), cert.pem()))?;
            fs::write(confdir.join(CA_CERT_PEM), cert.pem()).map_err(|e| io(&confdir.join(CA_CERT_PEM), e))?;
            fs::write(confdir.join(CA_CERT_DER), cert.der()).map_err(|e| io(&confdir.join(CA_CERT_DER), e))?;
        }
        check_private(&path)?;
        let text = fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let p12_path = confdir.join(CA_CERT_P12);
        let invalid = |message: String| CaError::Invalid { path: path.clone(), message };
        let key_start = text.find("-----BEGIN PRIVATE KEY-----").ok_or_else(|| invalid("no private key".into()))?;
        let cert_start = text.find("-----BEGIN CERTIFICATE-----").ok_or_else(|| invalid("no certificate".into()))?;
        let key_pem = if key_start < cert_start { &text[key_start..cert_start] } else { &text[key_start..] };
        let cert_pem = if cert_start < key_start { &text[cert_start..key_start] } else { &text[cert_start..] };
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("bad private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| invalid(format!("bad certificate: {e}")))?;
        let cert_der = pem_to_der(cert_pem).ok_or_else(|| invalid("bad certificate PEM".into()))?;
        let leaf_key = KeyPair::generate().map_err(|e| invalid(e.to_string()))?;
        let leaf_key_der = leaf_key.serialize_der();
        if !p12_path.exists() {
            let p12 = cert_p12(&cert_der).map_err(|e| invalid(format!("cannot make the PKCS#12 export: {e}")))?;
            fs::write(&p12_path, p12).map_err(|e| io(&p12_path, e))?;
        }
        Ok(CertificateAuthority {
            cert_pem: cert_pem.trim_end().to_owned() + "\n",
            cert_der: CertificateDer::from(cert_der),
            issuer,
            leaf_key,
            leaf_key_der,
            cache: Mutex::new(HashMap::new()),
            cache_size: DEFAULT_CACHE_SIZE,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate as PKCS#12 (no key, empty password).
    pub fn cert_p12(&self) -> Result<Vec<u8>, CaError> {
        cert_p12(&self.cert_der).map_err(|e| CaError::Invalid { path: CA_CERT_P12.into(), message: e })
    }

    /// A leaf certificate (and key) for `names` (DNS names or IP addresses; the first is
    /// the common name), signed by the CA, from the cache when possible.
    pub fn leaf(&self, names: &[String]) -> Result<Arc<CertifiedKey>, CaError> {
        let key: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        if let Some(hit) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(hit.clone());
        }
        let mint = |message: String| CaError::Mint { names: names.to_vec(), message };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, key.first().cloned().unwrap_or_default());
        params.distinguished_name = dn;
        for name in &key {
            let san = match name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(|e| mint(format!("{e}")))?),
            };
            params.subject_alt_names.push(san);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(2 * 86400)).into();
        params.not_after = (now + std::time::Duration::from_secs(365 * 86400)).into();
        let cert = params.signed_by(&self.leaf_key, &self.issuer).map_err(|e| mint(e.to_string()))?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        let signing = any_supported_type(&private).map_err(|e| mint(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], signing));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.cache_size {
            let drop: Vec<Vec<String>> = cache.keys().take(self.cache_size / 2 + 1).cloned().collect();
            for k in drop {
                cache.remove(&k);
            }
        }
        cache.insert(key, certified.clone());
        Ok(certified)
    }

    /// Leaf certificates currently cached.
    pub fn cached_leaves(&self) -> usize {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

fn cert_p12(der: &[u8]) -> Result<Vec<u8>, String> {
    let cert = p12_keystore::Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("flowgate", p12_keystore::KeyStoreEntry::Certificate(cert));
    store.writer("").write().map_err(|e| e.to_string())
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(body.trim())
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' | b' ' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flowgate-ca-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn creates_once_and_mints_cached_leaves() {
        let dir = tempdir("create");
        let ca = CertificateAuthority::load_or_create(&dir).expect("created");
        assert!(dir.join(CA_CERT_PEM).exists() && dir.join(CA_CERT_DER).exists() && dir.join(CA_CERT_P12).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(CA_FILE)).expect("exists").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let again = CertificateAuthority::load_or_create(&dir).expect("loaded");
        assert_eq!(ca.cert_pem(), again.cert_pem(), "the same CA is reused");
        assert_eq!(fs::read(dir.join(CA_CERT_DER)).expect("der"), ca.cert_der());
        let a = ca.leaf(&["example.test".into(), "127.0.0.1".into()]).expect("minted");
        let b = ca.leaf(&["EXAMPLE.test".into(), "127.0.0.1".into()]).expect("cached");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.cert.len(), 2, "leaf and CA");
        assert_eq!(ca.cached_leaves(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("insecure");
        CertificateAuthority::load_or_create(&dir).expect("created");
        fs::set_permissions(dir.join(CA_FILE), fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = CertificateAuthority::load_or_create(&dir).expect_err("readable key");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
