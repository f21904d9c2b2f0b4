//! HTTP/2 pieces flowgate owns (h2 itself, through hyper, does the framing): the
//! `Upgrade: h2c` handshake (the upgrading request becomes stream 1) and the server
//! settings that carry the limits. Sans-IO; the prior-knowledge preface is recognised
//! by `detect`.

use flowgate_flow::Headers;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use flowgate_h1::{connection_tokens, is_hop_by_hop};

use crate::ProxyOptions;
use crate::detect::H2_PREFACE as PREFACE;

/// How long a keep-alive PING may go unanswered before the connection is closed.
pub(crate) const PING_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The HTTP/2 server for client connections, with flowgate's limits.
pub(crate) fn server_builder(options: &ProxyOptions) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.http2_max_concurrent_streams)
        .max_header_list_size(options.http2_max_header_list_size)
        .header_table_size(options.http2_header_table_size)
        .max_pending_accept_reset_streams(options.http2_max_reset_streams)
        .max_local_error_reset_streams(options.http2_max_error_reset_streams);
    if !options.http2_ping_keepalive.is_zero() {
        builder.keep_alive_interval(options.http2_ping_keepalive).keep_alive_timeout(PING_ANSWER_TIMEOUT);
    }
    if options.websocket {
        // RFC 8441: WebSocket over an HTTP/2 stream (extended CONNECT).
        builder.enable_connect_protocol();
    }
    builder
}

/// Whether an HTTP/1.1 request asks to upgrade its connection to h2c (RFC 7540 section
/// 3.2): `Upgrade: h2c`, `HTTP2-Settings` and both named in `Connection`. Requests with a
/// body are not upgraded (the upgrade stays optional for a server), so the body never
/// has to be replayed as DATA; the caller checks that.
pub(crate) fn wants_h2c_upgrade(headers: &Headers) -> bool {
    let connection = connection_tokens(headers);
    let upgrade = headers
        .get_all("upgrade")
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .any(|t| t == "h2c");
    upgrade
        && headers.contains("http2-settings")
        && connection.iter().any(|t| t == "upgrade")
        && connection.iter().any(|t| t == "http2-settings")
}

/// The fields of the upgrading request as stream 1 carries them: the pseudo-header
/// fields, then every end-to-end field (Host becomes `:authority`).
pub(crate) fn stream_one_fields(
    method: &str,
    scheme: &str,
    authority: &str,
    path: &str,
    headers: &Headers,
) -> Vec<(String, Vec<u8>)> {
    let mut fields = vec![
        (":method".to_owned(), method.as_bytes().to_vec()),
        (":scheme".to_owned(), scheme.as_bytes().to_vec()),
        (":authority".to_owned(), authority.as_bytes().to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
    ];
    let connection = connection_tokens(headers);
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("host")
            || name.eq_ignore_ascii_case("http2-settings")
            || is_hop_by_hop(name, &connection)
        {
            continue;
        }
        fields.push((name.to_ascii_lowercase(), value.to_vec()));
    }
    fields
}

/// Why the bytes after a `101 Switching Protocols` are not an HTTP/2 client's start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpgradeError {
    /// The connection preface is wrong.
    #[error("h2c upgrade: the client did not send the HTTP/2 preface")]
    Preface,
    /// The first frame after the preface is not SETTINGS.
    #[error("h2c upgrade: the client's first frame is not SETTINGS")]
    Settings,
}

/// The length of the client's preface and first SETTINGS frame at the start of `buf`, or
/// `None` if more bytes are needed.
pub(crate) fn client_start_len(buf: &[u8]) -> Result<Option<usize>, UpgradeError> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        return Err(UpgradeError::Preface);
    }
    let Some(head) = buf.get(PREFACE.len()..PREFACE.len() + 9) else { return Ok(None) };
    const SETTINGS: u8 = 0x4;
    if head[3] != SETTINGS {
        return Err(UpgradeError::Settings);
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let total = PREFACE.len() + 9 + len;
    Ok((buf.len() >= total).then_some(total))
}

/// The HEADERS (and CONTINUATION) frames of stream 1 carrying the upgrading request, as
/// the client would have sent them had it spoken HTTP/2 from the start: pseudo-header
/// fields first, names lowercase, every field a literal not added to the HPACK dynamic
/// table (so the client's own encoder state stays in step with the server's decoder).
/// `max_frame` is the server's SETTINGS_MAX_FRAME_SIZE.
pub(crate) fn stream_one_frames(fields: &[(String, Vec<u8>)], max_frame: usize) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00); // literal header field without indexing, new name
        hpack_string(&mut block, name.to_ascii_lowercase().as_bytes());
        hpack_string(&mut block, value);
    }
    const HEADERS: u8 = 0x1;
    const CONTINUATION: u8 = 0x9;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let mut out = Vec::with_capacity(block.len() + 9);
    let chunks: Vec<&[u8]> = if block.is_empty() { vec![&[][..]] } else { block.chunks(max_frame).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let (kind, mut flags) = if i == 0 { (HEADERS, END_STREAM) } else { (CONTINUATION, 0) };
        if last {
            flags |= END_HEADERS;
        }
        let len = chunk.len();
        out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1]);
        out.extend_from_slice(chunk);
    }
    out
}

/// An HPACK string literal without Huffman coding (RFC 7541 section 5.2).
fn hpack_string(out: &mut Vec<u8>, bytes: &[u8]) {
    hpack_int(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix_bits`-bit prefix, OR-ed into `first` (section 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc7541_examples() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 10);
        assert_eq!(out, [0b01010]);
        out.clear();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        out.clear();
        hpack_int(&mut out, 0, 7, 127);
        assert_eq!(out, [127, 0]);
    }

    #[test]
    fn finds_the_client_start_after_an_upgrade() {
        let mut buf = PREFACE.to_vec();
        assert_eq!(client_start_len(&buf), Ok(None));
        buf.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0]);
        assert_eq!(client_start_len(&buf), Ok(None));
        buf.extend_from_slice(&[0, 3, 0, 0, 0, 100, 0xff]);
        assert_eq!(client_start_len(&buf), Ok(Some(PREFACE.len() + 15)));
        assert_eq!(client_start_len(b"GET / HTTP/1.1\r\n"), Err(UpgradeError::Preface));
        let mut ping = PREFACE.to_vec();
        ping.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert_eq!(client_start_len(&ping), Err(UpgradeError::Settings));
    }

    #[test]
    fn stream_one_splits_long_header_blocks() {
        let fields = vec![(":method".to_owned(), b"GET".to_vec()), ("x-big".to_owned(), vec![b'a'; 100])];
        let frames = stream_one_frames(&fields, 64);
        // HEADERS (64 bytes, END_STREAM) + CONTINUATION (rest, END_HEADERS), stream 1.
        assert_eq!(&frames[..9], &[0, 0, 64, 1, 1, 0, 0, 0, 1]);
        let second = &frames[9 + 64..];
        assert_eq!(second[3], 9);
        assert_eq!(second[4], 4);
        assert_eq!(&second[5..9], &[0, 0, 0, 1]);
        let block_len = 1 + 1 + 7 + 1 + 3 + 1 + 1 + 5 + 1 + 100;
        assert_eq!(frames.len(), 9 + 64 + 9 + (block_len - 64));
    }
}
