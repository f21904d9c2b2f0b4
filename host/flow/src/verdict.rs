//! What hooks decide.

use bytes::Bytes;

use crate::headers::Headers;

/// A response made by a plugin instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code, validated to 100..=999.
    pub status: u16,
    /// Header fields, validated.
    pub headers: Headers,
    /// Body.
    pub body: Bytes,
}

/// The decision of an HTTP hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Go on.
    #[default]
    Continue,
    /// Answer with this response; on the request side the upstream is never contacted.
    Respond(LocalResponse),
    /// Close the client connection without a response.
    Kill,
}

/// The decision at tls-clienthello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsDecision {
    /// Terminate TLS with a minted certificate.
    #[default]
    Intercept,
    /// Relay the encrypted bytes.
    Passthrough,
}

/// The decision of a TCP or UDP message hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataVerdict {
    /// Forward unchanged.
    #[default]
    Continue,
    /// Forward these bytes instead.
    Replace(Bytes),
    /// Close the flow.
    Kill,
}
