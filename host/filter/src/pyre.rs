//! Python `re` syntax rewritten for the `regex` crate, where the two read the same text
//! differently: a `{` that does not start a quantifier is a literal in Python, `{,n}` means
//! `{0,n}`, `\Z` is the end of the text, `\<` and `\>` are literal, `\b` in a class is a
//! backspace, `\0` is an octal escape, an escaped non-ASCII character is itself, and a class
//! may hold `[`, `&&`, `--` and `~~` as plain characters.
//!
//! What Python has and `regex` lacks (look-around, backreferences, conditionals, atomic
//! groups, possessive quantifiers, `\N{...}`, `(?#...)`) is left as written, so compiling
//! fails and the filter is refused. This is not a Python regex parser: it only rewrites
//! those spellings, tracking escapes and character classes.

/// Rewrites a Python pattern into one `regex` reads the same way.
pub(crate) fn translate(python: &str) -> String {
    let chars: Vec<char> = python.chars().collect();
    let mut out = String::with_capacity(python.len() + 8);
    // Where the current class's members start (after `[` and an optional `^`), if in one.
    let mut class: Option<usize> = None;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c == '\\' {
            i += escape(&chars, i, class.is_some(), &mut out);
            continue;
        }
        match class {
            Some(start) => {
                match c {
                    ']' if i > start => {
                        class = None;
                        out.push(']');
                    }
                    // Plain characters in Python, nesting and set operators in `regex`.
                    '[' | '&' | '~' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '-' if chars.get(i + 1) == Some(&'-') => {
                        out.push_str("-\\-");
                        i += 1;
                    }
                    _ => out.push(c),
                }
                i += 1;
            }
            None => {
                match c {
                    '[' => {
                        out.push('[');
                        if chars.get(i + 1) == Some(&'^') {
                            out.push('^');
                            i += 1;
                        }
                        class = Some(i + 1);
                    }
                    '{' => match quantifier(&chars[i..]) {
                        Some((text, len)) => {
                            out.push_str(&text);
                            i += len - 1;
                        }
                        None => out.push_str("\\{"),
                    },
                    '}' => out.push_str("\\}"),
                    _ => out.push(c),
                }
                i += 1;
            }
        }
    }
    out
}

/// Writes the escape at `chars[at]` (a backslash); returns how many characters it used.
fn escape(chars: &[char], at: usize, in_class: bool, out: &mut String) -> usize {
    let Some(&e) = chars.get(at + 1) else {
        out.push('\\'); // a trailing backslash: an error in both
        return 1;
    };
    match e {
        'Z' if !in_class => out.push_str("\\z"),
        'b' if in_class => out.push_str("\\x08"),
        '<' | '>' => out.push(e),
        '0' => {
            // `\0` and up to two more octal digits.
            let digits: String = chars[at + 2..].iter().take(2).take_while(|d| ('0'..='7').contains(d)).collect();
            let value = u32::from_str_radix(&digits, 8).unwrap_or(0);
            out.push_str(&format!("\\x{{{value:x}}}"));
            return 2 + digits.len();
        }
        e if !e.is_ascii() => push_literal(e, out),
        _ => {
            out.push('\\');
            out.push(e);
        }
    }
    2
}

fn push_literal(c: char, out: &mut String) {
    let mut buf = [0; 4];
    out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
}

/// A Python quantifier at the start of `text` (`{m}`, `{m,}`, `{,n}`, `{m,n}`, `{,}`) as
/// `regex` writes it, and its length in characters; `None` if the `{` is a literal.
fn quantifier(text: &[char]) -> Option<(String, usize)> {
    let digits = |from: usize| text[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let lo_len = digits(1);
    let lo: String = text[1..1 + lo_len].iter().collect();
    let mut at = 1 + lo_len;
    let hi = if text.get(at) == Some(&',') {
        let hi_len = digits(at + 1);
        let hi: String = text[at + 1..at + 1 + hi_len].iter().collect();
        at += 1 + hi_len;
        Some(hi)
    } else {
        None
    };
    if text.get(at) != Some(&'}') || (lo.is_empty() && hi.is_none()) {
        return None; // `{}`, `{x`, `{1x}`: literal
    }
    let lo = if lo.is_empty() { "0".to_owned() } else { lo };
    let text = match hi {
        None => format!("{{{lo}}}"),
        Some(hi) => format!("{{{lo},{hi}}}"),
    };
    Some((text, at + 1))
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn rewrites_what_python_reads_differently() {
        for (python, ours) in [
            ("a{2}", "a{2}"),
            ("a{2,}", "a{2,}"),
            ("a{,3}", "a{0,3}"),
            ("a{,}", "a{0,}"),
            ("a{}", "a\\{\\}"),
            ("{\"k\":", "\\{\"k\":"),
            ("x{a}", "x\\{a\\}"),
            ("end\\Z", "end\\z"),
            ("\\<a\\>", "<a>"),
            ("[\\b]", "[\\x08]"),
            ("\\bword\\b", "\\bword\\b"),
            ("[[]", "[\\[]"),
            ("[a&&b]", "[a\\&\\&b]"),
            ("[+--]", "[+-\\-]"),
            ("[]a]", "[]a]"),
            ("[^]a]{2}", "[^]a]{2}"),
            ("\\0", "\\x{0}"),
            ("\\012x", "\\x{a}x"),
            ("\\é", "é"),
            ("\\.\\*", "\\.\\*"),
            ("\\", "\\"),
        ] {
            assert_eq!(translate(python), ours, "{python}");
        }
    }
}
