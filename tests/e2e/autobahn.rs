//! Autobahn's WebSocket test cases (run by kosoku, PyPI) through flowgate, both ways:
//! kosoku's fuzzing client -> flowgate in reverse mode -> an echo server (wsproto), and a
//! client under test (Python websockets, tests/e2e/py/ws.py) -> flowgate as an explicit
//! proxy -> kosoku's fuzzing server. Every case but the 9.x performance group, with the
//! 12.x/13.x (permessage-deflate) cases cut to their first four payload sizes; the
//! verdicts are diffed against the ones kept in tests/e2e/autobahn/, as tungstenite keeps
//! its own. tests/e2e/autobahn.sh runs the whole set (9.x aside) and prints the counts.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{Flowgate, confdir, python};

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e")
}

/// kosoku, from the test virtualenv beside its Python.
fn kosoku() -> PathBuf {
    python().with_file_name("kosoku")
}

/// The cases CI runs: groups 1-7 and 10 whole, 12.x.1-4 and 13.x.1-4.
fn subset() -> Vec<String> {
    let mut args: Vec<String> = ["1", "2", "3", "4", "5", "6", "7", "10"].iter().map(|g| format!("-i{g}.*")).collect();
    for (group, sections) in [(12, 5), (13, 7)] {
        for section in 1..=sections {
            for case in 1..=4 {
                args.push(format!("-i{group}.{section}.{case}"));
            }
        }
    }
    args
}

/// Each case's behaviour and close behaviour from a kosoku report directory.
fn verdicts(reports: &Path) -> BTreeMap<String, String> {
    let index = std::fs::read_to_string(reports.join("index.json")).expect("kosoku wrote index.json");
    let index: serde_json::Value = serde_json::from_str(&index).expect("JSON");
    let agent = index.as_object().and_then(|o| o.values().next()).expect("one agent");
    agent
        .as_object()
        .expect("cases")
        .iter()
        .map(|(case, v)| {
            (
                case.clone(),
                format!("{} / {}", v["behavior"].as_str().unwrap_or("?"), v["behaviorClose"].as_str().unwrap_or("?")),
            )
        })
        .collect()
}

/// Compares `got` with the kept verdicts in tests/e2e/autobahn/`name`; with
/// `FLOWGATE_AUTOBAHN_UPDATE=1` writes them instead.
fn check(name: &str, got: &BTreeMap<String, String>) {
    let kept = here().join("autobahn").join(name);
    if std::env::var_os("FLOWGATE_AUTOBAHN_UPDATE").is_some() {
        std::fs::write(&kept, serde_json::to_string_pretty(got).expect("JSON") + "\n").expect("write");
    }
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&kept).expect("kept verdicts")).expect("JSON");
    let cases: std::collections::BTreeSet<&String> = expected.keys().chain(got.keys()).collect();
    let describe = |case: &String| format!("{case}: kept {:?}, now {:?}", expected.get(case), got.get(case));
    // NON-STRICT and OK differ by timing alone (whether an echo of what came before a bad
    // frame got out before the connection was failed), so they count as one here; every
    // exact difference is printed.
    let class = |v: Option<&String>| v.map(|v| v.replace("NON-STRICT", "OK"));
    let exact: Vec<String> = cases.iter().filter(|c| expected.get(**c) != got.get(**c)).map(|c| describe(c)).collect();
    if !exact.is_empty() {
        eprintln!("Autobahn verdicts that differ from {} only in strictness:\n{}", kept.display(), exact.join("\n"));
    }
    let differ: Vec<String> =
        cases.iter().filter(|c| class(expected.get(**c)) != class(got.get(**c))).map(|c| describe(c)).collect();
    assert!(differ.is_empty(), "Autobahn verdicts differ from {}:\n{}", kept.display(), differ.join("\n"));
    let failing: Vec<&String> = got.keys().filter(|c| !passing(&got[*c])).collect();
    assert!(failing.is_empty(), "cases that do not pass: {failing:?}");
}

/// Autobahn's passing verdicts (kosoku's rule): OK, NON-STRICT or INFORMATIONAL, and a
/// close that is OK or INFORMATIONAL.
fn passing(verdict: &str) -> bool {
    let (behavior, close) = verdict.split_once(" / ").unwrap_or((verdict, ""));
    matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL") && matches!(close, "OK" | "INFORMATIONAL")
}

/// A child whose first stdout line is its port; killed when dropped.
struct Peer {
    child: std::process::Child,
    port: u16,
}

impl Peer {
    fn start(command: &mut Command) -> Peer {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("a port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("printed {line:?}, not a port"));
        Peer { child, port }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn autobahn_fuzzing_client_through_reverse_mode() {
    let echo = Peer::start(Command::new(python()).arg(here().join("py/ws.py")).arg("echo"));
    let fg = Flowgate::start(&["-q", "--mode", &format!("reverse:http://127.0.0.1:{}", echo.port)]);
    let reports = confdir();
    let out = Command::new(kosoku())
        .arg(format!("ws://127.0.0.1:{}", fg.port))
        .args(subset())
        .args(["-p", "2", "-o"])
        .arg(&reports)
        .output()
        .expect("kosoku runs (tests/run.sh installs it)");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    check("fuzzingclient.json", &verdicts(&reports));
}

#[test]
fn autobahn_fuzzing_server_through_regular_mode() {
    let reports = confdir();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").port()
    };
    let mut server = Command::new(kosoku())
        .args(["-m", "fuzzingserver", &format!("127.0.0.1:{port}")])
        .args(subset())
        .arg("-o")
        .arg(&reports)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kosoku runs (tests/run.sh installs it)");
    // kosoku says where it listens once it does.
    let mut stderr = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("listening") {
        line.clear();
        assert!(stderr.read_line(&mut line).expect("kosoku's stderr") > 0, "kosoku exited before listening");
    }
    let fg = Flowgate::start(&["-q"]);
    let client = Command::new(python())
        .arg(here().join("py/ws.py"))
        .args(["autobahn-client", &format!("ws://127.0.0.1:{port}"), "--proxy", &fg.proxy()])
        .output()
        .expect("python runs");
    assert!(client.status.success(), "{}", String::from_utf8_lossy(&client.stderr));
    // kosoku writes its reports and exits after /updateReports.
    let status = server.wait().expect("kosoku exits");
    let rest: String = stderr.lines().map_while(Result::ok).collect::<Vec<_>>().join("\n");
    eprintln!("kosoku ({status}): {rest}");
    check("fuzzingserver.json", &verdicts(&reports));
}
