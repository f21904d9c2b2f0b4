//! Plugins in JavaScript, Python and C, built from source by `flowgate plugin build` with
//! the pinned toolchains (plugins/toolchains.sh), each run in the real proxy against real
//! traffic; hostile JavaScript and Python plugins contained like the Rust ones; and
//! `flowgate plugin new` + `build` + `test` + the proxy, from nothing, in every language.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{Flowgate, Nginx, Origin, curl};

/// The non-Rust example plugins; `every_plugin_project_is_tested` checks this list
/// against plugins/*/plugin.toml, so a plugin without a test here fails the suite.
const TESTED: &[&str] = &["json-rewrite", "redact-secrets", "header-block", "hostile-js", "hostile-py"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every process shares the compile cache the runtime tests use, so a component is
/// compiled once per machine, not once per test.
fn cache_set() -> String {
    format!("plugin_cache_dir={}", flowgate_tests::cache_dir().display())
}

fn flowgate(args: &[&str], dir: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    command.args(args).args(["--set", &cache_set()]).current_dir(dir);
    // The outer cargo's settings are for this test binary, not for a plugin's own build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO_MAKEFLAGS"] {
        command.env_remove(var);
    }
    command.output().expect("flowgate runs")
}

fn assert_ok(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}\n(the toolchains come from `source plugins/toolchains.sh`)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Builds plugins/NAME with `flowgate plugin build`, once per test process, and returns
/// its manifest.
fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<String, Arc<OnceLock<()>>>>> = OnceLock::new();
    let once = BUILT.get_or_init(Mutex::default).lock().expect("build map").entry(name.to_owned()).or_default().clone();
    let dir = root().join("plugins").join(name);
    once.get_or_init(|| {
        let out = flowgate(&["plugin", "build", &dir.display().to_string()], &root());
        assert_ok(&format!("flowgate plugin build plugins/{name}"), &out);
    });
    dir.join("plugin.toml")
}

fn start(manifest: &Path, sets: &[&str]) -> Flowgate {
    let manifest = manifest.display().to_string();
    let cache = cache_set();
    let mut args = vec!["-s", manifest.as_str(), "--set", cache.as_str()];
    for set in sets {
        args.extend(["--set", set]);
    }
    Flowgate::start(&args)
}

#[test]
fn every_plugin_project_is_tested() {
    let mut projects = Vec::new();
    for entry in std::fs::read_dir(root().join("plugins")).expect("plugins/").flatten() {
        let text = std::fs::read_to_string(entry.path().join("plugin.toml")).unwrap_or_default();
        if text.lines().any(|l| l.trim() == "[build]") {
            projects.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    projects.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| (*s).to_owned()).collect();
    tested.sort();
    assert_eq!(projects, tested, "each plugin project in plugins/ needs an end-to-end test here");
}

#[test]
fn json_rewrite_in_javascript_edits_api_responses() {
    let manifest = built("json-rewrite");
    let origin = Origin::start(false);
    let fg = start(&manifest, &[r#"json-rewrite.fields=user.email="hidden@example.com", features.beta=true"#]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/api/user")]);
    assert_eq!(reply.status, 200);
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("still JSON");
    assert_eq!(json["user"]["email"], "hidden@example.com", "{}", reply.body);
    assert_eq!(json["features"]["beta"], true, "{}", reply.body);
    assert_eq!(json["user"]["name"], "Ada", "other fields are kept: {}", reply.body);
    assert!(reply.headers.contains("x-json-rewrite: 2"), "{}", reply.headers);
    // Not JSON: untouched.
    let page = curl(&["-x", &fg.proxy(), &origin.url("http", "/page")]);
    assert!(page.body.starts_with("<h1>Example Domain</h1>"), "{}", page.body);
    assert!(!page.headers.contains("x-json-rewrite"), "{}", page.headers);
}

/// json-rewrite on an origin that compresses on the fly (nginx `gzip on`, chunked): the
/// plugin reads the JSON decoded (`decoded-body`) and writes it back gzip-encoded
/// (`set-decoded-body`) with a `Content-Length` that fits, so the client gets what it
/// asked for. Before WIT 0.2.1 it passed such answers untouched.
#[test]
fn json_rewrite_edits_gzip_json_from_nginx() {
    let manifest = built("json-rewrite");
    let doc = format!(
        r#"{{"user":{{"name":"Ada","email":"ada@example.com"}},"features":{{"beta":false}},"notes":"{}"}}"#,
        "compressible ".repeat(200)
    );
    // /user.json is compressed as it is sent (chunked); /static/user.json is the .gz beside
    // it (gzip_static: a Content-Length).
    let gz = flowgate_content::encode("gzip", doc.as_bytes()).expect("gzip");
    let nginx = Nginx::start(
        &[("user.json", doc.as_bytes()), ("static/user.json.gz", &gz)],
        "gzip on; gzip_types application/json; gzip_min_length 1; location /static/ { gzip_static on; }",
    );
    let url = nginx.url("/user.json");
    let direct = curl(&["--compressed", &url]);
    assert!(direct.headers.to_ascii_lowercase().contains("content-encoding: gzip"), "nginx compresses: {direct:?}");
    assert!(direct.body.contains("ada@example.com"), "{}", direct.body);

    let fg = start(&manifest, &[r#"json-rewrite.fields=user.email="hidden@example.com", features.beta=true"#]);
    // curl decodes the answer itself (and fails on a body that is not gzip).
    let reply = curl(&["-x", &fg.proxy(), "--compressed", &url]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let headers = reply.headers.to_ascii_lowercase();
    assert!(headers.contains("content-encoding: gzip"), "still gzip-encoded: {headers}");
    assert!(headers.contains("x-json-rewrite: 2"), "{headers}");
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(json["user"]["email"], "hidden@example.com", "{}", reply.body);
    assert_eq!(json["features"]["beta"], true, "{}", reply.body);
    assert_eq!(json["notes"].as_str().map(str::len), Some(13 * 200), "other fields are kept");

    // The bytes on the wire, from a file nginx sends with a Content-Length: gzip that
    // decodes to the rewritten JSON, and a Content-Length that is their size.
    let raw = fg.confdir.join("raw.gz");
    let fetch = |via_proxy: bool| {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-s", "-S", "--max-time", "20", "-H", "Accept-Encoding: gzip", "-D", "-", "-o"]).arg(&raw);
        if via_proxy {
            curl.args(["-x", &fg.proxy()]);
        }
        let out = curl.arg(nginx.url("/static/user.json")).output().expect("curl runs");
        (String::from_utf8_lossy(&out.stdout).to_ascii_lowercase(), std::fs::read(&raw).expect("body"))
    };
    let (head, bytes) = fetch(false);
    assert!(head.contains(&format!("content-length: {}\r\n", gz.len())) && bytes == gz, "gzip_static: {head}");
    let (head, bytes) = fetch(true);
    assert!(head.contains("content-encoding: gzip") && head.contains("x-json-rewrite: 2"), "{head}");
    assert!(head.contains(&format!("content-length: {}\r\n", bytes.len())), "{} bytes: {head}", bytes.len());
    let decoded = flowgate_content::decode("gzip", &bytes, &flowgate_content::Limits::default()).expect("gzip");
    let json: serde_json::Value = serde_json::from_slice(&decoded).expect("JSON");
    assert_eq!(json["user"]["email"], "hidden@example.com");
}

/// A plugin built against the frozen `flowgate:plugin@0.2.0` WIT (tests/e2e/wit-0.2.0, as
/// released) loads and works in this 0.2.1 host, beside a plugin built against 0.2.1:
/// 0.2.x only adds, and a user's plugin never has to be rebuilt for it.
#[test]
fn a_plugin_built_against_wit_0_2_0_still_loads() {
    let project = support::confdir();
    std::fs::create_dir_all(project.join("src")).expect("dir");
    let source = root().join("plugins/header-block");
    std::fs::copy(source.join("src/plugin.c"), project.join("src/plugin.c")).expect("copy");
    let wit = root().join("tests/e2e/wit-0.2.0").canonicalize().expect("frozen WIT");
    let toml = std::fs::read_to_string(source.join("plugin.toml")).expect("manifest");
    let toml = toml.replace(r#"wit = "../../wit""#, &format!("wit = {:?}", wit.display().to_string()));
    assert!(toml.contains("wit-0.2.0"), "the manifest points at the frozen WIT: {toml}");
    std::fs::write(project.join("plugin.toml"), toml).expect("write");
    assert_ok("plugin build (0.2.0)", &flowgate(&["plugin", "build"], &project));
    let component = std::fs::read(project.join("header_block.wasm")).expect("built");
    let has = |needle: &str| component.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("flowgate:plugin/types@0.2.0") && !has("flowgate:plugin/types@0.2.1"), "built against 0.2.0");

    let origin = Origin::start(false);
    let old = project.join("plugin.toml").display().to_string();
    let new = built("json-rewrite").display().to_string();
    let cache = cache_set();
    let fg = Flowgate::start(&["-s", &old, "-s", &new, "--set", &cache]);
    let blocked = curl(&["-x", &fg.proxy(), "-A", "sqlmap/1.7.2#stable", &origin.url("http", "/login")]);
    assert_eq!(blocked.status, 403, "{blocked:?}");
    assert!(blocked.body.contains("blocked by header-block"), "{}", blocked.body);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/api/user")]);
    assert!(reply.headers.contains("x-json-rewrite: 2"), "the 0.2.1 plugin beside it works: {reply:?}");
}

#[test]
fn redact_secrets_in_python_scrubs_tokens_and_cookies() {
    let manifest = built("redact-secrets");
    let origin = Origin::start(false);
    let fg = start(&manifest, &[]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/api/session")]);
    assert_eq!(reply.status, 200);
    for secret in ["eyJhbGciOiJIUzI1NiJ9", "AKIAIOSFODNN7EXAMPLE", "abc123.def456", "s3cr3t-value"] {
        assert!(!reply.body.contains(secret) && !reply.headers.contains(secret), "{secret} leaked:\n{reply:?}");
    }
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("still JSON");
    assert_eq!(json["access_token"], "[REDACTED]", "{}", reply.body);
    assert_eq!(json["theme"], "dark", "other fields are kept: {}", reply.body);
    assert!(reply.headers.contains("set-cookie: session=[redacted]"), "{}", reply.headers);
    assert!(reply.headers.contains("x-redacted:"), "{}", reply.headers);
    // Nothing secret: nothing changed.
    let clean = curl(&["-x", &fg.proxy(), &origin.url("http", "/api/user")]);
    assert!(clean.body.contains("ada@example.com") && !clean.headers.contains("x-redacted"), "{clean:?}");
}

#[test]
fn header_block_in_c_blocks_scanners() {
    let manifest = built("header-block");
    let origin = Origin::start(false);
    let fg = start(&manifest, &[]);
    let blocked = curl(&["-x", &fg.proxy(), "-A", "sqlmap/1.7.2#stable", &origin.url("http", "/login")]);
    assert_eq!(blocked.status, 403, "{blocked:?}");
    assert!(blocked.body.contains("blocked by header-block"), "{}", blocked.body);
    assert!(origin.seen.paths().is_empty(), "a blocked request never reaches the upstream");
    let fine = curl(&["-x", &fg.proxy(), "-A", "Mozilla/5.0", &origin.url("http", "/login")]);
    assert_eq!(fine.status, 200, "{fine:?}");
    assert!(fine.body.contains("path: /login"), "{}", fine.body);
}

/// A hostile plugin misbehaves in request-headers; the flow goes on (fail-open), the
/// failure (one of `failures`) is recorded on it, the instance is replaced, and later
/// flows work.
fn contained(plugin: &str, behaviour: &str, failures: &[&str]) -> Flowgate {
    let manifest = built(plugin);
    let origin = Origin::start(false);
    let fg = start(&manifest, &[&format!("{plugin}.behaviour={behaviour}"), &format!("{plugin}.port=1")]);
    let started = Instant::now();
    for i in 0..3 {
        let reply = curl(&["-x", &fg.proxy(), &origin.url("http", &format!("/{behaviour}/{i}"))]);
        assert_eq!(reply.status, 200, "fail-open: the flow goes on: {reply:?}");
        let line = fg.flow_line(&format!("/{behaviour}/{i}"));
        let recorded = |failure: &&str| line.contains(&format!("plugin {plugin} failed in request-headers: {failure}"));
        assert!(failures.iter().any(recorded), "{line}");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    fg
}

#[test]
fn hostile_javascript_endless_loop_is_interrupted() {
    // Three 200 ms spins in a row: the deadline stops the first, the plugin's CPU budget
    // (limits.cpu_per_second, 250ms by default) may stop the later ones sooner.
    let _ = contained("hostile-js", "loop", &["deadline exceeded", "cpu budget"]);
}

#[test]
fn hostile_javascript_memory_bomb_hits_the_cap() {
    let _ = contained("hostile-js", "memory", &["memory limit"]);
}

#[test]
fn hostile_python_endless_loop_is_interrupted() {
    // Three 200 ms spins in a row: the deadline stops the first, the plugin's CPU budget
    // (limits.cpu_per_second, 250ms by default) may stop the later ones sooner.
    let _ = contained("hostile-py", "loop", &["deadline exceeded", "cpu budget"]);
}

#[test]
fn hostile_python_memory_bomb_hits_the_cap() {
    let _ = contained("hostile-py", "memory", &["memory limit"]);
}

#[test]
fn uncaught_exceptions_are_recorded_with_their_message() {
    // What the guest wrote to stderr as it died is kept in the failure, so a JavaScript
    // or Python author sees the exception, not just "unreachable".
    let fg = contained("hostile-py", "trap", &["trap"]);
    let line = fg.flow_line("/trap/0");
    assert!(line.contains("RuntimeError: hostile-py: deliberate uncaught exception"), "{line}");
    let fg = contained("hostile-js", "trap", &["trap"]);
    let line = fg.flow_line("/trap/0");
    assert!(line.contains("hostile-js: deliberate uncaught exception"), "{line}");
}

#[test]
fn python_plugin_cannot_open_sockets() {
    let manifest = built("hostile-py");
    let origin = Origin::start(false);
    let port = origin.url("http", "/").split(':').nth(2).and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
    let port = port.expect("origin port").to_string();
    let fg = start(&manifest, &["hostile-py.behaviour=connect", &format!("hostile-py.port={port}")]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/after-connect")]);
    assert_eq!(reply.status, 200);
    // The origin echoes the request's headers: the plugin's connect attempt failed.
    assert!(reply.body.contains("x-connect-error:"), "{}", reply.body);
    assert!(!reply.body.contains("x-connect: succeeded"), "{}", reply.body);
    assert_eq!(origin.seen.paths(), vec!["/after-connect"], "only the proxied request reached the origin");
}

/// `flowgate plugin new` + `build` + `test`, then the proxy with the result, as a new
/// user does it: the starter blocks /blocked and greets every response.
fn new_plugin_works(lang: &str) {
    let dir = flowgate_tests::scratch_dir(&format!("new-{lang}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let name = format!("my-{lang}-plugin");
    let out = flowgate(&["plugin", "new", "--lang", lang, &name], &dir);
    assert_ok("plugin new", &out);
    let project = dir.join(&name);
    let out = flowgate(&["plugin", "build"], &project);
    let stdout = assert_ok("plugin build", &out);
    assert!(stdout.contains("loads: exports http"), "{stdout}");
    let out = flowgate(&["plugin", "test"], &project);
    let stdout = assert_ok("plugin test", &out);
    assert!(stdout.contains(&format!("+ x-greeting: hello from {name}")), "{stdout}");
    assert_eq!(stdout.matches("\nok").count() + usize::from(stdout.starts_with("ok")), 2, "{stdout}");

    let origin = Origin::start(false);
    let fg = start(&project.join("plugin.toml"), &[]);
    let reply = curl(&["-x", &fg.proxy(), &origin.url("http", "/hello")]);
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains(&format!("x-greeting: hello from {name}")), "{}", reply.headers);
    let blocked = curl(&["-x", &fg.proxy(), &origin.url("http", "/blocked/page")]);
    assert_eq!(blocked.status, 403);
    assert_eq!(blocked.body, format!("blocked by {name}\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn new_rust_plugin_builds_and_runs() {
    new_plugin_works("rust");
}

#[test]
fn new_javascript_plugin_builds_and_runs() {
    new_plugin_works("js");
}

#[test]
fn new_python_plugin_builds_and_runs() {
    new_plugin_works("python");
}

#[test]
fn new_c_plugin_builds_and_runs() {
    new_plugin_works("c");
}

#[test]
fn plugin_test_reports_a_failed_expectation() {
    let dir = flowgate_tests::scratch_dir("expect");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    assert_ok("plugin new", &flowgate(&["plugin", "new", "--lang", "c", "strict"], &dir));
    let project = dir.join("strict");
    assert_ok("plugin build", &flowgate(&["plugin", "build"], &project));
    std::fs::write(
        project.join("tests/wrong.toml"),
        "[request]\nurl = \"http://example.com/\"\n[expect]\nstatus = 418\nresponse_headers = { \"x-greeting\" = \"bye\" }\n",
    )
    .expect("write a case");
    let out = flowgate(&["plugin", "test"], &project);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a failed expectation fails the command:\n{stdout}");
    assert!(stdout.contains("expectation failed: status is 200, expected 418"), "{stdout}");
    assert!(
        stdout.contains("expectation failed: response header x-greeting is [\"hello from strict\"], expected \"bye\""),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A C plugin made with `plugin new`, with `code` added to its source and `limits` to its
/// manifest's [limits]; returns the project directory (under `dir`).
fn c_project_with(dir: &Path, name: &str, code: &str, limits: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("temp dir");
    assert_ok("plugin new", &flowgate(&["plugin", "new", "--lang", "c", name], dir));
    let project = dir.join(name);
    let source = project.join("src/plugin.c");
    let mut text = std::fs::read_to_string(&source).expect("read plugin.c");
    text.push_str(code);
    std::fs::write(&source, text).expect("write plugin.c");
    let manifest = project.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("read plugin.toml");
    assert!(text.contains("\n[limits]\n"), "{text}");
    std::fs::write(&manifest, text.replace("\n[limits]\n", &format!("\n[limits]\n{limits}\n")))
        .expect("write plugin.toml");
    project
}

/// Making an instance has its own deadline (`limits.instantiate_timeout_ms`): a C plugin
/// whose constructor never returns is cut off there, and the proxy refuses to load it.
#[test]
fn endless_start_up_is_cut_at_instantiate_timeout() {
    let dir = flowgate_tests::scratch_dir("slow-start");
    let code = "\n__attribute__((constructor)) static void slow_start(void) {\n  for (;;) {\n  }\n}\n";
    let project = c_project_with(&dir, "slow-start", code, "instantiate_timeout_ms = 200");

    let started = Instant::now();
    let out = flowgate(&["plugin", "build"], &project);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a plugin that cannot start does not pass its build's load check");
    assert!(stderr.contains("cannot be instantiated: ran past 200ms (limits.instantiate_timeout_ms)"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    let manifest = project.join("plugin.toml");
    let out = flowgate(&["-s", &manifest.display().to_string(), "-p", "0"], &project);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the proxy refuses it");
    assert!(stderr.contains("cannot load plugin") && stderr.contains("(limits.instantiate_timeout_ms)"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The proxy binds its port at once but listens only once its plugins are loaded: a client
/// that connects while a plugin loads slowly is refused (and can retry), not left waiting
/// in the backlog, and a port-waiting script sees the proxy when it can serve.
#[test]
fn the_proxy_listens_only_once_its_plugins_are_loaded() {
    let dir = flowgate_tests::scratch_dir("slow-load");
    // Every instance takes 1.5 s to start, the one made at load included.
    let code = "\n#include <time.h>\n__attribute__((constructor)) static void slow_start(void) {\n  \
                struct timespec a, b;\n  clock_gettime(CLOCK_MONOTONIC, &a);\n  do {\n    \
                clock_gettime(CLOCK_MONOTONIC, &b);\n  } while ((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 1500);\n}\n";
    let project = c_project_with(&dir, "slow-load", code, "instantiate_timeout_ms = 10000");
    assert_ok("plugin build", &flowgate(&["plugin", "build"], &project));

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let manifest = project.join("plugin.toml").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["--listen-host", "127.0.0.1", "-p", &port.to_string(), "-s", &manifest, "--set", &cache_set()])
        .arg("--confdir")
        .arg(dir.join("conf"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("flowgate starts");
    let started = Instant::now();
    let accepted = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "flowgate never listened");
        assert!(child.try_wait().expect("wait").is_none(), "flowgate exited");
        std::thread::sleep(Duration::from_millis(10));
    };
    let origin = Origin::start(false);
    let reply = curl(&["-x", &format!("http://127.0.0.1:{port}"), &origin.url("http", "/hello")]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(accepted >= Duration::from_millis(1400), "connected after {accepted:?}, before the plugin had loaded");
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains("x-greeting: hello from slow-load"), "{}", reply.headers);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hot reload: the `-s` files are watched. Under load (curl in a loop through the proxy),
/// a changed config and then a changed component switch the responses over with no
/// request failing, and a broken component is refused while the running version stays;
/// a manifest that comes to name a component in another directory has that directory
/// watched from then on. The flows are saved (`-w`) beside the plugin: a file written on
/// every flow in the watched directory neither starves the reload nor sets it off.
#[test]
fn a_changed_plugin_is_reloaded_under_load() {
    let dir = flowgate_tests::scratch_dir("reload");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wasm = dir.join("plugin.wasm");
    let manifest = dir.join("plugin.toml");
    // Written whole under another name, then renamed: a reload never sees half a file.
    let replace = |path: &Path, bytes: &[u8]| {
        let tmp = dir.join(".incoming");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    };
    let config_at = |wasm: &str, version: &str| {
        format!("name = \"live\"\nwasm = \"{wasm}\"\n[config]\nresponse = \"X-Version: {version}\"\n")
    };
    let config = |version: &str| config_at("plugin.wasm", version);
    replace(&wasm, &std::fs::read(flowgate_tests::plugins::ADD_HEADER).expect("add-header is built"));
    replace(&manifest, config("one").as_bytes());
    let origin = Origin::start(false);
    let flows = dir.join("flows.fg");
    let fg = start(&manifest, &[&format!("save_stream_file={}", flows.display())]);

    // The load: one curl after another, each response's status and headers kept.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let looping = {
        let (stop, seen, proxy, url) = (stop.clone(), seen.clone(), fg.proxy(), origin.url("http", "/live"));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("curl")
                    .args(["-s", "--max-time", "10", "-o", "/dev/null", "-D", "-", "-x", &proxy, &url])
                    .output()
                    .expect("curl runs");
                let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                seen.lock().expect("seen").push((status, head));
            }
        })
    };
    // Waits (bounded) until `n` responses after the `from`-th satisfy `want`; returns how
    // many responses there were then.
    let until = |from: usize, n: usize, want: &dyn Fn(&str) -> bool, what: &str| -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let seen = seen.lock().expect("seen");
                if seen.iter().skip(from).filter(|(_, h)| want(h)).count() >= n {
                    return seen.len();
                }
            }
            assert!(Instant::now() < deadline, "no {what} after {from} responses");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let now = until(0, 3, &|h| h.contains("x-version: one"), "x-version: one");

    // A new config: the manifest changes.
    replace(&manifest, config("two").as_bytes());
    let now = until(now, 3, &|h| h.contains("x-version: two"), "x-version: two");
    assert_eq!(fg.count_logs("reloaded plugin live"), 1);

    // A new component: request-id instead of add-header.
    replace(&wasm, &std::fs::read(flowgate_tests::plugins::REQUEST_ID).expect("request-id is built"));
    let now = until(now, 3, &|h| h.contains("x-request-id:") && !h.contains("x-version"), "request-id's header");

    // A broken component is refused and request-id stays.
    replace(&wasm, b"\0asm but not really");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fg.count_logs("refused, plugin live keeps running as it was") == 0 {
        assert!(Instant::now() < deadline, "the broken component was not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused_at = seen.lock().expect("seen").len();
    let moved_at = until(refused_at, 5, &|_| true, "responses after the refusal");
    {
        let seen = seen.lock().expect("seen");
        assert!(
            seen[refused_at..moved_at].iter().all(|(_, h)| h.contains("x-request-id:")),
            "after the refusal request-id still answers"
        );
        assert!(
            seen[now..moved_at].iter().all(|(_, h)| !h.contains("x-version")),
            "no response went back to add-header"
        );
    }

    // The manifest names a component in another directory: that directory is watched
    // from then on, so a change to the component there is reloaded too.
    let elsewhere = dir.join("v3");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    replace(&elsewhere.join("plugin.wasm"), &std::fs::read(flowgate_tests::plugins::ADD_HEADER).expect("built"));
    replace(&manifest, config_at("v3/plugin.wasm", "three").as_bytes());
    let now = until(moved_at, 3, &|h| h.contains("x-version: three"), "x-version: three");
    replace(&elsewhere.join("plugin.wasm"), &std::fs::read(flowgate_tests::plugins::REQUEST_ID).expect("built"));
    until(now, 3, &|h| h.contains("x-request-id:") && !h.contains("x-version"), "request-id from v3");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looping.join().expect("the curl loop");

    let seen = seen.lock().expect("seen");
    let failed: Vec<_> = seen.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), seen.len());
    assert_eq!(
        fg.count_logs("reloaded plugin live"),
        4,
        "the config, the component, the manifest naming another one, that one changed"
    );
    let saved = std::fs::metadata(&flows).map(|m| m.len()).unwrap_or(0);
    assert!(saved > 0, "the flows were saved beside the plugin, one write per flow");
    let _ = std::fs::remove_dir_all(&dir);
}
