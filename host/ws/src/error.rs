//! The one error type of the crate, each variant with the close code (RFC 6455 section
//! 7.4.1) an endpoint answers it with. Which side sent the offending bytes is the caller's
//! to say: it knows which direction it was decoding.

use crate::frame::OpCode;

/// Why bytes from a peer cannot be taken as WebSocket frames, messages or extension
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An opcode RFC 6455 reserves (3-7, 0xb-0xf).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV2 or RSV3 set: no extension we negotiate defines them.
    #[error("rsv2 or rsv3 set with no extension defining them")]
    ReservedBits,
    /// RSV1 set while permessage-deflate was not negotiated.
    #[error("rsv1 set but permessage-deflate was not negotiated")]
    UnexpectedRsv1,
    /// RSV1 set on a control or continuation frame (RFC 7692 section 6.1).
    #[error("rsv1 set on a {0} frame")]
    Rsv1NotAllowed(OpCode),
    /// A frame from a client without a mask (RFC 6455 section 5.1).
    #[error("a frame from the client is not masked")]
    Unmasked,
    /// A frame from a server with a mask (RFC 6455 section 5.1).
    #[error("a frame from the server is masked")]
    Masked,
    /// A control frame with more than 125 bytes of payload.
    #[error("a {opcode} frame of {size} bytes is over the 125 allowed for control frames")]
    ControlTooLong {
        /// Close, ping or pong.
        opcode: OpCode,
        /// The payload length announced (or given, when re-fragmenting).
        size: u64,
    },
    /// A control frame without FIN.
    #[error("a {0} frame is fragmented")]
    FragmentedControl(OpCode),
    /// A 64-bit payload length with its most significant bit set.
    #[error("a frame length has its most significant bit set")]
    LengthTopBit,
    /// A frame header announcing more than `Limits::max_frame_size` bytes.
    #[error("a frame of {size} bytes is over websocket_max_frame_size ({max})")]
    FrameTooBig {
        /// The payload length announced.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message growing past `Limits::max_message_size`.
    #[error("a message reaching {size} bytes is over websocket_max_message_size ({max})")]
    MessageTooBig {
        /// The size the message had reached with the fragment that crossed the limit.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A continuation frame with no fragmented message open.
    #[error("a continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is still open.
    #[error("a {0} frame while a fragmented message is still open")]
    ExpectedContinuation(OpCode),
    /// A text message that is not UTF-8.
    #[error("a text message is not valid utf-8")]
    InvalidUtf8,
    /// A close payload of one byte: a code takes two.
    #[error("a close payload of 1 byte (a close code takes 2)")]
    CloseTooShort,
    /// A close code that may not be sent on the wire (RFC 6455 section 7.4).
    #[error("close code {0} may not be sent on the wire")]
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("a close reason is not valid utf-8")]
    InvalidCloseReason,
    /// A compressed message that is not valid DEFLATE data.
    #[error("invalid compressed message: {0}")]
    Inflate(String),
    /// A compressed message inflating past the limit given to `Inflater::inflate`.
    #[error("a compressed message inflates to more than {max} bytes")]
    InflatedTooBig {
        /// The limit.
        max: usize,
    },
    /// A `Sec-WebSocket-Extensions` value that does not follow RFC 6455 section 9.1.
    #[error("malformed sec-websocket-extensions: {0}")]
    ExtensionsSyntax(String),
    /// A server's `Sec-WebSocket-Extensions` answer that does not fit what we offered.
    #[error("unacceptable sec-websocket-extensions answer: {0}")]
    ExtensionsAnswer(String),
}

impl Error {
    /// The close code to fail the connection with: 1002 (protocol error), 1007 (payload
    /// not consistent with its type) or 1009 (too big). Extension header errors happen
    /// during the handshake, where no close frame is sent; they say 1002.
    pub fn close_code(&self) -> u16 {
        match self {
            Error::InvalidUtf8 | Error::InvalidCloseReason | Error::Inflate(_) => 1007,
            Error::FrameTooBig { .. } | Error::MessageTooBig { .. } | Error::InflatedTooBig { .. } => 1009,
            Error::ReservedOpcode(_)
            | Error::ReservedBits
            | Error::UnexpectedRsv1
            | Error::Rsv1NotAllowed(_)
            | Error::Unmasked
            | Error::Masked
            | Error::ControlTooLong { .. }
            | Error::FragmentedControl(_)
            | Error::LengthTopBit
            | Error::UnexpectedContinuation
            | Error::ExpectedContinuation(_)
            | Error::CloseTooShort
            | Error::InvalidCloseCode(_)
            | Error::ExtensionsSyntax(_)
            | Error::ExtensionsAnswer(_) => 1002,
        }
    }
}
