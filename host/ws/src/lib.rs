//! WebSocket for a proxy in the middle, sans-IO: frames read and written (RFC 6455
//! section 5), fragments joined into messages and cut again, close payloads, and
//! permessage-deflate (RFC 7692) negotiated on both legs and applied per direction. Pure
//! functions and state machines over byte buffers: no IO, no clock, no randomness (a
//! client's masks are the caller's to draw). Not here: the opening handshake's HTTP
//! (`Sec-WebSocket-Key`/`Accept`), and any answer to a ping or a close: the caller
//! decides what crosses the proxy.
//!
//! Hand-written rather than tungstenite (0.30) because tungstenite refuses frames with
//! RSV1 (so no permessage-deflate) and answers pings and closes by itself, which a proxy
//! must control.
//!
//! - `frame`: `Decoder` (one endpoint's frames, checked from the header alone, within
//!   `Limits::max_frame_size`) and `encode`.
//! - `message`: `Reassembler` (within `Limits::max_message_size`), `fragment`,
//!   `parse_close`, `close_payload`, `validate_text`.
//! - `deflate`: `Sec-WebSocket-Extensions` values, `accept_offer` (as the server),
//!   `client_offer` and `check_response` (as the client), `Deflater` and `Inflater`.

mod deflate;
mod error;
mod frame;
mod message;

pub use deflate::{
    DeflateConfig, Deflater, Extension, ExtensionParam, Inflater, accept_offer, check_response, client_offer,
    format_extensions, parse_extensions,
};
pub use error::Error;
pub use frame::{Decoder, Frame, Limits, OpCode, Role, encode};
pub use message::{CloseFrame, Message, MessageKind, Reassembler, close_payload, fragment, parse_close, validate_text};
