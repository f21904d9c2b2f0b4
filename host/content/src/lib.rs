//! HTTP content codings (RFC 9110 section 8.4): a body's `Content-Encoding` undone —
//! `gzip` (and `x-gzip`), `deflate` (zlib, or raw deflate as some servers send it), `br`,
//! `zstd`, `identity`, several in the order they were applied — and done again. Decoding
//! is bounded: the output may not pass a size cap nor a ratio to the input, so a
//! decompression bomb is an error after at most the cap's worth of work, never a large
//! allocation. Pure: no IO beyond the bytes given. Not here: transfer codings (chunked
//! is the HTTP/1 codec's).

use std::io::{Read, Write};

/// One content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `identity`: none.
    Identity,
    /// `gzip`, `x-gzip`.
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950), or raw deflate as some servers send it.
    Deflate,
    /// `br`: Brotli (RFC 7932).
    Brotli,
    /// `zstd`: Zstandard (RFC 8878).
    Zstd,
}

impl Coding {
    /// The codings a `Content-Encoding` value names, in the order they were applied.
    pub fn list(value: &str) -> Result<Vec<Coding>, Error> {
        value
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| match c.to_ascii_lowercase().as_str() {
                "identity" => Ok(Coding::Identity),
                "gzip" | "x-gzip" => Ok(Coding::Gzip),
                "deflate" => Ok(Coding::Deflate),
                "br" => Ok(Coding::Brotli),
                "zstd" => Ok(Coding::Zstd),
                other => Err(Error::Unsupported(other.to_owned())),
            })
            .collect()
    }
}

/// How far decoding may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest decoded body.
    pub max_size: usize,
    /// Largest decoded size per encoded byte (past the first 64 KiB, which any ratio may
    /// reach: small bodies compress well).
    pub max_ratio: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_size: 64 << 20, max_ratio: 1000 }
    }
}

/// Why a body could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A coding this crate does not know.
    #[error("unsupported content coding {0:?}")]
    Unsupported(String),
    /// The body is not what its coding says.
    #[error("the {coding} body does not decode: {message}")]
    Corrupt {
        /// The coding.
        coding: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// Decoded, it would pass the size cap or the ratio cap.
    #[error("decoded, the body would be over {limit} bytes (a decompression bomb?)")]
    TooLarge {
        /// The cap that was hit, in bytes.
        limit: usize,
    },
}

fn name(coding: Coding) -> &'static str {
    match coding {
        Coding::Identity => "identity",
        Coding::Gzip => "gzip",
        Coding::Deflate => "deflate",
        Coding::Brotli => "br",
        Coding::Zstd => "zstd",
    }
}

/// `body` with every coding of `content_encoding` undone, last applied first.
pub fn decode(content_encoding: &str, body: &[u8], limits: &Limits) -> Result<Vec<u8>, Error> {
    let mut data = body.to_vec();
    for coding in Coding::list(content_encoding)?.into_iter().rev() {
        // The cap for this step: the size cap, and the ratio to what came in.
        let limit = limits.max_size.min(data.len().saturating_mul(limits.max_ratio).max(64 << 10));
        data = decode_one(coding, &data, limit)?;
    }
    Ok(data)
}

fn decode_one(coding: Coding, data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let corrupt = |e: std::io::Error| Error::Corrupt { coding: name(coding), message: e.to_string() };
    match coding {
        Coding::Identity => Ok(data.to_vec()),
        Coding::Gzip => bounded(flate2::read::MultiGzDecoder::new(data), limit).map_err(|e| e.or(corrupt)),
        Coding::Deflate => match bounded(flate2::read::ZlibDecoder::new(data), limit) {
            // Some servers send raw deflate under this name; browsers take it too.
            Err(Bounded::Io(_)) => bounded(flate2::read::DeflateDecoder::new(data), limit).map_err(|e| e.or(corrupt)),
            other => other.map_err(|e| e.or(corrupt)),
        },
        Coding::Brotli => bounded(brotli::Decompressor::new(data, 16 << 10), limit).map_err(|e| e.or(corrupt)),
        Coding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(corrupt)?;
            bounded(decoder, limit).map_err(|e| e.or(corrupt))
        }
    }
}

enum Bounded {
    Io(std::io::Error),
    Over(usize),
}

impl Bounded {
    fn or(self, corrupt: impl Fn(std::io::Error) -> Error) -> Error {
        match self {
            Bounded::Io(e) => corrupt(e),
            Bounded::Over(limit) => Error::TooLarge { limit },
        }
    }
}

/// Everything `reader` gives, unless it is more than `limit` bytes.
fn bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>, Bounded> {
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(Bounded::Io)?;
    if out.len() > limit {
        return Err(Bounded::Over(limit));
    }
    Ok(out)
}

/// `body` encoded with the codings of `content_encoding`, in order (what [`decode`] undoes).
pub fn encode(content_encoding: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut data = body.to_vec();
    for coding in Coding::list(content_encoding)? {
        let failed = |e: std::io::Error| Error::Corrupt { coding: name(coding), message: e.to_string() };
        data = match coding {
            Coding::Identity => data,
            Coding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&data).and_then(|()| encoder.finish()).map_err(failed)?
            }
            Coding::Deflate => {
                let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&data).and_then(|()| encoder.finish()).map_err(failed)?
            }
            Coding::Brotli => {
                let mut out = Vec::new();
                {
                    let mut encoder = brotli::CompressorWriter::new(&mut out, 16 << 10, 5, 22);
                    encoder.write_all(&data).map_err(failed)?;
                }
                out
            }
            Coding::Zstd => zstd::stream::encode_all(data.as_slice(), 3).map_err(failed)?,
        };
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_coding_round_trips() {
        let body = b"{\"user\":{\"email\":\"ada@example.com\"}}".repeat(50);
        for coding in ["gzip", "x-gzip", "deflate", "br", "zstd", "identity", "gzip, br", ""] {
            let encoded = encode(coding, &body).expect("encodes");
            if !coding.is_empty() && coding != "identity" {
                assert_ne!(encoded, body, "{coding}");
            }
            assert_eq!(decode(coding, &encoded, &Limits::default()).expect("decodes"), body, "{coding}");
        }
    }

    #[test]
    fn raw_deflate_is_taken_too() {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"raw deflate").expect("write");
        let raw = encoder.finish().expect("finish");
        assert_eq!(decode("deflate", &raw, &Limits::default()).expect("decodes"), b"raw deflate");
    }

    #[test]
    fn bombs_stop_at_the_caps() {
        // 64 MiB of zeros: a few KiB encoded.
        let zeros = vec![0u8; 64 << 20];
        for coding in ["gzip", "br", "zstd", "deflate"] {
            let bomb = encode(coding, &zeros).expect("encodes");
            assert!(bomb.len() < 1 << 20, "{coding}: {}", bomb.len());
            let ratio = decode(coding, &bomb, &Limits::default()).expect_err("over the ratio");
            assert!(matches!(ratio, Error::TooLarge { limit } if limit < 64 << 20), "{coding}: {ratio}");
            let size = decode(coding, &bomb, &Limits { max_size: 1 << 20, max_ratio: usize::MAX }).expect_err("size");
            assert_eq!(size, Error::TooLarge { limit: 1 << 20 }, "{coding}");
        }
    }

    #[test]
    fn unknown_and_corrupt_bodies_are_errors() {
        assert_eq!(decode("compress", b"x", &Limits::default()), Err(Error::Unsupported("compress".to_owned())));
        for coding in ["gzip", "br", "zstd", "deflate"] {
            let err = decode(coding, b"not compressed at all", &Limits::default()).expect_err("corrupt");
            assert!(matches!(err, Error::Corrupt { .. }), "{coding}: {err}");
        }
        assert_eq!(Coding::list(" GZIP , br ").expect("parses"), [Coding::Gzip, Coding::Brotli]);
    }
}
