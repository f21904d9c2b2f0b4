//! WebSocket frames (RFC 6455 section 5.2): the header parsed and checked, the payload
//! unmasked, and the reverse. Not here: messages (fragments joined, `message.rs`) and
//! what RSV1 means (`deflate.rs`).

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Error;

/// What a frame carries (RFC 6455 section 5.2); the reserved opcodes are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: the next fragment of a text or binary message.
    Continuation,
    /// 0x1: the first (or only) frame of a text message.
    Text,
    /// 0x2: the first (or only) frame of a binary message.
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xa
    Pong,
}

impl OpCode {
    /// The opcode a frame header's low nibble names.
    pub fn from_u8(value: u8) -> Result<OpCode, Error> {
        match value {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xa => Ok(OpCode::Pong),
            other => Err(Error::ReservedOpcode(other)),
        }
    }

    /// The header nibble.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
        }
    }

    /// Close, ping or pong: at most 125 bytes, never fragmented.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpCode::Continuation => "continuation",
            OpCode::Text => "text",
            OpCode::Binary => "binary",
            OpCode::Close => "close",
            OpCode::Ping => "ping",
            OpCode::Pong => "pong",
        })
    }
}

/// One frame, its payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    /// RSV1: with permessage-deflate, set on the first frame of a compressed message.
    pub rsv1: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The payload, unmasked.
    pub payload: Bytes,
}

/// How big frames and messages may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload (`websocket_max_frame_size`, default 16 MiB); a header
    /// announcing more is an error (1009) before any of the payload is read.
    pub max_frame_size: usize,
    /// Largest message, all fragments together (`websocket_max_message_size`, default
    /// 16 MiB); see `Reassembler`. For a compressed message this is its size on the wire;
    /// give it to `Inflater::inflate` too to bound the inflated size.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_frame_size: 16 << 20, max_message_size: 16 << 20 }
    }
}

/// Which endpoint sent the frames (or messages) in question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sent by the client: every frame is masked.
    Client,
    /// Sent by the server: no frame is masked.
    Server,
}

/// Reads frames sent by one endpoint. Holds no state between frames: an incomplete frame
/// stays in the buffer and its header is read again when more bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoder {
    /// Whose frames these are: client frames must be masked, server frames must not.
    pub role: Role,
    /// `max_frame_size` is applied here (`max_message_size` by the `Reassembler`).
    pub limits: Limits,
    /// RSV1 may be set on the first frame of a data message: permessage-deflate was
    /// negotiated.
    pub allow_rsv1: bool,
}

/// The longest header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

impl Decoder {
    /// A decoder for `role`'s frames, RSV1 not allowed.
    pub fn new(role: Role, limits: Limits) -> Decoder {
        Decoder { role, limits, allow_rsv1: false }
    }

    /// Takes one whole frame off the front of `buf`, or `Ok(None)` (leaving `buf` as it
    /// is) while more bytes are needed. Every check is made on the header alone, so a
    /// bad or oversized frame is an error before its payload arrives; a frame is never
    /// waited for past its header and `max_frame_size` bytes. A non-minimal length
    /// encoding is accepted.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(header) = self.header(buf)? else { return Ok(None) };
        if buf.len() - header.len < header.payload_len {
            return Ok(None);
        }
        buf.advance(header.len);
        let mut payload = buf.split_to(header.payload_len);
        if let Some(mask) = header.mask {
            apply_mask(&mut payload, mask);
        }
        Ok(Some(Frame { fin: header.fin, rsv1: header.rsv1, opcode: header.opcode, payload: payload.freeze() }))
    }

    /// The header at the front of `buf`, checked, or `None` while it is incomplete.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, Error> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        if b0 & 0x30 != 0 {
            return Err(Error::ReservedBits);
        }
        if rsv1 {
            if !self.allow_rsv1 {
                return Err(Error::UnexpectedRsv1);
            }
            if opcode.is_control() || opcode == OpCode::Continuation {
                return Err(Error::Rsv1NotAllowed(opcode));
            }
        }
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Client, false) => return Err(Error::Unmasked),
            (Role::Server, true) => return Err(Error::Masked),
            _ => {}
        }
        if opcode.is_control() && !fin {
            return Err(Error::FragmentedControl(opcode));
        }
        let (payload_len, mut at) = match b1 & 0x7f {
            126 => {
                let Some(&[a, b]) = buf.get(2..4) else { return Ok(None) };
                (u64::from(u16::from_be_bytes([a, b])), 4)
            }
            127 => {
                let Some(bytes) = buf.get(2..10) else { return Ok(None) };
                let mut be = [0; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(Error::LengthTopBit);
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        if opcode.is_control() && payload_len > 125 {
            return Err(Error::ControlTooLong { opcode, size: payload_len });
        }
        let max = self.limits.max_frame_size;
        let Some(payload_len) = usize::try_from(payload_len).ok().filter(|&len| len <= max) else {
            return Err(Error::FrameTooBig { size: payload_len, max });
        };
        let mask = if masked {
            let Some(&[a, b, c, d]) = buf.get(at..at + 4) else { return Ok(None) };
            at += 4;
            Some([a, b, c, d])
        } else {
            None
        };
        debug_assert!(at <= MAX_HEADER);
        Ok(Some(Header { fin, rsv1, opcode, payload_len, mask, len: at }))
    }
}

/// A parsed frame header.
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    /// At most `max_frame_size`.
    payload_len: usize,
    mask: Option<[u8; 4]>,
    /// Header bytes, mask included.
    len: usize,
}

/// Writes `frame` (header, then payload, masked with `mask` if given) at the end of `out`,
/// with the shortest length encoding. A client's frames need a mask (fresh and
/// unpredictable for each frame, RFC 6455 section 5.3: the caller's to draw), a server's
/// must have none. Writes what it is given: a control frame over 125 bytes is the
/// caller's mistake (`fragment` never makes one).
pub fn encode(frame: &Frame, mask: Option<[u8; 4]>, out: &mut BytesMut) {
    let len = frame.payload.len();
    out.reserve(MAX_HEADER + len);
    out.put_u8(u8::from(frame.fin) << 7 | u8::from(frame.rsv1) << 6 | frame.opcode.as_u8());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len <= 125 {
        out.put_u8(mask_bit | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(mask_bit | 126);
        out.put_u16(len);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    match mask {
        Some(mask) => {
            out.put_slice(&mask);
            let start = out.len();
            out.put_slice(&frame.payload);
            apply_mask(&mut out[start..], mask);
        }
        None => out.put_slice(&frame.payload),
    }
}

/// XORs `data` with `mask` repeated (RFC 6455 section 5.3), eight bytes at a time.
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (chunks, rest) = data.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ wide).to_ne_bytes();
    }
    // The chunks covered a multiple of 8 bytes, so the rest starts at mask index 0.
    for (byte, m) in rest.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("test hex")).collect()
    }

    fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Frame {
        Frame { fin, rsv1: false, opcode, payload: Bytes::copy_from_slice(payload) }
    }

    fn decoder(role: Role) -> Decoder {
        Decoder::new(role, Limits::default())
    }

    /// Decodes `wire` whole, expecting exactly the frames given and nothing left over.
    fn decode_all(decoder: &Decoder, wire: &[u8]) -> Result<Vec<Frame>, Error> {
        let mut buf = BytesMut::from(wire);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            frames.push(frame);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(frames)
    }

    /// RFC 6455 section 5.7, plus the length encodings: the wire bytes decode to the
    /// frames, and the frames encode (with the same mask) to the wire bytes.
    #[test]
    fn rfc_6455_examples() {
        let hello = b"Hello";
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let bin256 = vec![0xab; 256];
        let bin64k = vec![0xcd; 65536];
        /// Name, whose frames, the mask to encode with, wire bytes, frames.
        type Case = (&'static str, Role, Option<[u8; 4]>, Vec<u8>, Vec<Frame>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("unmasked text", Role::Server, None, hex("81 05 48 65 6c 6c 6f"), vec![frame(true, OpCode::Text, hello)]),
            ("masked text", Role::Client, Some(mask), hex("81 85 37 fa 21 3d 7f 9f 4d 51 58"),
                vec![frame(true, OpCode::Text, hello)]),
            ("fragmented text", Role::Server, None, hex("01 03 48 65 6c 80 02 6c 6f"),
                vec![frame(false, OpCode::Text, b"Hel"), frame(true, OpCode::Continuation, b"lo")]),
            ("unmasked ping", Role::Server, None, hex("89 05 48 65 6c 6c 6f"), vec![frame(true, OpCode::Ping, hello)]),
            ("masked pong", Role::Client, Some(mask), hex("8a 85 37 fa 21 3d 7f 9f 4d 51 58"),
                vec![frame(true, OpCode::Pong, hello)]),
            ("empty close", Role::Server, None, hex("88 00"), vec![frame(true, OpCode::Close, b"")]),
            ("256 bytes binary", Role::Server, None, [hex("82 7e 01 00"), bin256.clone()].concat(),
                vec![frame(true, OpCode::Binary, &bin256)]),
            ("64 KiB binary", Role::Server, None, [hex("82 7f 00 00 00 00 00 01 00 00"), bin64k.clone()].concat(),
                vec![frame(true, OpCode::Binary, &bin64k)]),
        ];
        for (name, role, mask, wire, frames) in cases {
            assert_eq!(decode_all(&decoder(role), &wire).as_ref(), Ok(&frames), "{name}: decode");
            let mut out = BytesMut::new();
            for frame in &frames {
                encode(frame, mask, &mut out);
            }
            assert_eq!(&out[..], &wire[..], "{name}: encode");
        }
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        let wire = hex("81 7e 00 05 48 65 6c 6c 6f");
        assert_eq!(decode_all(&decoder(Role::Server), &wire), Ok(vec![frame(true, OpCode::Text, b"Hello")]));
    }

    /// Every check, each made from the header alone (no payload bytes given).
    #[test]
    fn header_errors() {
        let too_big = Error::FrameTooBig { size: 20 << 20, max: 16 << 20 };
        #[rustfmt::skip]
        let cases: Vec<(&str, Role, bool, &str, Error, u16)> = vec![
            ("reserved data opcode", Role::Server, false, "83 00", Error::ReservedOpcode(3), 1002),
            ("reserved control opcode", Role::Server, false, "8b 00", Error::ReservedOpcode(0xb), 1002),
            ("rsv2", Role::Server, true, "a1 00", Error::ReservedBits, 1002),
            ("rsv3", Role::Server, true, "91 00", Error::ReservedBits, 1002),
            ("rsv1 not negotiated", Role::Server, false, "c1 05", Error::UnexpectedRsv1, 1002),
            ("rsv1 on ping", Role::Server, true, "c9 00", Error::Rsv1NotAllowed(OpCode::Ping), 1002),
            ("rsv1 on close", Role::Server, true, "c8 00", Error::Rsv1NotAllowed(OpCode::Close), 1002),
            ("rsv1 on continuation", Role::Server, true, "c0 05", Error::Rsv1NotAllowed(OpCode::Continuation), 1002),
            ("client frame unmasked", Role::Client, false, "81 05", Error::Unmasked, 1002),
            ("server frame masked", Role::Server, false, "81 85", Error::Masked, 1002),
            ("control over 125", Role::Server, false, "89 7e 00 7e",
                Error::ControlTooLong { opcode: OpCode::Ping, size: 126 }, 1002),
            ("control over 125, 64-bit length", Role::Server, false, "88 7f 00 00 00 00 00 01 00 00",
                Error::ControlTooLong { opcode: OpCode::Close, size: 65536 }, 1002),
            ("fragmented control", Role::Server, false, "09 00", Error::FragmentedControl(OpCode::Ping), 1002),
            ("length top bit", Role::Server, false, "82 7f 80 00 00 00 00 00 00 00", Error::LengthTopBit, 1002),
            ("over max_frame_size (64-bit length)", Role::Server, false, "82 7f 00 00 00 00 01 40 00 00",
                too_big.clone(), 1009),
            ("over max_frame_size before the mask", Role::Client, false, "82 ff 00 00 00 00 01 40 00 00",
                too_big, 1009),
        ];
        for (name, role, allow_rsv1, wire, error, code) in cases {
            let decoder = Decoder { role, limits: Limits::default(), allow_rsv1 };
            let mut buf = BytesMut::from(&hex(wire)[..]);
            assert_eq!(decoder.decode(&mut buf), Err(error.clone()), "{name}");
            assert_eq!(error.close_code(), code, "{name}");
        }
    }

    #[test]
    fn frame_too_big_message() {
        let error = decoder(Role::Server).decode(&mut BytesMut::from(&hex("82 7f 00 00 00 00 01 40 00 00")[..]));
        assert_eq!(
            error.map_err(|e| e.to_string()),
            Err("a frame of 20971520 bytes is over websocket_max_frame_size (16777216)".to_owned())
        );
    }

    /// `max_frame_size` is applied as set: a payload of exactly the limit passes, one
    /// byte more is refused with only the 2-byte header seen.
    #[test]
    fn max_frame_size_is_applied() {
        let decoder = Decoder::new(Role::Server, Limits { max_frame_size: 10, ..Limits::default() });
        let mut at_limit = BytesMut::new();
        encode(&frame(true, OpCode::Binary, &[7; 10]), None, &mut at_limit);
        assert_eq!(decoder.decode(&mut at_limit), Ok(Some(frame(true, OpCode::Binary, &[7; 10]))));
        assert_eq!(decoder.decode(&mut BytesMut::from(&[0x82, 11][..])), Err(Error::FrameTooBig { size: 11, max: 10 }));
    }

    /// Split anywhere, a frame is `None` (and the buffer untouched) until its last byte.
    #[test]
    fn partial_input_waits() {
        let mut wires = vec![
            (Role::Server, hex("81 05 48 65 6c 6c 6f")),
            (Role::Client, hex("81 85 37 fa 21 3d 7f 9f 4d 51 58")),
            (Role::Server, [hex("82 7e 01 00"), vec![1; 256]].concat()),
            (Role::Client, [hex("82 ff 00 00 00 00 00 01 00 00 01 02 03 04"), vec![1; 65536]].concat()),
        ];
        let (_, longest) = wires.pop().expect("four cases");
        for (role, wire) in wires {
            for split in 0..wire.len() {
                let mut buf = BytesMut::from(&wire[..split]);
                assert_eq!(decoder(role).decode(&mut buf), Ok(None), "split at {split}");
                assert_eq!(&buf[..], &wire[..split]);
                buf.extend_from_slice(&wire[split..]);
                assert!(matches!(decoder(role).decode(&mut buf), Ok(Some(_))), "split at {split}");
                assert!(buf.is_empty());
            }
        }
        // The 64 KiB frame: every split in the header, a few in the payload.
        for split in (0..20).chain([1000, 65535 + 14]) {
            let mut buf = BytesMut::from(&longest[..split]);
            assert_eq!(decoder(Role::Client).decode(&mut buf), Ok(None), "split at {split}");
        }
    }

    #[test]
    fn mask_matches_the_bytewise_definition() {
        let mask = [0x01, 0x80, 0xfe, 0x37];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

    /// Any valid frame; RSV1 only where permessage-deflate allows it.
    fn arb_frame() -> impl Strategy<Value = Frame> {
        let opcodes = vec![OpCode::Text, OpCode::Binary, OpCode::Continuation];
        let data =
            (any::<bool>(), any::<bool>(), prop::sample::select(opcodes)).prop_flat_map(|(fin, rsv1, opcode)| {
                let rsv1 = rsv1 && opcode != OpCode::Continuation;
                prop_oneof![
                    4 => prop::collection::vec(any::<u8>(), 0..300),
                    1 => prop::collection::vec(any::<u8>(), 65530..65545),
                ]
                .prop_map(move |payload| Frame { fin, rsv1, opcode, payload: payload.into() })
            });
        let control = (
            prop::sample::select(vec![OpCode::Close, OpCode::Ping, OpCode::Pong]),
            prop::collection::vec(any::<u8>(), 0..=125),
        )
            .prop_map(|(opcode, payload)| Frame { fin: true, rsv1: false, opcode, payload: payload.into() });
        prop_oneof![3 => data, 1 => control]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Frames encoded back to back, fed in random pieces, decode to the same frames.
        #[test]
        fn encode_decode_round_trip(
            client in any::<bool>(),
            allow_rsv1 in any::<bool>(),
            frames in prop::collection::vec(arb_frame(), 1..6),
            masks in prop::collection::vec(any::<[u8; 4]>(), 6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let role = if client { Role::Client } else { Role::Server };
            let frames: Vec<Frame> =
                frames.into_iter().map(|f| Frame { rsv1: f.rsv1 && allow_rsv1, ..f }).collect();
            let mut wire = BytesMut::new();
            for (frame, mask) in frames.iter().zip(&masks) {
                encode(frame, client.then_some(*mask), &mut wire);
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let decoder = Decoder { role, limits: Limits::default(), allow_rsv1 };
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut from = 0;
            for cut in cuts {
                buf.extend_from_slice(&wire[from..cut]);
                from = cut;
                while let Some(frame) = decoder.decode(&mut buf).expect("valid frames") {
                    decoded.push(frame);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decoded, frames);
        }
    }
}
