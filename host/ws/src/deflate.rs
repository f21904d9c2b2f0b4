//! permessage-deflate (RFC 7692): the `Sec-WebSocket-Extensions` grammar (RFC 6455
//! section 9.1), the negotiation on both legs of the proxy (section 7.1) and compressing
//! and inflating one direction's messages (section 7.2). Not here: RSV1 on frames
//! (`frame.rs`), other extensions (their offers are skipped, their answers refused).
//!
//! Window bits: zlib's raw deflate takes 9..=15, not 8. Where we deflate with 8
//! negotiated we must not use a larger window, so: as a server, `accept_offer` declines an
//! offer asking for `server_max_window_bits=8`; as a client, `check_response` accepts an
//! answer of `client_max_window_bits=8` (our offer allowed any value) and that direction's
//! `Deflater` then writes stored blocks only, which hold no back-references at all.
//! Inflating, a larger window than the sender's is always safe, so 8 inflates with 9.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::{Error, Role};

/// One extension of a `Sec-WebSocket-Extensions` value, with its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, as written.
    pub name: String,
    /// `; name` or `; name=value`.
    pub params: Vec<ExtensionParam>,
}

/// One extension parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionParam {
    /// The parameter token, as written.
    pub name: String,
    /// The value, unquoted; none for a bare parameter.
    pub value: Option<String>,
}

/// Reads a `Sec-WebSocket-Extensions` value: extensions separated by commas, each with
/// `;`-separated parameters whose values are tokens or quoted strings (which must unquote
/// to tokens). Several header fields are read joined with `, `; empty list elements are
/// skipped.
pub fn parse_extensions(value: &str) -> Result<Vec<Extension>, Error> {
    let mut cursor = Cursor { text: value, at: 0 };
    let mut extensions = Vec::new();
    loop {
        cursor.skip_whitespace();
        match cursor.peek() {
            None => return Ok(extensions),
            Some(b',') => {
                cursor.at += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = cursor.token("an extension name")?;
        let mut params = Vec::new();
        loop {
            cursor.skip_whitespace();
            if !cursor.eat(b';') {
                break;
            }
            cursor.skip_whitespace();
            let name = cursor.token("a parameter name")?;
            cursor.skip_whitespace();
            let value = if cursor.eat(b'=') {
                cursor.skip_whitespace();
                Some(cursor.value()?)
            } else {
                None
            };
            params.push(ExtensionParam { name: name.to_owned(), value });
        }
        extensions.push(Extension { name: name.to_owned(), params });
        if !matches!(cursor.peek(), None | Some(b',')) {
            return Err(cursor.expected("',' or ';'"));
        }
    }
}

/// Writes extensions as a `Sec-WebSocket-Extensions` value, quoting values that are not
/// tokens.
pub fn format_extensions(extensions: &[Extension]) -> String {
    let mut out = String::new();
    for (i, extension) in extensions.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&extension.name);
        for param in &extension.params {
            out.push_str("; ");
            out.push_str(&param.name);
            match &param.value {
                Some(value) if !value.is_empty() && value.bytes().all(is_tchar) => {
                    out.push('=');
                    out.push_str(value);
                }
                Some(value) => {
                    out.push_str("=\"");
                    for c in value.chars() {
                        if matches!(c, '"' | '\\') {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
                None => {}
            }
        }
    }
    out
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        self.at += usize::from(found);
        found
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn token(&mut self, what: &str) -> Result<&'a str, Error> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.expected(what));
        }
        // Tokens are ASCII, so both ends are character boundaries.
        Ok(&self.text[start..self.at])
    }

    /// A token or a quoted string that unquotes to one (RFC 6455 section 9.1).
    fn value(&mut self) -> Result<String, Error> {
        if !self.eat(b'"') {
            return self.token("a parameter value").map(str::to_owned);
        }
        let mut value = String::new();
        loop {
            match self.peek() {
                Some(b'"') => break,
                Some(b'\\') => self.at += 1,
                _ => {}
            }
            match self.peek() {
                Some(c) if is_tchar(c) => value.push(char::from(c)),
                _ => return Err(self.expected("a token character inside the quoted value")),
            }
            self.at += 1;
        }
        self.at += 1;
        if value.is_empty() {
            return Err(self.expected("a non-empty quoted value"));
        }
        Ok(value)
    }

    fn expected(&self, what: &str) -> Error {
        Error::ExtensionsSyntax(format!("expected {what} at byte {}", self.at))
    }
}

/// The permessage-deflate parameters agreed for a connection (RFC 7692 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// The server starts every message with an empty window.
    pub server_no_context_takeover: bool,
    /// The client starts every message with an empty window.
    pub client_no_context_takeover: bool,
    /// The largest window (base-2 logarithm, 8..=15) the server compresses with.
    pub server_max_window_bits: u8,
    /// The largest window (base-2 logarithm, 8..=15) the client compresses with.
    pub client_max_window_bits: u8,
}

impl Default for DeflateConfig {
    /// No parameters: context takeover both ways, 32 KiB windows.
    fn default() -> DeflateConfig {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

impl DeflateConfig {
    /// The compressor for messages `sender` sends: `Role::Server` where the proxy faces
    /// a client, `Role::Client` where it faces the server.
    pub fn deflater(&self, sender: Role) -> Deflater {
        let (no_context_takeover, window_bits) = self.direction(sender);
        let compress = if window_bits <= 8 {
            // zlib has no raw 8-bit window; stored blocks reference nothing, so they
            // respect any window.
            Compress::new_with_window_bits(Compression::none(), false, 9)
        } else {
            Compress::new_with_window_bits(Compression::default(), false, window_bits.min(15))
        };
        Deflater { compress, no_context_takeover }
    }

    /// The decompressor for messages `sender` sends: `Role::Client` where the proxy
    /// faces a client, `Role::Server` where it faces the server.
    pub fn inflater(&self, sender: Role) -> Inflater {
        let (no_context_takeover, window_bits) = self.direction(sender);
        Inflater { decompress: Decompress::new_with_window_bits(false, window_bits.clamp(9, 15)), no_context_takeover }
    }

    fn direction(&self, sender: Role) -> (bool, u8) {
        match sender {
            Role::Client => (self.client_no_context_takeover, self.client_max_window_bits),
            Role::Server => (self.server_no_context_takeover, self.server_max_window_bits),
        }
    }
}

const NAME: &str = "permessage-deflate";

/// permessage-deflate's parameters as one offer or answer gives them, each at most once.
#[derive(Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value.
    client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    /// Refuses unknown and repeated parameters and values out of place or out of range.
    fn parse(extension: &Extension) -> Result<Params, String> {
        let mut params = Params::default();
        let mut seen: Vec<String> = Vec::new();
        for param in &extension.params {
            let name = param.name.to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(format!("{name} given twice"));
            }
            let value = param.value.as_deref();
            match (name.as_str(), value) {
                ("server_no_context_takeover", None) => params.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
                ("server_max_window_bits", Some(value)) => {
                    params.server_max_window_bits = Some(window_bits(value)?);
                }
                ("client_max_window_bits", value) => {
                    params.client_max_window_bits = Some(value.map(window_bits).transpose()?);
                }
                ("server_no_context_takeover" | "client_no_context_takeover", Some(_)) => {
                    return Err(format!("{name} takes no value"));
                }
                ("server_max_window_bits", None) => return Err(format!("{name} needs a value")),
                _ => return Err(format!("unknown parameter {name}")),
            }
            seen.push(name);
        }
        Ok(params)
    }
}

/// 8..=15 in decimal without leading zeros.
fn window_bits(value: &str) -> Result<u8, String> {
    Some(value)
        .filter(|v| !v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .filter(|bits| (8..=15).contains(bits))
        .ok_or_else(|| format!("window bits {value:?} are not 8..=15"))
}

/// As the server facing a client: the first of the client's permessage-deflate offers
/// (in the order given; other extensions are skipped) we can take, with the
/// `Sec-WebSocket-Extensions` value to answer, or `None` to answer without compression.
/// An offer is skipped when it has an unknown or repeated parameter or a bad value, or
/// asks for `server_max_window_bits=8` (see the module doc). The answer repeats the
/// offer's `*_no_context_takeover` and `server_max_window_bits` and never limits the
/// client's window, so `client_max_window_bits` is 15 whatever the offer said.
pub fn accept_offer(offers: &[Extension]) -> Option<(DeflateConfig, String)> {
    offers.iter().filter(|offer| offer.name.eq_ignore_ascii_case(NAME)).find_map(|offer| {
        let params = Params::parse(offer).ok()?;
        let server_max_window_bits = params.server_max_window_bits.unwrap_or(15);
        if server_max_window_bits < 9 {
            return None;
        }
        let config = DeflateConfig {
            server_no_context_takeover: params.server_no_context_takeover,
            client_no_context_takeover: params.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits: 15,
        };
        let bare = |name: &str| ExtensionParam { name: name.to_owned(), value: None };
        let mut answer = Extension { name: NAME.to_owned(), params: Vec::new() };
        if config.server_no_context_takeover {
            answer.params.push(bare("server_no_context_takeover"));
        }
        if config.client_no_context_takeover {
            answer.params.push(bare("client_no_context_takeover"));
        }
        if let Some(bits) = params.server_max_window_bits {
            answer
                .params
                .push(ExtensionParam { name: "server_max_window_bits".to_owned(), value: Some(bits.to_string()) });
        }
        Some((config, format_extensions(&[answer])))
    })
}

/// As the client facing the server: the `Sec-WebSocket-Extensions` value to offer,
/// permessage-deflate with any window the server wants us to use.
pub fn client_offer() -> &'static str {
    "permessage-deflate; client_max_window_bits"
}

/// As the client facing the server: the server's `Sec-WebSocket-Extensions` answer to
/// `client_offer` (empty if it sent none), checked. `None`: no compression. An error
/// (fail the connection) for anything but one permessage-deflate with known, distinct,
/// valid parameters, `client_max_window_bits` with a value. The server may add
/// `*_no_context_takeover` and `server_max_window_bits` unasked (RFC 7692 sections
/// 7.1.1.1, 7.1.1.2 and 7.1.2.1).
pub fn check_response(value: &str) -> Result<Option<DeflateConfig>, Error> {
    let answer = |reason: String| Error::ExtensionsAnswer(reason);
    let extensions = parse_extensions(value)?;
    let [extension] = &extensions[..] else {
        return match extensions.len() {
            0 => Ok(None),
            n => Err(answer(format!("{n} extensions where one was offered"))),
        };
    };
    if !extension.name.eq_ignore_ascii_case(NAME) {
        return Err(answer(format!("{} was not offered", extension.name)));
    }
    let params = Params::parse(extension).map_err(answer)?;
    let client_max_window_bits = match params.client_max_window_bits {
        Some(None) => return Err(answer("client_max_window_bits without a value".to_owned())),
        Some(Some(bits)) => bits,
        None => 15,
    };
    Ok(Some(DeflateConfig {
        server_no_context_takeover: params.server_no_context_takeover,
        client_no_context_takeover: params.client_no_context_takeover,
        server_max_window_bits: params.server_max_window_bits.unwrap_or(15),
        client_max_window_bits,
    }))
}

/// What a sync flush ends with, and what RFC 7692 takes off (section 7.2.1) and puts
/// back (section 7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses the messages of one direction (RFC 7692 section 7.2.1).
#[derive(Debug)]
pub struct Deflater {
    compress: Compress,
    no_context_takeover: bool,
}

impl Deflater {
    /// One message's payload compressed: deflated, sync-flushed, the trailing
    /// `00 00 ff ff` removed. Send it with RSV1 on the first frame. Without context
    /// takeover the next message starts with an empty window.
    pub fn deflate(&mut self, payload: &[u8]) -> Vec<u8> {
        if payload.is_empty() {
            // An empty stored block, its length taken off (section 7.2.3.6). zlib would
            // write nothing at all after an earlier flush, and an empty payload leaves
            // the peer's inflater inside the stored block that `00 00 ff ff` begins.
            return vec![0x00];
        }
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            let before = self.compress.total_in();
            // Raw deflate fails only on a corrupt stream state, which safe code cannot make.
            let status = self.compress.compress_vec(input, &mut out, FlushCompress::Sync);
            let status = status.expect("compressing with a valid state does not fail");
            input = &input[(self.compress.total_in() - before) as usize..];
            // Flushed once input is used up and the output did not fill the room given;
            // `BufError`: a repeated flush with nothing left to write.
            if input.is_empty() && (out.len() < out.capacity() || status == Status::BufError) {
                break;
            }
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        if self.no_context_takeover {
            self.compress.reset();
        }
        out
    }
}

/// Decompresses the messages of one direction (RFC 7692 section 7.2.2).
#[derive(Debug)]
pub struct Inflater {
    decompress: Decompress,
    no_context_takeover: bool,
}

/// How much is inflated at a time (on the stack) before it is copied out.
const INFLATE_CHUNK: usize = 16 * 1024;

impl Inflater {
    /// One compressed message's payload inflated (with `00 00 ff ff` put back), at most
    /// `limit` bytes of it: past that, an error (1009) with at most `limit` bytes
    /// allocated and at most one chunk (16 KiB) more inflated, so a deflate bomb costs no
    /// more than the cap. Invalid data is an error (1007). A message ending with a final
    /// block (BFINAL) ends the stream: the window starts empty for the next one. After
    /// an error the connection is to be failed: the window is lost.
    pub fn inflate(&mut self, payload: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut chunk = [0u8; INFLATE_CHUNK];
        let mut ended = false;
        for mut input in [payload, &SYNC_TAIL[..]] {
            while !ended {
                let (in_before, out_before) = (self.decompress.total_in(), self.decompress.total_out());
                let status = self
                    .decompress
                    .decompress(input, &mut chunk, FlushDecompress::Sync)
                    .map_err(|e| Error::Inflate(e.to_string()))?;
                let consumed = (self.decompress.total_in() - in_before) as usize;
                let produced = (self.decompress.total_out() - out_before) as usize;
                if produced > limit - out.len() {
                    return Err(Error::InflatedTooBig { max: limit });
                }
                if out.capacity() - out.len() < produced {
                    // Doubling, but never past the cap.
                    let want = out.len().max(produced).max(INFLATE_CHUNK);
                    out.reserve_exact(want.min(limit - out.len()));
                }
                out.extend_from_slice(&chunk[..produced]);
                input = &input[consumed..];
                ended = status == Status::StreamEnd;
                if input.is_empty() && produced < chunk.len() {
                    break;
                }
                if consumed == 0 && produced == 0 && !ended {
                    return Err(Error::Inflate("no progress on the remaining input".to_owned()));
                }
            }
        }
        if self.no_context_takeover || ended {
            self.decompress.reset(false);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("test hex")).collect()
    }

    fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
        Extension {
            name: name.to_owned(),
            params: params
                .iter()
                .map(|(name, value)| ExtensionParam { name: (*name).to_owned(), value: value.map(str::to_owned) })
                .collect(),
        }
    }

    #[test]
    fn extension_header_parsing() {
        let pmd = "permessage-deflate";
        #[rustfmt::skip]
        let cases: Vec<(&str, Result<Vec<Extension>, &str>)> = vec![
            ("", Ok(vec![])),
            ("permessage-deflate", Ok(vec![ext(pmd, &[])])),
            ("permessage-deflate; client_max_window_bits; server_no_context_takeover, x-webkit-deflate-frame",
                Ok(vec![ext(pmd, &[("client_max_window_bits", None), ("server_no_context_takeover", None)]),
                    ext("x-webkit-deflate-frame", &[])])),
            ("permessage-deflate;server_max_window_bits=10", Ok(vec![ext(pmd, &[("server_max_window_bits", Some("10"))])])),
            ("permessage-deflate ; server_max_window_bits = \"10\" ", Ok(vec![ext(pmd, &[("server_max_window_bits", Some("10"))])])),
            ("permessage-deflate; x=\"a\\b\"", Ok(vec![ext(pmd, &[("x", Some("ab"))])])),
            // Two header fields joined, with empty list elements.
            ("permessage-deflate; client_no_context_takeover, , permessage-deflate,",
                Ok(vec![ext(pmd, &[("client_no_context_takeover", None)]), ext(pmd, &[])])),
            ("permessage-deflate;", Err("expected a parameter name at byte 19")),
            (";x", Err("expected an extension name at byte 0")),
            ("a b", Err("expected ',' or ';' at byte 2")),
            ("a; x=", Err("expected a parameter value at byte 5")),
            ("a; x=\"10", Err("expected a token character inside the quoted value at byte 8")),
            ("a; x=\"1 0\"", Err("expected a token character inside the quoted value at byte 7")),
            ("a; x=\"\"", Err("expected a non-empty quoted value at byte 7")),
            ("a; x=é", Err("expected a parameter value at byte 5")),
        ];
        for (value, expected) in cases {
            let expected = expected.map_err(|e| Error::ExtensionsSyntax(e.to_owned()));
            assert_eq!(parse_extensions(value), expected, "{value:?}");
        }
        assert_eq!(Error::ExtensionsSyntax(String::new()).close_code(), 1002);
    }

    #[test]
    fn extension_header_formatting() {
        let extensions = vec![
            ext("permessage-deflate", &[("client_max_window_bits", None), ("server_max_window_bits", Some("10"))]),
            ext("x", &[("q", Some("a b\"c"))]),
        ];
        let formatted = format_extensions(&extensions);
        assert_eq!(
            formatted,
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x; q=\"a b\\\"c\""
        );
        assert_eq!(parse_extensions(&formatted[..formatted.find(", x").expect("two")]), Ok(extensions[..1].to_vec()));
    }

    #[test]
    fn server_negotiation() {
        let config = |snct, cnct, server_bits| DeflateConfig {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: server_bits,
            client_max_window_bits: 15,
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<(DeflateConfig, &str)>)> = vec![
            ("permessage-deflate", Some((config(false, false, 15), "permessage-deflate"))),
            ("permessage-deflate; client_max_window_bits", Some((config(false, false, 15), "permessage-deflate"))),
            ("permessage-deflate; client_max_window_bits=10", Some((config(false, false, 15), "permessage-deflate"))),
            ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                Some((config(true, true, 15), "permessage-deflate; server_no_context_takeover; client_no_context_takeover"))),
            ("permessage-deflate; server_max_window_bits=10",
                Some((config(false, false, 10), "permessage-deflate; server_max_window_bits=10"))),
            ("permessage-deflate; server_max_window_bits=\"9\"",
                Some((config(false, false, 9), "permessage-deflate; server_max_window_bits=9"))),
            ("PerMessage-Deflate; Server_No_Context_Takeover",
                Some((config(true, false, 15), "permessage-deflate; server_no_context_takeover"))),
            // Declined: nothing usable.
            ("", None),
            ("x-webkit-deflate-frame", None),
            ("permessage-deflate; server_max_window_bits=8", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; server_max_window_bits=+9", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; client_max_window_bits=16", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
            ("permessage-deflate; client_max_window_bits; client_max_window_bits=9", None),
            ("permessage-deflate; mystery", None),
            // Several offers: the first acceptable one.
            ("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12, permessage-deflate",
                Some((config(false, false, 12), "permessage-deflate; server_max_window_bits=12"))),
            ("permessage-deflate; mystery, permessage-deflate; client_no_context_takeover",
                Some((config(false, true, 15), "permessage-deflate; client_no_context_takeover"))),
        ];
        for (offer, expected) in cases {
            let offers = parse_extensions(offer).expect("well-formed offer");
            let accepted = accept_offer(&offers);
            assert_eq!(accepted, expected.map(|(c, a)| (c, a.to_owned())), "{offer:?}");
            if let Some((config, answer)) = accepted {
                // The answer is one a client making the offer accepts, with the same result.
                assert_eq!(check_response(&answer), Ok(Some(config)), "{offer:?}");
            }
        }
    }

    #[test]
    fn client_negotiation() {
        assert_eq!(client_offer(), "permessage-deflate; client_max_window_bits");
        let config = |snct, cnct, server_bits, client_bits| DeflateConfig {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        };
        let bad = |reason: &str| Err(Error::ExtensionsAnswer(reason.to_owned()));
        #[rustfmt::skip]
        let cases: Vec<(&str, Result<Option<DeflateConfig>, Error>)> = vec![
            ("", Ok(None)),
            ("permessage-deflate", Ok(Some(config(false, false, 15, 15)))),
            ("permessage-deflate; server_no_context_takeover", Ok(Some(config(true, false, 15, 15)))),
            ("permessage-deflate; client_no_context_takeover", Ok(Some(config(false, true, 15, 15)))),
            ("permessage-deflate; server_max_window_bits=8", Ok(Some(config(false, false, 8, 15)))),
            ("permessage-deflate; client_max_window_bits=8", Ok(Some(config(false, false, 15, 8)))),
            ("permessage-deflate; client_max_window_bits=12; server_max_window_bits=10; server_no_context_takeover",
                Ok(Some(config(true, false, 10, 12)))),
            ("permessage-deflate; client_max_window_bits", bad("client_max_window_bits without a value")),
            ("permessage-deflate; client_max_window_bits=7", bad("window bits \"7\" are not 8..=15")),
            ("permessage-deflate; mystery", bad("unknown parameter mystery")),
            ("permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                bad("server_no_context_takeover given twice")),
            ("permessage-deflate, permessage-deflate", bad("2 extensions where one was offered")),
            ("x-webkit-deflate-frame", bad("x-webkit-deflate-frame was not offered")),
            ("permessage-deflate;", Err(Error::ExtensionsSyntax("expected a parameter name at byte 19".to_owned()))),
        ];
        for (answer, expected) in cases {
            assert_eq!(check_response(answer), expected, "{answer:?}");
        }
        assert_eq!(Error::ExtensionsAnswer(String::new()).close_code(), 1002);
    }

    /// RFC 7692 section 7.2.3: each payload inflates to "Hello".
    #[test]
    fn rfc_7692_examples_inflate() {
        #[rustfmt::skip]
        let cases = [
            ("7.2.3.1 one block", vec!["f2 48 cd c9 c9 07 00"]),
            ("7.2.3.2 shared window", vec!["f2 48 cd c9 c9 07 00", "f2 00 11 00 00"]),
            ("7.2.3.3 stored block", vec!["00 05 00 fa ff 48 65 6c 6c 6f 00"]),
            ("7.2.3.4 bfinal", vec!["f3 48 cd c9 c9 07 00 00", "f3 48 cd c9 c9 07 00 00"]),
            ("7.2.3.5 two blocks", vec!["f2 48 05 00 00 00 ff ff ca c9 c9 07 00"]),
        ];
        for (name, payloads) in cases {
            let mut inflater = DeflateConfig::default().inflater(Role::Client);
            for payload in payloads {
                assert_eq!(inflater.inflate(&hex(payload), 1000).as_deref(), Ok(&b"Hello"[..]), "{name}");
            }
        }
        let mut inflater = DeflateConfig::default().inflater(Role::Server);
        assert_eq!(inflater.inflate(&[0x00], 1000), Ok(vec![]), "7.2.3.6 empty message");
    }

    #[test]
    fn rfc_7692_examples_deflate() {
        let mut deflater = DeflateConfig::default().deflater(Role::Server);
        assert_eq!(deflater.deflate(b"Hello"), hex("f2 48 cd c9 c9 07 00"));
        assert_eq!(deflater.deflate(b"Hello"), hex("f2 00 11 00 00"), "7.2.3.2 context takeover");
        assert_eq!(deflater.deflate(b""), hex("00"), "7.2.3.6 empty message");
        assert_eq!(DeflateConfig::default().deflater(Role::Client).deflate(b""), hex("00"), "first message empty");
        let mut fresh =
            DeflateConfig { server_no_context_takeover: true, ..DeflateConfig::default() }.deflater(Role::Server);
        for _ in 0..3 {
            assert_eq!(fresh.deflate(b"Hello"), hex("f2 48 cd c9 c9 07 00"), "no context takeover");
        }
    }

    /// An empty message between two others leaves both ends in step.
    #[test]
    fn empty_message_between_others() {
        let mut deflater = DeflateConfig::default().deflater(Role::Server);
        let mut inflater = DeflateConfig::default().inflater(Role::Server);
        for message in [&b"Hello"[..], b"", b"", b"Hello"] {
            assert_eq!(inflater.inflate(&deflater.deflate(message), 100).as_deref(), Ok(message));
        }
    }

    #[test]
    fn inflate_limit_is_exact() {
        let mut inflater = DeflateConfig::default().inflater(Role::Server);
        assert_eq!(inflater.inflate(&hex("f2 48 cd c9 c9 07 00"), 5).as_deref(), Ok(&b"Hello"[..]));
        let mut inflater = DeflateConfig::default().inflater(Role::Server);
        let error = inflater.inflate(&hex("f2 48 cd c9 c9 07 00"), 4);
        assert_eq!(error, Err(Error::InflatedTooBig { max: 4 }));
        assert_eq!(error.map_err(|e| e.close_code()), Err(1009));
    }

    #[test]
    fn invalid_data_is_1007() {
        let mut inflater = DeflateConfig::default().inflater(Role::Server);
        // BTYPE 11 is reserved.
        let error = inflater.inflate(&[0xff, 0xff, 0xff], 1000).expect_err("reserved block type");
        assert!(matches!(error, Error::Inflate(_)), "{error:?}");
        assert_eq!(error.close_code(), 1007);
    }

    /// 100 MiB of zeros deflate to about 100 KiB; inflating stops at the 1 MiB cap, having
    /// inflated at most one chunk past it.
    #[test]
    fn deflate_bomb_stops_at_the_cap() {
        let mut compress = Compress::new(Compression::best(), false);
        let zeros = vec![0u8; 1 << 20];
        let mut bomb = Vec::with_capacity(200 << 10);
        for _ in 0..100 {
            let mut input = &zeros[..];
            while !input.is_empty() {
                bomb.reserve(4096);
                let before = compress.total_in();
                compress.compress_vec(input, &mut bomb, FlushCompress::None).expect("compress");
                input = &input[(compress.total_in() - before) as usize..];
            }
        }
        loop {
            bomb.reserve(4096);
            compress.compress_vec(&[], &mut bomb, FlushCompress::Sync).expect("flush");
            if bomb.len() < bomb.capacity() {
                break;
            }
        }
        assert_eq!(compress.total_in(), 100 << 20);
        assert!(bomb.len() < 200 << 10, "{} bytes", bomb.len());
        let mut inflater = DeflateConfig::default().inflater(Role::Client);
        let cap = 1 << 20;
        assert_eq!(inflater.inflate(&bomb, cap), Err(Error::InflatedTooBig { max: cap }));
        assert!(inflater.decompress.total_out() <= (cap + INFLATE_CHUNK) as u64);
    }

    /// A 1000-byte message sent twice: with a 32 KiB window the second is a
    /// back-reference, with 512 bytes it cannot be; and an inflater keeping only 512
    /// bytes cannot follow a sender that used more.
    #[test]
    fn window_bits_are_applied() {
        let message: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let second = |bits| {
            let mut deflater =
                DeflateConfig { server_max_window_bits: bits, ..DeflateConfig::default() }.deflater(Role::Server);
            deflater.deflate(&message);
            deflater.deflate(&message)
        };
        assert!(second(15).len() < 20, "{}", second(15).len());
        assert!(second(9).len() > 500, "{}", second(9).len());

        let mut wide = DeflateConfig::default().deflater(Role::Client);
        let mut narrow = DeflateConfig { client_max_window_bits: 9, ..DeflateConfig::default() }.inflater(Role::Client);
        assert_eq!(narrow.inflate(&wide.deflate(&message), 10_000), Ok(message.clone()));
        assert!(matches!(narrow.inflate(&wide.deflate(&message), 10_000), Err(Error::Inflate(_))));
    }

    /// With 8 bits negotiated the deflater writes stored blocks: no back-references, so
    /// even repetitive input does not shrink.
    #[test]
    fn window_bits_8_writes_stored_blocks() {
        let config = DeflateConfig { client_max_window_bits: 8, server_max_window_bits: 8, ..DeflateConfig::default() };
        let mut deflater = config.deflater(Role::Client);
        let mut inflater = config.inflater(Role::Client);
        let message = vec![b'a'; 3000];
        for _ in 0..2 {
            let compressed = deflater.deflate(&message);
            assert!(compressed.len() >= message.len(), "{}", compressed.len());
            assert_eq!(inflater.inflate(&compressed, 10_000), Ok(message.clone()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Messages deflated one after the other inflate back, with and without context
        /// takeover, at every window size.
        #[test]
        fn deflate_inflate_round_trip(
            no_context_takeover in any::<bool>(),
            bits in 8u8..=15,
            messages in prop::collection::vec(
                prop_oneof![
                    1 => Just(Vec::new()),
                    3 => prop::collection::vec(0u8..4, 0..3000),
                    3 => prop::collection::vec(any::<u8>(), 0..3000),
                ],
                1..6,
            ),
        ) {
            let config = DeflateConfig {
                server_no_context_takeover: no_context_takeover,
                client_no_context_takeover: no_context_takeover,
                server_max_window_bits: bits,
                client_max_window_bits: bits,
            };
            for sender in [Role::Client, Role::Server] {
                let mut deflater = config.deflater(sender);
                let mut inflater = config.inflater(sender);
                for message in &messages {
                    let compressed = deflater.deflate(message);
                    prop_assert_eq!(&inflater.inflate(&compressed, message.len()).expect("inflates"), message);
                }
            }
        }
    }
}
