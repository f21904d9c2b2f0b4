//! Flows on disk: flowgate's flow file, mitmproxy's flow files and HAR 1.2.
//!
//! - [`flowfile`]: flowgate's own format (`FORMAT.md`): append-only, checksummed records
//!   that survive a crash mid-write, with updates for long-lived flows.
//! - [`mitmproxy`]: reads `mitmdump -w` files (tnetstrings, flow format 19 to 21) through
//!   [`tnetstring`], a sans-IO parser of its own.
//! - [`har`]: writes and reads HAR 1.2.
//! - [`open`] and [`read`]: any of the three, told apart by their first bytes.
//!
//! No network IO and no clock: times come from the flows, and files are opened only where
//! a function is given a path.

pub mod flowfile;
pub mod har;
pub mod mitmproxy;
pub mod tnetstring;

mod datetime;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flowgate_flow::Flow;
use thiserror::Error;

/// A file format this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// flowgate's flow file ([`flowfile`]).
    Flowgate,
    /// mitmproxy's flow file ([`mitmproxy`]).
    Mitmproxy,
    /// HAR ([`har`]).
    Har,
}

/// How many first bytes [`detect`] needs at most to decide.
pub const DETECT_LEN: usize = 16;

/// Tells the format by the first bytes of a file: `Some` once decided, `None` if the bytes
/// are none of these formats (or too few to tell: give [`DETECT_LEN`] bytes, or all there
/// are). flowgate's file starts with [`flowfile::MAGIC`], mitmproxy's with a tnetstring
/// length prefix and a dictionary's first key (`123:7:version;`, digits, a colon, digits),
/// HAR with `{` after optional whitespace and a UTF-8 byte order mark.
pub fn detect(prefix: &[u8]) -> Option<Format> {
    if !prefix.is_empty() && flowfile::MAGIC.starts_with(&prefix[..prefix.len().min(flowfile::MAGIC.len())]) {
        return Some(Format::Flowgate);
    }
    let text = prefix.strip_prefix(b"\xef\xbb\xbf").unwrap_or(prefix);
    if text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Some(Format::Har);
    }
    let digits = prefix.iter().take_while(|b| b.is_ascii_digit()).count();
    if (1..=12).contains(&digits) && prefix.get(digits) == Some(&b':') {
        let rest = &prefix[digits + 1..];
        let inner = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if inner == rest.len() || (inner > 0 && rest.get(inner) == Some(&b':')) {
            return Some(Format::Mitmproxy);
        }
    }
    None
}

/// Why flows cannot be read.
#[derive(Debug, Error)]
pub enum Error {
    /// The file cannot be opened or read.
    #[error("cannot read {path}: {error}")]
    Open {
        /// The path given.
        path: String,
        /// What failed: in the message, not the error's source, so a report of the
        /// whole chain (`{:#}`) does not say it twice.
        error: io::Error,
    },
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Not a format this crate reads.
    #[error("not a flow file: neither flowgate's, mitmproxy's nor HAR (by its first bytes)")]
    Unknown,
    /// flowgate's flow file.
    #[error(transparent)]
    Flowfile(#[from] flowfile::Error),
    /// mitmproxy's flow file.
    #[error(transparent)]
    Mitmproxy(#[from] mitmproxy::Error),
    /// HAR.
    #[error(transparent)]
    Har(#[from] har::Error),
}

/// The flows of a file, in order. A flowgate file is read whole first (its later records
/// update earlier flows); mitmproxy's files and HAR entries are converted one at a time,
/// and a flow that cannot be converted is an `Err` item (see each module for when reading
/// stops).
pub struct Flows {
    format: Option<Format>,
    inner: Inner,
    stats: Option<flowfile::ReadStats>,
}

enum Inner {
    Flowgate(std::vec::IntoIter<Flow>),
    Mitmproxy(Box<mitmproxy::Reader<Box<dyn Read>>>),
    Har(har::Entries),
}

impl Flows {
    /// The format read (`None` for an empty file, which has no flows).
    pub fn format(&self) -> Option<Format> {
        self.format
    }

    /// For a flowgate file: what its reader met (damage skipped, a torn tail).
    pub fn flowfile_stats(&self) -> Option<&flowfile::ReadStats> {
        self.stats.as_ref()
    }
}

impl Iterator for Flows {
    type Item = Result<Flow, Error>;

    fn next(&mut self) -> Option<Result<Flow, Error>> {
        match &mut self.inner {
            Inner::Flowgate(flows) => flows.next().map(Ok),
            Inner::Mitmproxy(reader) => reader.next().map(|r| r.map_err(Error::from)),
            Inner::Har(entries) => entries.next().map(|r| r.map_err(Error::from)),
        }
    }
}

/// Opens the file at `path` and reads its flows, whatever of the three formats it is.
pub fn open(path: &Path) -> Result<Flows, Error> {
    let file = File::open(path).map_err(|error| Error::Open { path: path.display().to_string(), error })?;
    read(file)
}

/// Reads flows from `input`, whatever of the three formats it is (by its first bytes).
pub fn read<R: Read + 'static>(input: R) -> Result<Flows, Error> {
    let mut input = BufReader::new(input);
    let mut prefix = Vec::new();
    // Fill up to DETECT_LEN bytes (a BufReader may return fewer at first).
    while prefix.len() < DETECT_LEN {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len().min(DETECT_LEN - prefix.len());
        prefix.extend_from_slice(&buf[..n]);
        input.consume(n);
    }
    let rest = io::Cursor::new(prefix.clone()).chain(input);
    if prefix.is_empty() {
        return Ok(Flows { format: None, inner: Inner::Flowgate(Vec::new().into_iter()), stats: None });
    }
    match detect(&prefix).ok_or(Error::Unknown)? {
        Format::Flowgate => {
            let contents = flowfile::read(rest)?;
            Ok(Flows {
                format: Some(Format::Flowgate),
                inner: Inner::Flowgate(contents.flows.into_iter()),
                stats: Some(contents.stats),
            })
        }
        Format::Mitmproxy => {
            let reader = mitmproxy::Reader::new(Box::new(rest) as Box<dyn Read>);
            Ok(Flows { format: Some(Format::Mitmproxy), inner: Inner::Mitmproxy(Box::new(reader)), stats: None })
        }
        Format::Har => Ok(Flows { format: Some(Format::Har), inner: Inner::Har(har::read(rest)?), stats: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_by_first_bytes() {
        assert_eq!(detect(b"\x89FGF\r\n\x1a\n\x01\0\0\0"), Some(Format::Flowgate));
        assert_eq!(detect(b"\x89FG"), Some(Format::Flowgate));
        assert_eq!(detect(b"1234:7:version;2:21#"), Some(Format::Mitmproxy));
        assert_eq!(detect(b"1234:"), Some(Format::Mitmproxy));
        assert_eq!(detect(b"\xef\xbb\xbf{\"log\""), Some(Format::Har));
        assert_eq!(detect(b"  \n{"), Some(Format::Har));
        for other in [&b"GET / HTTP/1.1"[..], b"1234", b"12:ab", b"[]", b"\x89PNG"] {
            assert_eq!(detect(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
