//! mitmproxy's flow filter language over [`flowgate_flow::Flow`]: `~d example\.com & !~s`,
//! parsed once into a [`Filter`] (regexes compiled then), matched per flow with no IO and
//! no allocation beyond what a term derives from the flow (a URL, a header block).
//!
//! # Language
//!
//! The operators are mitmproxy's (`mitmproxy/flowfilter.py`):
//!
//! | operator | matches |
//! |---|---|
//! | `~all` | every flow |
//! | `~http`, `~websocket`, `~tcp`, `~udp`, `~dns` | flows of that kind (a WebSocket flow is HTTP too) |
//! | `~q` / `~s` | HTTP and DNS flows without / with a response |
//! | `~e` | flows with an error |
//! | `~marked`, `~marker rex` | marked flows; the marker (empty if unmarked) |
//! | `~comment rex`, `~meta rex` | the comment; metadata as `key: value` lines (multi-line) |
//! | `~replay`, `~replayq`, `~replays` | replayed flows; replayed request; replayed response |
//! | `~a` | a response with an asset Content-Type (JavaScript, CSS, image, font) |
//! | `~c code` | the response's status code |
//! | `~m rex` | the request method |
//! | `~d rex` | the request host or the Host header's host |
//! | `~u rex`, or a bare `rex` | the request's pretty URL (with the Host header's host), a DNS query's first name |
//! | `~h rex`, `~hq rex`, `~hs rex` | header lines `name: value` (CR LF ended, multi-line) of request or response |
//! | `~t rex`, `~tq rex`, `~ts rex` | the Content-Type value of request or response |
//! | `~b rex`, `~bq rex`, `~bs rex` | bodies: HTTP bodies (decoded when their `Content-Encoding` is gzip, deflate, br or zstd and they decode within 64 MiB, else as recorded, as mitmproxy's `get_content(strict=False)`) and WebSocket messages, TCP/UDP messages, DNS messages as text; `~bq` client side, `~bs` server side |
//! | `~src rex`, `~dst rex` | `ip:port` of the client; `host:port` of the server |
//!
//! `!x` negates, `x & y` and `x | y` combine (`!` binds tightest, then `&`, then `|`), `( )`
//! groups, and adjacent terms are joined by an `&` looser than `|`: `~q ~s | ~e` is
//! `~q & (~s | ~e)`, as in mitmproxy. A regex is a word (up to whitespace or one of
//! `( ) ~ ' "`) or a quoted string (`"..."` or `'...'`, with pyparsing's escapes: `\t`,
//! `\n`, `\f`, `\r`, `\0`, `\ooo`, `\xHH`, `\uHHHH`, and `\c` for any other `c`; so
//! `"a\.b"` is the regex `a.b` and `"a\\.b"` is `a\.b`).
//!
//! Regexes are searched (not anchored), case-insensitively, in mitmproxy's dialect:
//! Python's syntax (see below), bytes patterns (ASCII classes and case folding) for bodies,
//! headers, content types and the method, text patterns for the rest. `~a` is
//! case-sensitive, as in mitmproxy.
//!
//! # mitmproxy 12, not 11.0.2
//!
//! Where mitmproxy 12 differs from 11.0.2, this crate follows 12. One difference shows in
//! what a filter matches:
//!
//! - Every regex operator is case-insensitive (12.x, from 11.1.1 on, unless
//!   `MITMPROXY_CASE_SENSITIVE_FILTERS=1`); 11.0.2 ignored case only for `~m`, `~d`, `~u` and
//!   bare regexes, so `~b`, `~bq`, `~bs`, `~h`, `~hq`, `~hs`, `~t`, `~tq`, `~ts`, `~src`,
//!   `~dst`, `~meta`, `~marker` and `~comment` were case-sensitive there.
//!
//! The rest is the same in both: `~meta` reads `key: value` lines (there is no `key=value`
//! form in either), and `~b` on a DNS flow reads the message as text (11.0.2's
//! `Message.content` was that text; 12 calls it `str(message)`): question names, then each
//! record's data as text (an address, a name, TXT data, else `0x` and hex), CR LF between
//! them. 12 also makes every operator return a `bool` where 11.0.2 returned `None` or a
//! match object, which matches the same flows.
//!
//! # Where it differs from mitmproxy
//!
//! - Regexes run on the `regex` crate, after rewriting the Python spellings it reads
//!   differently (literal `{`, `{,n}`, `\Z`, `\<`, `\>`, `[\b]`, `\0`, `[`/`&&`/`--`/`~~` in a
//!   class). Look-around, backreferences, conditionals, atomic groups, possessive
//!   quantifiers, `\N{...}` and `(?#...)` do not compile: such a filter is refused. Without
//!   multi-line mode `$` matches only at the very end (Python's also before a final `\n`).
//! - Metadata lines for `~meta` are in key order (flowgate keeps metadata sorted; mitmproxy
//!   in insertion order).
//! - DNS as text: HTTPS (type 65) records are written as hex (mitmproxy writes their fields),
//!   and `xn--` labels are left encoded.
//! - WebSocket ping, pong and close frames, which mitmproxy does not record as messages, are
//!   not searched by `~b`.
//! - The grammar is a little stricter and a little more lenient. A bare term cannot start
//!   with `!`, `&` or `|`, so `~q &`, `~q & &x` and `~q !` are errors where mitmproxy reads
//!   a URL regex `&`, `&x`, `!` (quote it: `~q & "&x"`). But an operator may be followed
//!   directly by `)`, `(` or a quote (`(~q)`, `!(~s)`, `~h"x"`), and a parenthesis may
//!   hold adjacent terms (`(~q ~s)`), all of which mitmproxy refuses.
//! - There is no `MITMPROXY_CASE_SENSITIVE_FILTERS`: this crate reads no environment.
//!
//! # Limits
//!
//! A filter is input from plugin manifests and command lines, so [`Limits`] bounds it: at
//! most 4 KiB, 32 levels of `(` and `!`, 128 terms and 256 KiB per compiled regex by
//! default. Parsing and matching recurse only as deep as the nesting, so a hostile filter
//! is refused before it can exhaust the stack.

mod ast;
mod eval;
mod parse;
mod pyre;

use std::fmt;
use std::str::FromStr;

use flowgate_flow::Flow;

pub use parse::{Found, Limits, ParseError, Reason};

/// A parsed filter, ready to match flows. Cheap to match, `Clone`, `Send` and `Sync`.
///
/// Its [`Display`](fmt::Display) is the canonical text: every operator explicit (`~u` for a
/// bare regex, `&` for adjacency), parentheses only where needed, regexes bare where they
/// can be and quoted otherwise. It parses back to an equal filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    root: ast::Node,
}

impl Filter {
    /// Parses a filter under the default [`Limits`].
    pub fn parse(text: &str) -> Result<Filter, ParseError> {
        Filter::parse_with(text, &Limits::default())
    }

    /// Parses a filter under `limits`.
    pub fn parse_with(text: &str, limits: &Limits) -> Result<Filter, ParseError> {
        parse::parse(text, limits).map(|root| Filter { root })
    }

    /// Whether `flow` matches, as mitmproxy would decide.
    pub fn matches(&self, flow: &Flow) -> bool {
        self.root.eval(&eval::Subject::new(flow))
    }

    /// Whether the filter reads anything that comes with or after a response: its presence
    /// (`~q`, `~s`), status (`~c`), headers (`~h`, `~hs`, `~t`, `~ts`, `~a`), body (`~b`,
    /// `~bs`), or the WebSocket the exchange becomes (`~websocket`, and `~bq`, which reads
    /// the client's WebSocket messages too).
    ///
    /// When it is false, matching a flow before its response gives the answer matching it
    /// afterwards would, as long as the rest of the flow is unchanged (an error, a mark, a
    /// comment, metadata and the server can be set at any time). When it is true, matching
    /// before the response still gives mitmproxy's answer for a flow without one (`~s` is
    /// false, `~q` is true), which may change later.
    pub fn needs_response(&self) -> bool {
        self.root.needs_response()
    }

    /// Whether the filter reads only what a request head settles (method, URL, domain,
    /// request header fields and content type, the client's address, the flow's kind):
    /// then matching a flow at its first hook gives the answer for its whole life. Not so
    /// for anything that comes or changes later (the server's address, an error, marks,
    /// comments, metadata, replay, bodies, the response).
    pub fn settled_by_request_head(&self) -> bool {
        self.root.head_only()
    }
}

impl FromStr for Filter {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Filter, ParseError> {
        Filter::parse(text)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Filter;

    #[test]
    fn filters_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + Clone + std::fmt::Debug>() {}
        shared::<Filter>();
    }
}
