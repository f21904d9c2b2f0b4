//! The wire kept (issue 11 item 5): what the real `flowgate` binary forwards of an HTTP/1.1
//! head, measured with raw sockets against a raw origin that records the bytes it receives
//! (tests/e2e/py/wire.py): field case, order and repeats both ways, reason phrases, 1xx,
//! `OPTIONS *`, Host from the absolute form, head limits by count and by size, and what an
//! HTTP/2 client's fields become on HTTP/1.1. Each case runs in regular mode (absolute-form
//! requests), reverse mode and inside a CONNECT tunnel, wherever it applies; what it compares
//! and the reference proxy's results are wire.py's to say.

#[path = "support.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::*;

/// wire.py's recording origin, stopped on drop.
struct RawOrigin {
    child: Child,
    port: u16,
}

impl RawOrigin {
    fn start() -> RawOrigin {
        let mut child = Command::new(python())
            .arg(script("wire.py"))
            .arg("origin")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs (did tests/run.sh make the venv?): {e}", python().display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line).expect("port line");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("wire.py origin printed {line:?}"));
        RawOrigin { child, port }
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the client reaches the origin: `regular` (absolute-form requests to the proxy),
/// `reverse` (flowgate started as `reverse:http://ORIGIN`) or `connect` (a CONNECT tunnel).
fn flowgate_in(mode: &str, origin: &RawOrigin) -> Flowgate {
    match mode {
        "regular" | "connect" => Flowgate::start(&[]),
        "reverse" => Flowgate::start(&["--mode", &format!("reverse:http://127.0.0.1:{}", origin.port)]),
        _ => panic!("no mode {mode}"),
    }
}

/// Runs one wire.py case through a fresh flowgate in `mode`, against a fresh origin.
fn check(case: &str, mode: &str) {
    let origin = RawOrigin::start();
    let fg = flowgate_in(mode, &origin);
    let out = Command::new(python())
        .arg(script("wire.py"))
        .args(["check", "--mode", mode, "--case", case])
        .args(["--proxy", &format!("127.0.0.1:{}", fg.port), "--origin", &format!("127.0.0.1:{}", origin.port)])
        .output()
        .expect("wire.py check runs");
    assert!(
        out.status.success(),
        "wire.py {case} in {mode} mode:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One test per case and mode, `case::mode`; `CASES` is the table, which
/// `every_wire_case_has_a_test` holds against wire.py's own.
macro_rules! cases {
    ($($case:ident: $($mode:ident),+;)+) => {
        const CASES: &[(&str, &[&str])] = &[$((stringify!($case), &[$(stringify!($mode)),+])),+];
        $(mod $case {
            $(#[test]
            fn $mode() {
                super::check(stringify!($case), stringify!($mode));
            })+
        })+
    };
}

cases! {
    request_order: regular, reverse, connect;
    response_order: regular, reverse, connect;
    reason: regular, reverse, connect;
    early_hints: regular, reverse, connect;
    options_asterisk: regular, reverse, connect;
    host_from_absolute_form: regular;
    request_fields_300: regular, reverse, connect;
    response_fields_300: regular, reverse, connect;
    huge_head_431: regular, reverse, connect;
    upstream_cl_te: regular, reverse, connect;
    head_keeps_length: regular, reverse, connect;
    codings_kept: regular, reverse, connect;
    connection_cannot_unframe: regular, reverse, connect;
    http10_chunked_closes: regular, reverse, connect;
    duplicate_host_400: regular, reverse, connect;
    h2_cookies_joined: regular, reverse;
    h2_repeats_kept: regular, reverse;
    h2_te_listed_in_connection: regular, reverse;
}

#[test]
fn every_wire_case_has_a_test() {
    let out = Command::new(python()).arg(script("wire.py")).arg("cases").output().expect("wire.py cases runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let tested: Vec<String> = CASES.iter().map(|(case, modes)| format!("{case} {}", modes.join(" "))).collect();
    assert_eq!(listed, tested, "wire.py's cases (left) and this file's tests (right) differ");
}
