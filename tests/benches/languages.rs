//! The same plugin in four languages: the `flowgate plugin new` starter (a path check
//! that may answer 403, and an `x-greeting` response header) built in Rust, JavaScript,
//! Python and C. Per language: component size, compile time (no cache, then from the
//! cache), instantiation time, and the time of a hook call and of a whole pooled flow.
//!
//! Run it with `bash tests/bench/languages.sh`, which creates and builds the four
//! projects and points FLOWGATE_BENCH_LANG_DIR at them. Prints a table and writes
//! target/bench/languages.json.

/// The proxy's allocator, so the figures are the ones it gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowgate_runtime::{Chain, HttpAction, Runtime, RuntimeConfig};
use flowgate_tests::{connection, flow, request, response};

const LANGS: &[&str] = &["rust", "c", "js", "python"];

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Times `n` runs of `f` (after a warm-up of `n / 10`) and returns the median.
fn time<F: FnMut()>(n: usize, mut f: F) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

struct Row {
    lang: String,
    size: u64,
    compile: Duration,
    cached_load: Duration,
    instantiate: Duration,
    hook: Duration,
    flow: Duration,
}

fn measure(rt: &tokio::runtime::Runtime, lang: &str, manifest: &Path, cache: &Path) -> Row {
    let text = std::fs::read_to_string(manifest).expect("the project's plugin.toml");
    let wasm = manifest.parent().expect("a directory").join(
        text.lines()
            .find_map(|l| l.strip_prefix("wasm = "))
            .map(|w| w.trim_matches('"'))
            .expect("wasm = in plugin.toml"),
    );
    let size = std::fs::metadata(&wasm).unwrap_or_else(|e| panic!("{}: {e} (build it first)", wasm.display())).len();

    // Compile without a cache, then load through a cache that the first load of that
    // runtime filled.
    let uncached = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let plugin = rt.block_on(uncached.load(manifest)).expect("loads");
    let compile = plugin.compiled().took;
    let _ = std::fs::remove_dir_all(cache);
    let cached =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache.to_owned()), ..RuntimeConfig::default() }).expect("runtime");
    rt.block_on(cached.load(manifest)).expect("loads (fills the cache)");
    let again = rt.block_on(cached.load(manifest)).expect("loads from the cache");
    assert!(again.compiled().from_cache, "{lang}: the second load did not hit the cache");
    let cached_load = again.compiled().took;

    let instantiate = time(200, || rt.block_on(plugin.probe_instance()).expect("instantiates"));

    let chain = Chain::new(vec![plugin]);
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let template = request("http://example.test/", 18);
    let mut session = conn.http_flow(flow(1, 1));
    let hook = time(2000, || {
        let mut req = template.clone();
        assert_eq!(rt.block_on(session.request_headers(&mut req)), HttpAction::Continue);
    });
    let mut n = 1;
    let flow_time = time(2000, || {
        n += 1;
        let (mut req, mut resp) = (template.clone(), response(b"hello"));
        rt.block_on(async {
            let mut s = conn.http_flow(flow(n, 1));
            s.request_headers(&mut req).await;
            s.request(&mut req).await;
            s.response_headers(&mut req, &mut resp).await;
            s.response(&mut req, &mut resp).await;
        });
        assert!(resp.headers.contains("x-greeting"), "{lang}: the starter sets x-greeting");
    });
    Row { lang: lang.to_owned(), size, compile, cached_load, instantiate, hook, flow: flow_time }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument picks languages.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let Some(dir) = std::env::var_os("FLOWGATE_BENCH_LANG_DIR").map(PathBuf::from) else {
        eprintln!("languages: FLOWGATE_BENCH_LANG_DIR is not set; run `bash tests/bench/languages.sh`");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let cache = flowgate_tests::scratch_dir("lang-bench");
    let mut rows = Vec::new();
    for lang in LANGS.iter().filter(|l| filter.is_empty() || filter.iter().any(|f| f == *l)) {
        let manifest = dir.join(lang).join("plugin.toml");
        eprintln!("languages: measuring {lang}");
        rows.push(measure(&rt, lang, &manifest, &cache));
    }
    let _ = std::fs::remove_dir_all(&cache);

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>14} {:>12} {:>14}",
        "language", "size KiB", "compile ms", "cached ms", "instantiate µs", "hook µs", "pooled flow µs"
    );
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "{:<8} {:>10} {:>12.0} {:>12.1} {:>14.1} {:>12.2} {:>14.2}",
            r.lang,
            r.size.div_ceil(1024),
            r.compile.as_secs_f64() * 1e3,
            r.cached_load.as_secs_f64() * 1e3,
            us(r.instantiate),
            us(r.hook),
            us(r.flow)
        );
        json.push(format!(
            "{{\"language\":\"{}\",\"size_bytes\":{},\"compile_ms\":{:.1},\"cached_load_ms\":{:.2},\"instantiate_us\":{:.2},\"hook_us\":{:.3},\"pooled_flow_us\":{:.3}}}",
            r.lang,
            r.size,
            r.compile.as_secs_f64() * 1e3,
            r.cached_load.as_secs_f64() * 1e3,
            us(r.instantiate),
            us(r.hook),
            us(r.flow)
        ));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    let report = format!("{{\"schema\":\"flowgate-languages/1\",\"results\":[{}]}}\n", json.join(","));
    std::fs::write(out.join("languages.json"), report).expect("write the report");
    println!("wrote target/bench/languages.json");
}
