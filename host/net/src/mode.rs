//! Proxy modes as given to `--mode`: `regular`, `reverse:URL`, `upstream:URL`, each with
//! an optional `@PORT` to listen on its own port.

use flowgate_flow::{Scheme, Url};

/// How clients reach flowgate and where their traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// An explicit HTTP proxy: absolute-form requests and CONNECT.
    Regular,
    /// Everything goes to one upstream server; clients talk to flowgate as if it were it.
    Reverse {
        /// `http` or `https` to the upstream.
        scheme: Scheme,
        /// `reverse:h2c://`: HTTP/2 with prior knowledge to a cleartext upstream (gRPC
        /// servers without TLS); `http://` upstreams get HTTP/1.1.
        prior_knowledge: bool,
        /// Upstream host.
        host: String,
        /// Upstream port.
        port: u16,
    },
    /// Like regular, but every upstream connection goes through another HTTP proxy.
    Upstream {
        /// `https`: TLS to the upstream proxy itself (a secure web proxy), verified like
        /// any upstream.
        scheme: Scheme,
        /// The upstream proxy's host.
        host: String,
        /// The upstream proxy's port.
        port: u16,
    },
}

/// Why a `--mode` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mode {given:?}: {reason}")]
pub struct ModeError {
    given: String,
    reason: String,
}

impl Mode {
    /// Parses `regular`, `reverse:http[s]://host[:port]` (or `reverse:h2c://host:port`) or
    /// `upstream:http[s]://host:port`,
    /// each optionally followed by `@PORT`; returns the mode and that port.
    pub fn parse(text: &str) -> Result<(Mode, Option<u16>), ModeError> {
        let err = |reason: &str| ModeError { given: text.to_owned(), reason: reason.to_owned() };
        let (spec, port) = match text.rsplit_once('@') {
            Some((spec, port)) => {
                (spec, Some(port.parse::<u16>().map_err(|_| err("the port after @ is not a number"))?))
            }
            None => (text, None),
        };
        let mode = if spec == "regular" {
            Mode::Regular
        } else if let Some(url) = spec.strip_prefix("reverse:") {
            let (url, prior_knowledge) = match url.strip_prefix("h2c://") {
                Some(rest) => (format!("http://{rest}"), true),
                None => (url.to_owned(), false),
            };
            let url = Url::parse(&url).map_err(|e| err(&e.to_string()))?;
            if url.path != "/" {
                return Err(err("reverse mode takes scheme://host[:port] without a path"));
            }
            Mode::Reverse { scheme: url.scheme, prior_knowledge, host: url.host, port: url.port }
        } else if let Some(url) = spec.strip_prefix("upstream:") {
            let url = Url::parse(url).map_err(|e| err(&e.to_string()))?;
            if url.path != "/" {
                return Err(err("the upstream proxy is http[s]://host[:port] without a path"));
            }
            Mode::Upstream { scheme: url.scheme, host: url.host, port: url.port }
        } else {
            return Err(err("expected regular, reverse:URL or upstream:URL"));
        };
        Ok((mode, port))
    }

    /// The mode's name as mitmproxy prints it.
    pub fn describe(&self) -> String {
        match self {
            Mode::Regular => "regular proxy".to_owned(),
            Mode::Reverse { prior_knowledge: true, host, port, .. } => format!("reverse proxy to h2c://{host}:{port}"),
            Mode::Reverse { scheme, host, port, .. } => format!("reverse proxy to {}://{host}:{port}", scheme.as_str()),
            Mode::Upstream { scheme, host, port } => format!("upstream proxy via {}://{host}:{port}", scheme.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::parse("regular"), Ok((Mode::Regular, None)));
        assert_eq!(
            Mode::parse("reverse:https://example.com@8443"),
            Ok((
                Mode::Reverse { scheme: Scheme::Https, prior_knowledge: false, host: "example.com".into(), port: 443 },
                Some(8443)
            ))
        );
        assert_eq!(
            Mode::parse("reverse:h2c://127.0.0.1:50051"),
            Ok((
                Mode::Reverse { scheme: Scheme::Http, prior_knowledge: true, host: "127.0.0.1".into(), port: 50051 },
                None
            ))
        );
        assert_eq!(
            Mode::parse("upstream:http://127.0.0.1:3128"),
            Ok((Mode::Upstream { scheme: Scheme::Http, host: "127.0.0.1".into(), port: 3128 }, None))
        );
        assert_eq!(
            Mode::parse("upstream:https://proxy.example"),
            Ok((Mode::Upstream { scheme: Scheme::Https, host: "proxy.example".into(), port: 443 }, None))
        );
        assert!(Mode::parse("upstream:http://x:3128/path").is_err());
        assert!(Mode::parse("transparent").is_err());
        assert!(Mode::parse("reverse:ftp://x").is_err());
        assert!(Mode::parse("reverse:http://x/path").is_err());
        assert!(Mode::parse("regular@x").is_err());
    }
}
