//! WebSocket messages (RFC 6455 sections 5.4, 5.5.1 and 7.4): fragments joined into
//! messages within a size cap, control frames passed through between them, close payloads
//! parsed and written, and messages cut into frames again. Not here: inflating a
//! compressed message (`deflate.rs`), answering pings or closes (the caller decides).

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Error, Frame, Limits, OpCode};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// UTF-8 text (checked by the `Reassembler` unless compressed).
    Text,
    /// Bytes.
    Binary,
    /// A ping: the payload a pong echoes.
    Ping,
    /// A pong.
    Pong,
    /// A close: `parse_close` reads its payload.
    Close,
}

impl MessageKind {
    /// The opcode of the message's first frame.
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
            MessageKind::Ping => OpCode::Ping,
            MessageKind::Pong => OpCode::Pong,
            MessageKind::Close => OpCode::Close,
        }
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What it is.
    pub kind: MessageKind,
    /// All fragments' payloads together; still compressed if `compressed`.
    pub payload: Bytes,
    /// Sent compressed (RSV1 on its first frame): inflate before reading, and check text
    /// with `validate_text` after.
    pub compressed: bool,
}

/// Joins the frames from one endpoint into messages. Feed it every frame in order.
#[derive(Debug)]
pub struct Reassembler {
    max_message_size: usize,
    open: Option<Partial>,
}

/// A fragmented data message not yet finished.
#[derive(Debug)]
struct Partial {
    kind: MessageKind,
    compressed: bool,
    payload: BytesMut,
}

impl Reassembler {
    /// A reassembler applying `limits.max_message_size`.
    pub fn new(limits: Limits) -> Reassembler {
        Reassembler { max_message_size: limits.max_message_size, open: None }
    }

    /// Takes the next frame; a message when it is the last of one. A control frame is a
    /// message at once, also between the fragments of a data message. The size cap is
    /// checked as each fragment arrives, before it is kept. Uncompressed text is checked
    /// to be UTF-8 here; compressed text is the caller's to check after inflating. After
    /// an error the connection is to be failed: the reassembler's state is not defined.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Message>, Error> {
        let kind = match frame.opcode {
            OpCode::Continuation => return self.continuation(frame),
            OpCode::Text => MessageKind::Text,
            OpCode::Binary => MessageKind::Binary,
            OpCode::Close => MessageKind::Close,
            OpCode::Ping => MessageKind::Ping,
            OpCode::Pong => MessageKind::Pong,
        };
        if frame.opcode.is_control() {
            if !frame.fin {
                return Err(Error::FragmentedControl(frame.opcode));
            }
            return Ok(Some(Message { kind, payload: frame.payload, compressed: false }));
        }
        if self.open.is_some() {
            return Err(Error::ExpectedContinuation(frame.opcode));
        }
        self.check_size(frame.payload.len())?;
        if frame.fin {
            return finish(kind, frame.payload, frame.rsv1).map(Some);
        }
        self.open = Some(Partial { kind, compressed: frame.rsv1, payload: BytesMut::from(&frame.payload[..]) });
        Ok(None)
    }

    fn continuation(&mut self, frame: Frame) -> Result<Option<Message>, Error> {
        let Some(mut open) = self.open.take() else { return Err(Error::UnexpectedContinuation) };
        self.check_size(open.payload.len().saturating_add(frame.payload.len()))?;
        open.payload.extend_from_slice(&frame.payload);
        if !frame.fin {
            self.open = Some(open);
            return Ok(None);
        }
        finish(open.kind, open.payload.freeze(), open.compressed).map(Some)
    }

    fn check_size(&self, size: usize) -> Result<(), Error> {
        if size > self.max_message_size {
            return Err(Error::MessageTooBig { size, max: self.max_message_size });
        }
        Ok(())
    }
}

fn finish(kind: MessageKind, payload: Bytes, compressed: bool) -> Result<Message, Error> {
    if kind == MessageKind::Text && !compressed {
        validate_text(&payload)?;
    }
    Ok(Message { kind, payload, compressed })
}

/// Checks that a text message's (inflated) payload is UTF-8 (1007 if not).
pub fn validate_text(payload: &[u8]) -> Result<(), Error> {
    std::str::from_utf8(payload).map(|_| ()).map_err(|_| Error::InvalidUtf8)
}

/// A close frame's payload, read (RFC 6455 section 5.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code; none for an empty payload.
    pub code: Option<u16>,
    /// The reason, empty if none.
    pub reason: String,
}

/// Reads a close payload: empty (no code), or a code that may be sent on the wire
/// (1000-1003, 1007-1014, 3000-4999; anything else is 1002) and a UTF-8 reason (1007).
pub fn parse_close(payload: &[u8]) -> Result<CloseFrame, Error> {
    let (code, reason) = match payload {
        [] => return Ok(CloseFrame { code: None, reason: String::new() }),
        [_] => return Err(Error::CloseTooShort),
        [a, b, reason @ ..] => (u16::from_be_bytes([*a, *b]), reason),
    };
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(Error::InvalidCloseCode(code));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Error::InvalidCloseReason)?;
    Ok(CloseFrame { code: Some(code), reason: reason.to_owned() })
}

/// The longest close reason that fits a control frame (125 bytes less the code's 2).
const MAX_CLOSE_REASON: usize = 123;

/// Writes a close payload: empty without a code (a reason cannot be sent without one, so
/// `reason` is then dropped), else the code and the reason, cut at a character boundary
/// to the 123 bytes a control frame has room for. The code is written as given: pass one
/// that may be sent on the wire (as `parse_close` returns).
pub fn close_payload(code: Option<u16>, reason: &str) -> Bytes {
    let Some(code) = code else { return Bytes::new() };
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + end);
    out.put_u16(code);
    out.put_slice(&reason.as_bytes()[..end]);
    out.freeze()
}

/// Cuts a message into frames of at most `max_frame_payload` bytes (taken as 1 if 0):
/// the first with the message's opcode (and RSV1 if `compressed`), the rest continuation
/// frames, the last with FIN; an empty message is one empty frame. A control message is
/// one frame and may not pass 125 bytes (an error, since a plugin may have grown it).
pub fn fragment(message: &Message, max_frame_payload: usize) -> Result<Vec<Frame>, Error> {
    let opcode = message.kind.opcode();
    let payload = &message.payload;
    if opcode.is_control() {
        if payload.len() > 125 {
            return Err(Error::ControlTooLong { opcode, size: payload.len() as u64 });
        }
        return Ok(vec![Frame { fin: true, rsv1: false, opcode, payload: payload.clone() }]);
    }
    let step = max_frame_payload.max(1);
    let count = payload.len().div_ceil(step).max(1);
    Ok((0..count)
        .map(|i| {
            let first = i == 0;
            let end = payload.len().min((i + 1) * step);
            Frame {
                fin: i + 1 == count,
                rsv1: first && message.compressed,
                opcode: if first { opcode } else { OpCode::Continuation },
                payload: payload.slice(i * step..end),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame {
        Frame { fin, rsv1: false, opcode, payload: Bytes::copy_from_slice(payload) }
    }

    fn message(kind: MessageKind, payload: &[u8]) -> Message {
        Message { kind, payload: Bytes::copy_from_slice(payload), compressed: false }
    }

    /// Feeds the frames; the results in order (stopping after the first error).
    fn feed(limits: Limits, frames: Vec<Frame>) -> Vec<Result<Option<Message>, Error>> {
        let mut reassembler = Reassembler::new(limits);
        let mut results = Vec::new();
        for frame in frames {
            let result = reassembler.push(frame);
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        results
    }

    #[test]
    fn reassembly() {
        let small = Limits { max_message_size: 10, ..Limits::default() };
        /// Name, limits, frames fed, each push's result.
        type Case = (&'static str, Limits, Vec<Frame>, Vec<Result<Option<Message>, Error>>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("one frame", Limits::default(), vec![frame(true, OpCode::Text, b"Hello")],
                vec![Ok(Some(message(MessageKind::Text, b"Hello")))]),
            ("rfc 6455 fragments with a ping between", Limits::default(),
                vec![frame(false, OpCode::Text, b"Hel"), frame(true, OpCode::Ping, b"p"), frame(true, OpCode::Continuation, b"lo")],
                vec![Ok(None), Ok(Some(message(MessageKind::Ping, b"p"))), Ok(Some(message(MessageKind::Text, b"Hello")))]),
            ("three fragments, empty middle", Limits::default(),
                vec![frame(false, OpCode::Binary, b"a"), frame(false, OpCode::Continuation, b""), frame(true, OpCode::Continuation, b"b")],
                vec![Ok(None), Ok(None), Ok(Some(message(MessageKind::Binary, b"ab")))]),
            ("utf-8 split inside a character", Limits::default(),
                vec![frame(false, OpCode::Text, &[0xc3]), frame(true, OpCode::Continuation, &[0xa9])],
                vec![Ok(None), Ok(Some(message(MessageKind::Text, "é".as_bytes())))]),
            ("close, pong", Limits::default(), vec![frame(true, OpCode::Close, b""), frame(true, OpCode::Pong, b"x")],
                vec![Ok(Some(message(MessageKind::Close, b""))), Ok(Some(message(MessageKind::Pong, b"x")))]),
            ("continuation without a message", Limits::default(), vec![frame(true, OpCode::Continuation, b"x")],
                vec![Err(Error::UnexpectedContinuation)]),
            ("continuation after a finished message", Limits::default(),
                vec![frame(true, OpCode::Binary, b"x"), frame(true, OpCode::Continuation, b"y")],
                vec![Ok(Some(message(MessageKind::Binary, b"x"))), Err(Error::UnexpectedContinuation)]),
            ("new message while one is open", Limits::default(),
                vec![frame(false, OpCode::Text, b"a"), frame(true, OpCode::Binary, b"b")],
                vec![Ok(None), Err(Error::ExpectedContinuation(OpCode::Binary))]),
            ("invalid utf-8", Limits::default(), vec![frame(true, OpCode::Text, &[0xff, 0xfe])], vec![Err(Error::InvalidUtf8)]),
            ("at max_message_size", small, vec![frame(false, OpCode::Binary, &[1; 6]), frame(true, OpCode::Continuation, &[2; 4])],
                vec![Ok(None), Ok(Some(message(MessageKind::Binary, &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2])))]),
            ("one frame over max_message_size", small, vec![frame(true, OpCode::Binary, &[1; 11])],
                vec![Err(Error::MessageTooBig { size: 11, max: 10 })]),
            ("fragments over max_message_size", small,
                vec![frame(false, OpCode::Binary, &[1; 6]), frame(false, OpCode::Continuation, &[2; 5]), frame(true, OpCode::Continuation, b"")],
                vec![Ok(None), Err(Error::MessageTooBig { size: 11, max: 10 })]),
        ];
        for (name, limits, frames, expected) in cases {
            assert_eq!(feed(limits, frames), expected, "{name}");
        }
    }

    #[test]
    fn error_close_codes() {
        assert_eq!(Error::UnexpectedContinuation.close_code(), 1002);
        assert_eq!(Error::ExpectedContinuation(OpCode::Text).close_code(), 1002);
        assert_eq!(Error::InvalidUtf8.close_code(), 1007);
        assert_eq!(Error::MessageTooBig { size: 11, max: 10 }.close_code(), 1009);
        assert_eq!(
            Error::MessageTooBig { size: 11, max: 10 }.to_string(),
            "a message reaching 11 bytes is over websocket_max_message_size (10)"
        );
    }

    /// RFC 7692 section 7.2.3.1's fragmented compressed "Hello": RSV1 on the first frame
    /// only, the payload kept compressed and not checked as text.
    #[test]
    fn compressed_message_is_not_checked_as_text() {
        let first =
            Frame { fin: false, rsv1: true, opcode: OpCode::Text, payload: Bytes::from_static(&[0xf2, 0x48, 0xcd]) };
        let last = frame(true, OpCode::Continuation, &[0xc9, 0xc9, 0x07, 0x00]);
        let mut reassembler = Reassembler::new(Limits::default());
        assert_eq!(reassembler.push(first), Ok(None));
        assert_eq!(
            reassembler.push(last),
            Ok(Some(Message {
                kind: MessageKind::Text,
                payload: Bytes::from_static(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
                compressed: true
            }))
        );
    }

    #[test]
    fn close_parsing() {
        let with = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
        let ok = |code: u16, reason: &str| Ok(CloseFrame { code: Some(code), reason: reason.to_owned() });
        #[rustfmt::skip]
        let cases: Vec<(Vec<u8>, Result<CloseFrame, Error>)> = vec![
            (vec![], Ok(CloseFrame { code: None, reason: String::new() })),
            (vec![0x03], Err(Error::CloseTooShort)),
            (with(1000, b""), ok(1000, "")),
            (with(1000, b"bye"), ok(1000, "bye")),
            (with(1001, "é".as_bytes()), ok(1001, "é")),
            (with(1002, b""), ok(1002, "")),
            (with(1003, b""), ok(1003, "")),
            (with(1007, b""), ok(1007, "")),
            (with(1011, b""), ok(1011, "")),
            (with(1014, b""), ok(1014, "")),
            (with(3000, b""), ok(3000, "")),
            (with(4999, b""), ok(4999, "")),
            (with(0, b""), Err(Error::InvalidCloseCode(0))),
            (with(999, b""), Err(Error::InvalidCloseCode(999))),
            (with(1004, b""), Err(Error::InvalidCloseCode(1004))),
            (with(1005, b""), Err(Error::InvalidCloseCode(1005))),
            (with(1006, b""), Err(Error::InvalidCloseCode(1006))),
            (with(1015, b""), Err(Error::InvalidCloseCode(1015))),
            (with(1016, b""), Err(Error::InvalidCloseCode(1016))),
            (with(2999, b""), Err(Error::InvalidCloseCode(2999))),
            (with(5000, b""), Err(Error::InvalidCloseCode(5000))),
            (with(1000, &[0xff]), Err(Error::InvalidCloseReason)),
        ];
        for (payload, expected) in cases {
            let result = parse_close(&payload);
            assert_eq!(result, expected, "{payload:02x?}");
            if let Err(error) = result {
                let code = if error == Error::InvalidCloseReason { 1007 } else { 1002 };
                assert_eq!(error.close_code(), code, "{payload:02x?}");
            }
        }
    }

    #[test]
    fn close_payload_writing() {
        assert_eq!(close_payload(None, "ignored"), Bytes::new());
        assert_eq!(&close_payload(Some(1000), "")[..], &[0x03, 0xe8]);
        assert_eq!(&close_payload(Some(1001), "bye")[..], &[0x03, 0xe9, b'b', b'y', b'e']);
        // 61 two-byte characters are 122 bytes, one more would be 124: cut before it.
        let long = "é".repeat(70);
        let payload = close_payload(Some(4000), &long);
        assert_eq!(payload.len(), 2 + 122);
        assert_eq!(parse_close(&payload), Ok(CloseFrame { code: Some(4000), reason: "é".repeat(61) }));
        assert_eq!(close_payload(Some(4000), &"a".repeat(200)).len(), 125);
    }

    #[test]
    fn fragmenting() {
        let frames = |message: &Message, max| {
            fragment(message, max).map(|frames| {
                frames.into_iter().map(|f| (f.fin, f.rsv1, f.opcode, f.payload.to_vec())).collect::<Vec<_>>()
            })
        };
        let ten = message(MessageKind::Binary, b"0123456789");
        assert_eq!(
            frames(&ten, 4),
            Ok(vec![
                (false, false, OpCode::Binary, b"0123".to_vec()),
                (false, false, OpCode::Continuation, b"4567".to_vec()),
                (true, false, OpCode::Continuation, b"89".to_vec()),
            ])
        );
        assert_eq!(frames(&ten, 10), Ok(vec![(true, false, OpCode::Binary, b"0123456789".to_vec())]));
        let compressed = Message { compressed: true, ..message(MessageKind::Text, b"abc") };
        assert_eq!(
            frames(&compressed, 2),
            Ok(vec![(false, true, OpCode::Text, b"ab".to_vec()), (true, false, OpCode::Continuation, b"c".to_vec())])
        );
        assert_eq!(frames(&message(MessageKind::Text, b""), 4), Ok(vec![(true, false, OpCode::Text, vec![])]));
        assert_eq!(frames(&message(MessageKind::Binary, b"ab"), 0).map(|f| f.len()), Ok(2));
        assert_eq!(frames(&message(MessageKind::Ping, &[1; 125]), 10).map(|f| f.len()), Ok(1));
        assert_eq!(
            fragment(&message(MessageKind::Pong, &[1; 126]), 200),
            Err(Error::ControlTooLong { opcode: OpCode::Pong, size: 126 })
        );
    }

    #[test]
    fn fragment_then_reassemble() {
        for kind in [MessageKind::Text, MessageKind::Binary, MessageKind::Close, MessageKind::Ping] {
            for max in [1, 3, 7, 100] {
                let original = message(kind, b"0123456789");
                let mut reassembler = Reassembler::new(Limits::default());
                let mut out = Vec::new();
                for frame in fragment(&original, max).expect("within 125 bytes") {
                    out.extend(reassembler.push(frame).expect("valid frames"));
                }
                assert_eq!(out, vec![original], "{kind:?} by {max}");
            }
        }
    }
}
