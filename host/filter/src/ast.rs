//! The parsed form of a filter: a tree of `&`, `|` and `!` over terms, each term one
//! operator with its compiled regex or status code; the operator tables; and the canonical
//! text ([`fmt::Display`]) that parses back to an equal tree.

use std::fmt;

/// A node of the tree. `And` and `Or` hold at least two children and never a child of
/// their own kind (chains are flattened when built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Term(Term),
}

impl Node {
    /// `children` joined by `&`, flattened; a single child stands alone.
    pub(crate) fn and(children: Vec<Node>) -> Node {
        let mut flat = Vec::with_capacity(children.len());
        for child in children {
            match child {
                Node::And(inner) => flat.extend(inner),
                child => flat.push(child),
            }
        }
        Node::alone_or(flat, Node::And)
    }

    /// `children` joined by `|`, flattened; a single child stands alone.
    pub(crate) fn or(children: Vec<Node>) -> Node {
        let mut flat = Vec::with_capacity(children.len());
        for child in children {
            match child {
                Node::Or(inner) => flat.extend(inner),
                child => flat.push(child),
            }
        }
        Node::alone_or(flat, Node::Or)
    }

    fn alone_or(mut flat: Vec<Node>, make: fn(Vec<Node>) -> Node) -> Node {
        match flat.len() {
            1 => flat.pop().expect("the length is 1"),
            _ => make(flat),
        }
    }

    /// Whether every term reads only what a request head settles: its method, URL,
    /// domain, header fields and content type, the client's address, and the flow's kind.
    pub(crate) fn head_only(&self) -> bool {
        match self {
            Node::And(children) | Node::Or(children) => children.iter().all(Node::head_only),
            Node::Not(child) => child.head_only(),
            Node::Term(Term::Flag(flag)) => matches!(flag, Flag::Http | Flag::Tcp | Flag::Udp | Flag::Dns | Flag::All),
            Node::Term(Term::Rex(op, _)) => {
                use RexOp::*;
                matches!(op, ContentTypeRequest | Domain | HeaderRequest | Method | Src | Url)
            }
            Node::Term(Term::Code { .. }) => false,
        }
    }

    /// Whether any term reads what arrives with or after a response.
    pub(crate) fn needs_response(&self) -> bool {
        match self {
            Node::And(children) | Node::Or(children) => children.iter().any(Node::needs_response),
            Node::Not(child) => child.needs_response(),
            Node::Term(term) => term.needs_response(),
        }
    }
}

/// One operator and its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Term {
    /// An operator without argument.
    Flag(Flag),
    /// An operator with a regex.
    Rex(RexOp, Rex),
    /// `~c`: the response's status code, as digits (leading zeros dropped); `None` if it
    /// is past any status (it then matches nothing, as in mitmproxy).
    Code { digits: String, code: Option<u16> },
}

impl Term {
    fn needs_response(&self) -> bool {
        match self {
            Term::Flag(flag) => flag.needs_response(),
            Term::Rex(op, _) => op.needs_response(),
            Term::Code { .. } => true,
        }
    }
}

/// The operators without argument, in mitmproxy's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flag {
    Asset,
    Error,
    Http,
    Marked,
    Replay,
    ReplayRequest,
    ReplayResponse,
    NoResponse,
    HasResponse,
    Tcp,
    Udp,
    Dns,
    WebSocket,
    All,
}

impl Flag {
    pub(crate) const ALL: [Flag; 14] = [
        Flag::Asset,
        Flag::Error,
        Flag::Http,
        Flag::Marked,
        Flag::Replay,
        Flag::ReplayRequest,
        Flag::ReplayResponse,
        Flag::NoResponse,
        Flag::HasResponse,
        Flag::Tcp,
        Flag::Udp,
        Flag::Dns,
        Flag::WebSocket,
        Flag::All,
    ];

    /// The operator as written, with its `~`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Flag::Asset => "~a",
            Flag::Error => "~e",
            Flag::Http => "~http",
            Flag::Marked => "~marked",
            Flag::Replay => "~replay",
            Flag::ReplayRequest => "~replayq",
            Flag::ReplayResponse => "~replays",
            Flag::NoResponse => "~q",
            Flag::HasResponse => "~s",
            Flag::Tcp => "~tcp",
            Flag::Udp => "~udp",
            Flag::Dns => "~dns",
            Flag::WebSocket => "~websocket",
            Flag::All => "~all",
        }
    }

    fn needs_response(self) -> bool {
        matches!(self, Flag::Asset | Flag::NoResponse | Flag::HasResponse | Flag::WebSocket)
    }
}

/// The operators taking a regex, in mitmproxy's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RexOp {
    Body,
    BodyRequest,
    BodyResponse,
    ContentType,
    ContentTypeRequest,
    ContentTypeResponse,
    Domain,
    Dst,
    Header,
    HeaderRequest,
    HeaderResponse,
    Method,
    Src,
    Url,
    Meta,
    Marker,
    Comment,
}

/// How an operator's regex is compiled (mitmproxy's `_BinRex`/`_StrRex` and flags).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// Searches bytes (Python's bytes patterns: ASCII classes and case folding), else text.
    pub(crate) bytes: bool,
    /// `^` and `$` match at line ends too (`re.MULTILINE`).
    pub(crate) multi_line: bool,
    /// `.` matches a newline too (`re.DOTALL`).
    pub(crate) dot_all: bool,
}

impl RexOp {
    pub(crate) const ALL: [RexOp; 17] = [
        RexOp::Body,
        RexOp::BodyRequest,
        RexOp::BodyResponse,
        RexOp::ContentType,
        RexOp::ContentTypeRequest,
        RexOp::ContentTypeResponse,
        RexOp::Domain,
        RexOp::Dst,
        RexOp::Header,
        RexOp::HeaderRequest,
        RexOp::HeaderResponse,
        RexOp::Method,
        RexOp::Src,
        RexOp::Url,
        RexOp::Meta,
        RexOp::Marker,
        RexOp::Comment,
    ];

    /// The operator as written, with its `~`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RexOp::Body => "~b",
            RexOp::BodyRequest => "~bq",
            RexOp::BodyResponse => "~bs",
            RexOp::ContentType => "~t",
            RexOp::ContentTypeRequest => "~tq",
            RexOp::ContentTypeResponse => "~ts",
            RexOp::Domain => "~d",
            RexOp::Dst => "~dst",
            RexOp::Header => "~h",
            RexOp::HeaderRequest => "~hq",
            RexOp::HeaderResponse => "~hs",
            RexOp::Method => "~m",
            RexOp::Src => "~src",
            RexOp::Url => "~u",
            RexOp::Meta => "~meta",
            RexOp::Marker => "~marker",
            RexOp::Comment => "~comment",
        }
    }

    pub(crate) fn dialect(self) -> Dialect {
        use RexOp::*;
        let bytes = matches!(
            self,
            Body | BodyRequest
                | BodyResponse
                | ContentType
                | ContentTypeRequest
                | ContentTypeResponse
                | Header
                | HeaderRequest
                | HeaderResponse
                | Method
        );
        let multi_line = matches!(self, Header | HeaderRequest | HeaderResponse | Meta | Comment);
        let dot_all = matches!(self, Body | BodyRequest | BodyResponse);
        Dialect { bytes, multi_line, dot_all }
    }

    fn needs_response(self) -> bool {
        use RexOp::*;
        // `~bq` reads the client's WebSocket messages, which follow the response.
        matches!(self, Body | BodyRequest | BodyResponse | ContentType | ContentTypeResponse | Header | HeaderResponse)
    }
}

/// A compiled regex and the text it was compiled from (what equality compares).
#[derive(Debug, Clone)]
pub(crate) struct Rex {
    pub(crate) source: String,
    pub(crate) compiled: Compiled,
}

#[derive(Debug, Clone)]
pub(crate) enum Compiled {
    Bytes(regex::bytes::Regex),
    Text(regex::Regex),
}

impl PartialEq for Rex {
    fn eq(&self, other: &Rex) -> bool {
        self.source == other.source
    }
}

impl Eq for Rex {}

impl Rex {
    pub(crate) fn is_match_bytes(&self, haystack: &[u8]) -> bool {
        match &self.compiled {
            Compiled::Bytes(re) => re.is_match(haystack),
            Compiled::Text(re) => re.is_match(&String::from_utf8_lossy(haystack)),
        }
    }

    pub(crate) fn is_match_text(&self, haystack: &str) -> bool {
        match &self.compiled {
            Compiled::Bytes(re) => re.is_match(haystack.as_bytes()),
            Compiled::Text(re) => re.is_match(haystack),
        }
    }
}

/// Characters that end a bare word (besides whitespace), as in mitmproxy's grammar.
pub(crate) const WORD_STOP: &[char] = &['(', ')', '~', '\'', '"'];

/// Whitespace between tokens: pyparsing's default, nothing else.
pub(crate) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Writes an operator's argument so that the parser reads it back: bare if it can be (it
/// may start with `!`, `&` or `|` there), else quoted.
fn write_argument(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let bare = !text.is_empty() && !text.chars().any(|c| is_space(c) || WORD_STOP.contains(&c));
    if bare {
        return f.write_str(text);
    }
    f.write_str("\"")?;
    for c in text.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '"' => f.write_str("\\\"")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\x0c' => f.write_str("\\f")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::And(children) => {
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" & ")?;
                    }
                    match child {
                        Node::Or(_) => write!(f, "({child})")?,
                        child => write!(f, "{child}")?,
                    }
                }
                Ok(())
            }
            Node::Or(children) => {
                for (i, child) in children.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{child}")?;
                }
                Ok(())
            }
            Node::Not(child) => match **child {
                Node::And(_) | Node::Or(_) => write!(f, "!({child})"),
                _ => write!(f, "!{child}"),
            },
            Node::Term(Term::Flag(flag)) => f.write_str(flag.name()),
            Node::Term(Term::Code { digits, .. }) => write!(f, "~c {digits}"),
            Node::Term(Term::Rex(op, rex)) => {
                write!(f, "{} ", op.name())?;
                write_argument(f, &rex.source)
            }
        }
    }
}
