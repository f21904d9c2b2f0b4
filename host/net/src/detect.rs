//! Protocol detection, sans-IO: what the first bytes of a stream are — a TLS ClientHello
//! (RFC 8446 section 4.1.2, reassembled across records and segments by rustls' `Acceptor`),
//! the HTTP/2 connection preface (RFC 9113 section 3.4), an HTTP/1 request line (RFC 9112
//! section 3: `token SP`), a SOCKS5 greeting (RFC 1928 section 3), or none of them.
//! [`detect`] is a pure function of the bytes seen so far; [`read_start`] is the one
//! helper that reads them, under a deadline and a byte cap. Datagrams are not classified
//! here (a datagram classifier is a module of its own beside this one).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes read while looking for a decision: a ClientHello larger than this
/// (post-quantum key shares make them ~1.8 KiB; 64 KiB is TLS's own handshake message
/// bound in practice) is refused.
pub(crate) const MAX_START_BYTES: usize = 64 << 10;

/// The longest HTTP method token recognised as a request line.
const MAX_METHOD_LEN: usize = 32;

/// What a client offered in its ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Hello {
    /// The server name it asked for (SNI).
    pub sni: Option<String>,
    /// The protocols it offered by ALPN, in its order.
    pub alpn: Vec<String>,
}

/// What a stream starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detected {
    /// A complete TLS ClientHello.
    TlsClientHello(Hello),
    /// TLS record magic, but not a ClientHello rustls accepts (or one past the byte cap).
    TlsInvalid(String),
    /// The HTTP/2 connection preface (prior knowledge).
    Http2Preface,
    /// An HTTP/1 request line's start: a method token and a space.
    Http1,
    /// A SOCKS5 greeting: version 5 and its list of methods.
    Socks5,
    /// Bytes none of the above start with.
    Unknown,
}

/// The decision on the bytes seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detection {
    /// Every protocol still possible needs more bytes to be sure.
    NeedMore,
    /// Decided.
    Is(Detected),
}

/// Classifies the first bytes of a stream. Splitting the same input at any offset never
/// changes the decision: a prefix either decides what the whole does, or asks for more.
pub(crate) fn detect(buf: &[u8]) -> Detection {
    let Some(&first) = buf.first() else { return Detection::NeedMore };
    if first == 0x16 && buf.get(1).is_none_or(|&major| major == 0x03) {
        return tls(buf);
    }
    if first == 0x05 {
        return socks5(buf);
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        if n == H2_PREFACE.len() {
            return Detection::Is(Detected::Http2Preface);
        }
        return Detection::NeedMore;
    }
    http1(buf)
}

fn tls(buf: &[u8]) -> Detection {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    while fed < buf.len() {
        let mut rest = &buf[fed..];
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(n) => fed += n,
            Err(e) => return Detection::Is(Detected::TlsInvalid(format!("bad ClientHello: {e}"))),
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                let alpn = hello
                    .alpn()
                    .map(|protocols| protocols.map(|p| String::from_utf8_lossy(p).into_owned()).collect())
                    .unwrap_or_default();
                return Detection::Is(Detected::TlsClientHello(Hello { sni, alpn }));
            }
            Ok(None) => {}
            Err((e, _alert)) => return Detection::Is(Detected::TlsInvalid(format!("bad ClientHello: {e}"))),
        }
    }
    if buf.len() >= MAX_START_BYTES {
        return Detection::Is(Detected::TlsInvalid(format!("ClientHello larger than {MAX_START_BYTES} bytes")));
    }
    Detection::NeedMore
}

fn socks5(buf: &[u8]) -> Detection {
    match buf.get(1) {
        None => Detection::NeedMore,
        Some(0) => Detection::Is(Detected::Unknown),
        Some(&methods) if buf.len() < 2 + methods as usize => Detection::NeedMore,
        Some(_) => Detection::Is(Detected::Socks5),
    }
}

/// RFC 9110 section 5.6.2's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn http1(buf: &[u8]) -> Detection {
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return Detection::Is(if i == 0 { Detected::Unknown } else { Detected::Http1 });
        }
        if !is_tchar(b) || i >= MAX_METHOD_LEN {
            return Detection::Is(Detected::Unknown);
        }
    }
    Detection::NeedMore
}

/// How long [`read_start`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// For the first byte (after it, silence means the server may speak first).
    pub first_byte: Duration,
    /// For a decision, from the start.
    pub decision: Duration,
}

/// What the start of a stream turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Start {
    /// Decided.
    Is(Detected),
    /// Nothing arrived before the first-byte deadline.
    Silent,
    /// Some bytes arrived but no decision before the deadline.
    Stalled,
    /// The peer closed (or the read failed) before a decision.
    Closed,
}

/// Reads from `io` onto `buf` until [`detect`] decides, a deadline passes, or the peer
/// closes. Every byte read stays in `buf`, to be replayed to the next layer.
pub(crate) async fn read_start<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>, deadlines: Deadlines) -> Start {
    let began = tokio::time::Instant::now();
    loop {
        if let Detection::Is(detected) = detect(buf) {
            return Start::Is(detected);
        }
        let deadline = if buf.is_empty() { began + deadlines.first_byte } else { began + deadlines.decision };
        let mut chunk = [0u8; 4096];
        let room = MAX_START_BYTES.saturating_sub(buf.len()).clamp(1, chunk.len());
        match tokio::time::timeout_at(deadline, io.read(&mut chunk[..room])).await {
            Err(_) if buf.is_empty() => return Start::Silent,
            Err(_) => return Start::Stalled,
            Ok(Ok(0)) | Ok(Err(_)) => return Start::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls' client, with SNI and ALPN, in one record.
    fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    /// The same handshake message re-framed into records of at most `size` bytes, padded
    /// with a large extension first so it spans many (as post-quantum hellos do).
    fn fragmented(hello: &[u8], size: usize) -> Vec<u8> {
        let message = &hello[5..];
        let mut out = Vec::new();
        for piece in message.chunks(size) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    /// The decision on every split of `input` is the same as on the whole: each prefix
    /// either asks for more or gives the whole's answer.
    fn check(input: &[u8], expected: Detected) {
        assert_eq!(detect(input), Detection::Is(expected.clone()), "whole input");
        for cut in 0..input.len() {
            match detect(&input[..cut]) {
                Detection::NeedMore => {}
                Detection::Is(d) => assert_eq!(d, expected, "prefix of {cut} bytes decided differently"),
            }
        }
    }

    fn hello(sni: &str, alpn: &[&str]) -> Detected {
        Detected::TlsClientHello(Hello { sni: Some(sni.into()), alpn: alpn.iter().map(|s| s.to_string()).collect() })
    }

    #[test]
    fn tls_client_hello_whole_and_split_across_records() {
        let whole = client_hello("example.com", &[b"h2", b"http/1.1"]);
        check(&whole, hello("example.com", &["h2", "http/1.1"]));
        for size in [1, 7, 100, 512] {
            check(&fragmented(&whole, size), hello("example.com", &["h2", "http/1.1"]));
        }
        // Without SNI or ALPN.
        let bare = client_hello("10.0.0.1", &[]);
        assert_eq!(detect(&bare), Detection::Is(Detected::TlsClientHello(Hello::default())));
    }

    #[test]
    fn tls_that_is_not_a_client_hello() {
        // A handshake record holding a ServerHello-typed message (type 2).
        let bogus = [0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];
        assert!(matches!(detect(&bogus), Detection::Is(Detected::TlsInvalid(_))));
        // Record magic, then an endless hello: refused at the cap, never buffered further.
        let mut endless = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        endless.resize(MAX_START_BYTES, 0);
        assert!(matches!(detect(&endless), Detection::Is(Detected::TlsInvalid(_))));
    }

    #[test]
    fn http2_preface_and_http1_request_lines() {
        check(H2_PREFACE, Detected::Http2Preface);
        check(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Detected::Http1);
        check(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", Detected::Http1);
        check(b"M-SEARCH * HTTP/1.1\r\n", Detected::Http1);
        // Shares "PRI" with the preface, then differs.
        check(b"PRIX / HTTP/1.1\r\n", Detected::Http1);
        check(b"PRI / HTTP/1.1\r\n", Detected::Http1);
    }

    #[test]
    fn unknown_starts() {
        check(b"SSH-2.0-OpenSSH_9.2\r\n", Detected::Unknown);
        check(b"\x00\x01\x02binary", Detected::Unknown);
        check(b" GET / HTTP/1.1\r\n", Detected::Unknown);
        check(b"EHLO\r\n", Detected::Unknown);
        check(&[b'A'; 40], Detected::Unknown);
        // The HTTP/2 preface's second line wrong: it was never prior knowledge.
        check(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", Detected::Http1);
    }

    #[test]
    fn socks5_greetings() {
        check(&[0x05, 0x01, 0x00], Detected::Socks5);
        check(&[0x05, 0x02, 0x00, 0x02], Detected::Socks5);
        check(&[0x05, 0x00], Detected::Unknown);
    }

    #[test]
    fn nothing_yet() {
        assert_eq!(detect(b""), Detection::NeedMore);
        assert_eq!(detect(b"GE"), Detection::NeedMore);
        assert_eq!(detect(&[0x16]), Detection::NeedMore);
        assert_eq!(detect(&[0x16, 0x03, 0x01, 0x02]), Detection::NeedMore);
    }

    #[tokio::test]
    async fn read_start_decides_times_out_and_sees_closes() {
        let quick = Deadlines { first_byte: Duration::from_millis(20), decision: Duration::from_millis(50) };
        // Bytes arriving in pieces are gathered until the decision.
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in [&b"GE"[..], b"T /", b" HTTP/1.1\r\n"] {
                client.write_all(piece).await.expect("write");
            }
            client
        });
        let mut buf = Vec::new();
        let slow = Deadlines { first_byte: Duration::from_secs(5), decision: Duration::from_secs(5) };
        assert_eq!(read_start(&mut server, &mut buf, slow).await, Start::Is(Detected::Http1));
        assert!(buf.starts_with(b"GET /"));
        let client = writer.await.expect("writer");
        // Silence, then a stalled partial start.
        let mut buf = Vec::new();
        assert_eq!(read_start(&mut server, &mut buf, quick).await, Start::Silent);
        let mut buf = b"GE".to_vec();
        assert_eq!(read_start(&mut server, &mut buf, quick).await, Start::Stalled);
        // The peer goes away.
        drop(client);
        let mut buf = Vec::new();
        assert_eq!(read_start(&mut server, &mut buf, quick).await, Start::Closed);
    }
}
