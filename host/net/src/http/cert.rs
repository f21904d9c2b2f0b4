//! The special hosts (`flowgate.it`, `mitm.it`) that serve flowgate's CA certificate to
//! clients going through the proxy.

/// Hosts that serve flowgate's CA certificate to clients going through the proxy.
use bytes::Bytes;

use flowgate_flow::Headers;

use super::exchange::{Reply, status_response};
use crate::conn::ConnCtx;

pub(crate) const CERT_HOSTS: &[&str] = &["flowgate.it", "mitm.it"];

/// The page special hosts serve: the CA certificate with install hints.
pub(crate) fn cert_page(ctx: &ConnCtx, path: &str) -> Reply {
    let ca = &ctx.proxy.ca;
    let (content_type, body, disposition): (&str, Bytes, Option<&str>) = match path {
        "/cert/pem" => {
            ("application/x-x509-ca-cert", Bytes::from(ca.cert_pem().to_owned()), Some("flowgate-ca-cert.pem"))
        }
        "/cert/cer" | "/cert/der" => {
            ("application/pkix-cert", Bytes::from(ca.cert_der().to_vec()), Some("flowgate-ca-cert.cer"))
        }
        "/" => ("text/html; charset=utf-8", Bytes::from_static(CERT_HTML.as_bytes()), None),
        _ => return status_response(404, "not found: try /, /cert/pem, /cert/cer or /cert/p12"),
    };
    let mut headers = Headers::new();
    let _ = headers.append("content-type", content_type.as_bytes());
    if let Some(name) = disposition {
        let _ = headers.append("content-disposition", format!("attachment; filename=\"{name}\"").as_bytes());
    }
    Reply::whole(200, headers, body)
}

const CERT_HTML: &str = "<!doctype html>
<html><head><title>flowgate CA</title></head><body>
<h1>Install flowgate's CA certificate</h1>
<p>Your traffic goes through flowgate. To let it inspect HTTPS, trust its certificate authority:</p>
<ul>
<li><a href=\"/cert/pem\">PEM</a> (Linux, macOS, Firefox, curl <code>--cacert</code>)</li>
<li><a href=\"/cert/cer\">DER (.cer)</a> (Windows, Android)</li>
<li><a href=\"/cert/p12\">PKCS#12 (.p12)</a> (Windows, macOS; empty password)</li>
</ul>
<p>Linux: <code>sudo cp flowgate-ca-cert.pem /usr/local/share/ca-certificates/flowgate.crt &amp;&amp; sudo update-ca-certificates</code><br>
macOS: <code>sudo security add-trusted-cert -d -p ssl -k /Library/Keychains/System.keychain flowgate-ca-cert.pem</code></p>
</body></html>
";
