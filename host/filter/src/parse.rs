//! The filter grammar: a recursive-descent parser over the characters of a filter, with
//! its limits and errors. Regexes are compiled here, once.
//!
//! ```text
//! filter  := seq                          (the whole input)
//! seq     := or+                          adjacent terms: `&`, binding loosest
//! or      := and ('|' and)*
//! and     := not ('&' not)*
//! not     := '!' not | primary
//! primary := '(' seq ')' | '~'flag | '~'rex arg | '~c' digits | arg
//! arg     := word | "quoted" | 'quoted'
//! ```
//!
//! A word runs to whitespace (space, tab, CR, LF) or one of `( ) ~ ' "`; a bare term (a
//! URL regex) may not start with `!`, `&` or `|`, which are operators there. In quotes, a
//! backslash takes the next character as it is, except `\t`, `\n`, `\f` and `\r`, which
//! are those whitespace characters (pyparsing's `QuotedString`), and a quoted string ends
//! at the line's end.

use std::fmt;

use thiserror::Error;

use crate::ast::{Compiled, Flag, Node, Rex, RexOp, Term, WORD_STOP, is_space};
use crate::pyre;

/// Bounds on what a filter may be, so that one from a plugin manifest or a command line
/// cannot exhaust the stack or memory. [`Limits::default`] holds the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest filter, in bytes (default [`Limits::DEFAULT_MAX_LEN`]).
    pub max_len: usize,
    /// Deepest nesting of `(` and `!` (default [`Limits::DEFAULT_MAX_DEPTH`]); parsing,
    /// matching and dropping a filter recurse this deep at most.
    pub max_depth: usize,
    /// Most terms (operators and bare regexes) in one filter (default
    /// [`Limits::DEFAULT_MAX_TERMS`]).
    pub max_terms: usize,
    /// Most memory one compiled regex may take, in bytes, and as much again for its
    /// matching cache (default [`Limits::DEFAULT_REGEX_SIZE`]); a larger one is refused.
    pub regex_size: usize,
}

impl Limits {
    /// The default [`Limits::max_len`]: 4 KiB.
    pub const DEFAULT_MAX_LEN: usize = 4096;
    /// The default [`Limits::max_depth`].
    pub const DEFAULT_MAX_DEPTH: usize = 32;
    /// The default [`Limits::max_terms`].
    pub const DEFAULT_MAX_TERMS: usize = 128;
    /// The default [`Limits::regex_size`]: 256 KiB.
    pub const DEFAULT_REGEX_SIZE: usize = 256 * 1024;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_len: Limits::DEFAULT_MAX_LEN,
            max_depth: Limits::DEFAULT_MAX_DEPTH,
            max_terms: Limits::DEFAULT_MAX_TERMS,
            regex_size: Limits::DEFAULT_REGEX_SIZE,
        }
    }
}

/// Why a filter was refused, and where: `column 7: expected a filter expression after '&'`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("column {column}: {reason}")]
pub struct ParseError {
    column: usize,
    reason: Reason,
}

impl ParseError {
    /// The 1-based column (in characters) where the problem is.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What was wrong there.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }
}

/// What a [`ParseError`] found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reason {
    /// A term was needed: at the start, after an operator, or after `(`.
    #[error("expected a filter expression{}, found {found}", after_text(*.after))]
    ExpectedExpression {
        /// The operator it follows (`&`, `|`, `!`, `(`), if any.
        after: Option<char>,
        /// What was there instead.
        found: Found,
    },
    /// An operator that takes a regex has none.
    #[error("expected a regular expression after '{operator}', found {found}")]
    ExpectedRegex {
        /// The operator (`~h`, ...).
        operator: &'static str,
        /// What was there instead.
        found: Found,
    },
    /// `~c` without a number.
    #[error("expected a status code (digits) after '~c', found {found}")]
    ExpectedCode {
        /// What was there instead.
        found: Found,
    },
    /// A `(` was not closed.
    #[error("expected ')' to close the '(' at column {open}, found {found}")]
    Unclosed {
        /// The column of the `(`.
        open: usize,
        /// What was there instead.
        found: Found,
    },
    /// A `)` closes nothing.
    #[error("unexpected ')': no '(' is open")]
    UnexpectedClose,
    /// A `~name` that is not an operator.
    #[error("unknown filter '{0}'")]
    UnknownOperator(String),
    /// A quoted string without its closing quote on the same line.
    #[error("unterminated quoted string (no closing {0} on this line)")]
    Unterminated(char),
    /// A regex that does not compile (or that is too large, see [`Limits::regex_size`]).
    #[error("invalid regular expression for '{operator}': {message}")]
    Regex {
        /// The operator it belongs to (`~u` for a bare term).
        operator: &'static str,
        /// What the regex engine said.
        message: String,
    },
    /// Longer than [`Limits::max_len`].
    #[error("the filter is {len} bytes long, over the limit of {limit}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than [`Limits::max_depth`].
    #[error("nested deeper than {0} levels of '(' and '!'")]
    TooDeep(usize),
    /// More terms than [`Limits::max_terms`].
    #[error("more than {0} terms")]
    TooManyTerms(usize),
}

fn after_text(after: Option<char>) -> String {
    after.map(|c| format!(" after '{c}'")).unwrap_or_default()
}

/// What a parser found where it expected something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The end of the filter.
    End,
    /// This character.
    Char(char),
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::End => f.write_str("the end"),
            Found::Char(c) => write!(f, "{c:?}"),
        }
    }
}

/// Parses `text` into a tree, under `limits`.
pub(crate) fn parse(text: &str, limits: &Limits) -> Result<Node, ParseError> {
    if text.len() > limits.max_len {
        let mut boundary = limits.max_len;
        while !text.is_char_boundary(boundary) {
            boundary -= 1;
        }
        let column = text[..boundary].chars().count() + 1;
        return Err(ParseError { column, reason: Reason::TooLong { len: text.len(), limit: limits.max_len } });
    }
    let mut parser = Parser { chars: text.chars().collect(), pos: 0, limits, depth: 0, terms: 0 };
    let node = parser.seq(None, None)?;
    match parser.peek() {
        None => Ok(node),
        Some(_) => Err(parser.error(Reason::UnexpectedClose)),
    }
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    limits: &'a Limits,
    depth: usize,
    terms: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn found(&self) -> Found {
        self.peek().map_or(Found::End, Found::Char)
    }

    fn error(&self, reason: Reason) -> ParseError {
        ParseError { column: self.pos + 1, reason }
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(self.error(Reason::TooDeep(self.limits.max_depth)));
        }
        Ok(())
    }

    /// Adjacent expressions up to the end, or up to the `)` closing the `(` at column
    /// `open`. `after` is what precedes the first one, for the error if there is none.
    fn seq(&mut self, open: Option<usize>, after: Option<char>) -> Result<Node, ParseError> {
        let mut items = Vec::new();
        loop {
            self.skip_space();
            match (self.peek(), open) {
                (None, Some(open)) if !items.is_empty() => {
                    return Err(self.error(Reason::Unclosed { open, found: Found::End }));
                }
                (None | Some(')'), _) if !items.is_empty() => break,
                (Some(')'), None) => return Err(self.error(Reason::UnexpectedClose)),
                _ => items.push(self.or(if items.is_empty() { after } else { None })?),
            }
        }
        Ok(Node::and(items))
    }

    fn or(&mut self, after: Option<char>) -> Result<Node, ParseError> {
        let mut items = vec![self.and(after)?];
        loop {
            self.skip_space();
            if self.peek() != Some('|') {
                break;
            }
            self.pos += 1;
            items.push(self.and(Some('|'))?);
        }
        Ok(Node::or(items))
    }

    fn and(&mut self, after: Option<char>) -> Result<Node, ParseError> {
        let mut items = vec![self.not(after)?];
        loop {
            self.skip_space();
            if self.peek() != Some('&') {
                break;
            }
            self.pos += 1;
            items.push(self.not(Some('&'))?);
        }
        Ok(Node::and(items))
    }

    fn not(&mut self, after: Option<char>) -> Result<Node, ParseError> {
        self.skip_space();
        if self.peek() != Some('!') {
            return self.primary(after);
        }
        self.deeper()?;
        self.pos += 1;
        let inner = self.not(Some('!'))?;
        self.depth -= 1;
        Ok(Node::Not(Box::new(inner)))
    }

    fn primary(&mut self, after: Option<char>) -> Result<Node, ParseError> {
        self.skip_space();
        let expected = |p: &Parser<'_>| p.error(Reason::ExpectedExpression { after, found: p.found() });
        match self.peek() {
            None | Some(')' | '&' | '|') => Err(expected(self)),
            Some('(') => {
                let open = self.pos + 1;
                self.deeper()?;
                self.pos += 1;
                let inner = self.seq(Some(open), Some('('))?;
                // `seq` stops only at the end (an error, with an open paren) or at `)`.
                self.pos += 1;
                self.depth -= 1;
                Ok(inner)
            }
            Some('~') => self.operator(),
            Some(_) => {
                let column = self.pos + 1;
                let source = self.argument().ok_or_else(|| expected(self))??;
                self.term(column, Term::Rex(RexOp::Url, self.compile(RexOp::Url, source, column)?))
            }
        }
    }

    fn term(&mut self, column: usize, term: Term) -> Result<Node, ParseError> {
        self.terms += 1;
        if self.terms > self.limits.max_terms {
            return Err(ParseError { column, reason: Reason::TooManyTerms(self.limits.max_terms) });
        }
        Ok(Node::Term(term))
    }

    /// `~name` and its argument.
    fn operator(&mut self) -> Result<Node, ParseError> {
        let start = self.pos;
        self.pos += 1;
        while self.peek().is_some_and(|c| !is_space(c) && !WORD_STOP.contains(&c)) {
            self.pos += 1;
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        let column = start + 1;
        if let Some(flag) = Flag::ALL.into_iter().find(|f| f.name() == name) {
            return self.term(column, Term::Flag(flag));
        }
        if name == "~c" {
            self.skip_space();
            let digits_start = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            if self.pos == digits_start {
                return Err(self.error(Reason::ExpectedCode { found: self.found() }));
            }
            let raw: String = self.chars[digits_start..self.pos].iter().collect();
            let trimmed = raw.trim_start_matches('0');
            let digits = if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() };
            let code = digits.parse::<u16>().ok();
            return self.term(column, Term::Code { digits, code });
        }
        let Some(op) = RexOp::ALL.into_iter().find(|op| op.name() == name) else {
            return Err(ParseError { column, reason: Reason::UnknownOperator(name) });
        };
        self.skip_space();
        let arg_column = self.pos + 1;
        let source = match self.argument() {
            Some(source) => source?,
            None => return Err(self.error(Reason::ExpectedRegex { operator: op.name(), found: self.found() })),
        };
        let rex = self.compile(op, source, arg_column)?;
        self.term(column, Term::Rex(op, rex))
    }

    /// A word or a quoted string at the cursor, unquoted; `None` if there is neither.
    fn argument(&mut self) -> Option<Result<String, ParseError>> {
        match self.peek()? {
            quote @ ('"' | '\'') => Some(self.quoted(quote)),
            c if is_space(c) || WORD_STOP.contains(&c) => None,
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| !is_space(c) && !WORD_STOP.contains(&c)) {
                    self.pos += 1;
                }
                Some(Ok(self.chars[start..self.pos].iter().collect()))
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Result<String, ParseError> {
        let open = self.pos;
        let unterminated = ParseError { column: open + 1, reason: Reason::Unterminated(quote) };
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None | Some('\n' | '\r') => return Err(unterminated),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(text);
                }
                Some('\\') => {
                    let (escaped, len) = match self.chars.get(self.pos + 1) {
                        None | Some('\n' | '\r') => return Err(unterminated),
                        Some(&c) => self.unescape(c),
                    };
                    text.push(escaped);
                    self.pos += 1 + len;
                }
                Some(c) => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// The character a backslash and `c` (at the cursor + 1) stand for in quotes, and how
    /// many characters after the backslash that takes: pyparsing's whitespace escapes, `\0`,
    /// three octal digits, `\xHH`, `\uHHHH`, else `c` itself.
    fn unescape(&self, c: char) -> (char, usize) {
        let after = &self.chars[self.pos + 1..];
        let number = |len: usize, radix: u32| -> Option<char> {
            let digits: String = after.get(..len)?.iter().collect();
            if !digits.chars().all(|d| d.is_digit(radix)) {
                return None;
            }
            char::from_u32(u32::from_str_radix(&digits, radix).ok()?)
        };
        let hex = |len: usize| -> Option<char> {
            let digits: String = after.get(1..1 + len)?.iter().collect();
            if !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                return None;
            }
            char::from_u32(u32::from_str_radix(&digits, 16).ok()?)
        };
        match c {
            't' => ('\t', 1),
            'n' => ('\n', 1),
            'f' => ('\x0c', 1),
            'r' => ('\r', 1),
            '0'..='7' if number(3, 8).is_some() => (number(3, 8).expect("checked"), 3),
            '0' => ('\0', 1),
            'x' if hex(2).is_some() => (hex(2).expect("checked"), 3),
            'u' if hex(4).is_some() => (hex(4).expect("checked"), 5),
            c => (c, 1),
        }
    }

    fn compile(&self, op: RexOp, source: String, column: usize) -> Result<Rex, ParseError> {
        let dialect = op.dialect();
        let pattern = pyre::translate(&source);
        let size = self.limits.regex_size;
        let regex_error = |e: regex::Error| {
            let message = match e {
                regex::Error::Syntax(text) => {
                    text.lines().last().unwrap_or_default().trim().trim_start_matches("error: ").to_owned()
                }
                regex::Error::CompiledTooBig(limit) => format!("compiled, it is over the limit of {limit} bytes"),
                e => e.to_string(),
            };
            ParseError { column, reason: Reason::Regex { operator: op.name(), message } }
        };
        let compiled = if dialect.bytes {
            let re = regex::bytes::RegexBuilder::new(&pattern)
                .unicode(false)
                .case_insensitive(true)
                .multi_line(dialect.multi_line)
                .dot_matches_new_line(dialect.dot_all)
                .size_limit(size)
                .dfa_size_limit(size)
                .build()
                .map_err(regex_error)?;
            Compiled::Bytes(re)
        } else {
            let re = regex::RegexBuilder::new(&pattern)
                .case_insensitive(true)
                .multi_line(dialect.multi_line)
                .dot_matches_new_line(dialect.dot_all)
                .size_limit(size)
                .dfa_size_limit(size)
                .build()
                .map_err(regex_error)?;
            Compiled::Text(re)
        };
        Ok(Rex { source, compiled })
    }
}
