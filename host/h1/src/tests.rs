//! The codec's table tests, the compliance corpus and the property tests.

use super::*;

const LIMITS: Limits = Limits { max_headers: 300, max_head_bytes: 64 << 10 };

fn fields(h: &Headers) -> Vec<(String, String)> {
    h.iter().map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned())).collect()
}

/// Every split of `input` into two reads gives the same result as reading it whole.
fn request_at_every_split(input: &[u8]) -> Result<Option<(RequestHead, usize)>, WireError> {
    let whole = parse_request(input, LIMITS);
    for cut in 0..input.len() {
        match parse_request(&input[..cut], LIMITS) {
            Ok(None) => {}
            // A prefix may be invalid only if the whole is.
            Err(e) => assert!(whole.is_err(), "prefix of {cut} bytes failed ({e}) but the whole did not"),
            Ok(Some((_, len))) => assert!(len <= cut),
        }
    }
    whole
}

#[test]
fn request_heads_keep_order_case_and_duplicates() {
    let raw = b"GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\nX-Order-A: 1\r\nX-Dup: one\r\ncookie: a=1\r\nX-Order-B: 2\r\nx-dup: two\r\nCookie: b=2\r\n\r\nrest";
    let (head, len) = request_at_every_split(raw).expect("valid").expect("complete");
    assert_eq!(len, raw.len() - 4);
    assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "http://a.example/x?y"));
    assert_eq!(head.version, HttpVersion::Http11);
    assert_eq!(head.framing, Framing::None);
    let want = [
        ("Host", "a.example"),
        ("X-Order-A", "1"),
        ("X-Dup", "one"),
        ("cookie", "a=1"),
        ("X-Order-B", "2"),
        ("x-dup", "two"),
        ("Cookie", "b=2"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect();
    assert_eq!(fields(&head.headers), want);
}

#[test]
fn request_framing_table() {
    let cases: &[(&str, Result<Framing, &str>)] = &[
        ("Content-Length: 5", Ok(Framing::Length(5))),
        ("Content-Length: 5, 5", Ok(Framing::Length(5))),
        ("Content-Length: 0", Ok(Framing::None)),
        ("Transfer-Encoding: chunked", Ok(Framing::Chunked)),
        ("Transfer-Encoding: gzip, chunked", Ok(Framing::Chunked)),
        ("Content-Length: 4\r\nTransfer-Encoding: chunked", Err("both Content-Length and Transfer-Encoding")),
        ("Content-Length: 1\r\nContent-Length: 2", Err("conflicting Content-Length values")),
        ("Content-Length: +1", Err("invalid Content-Length \"+1\"")),
        ("Content-Length: 99999999999999999999", Err("invalid Content-Length \"99999999999999999999\"")),
        ("Transfer-Encoding: chunked, gzip", Err("Transfer-Encoding \"chunked, gzip\" does not end in chunked")),
        ("Transfer-Encoding: gzip", Err("Transfer-Encoding \"gzip\" does not end in chunked")),
    ];
    for (field, want) in cases {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\n{field}\r\n\r\n");
        let got = request_at_every_split(raw.as_bytes()).map(|h| h.expect("complete").0.framing);
        assert_eq!(got.map_err(|e| e.to_string()), want.map_err(str::to_owned), "{field}");
    }
}

#[test]
fn malformed_heads_are_refused_with_their_status() {
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n", 400),
        (b"HELLO\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ];
    for (raw, status) in cases {
        let e = parse_request(raw, LIMITS).expect_err("refused");
        assert_eq!(e.status(), *status, "{e}");
    }
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..301 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parse_request(&many, LIMITS), Err(WireError::TooManyFields(300)));
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'v', 70 << 10));
    assert_eq!(parse_request(&big, LIMITS), Err(WireError::HeadTooLarge(64 << 10)));
    assert_eq!(WireError::HeadTooLarge(1).status(), 431);
}

#[test]
fn many_fields_parse_beyond_the_stack_slots() {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..300 {
        raw.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let (head, _) = parse_request(&raw, LIMITS).expect("valid").expect("complete");
    assert_eq!(head.headers.len(), 300);
    assert_eq!(head.headers.iter().nth(299).map(|(n, _)| n), Some("X-H299"));
}

#[test]
fn response_heads_keep_the_reason_and_framing_follows_status_and_method() {
    let raw = b"HTTP/1.1 299 Fidelity Custom Reason\r\nX-B: 1\r\nSet-Cookie: a\r\nx-a: 2\r\nSet-Cookie: b\r\nContent-Length: 3\r\n\r\nabc";
    let (head, len) = parse_response(raw, LIMITS, "GET").expect("valid").expect("complete");
    assert_eq!((head.status, head.reason.as_str(), head.framing), (299, "Fidelity Custom Reason", Framing::Length(3)));
    assert_eq!(len, raw.len() - 3);
    assert_eq!(fields(&head.headers)[1], ("Set-Cookie".to_owned(), "a".to_owned()));
    let (head, _) = parse_response(raw, LIMITS, "HEAD").expect("valid").expect("complete");
    assert_eq!(head.framing, Framing::None);
    let cases: &[(&str, u16, &str, Framing)] = &[
        ("GET", 200, "", Framing::Close),
        ("GET", 204, "Content-Length: 5\r\n", Framing::None),
        ("GET", 304, "", Framing::None),
        ("GET", 103, "Link: </a>\r\n", Framing::None),
        ("GET", 200, "Transfer-Encoding: chunked\r\n", Framing::Chunked),
        ("GET", 200, "Transfer-Encoding: gzip\r\n", Framing::Close),
        ("GET", 200, "Content-Length: 0\r\n", Framing::None),
    ];
    for (method, status, field, want) in cases {
        let raw = format!("HTTP/1.1 {status} X\r\n{field}\r\n");
        let (head, _) = parse_response(raw.as_bytes(), LIMITS, method).expect("valid").expect("complete");
        assert_eq!(head.framing, *want, "{status} {field:?}");
    }
    let (head, _) = parse_response(b"HTTP/1.0 200\r\n\r\n", LIMITS, "GET").expect("valid").expect("complete");
    assert_eq!((head.reason.as_str(), head.version), ("", HttpVersion::Http10));
}

/// Decodes `input` fed in pieces of `step` bytes.
fn decode_all(framing: Framing, input: &[u8], step: usize) -> Result<(Vec<u8>, Option<Headers>, usize), WireError> {
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        let eof = fed >= input.len();
        match decoder.decode(&mut buf, eof)? {
            Some(Piece::Data(d)) => data.extend_from_slice(&d),
            Some(Piece::Trailers(t)) => trailers = Some(t),
            Some(Piece::End) => return Ok((data, trailers, buf.len() + input.len() - fed)),
            None => {
                let next = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..next]);
                fed = next;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_at_every_step_size() {
    let input = b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\nx-t: 2\r\n\r\nNEXT";
    for step in 1..input.len() {
        let (data, trailers, left) = decode_all(Framing::Chunked, input, step).expect("valid");
        assert_eq!(data, b"abc0123456789abcdef", "step {step}");
        assert_eq!(fields(&trailers.expect("trailers")), [("X-T".into(), "1".into()), ("x-t".into(), "2".into())]);
        assert_eq!(left, 4, "NEXT is left for the next message");
    }
    let (data, trailers, left) = decode_all(Framing::Chunked, b"0\r\n\r\n", 1).expect("valid");
    assert!(data.is_empty() && trailers.is_none() && left == 0);
}

#[test]
fn bad_chunks_and_short_bodies_are_errors() {
    for bad in [&b"-1\r\nabc"[..], b"3\r\nabcX\r\n", b"fffffffffffffffff\r\n", b"zz\r\n", b"\r\n"] {
        assert!(decode_all(Framing::Chunked, bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert!(decode_all(Framing::Chunked, b"3\r\nab", 1).is_err(), "truncated");
    assert!(decode_all(Framing::Length(5), b"abc", 1).is_err(), "truncated");
    let (data, _, left) = decode_all(Framing::Length(3), b"abcdef", 2).expect("valid");
    assert_eq!((data.as_slice(), left), (&b"abc"[..], 3));
    let (data, _, _) = decode_all(Framing::Close, b"until close", 3).expect("valid");
    assert_eq!(data, b"until close");
    let long = format!("1;{}\r\n", "e".repeat(5000));
    assert!(decode_all(Framing::Chunked, long.as_bytes(), 100).is_err(), "chunk line bound");
}

#[test]
fn fields_are_written_back_as_they_were() {
    let headers = Headers::from_pairs([
        ("Host", "a"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("cookie", "a=1"),
        ("X-Dup", "1"),
        ("cookie", "b=2"),
        ("Transfer-Encoding", "chunked"),
        ("X-Dup", "2"),
    ])
    .expect("valid");
    let mut out = Vec::new();
    put_fields(&mut out, &headers, false);
    assert_eq!(String::from_utf8_lossy(&out), "Host: a\r\ncookie: a=1\r\nX-Dup: 1\r\ncookie: b=2\r\nX-Dup: 2\r\n");
    let mut out = Vec::new();
    put_fields(&mut out, &headers, true);
    assert_eq!(String::from_utf8_lossy(&out), "Host: a\r\ncookie: a=1; b=2\r\nX-Dup: 1\r\nX-Dup: 2\r\n");
    // Connection cannot unframe a message or drop its target.
    let sneaky = Headers::from_pairs([("Host", "a"), ("Connection", "content-length, host"), ("Content-Length", "3")])
        .expect("valid");
    let mut out = Vec::new();
    put_fields(&mut out, &sneaky, false);
    assert_eq!(String::from_utf8_lossy(&out), "Host: a\r\nContent-Length: 3\r\n");
    let trailers =
        Headers::from_pairs([("x-sum", "1"), ("Content-Length", "9"), ("Host", "b"), ("te", "0")]).expect("valid");
    let mut out = Vec::new();
    put_last_chunk(&mut out, Some(&trailers));
    assert_eq!(out, b"0\r\nx-sum: 1\r\n\r\n");
    assert!(has_head_end(b"GET / HTTP/1.1\r\n\r\n", 15) && has_head_end(b"GET /\n\n", 6));
    assert!(!has_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
    let mut out = Vec::new();
    put_chunk_header(&mut out, 26);
    put_last_chunk(&mut out, Some(&Headers::from_pairs([("grpc-status", "0")]).expect("valid")));
    assert_eq!(out, b"1a\r\n0\r\ngrpc-status: 0\r\n\r\n");
    assert!(keeps_alive(HttpVersion::Http11, &Headers::new()));
    assert!(!keeps_alive(HttpVersion::Http10, &Headers::new()));
    assert!(keeps_alive(HttpVersion::Http10, &Headers::from_pairs([("Connection", "Keep-Alive")]).expect("v")));
    assert!(!keeps_alive(HttpVersion::Http11, &Headers::from_pairs([("connection", "Close")]).expect("v")));
}

/// RFC 9112's MUST cases and the usual smuggling obfuscations (CL.TE, TE.CL, TE.TE,
/// bare CR and LF, NUL, space before the colon, chunk extensions and sizes). Each is
/// refused with a status, or read as exactly one request with the framing shown and
/// the next request found right after it: what goes upstream is written again from
/// that, so a strict parser there reads the same one request.
#[test]
fn compliance_corpus() {
    enum Want {
        Refused(u16),
        One(Framing, &'static [u8]),
    }
    use Want::*;
    const NEXT: &[u8] = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: &[(&str, &[u8], Want)] = &[
        (
            "CL.TE",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
            Refused(400),
        ),
        (
            "TE.CL",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Refused(400),
        ),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", Refused(400)),
        ("TE quoted", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", Refused(400)),
        (
            "TE then another",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
            Refused(400),
        ),
        (
            "TE chunked, identity",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            Refused(400),
        ),
        ("TE space before colon", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", Refused(400)),
        ("TE folded", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", Refused(400)),
        ("TE leading space line", b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n", Refused(400)),
        (
            "TE tab",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
            One(Framing::Chunked, b""),
        ),
        (
            "TE uppercase",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n1\r\na\r\n0\r\n\r\n",
            One(Framing::Chunked, b"a"),
        ),
        (
            "TE gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            One(Framing::Chunked, b"ab"),
        ),
        (
            "TE_ is another field",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n",
            One(Framing::None, b""),
        ),
        (
            "CL leading zero",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 01\r\n\r\na",
            One(Framing::Length(1), b"a"),
        ),
        (
            "CL list agreeing",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\na",
            One(Framing::Length(1), b"a"),
        ),
        ("CL list differing", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab", Refused(400)),
        (
            "CL twice differing",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            Refused(400),
        ),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", Refused(400)),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", Refused(400)),
        ("CL with space", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n", Refused(400)),
        ("CL empty", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", Refused(400)),
        ("CONNECT with a body", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 3\r\n\r\nabc", Refused(400)),
        (
            "CONNECT chunked",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refused(400),
        ),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refused(400)),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", Refused(400)),
        ("bare CR in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", Refused(400)),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", Refused(400)),
        ("bare CR in the request line", b"GET /\r HTTP/1.1\r\nHost: x\r\n\r\n", Refused(400)),
        ("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", Refused(400)),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", Refused(400)),
        ("bare LF line ends", b"GET / HTTP/1.1\nHost: x\n\n", One(Framing::None, b"")),
        (
            "chunk extension",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"q;r\"\r\nhello\r\n0;z\r\n\r\n",
            One(Framing::Chunked, b"hello"),
        ),
        (
            "chunk size leading zeros",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n",
            One(Framing::Chunked, b"hello"),
        ),
    ];
    for (what, raw, want) in cases {
        let mut input = raw.to_vec();
        input.extend_from_slice(NEXT);
        match (parse_request(&input, LIMITS), want) {
            (Err(e), Refused(status)) => assert_eq!(e.status(), *status, "{what}: {e}"),
            (Ok(Some((head, len))), One(framing, body)) => {
                assert_eq!(head.framing, *framing, "{what}");
                let (got, _, left) = decode_all(head.framing, &input[len..], 1).expect(what);
                assert_eq!(got.as_slice(), *body, "{what}: body");
                let rest = &input[input.len() - left..];
                let next = parse_request(rest, LIMITS).expect(what).expect(what);
                assert_eq!(
                    (next.0.target.as_str(), next.1),
                    ("/next", NEXT.len()),
                    "{what}: one request, then the next"
                );
            }
            (got, Refused(status)) => panic!("{what}: want {status}, got {got:?}"),
            (got, One(..)) => panic!("{what}: want one request, got {got:?}"),
        }
    }
    let bad_chunks: &[&[u8]] =
        &[b"+5\r\nhello\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n", b"ffffffffffffffff\r\n", b"5\r\nhello0\r\n\r\n"];
    for chunk in bad_chunks {
        assert!(decode_all(Framing::Chunked, chunk, 1).is_err(), "{:?}", String::from_utf8_lossy(chunk));
    }
}

/// Feeds `input` cut at `cuts` through the head parser and the body decoder, as the
/// network layer does: a head, its body, then the next head.
fn drive(input: &[u8], cuts: &[usize]) -> (RequestHead, Vec<u8>, Option<Headers>, RequestHead) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    let mut pieces = Vec::new();
    let mut at = 0;
    for cut in cuts {
        pieces.push(&input[at..cut]);
        at = cut;
    }
    let mut pieces = pieces.into_iter();
    let mut buf = BytesMut::new();
    let mut more = |buf: &mut BytesMut| match pieces.next() {
        Some(piece) => {
            buf.extend_from_slice(piece);
            true
        }
        None => false,
    };
    let next_head = |buf: &mut BytesMut, more: &mut dyn FnMut(&mut BytesMut) -> bool| loop {
        if let Some((head, len)) = parse_request(buf, LIMITS).expect("valid head") {
            let _ = buf.split_to(len);
            return head;
        }
        assert!(more(buf), "input ended inside a head");
    };
    let first = next_head(&mut buf, &mut more);
    let mut decoder = Decoder::new(first.framing);
    let (mut body, mut trailers) = (Vec::new(), None);
    loop {
        match decoder.decode(&mut buf, false).expect("valid body") {
            Some(Piece::Data(d)) => body.extend_from_slice(&d),
            Some(Piece::Trailers(t)) => trailers = Some(t),
            Some(Piece::End) => break,
            None => assert!(more(&mut buf), "input ended inside the body"),
        }
    }
    let second = next_head(&mut buf, &mut more);
    (first, body, trailers, second)
}

fn field() -> impl proptest::strategy::Strategy<Value = (String, String)> {
    use proptest::prelude::*;
    ("[A-Za-z][A-Za-z0-9-]{0,12}", "[!-~]([ -~]{0,20}[!-~])?")
        .prop_filter("framing fields are the test's own", |(n, _)| {
            !["content-length", "transfer-encoding"].contains(&n.to_ascii_lowercase().as_str())
        })
}

/// A trailer field `put_last_chunk` writes: RFC 9110 section 6.5.1 keeps framing, routing
/// and hop-by-hop fields out of a trailer section, so the writer drops those.
fn trailer_field() -> impl proptest::strategy::Strategy<Value = (String, String)> {
    use proptest::prelude::*;
    field().prop_filter("fields a trailer may not carry are dropped on write", |(n, _)| {
        !is_hop_by_hop(n, &[]) && !["host", "content-length", "trailer"].contains(&n.to_ascii_lowercase().as_str())
    })
}

proptest::proptest! {
    /// A chunked request with trailers, then the next request, cut anywhere: the
    /// fields come out in order and case, the body and trailers whole, and the next
    /// head is found where it starts.
    #[test]
    fn chunked_requests_survive_any_split(
        fields in proptest::collection::vec(field(), 0..40),
        chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 1..200), 0..6),
        trailers in proptest::collection::vec(trailer_field(), 0..3),
        cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..12),
    ) {
        let headers = Headers::from_pairs(fields.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))).expect("valid");
        let trailers = Headers::from_pairs(trailers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))).expect("valid");
        let mut raw = b"POST /p?q HTTP/1.1\r\n".to_vec();
        for (name, value) in headers.iter() {
            put_field(&mut raw, name, value);
        }
        put_field(&mut raw, "Transfer-Encoding", b"chunked");
        raw.extend_from_slice(b"\r\n");
        for chunk in &chunks {
            put_chunk_header(&mut raw, chunk.len());
            raw.extend_from_slice(chunk);
            raw.extend_from_slice(b"\r\n");
        }
        put_last_chunk(&mut raw, (!trailers.is_empty()).then_some(&trailers));
        raw.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let (first, body, got_trailers, second) = drive(&raw, &cuts);
        let mut want = headers.clone();
        want.append("Transfer-Encoding", b"chunked").expect("valid");
        proptest::prop_assert_eq!(first.headers, want);
        proptest::prop_assert_eq!(first.framing, Framing::Chunked);
        proptest::prop_assert_eq!(body, chunks.concat());
        proptest::prop_assert_eq!(got_trailers.unwrap_or_default(), trailers);
        proptest::prop_assert_eq!((second.method.as_str(), second.target.as_str()), ("GET", "/next"));
    }
}
