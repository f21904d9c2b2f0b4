//! Flows on disk through the real `flowgate` binary: `-w` saves what curl sent through
//! the proxy, `-n -r` reads it back (and mitmdump's own recordings, and HAR), the
//! positional filter and `save_stream_filter` choose flows, `hardump` writes a HAR that
//! har-validator and mitmdump accept, `export curl` gives a command that really re-sends
//! the request, a file cut by `kill -9` in the middle of a TCP stream still holds
//! what was seen, and client and server replay of a 1,000-flow recording.

#[path = "support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

/// A scratch directory of its own.
fn scratch() -> PathBuf {
    let dir = confdir().with_extension("flows");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `flowgate ARGS` without a proxy (`-n`, `export`): its output, once it exits.
fn flowgate(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("--confdir")
        .arg(confdir())
        .args(args)
        .output()
        .expect("flowgate runs");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The flow lines `flowgate -n -r FILE [ARGS]` prints, with their durations cut off.
fn read_back(file: &Path, args: &[&str]) -> Vec<String> {
    let mut all = vec!["-n", "-r", file.to_str().expect("path")];
    all.extend_from_slice(args);
    let out = flowgate(&all);
    assert!(out.status.success(), "flowgate {all:?} failed");
    String::from_utf8_lossy(&out.stdout).lines().map(without_duration).collect()
}

/// A flow line without its trailing `NNms` (and anything after it), which a flow read
/// back computes from its timestamps.
fn without_duration(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    match words.iter().rposition(|w| w.ends_with("ms") && w[..w.len() - 2].parse::<u64>().is_ok()) {
        Some(at) => words[..at].join(" "),
        None => line.to_owned(),
    }
}

/// Ends flowgate as a service manager would (SIGTERM) and waits for it to exit.
fn terminate(fg: &mut Flowgate) {
    let status = Command::new("kill").args(["-TERM", &fg.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = fg.child.try_wait().expect("status") {
            assert!(status.success(), "flowgate exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "flowgate did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn har_validator() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/har-validator/node_modules/har-validator")
}

/// Checks a HAR file with har-validator (npm), as tests/run.sh installs it.
fn assert_valid_har(path: &Path) {
    let script = format!(
        "const v = require({:?}); const har = JSON.parse(require('fs').readFileSync({:?}, 'utf8'));\
         v.har(har).then(() => console.log('valid ' + har.log.entries.length)).catch(e => {{ console.error(JSON.stringify(e.errors || e.message)); process.exit(1); }});",
        har_validator().display().to_string(),
        path.display().to_string()
    );
    let out = Command::new("node").args(["-e", &script]).output().expect("node runs");
    assert!(out.status.success(), "har-validator: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn saved_flows_read_back_filter_convert_and_replay_as_curl() {
    let origin = Origin::start(false);
    let secure = Origin::start(true);
    let dir = scratch();
    let saved = dir.join("out.fg");
    let har = dir.join("out.har");
    let mut fg =
        Flowgate::start(&["-k", "-w", saved.to_str().expect("path"), "--set", &format!("hardump={}", har.display())]);
    let proxy = fg.proxy();
    let ca = fg.ca();
    curl(&["-x", &proxy, &origin.url("http", "/first?x=1")]);
    curl(&[
        "-x",
        &proxy,
        "-H",
        "content-type: application/json",
        "--data-binary",
        r#"{"posted":true}"#,
        &origin.url("http", "/form"),
    ]);
    curl(&["-x", &proxy, "--cacert", ca.to_str().expect("ca"), &secure.url("https", "/secure")]);
    let live: Vec<String> =
        ["/first?x=1", "/form", "/secure"].iter().map(|p| without_duration(&fg.flow_line(p))).collect();
    terminate(&mut fg);
    assert!(fg.logs.lock().expect("logs").iter().any(|l| l.contains("saved 3 flows")), "the writer reports");

    // Read back, the same lines as live (durations aside).
    assert_eq!(read_back(&saved, &[]), live);
    // Without -n too, as mitmdump: read, printed, exited (unless --keepserving).
    let mut reading = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["--confdir"])
        .arg(confdir())
        .args(["-p", "0", "-r", saved.to_str().expect("path")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flowgate runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reading.try_wait().expect("status").is_none() {
        assert!(Instant::now() < deadline, "-r without -n did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut printed = String::new();
    reading.stdout.take().expect("stdout").read_to_string(&mut printed).expect("read");
    assert_eq!(printed.lines().map(without_duration).collect::<Vec<_>>(), live);
    let mut serving = Flowgate::start(&["-r", saved.to_str().expect("path"), "--keepserving"]);
    assert_eq!(curl(&["-x", &serving.proxy(), &origin.url("http", "/after-reading")]).status, 200);
    terminate(&mut serving);
    // The positional filter, and readfile_filter.
    assert_eq!(read_back(&saved, &["~m POST"]), vec![live[1].clone()]);
    assert_eq!(read_back(&saved, &["--set", "readfile_filter=~u secure"]), vec![live[2].clone()]);
    assert_eq!(read_back(&saved, &["!", "~d", "localhost"]), live[..2].to_vec(), "words joined with spaces");
    // Bodies were kept: flow_detail 3 shows the posted JSON pretty-printed.
    let detailed = read_back(&saved, &["--flow-detail", "3", "~m POST"]);
    assert!(detailed.iter().any(|l| l.trim() == r#""posted": true"#), "{detailed:#?}");
    // Converting with -n: save_stream_filter picks what is written.
    let posts = dir.join("posts.fg");
    read_back(&saved, &["-q", "-w", posts.to_str().expect("path"), "--set", "save_stream_filter=~m POST"]);
    assert_eq!(read_back(&posts, &[]), vec![live[1].clone()]);
    // The positional filter picks what is saved too, as mitmdump's (which sets
    // save_stream_filter, readfile_filter and its print filter with it).
    let gets = dir.join("gets.fg");
    read_back(&saved, &["-q", "-w", gets.to_str().expect("path"), "~m", "GET"]);
    assert_eq!(read_back(&gets, &[]), vec![live[0].clone(), live[2].clone()]);
    // Appending with +FILE.
    read_back(&saved, &["-q", "-w", &format!("+{}", posts.display()), "--set", "save_stream_filter=~m GET"]);
    assert_eq!(
        read_back(&posts, &[]),
        vec![live[1].clone(), live[0].clone(), live[2].clone()],
        "the POST, then the two GETs appended"
    );

    // hardump on exit: valid HAR 1.2, and mitmdump reads it back.
    assert_valid_har(&har);
    let text = std::fs::read_to_string(&har).expect("har");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["log"]["entries"].as_array().map(Vec::len), Some(3));
    // HAR has no client address: the rest of each line is the same.
    let after_client = |line: &String| line.split_once(": ").map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    assert_eq!(
        read_back(&har, &[]).iter().map(after_client).collect::<Vec<_>>(),
        live.iter().map(after_client).collect::<Vec<_>>(),
        "flowgate reads its HAR back"
    );

    // export curl: the command really re-sends the POST to the origin.
    let out = flowgate(&["export", "curl", saved.to_str().expect("path"), "~m", "POST"]);
    assert!(out.status.success());
    let command = String::from_utf8(out.stdout).expect("text");
    assert!(command.starts_with("curl -X POST"), "{command}");
    let before = origin.seen.paths().len();
    let replayed = Command::new("sh").args(["-c", &format!("{} -s -o /dev/null", command.trim())]).status();
    assert!(replayed.expect("sh").success());
    assert_eq!(origin.seen.paths()[before..], ["/form".to_owned()]);
    // export har: valid too.
    let out = flowgate(&["export", "har", saved.to_str().expect("path")]);
    let exported = dir.join("export.har");
    std::fs::write(&exported, &out.stdout).expect("write");
    assert_valid_har(&exported);
}

#[test]
fn mitmdumps_own_recording_reads_back() {
    let origin = Origin::start(false);
    let dir = scratch();
    let recorded = dir.join("mitm.flows");
    let mut mitm = Mitmdump::start(&["-w", recorded.to_str().expect("path")]);
    let proxy = format!("http://127.0.0.1:{}", mitm.port);
    curl(&["-x", &proxy, &origin.url("http", "/via-mitmdump")]);
    curl(&["-x", &proxy, "--data-binary", "abc", &origin.url("http", "/posted-via-mitmdump")]);
    // mitmdump writes each flow as it ends; stop it so the file is whole.
    let _ = Command::new("kill").args(["-INT", &mitm.child.id().to_string()]).status();
    let _ = mitm.child.wait();
    let lines = read_back(&recorded, &[]);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("GET http://127.0.0.1:") && lines[0].contains("/via-mitmdump << 200 OK"), "{lines:#?}");
    assert!(lines[1].contains("POST") && lines[1].contains("/posted-via-mitmdump << 200"), "{lines:#?}");
    // Converted to flowgate's format, with a filter.
    let converted = dir.join("converted.fg");
    read_back(&recorded, &["-q", "-w", converted.to_str().expect("path"), "--set", "save_stream_filter=~m POST"]);
    assert_eq!(read_back(&converted, &[]), vec![lines[1].clone()]);
}

#[test]
fn a_flow_file_cut_by_kill_9_keeps_what_a_tcp_stream_carried() {
    // A server that answers each line; the stream stays open when flowgate is killed.
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = server.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = server.accept() else { return };
        let mut buf = [0u8; 256];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || stream.write_all(b"pong\n").is_err() {
                return;
            }
        }
    });
    let dir = scratch();
    let saved = dir.join("flows-%Y.fg");
    let mut fg = Flowgate::start(&["-w", saved.to_str().expect("path")]);
    let file = dir.join(format!("flows-{}.fg", chrono_year()));
    let mut stream = TcpStream::connect(("127.0.0.1", fg.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").expect("CONNECT");
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).expect("CONNECT reply");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    for _ in 0..3 {
        stream.write_all(b"ping\n").expect("ping");
        let mut pong = [0u8; 5];
        stream.read_exact(&mut pong).expect("pong");
    }
    // The messages reach the file while the stream is open (read back until they do).
    let expected = format!("tcp 127.0.0.1:{port} >> 15b << 15b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_line(&file).contains(&expected) {
        assert!(Instant::now() < deadline, "no {expected:?} in {:?}", tcp_line(&file));
        std::thread::sleep(Duration::from_millis(50));
    }
    fg.child.kill().expect("kill -9");
    let _ = fg.child.wait();
    // A torn record at the end (a write the crash cut short) is skipped, not an error.
    let mut bytes = std::fs::read(&file).expect("file");
    let whole = bytes.len();
    let torn = bytes[16..40].to_vec();
    bytes.extend_from_slice(&torn);
    std::fs::write(&file, &bytes).expect("write");
    let out = flowgate(&["-n", "-r", file.to_str().expect("path")]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&expected));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("cut short at byte {whole}")),
        "the torn tail is reported where it starts"
    );
    // Appending after the crash cuts the torn tail and goes on from the last whole record.
    let copy = dir.join("copy.fg");
    std::fs::copy(&file, &copy).expect("copy");
    read_back(&copy, &["-q", "-w", &format!("+{}", file.display())]);
    let out = flowgate(&["-n", "-r", file.to_str().expect("path")]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cut short"), "appending cut the torn tail off");
    assert!(std::fs::metadata(&file).expect("file").len() > whole as u64);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&expected));
}

/// The TCP flow's line of a flow file.
fn tcp_line(file: &Path) -> String {
    read_back(file, &[]).into_iter().find(|l| l.contains(": tcp ")).unwrap_or_default()
}

fn chrono_year() -> String {
    let out = Command::new("date").arg("+%Y").output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs tests/e2e/py/NAME with the flowgate binary, a confdir and a scratch directory; the
/// one JSON line of figures it prints.
fn run_script(name: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script(name))
        .arg(env!("CARGO_BIN_EXE_flowgate"))
        .arg(confdir())
        .arg(scratch())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

/// Client replay of a 1,000-flow recording reaches a local origin as recorded (method,
/// target, fields in order and case, body), one at a time in order and 8 at a time;
/// server replay of the same file answers with no origin running, byte-identical, a
/// request it does not hold gets `server_replay_extra`, and flowgate exits once every
/// saved response was served (tests/e2e/py/replay.py, Python's http.client and
/// http.server as client and origin).
#[test]
fn client_and_server_replay_a_thousand_flows() {
    let figures = run_script("replay.py");
    assert_eq!(figures["flows"], 1000, "{figures}");
    eprintln!("replay: {figures}");
}

/// A HEAD answer has no body: it is recorded as empty, not as a body that was not stored
/// (which would make it unservable by server replay); and a flow saved is printed once.
#[test]
fn a_head_answer_is_recorded_with_an_empty_body() {
    let origin = Origin::start(false);
    let dir = scratch();
    let file = dir.join("head.fg");
    let mut fg = Flowgate::start(&["-w", file.to_str().expect("path")]);
    let reply = curl(&["-x", &fg.proxy(), "-I", &origin.url("http", "/page")]);
    assert_eq!(reply.status, 200);
    terminate(&mut fg);
    // Saving flows, each is still printed once.
    let printed = fg.lines.lock().expect("lines").iter().filter(|l| l.contains("HEAD http://")).count();
    assert_eq!(printed, 1, "{:?}", fg.lines.lock().expect("lines"));
    let lines = read_back(&file, &["--flow-detail", "3"]);
    assert!(lines.iter().any(|l| l.contains("HEAD http://")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("not stored")), "{lines:?}");
}

/// An HTTP/2 origin that answers a POST without reading its body (nginx's `return`): the
/// body the client sent is still recorded (it had all arrived; the stream was dropped
/// before it was read to its end).
#[test]
fn a_request_body_the_upstream_never_read_is_recorded() {
    let nginx = Nginx::start(&[], "location / { return 200 \"answered\\n\"; }");
    let dir = scratch();
    let file = dir.join("unread.fg");
    let mut fg = Flowgate::start(&["-k", "-w", file.to_str().expect("path")]);
    let url = format!("https://localhost:{}/form", nginx.tls_port);
    // Ten: whether the stream is dropped before its end was read is a race.
    for _ in 0..10 {
        let reply =
            curl(&["--http2", "-x", &fg.proxy(), "--cacert", fg.ca().to_str().expect("path"), "-d", "a=b", &url]);
        assert_eq!((reply.status, reply.body.as_str()), (200, "answered\n"));
    }
    terminate(&mut fg);
    let lines = read_back(&file, &["--flow-detail", "3"]);
    assert_eq!(lines.iter().filter(|l| l.contains("POST https://localhost")).count(), 10, "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("not stored")), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.trim() == "a=b").count(), 10, "{lines:?}");
}

/// kill -9 under load, ten times with fixed seeds: every file reads (a torn last record is
/// skipped) and holds every flow the clients had finished but at most the ones in flight
/// and the records still on their way to the writer thread (two per client);
/// SIGTERM under load: flowgate finishes what is in flight, closes the connections, and
/// the file holds every flow that finished (tests/e2e/py/crash.py, eight http.client
/// clients on keep-alive connections).
#[test]
fn a_recording_killed_under_load_keeps_what_finished() {
    let figures = run_script("crash.py");
    assert_eq!(figures["kill9"].as_array().map(Vec::len), Some(10), "{figures}");
    eprintln!("crash: {figures}");
}

/// `flowgate plugin test --flows` over flows recorded through the proxy: what the plugin
/// changes is printed per flow, `--save` keeps the results and `--expect` holds a plugin
/// to them (exit 1 once its config changes what it does); a manifest `filter` limits the
/// flows it touches.
#[test]
fn plugin_test_over_recorded_flows_reports_changes_and_checks_expectations() {
    let origin = Origin::start(false);
    let dir = scratch();
    let recording = dir.join("traffic.fg");
    let mut fg = Flowgate::start(&["-q", "-w", recording.to_str().expect("path")]);
    let url = origin.url("http", "/page");
    assert_eq!(curl(&["-x", &fg.proxy(), &url]).status, 200);
    assert_eq!(curl(&["-x", &fg.proxy(), "-d", "a=1", &url]).status, 200);
    terminate(&mut fg);
    let plugin = |extra: &str| {
        let text = format!(
            "name = \"add-header\"\n{extra}[config]\nrequest = \"X-Flowgate: 1\"\nresponse = \"X-Checked: yes\"\n"
        );
        flowgate_tests::manifest(flowgate_tests::plugins::ADD_HEADER, &text)
    };
    let test = |manifest: &Path, more: &[&str]| {
        let mut args =
            vec!["plugin", "test", manifest.to_str().expect("path"), "--flows", recording.to_str().expect("path")];
        args.extend_from_slice(more);
        flowgate(&args)
    };
    let golden = dir.join("golden.fg");
    let out = test(&plugin(""), &["--save", golden.to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("+ X-Flowgate: 1").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("+ X-Checked: yes").count(), 2, "{stdout}");
    assert!(stdout.contains("2 flows, 2 changed by the plugin"), "{stdout}");
    let out = test(&plugin(""), &["--expect", golden.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // The same plugin set up differently breaks the expectation.
    let changed = flowgate_tests::manifest(
        flowgate_tests::plugins::ADD_HEADER,
        "name = \"add-header\"\n[config]\nrequest = \"X-Flowgate: 1\"\nresponse = \"X-Checked: no\"\n",
    );
    let out = test(&changed, &["--expect", golden.to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(r#"missing "X-Checked: yes", unexpected "X-Checked: no""#), "{stdout}");
    // config.toml's table for this plugin applies, another plugin's is ignored, and
    // --set wins over the file.
    let conf = confdir();
    std::fs::create_dir_all(&conf).expect("confdir");
    std::fs::write(
        conf.join("config.toml"),
        "[other-plugin]\nx = \"1\"\n[add-header]\nresponse = \"X-Checked: file\"\n",
    )
    .expect("config.toml");
    let with_config = |more: &[&str]| {
        let manifest = plugin("");
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
        command.arg("--confdir").arg(&conf).args(["plugin", "test"]).arg(&manifest).arg("--flows").arg(&recording);
        String::from_utf8_lossy(&command.args(more).output().expect("flowgate runs").stdout).into_owned()
    };
    let stdout = with_config(&[]);
    assert_eq!(stdout.matches("+ X-Checked: file").count(), 2, "{stdout}");
    let stdout = with_config(&["--set", "add-header.response=X-Checked: cli"]);
    assert_eq!(stdout.matches("+ X-Checked: cli").count(), 2, "{stdout}");
    // The same for a test case (here the synthetic GET): the other plugin's table is no error.
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .arg("--confdir")
        .arg(&conf)
        .args(["plugin", "test"])
        .arg(plugin(""))
        .output()
        .expect("flowgate runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("+ X-Checked: file"), "{stdout}");
    // With a manifest filter, only the POST is the plugin's.
    let out = test(&plugin("filter = \"~m POST\"\n"), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("2 flows, 1 changed by the plugin"), "{stdout}");
}
