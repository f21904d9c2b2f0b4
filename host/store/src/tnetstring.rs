//! tnetstrings (typed netstrings), as mitmproxy writes its flow files: every value is
//! `LENGTH:DATA` followed by a one-byte type tag (`,` bytes, `;` UTF-8 text, `#` integer,
//! `^` float, `!` boolean, `~` null, `]` list, `}` dictionary of key, value pairs).
//!
//! Sans-IO: [`frame`] says how long the value at the start of a buffer is (or that more
//! bytes are needed) and [`parse`] decodes one whole value; neither reads anything. Both
//! apply [`Limits`] (a value's size and the nesting depth) before allocating, so a hostile
//! length prefix costs nothing. Integers are limited to `i64`; mitmproxy writes nothing
//! larger. This is not a writer: flowgate does not write mitmproxy's format.

use bytes::Bytes;
use thiserror::Error;

/// Largest value [`Limits::default`] accepts: 256 MiB (mitmproxy keeps a flow's bodies
/// inside its one top-level value, so this bounds a flow).
pub const MAX_SIZE: usize = 256 << 20;

/// Deepest nesting [`Limits::default`] accepts. A mitmproxy flow nests about 6 deep
/// (flow, connection, certificate list; flow, websocket, messages, message).
pub const MAX_DEPTH: usize = 32;

/// Most digits a length prefix may have (as mitmproxy's own `load`).
const MAX_PREFIX_DIGITS: usize = 12;

/// What a parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest length a prefix may announce, in bytes (default [`MAX_SIZE`]).
    pub max_size: usize,
    /// Deepest nesting of lists and dictionaries (default [`MAX_DEPTH`]).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_size: MAX_SIZE, max_depth: MAX_DEPTH }
    }
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `0:~`
    Null,
    /// `4:true!` or `5:false!`
    Bool(bool),
    /// `#`: a decimal integer.
    Int(i64),
    /// `^`: a float as Python's `repr` writes it.
    Float(f64),
    /// `,`: bytes (a slice of the input, not a copy).
    Bytes(Bytes),
    /// `;`: UTF-8 text.
    String(String),
    /// `]`: values in order.
    List(Vec<Value>),
    /// `}`: key, value pairs in the order written (keys are text in mitmproxy's files
    /// since format 1.0, bytes before).
    Dict(Vec<(Value, Value)>),
}

impl Value {
    /// The text of a `;` value, or of a `,` value that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of `key` in a dictionary whose keys are text or bytes.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A name for the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bytes(_) => "bytes",
            Value::String(_) => "a string",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dictionary",
        }
    }
}

/// Why input is not a tnetstring, and where (the offset of the value at fault, from the
/// start of the buffer given).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid tnetstring at offset {offset}: {kind}")]
pub struct Error {
    /// Where the value at fault starts.
    pub offset: usize,
    /// What is wrong with it.
    pub kind: ErrorKind,
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ErrorKind {
    /// The length prefix is not 1 to 12 ASCII digits followed by `:`.
    #[error("missing or invalid length prefix")]
    LengthPrefix,
    /// The prefix announces more than [`Limits::max_size`].
    #[error("a length of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The length announced.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The input ends before the value does.
    #[error("truncated: {needed} bytes announced, {available} available")]
    Truncated {
        /// Bytes the value needs from its start, type tag included.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// An unknown type tag.
    #[error("unknown type tag {0:?}")]
    Tag(char),
    /// A `#` value that is not a decimal `i64`.
    #[error("invalid integer")]
    Int,
    /// A `^` value that is not a float.
    #[error("invalid float")]
    Float,
    /// A `!` value that is neither `true` nor `false`.
    #[error("invalid boolean")]
    Bool,
    /// A `~` value with data.
    #[error("a null with data")]
    Null,
    /// A `;` value that is not UTF-8.
    #[error("text that is not UTF-8")]
    Utf8,
    /// Lists and dictionaries nested deeper than [`Limits::max_depth`].
    #[error("nested deeper than {0}")]
    TooDeep(usize),
    /// A dictionary whose data ends after a key.
    #[error("a dictionary key without a value")]
    MissingValue,
    /// Bytes after the one value expected.
    #[error("{0} bytes after the value")]
    Trailing(usize),
}

/// How many bytes the value at the start of `input` spans, tag included: `Ok(None)` if
/// `input` ends inside the length prefix (more bytes are needed to tell), `Ok(Some(n))`
/// once the prefix is complete (the value is `input[..n]`, which may be longer than
/// `input` so far). The announced length is checked against `limits` here, before anyone
/// reads or allocates it.
pub fn frame(input: &[u8], limits: &Limits) -> Result<Option<usize>, Error> {
    let err = |kind| Error { offset: 0, kind };
    for (i, &b) in input.iter().enumerate().take(MAX_PREFIX_DIGITS + 1) {
        match b {
            b'0'..=b'9' if i < MAX_PREFIX_DIGITS => {}
            b':' if i > 0 => {
                let digits = std::str::from_utf8(&input[..i]).map_err(|_| err(ErrorKind::LengthPrefix))?;
                let size: usize = digits.parse().map_err(|_| err(ErrorKind::LengthPrefix))?;
                if size > limits.max_size {
                    return Err(err(ErrorKind::TooLarge { size, limit: limits.max_size }));
                }
                return Ok(Some(i + 1 + size + 1));
            }
            _ => return Err(err(ErrorKind::LengthPrefix)),
        }
    }
    Ok(None)
}

/// Parses the one value that `input` holds exactly.
pub fn parse(input: &Bytes, limits: &Limits) -> Result<Value, Error> {
    let (value, end) = parse_prefix(input, limits)?;
    if end != input.len() {
        return Err(Error { offset: end, kind: ErrorKind::Trailing(input.len() - end) });
    }
    Ok(value)
}

/// Parses the value at the start of `input`; returns it and where it ends.
pub fn parse_prefix(input: &Bytes, limits: &Limits) -> Result<(Value, usize), Error> {
    Parser { input, limits }.value(0, input.len(), 0)
}

struct Parser<'a> {
    input: &'a Bytes,
    limits: &'a Limits,
}

impl Parser<'_> {
    /// The value starting at `start`, which must end by `end`; returns it and its end.
    fn value(&self, start: usize, end: usize, depth: usize) -> Result<(Value, usize), Error> {
        let err = |kind| Error { offset: start, kind };
        let span = &self.input[start..end];
        let total = frame(span, self.limits).map_err(|e| err(e.kind))?.ok_or_else(|| err(ErrorKind::LengthPrefix))?;
        if total > span.len() {
            return Err(err(ErrorKind::Truncated { needed: total, available: span.len() }));
        }
        let colon = span.iter().position(|&b| b == b':').expect("frame found the prefix's colon");
        let (data_start, data_end) = (start + colon + 1, start + total - 1);
        let data = &self.input[data_start..data_end];
        let value = match self.input[data_end] {
            b',' => Value::Bytes(self.input.slice(data_start..data_end)),
            b';' => Value::String(std::str::from_utf8(data).map_err(|_| err(ErrorKind::Utf8))?.to_owned()),
            b'#' => Value::Int(
                std::str::from_utf8(data).ok().and_then(|s| s.parse().ok()).ok_or_else(|| err(ErrorKind::Int))?,
            ),
            b'^' => Value::Float(
                std::str::from_utf8(data).ok().and_then(|s| s.parse().ok()).ok_or_else(|| err(ErrorKind::Float))?,
            ),
            b'!' => match data {
                b"true" => Value::Bool(true),
                b"false" => Value::Bool(false),
                _ => return Err(err(ErrorKind::Bool)),
            },
            b'~' if data.is_empty() => Value::Null,
            b'~' => return Err(err(ErrorKind::Null)),
            b']' => {
                let depth = self.deeper(start, depth)?;
                let mut items = Vec::new();
                let mut at = data_start;
                while at < data_end {
                    let (item, next) = self.value(at, data_end, depth)?;
                    items.push(item);
                    at = next;
                }
                Value::List(items)
            }
            b'}' => {
                let depth = self.deeper(start, depth)?;
                let mut pairs = Vec::new();
                let mut at = data_start;
                while at < data_end {
                    let (key, next) = self.value(at, data_end, depth)?;
                    if next == data_end {
                        return Err(Error { offset: at, kind: ErrorKind::MissingValue });
                    }
                    let (value, next) = self.value(next, data_end, depth)?;
                    pairs.push((key, value));
                    at = next;
                }
                Value::Dict(pairs)
            }
            tag => return Err(Error { offset: data_end, kind: ErrorKind::Tag(char::from(tag)) }),
        };
        Ok((value, start + total))
    }

    fn deeper(&self, start: usize, depth: usize) -> Result<usize, Error> {
        if depth >= self.limits.max_depth {
            return Err(Error { offset: start, kind: ErrorKind::TooDeep(self.limits.max_depth) });
        }
        Ok(depth + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: impl AsRef<[u8]>, expect: Result<Value, Error>) {
        let input = input.as_ref();
        let got = parse(&Bytes::copy_from_slice(input), &Limits::default());
        assert_eq!(got, expect, "{}", String::from_utf8_lossy(input));
    }

    fn fails(offset: usize, kind: ErrorKind) -> Result<Value, Error> {
        Err(Error { offset, kind })
    }

    fn s(text: &str) -> Value {
        Value::String(text.to_owned())
    }

    #[test]
    fn values() {
        check("0:~", Ok(Value::Null));
        check("4:true!", Ok(Value::Bool(true)));
        check("5:false!", Ok(Value::Bool(false)));
        check("5:12345#", Ok(Value::Int(12345)));
        check("2:-7#", Ok(Value::Int(-7)));
        check("17:1700000000.123456^", Ok(Value::Float(1_700_000_000.123_456)));
        check("5:1e+20^", Ok(Value::Float(1e20)));
        check("11:hello world,", Ok(Value::Bytes(Bytes::from_static(b"hello world"))));
        check("0:,", Ok(Value::Bytes(Bytes::new())));
        check("5:café;", Ok(s("café")));
        check("19:5:12345#4:true!1:0#]", Ok(Value::List(vec![Value::Int(12345), Value::Bool(true), Value::Int(0)])));
        check("0:]", Ok(Value::List(vec![])));
        check("15:1:a;1:1#1:b;0:~}", Ok(Value::Dict(vec![(s("a"), Value::Int(1)), (s("b"), Value::Null)])));
        check("9:3:a:b,0:]}", Ok(Value::Dict(vec![(Value::Bytes(Bytes::from_static(b"a:b")), Value::List(vec![]))])));
    }

    #[test]
    fn malformed() {
        check("", fails(0, ErrorKind::LengthPrefix));
        check(":~", fails(0, ErrorKind::LengthPrefix));
        check("x:~", fails(0, ErrorKind::LengthPrefix));
        check("1234567890123:", fails(0, ErrorKind::LengthPrefix));
        check("5", fails(0, ErrorKind::LengthPrefix));
        check("5:abc,", fails(0, ErrorKind::Truncated { needed: 8, available: 6 }));
        check("3:abc", fails(0, ErrorKind::Truncated { needed: 6, available: 5 }));
        check("3:abc?", fails(5, ErrorKind::Tag('?')));
        check("2:1x#", fails(0, ErrorKind::Int));
        check("20:99999999999999999999#", fails(0, ErrorKind::Int));
        check("0:#", fails(0, ErrorKind::Int));
        check("3:abc^", fails(0, ErrorKind::Float));
        check("0:^", fails(0, ErrorKind::Float));
        check("3:yes!", fails(0, ErrorKind::Bool));
        check("1:x~", fails(0, ErrorKind::Null));
        check(b"2:\xff\xfe;", fails(0, ErrorKind::Utf8));
        check("4:1:a;}", fails(2, ErrorKind::MissingValue));
        check("5:5:ab,]", fails(2, ErrorKind::Truncated { needed: 8, available: 5 }));
        check("0:~0:~", fails(3, ErrorKind::Trailing(3)));
        check("999999999999:,", fails(0, ErrorKind::TooLarge { size: 999_999_999_999, limit: MAX_SIZE }));
    }

    #[test]
    fn limits_are_applied() {
        let limits = Limits { max_size: 10, max_depth: 2 };
        let parse = |input: &str| parse(&Bytes::copy_from_slice(input.as_bytes()), &limits);
        assert_eq!(parse("10:0123456789,").map(|_| ()), Ok(()));
        assert_eq!(
            parse("11:01234567890,"),
            Err(Error { offset: 0, kind: ErrorKind::TooLarge { size: 11, limit: 10 } })
        );
        assert_eq!(parse("3:0:]]").map(|_| ()), Ok(()));
        assert_eq!(parse("6:3:0:]]]"), Err(Error { offset: 4, kind: ErrorKind::TooDeep(2) }));
        // The limit applies before anything is read: a huge prefix on a short input.
        assert_eq!(
            frame(b"100000000:", &limits).map_err(|e| e.kind),
            Err(ErrorKind::TooLarge { size: 100_000_000, limit: 10 })
        );
    }

    #[test]
    fn frame_at_every_split() {
        let input = b"12:hello world!,";
        for cut in 0..input.len() {
            let got = frame(&input[..cut], &Limits::default()).expect("a valid prefix");
            assert_eq!(got, if cut < 3 { None } else { Some(16) }, "cut at {cut}");
        }
    }

    #[test]
    fn dictionary_lookup() {
        let dict = Value::Dict(vec![(Value::Bytes(Bytes::from_static(b"k")), Value::Int(1)), (s("t"), s("x"))]);
        assert_eq!(dict.get("k"), Some(&Value::Int(1)));
        assert_eq!(dict.get("t").and_then(Value::as_str), Some("x"));
        assert_eq!(dict.get("missing"), None);
    }
}
