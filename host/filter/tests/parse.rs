//! The parser's limits, the canonical text, errors as values, and `needs_response`: what
//! the mitmproxy cross-check in `cases.rs` cannot show.

use flowgate_filter::{Filter, Found, Limits, ParseError, Reason};

fn error(text: &str, limits: &Limits) -> ParseError {
    Filter::parse_with(text, limits).expect_err(text)
}

#[test]
fn the_length_limit_is_applied() {
    let limits = Limits { max_len: 15, ..Limits::default() };
    assert!(Filter::parse_with("~d example\\.com", &limits).is_ok()); // 15 bytes
    let e = error("~d example\\.comm", &limits);
    assert_eq!((e.column(), e.reason()), (16, &Reason::TooLong { len: 16, limit: 15 }));
    assert_eq!(e.to_string(), "column 16: the filter is 16 bytes long, over the limit of 15");
    // The column counts characters, and a cut inside a character is not a panic.
    let e = error("~d ééééééééé", &limits);
    assert_eq!((e.column(), e.reason()), (10, &Reason::TooLong { len: 21, limit: 15 }));
    let long = format!("~u {}", "a".repeat(Limits::DEFAULT_MAX_LEN));
    assert!(matches!(Filter::parse(&long).expect_err("too long").reason(), Reason::TooLong { .. }));
}

#[test]
fn the_depth_limit_is_applied_to_parentheses_and_negations() {
    let limits = Limits { max_depth: 3, ..Limits::default() };
    assert!(Filter::parse_with("(((~q)))", &limits).is_ok());
    assert!(Filter::parse_with("!!!~q", &limits).is_ok());
    assert!(Filter::parse_with("!(!(~q))", &limits).is_err());
    let e = error("((((~q))))", &limits);
    assert_eq!((e.column(), e.reason()), (4, &Reason::TooDeep(3)));
    assert_eq!(error("!!!!~q", &limits).to_string(), "column 4: nested deeper than 3 levels of '(' and '!'");
    // A hostile filter within the length limit is refused, not a stack overflow.
    let deep = format!("{}~q{}", "(".repeat(2000), ")".repeat(2000));
    assert_eq!(Filter::parse(&deep).expect_err("too deep").reason(), &Reason::TooDeep(Limits::DEFAULT_MAX_DEPTH));
    let bangs = format!("{}~q", "!".repeat(4000));
    assert_eq!(Filter::parse(&bangs).expect_err("too deep").reason(), &Reason::TooDeep(Limits::DEFAULT_MAX_DEPTH));
    let ok = format!("{}~q{}", "(".repeat(Limits::DEFAULT_MAX_DEPTH), ")".repeat(Limits::DEFAULT_MAX_DEPTH));
    assert!(Filter::parse(&ok).is_ok());
}

#[test]
fn the_term_limit_is_applied() {
    let limits = Limits { max_terms: 3, ..Limits::default() };
    assert!(Filter::parse_with("~q ~s | a", &limits).is_ok());
    let e = error("~q ~s | a & b", &limits);
    assert_eq!((e.column(), e.reason()), (13, &Reason::TooManyTerms(3)));
    let many = vec!["~q"; Limits::DEFAULT_MAX_TERMS + 1].join(" ");
    assert_eq!(Filter::parse(&many).expect_err("too many").reason(), &Reason::TooManyTerms(Limits::DEFAULT_MAX_TERMS));
}

#[test]
fn the_regex_size_limit_is_applied() {
    let limits = Limits { regex_size: 10_000, ..Limits::default() };
    assert!(Filter::parse_with("~b a{10}", &limits).is_ok());
    let e = error("~q & ~b a{1000}{1000}", &limits);
    assert_eq!(e.column(), 9);
    assert!(matches!(e.reason(), Reason::Regex { operator: "~b", .. }), "{e}");
    assert!(Filter::parse("~b (?s:.){1000}{1000}").is_err(), "the default refuses a huge regex too");
}

#[test]
fn errors_are_values() {
    let e = error("~q & ", &Limits::default());
    assert_eq!(e.column(), 6);
    assert_eq!(e.reason(), &Reason::ExpectedExpression { after: Some('&'), found: Found::End });
    assert_eq!(e.to_string(), "column 6: expected a filter expression after '&', found the end");
    let e = "~q ~zz".parse::<Filter>().expect_err("unknown");
    assert_eq!((e.column(), e.reason()), (4, &Reason::UnknownOperator("~zz".into())));
}

/// `text` parses, prints as `canonical`, and `canonical` prints as itself.
fn canonical(text: &str, canonical: &str) {
    let filter = Filter::parse(text).expect(text);
    assert_eq!(filter.to_string(), canonical, "{text}");
    let again = Filter::parse(canonical).expect(canonical);
    assert_eq!((&again, again.to_string().as_str()), (&filter, canonical), "{text}");
}

#[test]
fn the_canonical_text_is_explicit_and_reads_back() {
    canonical("example.com", "~u example.com");
    canonical("~q ~s | ~e", "~q & (~s | ~e)");
    canonical("~q & ~s | ~e", "~q & ~s | ~e");
    canonical("(~q | ~s) (~e | ~a)", "(~q | ~s) & (~e | ~a)");
    canonical("!(~q & ~s)", "!(~q & ~s)");
    canonical("! ! ~q", "!!~q");
    canonical("((~q))", "~q");
    canonical("~q & (~s & ~e)", "~q & ~s & ~e");
    canonical("~c 0200", "~c 200");
    canonical("~c 000", "~c 0");
    canonical("~h 'a b'", "~h \"a b\"");
    canonical("~b \"x\\\\.y\"", "~b x\\.y");
    canonical("~b x\\.y", "~b x\\.y");
    canonical("~b 'say \"hi\"'", "~b \"say \\\"hi\\\"\"");
    canonical("~b \"\\t\\n\\r\\f\"", "~b \"\\t\\n\\r\\f\"");
    canonical("~b \"(a|b)\"", "~b \"(a|b)\"");
    canonical("~u !x", "~u !x");
    canonical("\"!x\"", "~u !x");
    canonical("~u ''", "~u \"\"");
    canonical("~meta \"it's\"", "~meta \"it's\"");
    // Quoted escapes as pyparsing reads them.
    assert_eq!(Filter::parse("~b \"\\x41\\101\\u0041\\0\"").expect("parses").to_string(), "~b AAA\0");
}

#[test]
fn needs_response_names_what_comes_with_or_after_it() {
    for text in ["~s", "~q", "~c 200", "~a", "~h x", "~hs x", "~t x", "~ts x", "~b x", "~bs x", "~bq x", "~websocket"] {
        assert!(Filter::parse(text).expect(text).needs_response(), "{text}");
        assert!(Filter::parse(&format!("~d x & !({text})")).expect(text).needs_response(), "{text}");
    }
    for text in [
        "~all",
        "~http",
        "~tcp",
        "~udp",
        "~dns",
        "~e",
        "~marked",
        "~replay",
        "~replayq",
        "~replays",
        "~m x",
        "~d x",
        "~u x",
        "x",
        "~hq x",
        "~tq x",
        "~src x",
        "~dst x",
        "~meta x",
        "~marker x",
        "~comment x",
    ] {
        assert!(!Filter::parse(text).expect(text).needs_response(), "{text}");
    }
    assert!(!Filter::parse("~d example\\.com & !~m POST | ~hq secret").expect("parses").needs_response());
}

#[test]
fn settled_by_request_head_names_what_a_request_head_fixes() {
    for text in ["~all", "~http", "~tcp", "~udp", "~dns", "~m x", "~d x", "~u x", "x", "~hq x", "~tq x", "~src x"] {
        assert!(Filter::parse(text).expect(text).settled_by_request_head(), "{text}");
        assert!(Filter::parse(&format!("~d y | !({text})")).expect(text).settled_by_request_head(), "{text}");
    }
    for text in [
        "~s",
        "~q",
        "~c 200",
        "~a",
        "~h x",
        "~hs x",
        "~t x",
        "~ts x",
        "~b x",
        "~bs x",
        "~bq x",
        "~websocket",
        "~e",
        "~marked",
        "~replay",
        "~replayq",
        "~replays",
        "~dst x",
        "~meta x",
        "~marker x",
        "~comment x",
    ] {
        assert!(!Filter::parse(text).expect(text).settled_by_request_head(), "{text}");
        assert!(!Filter::parse(&format!("~d y & !({text})")).expect(text).settled_by_request_head(), "{text}");
    }
}
