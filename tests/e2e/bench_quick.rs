//! The benchmark harness (tests/bench) is not part of the test suite, but its quick mode
//! must keep working: this runs it once (one round) against the debug binary and checks the
//! report is well formed and every request succeeded. The numbers themselves are not
//! judged here (a debug build on a machine running other tests).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| root().join(default))
}

/// Runs bench.py in quick mode against the debug binary with request-id as the plugin, oha,
/// and `args`; checks it succeeded and printed `table` (a table's header), and returns its
/// JSON report.
fn quick_bench(name: &str, args: &[&std::ffi::OsStr], table: &str) -> Value {
    let dir = flowgate_tests::scratch_dir(&format!("bench-{name}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("report.json");
    let out = Command::new("python3")
        .arg(root().join("tests/bench/bench.py"))
        .args(["--quick", "--flowgate", env!("CARGO_BIN_EXE_flowgate"), "--plugin"])
        .arg(flowgate_tests::plugins::REQUEST_ID)
        .arg("--oha")
        .arg(tool("FLOWGATE_BENCH_OHA", "target/bench-tools/bin/oha"))
        .args(args)
        .arg("--out")
        .arg(&out_path)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.py --quick {args:?} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(table), "the table: {stdout}");
    let report =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("report written")).expect("report is JSON");
    let _ = std::fs::remove_file(&out_path);
    report
}

#[test]
fn quick_mode_runs_and_writes_a_well_formed_report() {
    let mitmdump = tool("FLOWGATE_BENCH_MITMDUMP", "target/bench-venv/bin/mitmdump");
    let args = [
        "--rounds".as_ref(),
        "1".as_ref(),
        "--spin-plugin".as_ref(),
        flowgate_tests::plugins::SPIN_FOREVER.as_ref(),
        "--mitmdump".as_ref(),
        mitmdump.as_os_str(),
    ];
    let report = quick_bench("quick", &args, "| scenario | target | req/s | p50 ms | p99 ms |");
    assert_eq!(report["schema"], "flowgate-bench/1");
    assert_eq!(report["mode"], "quick");
    let targets = ["direct", "flowgate", "flowgate+plugin", "mitmdump"];
    for scenario in ["h1-plain", "h1-https", "h2-https", "new-tls", "reverse"] {
        for target in targets {
            let t = &report["scenarios"][scenario]["targets"][target];
            let rps = t["rps"].as_f64().unwrap_or_else(|| panic!("{scenario}/{target}: no rps in {t}"));
            assert!(rps > 0.0, "{scenario}/{target}: {t}");
            let (p50, p99) = (t["p50_ms"].as_f64().expect("p50"), t["p99_ms"].as_f64().expect("p99"));
            assert!(0.0 < p50 && p50 <= p99, "{scenario}/{target}: {t}");
            let ok = t["success_rate"].as_f64().expect("success rate");
            let floor = if target == "mitmdump" { 0.9 } else { 1.0 };
            assert!(ok >= floor, "{scenario}/{target}: {ok} of requests succeeded: {t}");
            if target != "direct" {
                assert!(t["peak_rss_kib"].as_u64().expect("peak RSS") > 1024, "{scenario}/{target}: {t}");
            }
        }
        let ratios = &report["ratios"][scenario];
        for ratio in ["flowgate/direct", "flowgate/mitmdump", "plugin/no-plugin"] {
            assert!(ratios[ratio].as_f64().is_some_and(|r| r > 0.0), "{scenario}: {ratio} in {ratios}");
        }
    }
    for target in targets {
        let body = &report["scenarios"]["body"]["targets"][target];
        assert_eq!(body["complete"], true, "body/{target}: {body}");
    }
    // The spin scenario: the other flows measured quiet and beside 10 spinning flows.
    let spin = &report["scenarios"]["spin"];
    for phase in ["quiet", "spinning"] {
        let t = &spin["targets"][format!("flowgate {phase}")];
        assert!(t["rps"].as_f64().is_some_and(|r| r > 0.0), "spin/{phase}: {t}");
        assert_eq!(t["success_rate"].as_f64(), Some(1.0), "spin/{phase}: {t}");
    }
    let kept = &spin["spin"]["flowgate"];
    assert!(kept["rps_kept"].as_f64().is_some_and(|r| r > 0.0), "spin: {kept}");
    assert!(kept["p99_factor"].as_f64().is_some_and(|r| r > 0.0), "spin: {kept}");
    assert!(kept["slow_flows_rps"].as_f64().is_some_and(|r| r > 0.0), "spin: {kept}");
    for target in &targets[1..] {
        let idle = &report["scenarios"]["idle-tls"]["targets"][target];
        assert_eq!(idle["failures"], 0, "idle/{target}: {idle}");
        assert!(idle["per_connection_kib"].as_f64().is_some(), "idle/{target}: {idle}");
    }
}

/// The instructions scenario: flowgate with and without request-id, and with add-header as
/// an extra plugin, under callgrind, both protocols counted, every request answered; each
/// plugin's hooks add instructions (a count, not a time: the same on a loaded machine). The
/// extra plugin's name has a hyphen, which the harness once cut at, so it ran no plugin.
#[test]
fn instructions_scenario_counts_what_the_proxy_executes_per_request() {
    let valgrind = tool("FLOWGATE_BENCH_VALGRIND", "/usr/bin/valgrind");
    let add_header = flowgate_tests::manifest(
        flowgate_tests::plugins::ADD_HEADER,
        "name = \"add-header\"\n[config]\nrequest = \"X-Flowgate: 1\"\nresponse = \"X-Intercepted-By: flowgate\"\n",
    );
    let extra = format!("add-header={}", add_header.display());
    let args = [
        "--only".as_ref(),
        "instructions".as_ref(),
        "--instructions-requests".as_ref(),
        "40".as_ref(),
        "--extra-plugin".as_ref(),
        extra.as_ref(),
        "--valgrind".as_ref(),
        valgrind.as_os_str(),
    ];
    let report = quick_bench("instructions", &args, "| instructions per request | h1-https | h2-https |");
    let targets = &report["scenarios"]["instructions"]["targets"];
    for protocol in ["h1-https", "h2-https"] {
        let count = |target: &str| {
            let t = &targets[format!("{target} {protocol}")];
            assert_eq!(t["requests"], 40, "{target} {protocol}: {t}");
            assert_eq!(t["success_rate"].as_f64(), Some(1.0), "{target} {protocol}: {t}");
            t["per_request"].as_f64().unwrap_or_else(|| panic!("{target} {protocol}: no count in {t}"))
        };
        let (bare, plugged, added) = (count("flowgate"), count("flowgate+plugin"), count("flowgate+add-header"));
        // A request through TLS on both sides is tens of thousands of instructions at least.
        assert!(bare > 20_000.0, "{protocol}: {bare} instructions per request");
        // Two hook calls are thousands of instructions (the proxy's own code around each
        // call alone is hundreds).
        assert!(added > bare + 2_000.0, "{protocol}: add-header's hooks ran? {added} against {bare}");
        assert!(
            plugged > added,
            "{protocol}: request-id's four hook calls cost less than add-header's two? {plugged} <= {added}"
        );
    }
}
