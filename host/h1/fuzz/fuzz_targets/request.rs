//! A client's bytes: a request head, its body, and whatever follows, cut in two at a
//! point the input chooses. Whole or cut, the codec must agree, never panic, and never
//! report a head longer than what it was given.
#![no_main]

use bytes::BytesMut;
use flowgate_h1::{Decoder, Limits, Piece, parse_request};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_headers: 500, max_head_bytes: 64 << 10 };

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else { return };
    let whole = parse_request(input, LIMITS);
    let cut = usize::from(cut).min(input.len());
    if let Ok(Some((_, len))) = parse_request(&input[..cut], LIMITS) {
        assert!(len <= cut);
        assert_eq!(whole.as_ref().ok().and_then(|h| h.as_ref()).map(|h| h.1), Some(len));
    }
    let Ok(Some((head, len))) = whole else { return };
    assert!(len <= input.len());
    let mut decoder = Decoder::new(head.framing);
    let mut buf = BytesMut::from(&input[len..]);
    let mut total = 0usize;
    for _ in 0..input.len() + 2 {
        match decoder.decode(&mut buf, true) {
            Ok(Some(Piece::Data(d))) => {
                assert!(!d.is_empty());
                total += d.len();
            }
            Ok(Some(Piece::Trailers(_))) => {}
            Ok(Some(Piece::End)) | Err(_) => break,
            Ok(None) => panic!("decode with eof never asks for more"),
        }
    }
    assert!(total <= input.len());
});
