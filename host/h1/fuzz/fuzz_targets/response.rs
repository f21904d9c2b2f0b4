//! An upstream's bytes: a response head (to a GET or a HEAD, as the first byte says) and
//! its body, fed in pieces the input chooses. The codec must never panic, and the body
//! it reads never holds more bytes than it was given.
#![no_main]

use bytes::BytesMut;
use flowgate_h1::{Decoder, Limits, Piece, parse_response};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_headers: 500, max_head_bytes: 256 << 10 };

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else { return };
    let method = if first & 1 == 0 { "GET" } else { "HEAD" };
    let step = usize::from(first >> 1).max(1);
    let Ok(Some((head, len))) = parse_response(input, LIMITS, method) else { return };
    let mut decoder = Decoder::new(head.framing);
    let rest = &input[len..];
    let mut buf = BytesMut::new();
    let (mut fed, mut total) = (0usize, 0usize);
    loop {
        match decoder.decode(&mut buf, fed == rest.len()) {
            Ok(Some(Piece::Data(d))) => total += d.len(),
            Ok(Some(Piece::Trailers(_))) => {}
            Ok(Some(Piece::End)) | Err(_) => break,
            Ok(None) => {
                assert!(fed < rest.len(), "asked for more after the end");
                let next = (fed + step).min(rest.len());
                buf.extend_from_slice(&rest[fed..next]);
                fed = next;
            }
        }
    }
    assert!(total <= rest.len());
});
